//! The server-list rule against real sockets on 127.0.0.1: a call moves on
//! only when it did not reach a server (connection refused, or a standby's
//! `503 standby`), tries each URL once, and ends on anything else.
//!
//! The "servers" here are canned HTTP answers (a standby answers before
//! reading the request, as `corral serve` does; a leader's `/readyz`); the
//! real replicas are driven in `cli/tests/restart.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use corral_client::{Client, Error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const STANDBY: &str = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\n\
                       Connection: close\r\nContent-Length: 63\r\n\r\n\
                       {\"error\":\"standby\",\"message\":\"another replica leads: next URL\"}";
const READY: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\
                     Content-Length: 19\r\n\r\n{\"status\":\"ready\"}\n";

/// A listener that answers every connection with `answer` (or never, when
/// `None`), counting connections; its URL.
async fn canned(answer: Option<&'static str>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    actix_rt::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            counted.fetch_add(1, Ordering::SeqCst);
            actix_rt::spawn(async move {
                match answer {
                    Some(answer) => {
                        let mut buf = [0u8; 4096];
                        let _ = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await;
                        let _ = stream.write_all(answer.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    }
                    // Holds the connection open without answering.
                    None => tokio::time::sleep(Duration::from_secs(30)).await,
                }
            });
        }
    });
    (url, count)
}

/// A loopback URL nothing listens on.
fn refused_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

#[actix_rt::test]
async fn a_standby_and_a_refused_url_are_skipped_and_the_leader_answers() {
    // Sent: GET /readyz to [standby, nothing listening, leader]. Must
    // happen: the leader's answer; the standby was asked once.
    let (standby, standby_calls) = canned(Some(STANDBY)).await;
    let (leader, leader_calls) = canned(Some(READY)).await;
    let client = Client::plain(&format!("{standby},{},{leader}", refused_url()), None).unwrap();
    assert_eq!(client.readyz().await.unwrap().status, "ready");
    assert_eq!(standby_calls.load(Ordering::SeqCst), 1);
    assert_eq!(leader_calls.load(Ordering::SeqCst), 1);
    // The next call starts at the URL that answered: the standby is not
    // asked again.
    client.readyz().await.unwrap();
    assert_eq!(standby_calls.load(Ordering::SeqCst), 1);
    assert_eq!(leader_calls.load(Ordering::SeqCst), 2);
}

#[actix_rt::test]
async fn with_no_leader_each_url_is_tried_once_and_the_last_error_returned() {
    // Sent: GET /readyz to [nothing listening, standby]. Must happen: the
    // standby's refusal, typed, after one attempt on each URL.
    let (standby, standby_calls) = canned(Some(STANDBY)).await;
    let client = Client::plain(&format!("{},{standby}", refused_url()), None).unwrap();
    let err = client.readyz().await.unwrap_err();
    let refused = err.refused().unwrap_or_else(|| panic!("a refusal, not {err}"));
    assert!(refused.is_standby(), "{refused:?}");
    assert_eq!(refused.retry_after, Some(Duration::from_secs(1)));
    assert_eq!(err.to_string(), "standby: another replica leads: next URL");
    assert_eq!(standby_calls.load(Ordering::SeqCst), 1);
    // [standby, nothing listening]: the connection failure is the last error.
    let client = Client::plain(&format!("{standby},{}", refused_url()), None).unwrap();
    assert!(matches!(client.readyz().await, Err(Error::Transport { .. })));
    assert_eq!(standby_calls.load(Ordering::SeqCst), 2);
}

#[actix_rt::test]
async fn a_call_that_may_have_reached_a_server_is_not_sent_again() {
    // Sent: GET /readyz to [a server that accepts and never answers,
    // leader] with a 300 ms timeout. Must happen: a transport error; the
    // leader is never asked (the first server may have acted on it).
    let (silent, silent_calls) = canned(None).await;
    let (leader, leader_calls) = canned(Some(READY)).await;
    let client = Client::plain(&format!("{silent},{leader}"), None).unwrap().with_timeout(Duration::from_millis(300));
    assert!(matches!(client.readyz().await, Err(Error::Transport { .. })));
    assert_eq!(silent_calls.load(Ordering::SeqCst), 1);
    assert_eq!(leader_calls.load(Ordering::SeqCst), 0);
}
