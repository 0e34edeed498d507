//! Time-driven behaviour with a clock the test moves: lease expiry,
//! deadlines, valid_after and agent session expiry. Nothing here sleeps:
//! to show that something did not happen yet, a test moves the clock, runs
//! one tick of every timer through `Corral::tick` (it answers once the tick
//! was processed) and asserts that the tick set nothing off.

mod common;

use std::time::Duration;

use awc::http::StatusCode;
use common::{TestServer, caps, wait_for_request, wait_for_worker};
use corral_actors::Clock;
use serde_json::json;

/// A server whose agent sessions outlive the clock jumps of a test that is
/// about another timer.
async fn server_with_long_sessions(clock: &Clock) -> TestServer {
    TestServer::start_with(clock.clone(), |c| c.session_timeout = Duration::from_secs(7 * 24 * 3600)).await
}

fn rfc3339(clock: &Clock, ahead: Duration) -> String {
    corral_core::time::format_rfc3339(clock.now() + ahead)
}

#[actix_rt::test]
async fn an_expired_lease_ends_done_and_the_worker_is_prepared_again() {
    let clock = Clock::manual();
    let server = server_with_long_sessions(&clock).await;
    let agent = server.agent("host-t1", 1, &caps(&[("device_type", "x")]));
    server.make_idle(&agent.uuids).await;
    let erin = server.api(&server.user("erin", &[]).await);
    let id = erin.submit(json!({"caps": {"device_type": "x"}, "lease": "10m"})).await;
    wait_for_request(&erin, id, |r| r["state"] == "in_progress").await;

    clock.advance(Duration::from_secs(9 * 60));
    let tick = server.corral.tick().await.unwrap();
    assert_eq!(tick.timers_fired, 0, "nine minutes into a ten-minute lease, no timer is due: {tick:?}");
    let (_, still) = erin.get(&format!("/v1/requests/{id}")).await;
    assert_eq!(still["state"], "in_progress", "nine minutes into a ten-minute lease");

    clock.advance(Duration::from_secs(61));
    let done = wait_for_request(&erin, id, |r| r["state"] == "done").await;
    assert_eq!(done["reason"], "lease expired");
    wait_for_worker(&server.admin(), agent.uuids[0], |w| w["state"] == "idle").await;
    agent.stop().await;
    server.stop().await;
}

#[actix_rt::test]
async fn a_deadline_passed_while_waiting_is_a_timeout() {
    let clock = Clock::manual();
    let server = server_with_long_sessions(&clock).await;
    let agent = server.agent("host-t2", 1, &caps(&[("device_type", "x")]));
    wait_for_worker(&server.admin(), agent.uuids[0], |w| w["state"] == "maintenance").await;
    let frank = server.api(&server.user("frank", &[]).await);
    let deadline = rfc3339(&clock, Duration::from_secs(600));
    let id = frank.submit(json!({"caps": {"device_type": "x"}, "deadline": deadline})).await;

    clock.advance(Duration::from_secs(599));
    let tick = server.corral.tick().await.unwrap();
    assert_eq!(tick.timed_out, 0, "one second before the deadline: {tick:?}");
    assert_eq!(frank.get(&format!("/v1/requests/{id}")).await.1["state"], "waiting");
    clock.advance(Duration::from_secs(2));
    let tick = server.corral.tick().await.unwrap();
    // The timekeeper also runs on its own (real-time) beat, which may read
    // the advanced clock before this tick does: then this tick finds the
    // request already ended. Either way, it is ended once the tick is done.
    assert!(tick.timed_out <= 1, "the deadline passed once: {tick:?}");
    let timed_out = wait_for_request(&frank, id, |r| r["state"] == "timeout").await;
    assert!(timed_out["reason"].as_str().unwrap().contains("deadline"), "{timed_out}");
    let (status, _) = frank.post_empty(&format!("/v1/requests/{id}/close")).await;
    assert_eq!(status, StatusCode::CONFLICT, "a timed-out request is terminal");
    agent.stop().await;
    server.stop().await;
}

#[actix_rt::test]
async fn valid_after_hides_a_request_from_the_matcher_until_then() {
    let clock = Clock::manual();
    let server = server_with_long_sessions(&clock).await;
    let agent = server.agent("host-t3", 1, &caps(&[("device_type", "x")]));
    server.make_idle(&agent.uuids).await;
    let gina = server.api(&server.user("gina", &[]).await);
    let later = rfc3339(&clock, Duration::from_secs(3600));
    let id = gina.submit(json!({"caps": {"device_type": "x"}, "valid_after": later})).await;

    // Two ticks: the first could still be committing the submission's
    // own admission pass; the second shows the matcher deciding nothing.
    server.corral.tick().await.unwrap();
    let tick = server.corral.tick().await.unwrap();
    assert_eq!(tick.decisions, 0, "the worker is idle but it is too early: {tick:?}");
    assert_eq!(
        gina.get(&format!("/v1/requests/{id}")).await.1["state"],
        "waiting",
        "the worker is idle but it is too early"
    );
    let (_, why) = gina.get(&format!("/v1/requests/{id}/explain")).await;
    assert!(why["summary"].as_str().unwrap().contains("valid_after"), "{why}");

    clock.advance(Duration::from_secs(3600));
    let tick = server.corral.tick().await.unwrap();
    // The matcher may have run on its own beat first (see above).
    assert!(tick.decisions <= 1, "valid_after passed and the worker is idle: {tick:?}");
    wait_for_request(&gina, id, |r| r["state"] == "in_progress").await;
    agent.stop().await;
    server.stop().await;
}

#[actix_rt::test]
async fn an_agent_whose_session_expires_fails_its_workers_and_leases_then_comes_back() {
    let clock = Clock::manual();
    let server = TestServer::start(clock.clone()).await;
    let agent = server.agent("host-t4", 2, &caps(&[("device_type", "x")]));
    server.make_idle(&agent.uuids).await;
    let hank = server.api(&server.user("hank", &[]).await);
    let id = hank.submit(json!({"caps": {"device_type": "x"}})).await;
    wait_for_request(&hank, id, |r| r["state"] == "in_progress").await;
    let uuids = agent.uuids.clone();

    // The agent dies without closing its session. A blip shorter than the
    // timeout (30 s) fails nothing.
    agent.kill();
    clock.advance(Duration::from_secs(29));
    let tick = server.corral.tick().await.unwrap();
    assert_eq!(tick.sessions_expired, 0, "29 s of silence is within the 30 s timeout: {tick:?}");
    assert_eq!(hank.get(&format!("/v1/requests/{id}")).await.1["state"], "in_progress");

    clock.advance(Duration::from_secs(2));
    let tick = server.corral.tick().await.unwrap();
    // The reaper may have run on its own beat first (see above).
    assert!(tick.sessions_expired <= 1, "31 s of silence: {tick:?}");
    let failed = wait_for_request(&hank, id, |r| r["state"] == "failed").await;
    assert!(failed["reason"].as_str().unwrap().contains("agent lost"), "{failed}");
    let admin = server.admin();
    for uuid in &uuids {
        let worker = wait_for_worker(&admin, *uuid, |w| w["state"] == "failed").await;
        assert!(worker["reason"].as_str().unwrap().contains("no heartbeat"), "{worker}");
    }

    // It comes back: its workers go through prepare to idle.
    let agent = server.agent("host-t4", 2, &caps(&[("device_type", "x")]));
    for uuid in &agent.uuids {
        wait_for_worker(&admin, *uuid, |w| w["state"] == "idle").await;
    }
    agent.stop().await;
    server.stop().await;
}
