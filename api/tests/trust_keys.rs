//! Issue 13, classes 3 and 6 (part): a public key is either accepted by both
//! the server and the agent or refused at submission with 400 (one parser,
//! `corral_core::ssh`), and `ssh_command` quotes every value it embeds, with
//! lab user names that cannot pass for ssh options.

mod common;

use std::time::{Duration, SystemTime};

use awc::http::StatusCode;
use common::{TestServer, caps, wait_for_request};
use corral_actors::Clock;
use corral_core::{RequestId, WorkerId};
use serde_json::json;

const DSS: &str = "ssh-dss AAAAB3NzaC1kc3MAAACBAIiRRJzao6mbuEt5U/b/Gpc0zMn2qlsSR9H7JsRiO4T3ZJ5kMhxngR3a0eEnJ0EjAJ5xdcrcO/PPVWzSJLzjdKjpPVABXI6XreNbeKc5m7/taY91ioP59LGNh4iA8rnvbeWA5TUxdSxgLIKO0pCmaMMz4TwrIWkseQS+gWmCz3y/AAAAFQCJYOWbBIiyCpAz3af8wbMsm3jE8QAAAIAHMhyVUUPdqGpBXPVhB1tc3Ibq6Kt5X+jDBkda/nJCB7rxQzZNcYnLM1zNgxPIkKUPK/bpCeQMwPG9Pqbq4SNAuKydL3hKlY728qlxr297eBTcrMTiWddVcdI6rHEa/Pv1CsUkmHqiKCH8UryOtC5zpvfJYRHSS1mZDvNwr7pELAAAAIBwbU5ZQYKtEPuQ+dNwui11TrwmjqJB1vY5Fuc8dthmcLgfgscWtDgQIX0HQrXILJ3PXnvaomiLtRo9JraKFOQwYZi2SQ8RL8f28zwmnwCOdcQeJsjq82SjPw3ENsoewv8XC+cAjZefvkNuo2IvXfdBUpZbGNl9PSyR363EGqCPHg==";
const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMJNzM0k0qX1Ln0wSlxIS4GYpPwMvltP8MuR+f7sWl59";
const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBBLZcgh67D0fYM1xNG5SYS+OfO+Zm+Z0ZM3alGsD5Gh1ot6oJDM58t30yTYT+QbMjVhHwdVhIuqUPbzT5/6aKtI=";

/// Submits a request with `key`; answers the status and body.
async fn submit_with_key(api: &common::Api, key: &str) -> (StatusCode, serde_json::Value) {
    api.post("/v1/requests", json!({"caps": {"device_type": "x"}, "ssh_public_key": key})).await
}

async fn request_count(api: &common::Api) -> usize {
    let (status, page) = api.get("/v1/requests").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["items"].as_array().map(Vec::len).unwrap_or(0)
}

/// An `ssh-dss` key (which the agent cannot install) is refused at
/// submission with a 400 naming the reason, and no request is made.
#[actix_rt::test]
async fn class3_ssh_dss_key_is_400() {
    let server = TestServer::start(Clock::System).await;
    let alice = server.api(&server.user("alice", &[]).await);
    let (status, body) = submit_with_key(&alice, DSS).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("ssh-dss"), "{body}");
    for refused in [
        format!("command=\"/bin/sh\" {ED25519}"),
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7".to_string(),
        format!("{ED25519} evil\u{0}comment"),
    ] {
        let (status, body) = submit_with_key(&alice, &refused).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{refused:?}: {body}");
    }
    assert_eq!(request_count(&alice).await, 0, "nothing was submitted");
}

/// A key whose comment holds a newline (a second key line in disguise) is
/// refused with 400; nothing is stored.
#[actix_rt::test]
async fn class3_key_comment_with_newline_is_400() {
    let server = TestServer::start(Clock::System).await;
    let alice = server.api(&server.user("alice", &[]).await);
    for key in [
        format!("{ED25519} me@laptop\n{ECDSA} smuggled"),
        format!("{ED25519} me\nrestrict,command=\"sh\" {ECDSA}"),
        format!("{ED25519} me\r@laptop"),
    ] {
        let (status, body) = submit_with_key(&alice, &key).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{key:?}: {body}");
        assert!(body.to_string().contains("line"), "{body}");
    }
    assert_eq!(request_count(&alice).await, 0, "nothing was submitted");
}

