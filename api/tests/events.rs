//! `GET /v1/events` through the real server and PostgreSQL, read with a
//! real HTTP client: live events of a lease's whole life, resumes with
//! `Last-Event-ID` (also across a server restart), reloads, the errors
//! (400, 401, 429), and what each user may see.
//!
//! Absence is proven against a marker: an event the reader may see that
//! was caused after the events it may not see had been broadcast (an admin
//! stream saw them first), so reaching the marker means that the others
//! were filtered, not late.

mod common;

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use actix_web::web::Bytes;
use awc::error::PayloadError;
use awc::http::StatusCode;
use common::{TestServer, caps, wait_for_request, wait_for_worker};
use corral_actors::Clock;
use corral_proto::events::{EventId, SseMessage, SseParser};
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};

/// How long one expected event may take.
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

type Body = Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>>;

/// An open event stream.
struct Events {
    body: Body,
    parser: SseParser,
    ready: VecDeque<SseMessage>,
    /// The last `id:` received.
    last_id: Option<String>,
}

/// The refusal of a stream: status, `Retry-After`, body.
type Refusal = (StatusCode, Option<String>, Value);

async fn open(url: &str, token: Option<&str>, last_event_id: Option<&str>) -> Result<Events, Refusal> {
    let client = awc::Client::builder().timeout(Duration::from_secs(10)).finish();
    let mut request = client.get(format!("{url}/v1/events"));
    if let Some(token) = token {
        request = request.insert_header(("Authorization", format!("Bearer {token}")));
    }
    if let Some(id) = last_event_id {
        request = request.insert_header(("Last-Event-ID", id));
    }
    let mut response = request.send().await.expect("the server answers");
    if response.status() != StatusCode::OK {
        let retry = response.headers().get("Retry-After").map(|v| v.to_str().unwrap().to_string());
        let body = response.body().await.unwrap();
        return Err((response.status(), retry, serde_json::from_slice(&body).unwrap_or(Value::Null)));
    }
    assert_eq!(response.headers().get("Content-Type").unwrap(), "text/event-stream");
    let mut events =
        Events { body: Box::pin(response), parser: SseParser::default(), ready: VecDeque::new(), last_id: None };
    // The opening comment says the subscription is in place.
    events.read_chunk().await;
    assert!(events.parser.comments >= 1, "the stream opens with a comment");
    Ok(events)
}

async fn open_ok(url: &str, token: &str, last_event_id: Option<&str>) -> Events {
    match open(url, Some(token), last_event_id).await {
        Ok(events) => events,
        Err(refusal) => panic!("the stream was refused: {refusal:?}"),
    }
}

impl Events {
    async fn read_chunk(&mut self) {
        let chunk = tokio::time::timeout(EVENT_TIMEOUT, self.body.next())
            .await
            .expect("the stream sends something in time")
            .expect("the stream is still open")
            .expect("the stream reads");
        self.ready.extend(self.parser.push(&chunk));
    }

    /// The next event, as `(id, JSON)`.
    async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(message) = self.ready.pop_front() {
                let id = message.id.expect("every event has an id");
                id.parse::<EventId>().expect("event ids parse");
                self.last_id = Some(id.clone());
                return (id, serde_json::from_str(&message.data).expect("data is JSON"));
            }
            self.read_chunk().await;
        }
    }

    /// Every event until the stream's position has reached `target` in
    /// both tables.
    async fn until_position(&mut self, what: &str, target: EventId) -> Vec<(String, Value)> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            let event = tokio::time::timeout_at(deadline, self.next())
                .await
                .unwrap_or_else(|_| panic!("not at {what} ({target}) within {EVENT_TIMEOUT:?}; got {seen:#?}"));
            let position: EventId = event.0.parse().unwrap();
            seen.push(event);
            if target.is_at_or_before(position) {
                return seen;
            }
        }
    }

    /// Every event up to and including the first one `stop` accepts.
    async fn until(&mut self, what: &str, stop: impl Fn(&Value) -> bool) -> Vec<(String, Value)> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            let event = tokio::time::timeout_at(deadline, self.next())
                .await
                .unwrap_or_else(|_| panic!("no event {what} within {EVENT_TIMEOUT:?}; got {seen:#?}"));
            let done = stop(&event.1);
            seen.push(event);
            if done {
                return seen;
            }
        }
    }
}

