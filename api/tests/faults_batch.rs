//! Issue 14, per-row outcomes: a row of the matcher's bind batch that fails
//! its guards or a constraint is set aside and repaired, and the other rows
//! commit. The bad state (an idle worker holding a live lease row, as a
//! crashed actor leaves it) is made directly in the test database.

mod common;

use std::time::SystemTime;

use common::{TestServer, caps, sql, wait_for_request, wait_for_worker};
use corral_actors::Clock;
use corral_core::{RequestId, WorkerId};
use corral_db::BindOutcome;
use serde_json::json;

/// Runs one lease on `worker` to its end, then brings its lease row back
/// to life while the worker stays idle, and puts the worker in
/// maintenance: the worker, made idle again, is the bad row.
async fn leave_a_stale_live_lease(server: &TestServer, db: &tokio_postgres::Client, worker: WorkerId) -> i64 {
    let admin = server.admin();
    server.make_idle(&[worker]).await;
    let old = admin.submit(json!({"caps": {"device_type": "x"}})).await;
    wait_for_request(&admin, old, |r| r["state"] == "in_progress").await;
    admin.post_empty(&format!("/v1/requests/{old}/close")).await;
    wait_for_worker(&admin, worker, |w| w["state"] == "idle").await;
    admin.put(&format!("/v1/workers/{worker}/state"), json!({"state": "maintenance"})).await;
    wait_for_worker(&admin, worker, |w| w["state"] == "maintenance").await;
    let n = db
        // Without its tunnel port, which a new lease may take meanwhile.
        .execute("UPDATE leases SET ended_at = NULL, end_reason = NULL, tunnel_port = NULL WHERE request = $1", &[&old])
        .await
        .expect("revive the lease row");
    assert_eq!(n, 1);
    old
}

/// Sent: one bind batch of two pairs, the first naming an idle worker that
/// holds a live lease row. Must happen: the first is refused, the second
/// bound, in the same call (before, the unique index on live leases failed
/// the whole statement, and the matcher retried it forever).
#[actix_rt::test]
async fn one_bad_row_does_not_block_the_matchers_batch() {
    let server = TestServer::start(Clock::System).await;
    let db = sql(&server.db_url).await;
    let agent = server.agent("host-b", 2, &caps(&[("device_type", "x")]));
    let (bad, good) = (agent.uuids[0], agent.uuids[1]);
    leave_a_stale_live_lease(&server, &db, bad).await;
    wait_for_worker(&server.admin(), good, |w| w["state"] == "maintenance").await;
    let admin = server.admin();
    let first = admin.submit(json!({"caps": {"device_type": "x"}})).await;
    let second = admin.submit(json!({"caps": {"device_type": "x"}})).await;
    // Both idle in the database only: the actors do not know, so the
    // matcher does not race this call.
    db.execute("UPDATE workers SET state = 'idle' WHERE uuid = ANY($1)", &[&vec![bad.0, good.0]]).await.unwrap();

    let outcomes = server
        .corral
        .db()
        .bind_leases(
            &[(RequestId(first), bad), (RequestId(second), good)],
            SystemTime::now(),
            server.corral.shared().leader,
        )
        .await
        .expect("the batch commits");
    assert!(matches!(outcomes[0], BindOutcome::Refused(_)), "{outcomes:?}");
    assert!(matches!(outcomes[1], BindOutcome::Bound(_)), "{outcomes:?}");
    let row = db.query_one("SELECT worker FROM requests WHERE id = $1", &[&second]).await.unwrap();
    assert_eq!(row.get::<_, Option<uuid::Uuid>>(0), Some(good.0));
    let row = db.query_one("SELECT worker FROM requests WHERE id = $1", &[&first]).await.unwrap();
    assert_eq!(row.get::<_, Option<uuid::Uuid>>(0), None);
    agent.kill();
}

/// Sent: three requests waiting while no worker is idle; then three
/// workers made idle, one of them holding a stale live lease row. Must
/// happen: every request is bound and its lease starts; the bad worker's
/// stale lease is ended by the reconciler (with a worker history row) and
/// the worker serves one of the requests.
#[actix_rt::test]
async fn a_worker_with_a_stale_live_lease_is_repaired() {
    let server = TestServer::start(Clock::System).await;
    let db = sql(&server.db_url).await;
    let agent = server.agent("host-s", 3, &caps(&[("device_type", "x")]));
    let bad = agent.uuids[0];
    let stale = leave_a_stale_live_lease(&server, &db, bad).await;
    let admin = server.admin();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(admin.submit(json!({"caps": {"device_type": "x"}})).await);
    }
    for id in &ids {
        let (_, body) = admin.get(&format!("/v1/requests/{id}")).await;
        assert_eq!(body["state"], "waiting", "{body}");
    }
    for worker in &agent.uuids {
        wait_for_worker(&admin, *worker, |w| w["state"].is_string()).await;
        admin.put(&format!("/v1/workers/{worker}/state"), json!({"state": "idle"})).await;
    }

    let mut workers = Vec::new();
    for id in &ids {
        let body = wait_for_request(&admin, *id, |r| r["state"] == "in_progress").await;
        workers.push(body["worker"].as_str().unwrap_or_default().to_string());
    }
    assert!(workers.contains(&bad.to_string()), "the repaired worker serves again: {workers:?}");
    let row = db.query_one("SELECT ended_at IS NOT NULL, end_reason FROM leases WHERE request = $1", &[&stale]).await;
    let row = row.unwrap();
    assert!(row.get::<_, bool>(0), "the stale lease is ended");
    let history = db
        .query(
            "SELECT reason FROM worker_history WHERE worker = $1 AND actor = 'reconciler' AND reason LIKE $2",
            &[&bad.0, &format!("ended stale lease of request {stale}%")],
        )
        .await
        .unwrap();
    assert_eq!(history.len(), 1, "one history row records the repair");
    agent.kill();
}

/// Sent: a submission while the only idle worker holds a stale live lease
/// row. Must happen: the submission is accepted (201, not a conflict
/// caused by the worker's row), the worker is repaired, and the request
/// is then served by it.
#[actix_rt::test]
async fn a_submission_meeting_a_stale_live_lease_is_accepted_and_served_after_repair() {
    let server = TestServer::start(Clock::System).await;
    let db = sql(&server.db_url).await;
    let agent = server.agent("host-t", 1, &caps(&[("device_type", "x")]));
    let bad = agent.uuids[0];
    let stale = leave_a_stale_live_lease(&server, &db, bad).await;
    let admin = server.admin();
    admin.put(&format!("/v1/workers/{bad}/state"), json!({"state": "idle"})).await;
    wait_for_worker(&admin, bad, |w| w["state"] == "idle").await;

    let id = admin.submit(json!({"caps": {"device_type": "x"}})).await;
    let leased = wait_for_request(&admin, id, |r| r["state"] == "in_progress").await;
    assert_eq!(leased["worker"], bad.to_string());
    let row = db.query_one("SELECT ended_at IS NOT NULL FROM leases WHERE request = $1", &[&stale]).await.unwrap();
    assert!(row.get::<_, bool>(0), "the stale lease is ended");
    agent.kill();
}
