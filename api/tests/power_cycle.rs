//! Issue 16: power cycle on demand, work locks that exclude, and backoff
//! for every process, through the real server (HTTP, actors, PostgreSQL)
//! and a simulated agent whose faults the test holds. Timeouts and
//! backoffs pass by moving the manual clock; each step waits for what the
//! previous one must have written (a backoff row, a worker field).

mod common;

use std::time::Duration;

use awc::http::StatusCode;
use common::{AgentHandle, TestServer, caps, sql, wait_for_request, wait_for_worker};
use corral_actors::Clock;
use corral_agent::{SimFaults, Simulated, Times};
use corral_core::WorkerId;
use corral_proto::agent::ActionKind;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);
const POWER_CYCLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Retries before a command is given up (three attempts in all).
const RETRIES: u32 = 2;

fn config(c: &mut corral_api::Config) {
    // Agent sessions outlive the clock jumps.
    c.session_timeout = Duration::from_secs(7 * 24 * 3600);
    c.command_retries = RETRIES;
    c.power_cycle_timeout = POWER_CYCLE_TIMEOUT;
}

fn agent(server: &TestServer, name: &str, faults: &SimFaults) -> AgentHandle {
    let sim =
        Simulated::new(name, 1, &caps(&[("device_type", name)]), "127.0.0.1:9", "lab").with_faults(faults.clone());
    server.agent_with(sim)
}

fn cycle_path(worker: WorkerId) -> String {
    format!("/v1/workers/{worker}/power-cycle")
}

/// The worker's history, oldest first: (to, actor, reason).
async fn history(server: &TestServer, worker: WorkerId) -> Vec<(String, String, String)> {
    let rows = server.corral.db().worker_history(worker).await.expect("worker history");
    rows.into_iter().map(|h| (h.to, h.actor, h.reason)).collect()
}

async fn wait_for_executed(faults: &SimFaults, kind: ActionKind, n: usize) {
    corral_testkit::wait_until(&format!("the agent executed {n} {kind}"), WAIT, || async {
        (faults.executed(kind) >= n).then_some(())
    })
    .await
}

async fn wait_for_backoff(db: &tokio_postgres::Client, worker: WorkerId, kind: ActionKind, failures: i32) {
    corral_testkit::wait_until(&format!("{kind} of {worker} has {failures} failures"), WAIT, || async {
        let row = db
            .query_opt(
                "SELECT failures FROM work_backoff WHERE worker = $1 AND process = $2",
                &[&worker.0, &kind.as_str()],
            )
            .await
            .expect("read work_backoff");
        row.filter(|r| r.get::<_, i32>(0) == failures).map(|_| ())
    })
    .await
}

/// The backoff after `failures` failures in a row (base 5 s, doubling),
/// and a second more.
fn past_backoff(failures: i32) -> Duration {
    Duration::from_secs(5 * (1 << (failures - 1)) + 1)
}