fn is_request(event: &Value, id: i64, to: &str) -> bool {
    event["type"] == "request.state" && event["request"] == id && event["to"] == to
}

fn is_worker(event: &Value, uuid: &str, to: &str) -> bool {
    event["type"] == "worker.state" && event["worker"] == uuid && event["to"] == to
}

/// The events of one kind, in order, without their ids.
fn of_type(events: &[(String, Value)], kind: &str) -> Vec<Value> {
    events.iter().filter(|(_, e)| e["type"] == kind).map(|(_, e)| e.clone()).collect()
}

/// The events at or before `end`: each event's own row (its table's part
/// of its position) is at most `end`'s part for that table.
fn up_to(events: &[(String, Value)], end: EventId) -> Vec<(String, Value)> {
    events
        .iter()
        .filter(|(id, event)| {
            let id: EventId = id.parse().unwrap();
            match event["type"].as_str() {
                Some("request.state") => id.request <= end.request,
                Some("worker.state") => id.worker <= end.worker,
                _ => true,
            }
        })
        .cloned()
        .collect()
}

/// Each table's position only grows along a stream.
fn assert_positions_grow(events: &[(String, Value)]) {
    let mut last = EventId::default();
    for (id, event) in events {
        let id: EventId = id.parse().unwrap();
        assert!(last.is_at_or_before(id) && last != id, "{id} after {last}: {event}");
        last = id;
    }
}

