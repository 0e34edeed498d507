//! Issue 14, items 4 and 6 (agent part): every command the server sends an
//! agent has a timeout; a command unanswered past it, or answered with a
//! failure, is retried after a backoff kept in the database (`work_backoff`,
//! per worker and command), and given up after `command_retries` retries:
//! the worker fails with a reason naming the command (a busy one is assumed
//! in maintenance). An admin can take a busy worker out of `busy`.
//!
//! The agent misbehaves on purpose through the simulated host's fault mode
//! (`SimFaults`: failing commands, lost results, slow hooks, stopped
//! heartbeats) and through its HTTP client's fault seam (`ClientFaults`).
//! Timeouts pass by moving the server's manual clock; each step waits for
//! the database to show the previous one (the backoff row) before moving
//! the clock again.

mod common;

use std::time::Duration;

use awc::http::StatusCode;
use common::{AgentHandle, TestServer, caps, sql, wait_for_request, wait_for_worker};
use corral_actors::Clock;
use corral_agent::faults::{Call, ClientFault, ClientFaults};
use corral_agent::{AgentOptions, SimFaults, Simulated, Times};
use corral_core::WorkerId;
use corral_proto::agent::ActionKind;
use serde_json::{Value, json};

/// Retries before a command is given up (three attempts in all).
const RETRIES: u32 = 2;
const PREPARE_TIMEOUT: Duration = Duration::from_secs(120);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(10);

/// A server whose agent sessions outlive the clock jumps (unless a test
/// is about them), with few retries.
async fn server(clock: &Clock, session_timeout: Duration) -> TestServer {
    TestServer::start_with(clock.clone(), |c| {
        c.session_timeout = session_timeout;
        c.command_retries = RETRIES;
    })
    .await
}

async fn long_sessions(clock: &Clock) -> TestServer {
    server(clock, Duration::from_secs(7 * 24 * 3600)).await
}

/// A simulated agent with one worker whose faults the test holds.
fn faulty_agent(server: &TestServer, name: &str, faults: &SimFaults) -> AgentHandle {
    let sim =
        Simulated::new(name, 1, &caps(&[("device_type", name)]), "127.0.0.1:9", "lab").with_faults(faults.clone());
    server.agent_with(sim)
}

/// The worker's backoff row of `kind`: consecutive failures and last error.
async fn backoff(db: &tokio_postgres::Client, worker: WorkerId, kind: ActionKind) -> Option<(i32, String)> {
    db.query_opt(
        "SELECT failures, last_error FROM work_backoff WHERE worker = $1 AND process = $2",
        &[&worker.0, &kind.as_str()],
    )
    .await
    .expect("read work_backoff")
    .map(|row| (row.get(0), row.get(1)))
}

async fn wait_for_backoff(db: &tokio_postgres::Client, worker: WorkerId, kind: ActionKind, failures: i32) -> String {
    corral_testkit::wait_until(&format!("{kind} of {worker} has {failures} failures"), WAIT, || async {
        backoff(db, worker, kind).await.filter(|(n, _)| *n == failures).map(|(_, error)| error)
    })
    .await
}

async fn wait_for_no_backoff(db: &tokio_postgres::Client, worker: WorkerId, kind: ActionKind) {
    corral_testkit::wait_until(&format!("{kind} of {worker} has no backoff row"), WAIT, || async {
        backoff(db, worker, kind).await.is_none().then_some(())
    })
    .await
}

async fn wait_for_executed(faults: &SimFaults, kind: ActionKind, n: usize) {
    corral_testkit::wait_until(&format!("the agent executed {n} {kind}"), WAIT, || async {
        (faults.executed(kind) >= n).then_some(())
    })
    .await
}

/// The backoff after `failures` failures in a row (base 5 s, doubling),
/// and a second more.
fn past_backoff(failures: i32) -> Duration {
    Duration::from_secs(5 * (1 << (failures - 1)) + 1)
}

/// Failure number `failures` of the command `kind` is in the database:
/// move the clock past its backoff, so that the command goes out again.
async fn retry_after_failure(
    server: &TestServer,
    db: &tokio_postgres::Client,
    worker: WorkerId,
    kind: ActionKind,
    failures: i32,
) -> String {
    let error = wait_for_backoff(db, worker, kind, failures).await;
    server.clock.advance(past_backoff(failures));
    error
}

