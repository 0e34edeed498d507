//! A throw-away device lab for the SSH tests: a lab user, a real OpenSSH
//! `sshd` on a loopback port that reads the lab user's keys only from the
//! root-owned file a real `corral agent --config` manages
//! (`/etc/corral/authorized_keys/USER`, through `Match User` and
//! `AuthorizedKeysFile`, as the agent's documentation says), and a real
//! `corral serve` on a test database. Everything is undone on drop, also when a test fails (then the
//! output of every process is printed first: corral_testkit::Process).
//!
//! Needs root (useradd, sshd) and OpenSSH (`scripts/test` installs it).

use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use corral_client::workers::WorkerFilter;
use corral_client::{Client, Paging};
use corral_core::{RequestId, RequestState, WorkerId};
use corral_proto::requests::NewRequest;
use corral_proto::users::NewUser;
use corral_proto::workers::{AdminState, StateChange};
use corral_testkit::{CorralServer, Process, TempDir};
use serde_json::Value;

/// How long the server waits for heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timers {
    /// The server's defaults (30 s session timeout).
    Default,
    /// A 3 s session timeout with 1 s heartbeats.
    Short,
}

impl Timers {
    pub fn session_timeout(self) -> Duration {
        match self {
            Timers::Default => Duration::from_secs(30),
            Timers::Short => Duration::from_secs(3),
        }
    }
}

/// A lab user made for one test: `useradd -m`, with the password field `*`
/// (not locked, no password) so that sshd without PAM lets it log in with
/// a key. Removed with its home on drop (a system account, which no crate
/// guards for us, unlike processes and directories).
pub struct LabUser {
    pub name: String,
    pub uid: u32,
    pub home: PathBuf,
}

impl LabUser {
    fn create() -> LabUser {
        let name = format!("corral-lab-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        run("useradd", Command::new("useradd").args(["-m", "-s", "/bin/sh", &name]));
        // From here on, dropping `user` removes it again.
        let mut user = LabUser { name: name.clone(), uid: 0, home: PathBuf::new() };
        run("usermod", Command::new("usermod").args(["-p", "*", &name]));
        let entry = nix::unistd::User::from_name(&name).unwrap().unwrap_or_else(|| panic!("user {name} exists"));
        user.uid = entry.uid.as_raw();
        user.home = entry.dir;
        user
    }

    /// The file the agent manages for the user (the default).
    pub fn authorized_keys(&self) -> PathBuf {
        Path::new(KEYS_DIR).join(&self.name)
    }

    /// The user's own `~/.ssh/authorized_keys`, which sshd must not read.
    pub fn own_authorized_keys(&self) -> PathBuf {
        self.home.join(".ssh").join("authorized_keys")
    }
}

/// The agent's default directory of managed key files.
pub const KEYS_DIR: &str = "/etc/corral/authorized_keys";

impl Drop for LabUser {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.authorized_keys());
        // A login's processes may outlive the killed sshd for a moment, and
        // userdel refuses a user that has processes: wait a little, then
        // force it.
        for attempt in 0..20 {
            let force = attempt == 19;
            let mut userdel = Command::new("userdel");
            userdel.arg("-r");
            if force {
                userdel.arg("-f");
            }
            match userdel.arg(&self.name).output() {
                Ok(out) if out.status.success() || out.status.code() == Some(6) => return,
                Ok(out) if force => eprintln!("userdel -r -f {}: {}", self.name, String::from_utf8_lossy(&out.stderr)),
                Ok(_) => std::thread::sleep(Duration::from_millis(100)),
                Err(err) => return eprintln!("userdel {}: {err}", self.name),
            }
        }
    }
}