#[actix_rt::test]
async fn a_lease_life_is_streamed_with_ids_actors_and_reasons() {
    let server = TestServer::start(Clock::System).await;
    let agent = server.agent("host-ev1", 1, &caps(&[("device_type", "ev")]));
    server.make_idle(&agent.uuids).await;
    let worker = agent.uuids[0].to_string();
    let ann = server.user("ann", &[]).await;
    let mut stream = open_ok(&server.url, &ann, None).await;

    let api = server.api(&ann);
    let id = api.submit(json!({"caps": {"device_type": "ev"}})).await;
    let started = stream.until("request in progress", |e| is_request(e, id, "in_progress")).await;
    let created = &started.iter().find(|(_, e)| e["type"] == "request.state").unwrap().1;
    assert_eq!((created["from"].clone(), created["to"].clone()), (Value::Null, json!("waiting")), "{created}");
    assert_eq!(created["actor"], "user:ann");
    assert!(created["reason"].is_string() && created["at"].is_string(), "{created}");
    assert!(started.iter().any(|(_, e)| is_worker(e, &worker, "running")), "{started:#?}");

    wait_for_request(&api, id, |r| r["state"] == "in_progress").await;
    let (status, body) = api.post_empty(&format!("/v1/requests/{id}/close")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ended = stream.until("worker idle again", |e| is_worker(e, &worker, "idle")).await;
    let done = ended.iter().find(|(_, e)| is_request(e, id, "done")).expect("the close is streamed");
    assert_eq!((done.1["from"].clone(), done.1["actor"].clone()), (json!("in_progress"), json!("user:ann")));
    assert!(ended.iter().any(|(_, e)| is_worker(e, &worker, "prepare")), "{ended:#?}");

    let mut all = started;
    all.extend(ended);
    assert_positions_grow(&all);
    agent.stop().await;
    server.stop().await;
}

#[actix_rt::test]
async fn a_reconnect_with_last_event_id_gets_exactly_what_it_missed() {
    let server = TestServer::start(Clock::System).await;
    let agent = server.agent("host-ev2", 2, &caps(&[("device_type", "ev")]));
    server.make_idle(&agent.uuids).await;
    let admin = server.admin();
    // The reference: a stream that never disconnects.
    let mut reference = open_ok(&server.url, &server.admin, None).await;
    let mut leaving = open_ok(&server.url, &server.admin, None).await;

    let first = admin.submit(json!({"caps": {"device_type": "ev"}})).await;
    leaving.until("the first request", |e| is_request(e, first, "waiting")).await;
    let left_at = leaving.last_id.clone().unwrap();
    drop(leaving);
    let before = reference.until("the first request", |e| is_request(e, first, "waiting")).await;
    assert_eq!(before.last().unwrap().0, left_at, "both streams give an event the same position");

    // Changes while it is away: leases on both workers, closes, a waiting one.
    let mut ids = vec![first];
    for _ in 0..3 {
        ids.push(admin.submit(json!({"caps": {"device_type": "ev"}, "allow_unsatisfiable": true})).await);
    }
    for id in &ids[..2] {
        wait_for_request(&admin, *id, |r| r["state"] == "in_progress").await;
        admin.post_empty(&format!("/v1/requests/{id}/close")).await;
    }
    let last = *ids.last().unwrap();
    let (status, _) = admin.post_empty(&format!("/v1/requests/{last}/close")).await;
    assert_eq!(status, StatusCode::OK);
    let missed = reference.until("the last close", |e| is_request(e, last, "cancelled")).await;
    let final_id = missed.last().unwrap().0.clone();

    let mut back = open_ok(&server.url, &server.admin, Some(&left_at)).await;
    let target: EventId = final_id.parse().unwrap();
    let resumed = back.until_position("the reference's last position", target).await;
    // The same events of each kind up to that position, in the same order:
    // none twice, none skipped (requests and workers may interleave
    // differently, so the resumed stream may also have passed it).
    for kind in ["request.state", "worker.state"] {
        assert_eq!(of_type(&up_to(&resumed, target), kind), of_type(&missed, kind), "{kind}");
    }
    assert!(of_type(&resumed, "request.state").len() >= 10, "{resumed:#?}");
    assert_positions_grow(&resumed);
    assert!(
        !resumed.iter().any(|(_, e)| is_request(e, first, "waiting") && e["from"].is_null()),
        "the event it had is not sent again: {resumed:#?}"
    );

    // And both go on live from there.
    let next = admin.submit(json!({"caps": {"device_type": "ev"}})).await;
    let mut live = resumed.clone();
    live.extend(back.until("the next request", |e| is_request(e, next, "waiting")).await);
    let mut reference_all = missed.clone();
    reference_all.extend(reference.until("the next request", |e| is_request(e, next, "waiting")).await);
    let end: EventId = reference_all.last().unwrap().0.parse().unwrap();
    let live = up_to(&live, end);
    for kind in ["request.state", "worker.state"] {
        assert_eq!(of_type(&live, kind), of_type(&up_to(&reference_all, end), kind), "{kind}");
    }
    agent.stop().await;
    server.stop().await;
}

#[actix_rt::test]
async fn a_restarted_server_resumes_from_the_durable_history() {
    let db = corral_testkit::test_database().await;
    let config = common::test_config(&db.url);
    let first = TestServer::start_on(Clock::System, config.clone(), db.url.clone()).await;
    let bo = first.user("bo", &[]).await;
    let mut stream = open_ok(&first.url, &bo, None).await;
    let api = first.api(&bo);
    let early = api.submit(json!({"caps": {"device_type": "none"}, "allow_unsatisfiable": true})).await;
    stream.until("the first request", |e| is_request(e, early, "waiting")).await;
    let resume_at = stream.last_id.clone().unwrap();
    first.halt().await;
    drop(stream);

    let second = TestServer::start_on(Clock::System, config, db.url.clone()).await;
    let api = second.api(&bo);
    let late = api.submit(json!({"caps": {"device_type": "none"}, "allow_unsatisfiable": true})).await;
    let (status, body) = api.post_empty(&format!("/v1/requests/{early}/close")).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let mut back = open_ok(&second.url, &bo, Some(&resume_at)).await;
    let resumed = back.until("the cancel", |e| is_request(e, early, "cancelled")).await;
    let got: Vec<(Value, Value)> = resumed.iter().map(|(_, e)| (e["request"].clone(), e["to"].clone())).collect();
    assert_eq!(got, vec![(json!(late), json!("waiting")), (json!(early), json!("cancelled"))]);
    assert_positions_grow(&resumed);
    second.stop().await;
    drop(first);
}

#[actix_rt::test]
async fn a_position_too_far_behind_or_unknown_gets_a_reload() {
    let server = TestServer::start_with(Clock::System, |c| c.events_resume_limit = 3).await;
    let cy = server.user("cy", &[]).await;
    let api = server.api(&cy);
    let mut stream = open_ok(&server.url, &cy, None).await;
    let unsatisfiable = json!({"caps": {"device_type": "none"}, "allow_unsatisfiable": true});
    let first = api.submit(unsatisfiable.clone()).await;
    stream.until("the first request", |e| is_request(e, first, "waiting")).await;
    let behind = stream.last_id.clone().unwrap();
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(api.submit(unsatisfiable.clone()).await);
    }
    let last = *ids.last().unwrap();
    stream.until("the last request", |e| is_request(e, last, "waiting")).await;
    let head = stream.last_id.clone().unwrap();

    // Four changes behind with a limit of three: reload, positioned at the head.
    let mut reloaded = open_ok(&server.url, &cy, Some(&behind)).await;
    let (id, event) = reloaded.next().await;
    assert_eq!(event["type"], "reload", "{event}");
    assert!(event["reason"].as_str().unwrap().contains("behind"), "{event}");
    assert_eq!(id, head);
    // It goes on live.
    let next = api.submit(unsatisfiable.clone()).await;
    let live = reloaded.until("the next request", |e| is_request(e, next, "waiting")).await;
    assert_eq!(live.len(), 1, "nothing of the backlog after the reload: {live:#?}");

    // Three behind (the limit): resumed.
    let position: EventId = reloaded.last_id.clone().unwrap().parse().unwrap();
    let three_behind = EventId { request: position.request - 3, ..position }.to_string();
    let mut resumed = open_ok(&server.url, &cy, Some(&three_behind)).await;
    let backlog = resumed.until("the next request", |e| is_request(e, next, "waiting")).await;
    let requests: Vec<Value> = backlog.iter().map(|(_, e)| e["request"].clone()).collect();
    assert_eq!(requests, vec![json!(ids[2]), json!(ids[3]), json!(next)]);

    // A position this database never had: reload.
    let mut foreign = open_ok(&server.url, &cy, Some("99999999-99999999")).await;
    let (id, event) = foreign.next().await;
    assert_eq!(event["type"], "reload", "{event}");
    let head: EventId = id.parse().unwrap();
    assert!(head.request < 99999999, "the reload carries this server's position");
    server.stop().await;
}

