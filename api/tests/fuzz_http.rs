//! Fuzzing the request-facing inputs through the real HTTP server: times, durations, caps, SSH keys, priorities,
//! query strings and whole bodies, native and Boruta, drawn by proptest strategies that mix valid values,
//! edge cases (before 1970, past 9999, offsets that cross the epoch, multi-byte text, durations that
//! overflow, control characters, `=` in keys, `ssh-dss` keys, comments with newlines) and noise.
//!
//! What must hold for every input: the answer is not a 5xx, nothing in the server panics (a panic hook
//! counts panics on every thread of this process, which runs the server), and afterwards the server still
//! schedules: the lease it held ends and its worker goes back to work, and a new request gets a worker.
//!
//! `CORRAL_FUZZ_CASES` sets the number of inputs (default 150, what CI runs); the documented long run is
//! `CORRAL_FUZZ_CASES=20000 cargo nextest run -p corral-api --test fuzz_http`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use awc::http::{Method, StatusCode};
use common::{TestServer, caps, wait_for_request, wait_for_worker};
use corral_actors::Clock;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{Map, Value, json};

fn cases() -> usize {
    std::env::var("CORRAL_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(150)
}

/// Times: edge cases by name, RFC 3339 shapes with any digits, and any text.
fn time_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "1970-01-01T00:00:00+01:00",
            "1970-01-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "9999-12-31T23:59:59.999999Z",
            "9999-12-31T23:59:59-01:00",
            "10000-01-01T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "0001-01-01T00:00:00Z",
            "2026-13-40T25:61:61Z",
            "2026-01-01T00:00:00é00:00",
            "2026-01-01T00:00:00+ü:00",
            "ééééééééé",
            "2026-01-01T00:00:00+99:99",
            "2026-02-30T00:00:00Z",
            "",
        ])
        .prop_map(str::to_string),
        "[0-9]{1,6}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,12})?(Z|[+-][0-9]{2}:[0-9]{2})",
        ".{0,40}",
    ]
}

/// Durations: edge cases, humantime shapes with any magnitude, and any text.
fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "500us",
            "0s",
            "1ns",
            "300000000000y",
            "18446744073709551615s",
            "18446744073709551616s",
            "99999999999999999999999d",
            "1s 1ns",
            "1h 30m",
            "-5m",
            "",
        ])
        .prop_map(str::to_string),
        "[0-9]{1,25}(ns|us|ms|s|m|h|d|w|M|y)",
        ".{0,20}",
    ]
}

/// Caps: sane pairs, pairs with control characters, `=`, spaces, long or multi-byte text.
fn caps_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof!["[a-z_]{1,12}", ".{0,80}", "[a-z]{1,5}=[a-z]{0,5}", "[a-z]{1,5}[\\x00-\\x1f][a-z]{1,5}"];
    let value = prop_oneof!["[a-z0-9]{0,12}", ".{0,300}", "[a-z]{0,5}[\\x00-\\x1f\\x7f][a-z]{0,5}"];
    prop_oneof![
        Just(json!({"device_type": "x"})),
        prop::collection::btree_map(key, value, 0..6).prop_map(|map| json!(map)),
        any::<i64>().prop_map(|n| json!(n)),
    ]
}

/// SSH public keys: known and unknown types, good and broken base64, comments with control characters.
fn ssh_key() -> impl Strategy<Value = String> {
    prop_oneof![
        "(ssh-ed25519|ssh-rsa|ssh-dss|ecdsa-sha2-nistp256|sk-ssh-ed25519@openssh.com|[a-z-]{1,20}) [A-Za-z0-9+/=]{0,120}( .{0,30})?",
        Just("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm3hWqdYf0bCQ2uJxq1RxvVn5Cq5dLx0aQ0v8d8aZ3C ok".to_string()),
        Just("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm3hWqdYf0bCQ2uJxq1RxvVn5Cq5dLx0aQ0v8d8aZ3C a\nb".to_string()),
        ".{0,60}",
    ]
}

/// A JSON value of any type, for fields sent with the wrong type.
fn noise() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::String),
        Just(json!([1, "a", null])),
        Just(json!({"a": {"b": []}})),
    ]
}

fn priority() -> impl Strategy<Value = Value> {
    prop_oneof![(-3i64..20).prop_map(|n| json!(n)), noise()]
}