/// The command `kind` got no answer: move the clock past `timeout`, wait
/// for the failure in the database, then past the backoff.
async fn time_out(
    server: &TestServer,
    db: &tokio_postgres::Client,
    worker: WorkerId,
    kind: ActionKind,
    timeout: Duration,
    failures: i32,
) -> String {
    server.clock.advance(timeout + Duration::from_secs(1));
    retry_after_failure(server, db, worker, kind, failures).await
}

async fn history(server: &TestServer, worker: WorkerId) -> Vec<(String, String, String, String)> {
    let rows = server.corral.db().worker_history(worker).await.expect("worker history");
    rows.into_iter().map(|h| (h.from.unwrap_or_default(), h.to, h.actor, h.reason)).collect()
}

async fn set_state(server: &TestServer, worker: WorkerId, body: Value) -> (StatusCode, Value) {
    server.admin().put(&format!("/v1/workers/{worker}/state"), body).await
}

// ----- lost results: retried, and the worker recovers ----------------------

/// Done: the agent loses the result of the first preparation. Must happen:
/// after the prepare timeout the server prepares again, the worker becomes
/// idle, and its backoff row is gone.
#[actix_rt::test]
async fn timeout_prepare_result_lost_is_retried_and_the_worker_becomes_idle() {
    let clock = Clock::manual();
    let server = long_sessions(&clock).await;
    let db = sql(&server.db_url).await;
    let faults = SimFaults::default();
    faults.lose_results(ActionKind::Prepare, Times::Next(1));
    let agent = faulty_agent(&server, "t-prep-lost", &faults);
    let worker = agent.uuids[0];
    wait_for_worker(&server.admin(), worker, |w| w["state"] == "maintenance").await;
    assert_eq!(set_state(&server, worker, json!({"state": "idle"})).await.0, StatusCode::ACCEPTED);
    wait_for_executed(&faults, ActionKind::Prepare, 1).await;

    let error = time_out(&server, &db, worker, ActionKind::Prepare, PREPARE_TIMEOUT, 1).await;
    assert!(error.contains("no answer within 2m"), "{error}");
    wait_for_worker(&server.admin(), worker, |w| w["state"] == "idle").await;
    assert_eq!(faults.executed(ActionKind::Prepare), 2);
    wait_for_no_backoff(&db, worker, ActionKind::Prepare).await;
    let to: Vec<String> = history(&server, worker).await.into_iter().map(|h| h.1).collect();
    assert_eq!(to, ["maintenance", "prepare", "idle"], "no failure on the way");
    // The lost answer counts as one command timeout in /metrics.
    let (status, text) = server.anonymous().get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let text = text.as_str().expect("the metrics text").to_string();
    assert!(text.lines().any(|l| l == "corral_agent_command_timeouts_total{kind=\"prepare\"} 1"), "{text}");
    agent.stop().await;
    server.stop().await;
}

/// Done: the agent loses the result of installing a lease key. Must
/// happen: the request does not start until the server sends the key
/// again after the command timeout; then it starts on the same worker.
#[actix_rt::test]
async fn timeout_start_lease_result_lost_is_retried_and_the_lease_starts() {
    let clock = Clock::manual();
    let server = long_sessions(&clock).await;
    let db = sql(&server.db_url).await;
    let faults = SimFaults::default();
    let agent = faulty_agent(&server, "t-start-lost", &faults);
    let worker = agent.uuids[0];
    server.make_idle(&agent.uuids).await;
    faults.lose_results(ActionKind::StartLease, Times::Next(1));
    let user = server.api(&server.user("sal", &[]).await);
    let id = user.submit(json!({"caps": {"device_type": "t-start-lost"}})).await;
    wait_for_executed(&faults, ActionKind::StartLease, 1).await;
    assert_ne!(user.get(&format!("/v1/requests/{id}")).await.1["state"], "in_progress", "no key installed yet");

    time_out(&server, &db, worker, ActionKind::StartLease, COMMAND_TIMEOUT, 1).await;
    let started = wait_for_request(&user, id, |r| r["state"] == "in_progress").await;
    assert_eq!(started["worker"], worker.to_string());
    assert_eq!(faults.executed(ActionKind::StartLease), 2);
    wait_for_no_backoff(&db, worker, ActionKind::StartLease).await;
    agent.stop().await;
    server.stop().await;
}

