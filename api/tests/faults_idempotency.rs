//! Issue 14, item 5: submissions are safe to retry (SPEC §13). A submission
//! with an `Idempotency-Key` header, sent again with the same key and body,
//! answers what the first answered and creates nothing; the same key with
//! another body is 409 and changes nothing; concurrent retries make one
//! request; a bad key is 400 and creates nothing. Native and Boruta APIs.

mod common;

use awc::http::StatusCode;
use common::{TestServer, caps, wait_for_worker};
use corral_actors::Clock;
use serde_json::{Value, json};

/// What a POST answered: status, `Location` header and JSON body.
struct Answer {
    status: StatusCode,
    location: Option<String>,
    body: Value,
}

/// POSTs `body` to `path` (under the server's URL) as `token`, with an
/// `Idempotency-Key` header when `key` is given.
async fn post_with_key(server: &TestServer, token: &str, path: &str, key: Option<&str>, body: &str) -> Answer {
    let client = awc::Client::default();
    let mut request = client
        .post(format!("{}{path}", server.url))
        .insert_header(("Authorization", format!("Bearer {token}")))
        .insert_header(("Content-Type", "application/json"));
    if let Some(key) = key {
        request = request.insert_header(("Idempotency-Key", key));
    }
    let mut response = request.send_body(body.to_string()).await.expect("the server answers");
    let status = response.status();
    let location = response.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_string);
    let bytes = response.body().await.expect("a body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer { status, location, body }
}

/// The ids of every request, as an admin lists them.
async fn all_request_ids(server: &TestServer) -> Vec<i64> {
    let (status, page) = server.admin().get("/v1/requests?limit=1000").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["items"].as_array().map(|items| items.iter().filter_map(|r| r["id"].as_i64()).collect()).unwrap_or_default()
}

fn submission(device_type: &str) -> String {
    json!({"caps": {"device_type": device_type}, "allow_unsatisfiable": true, "lease": "10m"}).to_string()
}

#[actix_rt::test]
async fn idempotency_key_retry_returns_the_first_answer() {
    let server = TestServer::start(Clock::manual()).await;
    let ann = server.user("ann", &["lab"]).await;
    // Sent twice with key "k-1" and one body: both 201, one id, one
    // Location, one request stored.
    let first = post_with_key(&server, &ann, "/v1/requests", Some("k-1"), &submission("x")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let retry = post_with_key(&server, &ann, "/v1/requests", Some("k-1"), &submission("x")).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.body);
    assert_eq!(retry.body["id"], first.body["id"]);
    assert_eq!(retry.location, first.location);
    assert_eq!(all_request_ids(&server).await, vec![first.body["id"].as_i64().unwrap()]);

    // Another owner may use the same key for a request of its own.
    let bob = server.user("bob", &["lab"]).await;
    let other = post_with_key(&server, &bob, "/v1/requests", Some("k-1"), &submission("x")).await;
    assert_eq!(other.status, StatusCode::CREATED, "{}", other.body);
    assert_ne!(other.body["id"], first.body["id"]);
    assert_eq!(all_request_ids(&server).await.len(), 2);

    // Without a key, each submission is a new request.
    for _ in 0..2 {
        let plain = post_with_key(&server, &ann, "/v1/requests", None, &submission("x")).await;
        assert_eq!(plain.status, StatusCode::CREATED, "{}", plain.body);
    }
    assert_eq!(all_request_ids(&server).await.len(), 4);
}