/// A body of `POST /v1/requests`: each field present or not, valid, hostile or of the wrong type.
fn native_submission() -> impl Strategy<Value = Value> {
    (
        caps_value(),
        prop::option::of(priority()),
        prop::option::of(prop_oneof![time_text().prop_map(Value::String), noise()]),
        prop::option::of(prop_oneof![time_text().prop_map(Value::String), noise()]),
        prop::option::of(prop_oneof![duration_text().prop_map(Value::String), noise()]),
        prop::option::of(prop_oneof![ssh_key().prop_map(Value::String), noise()]),
        prop::option::of(any::<bool>()),
    )
        .prop_map(|(caps, priority, valid_after, deadline, lease, key, unsatisfiable)| {
            let mut body = Map::new();
            body.insert("caps".into(), caps);
            let fields = [
                ("priority", priority),
                ("valid_after", valid_after),
                ("deadline", deadline),
                ("lease", lease),
                ("ssh_public_key", key),
                ("allow_unsatisfiable", unsatisfiable.map(Value::Bool)),
            ];
            for (name, value) in fields {
                if let Some(value) = value {
                    body.insert(name.into(), value);
                }
            }
            Value::Object(body)
        })
}

fn patch_body() -> impl Strategy<Value = Value> {
    (
        prop::option::of(priority()),
        prop::option::of(time_text().prop_map(Value::String)),
        prop::option::of(time_text().prop_map(Value::String)),
    )
        .prop_map(|(priority, valid_after, deadline)| {
            let mut body = Map::new();
            for (name, value) in [("priority", priority), ("valid_after", valid_after), ("deadline", deadline)] {
                if let Some(value) = value {
                    body.insert(name.into(), value);
                }
            }
            Value::Object(body)
        })
}

/// A Boruta `ReqInfo`, with Go's zero times, hostile times and hostile caps.
fn boruta_submission() -> impl Strategy<Value = Value> {
    (priority(), caps_value(), time_text(), time_text()).prop_map(|(priority, caps, valid_after, deadline)| {
        json!({"Priority": priority, "Caps": caps, "ValidAfter": valid_after, "Deadline": deadline})
    })
}

