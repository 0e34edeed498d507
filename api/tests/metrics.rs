//! `/metrics` (issue 15): Prometheus text format, parsed with a real
//! Prometheus text parser (`prometheus-parse`), figures that follow the
//! lab, and the `metrics_access` setting.

mod common;

use std::time::Duration;

use awc::http::StatusCode;
use common::{TestServer, caps, wait_for_request};
use corral_actors::Clock;
use prometheus_parse::{Scrape, Value};
use serde_json::json;

/// GETs `/metrics` with an optional token: status, content type, body.
async fn scrape(server: &TestServer, token: Option<&str>) -> (StatusCode, String, String) {
    let http = awc::Client::builder().timeout(Duration::from_secs(30)).finish();
    let mut request = http.get(format!("{}/metrics", server.url));
    if let Some(token) = token {
        request = request.insert_header(("Authorization", format!("Bearer {token}")));
    }
    let mut response = request.send().await.expect("the server answers");
    let status = response.status();
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let body = response.body().await.expect("a body");
    (status, content_type, String::from_utf8_lossy(&body).into_owned())
}

fn parse(text: &str) -> Scrape {
    // The parser skips lines it cannot read: first check that every sample
    // line has the shape `name{labels} value`, so that nothing is skipped.
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (name_and_labels, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        assert!(value.parse::<f64>().is_ok() || value == "+Inf" || value == "NaN", "value of {line}");
        let name = name_and_labels.split('{').next().unwrap_or_default();
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name of {line}"
        );
    }
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text format")
}

fn gauge(scrape: &Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no sample {name} {label:?}"));
    match sample.value {
        Value::Gauge(v) | Value::Counter(v) | Value::Untyped(v) => v,
        ref other => panic!("{name} is {other:?}"),
    }
}

/// How many observations the histogram `name` holds (its `+Inf` bucket).
fn histogram_count(scrape: &Scrape, name: &str) -> f64 {
    let sample = scrape.samples.iter().find(|s| s.metric == name).unwrap_or_else(|| panic!("no histogram {name}"));
    match &sample.value {
        Value::Histogram(buckets) => {
            let inf = buckets.iter().find(|b| b.less_than.is_infinite()).expect("a +Inf bucket");
            assert!(buckets.iter().all(|b| b.count <= inf.count), "buckets are cumulative: {buckets:?}");
            inf.count
        }
        other => panic!("{name} is {other:?}"),
    }
}