/// Done: alice holds a lease on a public worker; bob (who sees it), an
/// admin, then alice ask for a power cycle. Must happen: bob 403, the admin
/// 409 naming alice's request (another user's lease), alice 202 with the
/// worker marked `work: power_cycle`; the agent runs the hook once; the
/// history says who asked and that it was done; the lease goes on; the
/// admin's refused call is audited, alice's (not an admin action) is not.
#[actix_rt::test]
async fn the_lease_holder_power_cycles_the_worker_and_its_history_says_how_it_went() {
    let server = TestServer::start_with(Clock::manual(), config).await;
    let faults = SimFaults::default();
    let agent = agent(&server, "pc-holder", &faults);
    let worker = agent.uuids[0];
    server.make_idle(&[worker]).await;
    let alice = server.user("alice", &[]).await;
    let bob = server.user("bob", &[]).await;
    let request = server.api(&alice).submit(json!({"caps": {"device_type": "pc-holder"}})).await;
    wait_for_request(&server.api(&alice), request, |r| r["state"] == "in_progress").await;

    let (status, body) = server.api(&bob).post_empty(&cycle_path(worker)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "bob holds no lease on it: {body}");
    let (status, body) = server.admin().post_empty(&cycle_path(worker)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(&format!("request {request} of another user")), "{message}");
    assert!(message.contains("lease by its agent"), "the 409 names the work lock: {message}");
    assert_eq!(faults.executed(ActionKind::PowerCycle), 0, "refused calls run nothing");

    let (status, body) = server.api(&alice).post_empty(&cycle_path(worker)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!((body["work"].as_str(), body["can_power_cycle"].as_bool()), (Some("power_cycle"), Some(true)));
    wait_for_worker(&server.admin(), worker, |w| w["work"].is_null()).await;
    assert_eq!(faults.executed(ActionKind::PowerCycle), 1);
    let reasons: Vec<String> = history(&server, worker).await.into_iter().map(|h| h.2).collect();
    let asked = reasons.iter().position(|r| r == "power cycle asked by user:alice").expect("asked");
    let done = reasons.iter().position(|r| r == "power cycle asked by user:alice: done").expect("done");
    assert!(asked < done, "{reasons:?}");
    let lease = server.api(&alice).get(&format!("/v1/requests/{request}")).await.1;
    assert_eq!(lease["state"], "in_progress", "the lease goes on: {lease}");

    let (_, audit) = server.admin().get("/v1/audit").await;
    let cycles: Vec<&Value> =
        audit["items"].as_array().unwrap().iter().filter(|e| e["action"] == "worker.power_cycle").collect();
    assert_eq!(cycles.len(), 1, "only the admin's call is an admin action: {audit}");
    assert_eq!(cycles[0]["outcome"], "refused");
    agent.stop().await;
    server.stop().await;
}

/// Done: alice power-cycles her leased worker, the agent loses the result,
/// and alice closes her request meanwhile. Must happen: the lease ends at
/// once, but the worker stays `running` (the power cycle holds it: no
/// preparation under it) until the power cycle, sent again after its
/// timeout and backoff, is done; then it is prepared and idle again.
#[actix_rt::test]
async fn a_lease_that_ends_during_its_power_cycle_leaves_the_worker_to_it_until_it_is_over() {
    let clock = Clock::manual();
    let server = TestServer::start_with(clock.clone(), config).await;
    let db = sql(&server.db_url).await;
    let faults = SimFaults::default();
    faults.lose_results(ActionKind::PowerCycle, Times::Next(1));
    let agent = agent(&server, "pc-end", &faults);
    let worker = agent.uuids[0];
    server.make_idle(&[worker]).await;
    let alice = server.user("alice", &[]).await;
    let request = server.api(&alice).submit(json!({"caps": {"device_type": "pc-end"}})).await;
    wait_for_request(&server.api(&alice), request, |r| r["state"] == "in_progress").await;
    let (status, body) = server.api(&alice).post_empty(&cycle_path(worker)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    wait_for_executed(&faults, ActionKind::PowerCycle, 1).await;

    let (status, body) = server.api(&alice).post_empty(&format!("/v1/requests/{request}/close")).await;
    assert_eq!((status, body["state"].as_str()), (StatusCode::OK, Some("done")), "{body}");
    let row = db.query_one("SELECT state, work FROM workers WHERE uuid = $1", &[&worker.0]).await.unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, Option<String>>(1)),
        ("running".to_string(), Some("power_cycle".to_string())),
        "the end of the lease did not prepare the worker under its power cycle"
    );

    clock.advance(POWER_CYCLE_TIMEOUT + Duration::from_secs(1));
    wait_for_backoff(&db, worker, ActionKind::PowerCycle, 1).await;
    clock.advance(past_backoff(1));
    wait_for_worker(&server.admin(), worker, |w| w["state"] == "idle" && w["work"].is_null()).await;
    assert_eq!(faults.executed(ActionKind::PowerCycle), 2);
    let rows = history(&server, worker).await;
    let done = rows.iter().position(|h| h.2 == "power cycle asked by user:alice: done").expect("done");
    let prepared = rows.iter().rposition(|h| h.0 == "prepare").expect("prepared");
    assert!(done < prepared, "prepared only after the power cycle: {rows:?}");
    agent.stop().await;
    server.stop().await;
}