/// An ECDSA key (refused by the server before, accepted by the agent) is
/// accepted, stored normalised, leased through an agent, and the agent's
/// line builder accepts exactly what was stored.
#[actix_rt::test]
async fn class3_ecdsa_key_is_accepted_and_installed() {
    let server = TestServer::start(Clock::System).await;
    let agent = server.agent("host-a", 1, &caps(&[("device_type", "x")]));
    server.make_idle(&agent.uuids).await;
    let alice = server.api(&server.user("alice", &[]).await);

    let (status, body) = submit_with_key(&alice, &format!("  {ECDSA}   me@laptop \n")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_i64().unwrap();
    wait_for_request(&alice, id, |r| r["state"] == "in_progress").await;
    let (status, access) = alice.post_empty(&format!("/v1/requests/{id}/acquire")).await;
    assert_eq!(status, StatusCode::OK, "{access}");
    assert!(access["private_key"].is_null(), "the requester holds the private half: {access}");

    let record = server.corral.db().get_request(RequestId(id)).await.unwrap().unwrap();
    let stored = record.ssh_public_key.expect("the key is stored");
    assert_eq!(stored, format!("{ECDSA} me@laptop"), "stored normalised");
    let worker = WorkerId(access["worker"].as_str().unwrap().parse().unwrap());
    let expires = SystemTime::now() + Duration::from_secs(3600);
    let line = corral_agent::host::authorized_keys::lease_line(&stored, RequestId(id), worker, expires)
        .expect("the agent installs what the server accepted");
    assert!(line.starts_with("restrict,pty,expiry-time=\"") && line.contains(ECDSA), "{line}");
}

/// `ssh_command` is a command line a shell splits into exactly the words
/// meant, whatever the public host holds; and a lab user name that would
/// be an ssh option is refused at registration.
#[actix_rt::test]
async fn class6_ssh_command_quotes_what_it_embeds() {
    let odd_host = "corral lab;touch /tmp/pwned-$(id -u)";
    let server = TestServer::start_with(Clock::System, |config| config.public_host = Some(odd_host.into())).await;
    let agent = server.agent("host-a", 1, &caps(&[("device_type", "x")]));
    server.make_idle(&agent.uuids).await;
    let alice = server.api(&server.user("alice", &[]).await);
    let id = alice.submit(json!({"caps": {"device_type": "x"}})).await;
    wait_for_request(&alice, id, |r| r["state"] == "in_progress").await;
    let (status, access) = alice.post_empty(&format!("/v1/requests/{id}/acquire")).await;
    assert_eq!(status, StatusCode::OK, "{access}");
    let command = access["ssh_command"].as_str().unwrap();
    let rest = command.strip_prefix("ssh ").unwrap_or_else(|| panic!("{command}"));
    // Let a real shell split the words (printf prints one per line).
    let out = std::process::Command::new("sh").arg("-c").arg(format!("printf '%s\\n' {rest}")).output().unwrap();
    assert!(out.status.success(), "{command}");
    let words: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect();
    let port = access["port"].as_u64().unwrap().to_string();
    let key = format!("corral-lease-{id}.key");
    let destination = format!("lab@{odd_host}");
    assert_eq!(words, ["-p", &port, "-i", &key, "-o", "IdentitiesOnly=yes", &destination], "{command}");

    // An agent whose lab user is an ssh option cannot register it.
    let agent_api = server.api(&server.agent_token);
    for user in ["-oProxyCommand=sh", "lab user", "lab;id"] {
        let open = json!({"agent": "evil", "workers": [{
            "uuid": uuid::Uuid::new_v4(), "caps": {"device_type": "y"}, "ssh_addr": "127.0.0.1:22", "user": user,
        }]});
        let (status, body) = agent_api.post("/v1/agent/sessions", open).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{user:?}: {body}");
    }
    let (_, workers) = server.admin().get("/v1/workers").await;
    assert_eq!(workers["items"].as_array().unwrap().len(), 1, "no worker registered: {workers}");
}