#[actix_rt::test]
async fn idempotency_key_with_another_body_is_409() {
    let server = TestServer::start(Clock::manual()).await;
    let ann = server.user("ann", &["lab"]).await;
    let first = post_with_key(&server, &ann, "/v1/requests", Some("k-2"), &submission("x")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    // Same key, other caps: 409 conflict, nothing created, the first
    // request unchanged.
    let other = post_with_key(&server, &ann, "/v1/requests", Some("k-2"), &submission("y")).await;
    assert_eq!(other.status, StatusCode::CONFLICT, "{}", other.body);
    assert_eq!(other.body["error"], "conflict", "{}", other.body);
    let id = first.body["id"].as_i64().unwrap();
    assert_eq!(all_request_ids(&server).await, vec![id]);
    let (status, stored) = server.api(&ann).get(&format!("/v1/requests/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stored["caps"], json!({"device_type": "x"}));
}

#[actix_rt::test]
async fn concurrent_retries_with_one_key_make_one_request() {
    let server = TestServer::start(Clock::manual()).await;
    let ann = server.user("ann", &["lab"]).await;
    // Eight submissions with one key at the same time: all 201 with one
    // id, one request stored.
    let body = submission("x");
    let calls = (0..8).map(|_| post_with_key(&server, &ann, "/v1/requests", Some("k-3"), &body));
    let answers = futures_util::future::join_all(calls).await;
    let ids: std::collections::HashSet<i64> = answers
        .iter()
        .map(|a| {
            assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
            a.body["id"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 1, "one request for one key: {ids:?}");
    assert_eq!(all_request_ids(&server).await, ids.into_iter().collect::<Vec<_>>());
}

#[actix_rt::test]
async fn bad_idempotency_key_is_400_and_creates_nothing() {
    let server = TestServer::start(Clock::manual()).await;
    let ann = server.user("ann", &["lab"]).await;
    let long = "k".repeat(256);
    // 256 characters, a tab, an empty value: 400 bad_request each.
    for key in [long.as_str(), "a\tb", ""] {
        let answer = post_with_key(&server, &ann, "/v1/requests", Some(key), &submission("x")).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "key {key:?}: {}", answer.body);
        assert_eq!(answer.body["error"], "bad_request", "{}", answer.body);
    }
    // A key of 255 printable characters is fine.
    let longest = "k".repeat(255);
    let answer = post_with_key(&server, &ann, "/v1/requests", Some(&longest), &submission("x")).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_eq!(all_request_ids(&server).await.len(), 1);
}

#[actix_rt::test]
async fn boruta_create_honours_idempotency_key() {
    let server = TestServer::start(Clock::manual()).await;
    let ann = server.user("ann", &["lab"]).await;
    let agent = server.agent("host-idem", 1, &caps(&[("device_type", "rpi4")]));
    wait_for_worker(&server.admin(), agent.uuids[0], |w| w["state"].is_string()).await;
    let body = |priority: u8| {
        json!({
            "ID": 0, "Priority": priority, "Owner": {"Groups": null},
            "Deadline": "0001-01-01T00:00:00Z", "ValidAfter": "0001-01-01T00:00:00Z",
            "State": "", "Job": null, "Caps": {"device_type": "rpi4"},
        })
        .to_string()
    };
    // The same ReqInfo twice with key "b-1": one ReqID, one Location.
    let first = post_with_key(&server, &ann, "/api/v1/reqs/", Some("b-1"), &body(4)).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let retry = post_with_key(&server, &ann, "/api/v1/reqs/", Some("b-1"), &body(4)).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.body);
    assert_eq!(retry.body["ReqID"], first.body["ReqID"]);
    assert_eq!(retry.location, first.location);
    // Another priority under the same key: refused, nothing created
    // (Boruta answers every mistake of the caller, conflicts included,
    // with 400; the native API says 409).
    let other = post_with_key(&server, &ann, "/api/v1/reqs/", Some("b-1"), &body(5)).await;
    assert_eq!(other.status, StatusCode::BAD_REQUEST, "{}", other.body);
    assert!(other.body["message"].as_str().is_some_and(|m| m.contains("Idempotency-Key")), "{}", other.body);
    // A key with a control character (a tab): 400, nothing created.
    let bad = post_with_key(&server, &ann, "/api/v1/reqs/", Some("b\tc"), &body(4)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    assert_eq!(all_request_ids(&server).await, vec![first.body["ReqID"].as_i64().unwrap()]);
    agent.stop().await;
}

#[actix_rt::test]
async fn idempotency_retry_at_the_waiting_limit_gets_the_first_answer() {
    let server = TestServer::start_with(Clock::manual(), |c| c.max_waiting_requests_per_user = 2).await;
    let ann = server.user("ann", &["lab"]).await;
    // Two keyed submissions fill ann's limit of 2 waiting requests.
    let first = post_with_key(&server, &ann, "/v1/requests", Some("k-1"), &submission("x")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let second = post_with_key(&server, &ann, "/v1/requests", Some("k-2"), &submission("x")).await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.body);
    // A retry of the first (same key, same body) counts towards the limit
    // itself: it gets the first answer, not a 429, and stores nothing.
    let retry = post_with_key(&server, &ann, "/v1/requests", Some("k-1"), &submission("x")).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.body);
    assert_eq!(retry.body["id"], first.body["id"]);
    // The same key with another body is still a conflict.
    let other = post_with_key(&server, &ann, "/v1/requests", Some("k-1"), &submission("y")).await;
    assert_eq!(other.status, StatusCode::CONFLICT, "{}", other.body);
    // A new key at the limit is 429, and nothing was stored by any of these.
    let new = post_with_key(&server, &ann, "/v1/requests", Some("k-3"), &submission("x")).await;
    assert_eq!(new.status, StatusCode::TOO_MANY_REQUESTS, "{}", new.body);
    let mut ids = all_request_ids(&server).await;
    ids.sort_unstable();
    assert_eq!(ids, vec![first.body["id"].as_i64().unwrap(), second.body["id"].as_i64().unwrap()]);
}
