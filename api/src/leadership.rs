//! What a standby replica answers while it waits to lead.
//!
//! Which replica leads is decided in the database
//! (`corral_actors::startup::Database::lead`). Standbys do not serve the
//! API while they wait: every connection to a standby's address gets
//! `503 Service Unavailable` with `Retry-After: 1` and an error `standby`
//! at once ([`answer_as_standby`]). Agents and the CLI are given the URLs
//! of every replica and move on to the next one on such an answer or a
//! refused connection, so they reach whichever leads.

use std::time::Duration;

/// What a standby answers to every request.
const STANDBY_ANSWER: &str = "{\"error\":\"standby\",\"message\":\"this corral replica is a standby; another replica \
                              leads: try the next server URL\"}";

/// Answers every connection on `listener` with a 503 until the returned
/// task is aborted (the replica leads and the HTTP server takes the
/// listener over).
pub(crate) fn answer_as_standby(
    listener: std::net::TcpListener,
) -> anyhow::Result<actix_web::rt::task::JoinHandle<()>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    Ok(actix_web::rt::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            actix_web::rt::spawn(async move {
                // Read (some of) the request first: closing a socket with
                // unread data resets it and the answer could be lost.
                let mut buf = [0u8; 8192];
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await;
                let answer = format!(
                    "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\n\
                     Connection: close\r\nContent-Length: {}\r\n\r\n{STANDBY_ANSWER}",
                    STANDBY_ANSWER.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    }))
}
