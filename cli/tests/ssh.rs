//! End to end with a real OpenSSH server (SPEC §6, §9, §12): a real
//! `corral agent --config` manages the lab user's root-owned key file of an
//! `sshd` on a loopback port, and the real `ssh` client logs in through the
//! server's tunnel with the lease key, pinning the host key the agent read.
//! Then: what a closed lease leaves behind (nothing), a request that brings
//! its own (ECDSA) key, `kill -9` of the agent and of the server during a
//! lease, and a lease holder who tries to keep access (issue 13, class 7).
//!
//! Needs root and OpenSSH (`scripts/test` installs openssh-server).

mod ssh_lab;

use std::time::{Duration, Instant};

use corral_core::RequestId;
use ssh_lab::{Lab, Timers, assert_strict_modes, own_key_pair, write_foreign_keys};

#[actix_rt::test]
async fn lease_keys_log_in_through_the_tunnel_and_go_when_the_lease_ends() {
    // No key file yet: the agent makes it, as sshd's StrictModes wants it.
    let lab = Lab::start(Timers::Default, |user| assert!(!user.authorized_keys().exists())).await;
    let hooks = std::fs::read_to_string(lab.path("hooks.log")).unwrap();
    let prepared = format!("prepare {} {} 127.0.0.1:{}", lab.worker, lab.user.name, lab.sshd_port);
    assert_eq!(hooks.lines().collect::<Vec<_>>(), [prepared.as_str()], "the prepare hook ran once, with its env");

    // The first lease: one line, and ssh gets in through the tunnel.
    let (first, access) = lab.lease(None).await;
    let port = access["port"].as_u64().unwrap() as u16;
    let private_key = access["private_key"].as_str().expect("a generated key pair").to_string();
    assert!(private_key.contains("OPENSSH PRIVATE KEY"), "OpenSSH PEM");
    let lines = lab.lease_lines();
    assert_eq!(lines.len(), 1, "exactly one lease line: {lines:?}");
    assert!(lines[0].ends_with(&format!("corral-lease request={first} worker={}", lab.worker)), "{lines:?}");
    assert_strict_modes(&lab.user);
    let key = lab.key_file("lease-1", &private_key);
    lab.ssh_hello(port, &key).await.expect("the lease key logs in through the tunnel");
    lab.ssh_hello(lab.sshd_port, &key).await.expect("and directly (so a later refusal is the key's)");

    // Close: the line goes, the tunnel refuses, the key no longer works,
    // and the worker is prepared again.
    lab.close(first).await;
    corral_testkit::wait_until("the lease line is gone", Duration::from_secs(15), || async {
        lab.lease_lines().is_empty().then_some(())
    })
    .await;
    corral_testkit::wait_until("the tunnel refuses", Duration::from_secs(10), || async {
        Lab::refused(port).await.then_some(())
    })
    .await;
    let refused = lab.ssh_hello(lab.sshd_port, &key).await.expect_err("the closed lease's key is refused");
    assert!(refused.contains("Permission denied"), "{refused}");
    lab.wait_worker("idle", Duration::from_secs(15)).await;
    let hooks = std::fs::read_to_string(lab.path("hooks.log")).unwrap();
    assert_eq!(hooks.lines().filter(|l| *l == prepared).count(), 2, "prepared again after the lease:\n{hooks}");

    // The next lease of the same worker gets another key.
    let (second, access) = lab.lease(None).await;
    let second_key = access["private_key"].as_str().unwrap().to_string();
    assert_ne!(second_key, private_key, "a fresh key per lease");
    let port = access["port"].as_u64().unwrap() as u16;
    let key2 = lab.key_file("lease-2", &second_key);
    lab.ssh_hello(port, &key2).await.expect("the second lease's key logs in");
    assert!(lab.ssh_hello(port, &key).await.is_err(), "the first lease's key does not");
    lab.close(second).await;
    corral_testkit::wait_until("the second line is gone", Duration::from_secs(15), || async {
        lab.lease_lines().is_empty().then_some(())
    })
    .await;
    lab.wait_worker("idle", Duration::from_secs(15)).await;

    // A request with its own public key (ECDSA, issue 13 class 3): no
    // private key is handed out, and the requester's key logs in.
    let (own_private, own_public) = own_key_pair(lab.dir.path(), "own_key", "ecdsa");
    let (third, access) = lab.lease(Some(&own_public)).await;
    assert!(access["private_key"].is_null(), "no private key for a request with its own key: {access}");
    let lines = lab.lease_lines();
    let own_data = own_public.split_whitespace().nth(1).unwrap();
    assert!(lines.len() == 1 && lines[0].contains(own_data), "{lines:?}");
    let port = access["port"].as_u64().unwrap() as u16;
    lab.ssh_hello(port, &own_private).await.expect("the requester's own key logs in");
    lab.close(third).await;
    corral_testkit::wait_until("the own key's line is gone", Duration::from_secs(15), || async {
        lab.lease_lines().is_empty().then_some(())
    })
    .await;
    assert!(lab.ssh_hello(lab.sshd_port, &own_private).await.is_err(), "the own key is revoked too");
}

