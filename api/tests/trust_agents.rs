//! Issue 13, class 6: agents cannot impersonate each other. A worker and
//! an agent name belong to the agent user (principal) that registered
//! them; another agent token cannot claim them or change their SSH
//! address, host key or lab user, nor use another agent's session; an
//! admin can hand a worker over. Real server, real HTTP.

mod common;

use awc::http::StatusCode;
use common::{Api, TestServer, caps, wait_for_request, wait_for_worker};
use corral_actors::Clock;
use corral_core::{WorkerId, WorkerState};
use serde_json::{Value, json};

/// Creates an agent user and returns its token.
async fn agent_user(server: &TestServer, name: &str) -> String {
    let (status, body) = server.admin().post("/v1/users", json!({"name": name, "agent": true})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["token"].as_str().unwrap().to_string()
}

/// An agent session registering one worker, as raw HTTP.
async fn open(api: &Api, agent: &str, worker: WorkerId, ssh_addr: &str, user: &str) -> (StatusCode, Value) {
    let registration = json!({
        "uuid": worker, "caps": {"device_type": "x"}, "ssh_addr": ssh_addr, "user": user,
        "host_key": format!("ssh-ed25519 AAAAkey-of-{ssh_addr}"),
    });
    api.post("/v1/agent/sessions", json!({"agent": agent, "workers": [registration]})).await
}

#[actix_rt::test]
async fn class6_second_agent_token_cannot_claim_workers() {
    let server = TestServer::start(Clock::System).await;
    let agent = server.agent("host-a", 1, &caps(&[("device_type", "x")]));
    let worker = agent.uuids[0];
    let admin = server.admin();
    wait_for_worker(&admin, worker, |w| w["state"].is_string()).await;
    let db = server.corral.db();
    let before = db.load_worker(worker).await.unwrap().unwrap();
    let sessions_before = db.live_sessions().await.unwrap();
    let mallory = server.api(&agent_user(&server, "mallory").await);

    // Another agent token claims the worker under the same agent name, under
    // its own name, or claims the agent name alone: 403 each time.
    for (name, target) in [("host-a", Some(worker)), ("host-m", Some(worker))] {
        let (status, body) = open(&mallory, name, target.unwrap(), "10.6.6.6:22", "root").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{name}: {body}");
        assert_eq!(body["error"], "forbidden");
    }
    let (status, body) = mallory.post("/v1/agent/sessions", json!({"agent": "host-a", "workers": []})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // Nothing changed: the worker keeps its address, host key, lab user,
    // agent, principal and session, and no session was opened.
    let after = db.load_worker(worker).await.unwrap().unwrap();
    assert_eq!(
        (&after.ssh_addr, &after.host_key, &after.ssh_user, &after.agent, after.principal, after.session),
        (&before.ssh_addr, &before.host_key, &before.ssh_user, &before.agent, before.principal, before.session)
    );
    assert_eq!(after.ssh_addr, "127.0.0.1:9");
    let agent_id = db.user_by_name("agent").await.unwrap().unwrap().id;
    assert_eq!(after.principal, Some(agent_id));
    assert_eq!(db.live_sessions().await.unwrap().len(), sessions_before.len());

    // Nor can it use the first agent's session: heartbeat, commands,
    // results and close all answer 404, and the session stays.
    let session = before.session.expect("the worker has a session");
    let (status, _) = mallory.post(&format!("/v1/agent/sessions/{session}/heartbeat"), json!({"workers": []})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = mallory.get(&format!("/v1/agent/sessions/{session}/commands")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = mallory.post(&format!("/v1/agent/sessions/{session}/results"), json!([])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = mallory.delete(&format!("/v1/agent/sessions/{session}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(db.live_sessions().await.unwrap().iter().any(|s| s.id == session), "the session is still alive");

    // The first agent keeps working: its worker is leased and used.
    server.make_idle(&[worker]).await;
    let alice = server.api(&server.user("alice", &[]).await);
    let id = alice.submit(json!({"caps": {"device_type": "x"}})).await;
    let leased = wait_for_request(&alice, id, |r| r["state"] == "in_progress").await;
    assert_eq!(leased["worker"], json!(worker));
    let (status, access) = alice.post_empty(&format!("/v1/requests/{id}/acquire")).await;
    assert_eq!(status, StatusCode::OK, "{access}");
    assert_eq!(access["username"], "lab");
    agent.stop().await;
}

#[actix_rt::test]
async fn class6_same_principal_reregistering_updates_its_own_worker() {
    let server = TestServer::start(Clock::System).await;
    let agent = server.api(&server.agent_token);
    let worker = WorkerId::random();
    // A restart of the same agent (same token, same name) with a new
    // address: accepted, and the address is updated.
    let (status, body) = open(&agent, "host-a", worker, "10.0.0.1:22", "lab").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = open(&agent, "host-a", worker, "10.0.0.2:22", "lab2").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let record = server.corral.db().load_worker(worker).await.unwrap().unwrap();
    assert_eq!((record.ssh_addr.as_str(), record.ssh_user.as_str()), ("10.0.0.2:22", "lab2"));
    assert_eq!(record.session.map(|s| s.to_string()), body["session"].as_str().map(str::to_string));
    // Another host of the same agent user claiming it: 409, unchanged.
    let (status, body) = open(&agent, "host-b", worker, "10.0.0.3:22", "lab").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let record = server.corral.db().load_worker(worker).await.unwrap().unwrap();
    assert_eq!((record.agent.as_str(), record.ssh_addr.as_str()), ("host-a", "10.0.0.2:22"));
}

#[actix_rt::test]
async fn class6_admin_can_hand_a_worker_over() {
    let server = TestServer::start(Clock::System).await;
    let db = server.corral.db();
    let first = server.api(&server.agent_token);
    let second = server.api(&agent_user(&server, "agent-b").await);
    let worker = WorkerId::random();
    let (status, body) = open(&first, "host-a", worker, "10.0.0.1:22", "lab").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = open(&second, "host-b", worker, "10.0.0.9:22", "lab").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Only an admin hands over; a bad principal is refused; nothing changes.
    let alice = server.api(&server.user("alice", &[]).await);
    let path = format!("/v1/workers/{worker}/agent");
    let (status, _) = alice.put(&path, json!({"principal": "agent-b"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = server.admin().put(&path, json!({"principal": "alice"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "alice is not an agent user");
    let (status, _) = server.admin().put(&path, json!({"principal": "agent-b", "host": "x"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "unknown field");
    let agent_id = db.user_by_name("agent").await.unwrap().unwrap().id;
    assert_eq!(db.load_worker(worker).await.unwrap().unwrap().principal, Some(agent_id));

    // The worker (new workers start in maintenance) goes to agent-b, host-b.
    let (status, handed) = server.admin().put(&path, json!({"principal": "agent-b", "agent": "host-b"})).await;
    assert_eq!(status, StatusCode::OK, "{handed}");
    assert_eq!(handed["agent"], "host-b");
    let agent_b = db.user_by_name("agent-b").await.unwrap().unwrap().id;
    let record = db.load_worker(worker).await.unwrap().unwrap();
    assert_eq!((record.principal, record.agent.as_str(), record.session), (Some(agent_b), "host-b", None));
    let history = db.worker_history(worker).await.unwrap();
    let last = history.last().unwrap();
    assert_eq!(
        (last.actor.as_str(), last.reason.as_str()),
        ("user:admin", "handed over to agent user agent-b (agent host-b)")
    );

    // Now agent-b claims it and may change its address; the first agent
    // token no longer may.
    let (status, body) = open(&second, "host-b", worker, "10.0.0.9:22", "lab").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let record = db.load_worker(worker).await.unwrap().unwrap();
    assert_eq!(record.ssh_addr, "10.0.0.9:22");
    assert_eq!(record.session.map(|s| s.to_string()), body["session"].as_str().map(str::to_string));
    let (status, _) = open(&first, "host-a", worker, "10.0.0.1:22", "lab").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(db.load_worker(worker).await.unwrap().unwrap().ssh_addr, "10.0.0.9:22");

    // A worker that is not in maintenance or failed is not handed over.
    let admin = server.admin();
    let (status, _) = admin.put(&format!("/v1/workers/{worker}/state"), json!({"state": "idle"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    wait_for_worker(&admin, worker, |w| w["state"] != "maintenance").await;
    let (status, _) = admin.put(&path, json!({"principal": "agent"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let record = db.load_worker(worker).await.unwrap().unwrap();
    assert_eq!(record.principal, Some(agent_b));
    assert_ne!(record.state, WorkerState::Maintenance);
}