#[actix_rt::test]
async fn a_bad_last_event_id_is_400_and_other_streams_go_on() {
    let server = TestServer::start(Clock::System).await;
    let dee = server.user("dee", &[]).await;
    let mut stream = open_ok(&server.url, &dee, None).await;
    for bad in ["abc", "1-", "-1-2", "1-2-3", "99999999999999999999-1"] {
        let (status, _, body) = open(&server.url, Some(&dee), Some(bad)).await.err().expect("refused");
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["error"], "bad_request", "{bad}: {body}");
        assert!(body["message"].as_str().unwrap().contains("Last-Event-ID"), "{body}");
    }
    // An empty one (what EventSource sends after a reset) means "from now".
    let _fresh = open_ok(&server.url, &dee, Some("")).await;
    let id = server.api(&dee).submit(json!({"caps": {"d": "none"}, "allow_unsatisfiable": true})).await;
    stream.until("the request", |e| is_request(e, id, "waiting")).await;
    server.stop().await;
}

#[actix_rt::test]
async fn no_token_is_401_and_an_agent_token_is_403() {
    let server = TestServer::start(Clock::System).await;
    let (status, _, body) = open(&server.url, None, None).await.err().expect("refused");
    assert_eq!((status, body["error"].clone()), (StatusCode::UNAUTHORIZED, json!("unauthorized")));
    let (status, _, _) = open(&server.url, Some("not-a-token"), None).await.err().expect("refused");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = open(&server.url, Some(&server.agent_token), None).await.err().expect("refused");
    assert_eq!(status, StatusCode::FORBIDDEN);
    server.stop().await;
}