/// `corral serve` with the lab's `server.toml` in `dir`, on `database_url`,
/// listening on `listen` (`127.0.0.1:0`: a port the kernel picks); ready
/// when this returns.
async fn serve(dir: &Path, database_url: &str, listen: &str) -> CorralServer {
    let mut command = Command::new(env!("CARGO_BIN_EXE_corral"));
    command
        .arg("serve")
        .arg("--config")
        .arg(dir.join("server.toml"))
        .args(["--listen", listen, "--data-dir"])
        .arg(dir)
        .args(["--database-url", database_url])
        .env_remove("CORRAL_DATABASE_URL")
        .env("RUST_LOG", "info,corral_actors=debug,actix_server=warn,actix_web=warn");
    let start = Duration::from_secs(60);
    let mut server = CorralServer::start(&mut command, None, start).await.expect("corral serve starts");
    server.wait_ready(start).await.expect("corral serve gets ready");
    server
}

fn run(what: &str, command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sshd_binary() -> PathBuf {
    ["/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("OpenSSH sshd is not installed (scripts/test installs openssh-server)")
}

/// The whole lab. Fields drop in order: processes first (each printing its
/// output when the test failed), then the user, then the directory.
pub struct Lab {
    /// `corral serve`; `None` while it is killed.
    server: Option<CorralServer>,
    /// `corral agent --config`; `None` while it is killed.
    agent: Option<Process>,
    /// Killed with the lab (read by nothing else).
    _sshd: Process,
    pub user: LabUser,
    pub dir: TempDir,
    pub timers: Timers,
    pub sshd_port: u16,
    /// `TYPE BASE64` of the sshd's host key.
    pub host_key: String,
    /// The address the server printed at its first start, where a restart
    /// comes back (agent and tunnels expect it there).
    server_listen: String,
    pub database_url: String,
    pub tunnel_ports: std::ops::RangeInclusive<u16>,
    pub admin: Client,
    /// A plain user's client.
    pub tess: Client,
    pub worker: String,
}

impl Lab {
    /// Starts everything; `before_agent` may touch the lab user's files
    /// before the agent first sees them. The worker is set idle and is
    /// idle when this returns.
    pub async fn start(timers: Timers, before_agent: impl FnOnce(&LabUser)) -> Lab {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the SSH tests need root: they add a lab user and run sshd (as CI does)"
        );
        let dir = corral_testkit::temp_dir("ssh");
        let user = LabUser::create();
        before_agent(&user);

        let (sshd, sshd_port, host_key) = start_sshd(dir.path(), &user).await;

        // Tunnel ports of their own, so that a refused connection after a
        // close cannot be another test's tunnel.
        let first = 21000 + (uuid::Uuid::new_v4().as_u128() % 400) as u16 * 20;
        let tunnel_ports = first..=first + 19;
        let mut server_toml = format!("tunnel_ports = \"{first}-{}\"\n", first + 19);
        if timers == Timers::Short {
            server_toml.push_str("session_timeout = \"3s\"\nheartbeat_interval = \"1s\"\n");
        }
        std::fs::write(dir.path().join("server.toml"), server_toml).unwrap();
        let database_url = corral_testkit::test_database().await.url;
        let server = serve(dir.path(), &database_url, "127.0.0.1:0").await;
        let base = server.url().to_string();
        let admin_token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap().trim().to_string();
        let admin = Client::plain(&base, Some(&admin_token)).unwrap();
        let created = admin.create_user(&NewUser { name: "tess".into(), ..Default::default() }).await.unwrap();
        let tess = Client::plain(&base, Some(&created.token)).unwrap();
        let mut lab = Lab {
            // The first start's port, the kernel's pick, is kept for
            // restarts: binding it again is a plain restart, as on a
            // configured port.
            server_listen: server.listen(),
            server: Some(server),
            agent: None,
            _sshd: sshd,
            user,
            timers,
            sshd_port,
            host_key,
            database_url,
            tunnel_ports,
            admin,
            tess,
            worker: String::new(),
            dir,
        };

        // The agent: no uuid in its file, so it writes one back.
        let hooks_log = lab.path("hooks.log");
        let agent_toml = format!(
            r#"# The agent of the SSH test lab.
server = "{base}"
token_file = "agent.token"
name = "ssh-lab"

[[worker]]
caps = {{ device_type = "board" }}
ssh_addr = "127.0.0.1:{sshd_port}"
user = "{user}"
sshd_config = "{sshd_config}"
sshd_check = "refuse"
reset_account = true

[worker.hooks]
prepare = 'echo "$CORRAL_ACTION $CORRAL_WORKER $CORRAL_USER $CORRAL_SSH_ADDR" >> {hooks_log}'
interrogate = 'printf "{{\"battery\": 90}}"'
"#,
            user = lab.user.name,
            hooks_log = hooks_log.display(),
            sshd_config = lab.path("sshd_config").display(),
        );
        std::fs::write(lab.path("agent.toml"), &agent_toml).unwrap();
        lab.start_agent();
        let worker = corral_testkit::wait_until("the agent registers its worker", Duration::from_secs(30), || async {
            let listing = lab.admin.workers(&WorkerFilter::default(), &Paging::default()).await.ok()?;
            (listing.items.len() == 1).then(|| listing.items[0].clone())
        })
        .await;
        lab.worker = worker.uuid.to_string();
        assert_eq!(worker.state, corral_core::WorkerState::Maintenance, "{worker:?}");
        assert_eq!(worker.ssh_addr, format!("127.0.0.1:{sshd_port}"));
        assert_eq!(worker.agent, "ssh-lab");

        let written = std::fs::read_to_string(lab.path("agent.toml")).unwrap();
        let parsed: toml::Table = toml::from_str(&written).unwrap();
        assert_eq!(
            parsed["worker"][0]["uuid"].as_str(),
            Some(lab.worker.as_str()),
            "the generated uuid is written back:\n{written}"
        );
        assert!(written.starts_with("# The agent of the SSH test lab.\n"), "the rest of the file is kept:\n{written}");

        let change = StateChange { state: AdminState::Idle, reason: None, drain: false };
        lab.admin.set_worker_state(worker.uuid, &change).await.unwrap();
        lab.wait_worker("idle", Duration::from_secs(30)).await;
        lab
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `corral serve` again, on the same address, and waits until
    /// it is ready.
    pub async fn start_server(&mut self) {
        assert!(self.server.is_none(), "the server is running already");
        let server = serve(self.dir.path(), &self.database_url, &self.server_listen).await;
        assert_eq!(server.listen(), self.server_listen, "the same address");
        self.server = Some(server);
    }

    /// `kill -9` of the server.
    pub fn kill_server(&mut self) {
        self.server.take().expect("the server runs").kill();
    }

    /// Starts `corral agent --config` (again).
    pub fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "the agent is running already");
        let mut command = Command::new(env!("CARGO_BIN_EXE_corral"));
        command
            .arg("agent")
            .arg("--config")
            .arg(self.path("agent.toml"))
            .env_remove("CORRAL_URL")
            .env("RUST_LOG", "info,corral_agent=debug");
        self.agent = Some(Process::spawn("corral agent", &mut command, None).expect("corral agent starts"));
    }

    /// `kill -9` of the agent.
    pub fn kill_agent(&mut self) {
        self.agent.take().expect("the agent runs").kill();
    }

    /// The worker's UUID.
    pub fn worker_id(&self) -> WorkerId {
        self.worker.parse().unwrap()
    }

    /// The worker as the server shows it, as JSON.
    pub async fn worker_json(&self) -> Value {
        let worker = self.admin.worker(self.worker_id()).await.unwrap();
        serde_json::to_value(worker).unwrap()
    }

    pub async fn wait_worker(&self, state: &str, timeout: Duration) -> Value {
        corral_testkit::wait_until(&format!("the worker is {state}"), timeout, || async {
            let worker = self.worker_json().await;
            (worker["state"] == state).then_some(worker)
        })
        .await
    }

    pub async fn wait_request(&self, id: i64, state: &str, timeout: Duration) -> Value {
        corral_testkit::wait_until(&format!("request {id} is {state}"), timeout, || async {
            let request = serde_json::to_value(self.tess.request(RequestId(id)).await.ok()?).unwrap();
            (request["state"] == state).then_some(request)
        })
        .await
    }

    /// Submits a request for the board (with `public_key`, if given) and
    /// acquires it, waiting for the lease to start.
    pub async fn lease(&self, public_key: Option<&str>) -> (i64, Value) {
        let body = NewRequest {
            caps: [("device_type".to_string(), "board".to_string())].into_iter().collect(),
            ssh_public_key: public_key.map(str::to_string),
            ..Default::default()
        };
        let request = self.tess.submit(&body).await.unwrap();
        let access = self.tess.acquire(request.id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(access.worker, self.worker_id(), "{access:?}");
        assert_eq!(access.username, self.user.name, "{access:?}");
        assert_eq!(access.host, "127.0.0.1", "{access:?}");
        assert!(self.tunnel_ports.contains(&access.port), "tunnel port {} from the configured range", access.port);
        assert_eq!(access.host_key.as_deref(), Some(self.host_key.as_str()), "the pinned key is sshd's: {access:?}");
        (request.id.0, serde_json::to_value(access).unwrap())
    }

    pub async fn close(&self, id: i64) {
        let closed = self.tess.close_request(RequestId(id)).await.unwrap();
        assert_eq!(closed.state, RequestState::Done, "{closed:?}");
    }

    /// The lease lines of the lab user's managed key file.
    pub fn lease_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.user.authorized_keys())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("corral-lease"))
            .map(str::to_string)
            .collect()
    }

    /// Writes an access's private key to a file ssh accepts (0600).
    pub fn key_file(&self, name: &str, pem: &str) -> PathBuf {
        let path = self.path(name);
        let mut text = pem.to_string();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        write_private(&path, text.as_bytes());
        path
    }

    /// `ssh ... USER@127.0.0.1 echo hello` on `port`, pinning the host
    /// key: whether it printed hello, and what ssh said otherwise.
    pub async fn ssh_hello(&self, port: u16, key: &Path) -> Result<(), String> {
        match self.ssh_run(port, key, "echo hello").await {
            Ok(out) if out.trim() == "hello" => Ok(()),
            Ok(out) => Err(format!("ssh printed {out:?}")),
            Err(err) => Err(err),
        }
    }

    /// `ssh ... USER@127.0.0.1 COMMAND` on `port`, pinning the host key:
    /// what the command printed, or what ssh said when it failed.
    pub async fn ssh_run(&self, port: u16, key: &Path, command: &str) -> Result<String, String> {
        let known = self.path(&format!("known_hosts-{port}"));
        std::fs::write(&known, format!("[127.0.0.1]:{port} {}\n", self.host_key)).unwrap();
        let ssh = tokio::process::Command::new("ssh")
            .args(["-F", "/dev/null", "-p", &port.to_string(), "-i"])
            .arg(key)
            .args(["-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes", "-o"])
            .arg(format!("UserKnownHostsFile={}", known.display()))
            .args(["-o", "GlobalKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"])
            .arg(format!("{}@127.0.0.1", self.user.name))
            .arg(command)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = match tokio::time::timeout(Duration::from_secs(30), ssh).await {
            Ok(Ok(out)) => out,
            Ok(Err(err)) => return Err(format!("cannot run ssh: {err}")),
            Err(_) => return Err("ssh did not finish in 30 s".to_string()),
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.success() {
            Ok(stdout.into_owned())
        } else {
            Err(format!("ssh {}: {stdout}{}", out.status, String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// Whether a TCP connection to `port` is refused (nothing listens).
    pub async fn refused(port: u16) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(("127.0.0.1", port))).await,
            Ok(Err(_))
        )
    }
}

fn write_private(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).unwrap();
    file.write_all(bytes).unwrap();
}