/// A query string of list endpoints: known and unknown keys, any values, percent-encoded.
fn query() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec!["state", "owner", "priority", "limit", "cursor", "cap", "group", "bogus", ""]);
    let value = prop_oneof![".{0,30}", "[0-9-]{1,25}", Just("device_type=x".to_string()), Just("=".to_string())];
    prop::collection::vec((key, value), 0..5).prop_map(|pairs| {
        pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
    })
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One call of the fuzzer.
#[derive(Debug, Clone)]
enum Call {
    Submit(Value),
    Patch(Value),
    Prolong(Value),
    Acquire(String),
    ListRequests(String),
    ListWorkers(String),
    BorutaSubmit(Value),
    BorutaList(Value),
    Raw(Method, &'static str, Vec<u8>),
}

fn call() -> impl Strategy<Value = Call> {
    let raw_path = prop::sample::select(vec!["/v1/requests", "/v1/workers", "/api/v1/reqs/", "/api/v1/reqs/list"]);
    prop_oneof![
        4 => native_submission().prop_map(Call::Submit),
        2 => patch_body().prop_map(Call::Patch),
        2 => prop_oneof![duration_text().prop_map(|by| json!({"by": by})), noise().prop_map(|by| json!({"by": by}))]
            .prop_map(Call::Prolong),
        1 => duration_text().prop_map(Call::Acquire),
        2 => query().prop_map(Call::ListRequests),
        2 => query().prop_map(Call::ListWorkers),
        2 => boruta_submission().prop_map(Call::BorutaSubmit),
        1 => prop_oneof![
            Just(json!({"Filter": {"State": "WAITING"}, "Sorter": {"Item": "Deadline", "Order": "descending"}})),
            noise().prop_map(|filter| json!({"Filter": filter, "Paginator": {"ID": -1, "Limit": 1_000_000_000}})),
        ]
        .prop_map(Call::BorutaList),
        1 => (raw_path, prop::collection::vec(any::<u8>(), 0..200)).prop_map(|(path, bytes)| Call::Raw(Method::POST, path, bytes)),
    ]
}

fn count_panics() -> Arc<AtomicUsize> {
    let panics = Arc::new(AtomicUsize::new(0));
    let counter = panics.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        counter.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    panics
}

#[actix_rt::test]
async fn hostile_inputs_never_get_a_5xx_or_a_panic_and_scheduling_goes_on() {
    let panics = count_panics();
    // Every `?wait=` the server accepts ends well within the test client's 30 s.
    let server = TestServer::start_with(Clock::System, |config| config.max_wait = Duration::from_secs(2)).await;
    let agent = server.agent("host-fuzz", 1, &caps(&[("device_type", "x")]));
    let worker = agent.uuids[0];
    server.make_idle(&agent.uuids).await;
    let token = server.user("fuzzer", &[]).await;
    let fuzzer = server.api(&token);
    let leased = fuzzer.submit(json!({"caps": {"device_type": "x"}, "lease": "1h"})).await;
    wait_for_request(&fuzzer, leased, |r| r["state"] == "in_progress").await;
    let waiting = fuzzer.submit(json!({"caps": {"device_type": "x"}, "priority": 16})).await;

    let mut runner = TestRunner::new(ProptestConfig { cases: cases() as u32, ..ProptestConfig::default() });
    let strategy = call();
    for case in 0..cases() {
        let input = strategy.new_tree(&mut runner).expect("a strategy that always yields").current();
        let (method, path, body) = match &input {
            Call::Submit(body) => (Method::POST, "/v1/requests".to_string(), Some(body.to_string().into_bytes())),
            Call::Patch(body) => {
                (Method::PATCH, format!("/v1/requests/{waiting}"), Some(body.to_string().into_bytes()))
            }
            Call::Prolong(body) => {
                (Method::POST, format!("/v1/requests/{leased}/prolong"), Some(body.to_string().into_bytes()))
            }
            Call::Acquire(wait) => {
                (Method::POST, format!("/v1/requests/{waiting}/acquire?wait={}", encode(wait)), None)
            }
            Call::ListRequests(query) => (Method::GET, format!("/v1/requests?{query}"), None),
            Call::ListWorkers(query) => (Method::GET, format!("/v1/workers?{query}"), None),
            Call::BorutaSubmit(body) => {
                (Method::POST, "/api/v1/reqs/".to_string(), Some(body.to_string().into_bytes()))
            }
            Call::BorutaList(body) => {
                (Method::POST, "/api/v1/reqs/list".to_string(), Some(body.to_string().into_bytes()))
            }
            Call::Raw(method, path, bytes) => (method.clone(), path.to_string(), Some(bytes.clone())),
        };
        // Printed so that a failure inside the call (a dropped connection) still names its input.
        println!("case {case}: {input:?}");
        // A wait the server accepts is bounded by max_wait; keep the run short all the same.
        let (status, answer) = tokio::time::timeout(Duration::from_secs(330), fuzzer.send(method.clone(), &path, body))
            .await
            .unwrap_or_else(|_| panic!("case {case}: {method} {path} did not answer: {input:?}"));
        assert!(status.as_u16() < 500, "case {case}: {method} {path} answered {status} {answer}\ninput: {input:?}");
        assert_eq!(panics.load(Ordering::SeqCst), 0, "case {case}: the server panicked on {input:?}");
        // Lists, old and new, still answer after every accepted value.
        if status.is_success() && matches!(input, Call::Submit(_) | Call::Patch(_) | Call::BorutaSubmit(_)) {
            let (status, page) = server.admin().get("/v1/requests?limit=1000").await;
            assert_eq!(status, StatusCode::OK, "case {case}: listing after {input:?}: {page}");
            let (status, page) = fuzzer.post("/api/v1/reqs/list", json!({})).await;
            assert_eq!(status, StatusCode::OK, "case {case}: Boruta listing after {input:?}: {page}");
        }
    }

    // Scheduling goes on: the lease the fuzzer prolonged ends on close, its worker goes back to work (idle,
    // or running a request the fuzzer left waiting), and a new request of another user gets a worker.
    let (status, closed) = fuzzer.post_empty(&format!("/v1/requests/{leased}/close")).await;
    assert_eq!((status, closed["state"].as_str()), (StatusCode::OK, Some("done")), "{closed}");
    wait_for_worker(&server.admin(), worker, |w| w["state"] == "idle" || w["state"] == "running").await;
    // The new worker is in a group of alice's, so none of the requests the fuzzer left waiting can take it.
    let other = server.agent("host-after", 1, &caps(&[("device_type", "after-fuzz")]));
    wait_for_worker(&server.admin(), other.uuids[0], |w| w["state"] == "maintenance").await;
    let (status, body) = server.admin().put(&format!("/v1/workers/{}/groups", other.uuids[0]), json!(["after"])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.make_idle(&other.uuids).await;
    let alice = server.api(&server.user("alice", &["after"]).await);
    let fresh = alice.submit(json!({"caps": {"device_type": "after-fuzz"}})).await;
    let served = wait_for_request(&alice, fresh, |r| r["state"] == "in_progress").await;
    assert_eq!(served["worker"], json!(other.uuids[0].to_string()));
    assert_eq!(panics.load(Ordering::SeqCst), 0, "a panic was counted");
}