#[actix_rt::test]
async fn streams_over_the_per_user_limit_get_429_until_one_ends() {
    let server = TestServer::start_with(Clock::System, |c| {
        c.max_streams_per_user = 2;
        c.events_keep_alive = Duration::from_millis(50);
    })
    .await;
    let eve = server.user("eve", &[]).await;
    let one = open_ok(&server.url, &eve, None).await;
    let mut two = open_ok(&server.url, &eve, None).await;
    let (status, retry, body) = open(&server.url, Some(&eve), None).await.err().expect("the third is refused");
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"], "too_many_requests");
    assert!(retry.is_some_and(|r| r.parse::<u32>().is_ok()), "Retry-After");
    // Another user and admins are not held back by eve's streams.
    let fay = server.user("fay", &[]).await;
    let _fay = open_ok(&server.url, &fay, None).await;
    let _admins: Vec<Events> =
        futures_util::future::join_all((0..3).map(|_| open_ok(&server.url, &server.admin, None))).await;

    // Keep-alives flow while nothing happens.
    let comments = two.parser.comments;
    two.read_chunk().await;
    assert!(two.parser.comments > comments, "a keep-alive comment");

    // A stream that ends frees its slot (the server notices at its next
    // keep-alive).
    drop(one);
    let _three = corral_testkit::wait_until("eve's slot is free again", Duration::from_secs(10), || async {
        open(&server.url, Some(&eve), None).await.ok()
    })
    .await;
    server.stop().await;
}