/// Starts sshd on a loopback port with a fresh host key; answers sshd, the
/// port and the host key.
///
/// sshd refuses `Port 0`, so its port is [`corral_testkit::racy_free_port`]:
/// when another process took it meanwhile, sshd says it cannot bind and
/// exits, and it is started again on another port.
async fn start_sshd(dir: &Path, user: &LabUser) -> (Process, u16, String) {
    std::fs::create_dir_all("/run/sshd").unwrap();
    let host_key = dir.join("ssh_host_ed25519_key");
    run(
        "ssh-keygen",
        Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "", "-f"]).arg(&host_key),
    );
    let public = std::fs::read_to_string(host_key.with_extension("pub")).unwrap();
    let public = public.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    let config = dir.join("sshd_config");
    for attempt in 1..=5 {
        let port = corral_testkit::racy_free_port();
        write_sshd_config(&config, port, &host_key, dir, user);
        let mut command = Command::new(sshd_binary());
        command.args(["-D", "-e", "-f"]).arg(&config);
        let sshd = Process::spawn("sshd", &mut command, None).expect("sshd starts");
        let listening = sshd
            .wait_for_line("that it listens, or cannot bind", Duration::from_secs(10), |line| {
                if line.contains(&format!("Server listening on 127.0.0.1 port {port}")) {
                    Some(true)
                } else {
                    line.contains("Cannot bind any address").then_some(false)
                }
            })
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        if listening {
            return (sshd, port, public);
        }
        eprintln!("sshd could not bind port {port} (attempt {attempt}); trying another");
    }
    panic!("sshd could not bind a port in 5 attempts");
}

