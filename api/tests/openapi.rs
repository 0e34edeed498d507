//! `/openapi.json` (issue 15) against what the server answers.
//!
//! actix-web cannot list its routes, so the server's routes come from the
//! route table (`corral_api::routes::table`, made by the same macro input
//! that registers them). The document and the table must name the same
//! methods and paths; and the live server must answer every documented
//! method and path (not the "no such endpoint" 404, not 405), refuse every
//! other method on those paths with 405, and accept exactly the query
//! parameters the document names (its handlers refuse unknown ones and
//! list the known ones).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use awc::http::{Method, StatusCode};
use common::TestServer;
use corral_actors::Clock;
use serde_json::Value;

/// The operations of the document: (method, path) to the operation.
fn operations(doc: &Value) -> BTreeMap<(String, String), Value> {
    let mut ops = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            if ["get", "put", "post", "delete", "head", "patch", "options", "trace"].contains(&method.as_str()) {
                ops.insert((method.clone(), path.clone()), op.clone());
            }
        }
    }
    ops
}

fn document() -> Value {
    serde_json::to_value(corral_api::openapi::document()).expect("the document serializes")
}

#[test]
fn the_document_and_the_route_table_name_the_same_routes() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let documented: BTreeSet<(String, String)> = operations(&doc).into_keys().collect();
    let served: BTreeSet<(String, String)> =
        corral_api::routes::table().into_iter().map(|r| (r.method.to_string(), r.path.to_string())).collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(undocumented.is_empty(), "routes the server answers but the document lacks: {undocumented:?}");
    assert!(unserved.is_empty(), "routes the document names but the server does not register: {unserved:?}");
    // Every /v1 route is in the table (the native API is what the document describes).
    assert!(served.iter().filter(|(_, p)| p.starts_with("/v1/")).count() >= 29, "{served:?}");
}

#[test]
fn every_operation_documents_its_errors_and_security() {
    let doc = document();
    let ops = operations(&doc);
    let ids: Vec<&str> = ops.values().map(|op| op["operationId"].as_str().expect("an operationId")).collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "operation ids are unique: {ids:?}");
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert_eq!(doc["security"][0]["bearer"], serde_json::json!([]));
    let codes = &doc["components"]["schemas"]["ErrorCode"]["enum"];
    for code in ["bad_request", "unauthorized", "forbidden", "not_found", "conflict", "too_many_requests"] {
        assert!(codes.as_array().unwrap().contains(&Value::from(code)), "{code} in {codes}");
    }
    for ((method, path), op) in operations(&doc) {
        let responses = op["responses"].as_object().unwrap();
        if path.starts_with("/v1/") {
            for status in ["400", "401", "403", "500", "503"] {
                assert!(responses.contains_key(status), "{method} {path} documents {status}");
            }
            assert!(op.get("security").is_none(), "{method} {path} keeps the bearer requirement");
        } else {
            assert!(op["security"].as_array().unwrap().contains(&serde_json::json!({})), "{method} {path} is open");
        }
        if path.contains('{') && path.starts_with("/v1/") {
            assert!(responses.contains_key("404"), "{method} {path} documents 404");
        }
    }
}

/// A path of the document with sample values in its parameters.
fn concrete(path: &str) -> String {
    let id = if path.starts_with("/v1/agent/") { "5f0e6a8c-3b1d-4c2e-8f4a-9d7b6c5e4a32" } else { "1" };
    path.replace("{id}", id)
        .replace("{uuid}", "0b8f4a2e-5e0c-4a3e-9c35-1d8f0f6b9a10")
        .replace("{name}", "nobody-at-all")
}

/// Sends `method` to `path` and reads the answer's status and JSON body;
/// the event stream is not read past its headers.
async fn probe(server: &TestServer, token: &str, method: &str, path: &str) -> (StatusCode, Value) {
    let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    if path.starts_with("/v1/events") && method == Method::GET {
        let http = awc::Client::builder().timeout(Duration::from_secs(30)).finish();
        let response = http
            .get(format!("{}{path}", server.url))
            .insert_header(("Authorization", format!("Bearer {token}")))
            .send()
            .await
            .expect("the event stream answers");
        let status = response.status();
        return (status, Value::Null);
    }
    let body = matches!(method, Method::POST | Method::PUT | Method::PATCH).then(|| b"{}".to_vec());
    server.api(token).send(method, path, body).await
}

fn is_no_such_endpoint(status: StatusCode, body: &Value) -> bool {
    status == StatusCode::NOT_FOUND && body["message"].as_str().is_some_and(|m| m.starts_with("no such endpoint"))
}