#[actix_rt::test]
async fn a_killed_agent_fails_its_lease_and_a_restarted_one_brings_the_worker_back() {
    let mut lab = Lab::start(Timers::Short, |_| {}).await;
    let (id, access) = lab.lease(None).await;
    let port = access["port"].as_u64().unwrap() as u16;
    let key = lab.key_file("lease", access["private_key"].as_str().unwrap());
    lab.ssh_hello(port, &key).await.expect("the lease works");

    lab.kill_agent();
    let killed = Instant::now();
    let bound = lab.timers.session_timeout() + Duration::from_secs(5);
    let request = lab.wait_request(id, "failed", bound).await;
    let worker = lab.wait_worker("failed", bound.saturating_sub(killed.elapsed())).await;
    eprintln!("request and worker failed {:?} after kill -9 of the agent", killed.elapsed());
    assert!(request["reason"].as_str().is_some_and(|r| !r.is_empty()), "{request}");
    assert!(worker["reason"].as_str().is_some_and(|r| r.contains("agent")), "{worker}");
    corral_testkit::wait_until("the failed lease's tunnel refuses", Duration::from_secs(10), || async move {
        Lab::refused(port).await.then_some(())
    })
    .await;

    // The agent comes back: the worker is prepared (the stale line goes)
    // and idle, without an admin.
    assert_eq!(lab.lease_lines().len(), 1, "nobody removed the line while the agent was away");
    lab.start_agent();
    lab.wait_worker("idle", Duration::from_secs(30)).await;
    assert!(lab.lease_lines().is_empty(), "preparation removed the failed lease's line");
    assert!(lab.ssh_hello(lab.sshd_port, &key).await.is_err(), "the failed lease's key no longer logs in");

    // And it serves again.
    let (next, access) = lab.lease(None).await;
    let key = lab.key_file("next", access["private_key"].as_str().unwrap());
    lab.ssh_hello(access["port"].as_u64().unwrap() as u16, &key).await.expect("a new lease works");
    lab.close(next).await;
}