/// Writes the lab's sshd_config for `port`, keeping only settings this
/// sshd accepts.
fn write_sshd_config(config: &Path, port: u16, host_key: &Path, dir: &Path, user: &LabUser) {
    let settings = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {key}\nPidFile {pid}\nUsePAM no\n\
         PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
         AuthorizedKeysFile .ssh/authorized_keys\nStrictModes yes\nAllowUsers {user}\nLogLevel VERBOSE\n",
        key = host_key.display(),
        pid = dir.join("sshd.pid").display(),
        user = user.name,
    );
    // Newer OpenSSH (9.8+) penalises addresses whose connections fail to
    // authenticate; the tests fail logins on purpose. Older versions do not
    // know the setting, so keep it only if sshd accepts it.
    // Lease keys come only from the agent's root-owned file (the lines the
    // agent's documentation gives); the user's own file is not read.
    let lab_users = format!("Match User {}\n    AuthorizedKeysFile {KEYS_DIR}/%u\n", user.name);
    std::fs::write(config, format!("{settings}PerSourcePenalties no\n{lab_users}")).unwrap();
    let sshd = sshd_binary();
    if !Command::new(&sshd).arg("-t").arg("-f").arg(config).output().unwrap().status.success() {
        std::fs::write(config, format!("{settings}{lab_users}")).unwrap();
        run("sshd -t", Command::new(&sshd).arg("-t").arg("-f").arg(config));
    }
}