/// Done: an admin power-cycles a worker in maintenance whose power cycle
/// fails every time; later asks again; then the server restarts; then the
/// backoff passes. Must happen: three attempts (two retries after their
/// backoff), then a history row saying it failed and why, the worker still
/// in maintenance (not failed: a power cycle's outcome is not the worker's
/// state); the worker object shows the power cycle's backoff (3 failures)
/// and a new call is refused (409) until its `retry_after`, also after a
/// restart (the backoff is reloaded from the database); after it, the call
/// is accepted again.
#[actix_rt::test]
async fn a_failing_power_cycle_is_retried_recorded_and_backed_off_across_a_restart() {
    let clock = Clock::manual();
    let test = corral_testkit::test_database().await;
    let mut cfg = common::test_config(&test.url);
    config(&mut cfg);
    let server = TestServer::start_on(clock.clone(), cfg.clone(), test.url.clone()).await;
    let db = sql(&server.db_url).await;
    let faults = SimFaults::default();
    faults.fail(ActionKind::PowerCycle, Times::Always);
    let agent = agent(&server, "pc-fail", &faults);
    let worker = agent.uuids[0];
    wait_for_worker(&server.admin(), worker, |w| w["state"] == "maintenance").await;
    let (status, body) = server.admin().post_empty(&cycle_path(worker)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    for failures in 1..=2 {
        wait_for_backoff(&db, worker, ActionKind::PowerCycle, failures).await;
        clock.advance(past_backoff(failures));
    }
    let shown = wait_for_worker(&server.admin(), worker, |w| w["work"].is_null()).await;
    assert_eq!(faults.executed(ActionKind::PowerCycle), 3);
    assert_eq!(shown["state"], "maintenance", "{shown}");
    let backoff = &shown["backoff"];
    assert_eq!((backoff[0]["process"].as_str(), backoff[0]["failures"].as_u64()), (Some("power_cycle"), Some(3)));
    let last = history(&server, worker).await.pop().unwrap();
    assert_eq!(last.1, "server");
    assert!(
        last.2.starts_with("power cycle asked by user:admin: failed: the power cycle failed: simulated failure"),
        "{last:?}"
    );
    assert!(last.2.ends_with("gave up after 3 attempts)"), "{last:?}");

    let (status, body) = server.admin().post_empty(&cycle_path(worker)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["message"].as_str().unwrap().contains("may be tried again after"), "{body}");

    // Restarted: the first server's HTTP stops (its data directory, with
    // the tokens, stays until the end of the test).
    server.halt().await;
    let first = server;
    let server = TestServer::start_on(clock.clone(), cfg, test.url.clone()).await;
    let shown = wait_for_worker(&server.admin(), worker, |w| w["state"] == "maintenance").await;
    assert_eq!(shown["backoff"][0]["failures"], 3, "the backoff survives a restart: {shown}");
    let (status, body) = server.admin().post_empty(&cycle_path(worker)).await;
    assert_eq!(status, StatusCode::CONFLICT, "still backed off after the restart: {body}");

    clock.advance(past_backoff(3));
    let (status, body) = server.admin().post_empty(&cycle_path(worker)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    agent.kill();
    server.stop().await;
    drop(first);
}

/// Done: one agent says its worker has only a `prepare` hook, another says
/// nothing about hooks (an older agent). Must happen: the first worker
/// shows `can_power_cycle: false` and a power cycle is refused with 422
/// (nothing sent); the second shows null, and the call is tried (202).
#[actix_rt::test]
async fn the_worker_shows_whether_its_agent_can_power_cycle_it() {
    let server = TestServer::start_with(Clock::manual(), config).await;
    let faults = SimFaults::default();
    let without = server.agent_with(
        Simulated::new("pc-none", 1, &caps(&[("device_type", "n")]), "127.0.0.1:9", "lab")
            .with_hooks(Some(vec!["prepare".to_string()]))
            .with_faults(faults.clone()),
    );
    let unknown = server
        .agent_with(Simulated::new("pc-old", 1, &caps(&[("device_type", "o")]), "127.0.0.1:9", "lab").with_hooks(None));
    let (no_hook, old) = (without.uuids[0], unknown.uuids[0]);
    let shown = wait_for_worker(&server.admin(), no_hook, |w| w["state"] == "maintenance").await;
    assert_eq!(shown["can_power_cycle"], false, "{shown}");
    let (status, body) = server.admin().post_empty(&cycle_path(no_hook)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["message"].as_str().unwrap().contains("no power_cycle hook"), "{body}");
    assert_eq!(faults.executed(ActionKind::PowerCycle), 0);

    let shown = wait_for_worker(&server.admin(), old, |w| w["state"] == "maintenance").await;
    assert!(shown["can_power_cycle"].is_null(), "{shown}");
    let (status, body) = server.admin().post_empty(&cycle_path(old)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    without.stop().await;
    unknown.stop().await;
    server.stop().await;
}

/// Done: on an idle worker whose power cycles never answer, 8 power
/// cycles and 8 maintenance calls by an admin, all at once. Must happen:
/// every answer is 202 or a 409 saying the worker is busy and why; at
/// most one power cycle is accepted; if one is, no maintenance began after
/// it (the history has no move to busy after "power cycle asked"), and the
/// work locks never hold both a power cycle and maintenance.
#[actix_rt::test]
async fn concurrent_power_cycles_and_maintenance_exclude_each_other() {
    let server = TestServer::start_with(Clock::manual(), config).await;
    let faults = SimFaults::default();
    faults.lose_results(ActionKind::PowerCycle, Times::Always);
    let agent = agent(&server, "pc-race", &faults);
    let worker = agent.uuids[0];
    server.make_idle(&[worker]).await;
    let admin = server.admin();
    let maintenance = json!({"state": "maintenance", "reason": "race"});
    let calls = (0..16).map(|i| {
        let (admin, body) = (&admin, maintenance.clone());
        async move {
            let answer = if i % 2 == 0 {
                admin.post_empty(&cycle_path(worker)).await
            } else {
                admin.put(&format!("/v1/workers/{worker}/state"), body).await
            };
            (i % 2 == 0, answer)
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    let mut cycles = 0;
    for (cycle, (status, body)) in &answers {
        match *status {
            StatusCode::ACCEPTED => cycles += usize::from(*cycle),
            StatusCode::CONFLICT => {
                let message = body["message"].as_str().unwrap();
                assert!(message.contains("is busy:") || message.contains(" is "), "{message}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(cycles <= 1, "{answers:?}");
    let accepted = answers.iter().filter(|(_, (status, _))| *status == StatusCode::ACCEPTED).count();
    assert!(accepted >= 1 && accepted < answers.len(), "one worker: some win, some are refused: {answers:?}");
    let db = sql(&server.db_url).await;
    let locks: Vec<String> = db
        .query("SELECT process FROM work_locks WHERE worker = $1", &[&worker.0])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!(locks.contains(&"power_cycle".to_string()) && locks.contains(&"maintenance".to_string())), "{locks:?}");
    let rows = history(&server, worker).await;
    if let Some(asked) = rows.iter().position(|h| h.2 == "power cycle asked by user:admin") {
        assert!(rows[asked..].iter().all(|h| h.0 != "busy"), "maintenance began under the power cycle: {rows:?}");
        let row = db.query_one("SELECT work FROM workers WHERE uuid = $1", &[&worker.0]).await.unwrap();
        assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("power_cycle"));
    }
    agent.stop().await;
    server.stop().await;
}

/// Done: a busy worker's maintenance hook fails once. Must happen: the
/// worker object shows the maintenance backoff (one failure, its error);
/// the command is sent again after the backoff, the worker reaches
/// maintenance, and the backoff is gone from the object and the database.
#[actix_rt::test]
async fn every_process_backs_off_and_the_worker_shows_it() {
    let clock = Clock::manual();
    let server = TestServer::start_with(clock.clone(), config).await;
    let db = sql(&server.db_url).await;
    let faults = SimFaults::default();
    let agent = agent(&server, "pc-maint", &faults);
    let worker = agent.uuids[0];
    server.make_idle(&[worker]).await;
    faults.fail(ActionKind::Maintenance, Times::Next(1));
    let (status, body) =
        server.admin().put(&format!("/v1/workers/{worker}/state"), json!({"state": "maintenance"})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let shown = wait_for_worker(&server.admin(), worker, |w| !w["backoff"].as_array().unwrap().is_empty()).await;
    assert_eq!(shown["state"], "busy");
    assert_eq!(
        (shown["backoff"][0]["process"].as_str(), shown["backoff"][0]["failures"].as_u64()),
        (Some("maintenance"), Some(1))
    );
    assert!(
        shown["backoff"][0]["last_error"].as_str().unwrap().contains("simulated failure of maintenance"),
        "{shown}"
    );
    clock.advance(past_backoff(1));
    let shown = wait_for_worker(&server.admin(), worker, |w| w["state"] == "maintenance").await;
    assert_eq!(shown["backoff"], json!([]), "{shown}");
    let rows = db.query("SELECT 1 FROM work_backoff WHERE worker = $1", &[&worker.0]).await.unwrap();
    assert!(rows.is_empty());
    agent.stop().await;
    server.stop().await;
}

/// Done: an agent registers a worker claiming 17 hooks, and another one
/// with a hook name that is not lowercase letters and `_`. Must happen:
/// 400 each, and no worker is registered.
#[actix_rt::test]
async fn an_agent_that_lists_too_many_or_odd_hooks_is_refused() {
    let server = TestServer::start_with(Clock::manual(), config).await;
    let agent = server.api(&server.agent_token);
    let many: Vec<String> = (0..17).map(|i| format!("hook_{}", char::from(b'a' + i))).collect();
    for hooks in [json!(many), json!(["power-cycle"]), json!([""])] {
        let worker = WorkerId::random();
        let body = json!({"agent": "host-hooks", "workers": [{"uuid": worker, "caps": {"device_type": "h"},
            "ssh_addr": "127.0.0.1:9", "user": "lab", "hooks": hooks}]});
        let (status, answer) = agent.post("/v1/agent/sessions", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{hooks}: {answer}");
        assert!(answer["message"].as_str().unwrap().contains("hooks"), "{answer}");
        let (status, _) = server.admin().get(&format!("/v1/workers/{worker}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "nothing registered");
    }
    server.stop().await;
}

/// Done: a power cycle runs (its result is lost) when the server restarts.
/// Must happen: the restarted server, which has no command of its own for
/// it, ends it with "outcome unknown" in the history, so the worker is not
/// held forever, and it can be power-cycled again.
#[actix_rt::test]
async fn a_power_cycle_running_across_a_restart_is_ended_as_unknown() {
    let clock = Clock::manual();
    let test = corral_testkit::test_database().await;
    let mut cfg = common::test_config(&test.url);
    config(&mut cfg);
    let server = TestServer::start_on(clock.clone(), cfg.clone(), test.url.clone()).await;
    let faults = SimFaults::default();
    faults.lose_results(ActionKind::PowerCycle, Times::Always);
    let agent = agent(&server, "pc-restart", &faults);
    let worker = agent.uuids[0];
    wait_for_worker(&server.admin(), worker, |w| w["state"] == "maintenance").await;
    let (status, body) = server.admin().post_empty(&cycle_path(worker)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    wait_for_executed(&faults, ActionKind::PowerCycle, 1).await;

    server.halt().await;
    let first = server;
    let server = TestServer::start_on(clock.clone(), cfg, test.url.clone()).await;
    let shown = wait_for_worker(&server.admin(), worker, |w| w["work"].is_null()).await;
    assert_eq!(shown["state"], "maintenance", "{shown}");
    let last = history(&server, worker).await.pop().unwrap();
    assert_eq!(
        (last.1.as_str(), last.2.as_str()),
        ("server", "power cycle: outcome unknown: the server restarted while it ran")
    );
    let (status, body) = server.admin().post_empty(&cycle_path(worker)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    agent.kill();
    server.stop().await;
    drop(first);
}