#[actix_rt::test]
async fn a_restarted_server_keeps_the_lease_tunnel_and_other_keys_stay_untouched() {
    // Lines the agent does not own, with odd formatting and no final newline.
    let foreign: &[u8] = b"# keys of the lab staff\n\
        ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFoo  staff@lab\r\n\
        \n\
        command=\"/bin/false\" ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ nobody";
    let mut lab = Lab::start(Timers::Default, |user| write_foreign_keys(user, foreign)).await;
    let (id, access) = lab.lease(None).await;
    let port = access["port"].as_u64().unwrap() as u16;
    let key = lab.key_file("lease", access["private_key"].as_str().unwrap());
    lab.ssh_hello(port, &key).await.expect("the lease works before the crash");
    let content = std::fs::read(lab.user.authorized_keys()).unwrap();
    assert!(content.ends_with(foreign), "the lease line went first; the foreign lines stay as they were");
    assert_strict_modes(&lab.user);

    lab.kill_server();
    assert!(lab.ssh_hello(port, &key).await.is_err(), "no tunnel while the server is down");
    lab.start_server().await;
    let again = lab.tess.acquire(RequestId(id), Duration::ZERO).await.unwrap();
    assert_eq!(again.port, port, "the same tunnel port after the restart");
    assert_eq!(again.host_key.as_deref(), Some(lab.host_key.as_str()));
    lab.ssh_hello(port, &key).await.expect("the lease key logs in through the re-opened tunnel");
    let request = lab.tess.request(RequestId(id)).await.unwrap();
    assert_eq!(request.state, corral_core::RequestState::InProgress, "{request:?}");

    // The agent found the restarted server: closing revokes the key, and
    // only the agent's line left the file.
    lab.close(id).await;
    corral_testkit::wait_until("the lease line is gone", Duration::from_secs(30), || async {
        lab.lease_lines().is_empty().then_some(())
    })
    .await;
    assert_eq!(std::fs::read(lab.user.authorized_keys()).unwrap(), foreign, "byte for byte");
    lab.wait_worker("idle", Duration::from_secs(30)).await;
    assert_eq!(lab.worker_json().await["state"], "idle");
}

/// Issue 13, class 7: during a lease the holder appends a key of their own
/// to the lab user's `~/.ssh/authorized_keys` (which the user owns) and
/// tries to plant a link where the agent writes. sshd reads only the
/// agent's root-owned file, so the appended key never logs in, during the
/// lease or after; the lease line is `restrict`ed, its `expiry-time`
/// follows a prolong, and sshd honours an expired one.
#[actix_rt::test]
async fn class7_appended_key_does_not_survive_the_lease() {
    use corral_agent::host::authorized_keys::{expiry_time, lease_line};

    let lab = Lab::start(Timers::Default, |_| {}).await;
    let (id, access) = lab.lease(None).await;
    let port = access["port"].as_u64().unwrap() as u16;
    let key = lab.key_file("lease", access["private_key"].as_str().unwrap());
    let expires = corral_core::time::parse_rfc3339(access["expires_at"].as_str().unwrap()).unwrap();
    let options = format!("restrict,pty,expiry-time=\"{}\" ", expiry_time(expires));
    // The key went out before the lease started; the lease's own expiry
    // follows it.
    corral_testkit::wait_until("the line expires with the lease", Duration::from_secs(15), || async {
        let lines = lab.lease_lines();
        (lines.len() == 1 && lines[0].starts_with(&options)).then_some(())
    })
    .await;

    // The holder, logged in through the tunnel with the lease key, appends
    // a key of their own and tries the agent's directory.
    let (own_private, own_public) = own_key_pair(lab.dir.path(), "appended", "ed25519");
    let keys_dir = lab.user.authorized_keys().parent().unwrap().display().to_string();
    let script = format!(
        "umask 077; mkdir -p .ssh && printf '%s\\n' '{own_public}' >> .ssh/authorized_keys && echo appended; \
         ln -s /etc/passwd {keys_dir}/planted 2>/dev/null || echo no-link; \
         printf '%s\\n' '{own_public}' >> {keys_dir}/{user} 2>/dev/null || echo no-write",
        user = lab.user.name,
    );
    let out = lab.ssh_run(port, &key, &script).await.expect("the lease key logs in");
    // And leaves something running (which the account reset kills).
    lab.ssh_run(port, &key, "nohup sleep 600 >/dev/null 2>&1 &").await.expect("a background process starts");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["appended", "no-link", "no-write"], "{out}");
    let own = std::fs::read_to_string(lab.user.own_authorized_keys()).unwrap();
    assert!(own.contains(own_public.split_whitespace().nth(1).unwrap()), "the append itself worked: {own}");
    let refused = lab.ssh_hello(port, &own_private).await.expect_err("sshd does not read the user's own file");
    assert!(refused.contains("Permission denied"), "{refused}");

    // Prolonging renews the line's expiry on the worker.
    let prolonged = lab.tess.prolong(RequestId(id), Some(Duration::from_secs(3600))).await.unwrap();
    let later = prolonged.lease_expires_at;
    let renewed = format!("expiry-time=\"{}\"", expiry_time(later));
    corral_testkit::wait_until("the key's expiry follows the prolong", Duration::from_secs(15), || async {
        lab.lease_lines().first().is_some_and(|l| l.contains(&renewed)).then_some(())
    })
    .await;
    lab.ssh_hello(port, &key).await.expect("the renewed line still logs in");

    // After the lease: neither the lease key nor the appended key.
    lab.close(id).await;
    corral_testkit::wait_until("the lease line is gone", Duration::from_secs(15), || async {
        lab.lease_lines().is_empty().then_some(())
    })
    .await;
    lab.wait_worker("idle", Duration::from_secs(15)).await;
    // (Killed processes whose parent has not reaped them yet show as zombies.)
    let ps = std::process::Command::new("ps").args(["-o", "stat=,cmd=", "-u", &lab.user.name]).output().unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
    assert!(ps.lines().all(|p| p.trim_start().starts_with('Z')), "no live process of the lab user is left:\n{ps}");
    assert!(lab.ssh_hello(lab.sshd_port, &key).await.is_err(), "the lease key is refused");
    let refused = lab.ssh_hello(lab.sshd_port, &own_private).await.expect_err("the appended key is refused");
    assert!(refused.contains("Permission denied"), "{refused}");
    // The lab has reset_account = true: preparation killed what the holder
    // left running and made the home again from /etc/skel.
    assert!(!lab.user.own_authorized_keys().exists(), "the home was made again");
    assert!(lab.user.home.join(".profile").exists(), "from /etc/skel");
    let home = std::fs::metadata(&lab.user.home).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&home), lab.user.uid, "owned by the lab user");

    // sshd honours the expiry-time the agent writes: the same line logs in
    // while it holds, and not once it has passed (even if nobody removed it).
    let stranger = corral_core::WorkerId(uuid::Uuid::new_v4());
    let now = std::time::SystemTime::now();
    for (expires, works) in [(now + Duration::from_secs(3600), true), (now - Duration::from_secs(60), false)] {
        let line = lease_line(&own_public, corral_core::RequestId(999_999), stranger, expires).unwrap();
        std::fs::write(lab.user.authorized_keys(), format!("{line}\n")).unwrap();
        let login = lab.ssh_hello(lab.sshd_port, &own_private).await;
        assert_eq!(login.is_ok(), works, "expiry {}: {login:?}", expiry_time(expires));
    }
}