/// Writes foreign lines (an admin's) into the user's managed key file,
/// root-owned in a root-owned directory, as an admin would have them.
pub fn write_foreign_keys(user: &LabUser, content: &[u8]) {
    std::fs::create_dir_all(KEYS_DIR).unwrap();
    std::fs::write(user.authorized_keys(), content).unwrap();
    std::fs::set_permissions(user.authorized_keys(), std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// Checks the ownership and modes sshd's StrictModes wants and the lab
/// user cannot get around: root owns the file and its directory, and only
/// root may write them.
pub fn assert_strict_modes(user: &LabUser) {
    let dir = std::fs::metadata(KEYS_DIR).unwrap();
    assert_eq!((dir.uid(), dir.mode() & 0o022), (0, 0), "{KEYS_DIR} is root's alone");
    let keys = std::fs::metadata(user.authorized_keys()).unwrap();
    assert_eq!((keys.uid(), keys.mode() & 0o777), (0, 0o644), "key file owner and mode");
}

/// A generated key pair of `kind` (`ed25519`, `ecdsa` ...): (private key
/// file, public key line).
pub fn own_key_pair(dir: &Path, name: &str, kind: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    run(
        "ssh-keygen",
        Command::new("ssh-keygen").args(["-q", "-t", kind, "-N", "", "-C", "me@laptop", "-f"]).arg(&path),
    );
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap().trim().to_string();
    (path, public)
}
