//! Issue 14, items 3 and 6: a change that fails to commit (made to, by the
//! database fault seam of the `fault-injection` feature) or a row changed
//! underneath the actors (written directly in the test database) is found
//! by the reconciler and repaired, with a history row naming the actor
//! `reconciler`; serialization failures and dropped connections injected
//! into submissions are retried or settled without a duplicate row.

mod common;

use std::time::Duration;

use common::{TestServer, caps, sql, wait_for_request, wait_for_worker};
use corral_actors::Clock;
use corral_core::{RequestId, WorkerId};
use corral_db::DatabaseOperation as Op;
use corral_db::faults::Fault;
use serde_json::json;

/// Runs reconciler passes until `repaired` holds (each pass is awaited;
/// a mismatch is repaired by the pass that sees it a second time).
async fn reconcile_until<F, Fut>(server: &TestServer, what: &str, mut repaired: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    corral_testkit::wait_until(what, Duration::from_secs(20), || {
        let check = repaired();
        async move {
            let _ = server.corral.reconcile().await;
            check.await.then_some(())
        }
    })
    .await
}

/// Waits until `n` faults injected into `op` have fired.
async fn fired(server: &TestServer, op: Op, n: u64) {
    let faults = server.corral.db().faults();
    corral_testkit::wait_until(&format!("{n} faults hit {}", op.as_str()), Duration::from_secs(10), || async {
        (faults.fired(op) >= n).then_some(())
    })
    .await
}

/// The reasons of the history rows `actor` wrote for a request.
async fn request_history_by(db: &tokio_postgres::Client, id: i64, actor: &str) -> Vec<(String, String)> {
    let rows = db
        .query(
            "SELECT to_state, reason FROM request_history WHERE request = $1 AND actor = $2 ORDER BY id",
            &[&id, &actor],
        )
        .await
        .expect("history");
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// The reasons of the history rows `actor` wrote for a worker.
async fn worker_history_by(db: &tokio_postgres::Client, worker: WorkerId, actor: &str) -> Vec<(String, String)> {
    let rows = db
        .query(
            "SELECT to_state, reason FROM worker_history WHERE worker = $1 AND actor = $2 ORDER BY id",
            &[&worker.0, &actor],
        )
        .await
        .expect("history");
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

async fn request_row(db: &tokio_postgres::Client, id: i64) -> (String, Option<uuid::Uuid>) {
    let row = db.query_one("SELECT state, worker FROM requests WHERE id = $1", &[&id]).await.expect("the row");
    (row.get(0), row.get(1))
}

async fn worker_state(db: &tokio_postgres::Client, worker: WorkerId) -> String {
    db.query_one("SELECT state FROM workers WHERE uuid = $1", &[&worker.0]).await.expect("the row").get(0)
}

/// Sent: a request nobody can serve, with a deadline; its timeout fails to
/// commit (five serialization failures, every attempt `Db::run` makes),
/// and the clock passes the deadline. Must happen: the failed commit
/// leaves it waiting (the matcher dropped it: it would wait forever); the
/// reconciler times it out, with a history row by `reconciler`, and its
/// actor is gone.
#[actix_rt::test]
async fn reconcile_times_out_a_request_whose_timeout_failed_to_commit() {
    let clock = Clock::manual();
    let server = TestServer::start(clock.clone()).await;
    let db = sql(&server.db_url).await;
    let admin = server.admin();
    let deadline = corral_core::time::format_rfc3339(clock.now() + Duration::from_secs(60));
    let id =
        admin.submit(json!({"caps": {"device_type": "none"}, "allow_unsatisfiable": true, "deadline": deadline})).await;
    server.corral.db().faults().inject_times(Op::RequestTransition, Fault::Serialization, 5);
    clock.advance(Duration::from_secs(61));
    fired(&server, Op::RequestTransition, 5).await;
    assert_eq!(request_row(&db, id).await.0, "waiting", "the timeout was not committed");

    clock.advance(corral_actors::reconciler::OVERDUE);
    reconcile_until(&server, "the request timed out", || async { request_row(&db, id).await.0 == "timeout" }).await;
    let history = request_history_by(&db, id, "reconciler").await;
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].0, "timeout");
    assert!(history[0].1.contains("its timeout had not been committed"), "{history:?}");
    assert!(server.corral.shared().dir.request(RequestId(id)).is_none(), "its actor is gone");
}