#[actix_rt::test]
async fn users_see_only_their_own_requests_and_the_workers_of_their_groups() {
    let server = TestServer::start(Clock::System).await;
    let agent = server.agent("host-ev3", 2, &caps(&[("device_type", "ev")]));
    let admin = server.admin();
    let (mine, theirs) = (agent.uuids[0], agent.uuids[1]);
    for (worker, group) in [(mine, "lab-a"), (theirs, "lab-b")] {
        wait_for_worker(&admin, worker, |w| w["state"].is_string()).await;
        let (status, body) = admin.put(&format!("/v1/workers/{worker}/groups"), json!([group])).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let gil = server.user("gil", &["lab-a"]).await;
    let hal = server.user("hal", &["lab-b"]).await;
    let mut gils = open_ok(&server.url, &gil, None).await;
    let mut admins = open_ok(&server.url, &server.admin, None).await;

    // Things gil may not see: hal's worker's changes and hal's request.
    server.make_idle(&[theirs]).await;
    let hals = server.api(&hal).submit(json!({"caps": {"device_type": "ev"}})).await;
    wait_for_request(&server.api(&hal), hals, |r| r["state"] == "in_progress").await;
    // Things gil may see: his worker's changes, his request.
    server.make_idle(&[mine]).await;
    let hidden = admins.until("hal's lease and gil's worker idle", |e| is_worker(e, &mine.to_string(), "idle")).await;
    assert!(hidden.iter().any(|(_, e)| is_request(e, hals, "in_progress")), "{hidden:#?}");
    assert!(hidden.iter().any(|(_, e)| is_worker(e, &theirs.to_string(), "running")), "{hidden:#?}");
    // The marker, caused after all of the above was broadcast.
    let gils_request =
        server.api(&gil).submit(json!({"caps": {"device_type": "ev"}, "allow_unsatisfiable": true})).await;

    let seen = gils.until("gil's own request", |e| is_request(e, gils_request, "waiting")).await;
    assert!(seen.iter().any(|(_, e)| is_worker(e, &mine.to_string(), "idle")), "his worker: {seen:#?}");
    for (_, event) in &seen {
        assert_ne!(event["request"], json!(hals), "hal's request leaked: {event}");
        assert_ne!(event["worker"], json!(theirs.to_string()), "a lab-b worker leaked: {event}");
    }
    // The same holds for a resume from the start of the history.
    let mut resumed = open_ok(&server.url, &gil, Some("0-0")).await;
    let backlog = resumed.until("gil's own request", |e| is_request(e, gils_request, "waiting")).await;
    assert!(backlog.iter().any(|(_, e)| is_worker(e, &mine.to_string(), "idle")), "{backlog:#?}");
    for (_, event) in &backlog {
        assert_ne!(event["request"], json!(hals), "hal's request leaked: {event}");
        assert_ne!(event["worker"], json!(theirs.to_string()), "a lab-b worker leaked: {event}");
    }
    // Hal sees his own.
    let mut hals_stream = open_ok(&server.url, &hal, Some("0-0")).await;
    hals_stream.until("hal's lease", |e| is_request(e, hals, "in_progress")).await;
    agent.stop().await;
    server.stop().await;
}

#[actix_rt::test]
async fn a_subscriber_that_does_not_read_is_told_to_reload_and_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = TestServer::start_with(Clock::System, |c| c.events_buffer = 16).await;
    // A client that reads nothing for a while, with a small receive
    // buffer: the server's socket and write buffers fill, it stops
    // polling the stream, and the stream falls behind the broadcast.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();
    let mut tcp = socket.connect(addr).await.unwrap();
    let head = format!(
        "GET /v1/events HTTP/1.1\r\nHost: corral\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        server.admin
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut opening = [0u8; 512];
    let n = tcp.read(&mut opening).await.unwrap();
    assert!(String::from_utf8_lossy(&opening[..n]).starts_with("HTTP/1.1 200"), "the stream opens");

    let admin = server.admin();
    let body = json!({"caps": {"device_type": "none"}, "allow_unsatisfiable": true});
    for _ in 0..4 {
        let ids = futures_util::future::join_all((0..100).map(|_| admin.submit(body.clone()))).await;
        let paths: Vec<String> = ids.iter().map(|id| format!("/v1/requests/{id}/close")).collect();
        futures_util::future::join_all(paths.iter().map(|path| admin.post_empty(path))).await;
    }
    // Now read: what was buffered, the reload, and the end.
    let mut text = Vec::new();
    tokio::time::timeout(EVENT_TIMEOUT, tcp.read_to_end(&mut text))
        .await
        .expect("the server ends the stream after the reload")
        .unwrap();
    let text = String::from_utf8_lossy(&text);
    let reload = text.find("\"type\":\"reload\"").expect("a reload event");
    assert!(text[reload..].contains("fell"), "the reason says why");
    let sent = text.matches("\"type\":\"request.state\"").count();
    assert!(sent < 800, "it was dropped before getting all 800 events ({sent})");
    server.stop().await;
}

/// A history row whose id was taken before a later row's but that commits
/// after it is not lost: the stream holds the later row back until the
/// earlier one commits, then sends both in id order.
#[actix_rt::test]
async fn a_row_that_commits_after_a_later_id_is_sent_first_and_once() {
    let server = TestServer::start(Clock::System).await;
    let admin = server.admin();
    let mut stream = open_ok(&server.url, &server.admin, None).await;
    let unsatisfiable = json!({"caps": {"device_type": "none"}, "allow_unsatisfiable": true});
    let subject = admin.submit(unsatisfiable.clone()).await;
    stream.until("the subject request", |e| is_request(e, subject, "waiting")).await;

    // Another connection takes the next history id and keeps its
    // transaction open (as a slow commit would).
    let (client, connection) = tokio_postgres::connect(&server.db_url, tokio_postgres::NoTls).await.expect("connect");
    actix_rt::spawn(connection);
    client.batch_execute("BEGIN").await.unwrap();
    client
        .execute(
            "INSERT INTO request_history (request, at, from_state, to_state, actor, reason)
             VALUES ($1, now(), 'waiting', 'waiting', 'test', 'committed late')",
            &[&subject],
        )
        .await
        .unwrap();
    // A later id, committed at once.
    let later = admin.submit(unsatisfiable.clone()).await;
    // Well within the hub's 2 s grace, the early row commits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.batch_execute("COMMIT").await.unwrap();

    let events = stream.until("the later request", |e| is_request(e, later, "waiting")).await;
    let reasons: Vec<Value> = events.iter().map(|(_, e)| e["reason"].clone()).collect();
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(reasons[0], "committed late", "the earlier id goes first: {events:#?}");
    assert_positions_grow(&events);
    server.stop().await;
}