/// Done: the agent loses the result of renewing a prolonged lease's key.
/// Must happen: the renewal is sent again; the lease and worker go on.
#[actix_rt::test]
async fn timeout_extend_lease_result_lost_is_retried_and_the_lease_goes_on() {
    let clock = Clock::manual();
    let server = long_sessions(&clock).await;
    let db = sql(&server.db_url).await;
    let faults = SimFaults::default();
    let agent = faulty_agent(&server, "t-ext-lost", &faults);
    let worker = agent.uuids[0];
    server.make_idle(&agent.uuids).await;
    let user = server.api(&server.user("eli", &[]).await);
    let id = user.submit(json!({"caps": {"device_type": "t-ext-lost"}, "lease": "1h"})).await;
    wait_for_request(&user, id, |r| r["state"] == "in_progress").await;
    let before = faults.executed(ActionKind::ExtendLease);
    faults.lose_results(ActionKind::ExtendLease, Times::Next(1));
    let (status, body) = user.post(&format!("/v1/requests/{id}/prolong"), json!({"by": "30m"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_for_executed(&faults, ActionKind::ExtendLease, before + 1).await;

    time_out(&server, &db, worker, ActionKind::ExtendLease, COMMAND_TIMEOUT, 1).await;
    wait_for_executed(&faults, ActionKind::ExtendLease, before + 2).await;
    wait_for_no_backoff(&db, worker, ActionKind::ExtendLease).await;
    assert_eq!(user.get(&format!("/v1/requests/{id}")).await.1["state"], "in_progress");
    assert_eq!(server.admin().get(&format!("/v1/workers/{worker}")).await.1["state"], "running");
    agent.stop().await;
    server.stop().await;
}

/// Done: the agent loses the result of the maintenance hook. Must happen:
/// the server asks again after the timeout and the worker reaches
/// maintenance with the admin's reason.
#[actix_rt::test]
async fn timeout_maintenance_result_lost_is_retried_and_confirmed() {
    let clock = Clock::manual();
    let server = long_sessions(&clock).await;
    let db = sql(&server.db_url).await;
    let faults = SimFaults::default();
    let agent = faulty_agent(&server, "t-maint-lost", &faults);
    let worker = agent.uuids[0];
    server.make_idle(&agent.uuids).await;
    faults.lose_results(ActionKind::Maintenance, Times::Next(1));
    let (status, body) = set_state(&server, worker, json!({"state": "maintenance", "reason": "new cable"})).await;
    assert_eq!((status, body["state"].as_str()), (StatusCode::ACCEPTED, Some("busy")), "{body}");
    wait_for_executed(&faults, ActionKind::Maintenance, 1).await;

    time_out(&server, &db, worker, ActionKind::Maintenance, COMMAND_TIMEOUT, 1).await;
    let done = wait_for_worker(&server.admin(), worker, |w| w["state"] == "maintenance").await;
    assert_eq!(done["reason"], "new cable");
    let last = history(&server, worker).await.pop().unwrap();
    assert_eq!((last.0.as_str(), last.2.as_str()), ("busy", "agent:t-maint-lost"), "the agent confirmed: {last:?}");
    wait_for_no_backoff(&db, worker, ActionKind::Maintenance).await;
    agent.stop().await;
    server.stop().await;
}

// ----- failing every time: given up, with a reason --------------------------

/// Done: every preparation fails. Must happen: three attempts (two
/// retries, each after its backoff), then the worker is failed with a
/// reason naming the command; history and the backoff row say so. Then,
/// the fault gone, the failed worker heals when its backoff is over: it is
/// power cycled, the health check's result is lost (retried after its
/// timeout), the health check passes, and the worker is prepared to idle.
#[actix_rt::test]
async fn timeout_prepare_failing_every_time_fails_the_worker_then_it_heals() {
    let clock = Clock::manual();
    let server = long_sessions(&clock).await;
    let db = sql(&server.db_url).await;
    let faults = SimFaults::default();
    faults.fail(ActionKind::Prepare, Times::Always);
    let agent = faulty_agent(&server, "t-prep-fail", &faults);
    let worker = agent.uuids[0];
    wait_for_worker(&server.admin(), worker, |w| w["state"] == "maintenance").await;
    set_state(&server, worker, json!({"state": "idle"})).await;
    retry_after_failure(&server, &db, worker, ActionKind::Prepare, 1).await;
    retry_after_failure(&server, &db, worker, ActionKind::Prepare, 2).await;

    let failed = wait_for_worker(&server.admin(), worker, |w| w["state"] == "failed").await;
    let reason = failed["reason"].as_str().unwrap();
    assert_eq!(reason, "preparation failed: simulated failure of prepare (command prepare, gave up after 3 attempts)");
    assert_eq!(faults.executed(ActionKind::Prepare), 3);
    let (failures, error) = backoff(&db, worker, ActionKind::Prepare).await.unwrap();
    assert_eq!(failures, 3);
    assert!(error.contains("simulated failure of prepare"), "{error}");
    let last = history(&server, worker).await.pop().unwrap();
    assert_eq!(last, ("prepare".to_string(), "failed".to_string(), "server".to_string(), reason.to_string()));

    // Healing: after the backoff of the third failure (20 s).
    faults.clear();
    faults.lose_results(ActionKind::HealthCheck, Times::Next(1));
    server.clock.advance(past_backoff(3));
    wait_for_executed(&faults, ActionKind::HealthCheck, 1).await;
    assert_eq!(faults.executed(ActionKind::PowerCycle), 1);
    time_out(&server, &db, worker, ActionKind::HealthCheck, COMMAND_TIMEOUT, 1).await;
    let idle = wait_for_worker(&server.admin(), worker, |w| w["state"] == "idle").await;
    assert!(idle["reason"].is_null() || idle["reason"] == "preparation confirmed by the agent", "{idle}");
    let to: Vec<String> = history(&server, worker).await.into_iter().map(|h| h.1).collect();
    assert_eq!(to, ["maintenance", "prepare", "failed", "prepare", "idle"]);
    wait_for_no_backoff(&db, worker, ActionKind::Prepare).await;
    wait_for_no_backoff(&db, worker, ActionKind::HealthCheck).await;
    assert_eq!(faults.executed(ActionKind::HealthCheck), 2);
    agent.stop().await;
    server.stop().await;
}

/// Done: a failed worker's health check fails every time (its power cycle
/// passes). Must happen: the health check is tried three times, then the
/// worker simply stays failed (no transition), with the health check's
/// backoff row in the database.
#[actix_rt::test]
async fn timeout_health_check_failing_every_time_leaves_the_worker_failed() {
    let clock = Clock::manual();
    let server = long_sessions(&clock).await;
    let db = sql(&server.db_url).await;
    let faults = SimFaults::default();
    faults.fail(ActionKind::Prepare, Times::Next(3));
    faults.fail(ActionKind::HealthCheck, Times::Always);
    let agent = faulty_agent(&server, "t-health-fail", &faults);
    let worker = agent.uuids[0];
    wait_for_worker(&server.admin(), worker, |w| w["state"] == "maintenance").await;
    set_state(&server, worker, json!({"state": "idle"})).await;
    retry_after_failure(&server, &db, worker, ActionKind::Prepare, 1).await;
    retry_after_failure(&server, &db, worker, ActionKind::Prepare, 2).await;
    wait_for_worker(&server.admin(), worker, |w| w["state"] == "failed").await;
    let before = history(&server, worker).await;

    retry_after_failure(&server, &db, worker, ActionKind::Prepare, 3).await;
    retry_after_failure(&server, &db, worker, ActionKind::HealthCheck, 1).await;
    retry_after_failure(&server, &db, worker, ActionKind::HealthCheck, 2).await;
    let error = wait_for_backoff(&db, worker, ActionKind::HealthCheck, 3).await;
    assert_eq!(error, "the health check: failed: simulated failure of health_check");
    assert_eq!((faults.executed(ActionKind::HealthCheck), faults.executed(ActionKind::PowerCycle)), (3, 1));
    assert_eq!(server.admin().get(&format!("/v1/workers/{worker}")).await.1["state"], "failed");
    assert_eq!(history(&server, worker).await, before, "giving up on a failed worker changes nothing");
    agent.stop().await;
    server.stop().await;
}

/// Done: installing the lease key fails every time. Must happen: after the
/// retries the worker is failed naming the command, and the request, whose
/// lease never started, goes back to waiting.
#[actix_rt::test]
async fn timeout_start_lease_failing_every_time_fails_the_worker_and_requeues_the_request() {
    let clock = Clock::manual();
    let server = long_sessions(&clock).await;
    let db = sql(&server.db_url).await;
    let faults = SimFaults::default();
    let agent = faulty_agent(&server, "t-start-fail", &faults);
    let worker = agent.uuids[0];
    server.make_idle(&agent.uuids).await;
    faults.fail(ActionKind::StartLease, Times::Always);
    let user = server.api(&server.user("sue", &[]).await);
    let id = user.submit(json!({"caps": {"device_type": "t-start-fail"}})).await;
    retry_after_failure(&server, &db, worker, ActionKind::StartLease, 1).await;
    retry_after_failure(&server, &db, worker, ActionKind::StartLease, 2).await;

    let failed = wait_for_worker(&server.admin(), worker, |w| w["state"] == "failed").await;
    assert_eq!(
        failed["reason"],
        "installing the lease key failed: simulated failure of start_lease (command start_lease, gave up after 3 attempts)"
    );
    let request = wait_for_request(&user, id, |r| r["state"] == "waiting" && r["worker"].is_null()).await;
    assert_eq!(request["state"], "waiting", "{request}");
    assert_eq!(backoff(&db, worker, ActionKind::StartLease).await.unwrap().0, 3);
    let last = history(&server, worker).await.pop().unwrap();
    assert_eq!((last.0.as_str(), last.1.as_str(), last.2.as_str()), ("running", "failed", "server"));
    agent.kill();
    server.stop().await;
}

/// Done: renewing a prolonged lease's key fails every time. Must happen:
/// after the retries the worker is failed naming the command, and its
/// started lease fails with that reason.
#[actix_rt::test]
async fn timeout_extend_lease_failing_every_time_fails_the_worker_and_the_lease() {
    let clock = Clock::manual();
    let server = long_sessions(&clock).await;
    let db = sql(&server.db_url).await;
    let faults = SimFaults::default();
    let agent = faulty_agent(&server, "t-ext-fail", &faults);
    let worker = agent.uuids[0];
    server.make_idle(&agent.uuids).await;
    let user = server.api(&server.user("eve", &[]).await);
    let id = user.submit(json!({"caps": {"device_type": "t-ext-fail"}, "lease": "1h"})).await;
    wait_for_request(&user, id, |r| r["state"] == "in_progress").await;
    faults.fail(ActionKind::ExtendLease, Times::Always);
    user.post(&format!("/v1/requests/{id}/prolong"), json!({"by": "30m"})).await;
    retry_after_failure(&server, &db, worker, ActionKind::ExtendLease, 1).await;
    retry_after_failure(&server, &db, worker, ActionKind::ExtendLease, 2).await;

    let failed = wait_for_worker(&server.admin(), worker, |w| w["state"] == "failed").await;
    let reason = failed["reason"].as_str().unwrap();
    assert!(reason.contains("command extend_lease, gave up after 3 attempts"), "{reason}");
    let request = wait_for_request(&user, id, |r| r["state"] == "failed").await;
    assert!(request["reason"].as_str().unwrap().contains("extend_lease"), "{request}");
    assert_eq!(backoff(&db, worker, ActionKind::ExtendLease).await.unwrap().0, 3);
    agent.kill();
    server.stop().await;
}

/// Done: the maintenance hook fails every time. Must happen: the worker
/// does not stay busy: after the retries it is assumed in maintenance
/// (SPEC §2 has no busy → failed), with the admin's reason and what went
/// wrong; history and the backoff row say so.
#[actix_rt::test]
async fn timeout_maintenance_hook_failing_every_time_does_not_leave_the_worker_busy() {
    let clock = Clock::manual();
    let server = long_sessions(&clock).await;
    let db = sql(&server.db_url).await;
    let faults = SimFaults::default();
    let agent = faulty_agent(&server, "t-maint-fail", &faults);
    let worker = agent.uuids[0];
    server.make_idle(&agent.uuids).await;
    faults.fail(ActionKind::Maintenance, Times::Always);
    set_state(&server, worker, json!({"state": "maintenance", "reason": "flash"})).await;
    retry_after_failure(&server, &db, worker, ActionKind::Maintenance, 1).await;
    retry_after_failure(&server, &db, worker, ActionKind::Maintenance, 2).await;

    let done = wait_for_worker(&server.admin(), worker, |w| w["state"] == "maintenance").await;
    let reason = done["reason"].as_str().unwrap();
    assert_eq!(
        reason,
        "flash (the agent did not confirm: the maintenance hook failed: simulated failure of maintenance \
         (command maintenance, gave up after 3 attempts); maintenance assumed)"
    );
    let last = history(&server, worker).await.pop().unwrap();
    assert_eq!(last, ("busy".to_string(), "maintenance".to_string(), "server".to_string(), reason.to_string()));
    assert_eq!(backoff(&db, worker, ActionKind::Maintenance).await.unwrap().0, 3);
    agent.stop().await;
    server.stop().await;
}

/// Done: every preparation fails; after two failures the server is
/// stopped and a new one started on the same database, and the agent
/// registers with it. Must happen: the new server keeps the count from the
/// database: the next failure is the third, and the worker is failed.
#[actix_rt::test]
async fn timeout_a_server_restart_keeps_the_failure_count() {
    let clock = Clock::manual();
    let first = long_sessions(&clock).await;
    let db = sql(&first.db_url).await;
    let faults = SimFaults::default();
    faults.fail(ActionKind::Prepare, Times::Always);
    let agent = faulty_agent(&first, "t-restart", &faults);
    let worker = agent.uuids[0];
    wait_for_worker(&first.admin(), worker, |w| w["state"] == "maintenance").await;
    set_state(&first, worker, json!({"state": "idle"})).await;
    retry_after_failure(&first, &db, worker, ActionKind::Prepare, 1).await;
    wait_for_backoff(&db, worker, ActionKind::Prepare, 2).await;
    agent.kill();
    first.halt().await;

    let mut config = common::test_config(&first.db_url);
    config.session_timeout = Duration::from_secs(7 * 24 * 3600);
    config.command_retries = RETRIES;
    let data_dir = config.data_dir.clone();
    let second = corral_api::serve(config, clock.clone()).await.expect("the server restarts");
    let url = format!("http://{}", second.addr);
    let handle = second.handle();
    actix_rt::spawn(async move {
        let _ = second.wait().await;
    });
    let admin = first.admin().at(&url);
    let mut options = AgentOptions::new(url.clone(), first.agent_token.clone());
    options.poll_wait = Duration::from_secs(5);
    options.max_backoff = Duration::from_millis(300);
    let sim = Simulated::new("t-restart", 1, &caps(&[("device_type", "t-restart")]), "127.0.0.1:9", "lab");
    let again = first.agent_with_options(sim.with_faults(faults.clone()), options);
    wait_for_worker(&admin, worker, |w| w["state"] == "prepare").await;

    clock.advance(past_backoff(2));
    let failed = wait_for_worker(&admin, worker, |w| w["state"] == "failed").await;
    assert!(failed["reason"].as_str().unwrap().ends_with("(command prepare, gave up after 3 attempts)"), "{failed}");
    assert_eq!(backoff(&db, worker, ActionKind::Prepare).await.unwrap().0, 3);
    again.kill();
    handle.stop(false).await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

// ----- an admin takes a worker out of busy ----------------------------------

/// Done: the maintenance hook hangs; an admin sets the busy worker to
/// maintenance. Must happen: 202, the worker is in maintenance at once,
/// and history says the agent did not confirm.
#[actix_rt::test]
async fn timeout_admin_takes_a_busy_worker_to_maintenance() {
    let clock = Clock::manual();
    let server = long_sessions(&clock).await;
    let faults = SimFaults::default();
    let agent = faulty_agent(&server, "t-busy-out", &faults);
    let worker = agent.uuids[0];
    server.make_idle(&agent.uuids).await;
    faults.slow(ActionKind::Maintenance, Duration::from_secs(3600));
    set_state(&server, worker, json!({"state": "maintenance", "reason": "rewire"})).await;
    wait_for_executed(&faults, ActionKind::Maintenance, 1).await;
    assert_eq!(server.admin().get(&format!("/v1/workers/{worker}")).await.1["state"], "busy");

    let (status, body) = set_state(&server, worker, json!({"state": "maintenance", "reason": "hook hangs"})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["state"], "maintenance", "{body}");
    let last = history(&server, worker).await.pop().unwrap();
    assert_eq!((last.0.as_str(), last.1.as_str(), last.2.as_str()), ("busy", "maintenance", "user:admin"));
    assert_eq!(last.3, "hook hangs (set by an admin; the agent did not confirm maintenance)");
    agent.kill();
    server.stop().await;
}

/// Sent: on a busy worker, `idle` by an admin, `maintenance` by a user who
/// is not an admin, a reason over 1024 bytes. Must happen: 409, 403, 400,
/// and the worker stays busy with no new history row.
#[actix_rt::test]
async fn timeout_bad_admin_calls_on_a_busy_worker_change_nothing() {
    let clock = Clock::manual();
    let server = long_sessions(&clock).await;
    let faults = SimFaults::default();
    let agent = faulty_agent(&server, "t-busy-bad", &faults);
    let worker = agent.uuids[0];
    server.make_idle(&agent.uuids).await;
    faults.slow(ActionKind::Maintenance, Duration::from_secs(3600));
    set_state(&server, worker, json!({"state": "maintenance"})).await;
    wait_for_executed(&faults, ActionKind::Maintenance, 1).await;
    let before = history(&server, worker).await;

    assert_eq!(set_state(&server, worker, json!({"state": "idle"})).await.0, StatusCode::CONFLICT);
    let user = server.api(&server.user("mallory", &[]).await);
    let (status, _) = user.put(&format!("/v1/workers/{worker}/state"), json!({"state": "maintenance"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let long = "x".repeat(1025);
    let (status, _) = set_state(&server, worker, json!({"state": "maintenance", "reason": long})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = set_state(&server, worker, json!({"state": "busy"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "admins set only idle or maintenance");

    assert_eq!(server.admin().get(&format!("/v1/workers/{worker}")).await.1["state"], "busy");
    assert_eq!(history(&server, worker).await, before);
    agent.kill();
    server.stop().await;
}

// ----- heartbeats stop ------------------------------------------------------

/// Done: the agent stops heartbeating (its long-polls go on). Must happen:
/// past the session timeout its session expires and its workers fail with
/// the reason; once heartbeats resume, the agent registers again and its
/// workers come back through preparation.
#[actix_rt::test]
async fn timeout_stopped_heartbeats_expire_the_session_and_fail_the_workers() {
    let clock = Clock::manual();
    let server = server(&clock, Duration::from_secs(30)).await;
    let faults = SimFaults::default();
    faults.stop_heartbeats(true);
    let agent = faulty_agent(&server, "t-no-beats", &faults);
    let worker = agent.uuids[0];
    server.make_idle(&agent.uuids).await;

    server.clock.advance(Duration::from_secs(31));
    // The agent registers again as soon as it learns: look in history.
    let failed = corral_testkit::wait_until("the worker failed for lack of heartbeats", WAIT, || async {
        history(&server, worker).await.into_iter().find(|h| h.1 == "failed")
    })
    .await;
    assert!(failed.3.contains("no heartbeat"), "{failed:?}");
    faults.stop_heartbeats(false);
    wait_for_worker(&server.admin(), worker, |w| w["state"] == "idle").await;
    agent.stop().await;
    server.stop().await;
}

/// Done: the database is away long enough for the agent's silence to pass
/// its 30 s session timeout: the reaper's sweeps fail (injected
/// serialization failures on every attempt of `expire_sessions`) and the
/// agent's heartbeats stop, while the clock moves 31 s. Must happen: the
/// first sweep after the database is back expires nothing and fails no
/// worker (the silence was the server's, not the agent's); the session
/// gets a full timeout from then and expires only after 30 s more of real
/// silence.
#[actix_rt::test]
async fn timeout_a_database_outage_does_not_count_against_agent_sessions() {
    use corral_db::DatabaseOperation as Op;
    use corral_db::faults::Fault;
    let clock = Clock::manual();
    let server = server(&clock, Duration::from_secs(30)).await;
    let faults = SimFaults::default();
    let agent = faulty_agent(&server, "t-outage", &faults);
    let worker = agent.uuids[0];
    server.make_idle(&agent.uuids).await;

    let db_faults = server.corral.db().faults();
    db_faults.inject_times(Op::ExpireSessions, Fault::Serialization, 10_000);
    faults.stop_heartbeats(true);
    let tick = server.corral.tick().await.unwrap();
    assert_eq!(tick.sessions_expired, 0, "the sweep failed: {tick:?}");
    assert!(db_faults.fired(Op::ExpireSessions) >= 5, "a whole sweep failed");
    server.clock.advance(Duration::from_secs(31));
    let tick = server.corral.tick().await.unwrap();
    assert_eq!(tick.sessions_expired, 0, "the database is still away: {tick:?}");

    db_faults.clear();
    let tick = server.corral.tick().await.unwrap();
    assert_eq!(tick.sessions_expired, 0, "31 s of silence during an outage is not the agent's: {tick:?}");
    assert_eq!(server.admin().get(&format!("/v1/workers/{worker}")).await.1["state"], "idle");
    server.clock.advance(Duration::from_secs(29));
    let tick = server.corral.tick().await.unwrap();
    assert_eq!(tick.sessions_expired, 0, "29 s after the grace: {tick:?}");
    assert!(history(&server, worker).await.iter().all(|h| h.1 != "failed"), "no worker failed");

    // Real silence past the granted timeout still expires the session.
    server.clock.advance(Duration::from_secs(2));
    let failed = corral_testkit::wait_until("the worker failed for lack of heartbeats", WAIT, || async {
        server.corral.tick().await.unwrap();
        history(&server, worker).await.into_iter().find(|h| h.1 == "failed")
    })
    .await;
    assert!(failed.3.contains("no heartbeat"), "{failed:?}");
    agent.kill();
    server.stop().await;
}

// ----- the agent client's fault seam ----------------------------------------

/// A simulated agent whose HTTP client meets `client` faults.
fn agent_with_client_faults(server: &TestServer, sim: Simulated, client: &ClientFaults) -> AgentHandle {
    let mut options = AgentOptions::new(server.url.clone(), server.agent_token.clone());
    options.poll_wait = Duration::from_secs(5);
    options.max_backoff = Duration::from_millis(300);
    options.faults = client.clone();
    server.agent_with_options(sim, options)
}

/// Done: the agent's client drops the server's answer to its posted
/// results (the server processed them), delays long-polls, and fails a
/// heartbeat. Must happen: the worker is prepared once (the repeated post
/// changes nothing). Then every post of the maintenance result fails until
/// the agent gives the result up. Must happen: the server's command timeout
/// repairs it: maintenance is asked again and confirmed.
#[actix_rt::test]
async fn timeout_client_faults_dropped_answers_and_lost_posts_are_repaired() {
    let clock = Clock::manual();
    let server = long_sessions(&clock).await;
    let db = sql(&server.db_url).await;
    let client = ClientFaults::default();
    client.inject(Call::Results, ClientFault::DropAnswer, 1);
    client.inject(Call::Poll, ClientFault::Latency(Duration::from_millis(200)), 2);
    client.inject(Call::Heartbeat, ClientFault::FailRequest, 1);
    let sim = Simulated::new("t-client", 1, &caps(&[("device_type", "t-client")]), "127.0.0.1:9", "lab");
    let faults = sim.faults();
    let agent = agent_with_client_faults(&server, sim, &client);
    let worker = agent.uuids[0];
    server.make_idle(&agent.uuids).await;
    assert_eq!(client.queued(Call::Results), 0, "the dropped answer was met");
    let prepared = history(&server, worker).await.into_iter().filter(|h| h.0 == "prepare" && h.1 == "idle").count();
    assert_eq!(prepared, 1);

    // The first post and its five retries fail: the result is lost.
    client.inject(Call::Results, ClientFault::FailRequest, 6);
    set_state(&server, worker, json!({"state": "maintenance", "reason": "audit"})).await;
    wait_for_executed(&faults, ActionKind::Maintenance, 1).await;
    corral_testkit::wait_until("the agent gave up posting", WAIT, || async {
        (client.queued(Call::Results) == 0).then_some(())
    })
    .await;
    assert_eq!(server.admin().get(&format!("/v1/workers/{worker}")).await.1["state"], "busy");
    time_out(&server, &db, worker, ActionKind::Maintenance, COMMAND_TIMEOUT, 1).await;
    let done = wait_for_worker(&server.admin(), worker, |w| w["state"] == "maintenance").await;
    assert_eq!(done["reason"], "audit");
    assert_eq!(faults.executed(ActionKind::Maintenance), 2);
    agent.stop().await;
    server.stop().await;
}
