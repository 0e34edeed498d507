//! `kill -9` of the real `corral serve` binary, on its embedded PostgreSQL,
//! while requests are being submitted and leases run; then a restart. Every
//! acknowledged request must still be there, live leases stay live with
//! their tunnels on the same ports, and scheduling resumes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use corral_client::workers::WorkerFilter;
use corral_client::{Client, Paging};
use corral_core::{Priority, RequestId, RequestState, WorkerState};
use corral_proto::requests::NewRequest;
use corral_proto::users::NewUser;
use corral_proto::workers::{AdminState, StateChange, Worker};
use corral_testkit::{CorralServer, Process};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a server may take to print its address, and to get ready.
const START: Duration = Duration::from_secs(60);

fn corral() -> Command {
    Command::new(env!("CARGO_BIN_EXE_corral"))
}

/// `corral serve` on its embedded PostgreSQL in `dir`, listening on
/// `listen` (`127.0.0.1:0`: a port the kernel picks, read from what the
/// server prints); ready when this returns.
async fn serve(dir: &Path, listen: &str) -> CorralServer {
    let mut command = corral();
    command.args(["serve", "--listen", listen, "--data-dir"]).arg(dir).env_remove("CORRAL_DATABASE_URL");
    let mut server = CorralServer::start(&mut command, None, START).await.expect("corral serve starts");
    server.wait_ready(START).await.expect("corral serve gets ready");
    server
}

/// A simulated `corral agent` of `workers` workers with `device_type=x`
/// on `servers`, its sessions' SSH address `ssh`.
fn agent(servers: &str, workers: usize, name: &str, ssh: u16, token_file: &Path) -> Process {
    let mut command = corral();
    command
        .args(["agent", "--simulate", &workers.to_string(), "--server", servers, "--caps", "device_type=x"])
        .args(["--name", name, "--ssh-addr", &format!("127.0.0.1:{ssh}"), "--token-file"])
        .arg(token_file);
    Process::spawn("corral agent", &mut command, None).expect("corral agent starts")
}

/// A typed client of `servers` with `token`.
fn client(servers: &str, token: &str) -> Client {
    Client::plain(servers, Some(token)).unwrap()
}

/// Whether `GET {base}/readyz` answers 200.
async fn is_ready(base: &str) -> bool {
    Client::plain(base, None).unwrap().readyz().await.is_ok()
}

/// Makes `workers` idle (they register in maintenance).
async fn make_idle(admin: &Client, workers: &[Worker]) {
    for worker in workers {
        let change = StateChange { state: AdminState::Idle, reason: None, drain: false };
        let changed = admin.set_worker_state(worker.uuid, &change).await.unwrap();
        assert_eq!(changed.uuid, worker.uuid);
    }
}

/// A request for a worker with `device_type=x`.
fn for_x(priority: Option<i64>) -> NewRequest {
    NewRequest {
        caps: [("device_type".to_string(), "x".to_string())].into_iter().collect(),
        priority: priority.map(|p| Priority::try_from(p).unwrap()),
        ..Default::default()
    }
}

/// Waits until `admin` lists `n` workers; returns them.
async fn registered(admin: &Client, n: usize) -> Vec<Worker> {
    corral_testkit::wait_until("the agent registers its workers", Duration::from_secs(30), || async {
        let listing = admin.workers(&WorkerFilter::default(), &Paging::default()).await.ok()?;
        (listing.items.len() == n).then_some(listing.items)
    })
    .await
}

/// A TCP echo server standing in for the workers' SSH server.
async fn echo_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    actix_rt::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            actix_rt::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

async fn echo_through(port: u16) -> bool {
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(("127.0.0.1", port))).await
    else {
        return false;
    };
    if stream.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf)).await, Ok(Ok(_)))
        && &buf == b"ping"
}

fn token(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap().trim().to_string()
}