/// Sent: a lease whose start fails to commit (five serialization
/// failures), then the worker to maintenance while its unbind fails to
/// commit too. Must happen: the request stays bound to a worker that does
/// not run it (waiting forever); the reconciler unbinds it (back in the
/// queue, a history row by `reconciler`), and no live lease row is left.
#[actix_rt::test]
async fn reconcile_repairs_an_unbind_that_failed_to_commit() {
    let server = TestServer::start(Clock::manual()).await;
    let db = sql(&server.db_url).await;
    let agent = server.agent("host-u", 1, &caps(&[("device_type", "x")]));
    let worker = agent.uuids[0];
    server.make_idle(&[worker]).await;
    let faults = server.corral.db().faults();
    faults.inject_times(Op::StartLease, Fault::Serialization, 5);
    let admin = server.admin();
    let id = admin.submit(json!({"caps": {"device_type": "x"}})).await;
    fired(&server, Op::StartLease, 5).await;
    faults.inject_times(Op::Unbind, Fault::Serialization, 5);
    let (status, body) = admin.put(&format!("/v1/workers/{worker}/state"), json!({"state": "maintenance"})).await;
    assert!(status.is_success(), "{body}");
    fired(&server, Op::Unbind, 5).await;
    assert_eq!(request_row(&db, id).await, ("waiting".to_string(), Some(worker.0)), "the unbind was not committed");

    reconcile_until(&server, "the request is back in the queue", || async {
        request_row(&db, id).await == ("waiting".to_string(), None)
    })
    .await;
    let live = db.query_one("SELECT count(*) FROM leases WHERE request = $1", &[&id]).await.unwrap();
    assert_eq!(live.get::<_, i64>(0), 0, "the lease row that was never started is gone");
    let history = request_history_by(&db, id, "reconciler").await;
    assert_eq!(history.len(), 1, "{history:?}");
    assert!(history[0].1.starts_with(&format!("back in the queue: worker {worker} is")), "{history:?}");
    agent.kill();
}

