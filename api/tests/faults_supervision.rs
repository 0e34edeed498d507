//! Issue 14, supervision: a request or worker actor whose handler panics
//! (made to, by the test-only `Panic` message of the `fault-injection`
//! feature) leaves the directory, is restored from its database row, and
//! its request or worker carries on; the other actors are unaffected.

mod common;

use std::time::Duration;

use common::{TestServer, caps, wait_for_request, wait_for_worker};
use corral_actors::Clock;
use corral_actors::request::RequestMsg;
use corral_actors::worker::WorkerMsg;
use corral_core::RequestId;
use serde_json::json;

/// Waits until the directory holds an actor for the entity other than
/// `old` (the restored one).
async fn restored<A: actix::Actor>(old: &actix::Addr<A>, now: impl Fn() -> Option<actix::Addr<A>>) -> actix::Addr<A> {
    corral_testkit::wait_until("the crashed actor is restored", Duration::from_secs(10), || async {
        now().filter(|addr| addr != old)
    })
    .await
}

/// Sent: a panic to the actor of a waiting request, while another request
/// waits too. Must happen: a new actor is restored from the row; the
/// request is then bound, its lease starts and closes; the other request
/// is served after it.
#[actix_rt::test]
async fn a_panicking_request_actor_is_restarted_and_its_lease_goes_on() {
    let server = TestServer::start(Clock::System).await;
    let agent = server.agent("host-p", 1, &caps(&[("device_type", "x")]));
    let admin = server.admin();
    wait_for_worker(&admin, agent.uuids[0], |w| w["state"] == "maintenance").await;
    let crashing = admin.submit(json!({"caps": {"device_type": "x"}, "priority": 1})).await;
    let other = admin.submit(json!({"caps": {"device_type": "x"}, "priority": 5})).await;
    let dir = &server.corral.shared().dir;
    let old = dir.request(RequestId(crashing)).expect("a live request has an actor");
    let answer = old.send(RequestMsg::Panic).await;
    assert!(answer.is_err(), "the caller of a crashed actor gets an error, not silence");
    let new = restored(&old, || dir.request(RequestId(crashing))).await;
    assert!(!old.connected(), "the crashed actor is stopped");
    assert!(new.connected());

    // Not `make_idle`: the worker is leased at once, never seen idle.
    admin.put(&format!("/v1/workers/{}/state", agent.uuids[0]), json!({"state": "idle"})).await;
    let leased = wait_for_request(&admin, crashing, |r| r["state"] == "in_progress").await;
    assert_eq!(leased["worker"], agent.uuids[0].to_string());
    let (status, closed) = admin.post_empty(&format!("/v1/requests/{crashing}/close")).await;
    assert_eq!(status, 200, "{closed}");
    assert_eq!(closed["state"], "done");
    wait_for_request(&admin, other, |r| r["state"] == "in_progress").await;
    let (_, closed) = admin.post_empty(&format!("/v1/requests/{other}/close")).await;
    assert_eq!(closed["state"], "done");
    agent.kill();
}

/// Sent: a panic to the actor of an idle worker, while another worker
/// holds a lease. Must happen: a new actor is restored from the row; the
/// worker serves a later request; the other worker's lease goes on and
/// closes.
#[actix_rt::test]
async fn a_panicking_worker_actor_is_restarted_and_serves_again() {
    let server = TestServer::start(Clock::System).await;
    let agent = server.agent("host-q", 2, &caps(&[("device_type", "x")]));
    let (crashing, busy) = (agent.uuids[0], agent.uuids[1]);
    let admin = server.admin();
    server.make_idle(&[busy]).await;
    let held = admin.submit(json!({"caps": {"device_type": "x"}})).await;
    wait_for_request(&admin, held, |r| r["state"] == "in_progress").await;
    server.make_idle(&[crashing]).await;

    let dir = &server.corral.shared().dir;
    let old = dir.worker(crashing).expect("a worker has an actor");
    let answer = old.send(WorkerMsg::Panic).await;
    assert!(answer.is_err(), "the caller of a crashed actor gets an error, not silence");
    restored(&old, || dir.worker(crashing)).await;
    assert!(!old.connected(), "the crashed actor is stopped");
    wait_for_worker(&admin, crashing, |w| w["state"] == "idle").await;

    let later = admin.submit(json!({"caps": {"device_type": "x"}})).await;
    let leased = wait_for_request(&admin, later, |r| r["state"] == "in_progress").await;
    assert_eq!(leased["worker"], crashing.to_string(), "the restored worker serves");
    let (_, closed) = admin.post_empty(&format!("/v1/requests/{later}/close")).await;
    assert_eq!(closed["state"], "done");
    wait_for_worker(&admin, crashing, |w| w["state"] == "idle").await;
    let (_, closed) = admin.post_empty(&format!("/v1/requests/{held}/close")).await;
    assert_eq!(closed["state"], "done", "the other worker's lease was unaffected");
    agent.kill();
}

/// Sent: panics to one worker's actor, one more than the restarts allowed
/// within a minute. Must happen: the first ones are restored; after the
/// last the actor is left stopped, out of the directory, and the API
/// answers 503 for the worker, not 404; another worker is unaffected.
#[actix_rt::test]
async fn an_actor_crashing_too_often_is_left_stopped_with_a_clear_answer() {
    let server = TestServer::start(Clock::System).await;
    let agent = server.agent("host-z", 2, &caps(&[("device_type", "x")]));
    let (crashing, other) = (agent.uuids[0], agent.uuids[1]);
    let admin = server.admin();
    server.make_idle(&agent.uuids).await;
    let dir = &server.corral.shared().dir;
    for _ in 0..corral_actors::supervise::MAX_RESTARTS {
        let old = dir.worker(crashing).expect("a worker has an actor");
        let _ = old.send(WorkerMsg::Panic).await;
        restored(&old, || dir.worker(crashing)).await;
    }
    let old = dir.worker(crashing).expect("a worker has an actor");
    let _ = old.send(WorkerMsg::Panic).await;
    corral_testkit::wait_until("the actor is left stopped", Duration::from_secs(10), || async {
        dir.worker(crashing).is_none().then_some(())
    })
    .await;
    let (status, body) = admin.put(&format!("/v1/workers/{crashing}/state"), json!({"state": "maintenance"})).await;
    assert_eq!(status, 503, "{body}");
    let (status, _) = admin.get(&format!("/v1/workers/{crashing}")).await;
    assert_eq!(status, 200, "the worker is still listed");

    let later = admin.submit(json!({"caps": {"device_type": "x"}})).await;
    let leased = wait_for_request(&admin, later, |r| r["state"] == "in_progress").await;
    assert_eq!(leased["worker"], other.to_string(), "nothing is bound to the stopped worker");
    let (status, body) = admin.put(&format!("/v1/workers/{other}/state"), json!({"state": "maintenance"})).await;
    assert!(status.is_success(), "{body}");
    agent.kill();
}