#[actix_rt::test]
async fn metrics_follow_the_lab_in_prometheus_text_format() {
    let server = TestServer::start(Clock::System).await;
    let agent = server.agent("host-m", 2, &caps(&[("device_type", "x")]));
    server.make_idle(&agent.uuids).await;
    let ann = server.api(&server.user("ann", &[]).await);
    let id = ann.submit(json!({"caps": {"device_type": "x"}})).await;
    wait_for_request(&ann, id, |r| r["state"] == "in_progress").await;

    // Sent: GET /metrics without a token (metrics_access = "anyone").
    // Must happen: 200 in Prometheus text 0.0.4, and figures of this lab.
    let (status, content_type, text) = scrape(&server, None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let metrics = parse(&text);
    assert_eq!(gauge(&metrics, "corral_workers", Some(("state", "running"))), 1.0, "{text}");
    assert_eq!(gauge(&metrics, "corral_workers", Some(("state", "idle"))), 1.0, "{text}");
    assert_eq!(gauge(&metrics, "corral_workers", Some(("state", "failed"))), 0.0, "every state is listed");
    assert_eq!(gauge(&metrics, "corral_long_polls_open", None), 0.0, "no acquire?wait= is parked: {text}");
    assert_eq!(gauge(&metrics, "corral_event_streams_open", None), 0.0, "no event stream is open: {text}");
    assert_eq!(gauge(&metrics, "corral_requests_live", None), 1.0);
    assert_eq!(gauge(&metrics, "corral_requests_queued", None), 0.0);
    assert_eq!(gauge(&metrics, "corral_agent_sessions", None), 1.0);
    assert_eq!(gauge(&metrics, "corral_tunnels_open", None), 1.0);
    assert!(gauge(&metrics, "corral_database_batched_calls_total", None) >= 1.0, "{text}");
    assert!(gauge(&metrics, "process_resident_memory_bytes", None) > 1e6);
    assert!(gauge(&metrics, "process_cpu_seconds_total", None) > 0.0);
    assert_eq!(gauge(&metrics, "corral_build_info", Some(("version", env!("CARGO_PKG_VERSION")))), 1.0);
    let db = metrics
        .samples
        .iter()
        .find(|s| s.metric == "corral_database_operation_duration_seconds" && s.labels.get("operation").is_some())
        .unwrap_or_else(|| panic!("no database histogram in {text}"));
    match &db.value {
        Value::Histogram(buckets) => assert!(buckets.iter().any(|b| b.count > 0.0), "{buckets:?}"),
        other => panic!("the database figure is {other:?}"),
    }
    // Every family has its help and type (the convention Prometheus relies on).
    for name in ["corral_workers", "corral_requests_live", "corral_database_operation_duration_seconds"] {
        assert!(text.contains(&format!("# HELP {name} ")), "help of {name}");
        assert!(text.contains(&format!("# TYPE {name} ")), "type of {name}");
    }

    // The figures move with the lab: the lease ends, the worker comes back.
    let (status, _) = ann.post_empty(&format!("/v1/requests/{id}/close")).await;
    assert_eq!(status, StatusCode::OK);
    common::wait_for_worker(&server.admin(), agent.uuids[0], |w| w["state"] == "idle" && w["request"].is_null()).await;
    common::wait_for_worker(&server.admin(), agent.uuids[1], |w| w["state"] == "idle").await;
    let (_, _, text) = scrape(&server, None).await;
    let metrics = parse(&text);
    assert_eq!(gauge(&metrics, "corral_workers", Some(("state", "idle"))), 2.0, "{text}");
    // One lease went through its life: queued, bound, started, ended.
    assert_eq!(histogram_count(&metrics, "corral_request_queue_wait_seconds"), 1.0, "{text}");
    assert_eq!(histogram_count(&metrics, "corral_request_time_to_lease_seconds"), 1.0, "{text}");
    assert_eq!(histogram_count(&metrics, "corral_lease_length_seconds"), 1.0, "{text}");
    assert_eq!(gauge(&metrics, "corral_requests_ended_total", Some(("state", "done"))), 1.0, "{text}");
    assert_eq!(gauge(&metrics, "corral_requests_ended_total", Some(("state", "cancelled"))), 0.0, "{text}");
    assert!(histogram_count(&metrics, "corral_matcher_pass_duration_seconds") >= 1.0, "{text}");
    // The request was matched at admission and bound with its submission,
    // not in one of the matcher's batches.
    assert_eq!(histogram_count(&metrics, "corral_matcher_batch_size"), 0.0, "{text}");
    assert_eq!(gauge(&metrics, "corral_agent_command_timeouts_total", Some(("kind", "prepare"))), 0.0, "{text}");
    histogram_count(&metrics, "corral_agent_heartbeat_lag_seconds");
    assert_eq!(gauge(&metrics, "corral_requests_live", None), 0.0);
    assert_eq!(gauge(&metrics, "corral_tunnels_open", None), 0.0);

    // Sent: POST /metrics. Must happen: 405 with the usual error body.
    let (status, body) = ann.post("/metrics", json!({})).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    agent.stop().await;
    server.stop().await;
}

#[actix_rt::test]
async fn metrics_access_admin_refuses_everyone_else() {
    let server = TestServer::start_with(Clock::System, |c| c.metrics_access = "admin".to_string()).await;
    let user = server.user("bo", &[]).await;
    // Sent: no token, a wrong token, a user's token, the agent's token.
    // Must happen: 401, 401, 403, 403; the admin's token gets the figures.
    assert_eq!(scrape(&server, None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(scrape(&server, Some("crl_not_a_token")).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(scrape(&server, Some(&user)).await.0, StatusCode::FORBIDDEN);
    assert_eq!(scrape(&server, Some(&server.agent_token)).await.0, StatusCode::FORBIDDEN);
    let (status, _, text) = scrape(&server, Some(&server.admin)).await;
    assert_eq!(status, StatusCode::OK);
    parse(&text);
    server.stop().await;
}