/// Sent: a lease whose start fails to commit (five serialization
/// failures), then the clock past the prepare timeout. Must happen: the
/// reconciler unbinds the lease that never started and prepares the
/// worker again (history rows by `reconciler` for both); the request is
/// then served on a new lease, and no live lease row sits on an idle
/// worker.
#[actix_rt::test]
async fn reconcile_ends_a_lease_whose_start_failed_to_commit() {
    let clock = Clock::manual();
    let server = TestServer::start_with(clock.clone(), |config| config.prepare_timeout = Duration::from_secs(10)).await;
    let db = sql(&server.db_url).await;
    let agent = server.agent("host-l", 1, &caps(&[("device_type", "x")]));
    let worker = agent.uuids[0];
    server.make_idle(&[worker]).await;
    server.corral.db().faults().inject_times(Op::StartLease, Fault::Serialization, 5);
    let admin = server.admin();
    let id = admin.submit(json!({"caps": {"device_type": "x"}})).await;
    fired(&server, Op::StartLease, 5).await;
    let first = db.query_one("SELECT fence FROM leases WHERE request = $1 AND started_at IS NULL", &[&id]).await;
    let first: i64 = first.expect("a bound lease that never started").get(0);

    clock.advance(Duration::from_secs(11));
    reconcile_until(&server, "the lease that never started is gone", || async {
        let left = db.query_one("SELECT count(*) FROM leases WHERE request = $1 AND fence = $2", &[&id, &first]).await;
        left.unwrap().get::<_, i64>(0) == 0
    })
    .await;
    let history = request_history_by(&db, id, "reconciler").await;
    assert!(history.iter().any(|(_, why)| why.contains("did not start within 10s")), "{history:?}");
    let history = worker_history_by(&db, worker, "reconciler").await;
    assert!(history.iter().any(|(to, why)| to == "prepare" && why.contains("revoking the key")), "{history:?}");

    let served = wait_for_request(&admin, id, |r| r["state"] == "in_progress").await;
    assert_eq!(served["worker"], worker.to_string());
    let stale = db
        .query_one(
            "SELECT count(*) FROM leases l JOIN workers w ON w.uuid = l.worker WHERE l.ended_at IS NULL AND w.state = 'idle'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(stale.get::<_, i64>(0), 0, "no live lease on an idle worker");
    agent.kill();
}

/// Sent: an idle worker's row set to `running` directly (no lease holds
/// it). Must happen: the reconciler moves it to prepare (a history row by
/// `reconciler`), its actor prepares it, and it is idle again.
#[actix_rt::test]
async fn reconcile_prepares_a_worker_running_with_no_live_lease() {
    let server = TestServer::start(Clock::System).await;
    let db = sql(&server.db_url).await;
    let agent = server.agent("host-r", 1, &caps(&[("device_type", "x")]));
    let worker = agent.uuids[0];
    server.make_idle(&[worker]).await;
    db.execute("UPDATE workers SET state = 'running' WHERE uuid = $1", &[&worker.0]).await.unwrap();

    reconcile_until(&server, "the worker is prepared again", || async {
        !worker_history_by(&db, worker, "reconciler").await.is_empty()
    })
    .await;
    let history = worker_history_by(&db, worker, "reconciler").await;
    // Its actor may also be seen behind its row while it prepares: the
    // first repair is the one that matters.
    assert_eq!(history[0], ("prepare".to_string(), "running with no live lease; preparing it again".to_string()));
    // Prepared by its agent: idle in the row, then in the API.
    corral_testkit::wait_until("the worker's row is idle again", Duration::from_secs(10), || async {
        (worker_state(&db, worker).await == "idle").then_some(())
    })
    .await;
    wait_for_worker(&server.admin(), worker, |w| w["state"] == "idle").await;
    agent.kill();
}

/// Sent: an agent dies and its session row is deleted directly (not by the
/// reaper), leaving a work lock of the session and its idle worker behind.
/// Must happen: the reconciler releases the lock, fails the worker (history
/// rows by `reconciler` for both) and stops the session's actor.
#[actix_rt::test]
async fn reconcile_cleans_up_after_an_ended_session() {
    let server = TestServer::start(Clock::System).await;
    let db = sql(&server.db_url).await;
    let agent = server.agent("host-e", 1, &caps(&[("device_type", "x")]));
    let worker = agent.uuids[0];
    server.make_idle(&[worker]).await;
    let session: uuid::Uuid =
        db.query_one("SELECT session FROM workers WHERE uuid = $1", &[&worker.0]).await.unwrap().get(0);
    agent.kill();
    db.execute(
        "INSERT INTO work_locks (worker, process, session, acquired_at) VALUES ($1, 'health_check', $2, now())",
        &[&worker.0, &session],
    )
    .await
    .unwrap();
    db.execute("DELETE FROM sessions WHERE id = $1", &[&session]).await.unwrap();
    let dir = &server.corral.shared().dir;
    assert!(dir.session(corral_core::SessionId(session)).is_some(), "the session's actor still runs");

    reconcile_until(&server, "the session's leftovers are cleaned", || async {
        let locks = db.query_one("SELECT count(*) FROM work_locks WHERE session = $1", &[&session]).await.unwrap();
        locks.get::<_, i64>(0) == 0
            && worker_state(&db, worker).await == "failed"
            && dir.session(corral_core::SessionId(session)).is_none()
    })
    .await;
    let history = worker_history_by(&db, worker, "reconciler").await;
    let lock = format!("released work lock health_check of ended session {session}");
    assert!(history.iter().any(|(_, why)| *why == lock), "{history:?}");
    assert!(
        history.iter().any(|(to, why)| to == "failed" && why == "its agent session ended while it was idle"),
        "{history:?}"
    );
}

/// Sent: a waiting request's row set to `cancelled` directly, its actor
/// still waiting. Must happen: the reconciler stops the actor (a history
/// row by `reconciler`), the matcher no longer holds the request, and the
/// row stays cancelled.
#[actix_rt::test]
async fn reconcile_stops_a_request_actor_whose_row_moved_on() {
    let server = TestServer::start(Clock::System).await;
    let db = sql(&server.db_url).await;
    let admin = server.admin();
    let id = admin.submit(json!({"caps": {"device_type": "none"}, "allow_unsatisfiable": true})).await;
    db.execute("UPDATE requests SET state = 'cancelled', reason = 'hand edit' WHERE id = $1", &[&id]).await.unwrap();
    let dir = &server.corral.shared().dir;
    assert!(dir.request(RequestId(id)).is_some());

    reconcile_until(&server, "the request's actor is stopped", || async { dir.request(RequestId(id)).is_none() }).await;
    let history = request_history_by(&db, id, "reconciler").await;
    assert_eq!(
        history,
        [("cancelled".to_string(), "stopped its actor, which still ran while the row was cancelled".to_string())]
    );
    assert_eq!(request_row(&db, id).await.0, "cancelled");
    let explained = server.corral.explain(RequestId(id)).await.expect("the matcher answers");
    assert!(explained.is_none(), "the matcher no longer queues it");
}

/// Sent: the close of a request in progress whose commit goes through but
/// whose connection drops before the answer (DropAfterCommit). Must
/// happen: the close answers 503 (outcome unknown) while the row is done;
/// the reconciler stops the request's actor (history row by `reconciler`)
/// and has the worker's actor re-read its row (history row by
/// `reconciler`), so the worker is prepared and serves again.
#[actix_rt::test]
async fn reconcile_repairs_a_lease_end_whose_commit_was_not_acknowledged() {
    let server = TestServer::start(Clock::System).await;
    let db = sql(&server.db_url).await;
    let agent = server.agent("host-d", 1, &caps(&[("device_type", "x")]));
    let worker = agent.uuids[0];
    server.make_idle(&[worker]).await;
    let admin = server.admin();
    let id = admin.submit(json!({"caps": {"device_type": "x"}})).await;
    wait_for_request(&admin, id, |r| r["state"] == "in_progress").await;
    server.corral.db().faults().inject(Op::EndLease, Fault::DropAfterCommit);
    let (status, body) = admin.post_empty(&format!("/v1/requests/{id}/close")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(request_row(&db, id).await.0, "done", "the close committed");

    reconcile_until(&server, "the actors follow their rows", || async {
        server.corral.shared().dir.request(RequestId(id)).is_none()
            && !worker_history_by(&db, worker, "reconciler").await.is_empty()
    })
    .await;
    let history = request_history_by(&db, id, "reconciler").await;
    assert_eq!(history.len(), 1, "{history:?}");
    let history = worker_history_by(&db, worker, "reconciler").await;
    assert!(history[0].1.contains("its actor showed running while the row was"), "{history:?}");
    wait_for_worker(&admin, worker, |w| w["state"] == "idle").await;
    let next = admin.submit(json!({"caps": {"device_type": "x"}})).await;
    let served = wait_for_request(&admin, next, |r| r["state"] == "in_progress").await;
    assert_eq!(served["worker"], worker.to_string(), "the worker serves again");
    agent.kill();
}

/// The number of requests stored.
async fn request_count(db: &tokio_postgres::Client) -> i64 {
    db.query_one("SELECT count(*) FROM requests", &[]).await.unwrap().get(0)
}

/// Sent: a submission whose batched insert fails twice with a
/// serialization failure. Must happen: it is retried, answers 201, and the
/// request is stored once.
#[actix_rt::test]
async fn fault_serialization_on_a_batched_insert_is_retried_and_stored_once() {
    let server = TestServer::start(Clock::manual()).await;
    let db = sql(&server.db_url).await;
    server.corral.db().faults().inject_times(Op::InsertRequest, Fault::Serialization, 2);
    let id = server.admin().submit(json!({"caps": {"device_type": "x"}, "allow_unsatisfiable": true})).await;
    assert_eq!(server.corral.db().faults().fired(Op::InsertRequest), 2);
    assert_eq!(request_count(&db).await, 1);
    assert_eq!(request_row(&db, id).await.0, "waiting");
}

/// Sent: a submission whose insert commits and whose connection then drops
/// before the answer. Must happen: the outcome is settled by reading the
/// row back: 201 with that request, and one row, not two.
#[actix_rt::test]
async fn fault_drop_after_commit_on_a_submission_is_settled_by_read_back() {
    let server = TestServer::start(Clock::manual()).await;
    let db = sql(&server.db_url).await;
    server.corral.db().faults().inject(Op::InsertRequest, Fault::DropAfterCommit);
    let id = server.admin().submit(json!({"caps": {"device_type": "x"}, "allow_unsatisfiable": true})).await;
    assert_eq!(server.corral.db().faults().fired(Op::InsertRequest), 1);
    assert_eq!(request_count(&db).await, 1, "no duplicate row");
    assert_eq!(request_row(&db, id).await.0, "waiting");
}

/// Sent: a submission whose connection drops before anything is sent, and
/// one delayed by injected latency. Must happen: the first runs on another
/// connection (nothing was sent, so even a write is safe to run), both
/// answer 201, and two rows are stored.
#[actix_rt::test]
async fn fault_drop_before_send_and_latency_still_store_each_submission_once() {
    let server = TestServer::start(Clock::manual()).await;
    let db = sql(&server.db_url).await;
    let faults = server.corral.db().faults();
    faults.inject(Op::InsertRequest, Fault::DropBeforeSend);
    faults.inject(Op::InsertRequest, Fault::Latency(Duration::from_millis(50)));
    let admin = server.admin();
    let first = admin.submit(json!({"caps": {"device_type": "x"}, "allow_unsatisfiable": true})).await;
    let second = admin.submit(json!({"caps": {"device_type": "x"}, "allow_unsatisfiable": true})).await;
    assert_eq!(faults.fired(Op::InsertRequest), 2);
    assert_eq!(faults.pending(Op::InsertRequest), 0);
    assert_ne!(first, second);
    assert_eq!(request_count(&db).await, 2);
}

/// Sent: an idle worker's row set to `running` directly, then the manual
/// clock moved by `reconcile_interval`, with no one asking for a pass.
/// Must happen: the periodic pass (and its second look) repairs it.
#[actix_rt::test]
async fn reconcile_runs_every_interval_of_the_servers_clock() {
    let clock = Clock::manual();
    let server = TestServer::start(clock.clone()).await;
    let db = sql(&server.db_url).await;
    let agent = server.agent("host-i", 1, &caps(&[("device_type", "x")]));
    let worker = agent.uuids[0];
    server.make_idle(&[worker]).await;
    db.execute("UPDATE workers SET state = 'running' WHERE uuid = $1", &[&worker.0]).await.unwrap();

    clock.advance(server.corral.settings().reconcile_interval);
    corral_testkit::wait_until("the periodic pass repairs the worker", Duration::from_secs(20), || async {
        (!worker_history_by(&db, worker, "reconciler").await.is_empty()).then_some(())
    })
    .await;
    corral_testkit::wait_until("the worker's row is idle again", Duration::from_secs(10), || async {
        (worker_state(&db, worker).await == "idle").then_some(())
    })
    .await;
    agent.kill();
}

/// Sent: the snapshot read for a session that does not lead, and for the
/// one that does. Must happen: nothing for the first (a replica that does
/// not lead repairs nothing), the rows for the second.
#[actix_rt::test]
async fn reconcile_reads_nothing_unless_this_replica_leads() {
    let server = TestServer::start(Clock::manual()).await;
    let id = server.admin().submit(json!({"caps": {"device_type": "x"}, "allow_unsatisfiable": true})).await;
    let db = server.corral.db();
    let other = corral_core::SessionId::random();
    assert!(db.reconcile_snapshot(other, &[]).await.unwrap().is_none());
    let snapshot = db.reconcile_snapshot(server.corral.shared().leader, &[]).await.unwrap().expect("it leads");
    assert_eq!(snapshot.requests.iter().map(|r| r.id.0).collect::<Vec<_>>(), [id]);
}

/// Sent: a lease whose start commits but whose connection drops before the
/// answer (DropAfterCommit): the request actor takes it for failed and
/// closes the tunnel, while the row is in progress. Must happen: the
/// reconciler restarts the actor from its row (a history row by
/// `reconciler`), which opens the tunnel again, so acquire answers the
/// access details.
#[actix_rt::test]
async fn reconcile_restarts_a_request_actor_that_missed_its_lease_start() {
    let server = TestServer::start(Clock::System).await;
    let db = sql(&server.db_url).await;
    let agent = server.agent("host-s", 1, &caps(&[("device_type", "x")]));
    let worker = agent.uuids[0];
    server.make_idle(&[worker]).await;
    server.corral.db().faults().inject(Op::StartLease, Fault::DropAfterCommit);
    let admin = server.admin();
    let id = admin.submit(json!({"caps": {"device_type": "x"}})).await;
    fired(&server, Op::StartLease, 1).await;

    reconcile_until(&server, "the request's actor follows its row", || async {
        !request_history_by(&db, id, "reconciler").await.is_empty()
    })
    .await;
    assert_eq!(request_row(&db, id).await, ("in_progress".to_string(), Some(worker.0)));
    let history = request_history_by(&db, id, "reconciler").await;
    assert_eq!(history[0].0, "in_progress");
    assert!(history[0].1.contains("while the row is in_progress with lease"), "{history:?}");
    let (status, access) = admin.post_empty(&format!("/v1/requests/{id}/acquire")).await;
    assert_eq!(status, 200, "{access}");
    assert!(access["port"].as_u64().is_some_and(|p| p > 0), "{access}");
    let port = access["port"].as_u64().unwrap() as u16;
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(), "the tunnel listens again");
    agent.kill();
}
