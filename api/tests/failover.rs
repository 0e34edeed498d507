//! Issue 18 against a real PostgreSQL and real HTTP: while the database
//! refuses writes (a primary demoted by a failover: its sessions ended, the
//! server read-only) the API answers 503 with `Retry-After`, and resumes
//! once a server accepts writes again; ids from sequences started at 2^62
//! (what CockroachDB's `unique_rowid()` yields) go through matching intact.

mod common;

use std::time::Duration;

use awc::http::{Method, StatusCode};
use common::{TestServer, caps, sql, wait_for_request};
use corral_actors::Clock;
use serde_json::{Value, json};

/// POST `body` to `path`: status, `Retry-After`, body.
async fn post(server: &TestServer, token: &str, path: &str, body: Value) -> (StatusCode, Option<String>, Value) {
    let mut response = awc::Client::default()
        .request(Method::POST, format!("{}{path}", server.url))
        .insert_header(("Authorization", format!("Bearer {token}")))
        .send_json(&body)
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    let bytes = response.body().await.unwrap_or_default();
    (response.status(), retry_after, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn database_name(db_url: &str) -> String {
    let config: tokio_postgres::Config = db_url.parse().unwrap();
    config.get_dbname().expect("the test URL names its database").to_string()
}

#[actix_rt::test]
async fn a_database_that_turns_read_only_gets_503_with_retry_after_then_writes_resume() {
    let server = TestServer::start(Clock::System).await;
    // A worker that could serve the submissions (none is ever idle).
    let agent = server.agent("host-ro", 1, &caps(&[("device_type", "x")]));
    let token = server.user("nina", &[]).await;
    // 422 until the agent has registered its worker (nobody could serve).
    corral_testkit::wait_until("a first submission is accepted", Duration::from_secs(30), || async {
        let answer = post(&server, &token, "/v1/requests", json!({"caps": {"device_type": "x"}})).await;
        (answer.0 == StatusCode::CREATED).then_some(())
    })
    .await;

    // The failover: corral's sessions end and the server it reaches next
    // is read-only (a standby, or the old primary rejoining as one).
    let side = sql(&server.db_url).await;
    let name = database_name(&server.db_url);
    side.batch_execute(&format!("ALTER DATABASE \"{name}\" SET default_transaction_read_only = on")).await.unwrap();
    side.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        &[&name],
    )
    .await
    .unwrap();

    // Input: submissions while no server accepts writes. Must: 503 with a
    // Retry-After in seconds; never a 500, never a hang.
    let (status, retry_after, body) = corral_testkit::wait_until(
        "a submission is refused with 503 while the database is read-only",
        Duration::from_secs(30),
        || async {
            let answer = post(&server, &token, "/v1/requests", json!({"caps": {"device_type": "x"}})).await;
            assert_ne!(answer.0, StatusCode::INTERNAL_SERVER_ERROR, "{:?}", answer.2);
            (answer.0 == StatusCode::SERVICE_UNAVAILABLE).then_some(answer)
        },
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(retry_after.as_deref().is_some_and(|s| s.parse::<u32>().is_ok_and(|n| n > 0)), "{retry_after:?}");
    let before: i64 = side.query_one("SELECT count(*) FROM requests", &[]).await.unwrap().get(0);
    let again = post(&server, &token, "/v1/requests", json!({"caps": {"device_type": "x"}})).await;
    assert_eq!(again.0, StatusCode::SERVICE_UNAVAILABLE, "still read-only: {:?}", again.2);
    let after: i64 = side.query_one("SELECT count(*) FROM requests", &[]).await.unwrap().get(0);
    assert_eq!(before, after, "a refused submission leaves no row");

    // A primary accepts writes again: the server resumes on its own, on
    // fresh connections (the read-only ones left its pools).
    side.batch_execute(&format!("ALTER DATABASE \"{name}\" RESET default_transaction_read_only")).await.unwrap();
    let created = corral_testkit::wait_until("a submission succeeds again", Duration::from_secs(30), || async {
        let answer = post(&server, &token, "/v1/requests", json!({"caps": {"device_type": "x"}})).await;
        (answer.0 == StatusCode::CREATED).then_some(answer.2)
    })
    .await;
    assert!(created["id"].as_i64().is_some(), "{created}");
    agent.kill();
    server.stop().await;
}

#[actix_rt::test]
async fn ids_from_sequences_started_at_2_to_the_62_are_matched_and_leased_intact() {
    let server = TestServer::start(Clock::System).await;
    let side = sql(&server.db_url).await;
    let sequences: Vec<String> = side
        .query("SELECT sequence_name::text FROM information_schema.sequences WHERE sequence_schema = 'public'", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(sequences.contains(&"requests_id_seq".to_string()), "{sequences:?}");
    for sequence in &sequences {
        side.execute("SELECT setval($1::text::regclass, $2)", &[sequence, &(1_i64 << 62)]).await.unwrap();
    }

    let agent = server.agent("host-big", 1, &caps(&[("device_type", "x")]));
    server.make_idle(&agent.uuids).await;
    let nina = server.api(&server.user("nina", &[]).await);
    let first = nina.submit(json!({"caps": {"device_type": "x"}, "priority": 8})).await;
    let second = nina.submit(json!({"caps": {"device_type": "x"}, "priority": 8})).await;
    assert!(first > 1 << 62 && second > first, "ids {first} and {second} come from the moved sequence");
    wait_for_request(&nina, first, |r| r["state"] == "in_progress").await;
    let (_, second_now) = nina.get(&format!("/v1/requests/{second}")).await;
    assert_eq!(second_now["state"], "waiting", "one worker, one lease: {second_now}");

    let (status, closed) = nina.post_empty(&format!("/v1/requests/{first}/close")).await;
    assert_eq!(status, StatusCode::OK, "{closed}");
    let leased = wait_for_request(&nina, second, |r| r["state"] == "in_progress").await;
    assert_eq!(leased["id"].as_i64(), Some(second), "{leased}");
    agent.kill();
    server.stop().await;
}
