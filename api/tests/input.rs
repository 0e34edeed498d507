//! Authentication, authorisation and bad input: every case names its input
//! and the answer it must get; none may change anything or hurt the server.

mod common;

use awc::http::StatusCode;
use common::{TestServer, caps, wait_for_worker};
use corral_actors::Clock;
use serde_json::{Value, json};

async fn request_count(server: &TestServer) -> usize {
    let (status, page) = server.admin().get("/v1/requests?limit=1000").await;
    assert_eq!(status, StatusCode::OK);
    page["items"].as_array().unwrap().len()
}

#[actix_rt::test]
async fn tokens_and_ownership_are_enforced() {
    let server = TestServer::start(Clock::System).await;
    let agent = server.agent("host-auth", 1, &caps(&[("device_type", "x")]));
    wait_for_worker(&server.admin(), agent.uuids[0], |w| w["state"] == "maintenance").await;
    let alice = server.api(&server.user("alice", &[]).await);
    let mallory = server.api(&server.user("mallory", &[]).await);
    let id = alice.submit(json!({"caps": {"device_type": "x"}})).await;

    // No token, a wrong token, a malformed header: 401 with the error JSON.
    let (status, body) = server.anonymous().get("/v1/requests").await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")), "{body}");
    let (status, _) = server.api("crl_not_a_token").get("/v1/requests").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server.anonymous().post("/v1/requests", json!({"caps": {}})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Another user's request: 404 everywhere, never its data.
    for (method, path) in [
        ("GET", format!("/v1/requests/{id}")),
        ("GET", format!("/v1/requests/{id}/history")),
        ("GET", format!("/v1/requests/{id}/explain")),
        ("POST", format!("/v1/requests/{id}/close")),
        ("POST", format!("/v1/requests/{id}/acquire")),
        ("POST", format!("/v1/requests/{id}/prolong")),
    ] {
        let (status, body) = match method {
            "GET" => mallory.get(&path).await,
            _ => mallory.post_empty(&path).await,
        };
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
        assert!(!body.to_string().contains("device_type"), "{body}");
    }
    let (status, _) = mallory.patch(&format!("/v1/requests/{id}"), json!({"priority": 1})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, page) = mallory.get("/v1/requests").await;
    assert_eq!(page["items"], json!([]), "mallory lists only her own requests");
    let (status, _) = mallory.get("/v1/requests?owner=alice").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, still) = alice.get(&format!("/v1/requests/{id}")).await;
    assert_eq!(still["state"], "waiting", "mallory's close changed nothing");

    // Non-admins cannot create users or change workers.
    let (status, body) = mallory.post("/v1/users", json!({"name": "eve", "admin": true})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let worker = agent.uuids[0];
    let (status, _) = mallory.put(&format!("/v1/workers/{worker}/state"), json!({"state": "idle"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = mallory.put(&format!("/v1/workers/{worker}/groups"), json!(["x"])).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = mallory.delete(&format!("/v1/workers/{worker}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = mallory.get("/v1/users").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Agent tokens are for the agent API only, user tokens not for it.
    let (status, _) = server.api(&server.agent_token).get("/v1/requests").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = alice.post("/v1/agent/sessions", json!({"agent": "fake", "workers": []})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A deleted user's token stops working.
    let (status, _) = server.admin().delete("/v1/users/mallory").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = mallory.get("/v1/requests").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Unauthenticated endpoints.
    assert_eq!(server.anonymous().get("/healthz").await.0, StatusCode::OK);
    assert_eq!(server.anonymous().get("/readyz").await.0, StatusCode::OK);
    agent.stop().await;
    server.stop().await;
}

#[actix_rt::test]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let server = TestServer::start(Clock::System).await;
    let agent = server.agent("host-input", 1, &caps(&[("device_type", "x")]));
    wait_for_worker(&server.admin(), agent.uuids[0], |w| w["state"] == "maintenance").await;
    let token = server.user("dave", &[]).await;
    let dave = server.api(&token);
    let id = dave.submit(json!({"caps": {"device_type": "x"}})).await;
    let before = request_count(&server).await;

    let past = "2001-01-01T00:00:00Z";
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("malformed JSON", b"{\"caps\": {".to_vec(), 400),
        ("not an object", b"[1, 2]".to_vec(), 400),
        ("empty body", Vec::new(), 400),
        ("missing caps", b"{}".to_vec(), 400),
        ("priority 0", json!({"caps": {}, "priority": 0}).to_string().into_bytes(), 400),
        ("priority 17", json!({"caps": {}, "priority": 17}).to_string().into_bytes(), 400),
        ("priority as text", json!({"caps": {}, "priority": "high"}).to_string().into_bytes(), 400),
        ("caps as a list", json!({"caps": ["device_type"]}).to_string().into_bytes(), 400),
        ("caps with a number value", json!({"caps": {"device_type": 4}}).to_string().into_bytes(), 400),
        ("caps with an empty key", json!({"caps": {"": "x"}}).to_string().into_bytes(), 400),
        ("deadline in the past", json!({"caps": {}, "deadline": past}).to_string().into_bytes(), 400),
        (
            "valid_after after deadline",
            json!({"caps": {}, "valid_after": "2100-01-02T00:00:00Z", "deadline": "2100-01-01T00:00:00Z"})
                .to_string()
                .into_bytes(),
            400,
        ),
        ("unparsable deadline", json!({"caps": {}, "deadline": "tomorrow"}).to_string().into_bytes(), 400),
        ("unparsable lease", json!({"caps": {}, "lease": "a while"}).to_string().into_bytes(), 400),
        ("lease over max_lease", json!({"caps": {}, "lease": "30days"}).to_string().into_bytes(), 400),
        ("zero lease", json!({"caps": {}, "lease": "0s"}).to_string().into_bytes(), 400),
        ("unknown field", json!({"caps": {}, "priorty": 3}).to_string().into_bytes(), 400),
        ("bad ssh_public_key", json!({"caps": {}, "ssh_public_key": "ssh-rsa nope"}).to_string().into_bytes(), 400),
        ("bad UUID cap", json!({"caps": {"UUID": "not-a-uuid"}}).to_string().into_bytes(), 400),
        ("caps nobody offers", json!({"caps": {"device_type": "unicorn"}}).to_string().into_bytes(), 422),
        (
            "8 MiB body",
            {
                let mut big = b"{\"caps\": {\"k\": \"".to_vec();
                big.extend(std::iter::repeat_n(b'a', 8 * 1024 * 1024));
                big.extend(b"\"}}");
                big
            },
            413,
        ),
    ];
    for (name, body, expected) in cases {
        let (status, answer) = dave.post_raw("/v1/requests", body).await;
        assert_eq!(status.as_u16(), expected, "{name}: {answer}");
        let code = answer["error"].as_str().unwrap_or_else(|| panic!("{name}: no error code in {answer}"));
        assert!(["bad_request", "unprocessable"].contains(&code), "{name}: {answer}");
        assert!(!answer["message"].as_str().unwrap_or_default().is_empty(), "{name}: {answer}");
    }

    let path_cases: Vec<(&str, &str, Value, u16)> = vec![
        ("request id not a number", "/v1/requests/abc", Value::Null, 400),
        ("request id zero", "/v1/requests/0", Value::Null, 400),
        ("unknown request", "/v1/requests/999999", Value::Null, 404),
        ("bad state filter", "/v1/requests?state=sleeping", Value::Null, 400),
        ("bad limit", "/v1/requests?limit=0", Value::Null, 400),
        ("huge limit", "/v1/requests?limit=100000", Value::Null, 400),
        ("bad cursor", "/v1/requests?cursor=zzz", Value::Null, 400),
        ("unknown query parameter", "/v1/requests?sate=waiting", Value::Null, 400),
        ("worker id not a UUID", "/v1/workers/nope", Value::Null, 400),
        ("unknown worker", "/v1/workers/00000000-0000-4000-8000-000000000000", Value::Null, 404),
        ("bad cap filter", "/v1/workers?cap=device_type", Value::Null, 400),
        ("unknown endpoint", "/v1/nothing", Value::Null, 404),
        // Routes sit in scopes by prefix; what a scope does not route gets
        // the same JSON 404 as any unknown path.
        ("unknown endpoint under a request", "/v1/requests/1/nothing", Value::Null, 404),
        ("unknown endpoint under a worker", "/v1/workers/00000000-0000-4000-8000-000000000000/x", Value::Null, 404),
        ("a scope's prefix glued to more text", "/v1/requestsfoo", Value::Null, 404),
        ("trailing slash", "/v1/requests/", Value::Null, 404),
        ("unknown endpoint under agent sessions", "/v1/agent/sessions/x/y/z", Value::Null, 404),
    ];
    for (name, path, _, expected) in path_cases {
        let (status, answer) = dave.get(path).await;
        assert_eq!(status.as_u16(), expected, "{name}: {answer}");
        assert!(answer["error"].is_string(), "{name}: {answer}");
        // The message points only at what exists (there is no /openapi.json yet).
        assert!(!answer.to_string().contains("openapi"), "{name}: {answer}");
    }

    // A method an existing path does not answer: a JSON 405 that names
    // the path and the method, whichever family the path belongs to.
    let uuid = "00000000-0000-4000-8000-000000000000";
    let wrong_methods: Vec<(&str, String)> = vec![
        ("DELETE", "/v1/requests".to_string()),
        ("DELETE", format!("/v1/requests/{id}")),
        ("GET", format!("/v1/requests/{id}/close")),
        ("GET", format!("/v1/requests/{id}/acquire")),
        ("PUT", format!("/v1/requests/{id}/history")),
        ("POST", "/v1/workers".to_string()),
        ("POST", format!("/v1/workers/{uuid}/state")),
        ("PATCH", "/v1/users".to_string()),
        ("GET", "/v1/users/dave".to_string()),
        ("GET", "/v1/agent/sessions".to_string()),
        ("GET", format!("/v1/agent/sessions/{uuid}/results")),
        ("POST", "/healthz".to_string()),
        ("DELETE", "/readyz".to_string()),
    ];
    for (method, path) in &wrong_methods {
        let verb = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
        let (status, answer) = dave.send(verb, path, Some(b"{}".to_vec())).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}: {answer}");
        assert_eq!(answer["error"], "bad_request", "{method} {path}: {answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains(path.as_str()) && message.contains(method), "{method} {path}: {answer}");
    }
    // Probes may ask with HEAD: the health answers, without a body.
    for path in ["/healthz", "/readyz"] {
        let (status, answer) = server.anonymous().send(awc::http::Method::HEAD, path, None).await;
        assert_eq!((status, answer), (StatusCode::OK, Value::Null), "HEAD {path}");
    }

    let patch_cases: Vec<(&str, Value, u16)> = vec![
        ("patch priority 0", json!({"priority": 0}), 400),
        ("patch nothing", json!({}), 400),
        ("patch deadline in the past", json!({"deadline": past}), 400),
        ("patch unknown field", json!({"caps": {}}), 400),
    ];
    for (name, body, expected) in patch_cases {
        let (status, answer) = dave.patch(&format!("/v1/requests/{id}"), body).await;
        assert_eq!(status.as_u16(), expected, "{name}: {answer}");
    }
    let (status, answer) =
        dave.post_raw(&format!("/v1/requests/{id}/prolong"), b"{\"by\": \"forever\"}".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, answer) = dave.post_empty(&format!("/v1/requests/{id}/acquire?wait=soon")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, answer) = dave.post_empty(&format!("/v1/requests/{id}/prolong")).await;
    assert_eq!(status, StatusCode::CONFLICT, "prolonging a waiting request: {answer}");

    let admin = server.admin();
    let worker = agent.uuids[0];
    let admin_cases: Vec<(&str, &str, Value, u16)> = vec![
        ("state busy is not an admin state", "state", json!({"state": "busy"}), 400),
        ("state missing", "state", json!({"reason": "x"}), 400),
        ("groups not a list", "groups", json!({"a": 1}), 400),
        ("group name empty", "groups", json!([""]), 400),
    ];
    for (name, what, body, expected) in admin_cases {
        let (status, answer) = admin.put(&format!("/v1/workers/{worker}/{what}"), body).await;
        assert_eq!(status.as_u16(), expected, "{name}: {answer}");
    }
    let (status, answer) = admin.post("/v1/users", json!({"name": "has space"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, answer) = admin.post("/v1/users", json!({"name": "dave"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "duplicate user: {answer}");

    // Nothing changed, and the server is healthy.
    assert_eq!(request_count(&server).await, before);
    let (_, unchanged) = dave.get(&format!("/v1/requests/{id}")).await;
    assert_eq!(unchanged["priority"], 8);
    assert_eq!(unchanged["state"], "waiting");
    assert_eq!(server.anonymous().get("/readyz").await.0, StatusCode::OK);
    let (status, _) = dave.get("/v1/requests").await;
    assert_eq!(status, StatusCode::OK);
    agent.stop().await;
    server.stop().await;
}