#[actix_rt::test]
async fn the_live_server_answers_exactly_what_the_document_says() {
    let server = TestServer::start(Clock::System).await;
    // Sent: GET /openapi.json without a token. Must happen: 200, the document.
    let (status, served) = server.anonymous().get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK, "{served}");
    assert_eq!(served, document(), "the server serves the document the code builds");

    // The probe can fail: a path outside the table gets the fallback 404.
    let (status, body) = server.api(&server.admin).get("/v1/no-such-thing").await;
    assert!(is_no_such_endpoint(status, &body), "{status} {body}");

    let ops = operations(&served);
    let paths: BTreeSet<&String> = ops.keys().map(|(_, p)| p).collect();
    for path in paths {
        let token = if path.starts_with("/v1/agent/") { &server.agent_token } else { &server.admin };
        let url = concrete(path);
        for method in ["get", "put", "post", "delete", "patch", "head"] {
            let documented = ops.contains_key(&(method.to_string(), path.clone()));
            let (status, body) = probe(&server, token, method, &url).await;
            if documented {
                // Sent: the documented method with an admin's (agent's) token.
                // Must happen: an answer of the route, not the fallback or 405.
                assert!(!is_no_such_endpoint(status, &body), "{method} {url}: {status} {body}");
                assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {url}: {body}");
                assert!(!status.is_server_error(), "{method} {url}: {status} {body}");
            } else {
                // Sent: a method the document does not name. Must happen: 405.
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {url}: {body}");
            }
        }
    }

    // Query parameters: each handler that reads a query refuses an unknown
    // parameter with 400 naming the ones it knows; they must be the
    // documented ones (a handler that reads no query ignores it).
    for ((method, path), op) in &ops {
        if method == "head" || (path == "/v1/events" && method == "get") {
            continue;
        }
        let documented: BTreeSet<String> = op["parameters"]
            .as_array()
            .map(|ps| {
                ps.iter().filter(|p| p["in"] == "query").map(|p| p["name"].as_str().unwrap().to_string()).collect()
            })
            .unwrap_or_default();
        let token = if path.starts_with("/v1/agent/") { &server.agent_token } else { &server.admin };
        let url = format!("{}?zz_probe=1", concrete(path));
        let (status, body) = probe(&server, token, method, &url).await;
        let message = body["message"].as_str().unwrap_or_default();
        match message.split_once("unknown query parameter \"zz_probe\"; known: ") {
            Some((_, known)) => {
                assert_eq!(status, StatusCode::BAD_REQUEST);
                let known: BTreeSet<String> = known.split(", ").filter(|k| !k.is_empty()).map(str::to_string).collect();
                assert_eq!(known, documented, "query parameters of {method} {path}");
            }
            None => assert!(documented.is_empty(), "{method} {path} documents {documented:?} but reads no query"),
        }
    }
    // The event stream refuses a query too (it reads none).
    let (status, body) = server.api(&server.admin).get("/v1/events?zz_probe=1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        ops[&("get".to_string(), "/v1/events".to_string())].get("parameters").is_none_or(|ps| ps
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["in"] != "query"))
    );
    server.stop().await;
}

/// What schemathesis found, kept: a NUL in an admin's input reached the
/// audit row (PostgreSQL's text refuses NUL) and the call answered 500.
#[actix_rt::test]
async fn schemathesis_findings_nul_in_admin_input_is_a_4xx() {
    let server = TestServer::start(Clock::System).await;
    let admin = server.admin();
    // Sent: a note with a NUL (on a worker that does not exist). Must
    // happen: 400 for the note, not 500; the audit row records the refusal.
    let (status, body) = admin
        .put("/v1/workers/0b8f4a2e-5e0c-4a3e-9c35-1d8f0f6b9a10/note", serde_json::json!({"note": "a\u{0}b"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Sent: DELETE of a user whose name holds an encoded NUL. Must happen: a
    // 4xx, and no user is deleted.
    let (status, body) = admin.delete("/v1/users/a%00b").await;
    assert!(status.is_client_error(), "{status} {body}");
    let (status, audit) = admin.get("/v1/audit").await;
    assert_eq!(status, StatusCode::OK);
    let items = audit["items"].as_array().expect("audit items");
    assert_eq!(items.len(), 2, "{audit}");
    assert!(items.iter().all(|i| i["outcome"] == "refused"), "{audit}");
    assert_eq!(items[1]["detail"], "note: a\u{2400}b", "{audit}");
    server.stop().await;
}