#[actix_rt::test]
async fn kill_9_and_restart_loses_nothing_acknowledged() {
    let scratch = corral_testkit::temp_dir("restart");
    let dir = scratch.path();
    let mut server = serve(dir, "127.0.0.1:0").await;
    let base = server.url().to_string();

    let ssh = echo_server().await;
    let agent = agent(&base, 2, "restart-host", ssh, &dir.join("agent.token"));
    let admin = client(&base, &token(dir, "admin.token"));
    let workers = registered(&admin, 2).await;
    make_idle(&admin, &workers).await;
    let created = admin.create_user(&NewUser { name: "rita".into(), ..Default::default() }).await.unwrap();
    let rita_token = created.token;
    let rita = client(&base, &rita_token);

    // Two leases start; their tunnels forward.
    let mut leased = Vec::new();
    for _ in 0..2 {
        let request = rita.submit(&for_x(None)).await.unwrap();
        let access = rita.acquire(request.id, Duration::from_secs(20)).await.unwrap();
        assert!(echo_through(access.port).await, "tunnel {} forwards before the crash", access.port);
        leased.push((request.id, access.port));
    }

    // Submissions in flight when the server dies: whatever was
    // acknowledged (201) must survive.
    let submitter = client(&base, &rita_token);
    let submitting = actix_rt::spawn(async move {
        let mut acknowledged = Vec::new();
        for _ in 0..10_000 {
            match submitter.submit(&for_x(Some(3))).await {
                Ok(request) => acknowledged.push(request.id),
                Err(corral_client::Error::Transport { .. }) => break,
                Err(err) => panic!("a submission failed: {err}"),
            }
        }
        acknowledged
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.kill(); // SIGKILL
    let acknowledged = submitting.await.unwrap();
    assert!(!acknowledged.is_empty(), "some submissions were acknowledged before the kill");

    // The same address, which the agent and the clients were given: the
    // kernel picked the port at the first start, and binding it again is a
    // plain restart, as on a configured port.
    let server = serve(dir, &server.listen()).await;
    assert_eq!(server.url(), base);

    for id in &acknowledged {
        let request = rita.request(*id).await.unwrap_or_else(|e| panic!("acknowledged request {id} survived: {e}"));
        assert_eq!(request.state, RequestState::Waiting, "{request:?}");
    }
    for (id, port) in &leased {
        let request = rita.request(*id).await.unwrap();
        assert_eq!(request.state, RequestState::InProgress, "live lease {id} stays live: {request:?}");
        let access = rita.acquire(*id, Duration::ZERO).await.unwrap();
        assert_eq!(access.port, *port, "same tunnel port after restart");
        assert!(access.private_key.as_deref().is_some_and(|k| k.contains("PRIVATE KEY")));
        assert!(echo_through(*port).await, "tunnel {port} forwards after the restart");
    }

    // Scheduling resumes: closing a lease hands its worker to the oldest
    // acknowledged priority-3 request once the agent is back.
    let (first, first_port) = leased[0];
    let closed = rita.close_request(first).await.unwrap();
    assert_eq!(closed.id, first);
    assert!(!echo_through(first_port).await, "the closed lease's tunnel refuses");
    let next = acknowledged[0];
    let access = rita.acquire(next, Duration::from_secs(30)).await;
    assert!(access.is_ok(), "the next request gets the freed worker after the restart: {access:?}");

    drop((agent, server));
    if let Ok(pg) = corral_embedded_pg::EmbeddedPostgres::start(dir).await {
        let _ = pg.stop().await;
    }
}

#[actix_rt::test]
async fn the_server_restarts_its_embedded_database_when_it_dies() {
    let scratch = corral_testkit::temp_dir("pgdies");
    let dir = scratch.path();
    let server = serve(dir, "127.0.0.1:0").await;
    let base = server.url().to_string();
    let admin = client(&base, &token(dir, "admin.token"));
    admin.create_user(&NewUser { name: "before".into(), ..Default::default() }).await.unwrap();

    // SIGKILL the postmaster (its pid is the first line of postmaster.pid).
    let pid_file = std::fs::read_to_string(dir.join("postgres/postmaster.pid")).unwrap();
    let pid: i32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();

    // The server notices (readiness fails)...
    let probe = Client::plain(&base, None).unwrap();
    corral_testkit::wait_until("readiness reports the database down", Duration::from_secs(20), || async {
        (probe.readyz().await.err()?.status() == Some(503)).then_some(())
    })
    .await;
    // ...starts the cluster again, and serves from it: what was committed
    // before is there, and new writes commit.
    corral_testkit::wait_until("the server is ready again", START, || async { is_ready(&base).await.then_some(()) })
        .await;
    corral_testkit::wait_until("a write succeeds again", Duration::from_secs(60), || async {
        let created = admin.create_user(&NewUser { name: "after".into(), ..Default::default() }).await;
        // 503 while the database is down; 409 if an earlier attempt committed.
        (created.is_ok() || created.err()?.is_conflict()).then_some(())
    })
    .await;
    let users = admin.users().await.unwrap();
    let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
    assert!(names.contains(&"before") && names.contains(&"after"), "{names:?}");

    drop(server);
    if let Ok(pg) = corral_embedded_pg::EmbeddedPostgres::start(dir).await {
        let _ = pg.stop().await;
    }
}

/// `corral serve` on an external database with a short session timeout,
/// on a port the kernel picks; returns once it printed its address (a
/// standby does too, before it leads).
async fn serve_replica(dir: &Path, db_url: &str) -> CorralServer {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("corral.toml");
    std::fs::write(&config, "session_timeout = \"3s\"\nheartbeat_interval = \"1s\"\n").unwrap();
    let mut command = corral();
    command.args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&config).arg("--data-dir").arg(dir);
    command.args(["--database-url", db_url]);
    CorralServer::start(&mut command, None, START).await.expect("corral serve starts")
}

/// The refusal of `GET {base}/readyz`, once something answers with one.
async fn readyz_refusal(base: &str) -> Option<corral_client::Refused> {
    Client::plain(base, None).unwrap().readyz().await.err()?.refused().cloned()
}

/// Runs a client command of the CLI (`corral request ...`) with none of
/// the user's configuration (HOME is `home`, no CORRAL_* variables):
/// its exit status, standard output and standard error.
async fn cli(home: &Path, args: &[&str]) -> (bool, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_corral"));
    command
        .args(args)
        .current_dir(home)
        .env("HOME", home)
        .env_remove("CORRAL_URL")
        .env_remove("CORRAL_TOKEN")
        .env_remove("CORRAL_CONFIG")
        .env_remove("XDG_CONFIG_HOME")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .unwrap_or_else(|_| panic!("corral {args:?} did not finish within 60 s"))
        .unwrap_or_else(|e| panic!("running corral {args:?}: {e}"));
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

/// Like [`cli`] for a command that must succeed and print JSON.
async fn cli_json(home: &Path, args: &[&str]) -> Value {
    let (ok, stdout, stderr) = cli(home, args).await;
    assert!(ok, "corral {args:?} failed:\n{stderr}\n{stdout}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("corral {args:?} printed no JSON ({e}):\n{stdout}"))
}

/// Issue 18 item 2: two replicas on one database; `kill -9` of the leader.
/// The standby answers 503 `standby` while it waits, leads within
/// session_timeout + 2 s of the kill, and reopens the tunnel of the live
/// lease on the same port; the agent, given both URLs, follows. The CLI,
/// given both URLs with the standby (later: the dead replica) first,
/// reaches the leader (`corral_client::servers`).
#[actix_rt::test]
async fn kill_9_of_the_leading_replica_hands_over_to_the_standby_with_tunnels_kept() {
    const SESSION_TIMEOUT: Duration = Duration::from_secs(3);
    let scratch = corral_testkit::temp_dir("replicas");
    let root = scratch.path();
    let db = corral_testkit::test_database().await;
    let mut leader = serve_replica(&root.join("a"), &db.url).await;
    leader.wait_ready(START).await.expect("the first replica leads");
    let standby = serve_replica(&root.join("b"), &db.url).await;
    let (base_a, base_b) = (leader.url().to_string(), standby.url().to_string());
    // The standby answers at once, with 503 and what it is.
    let refused = corral_testkit::wait_until("the standby answers", Duration::from_secs(30), || async {
        readyz_refusal(&base_b).await
    })
    .await;
    assert!(refused.is_standby() && refused.retry_after.is_some(), "{refused:?}");

    let ssh = echo_server().await;
    let both = format!("{base_a},{base_b}");
    let agent = agent(&both, 1, "replica-host", ssh, &root.join("a/agent.token"));
    // The test's own clients are given both URLs too, the leader first.
    let admin = client(&both, &token(&root.join("a"), "admin.token"));
    let workers = registered(&admin, 1).await;
    make_idle(&admin, &workers).await;
    let created = admin.create_user(&NewUser { name: "rita".into(), ..Default::default() }).await.unwrap();
    let rita_token = created.token;
    let rita = client(&both, &rita_token);
    // Sent: `corral request new` with --server STANDBY,LEADER. Must happen:
    // the standby's 503 `standby` sends the CLI on to the leader, which
    // creates exactly one request.
    let standby_first = format!("{base_b},{base_a}");
    let as_rita = ["--json", "--token", &rita_token];
    let submit = ["request", "new", "--caps", "device_type=x", "--server", &standby_first];
    let request = cli_json(root, &[&submit[..], &as_rita[..]].concat()).await;
    let id = RequestId(request["id"].as_i64().unwrap());
    let listed = rita.requests(&Default::default(), &Paging::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1, "one submission, one request: {listed:?}");
    // Sent: the same with --server STANDBY only. Must happen: exit status 1
    // and the standby's answer, since no URL leads.
    let (ok, _, stderr) = cli(root, &["request", "list", "--token", &rita_token, "--server", &base_b]).await;
    assert!(!ok && stderr.contains("standby: "), "only the standby: {stderr}");
    let access = rita.acquire(id, Duration::from_secs(20)).await.unwrap();
    let tunnel = access.port;
    assert!(echo_through(tunnel).await, "the tunnel forwards before the crash");

    let killed = std::time::Instant::now();
    leader.kill(); // SIGKILL
    corral_testkit::wait_until("the standby leads", Duration::from_secs(30), || async {
        is_ready(&base_b).await.then_some(())
    })
    .await;
    let takeover = killed.elapsed();
    assert!(
        takeover <= SESSION_TIMEOUT + Duration::from_secs(2),
        "the standby leads within session_timeout + 2 s of the kill, took {takeover:?}"
    );

    // Sent: `corral request show` with --server DEAD,NEW-LEADER. Must
    // happen: the refused connection sends the CLI on to the new leader.
    let dead_first = format!("{base_a},{base_b}");
    let show = ["request", "show", &id.to_string(), "--server", &dead_first];
    let now = cli_json(root, &[&show[..], &as_rita[..]].concat()).await;
    assert_eq!(now["state"], "in_progress", "the live lease stays live: {now}");
    // The typed clients, given both URLs, follow to the new leader too.
    let access = rita.acquire(id, Duration::ZERO).await.unwrap();
    assert_eq!(access.port, tunnel, "same tunnel port on the new leader");
    assert!(echo_through(tunnel).await, "the tunnel forwards through the new leader");
    // The agent followed: its worker is still leased (not failed), and
    // closing the lease returns it to idle through the new leader.
    let closed = rita.close_request(id).await.unwrap();
    assert_eq!(closed.id, id);
    let uuid = workers[0].uuid;
    corral_testkit::wait_until(
        "the agent's worker is idle again via the new leader",
        Duration::from_secs(30),
        || async { (admin.worker(uuid).await.ok()?.state == WorkerState::Idle).then_some(()) },
    )
    .await;
    eprintln!("takeover after kill -9: {takeover:?}");
    drop((agent, standby));
}