/// Issue 13, class 7: an agent whose sshd would also read the lab user's
/// own `~/.ssh/authorized_keys` (the appended-key trick) refuses to start
/// with `sshd_check = "refuse"`, and says what sshd_config needs.
#[actix_rt::test]
async fn class7_agent_refuses_an_sshd_that_reads_the_users_own_keys() {
    let lab = Lab::start(Timers::Default, |_| {}).await;
    let config = std::fs::read_to_string(lab.path("sshd_config")).unwrap();
    let lax = config.replace(
        "AuthorizedKeysFile /etc/corral/authorized_keys/%u",
        "AuthorizedKeysFile /etc/corral/authorized_keys/%u .ssh/authorized_keys",
    );
    assert_ne!(lax, config, "the lab's sshd_config has the documented Match block");
    std::fs::write(lab.path("sshd_config.lax"), lax).unwrap();
    let agent = std::fs::read_to_string(lab.path("agent.toml")).unwrap();
    let lax_agent = agent.replace("sshd_config\"", "sshd_config.lax\"");
    assert_ne!(lax_agent, agent);
    std::fs::write(lab.path("agent-lax.toml"), lax_agent).unwrap();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corral"))
        .arg("agent")
        .arg("--config")
        .arg(lab.path("agent-lax.toml"))
        .env_remove("CORRAL_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent must not start: {stderr}");
    assert!(stderr.contains("a key the lease holder adds outlives the lease"), "{stderr}");
    assert!(stderr.contains(&format!("{}/.ssh/authorized_keys", lab.user.home.display())), "{stderr}");
}
