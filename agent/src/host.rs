//! A real hardware host: the [`Backend`] of `corral agent --config FILE`.
//!
//! For each configured worker it manages the lease lines of the lab user's
//! key file ([`authorized_keys`]; a root-owned file that sshd must read as
//! the lab user's only `AuthorizedKeysFile`, checked at start with
//! `sshd -T`, see [`check_sshd`]), reads the SSH host key of the
//! worker's `ssh_addr` with `ssh-keyscan` (at registration and at each lease
//! start, so clients can pin it), and runs the worker's hooks:
//!
//! | command | what the host does |
//! |---|---|
//! | prepare | removes every lease line of the worker, resets the lab account (`reset_account`), then runs `prepare` |
//! | start_lease | adds the lease's one line (idempotent), answers the host key |
//! | extend_lease | renews the `expiry-time` of the lease's line, if it is still there |
//! | revoke | removes the lease's line |
//! | maintenance | removes every lease line of the worker, then runs `maintenance` |
//! | health_check, power_cycle | runs `healthcheck`, `power_cycle` |
//!
//! A missing hook counts as success. Hooks run as `sh -c COMMAND` in their
//! own process group with `CORRAL_WORKER`, `CORRAL_USER`, `CORRAL_SSH_ADDR`
//! and `CORRAL_ACTION` set, and are killed (the whole group) when their
//! timeout passes. The end of their output goes into the command result.
//!
//! Observed facts come from the `interrogate` hook. Heartbeats must not
//! wait for a slow hook, so a heartbeat starts a new run when none is under
//! way, waits briefly for it, and otherwise sends the facts of the last run.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use corral_core::{RequestId, WorkerId};
use corral_proto::agent::{Action, WorkerRegistration};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Notify;

use crate::backend::{Backend, Outcome};
use crate::config::{AgentConfig, HookKind, SshAddr, SshdCheck, WorkerConfig};
use crate::report::chain;

/// A host key read this recently is registered without reading it again.
const REGISTRATION_KEY_MAX_AGE: Duration = Duration::from_secs(60);
/// How long a heartbeat waits for an `interrogate` run it started.
const OBSERVE_WAIT: Duration = Duration::from_secs(1);
/// `ssh-keyscan -T` (seconds), and the bound of the whole scan.
const KEYSCAN_TIMEOUT_SECS: u64 = 5;
/// Most hook output kept (per stream).
const OUTPUT_CAP: usize = 1024 * 1024;
/// Characters of hook output put into a command result.
const MESSAGE_TAIL: usize = 2000;
/// How long to read the output of a hook that exited, when something it
/// started in the background keeps the pipes open.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Why [`Host::new`] refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("worker {worker}: refusing to start (sshd_check = \"refuse\")")]
    SshdUnsafe {
        worker: WorkerId,
        #[source]
        source: SshdError,
    },
}

/// A lab user that could not be looked up (not: one that does not exist).
#[derive(Debug, thiserror::Error)]
#[error("cannot look up the lab user {user}")]
pub struct UserLookupError {
    pub user: String,
    #[source]
    pub source: nix::Error,
}

/// The lab user `name`; `None` when it does not exist.
fn lab_user(name: &str) -> Result<Option<nix::unistd::User>, UserLookupError> {
    nix::unistd::User::from_name(name).map_err(|source| UserLookupError { user: name.to_string(), source })
}

/// Why the lease lines of a worker could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error(transparent)]
    User(#[from] UserLookupError),
    #[error("cannot update {}", path.display())]
    Edit {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the edit of {} did not finish", path.display())]
    Panicked {
        path: PathBuf,
        #[source]
        source: tokio::task::JoinError,
    },
}

/// Why the SSH host key of an address could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyscanError {
    #[error("ssh-keyscan did not finish within {} s", KEYSCAN_TIMEOUT_SECS * 2)]
    TimedOut,
    #[error("cannot run ssh-keyscan")]
    Spawn(#[source] std::io::Error),
    /// `stderr`: the end of what ssh-keyscan said.
    #[error("no host key offered{}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    NoKey { stderr: String },
}

/// Why sshd may let a lease holder keep access, or why that could not be
/// checked ([`check_sshd`]).
#[derive(Debug, thiserror::Error)]
pub enum SshdError {
    #[error("lease keys cannot be kept in {}", path.display())]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "sshd is not installed here; cannot check which files it reads (sshd_check = \"off\" if it runs elsewhere)"
    )]
    NotInstalled,
    #[error(transparent)]
    User(#[from] UserLookupError),
    #[error("cannot run {sshd} -T")]
    Spawn {
        sshd: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{sshd} -T failed: {stderr}")]
    Failed { sshd: &'static str, stderr: String },
    #[error(
        "sshd reads the keys of {user} from [{read}]{command}, so a key the lease holder adds outlives the lease; \
         sshd_config needs `Match User {user}` with `AuthorizedKeysFile {wanted}` alone (and no \
         AuthorizedKeysCommand)",
        read = read.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
        command = if *keys_command { " and an AuthorizedKeysCommand" } else { "" },
        wanted = wanted.display(),
    )]
    OtherKeyFiles { user: String, read: Vec<PathBuf>, keys_command: bool, wanted: PathBuf },
}

/// Why the lab account could not be reset (`reset_account = true`).
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    #[error(transparent)]
    User(#[from] UserLookupError),
    #[error("refusing to reset {user}: its home {} is not a plain path like /home/USER", home.display())]
    HomeNotPlain { user: String, home: PathBuf },
    /// `failure`: how the reset script ended, with the end of its output.
    #[error("resetting the account {user} {failure}")]
    Failed { user: String, failure: String },
}

/// The host side of `corral agent --config`.
pub struct Host {
    name: String,
    workers: Vec<Rc<HostWorker>>,
    /// Last host key read per SSH address, and when: used when a new read
    /// fails, and at registrations soon after a read.
    host_keys: RefCell<HashMap<SshAddr, (String, Instant)>>,
    /// One edit of an `authorized_keys` file at a time (workers may share
    /// a lab user).
    key_edits: tokio::sync::Mutex<()>,
}

struct HostWorker {
    config: WorkerConfig,
    interrogation: Interrogation,
}

/// The `interrogate` runs of one worker.
#[derive(Default)]
struct Interrogation {
    facts: RefCell<Map<String, Value>>,
    running: Cell<bool>,
    finished: Notify,
}

impl Host {
    /// The host of `config`'s workers. Warns about lab users that do not
    /// exist (yet: a `prepare` hook may create them), and checks that sshd
    /// reads lease keys only from the file the agent manages
    /// ([`check_sshd`]): a problem is logged, or refused with
    /// `sshd_check = "refuse"`.
    pub fn new(config: &AgentConfig) -> Result<Host, StartError> {
        for worker in &config.workers {
            match lab_user(&worker.user) {
                Ok(Some(_)) => {}
                Ok(None) => tracing::warn!(worker = %worker.uuid, user = %worker.user, "the lab user does not exist"),
                Err(err) => tracing::warn!(worker = %worker.uuid, cause = %chain(&err), "cannot check the lab user"),
            }
            if worker.sshd_check == SshdCheck::Off {
                continue;
            }
            if let Err(problem) = check_sshd(worker) {
                if worker.sshd_check == SshdCheck::Refuse {
                    return Err(StartError::SshdUnsafe { worker: worker.uuid, source: problem });
                }
                let problem = chain(&problem);
                tracing::error!(worker = %worker.uuid, user = %worker.user, "LEASE HOLDERS MAY KEEP ACCESS: {problem}");
            }
        }
        Ok(Host {
            name: config.name.clone(),
            workers: config
                .workers
                .iter()
                .map(|w| Rc::new(HostWorker { config: w.clone(), interrogation: Interrogation::default() }))
                .collect(),
            host_keys: RefCell::new(HashMap::new()),
            key_edits: tokio::sync::Mutex::new(()),
        })
    }

    fn worker(&self, uuid: WorkerId) -> Option<&Rc<HostWorker>> {
        self.workers.iter().find(|w| w.config.uuid == uuid)
    }

    /// The host key of `addr` read now, or the last one read if that fails.
    async fn host_key(&self, addr: &SshAddr) -> Result<String, KeyscanError> {
        match scan_host_key(addr).await {
            Ok(key) => {
                self.host_keys.borrow_mut().insert(addr.clone(), (key.clone(), Instant::now()));
                Ok(key)
            }
            Err(err) => match self.host_keys.borrow().get(addr) {
                Some((key, _)) => {
                    let what = "cannot read the host key now; using the last one read";
                    tracing::warn!(ssh_addr = %addr, cause = %chain(&err), "{what}");
                    Ok(key.clone())
                }
                None => Err(err),
            },
        }
    }

    /// Applies `edit` to the worker's `authorized_keys` and answers its
    /// path; `None` when the lab user does not exist (so it has no keys).
    async fn edit_keys(
        &self,
        worker: &WorkerConfig,
        edit: impl FnOnce(&[u8]) -> Option<Vec<u8>> + Send + 'static,
    ) -> Result<Option<PathBuf>, KeyFileError> {
        let _one_at_a_time = self.key_edits.lock().await;
        let (user, path) = (worker.user.clone(), worker.authorized_keys.clone());
        let work = move || {
            if lab_user(&user)?.is_none() {
                return Ok(None);
            }
            authorized_keys::edit(&path, edit).map_err(|source| KeyFileError::Edit { path: path.clone(), source })?;
            Ok(Some(path))
        };
        let path = worker.authorized_keys.clone();
        tokio::task::spawn_blocking(work).await.map_err(|source| KeyFileError::Panicked { path, source })?
    }

    /// Removes the worker's lease lines (of `request` only, if given).
    async fn remove_keys(&self, worker: &WorkerConfig, request: Option<RequestId>) -> Result<(), KeyFileError> {
        let uuid = worker.uuid;
        self.edit_keys(worker, move |content| authorized_keys::without_leases(content, uuid, request)).await.map(drop)
    }

    async fn start_lease(
        &self,
        worker: &WorkerConfig,
        request: RequestId,
        public_key: &str,
        expires_at: SystemTime,
    ) -> Outcome {
        let line = match authorized_keys::lease_line(public_key, request, worker.uuid, expires_at) {
            Ok(line) => line,
            Err(err) => return Outcome::failed(format!("the lease's public key is unusable: {err}")),
        };
        let host_key = match self.host_key(&worker.ssh_addr).await {
            Ok(key) => key,
            Err(err) => {
                return Outcome::failed(format!(
                    "cannot read the SSH host key of {}: {}",
                    worker.ssh_addr,
                    chain(&err)
                ));
            }
        };
        let uuid = worker.uuid;
        match self.edit_keys(worker, move |content| authorized_keys::with_lease(content, &line, request, uuid)).await {
            Ok(Some(path)) => Outcome {
                ok: true,
                message: format!("key of request {request} installed in {}", path.display()),
                host_key: Some(host_key),
                lost: false,
            },
            Ok(None) => Outcome::failed(format!("the lab user {} does not exist", worker.user)),
            Err(err) => Outcome::failed(chain(&err)),
        }
    }
}

impl Backend for Host {
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn workers(&self) -> Vec<WorkerRegistration> {
        // Read the host keys of all addresses at once.
        let mut addrs: Vec<SshAddr> = self.workers.iter().map(|w| w.config.ssh_addr.clone()).collect();
        let mut seen = std::collections::HashSet::new();
        addrs.retain(|addr| seen.insert(addr.clone()));
        // An agent retrying to open a session need not read them every time.
        addrs.retain(|addr| {
            self.host_keys.borrow().get(addr).is_none_or(|(_, read)| read.elapsed() > REGISTRATION_KEY_MAX_AGE)
        });
        let scans: Vec<_> =
            addrs.into_iter().map(|addr| actix_rt::spawn(async move { (scan_host_key(&addr).await, addr) })).collect();
        for scan in scans {
            match scan.await {
                Ok((Ok(key), addr)) => {
                    self.host_keys.borrow_mut().insert(addr, (key, Instant::now()));
                }
                Ok((Err(err), addr)) => {
                    tracing::warn!(ssh_addr = %addr, cause = %chain(&err), "cannot read the host key");
                }
                Err(err) => tracing::warn!(cause = %err, "host key scan panicked"),
            }
        }
        let keys = self.host_keys.borrow();
        self.workers
            .iter()
            .map(|w| WorkerRegistration {
                uuid: w.config.uuid,
                caps: w.config.caps.clone(),
                groups: w.config.groups.clone(),
                ssh_addr: w.config.ssh_addr.to_string(),
                user: w.config.user.clone(),
                host_key: keys.get(&w.config.ssh_addr).map(|(key, _)| key.clone()),
                hooks: Some(
                    HookKind::ALL
                        .into_iter()
                        .filter(|kind| w.config.hooks.get(*kind).is_some())
                        .map(|kind| kind.name().to_string())
                        .collect(),
                ),
            })
            .collect()
    }

    async fn execute(&self, worker: WorkerId, action: &Action) -> Outcome {
        let Some(worker) = self.worker(worker) else {
            return Outcome::failed(format!("worker {worker} is not in this agent's configuration"));
        };
        let config = &worker.config;
        match action {
            Action::Prepare => match self.remove_keys(config, None).await {
                Ok(()) => match reset_account(config).await {
                    Ok(()) => run_hook_for(config, HookKind::Prepare).await,
                    Err(err) => Outcome::failed(chain(&err)),
                },
                Err(err) => Outcome::failed(chain(&err)),
            },
            Action::StartLease { request, public_key, expires_at } => {
                self.start_lease(config, *request, public_key, *expires_at).await
            }
            Action::ExtendLease { request, expires_at } => {
                let (request, expires_at, uuid) = (*request, *expires_at, config.uuid);
                let extend = move |content: &[u8]| authorized_keys::with_expiry(content, request, uuid, expires_at);
                match self.edit_keys(config, extend).await {
                    Ok(_) => Outcome::ok(),
                    Err(err) => Outcome::failed(chain(&err)),
                }
            }
            Action::Revoke { request } => match self.remove_keys(config, Some(*request)).await {
                Ok(()) => Outcome::ok(),
                Err(err) => Outcome::failed(chain(&err)),
            },
            // A worker in maintenance has no lease: no key of ours may stay.
            Action::Maintenance => match self.remove_keys(config, None).await {
                Ok(()) => run_hook_for(config, HookKind::Maintenance).await,
                Err(err) => Outcome::failed(chain(&err)),
            },
            Action::HealthCheck => run_hook_for(config, HookKind::HealthCheck).await,
            Action::PowerCycle => run_hook_for(config, HookKind::PowerCycle).await,
        }
    }

    async fn observe(&self, worker: WorkerId) -> Map<String, Value> {
        let Some(worker) = self.worker(worker) else { return Map::new() };
        if worker.config.hooks.get(HookKind::Interrogate).is_none() {
            return Map::new();
        }
        let state = &worker.interrogation;
        if state.running.get() {
            // The last run is slow: do not hold the heartbeat up.
            return state.facts.borrow().clone();
        }
        state.running.set(true);
        let finished = state.finished.notified();
        tokio::pin!(finished);
        finished.as_mut().enable();
        let running = worker.clone();
        actix_rt::spawn(async move {
            let facts = interrogate(&running.config).await;
            let state = &running.interrogation;
            *state.facts.borrow_mut() = facts;
            state.running.set(false);
            state.finished.notify_waiters();
        });
        let _ = tokio::time::timeout(OBSERVE_WAIT, finished).await;
        state.facts.borrow().clone()
    }
}

/// Runs the `interrogate` hook; anything but a JSON object on stdout and a
/// zero exit is reported as `{"healthy": false, "error": "interrogate: ..."}`.
async fn interrogate(worker: &WorkerConfig) -> Map<String, Value> {
    let Some((command, timeout)) = worker.hooks.get(HookKind::Interrogate) else { return Map::new() };
    let run = run_hook(command, &hook_env(worker, HookKind::Interrogate), timeout).await;
    let unhealthy = |error: String| {
        let mut facts = Map::new();
        facts.insert("healthy".to_string(), Value::Bool(false));
        facts.insert("error".to_string(), Value::String(format!("interrogate: {error}")));
        facts
    };
    if !run.succeeded() {
        return unhealthy(run.failure());
    }
    match serde_json::from_slice::<Value>(&run.stdout) {
        Ok(Value::Object(facts)) => facts,
        Ok(other) => unhealthy(format!("printed {}, not a JSON object", kind_of(&other))),
        Err(err) => unhealthy(format!("output is not JSON ({err}): {}", tail(&run.stdout, 200))),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn hook_env(worker: &WorkerConfig, kind: HookKind) -> Vec<(&'static str, String)> {
    vec![
        ("CORRAL_WORKER", worker.uuid.to_string()),
        ("CORRAL_USER", worker.user.clone()),
        ("CORRAL_SSH_ADDR", worker.ssh_addr.to_string()),
        ("CORRAL_ACTION", kind.name().to_string()),
    ]
}

/// Runs the worker's hook of `kind` (none: success) and turns the run into
/// an outcome.
async fn run_hook_for(worker: &WorkerConfig, kind: HookKind) -> Outcome {
    let Some((command, timeout)) = worker.hooks.get(kind) else { return Outcome::ok() };
    let run = run_hook(command, &hook_env(worker, kind), timeout).await;
    if run.succeeded() {
        let output = if run.stdout.is_empty() { &run.stderr } else { &run.stdout };
        Outcome { ok: true, message: tail(output, MESSAGE_TAIL), host_key: None, lost: false }
    } else {
        Outcome::failed(format!("{} hook {}", kind.name(), run.failure()))
    }
}

/// How a hook ended.
#[derive(Debug)]
pub enum HookEnd {
    Exited(ExitStatus),
    TimedOut(Duration),
    /// It could not be started or waited for.
    Error(std::io::Error),
}

/// One run of a hook.
#[derive(Debug)]
pub struct HookRun {
    pub end: HookEnd,
    /// The first [`OUTPUT_CAP`] bytes of each stream.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl HookRun {
    pub fn succeeded(&self) -> bool {
        matches!(&self.end, HookEnd::Exited(status) if status.success())
    }

    /// What went wrong, with the end of its output.
    fn failure(&self) -> String {
        let what = match &self.end {
            HookEnd::Exited(status) => match status.code() {
                Some(code) => format!("exited with status {code}"),
                None => format!("was killed ({status})"),
            },
            HookEnd::TimedOut(after) => format!("timed out after {}", humantime::format_duration(*after)),
            HookEnd::Error(err) => format!("could not run: {}", chain(err)),
        };
        let output = if self.stderr.iter().all(u8::is_ascii_whitespace) { &self.stdout } else { &self.stderr };
        match tail(output, MESSAGE_TAIL) {
            text if text.is_empty() => what,
            text => format!("{what}: {text}"),
        }
    }
}

/// Runs `sh -c command` with `env` in a new process group; kills the group
/// when `timeout` passes.
pub async fn run_hook(command: &str, env: &[(&'static str, String)], timeout: Duration) -> HookRun {
    let mut child = match tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(err) => return HookRun { end: HookEnd::Error(err), stdout: Vec::new(), stderr: Vec::new() },
    };
    let pid = child.id();
    let stdout = Rc::new(RefCell::new(Vec::new()));
    let stderr = Rc::new(RefCell::new(Vec::new()));
    let readers = [
        child.stdout.take().map(|pipe| actix_rt::spawn(read_capped(pipe, stdout.clone()))),
        child.stderr.take().map(|pipe| actix_rt::spawn(read_capped(pipe, stderr.clone()))),
    ];
    let end = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => HookEnd::Exited(status),
        Ok(Err(err)) => HookEnd::Error(err),
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            let _ = child.start_kill();
            let _ = child.wait().await;
            HookEnd::TimedOut(timeout)
        }
    };
    for reader in readers.into_iter().flatten() {
        // Something the hook left running may hold the pipe: take what came.
        let abort = reader.abort_handle();
        if tokio::time::timeout(OUTPUT_GRACE, reader).await.is_err() {
            abort.abort();
        }
    }
    let (stdout, stderr) = (stdout.take(), stderr.take());
    HookRun { end, stdout, stderr }
}

/// Reads `pipe` to its end, keeping the first [`OUTPUT_CAP`] bytes.
async fn read_capped(mut pipe: impl AsyncRead + Unpin, into: Rc<RefCell<Vec<u8>>>) {
    let mut buffer = [0u8; 8192];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut kept = into.borrow_mut();
                let room = OUTPUT_CAP.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..n.min(room)]);
            }
        }
    }
}

/// The last `max` characters of `bytes` as text, trimmed.
fn tail(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let count = text.chars().count();
    if count <= max {
        return text.to_string();
    }
    let cut: String = text.chars().skip(count - max).collect();
    format!("…{cut}")
}

/// Reads the SSH host key of `addr` with `ssh-keyscan`, as `TYPE BASE64`:
/// the ed25519 key if the server offers one, else the first key.
pub async fn scan_host_key(addr: &SshAddr) -> Result<String, KeyscanError> {
    let scan = tokio::process::Command::new("ssh-keyscan")
        .args(["-T", &KEYSCAN_TIMEOUT_SECS.to_string(), "-p", &addr.port.to_string(), &addr.host])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(KEYSCAN_TIMEOUT_SECS * 2), scan)
        .await
        .map_err(|_| KeyscanError::TimedOut)?
        .map_err(KeyscanError::Spawn)?;
    pick_host_key(&String::from_utf8_lossy(&output.stdout))
        .ok_or_else(|| KeyscanError::NoKey { stderr: tail(&output.stderr, 300) })
}

/// Where sshd may live.
const SSHD_PATHS: &[&str] = &["/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd"];

/// Checks that lease keys are safe from the lab user: sshd (asked with
/// `sshd -T -C user=USER,...`) reads exactly the worker's managed file as
/// `AuthorizedKeysFile` and no `AuthorizedKeysCommand`, and the file's
/// directory passes the editor's checks (no symbolic link; root-owned and
/// writable by root only when the agent runs as root).
pub fn check_sshd(worker: &WorkerConfig) -> Result<(), SshdError> {
    authorized_keys::check(&worker.authorized_keys)
        .map_err(|source| SshdError::KeyFile { path: worker.authorized_keys.clone(), source })?;
    let sshd = *SSHD_PATHS.iter().find(|p| std::path::Path::new(p).exists()).ok_or(SshdError::NotInstalled)?;
    let (home, uid) = match lab_user(&worker.user)? {
        Some(user) => (user.dir, user.uid.as_raw()),
        // Not yet (a prepare hook may make it): already warned about.
        None => return Ok(()),
    };
    let mut command = std::process::Command::new(sshd);
    command.arg("-T").arg("-C").arg(format!("user={},host=localhost,addr=127.0.0.1", worker.user));
    if let Some(config) = &worker.sshd_config {
        command.arg("-f").arg(config);
    }
    let output = command.stdin(Stdio::null()).output().map_err(|source| SshdError::Spawn { sshd, source })?;
    if !output.status.success() {
        return Err(SshdError::Failed { sshd, stderr: tail(&output.stderr, 300) });
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let read = sshd_key_files(&text, &worker.user, uid, &home);
    let command_set =
        text.lines().filter_map(|line| line.strip_prefix("authorizedkeyscommand ")).any(|value| value.trim() != "none");
    let wanted = worker.authorized_keys.clone();
    if read != [wanted.clone()] || command_set {
        return Err(SshdError::OtherKeyFiles { user: worker.user.clone(), read, keys_command: command_set, wanted });
    }
    Ok(())
}

/// The files sshd reads keys from for `user`, from `sshd -T` output:
/// `%u`, `%U`, `%h`, `%%` and a leading `~/` expanded, relative paths
/// under `home`.
fn sshd_key_files(output: &str, user: &str, uid: u32, home: &std::path::Path) -> Vec<PathBuf> {
    let Some(value) = output.lines().find_map(|line| line.strip_prefix("authorizedkeysfile ")) else {
        // sshd's default.
        return vec![home.join(".ssh/authorized_keys"), home.join(".ssh/authorized_keys2")];
    };
    value
        .split_whitespace()
        .filter(|token| *token != "none")
        .map(|token| {
            let mut path = String::new();
            let mut chars = token.chars();
            while let Some(c) = chars.next() {
                match (c, chars.clone().next()) {
                    ('%', Some(code @ ('u' | 'U' | 'h' | '%'))) => {
                        chars.next();
                        match code {
                            'u' => path.push_str(user),
                            'U' => path.push_str(&uid.to_string()),
                            'h' => path.push_str(&home.to_string_lossy()),
                            _ => path.push('%'),
                        }
                    }
                    (c, _) => path.push(c),
                }
            }
            match path.strip_prefix("~/") {
                Some(rest) => home.join(rest),
                None if path.starts_with('/') => PathBuf::from(path),
                None => home.join(path),
            }
        })
        .collect()
}

/// The script that resets a lab account (`reset_account = true`): the
/// user's processes are killed, and its home is made again from
/// `/etc/skel`, owned by the user, as `useradd -m` makes it. The user name
/// and home come in through the environment, never into the script text.
const RESET_SCRIPT: &str = r#"set -eu
pkill -KILL -u "$CORRAL_USER" || [ "$?" -eq 1 ]
rm -rf --one-file-system -- "$CORRAL_HOME"
mkdir -m 0750 -- "$CORRAL_HOME"
cp -a /etc/skel/. "$CORRAL_HOME"/
chown -R -- "$CORRAL_USER": "$CORRAL_HOME"
"#;

/// How long the account reset may take.
const RESET_TIMEOUT: Duration = Duration::from_secs(120);

/// The environment of [`RESET_SCRIPT`] for `worker`'s lab user with
/// `home`; refuses a home that is not a plain absolute path below `/`.
fn reset_env(worker: &WorkerConfig, home: &std::path::Path) -> Result<Vec<(&'static str, String)>, ResetError> {
    let plain = home.is_absolute()
        && home.components().count() >= 3
        && home.components().all(|c| matches!(c, std::path::Component::RootDir | std::path::Component::Normal(_)));
    let home = home
        .to_str()
        .filter(|_| plain)
        .ok_or_else(|| ResetError::HomeNotPlain { user: worker.user.clone(), home: home.to_path_buf() })?;
    let mut env = hook_env(worker, HookKind::Prepare);
    env.push(("CORRAL_HOME", home.to_string()));
    Ok(env)
}

/// Resets the lab account when the worker asks for it.
async fn reset_account(worker: &WorkerConfig) -> Result<(), ResetError> {
    if !worker.reset_account {
        return Ok(());
    }
    let Some(user) = lab_user(&worker.user)? else { return Ok(()) };
    let run = run_hook(RESET_SCRIPT, &reset_env(worker, &user.dir)?, RESET_TIMEOUT).await;
    if run.succeeded() { Ok(()) } else { Err(ResetError::Failed { user: worker.user.clone(), failure: run.failure() }) }
}

/// Picks the key from `ssh-keyscan` output lines `HOST TYPE BASE64`.
fn pick_host_key(output: &str) -> Option<String> {
    let keys: Vec<(&str, &str)> = output
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_host, kind, key) = (fields.next()?, fields.next()?, fields.next()?);
            Some((kind, key))
        })
        .collect();
    let (kind, key) = keys.iter().find(|(kind, _)| *kind == "ssh-ed25519").or_else(|| keys.first())?;
    Some(format!("{kind} {key}"))
}

/// The lines the agent owns in an `authorized_keys` file, and the file
/// edit that keeps every other line byte for byte.
///
/// A lease line is
/// `restrict,pty,expiry-time="YYYYMMDDHHMMSSZ" TYPE BASE64 corral-lease request=ID worker=UUID`:
/// the public key of the lease (checked by [`corral_core::ssh::PublicKey`],
/// its comment dropped), limited by `restrict` (no port, agent or X11
/// forwarding, no `~/.ssh/rc`) except for a pty so that interactive logins
/// work, and valid until the lease expires even if the agent never gets to
/// remove it. Only lines ending in the marker are ever changed or removed.
///
/// The file is edited through a directory handle: every component of its
/// directory is opened with `O_NOFOLLOW` from `/`, the file is read with
/// `openat(O_NOFOLLOW)`, and the new content is written to a temporary file
/// (`O_CREAT|O_EXCL|O_NOFOLLOW`), synced and `renameat` into place in the
/// same directory. No path is checked first and used later, so nothing
/// swapped in meanwhile redirects a write. Running as root, the agent also
/// refuses a directory that anyone but root can write.
pub mod authorized_keys {
    use std::ffi::OsStr;
    use std::fs::File;
    use std::io::{self, Read, Write};
    use std::os::fd::OwnedFd;
    use std::path::{Component, Path, PathBuf};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use corral_core::ssh::{KeyError, PublicKey};
    use corral_core::{RequestId, WorkerId};
    use nix::errno::Errno;
    use nix::fcntl::{AT_FDCWD, OFlag, openat, renameat};
    use nix::sys::stat::{Mode, fchmod, fstat, mkdirat};
    use nix::unistd::{UnlinkatFlags, unlinkat};

    /// The comment word that marks the agent's lines.
    pub const MARKER: &str = "corral-lease";
    /// The options of every lease line, before its `expiry-time`.
    pub const OPTIONS: &str = "restrict,pty";
    /// Mode of the key file: sshd reads it with the lab user's rights.
    const FILE_MODE: u32 = 0o644;
    /// Mode of a directory the agent creates on the way to the key file.
    const DIR_MODE: u32 = 0o755;

    /// The line for `public_key` (`TYPE BASE64 [COMMENT]`; the comment is
    /// dropped) of `request` on `worker`, expiring at `expires_at`.
    /// Refuses what the server's submission refuses.
    pub fn lease_line(
        public_key: &str,
        request: RequestId,
        worker: WorkerId,
        expires_at: SystemTime,
    ) -> Result<String, KeyError> {
        let key = PublicKey::parse(public_key)?;
        Ok(format!(
            "{OPTIONS},expiry-time=\"{}\" {} {MARKER} request={request} worker={worker}",
            expiry_time(expires_at),
            key.without_comment()
        ))
    }

    /// `at` as sshd's `expiry-time` (`YYYYMMDDHHMMSSZ`, UTC), rounded up to
    /// the second so the key never expires before the lease.
    pub fn expiry_time(at: SystemTime) -> String {
        let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let seconds = since.as_secs().saturating_add(u64::from(since.subsec_nanos() > 0));
        let text = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(seconds)).to_string();
        let digits: String = text.chars().filter(char::is_ascii_digit).collect();
        format!("{digits}Z")
    }

    /// The request and worker of one of the agent's lines.
    pub fn owner(line: &[u8]) -> Option<(RequestId, WorkerId)> {
        let line = std::str::from_utf8(line).ok()?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [.., marker, request, worker] = fields[..] else { return None };
        if marker != MARKER || fields.len() < 5 {
            return None;
        }
        let request = request.strip_prefix("request=")?.parse().ok()?;
        let worker = worker.strip_prefix("worker=")?.parse().ok().map(WorkerId)?;
        Some((request, worker))
    }

    fn lines(content: &[u8]) -> impl Iterator<Item = &[u8]> {
        content.split_inclusive(|b| *b == b'\n')
    }

    fn trimmed(line: &[u8]) -> &[u8] {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        line.strip_suffix(b"\r").unwrap_or(line)
    }

    /// `content` holding `line` as the only lease line of `worker` (other
    /// leases' lines of the worker are stale and go); `None` when it
    /// already does. A new line goes first, so that every other byte of the
    /// file stays as it was, even without a final newline, and removing the
    /// line again gives back the file as it was.
    pub fn with_lease(content: &[u8], line: &str, request: RequestId, worker: WorkerId) -> Option<Vec<u8>> {
        let mut present = false;
        let mut changed = false;
        let mut rest = Vec::with_capacity(content.len());
        for existing in lines(content) {
            match owner(existing) {
                Some((r, w)) if w == worker && r == request && trimmed(existing) == line.as_bytes() && !present => {
                    present = true;
                    rest.extend_from_slice(existing);
                }
                Some((_, w)) if w == worker => changed = true,
                _ => rest.extend_from_slice(existing),
            }
        }
        if present {
            return changed.then_some(rest);
        }
        let mut out = Vec::with_capacity(line.len() + 1 + rest.len());
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&rest);
        Some(out)
    }

    /// `content` with the lease lines of `request` on `worker` expiring at
    /// `expires_at` instead (in place); `None` when there is no such line
    /// or it already says so. A revoked lease is not brought back.
    pub fn with_expiry(
        content: &[u8],
        request: RequestId,
        worker: WorkerId,
        expires_at: SystemTime,
    ) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(content.len() + 16);
        let mut changed = false;
        for existing in lines(content) {
            let renewed = (owner(existing) == Some((request, worker)))
                .then(|| std::str::from_utf8(trimmed(existing)).ok())
                .flatten()
                .and_then(|text| {
                    let fields: Vec<&str> = text.split_whitespace().collect();
                    let key = format!("{} {}", fields.get(fields.len().checked_sub(5)?)?, fields[fields.len() - 4]);
                    lease_line(&key, request, worker, expires_at).ok()
                });
            match renewed {
                Some(line) if line.as_bytes() != trimmed(existing) => {
                    changed = true;
                    out.extend_from_slice(line.as_bytes());
                    out.extend_from_slice(&existing[trimmed(existing).len()..]);
                }
                _ => out.extend_from_slice(existing),
            }
        }
        changed.then_some(out)
    }

    /// `content` without the lease lines of `worker` (of `request` only, if
    /// given); `None` when there are none.
    pub fn without_leases(content: &[u8], worker: WorkerId, request: Option<RequestId>) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(content.len());
        let mut changed = false;
        for line in lines(content) {
            match owner(line) {
                Some((r, w)) if w == worker && request.is_none_or(|request| request == r) => changed = true,
                _ => out.extend_from_slice(line),
            }
        }
        changed.then_some(out)
    }

    /// Applies `edit` to the file at `path` (absolute) and replaces it at
    /// once when the edit changes something: a temporary file in the same
    /// directory, mode 0644, renamed over it. Missing directories on the
    /// way are made (0755) only when there is something to write. A
    /// symbolic link anywhere on the path, a file that is not a regular
    /// file, or (running as root) a directory that anyone but root can
    /// write is refused. Returns whether the file changed.
    pub fn edit(path: &Path, edit: impl FnOnce(&[u8]) -> Option<Vec<u8>>) -> io::Result<bool> {
        let (dir_path, name) = split(path)?;
        let dir = open_dir(dir_path, false)?;
        let content = match &dir {
            Some(dir) => read(dir, name, path)?,
            None => Vec::new(),
        };
        let Some(updated) = edit(&content) else { return Ok(false) };
        let dir = match dir {
            Some(dir) => dir,
            None => open_dir(dir_path, true)?
                .ok_or_else(|| io::Error::other(format!("{} could not be made", dir_path.display())))?,
        };
        write(&dir, name, &updated)?;
        Ok(true)
    }

    /// Checks that `path`'s directory is one the agent may edit keys in
    /// (see [`edit`]); a missing directory is fine (it is made when needed).
    pub fn check(path: &Path) -> io::Result<()> {
        let (dir_path, _) = split(path)?;
        open_dir(dir_path, false).map(drop)
    }

    fn split(path: &Path) -> io::Result<(&Path, &OsStr)> {
        let bad =
            || io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not an absolute file path", path.display()));
        if !path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
            return Err(bad());
        }
        match (path.parent(), path.file_name()) {
            (Some(dir), Some(name)) => Ok((dir, name)),
            _ => Err(bad()),
        }
    }

    fn refused(err: Errno, path: &Path) -> io::Error {
        match err {
            Errno::ELOOP | Errno::ENOTDIR => io::Error::other(format!(
                "{} is a symbolic link or not a directory; refusing to follow it",
                path.display()
            )),
            err => io::Error::other(format!("cannot open {}: {err}", path.display())),
        }
    }

    /// Running as root: refuses a directory on the way to the key file that
    /// someone else could rename things in (root-owned sticky directories
    /// such as `/tmp` protect root's entries), or, for the key file's own
    /// directory (`last`), that anyone but root can write at all.
    fn check_owner(dir: &OwnedFd, path: &Path, last: bool) -> io::Result<()> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(());
        }
        let stat = fstat(dir).map_err(io::Error::from)?;
        let others_write = stat.st_mode & 0o022 != 0;
        let sticky = stat.st_mode & 0o1000 != 0;
        if stat.st_uid != 0 || (others_write && (last || !sticky)) {
            return Err(io::Error::other(format!(
                "{} can be written by someone other than root (owner uid {}, mode {:o}); lease keys must live in \
                 a root-owned directory the lab user cannot write",
                path.display(),
                stat.st_uid,
                stat.st_mode & 0o7777
            )));
        }
        Ok(())
    }

    /// Opens `path` one component at a time from `/`, never following a
    /// symbolic link and checking each directory ([`check_owner`]); `None`
    /// when a component is missing and `create` is false.
    fn open_dir(path: &Path, create: bool) -> io::Result<Option<OwnedFd>> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut dir = openat(AT_FDCWD, "/", flags, Mode::empty()).map_err(|e| refused(e, Path::new("/")))?;
        let mut walked = PathBuf::from("/");
        for component in path.components() {
            check_owner(&dir, &walked, false)?;
            let Component::Normal(name) = component else { continue };
            walked.push(name);
            let next = match openat(&dir, name, flags, Mode::empty()) {
                Ok(next) => next,
                Err(Errno::ENOENT) if create => {
                    match mkdirat(&dir, name, Mode::from_bits_truncate(DIR_MODE)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(err) => return Err(io::Error::other(format!("cannot make {}: {err}", walked.display()))),
                    }
                    openat(&dir, name, flags, Mode::empty()).map_err(|e| refused(e, &walked))?
                }
                Err(Errno::ENOENT) => return Ok(None),
                Err(err) => return Err(refused(err, &walked)),
            };
            dir = next;
        }
        check_owner(&dir, path, true)?;
        Ok(Some(dir))
    }

    /// The content of `name` in `dir` (empty when missing).
    fn read(dir: &OwnedFd, name: &OsStr, path: &Path) -> io::Result<Vec<u8>> {
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let mut file = match openat(dir, name, flags, Mode::empty()) {
            Ok(fd) => File::from(fd),
            Err(Errno::ENOENT) => return Ok(Vec::new()),
            Err(Errno::ELOOP) => {
                return Err(io::Error::other(format!("{} is a symbolic link; refusing to follow it", path.display())));
            }
            Err(err) => return Err(io::Error::other(format!("cannot open {}: {err}", path.display()))),
        };
        if !file.metadata()?.is_file() {
            return Err(io::Error::other(format!("{} is not a regular file", path.display())));
        }
        let mut content = Vec::new();
        file.read_to_end(&mut content)?;
        Ok(content)
    }

    /// Replaces `name` in `dir` by a file holding `content`.
    fn write(dir: &OwnedFd, name: &OsStr, content: &[u8]) -> io::Result<()> {
        let temp = format!(".{}.corral-{}", name.to_string_lossy(), uuid::Uuid::new_v4().simple());
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut file = File::from(openat(dir, temp.as_str(), flags, Mode::from_bits_truncate(0o600))?);
        let written = (|| -> io::Result<()> {
            file.write_all(content)?;
            fchmod(&file, Mode::from_bits_truncate(FILE_MODE))?;
            file.sync_all()?;
            renameat(dir, temp.as_str(), dir, name)?;
            Ok(())
        })();
        match written {
            Ok(()) => {
                // The rename itself survives a crash once the directory is synced.
                if let Err(err) = nix::unistd::fsync(dir) {
                    tracing::warn!(file = %name.to_string_lossy(), cause = %err, "cannot sync the key file's directory");
                }
                Ok(())
            }
            Err(err) => {
                if let Err(cleanup) = unlinkat(dir, temp.as_str(), UnlinkatFlags::NoRemoveDir) {
                    let what = "cannot remove a temporary key file; remove it yourself";
                    tracing::warn!(file = %temp, cause = %cleanup, "{what}");
                }
                Err(err)
            }
        }
    }
    #[cfg(test)]
    mod tests {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};

        use proptest::prelude::*;

        use super::*;

        const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm3hWqdYf0bCQ2uJxq1RxvVn5Cq5dLx0aQ0v8d8aZ3C";
        const OTHER: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm3hWqdYf0bCQ2uJxq1RxvVn5Cq5dLx0aQ0v8d8aZ3D";
        const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBBLZcgh67D0fYM1xNG5SYS+OfO+Zm+Z0ZM3alGsD5Gh1ot6oJDM58t30yTYT+QbMjVhHwdVhIuqUPbzT5/6aKtI=";

        fn worker(n: u128) -> WorkerId {
            WorkerId(uuid::Uuid::from_u128(n))
        }

        /// 2026-12-04T18:00:00Z.
        fn at() -> SystemTime {
            UNIX_EPOCH + Duration::from_secs(1_796_407_200)
        }

        fn line(key: &str, request: u64, w: u128) -> String {
            lease_line(key, RequestId(request as i64), worker(w), at()).unwrap()
        }

        /// Lines nobody but their author may change: comments, options,
        /// odd spacing, CRLF, no final newline.
        const FOREIGN: &[u8] = b"# managed by hand\n\
            command=\"/bin/true\",no-pty ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ admin@lab\r\n\
            \n   ssh-ed25519   AAAAC3NzaC1lZDI1NTE5AAAAIFoo  corral-lease-not request=1\n\
            ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBar someone corral-lease request=x worker=y";

        #[test]
        fn lease_lines_are_restricted_expire_with_the_lease_and_refuse_what_the_server_refuses() {
            let line = lease_line(&format!("{KEY} alice@laptop"), RequestId(7), worker(1), at()).unwrap();
            assert_eq!(
                line,
                format!(
                    "restrict,pty,expiry-time=\"20261204180000Z\" {KEY} corral-lease request=7 worker={}",
                    worker(1)
                )
            );
            assert_eq!(owner(line.as_bytes()), Some((RequestId(7), worker(1))));
            assert_eq!(expiry_time(at() + Duration::from_millis(1)), "20261204180001Z", "rounded up");
            assert!(lease_line(ECDSA, RequestId(1), worker(1), at()).is_ok(), "ECDSA keys are installed");
            for bad in [
                "",
                "ssh-ed25519",
                "ssh-foo AAAAC3NzaC1lZDI1NTE5AAAAIBm3",
                "command=\"sh\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm3hWqdYf0b",
                "ssh-ed25519 AAAA,C3NzaC1lZDI1NTE5AAAAIBm3hWqdYf0b",
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm3hWqdYf0bCQ2uJxq1RxvVn5Cq5dLx0aQ0v8d8aZ3C a\nssh-rsa AAAAB3",
                "ssh-dss AAAAB3NzaC1kc3MAAACBAIiRRJzao6mbuEt5U",
            ] {
                assert!(lease_line(bad, RequestId(1), worker(1), at()).is_err(), "{bad:?}");
            }
        }

        #[test]
        fn foreign_lines_are_not_ours() {
            for line in FOREIGN.split_inclusive(|b| *b == b'\n') {
                assert_eq!(owner(line), None, "{}", String::from_utf8_lossy(line));
            }
        }

        #[test]
        fn adding_keeps_other_lines_and_is_idempotent() {
            let line = line(KEY, 3, 1);
            let added = with_lease(FOREIGN, &line, RequestId(3), worker(1)).unwrap();
            assert_eq!(added, [format!("{line}\n").as_bytes(), FOREIGN].concat());
            assert_eq!(with_lease(&added, &line, RequestId(3), worker(1)), None, "adding twice changes nothing");
            assert_eq!(without_leases(&added, worker(1), None).unwrap(), FOREIGN, "removing gives the file back");
            assert_eq!(with_lease(b"", &line, RequestId(3), worker(1)).unwrap(), format!("{line}\n").as_bytes());
        }

        #[test]
        fn a_prolonged_lease_renews_its_line_in_place_and_only_its_own() {
            let mine = line(KEY, 3, 1);
            let neighbour = line(OTHER, 4, 2);
            let content = format!("# hand\n{mine}\r\n{neighbour}\n");
            let later = at() + Duration::from_secs(3600);
            let renewed = with_expiry(content.as_bytes(), RequestId(3), worker(1), later).unwrap();
            let expected = lease_line(KEY, RequestId(3), worker(1), later).unwrap();
            assert!(expected.contains("expiry-time=\"20261204190000Z\""), "{expected}");
            assert_eq!(String::from_utf8(renewed.clone()).unwrap(), format!("# hand\n{expected}\r\n{neighbour}\n"));
            assert_eq!(with_expiry(&renewed, RequestId(3), worker(1), later), None, "renewing twice changes nothing");
            assert_eq!(with_expiry(FOREIGN, RequestId(3), worker(1), later), None, "a revoked lease stays revoked");
        }

        #[test]
        fn a_new_lease_replaces_stale_lines_of_its_worker_only() {
            let old = line(OTHER, 2, 1);
            let neighbour = line(OTHER, 9, 2);
            let content = format!("# hand\n{old}\n{neighbour}\n");
            let line3 = line(KEY, 3, 1);
            let updated = with_lease(content.as_bytes(), &line3, RequestId(3), worker(1)).unwrap();
            assert_eq!(String::from_utf8(updated).unwrap(), format!("{line3}\n# hand\n{neighbour}\n"));
            // The same request with a different key (a resent command with a
            // new key cannot happen, but the file must hold one line).
            let other = line(OTHER, 3, 1);
            let twice = format!("{line3}\n{line3}\n");
            let updated = with_lease(twice.as_bytes(), &other, RequestId(3), worker(1)).unwrap();
            assert_eq!(String::from_utf8(updated).unwrap(), format!("{other}\n"));
            let updated = with_lease(twice.as_bytes(), &line3, RequestId(3), worker(1)).unwrap();
            assert_eq!(String::from_utf8(updated).unwrap(), format!("{line3}\n"), "a duplicate goes");
        }

        #[test]
        fn removing_takes_only_our_lines() {
            let mine = line(KEY, 3, 1);
            let neighbour = line(OTHER, 4, 2);
            let mut content = FOREIGN.to_vec();
            content.extend_from_slice(format!("\n{mine}\n{neighbour}\n").as_bytes());
            let mut foreign_and_neighbour = FOREIGN.to_vec();
            foreign_and_neighbour.extend_from_slice(format!("\n{neighbour}\n").as_bytes());

            assert_eq!(without_leases(&content, worker(1), None).unwrap(), foreign_and_neighbour);
            assert_eq!(without_leases(&content, worker(1), Some(RequestId(3))).unwrap(), foreign_and_neighbour);
            assert_eq!(without_leases(&content, worker(1), Some(RequestId(4))), None, "not that lease");
            assert_eq!(without_leases(FOREIGN, worker(1), None), None, "nothing of ours");
        }

        fn temp_dir() -> std::path::PathBuf {
            let dir = std::env::temp_dir().join(format!("corral-keys-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            dir
        }

        #[test]
        fn editing_a_file_creates_it_readable_for_sshd_and_replaces_it_whole() {
            let dir = temp_dir();
            let path = dir.join("keys").join("lab");
            let line = line(KEY, 3, 1);
            assert!(edit(&path, |c| with_lease(c, &line, RequestId(3), worker(1))).unwrap());
            assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
            assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777, 0o755);
            assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{line}\n"));
            assert!(!edit(&path, |c| with_lease(c, &line, RequestId(3), worker(1))).unwrap());

            let mut content = FOREIGN.to_vec();
            content.extend_from_slice(format!("\n{line}\n").as_bytes());
            std::fs::write(&path, &content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
            assert!(edit(&path, |c| without_leases(c, worker(1), None)).unwrap());
            assert_eq!(std::fs::read(&path).unwrap(), [FOREIGN, b"\n"].concat());
            assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o644, "nobody else may write it");
            let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
            assert_eq!(left.len(), 1, "no temporary file left behind");
            std::fs::remove_dir_all(&dir).unwrap();
        }

        /// A symbolic link at the file's path or on its directory's path
        /// (as a lab user would plant one) is refused, and what it points
        /// to stays untouched; running as root, so is a directory someone
        /// else may write.
        #[test]
        fn class7_symlink_in_keys_path_is_not_followed() {
            let dir = temp_dir();
            let target = dir.join("target");
            std::fs::write(&target, "secret\n").unwrap();
            let path = dir.join("authorized_keys");
            std::os::unix::fs::symlink(&target, &path).unwrap();
            let line = line(KEY, 3, 1);
            let err = edit(&path, |c| with_lease(c, &line, RequestId(3), worker(1))).unwrap_err();
            assert!(err.to_string().contains("symbolic link"), "{err}");
            assert_eq!(std::fs::read_to_string(&target).unwrap(), "secret\n");
            assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink(), "the link stays a link");

            let elsewhere = dir.join("elsewhere");
            std::fs::create_dir(&elsewhere).unwrap();
            std::os::unix::fs::symlink(&elsewhere, dir.join("keys")).unwrap();
            let err = edit(&dir.join("keys/lab"), |c| with_lease(c, &line, RequestId(3), worker(1))).unwrap_err();
            assert!(err.to_string().contains("symbolic link"), "{err}");
            assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
            let err =
                edit(&elsewhere.join("../keys/lab"), |c| with_lease(c, &line, RequestId(3), worker(1))).unwrap_err();
            assert!(err.to_string().contains("not an absolute file path"), "{err}");

            if nix::unistd::geteuid().is_root() {
                let writable = dir.join("writable");
                std::fs::create_dir(&writable).unwrap();
                std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o777)).unwrap();
                let err = edit(&writable.join("lab"), |c| with_lease(c, &line, RequestId(3), worker(1))).unwrap_err();
                assert!(err.to_string().contains("someone other than root"), "{err}");
                let owned = dir.join("owned");
                std::fs::create_dir(&owned).unwrap();
                std::os::unix::fs::chown(&owned, Some(65534), None).unwrap();
                let err = edit(&owned.join("lab"), |c| with_lease(c, &line, RequestId(3), worker(1))).unwrap_err();
                assert!(err.to_string().contains("someone other than root"), "{err}");
                assert_eq!(std::fs::read_dir(&owned).unwrap().count(), 0, "nothing written there");
                // Higher up too: the lab user could rename the key directory away.
                let below = owned.join("keys");
                std::fs::create_dir(&below).unwrap();
                let err = edit(&below.join("lab"), |c| with_lease(c, &line, RequestId(3), worker(1))).unwrap_err();
                assert!(err.to_string().contains("someone other than root"), "{err}");
                assert_eq!(std::fs::read_dir(&below).unwrap().count(), 0, "nothing written there");
            }
            std::fs::remove_dir_all(&dir).unwrap();
        }

        #[test]
        fn removing_from_a_missing_file_creates_nothing() {
            let dir = temp_dir();
            let path = dir.join("keys").join("lab");
            assert!(!edit(&path, |c| without_leases(c, worker(1), None)).unwrap());
            assert!(!path.parent().unwrap().exists());
            std::fs::remove_dir_all(&dir).unwrap();
        }

        fn fuzz_cases() -> u32 {
            std::env::var("CORRAL_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(256)
        }

        /// File content: foreign text, our lines and near-misses, mixed.
        fn content() -> impl Strategy<Value = Vec<u8>> {
            let piece = prop_oneof![
                any::<Vec<u8>>(),
                "[ -~\t]{0,60}\r?\n".prop_map(String::into_bytes),
                (1u64..4, 1u128..3).prop_map(|(r, w)| format!("{}\n", line(KEY, r, w)).into_bytes()),
                (1u64..4).prop_map(|r| format!("x corral-lease request={r} worker={}\n", worker(1)).into_bytes()),
            ];
            prop::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
        }

        /// The lines of `content` the editor does not own, in order.
        fn foreign(content: &[u8], w: WorkerId) -> Vec<Vec<u8>> {
            content
                .split_inclusive(|b| *b == b'\n')
                .filter(|l| owner(l).is_none_or(|(_, owner)| owner != w))
                .map(|l| trimmed(l).to_vec())
                .collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]

            /// Whatever the shared parser accepts (the server's test at
            /// submission), the line builder accepts too, as one line the
            /// editor recognises as the lease's.
            #[test]
            fn what_the_server_accepts_the_agent_installs(
                key in prop::sample::select(vec![KEY, OTHER, ECDSA]),
                before in "[ \t\n]{0,3}",
                comment in any::<String>(),
                request in 1i64..1000,
            ) {
                let text = format!("{before}{key} {comment}");
                if corral_core::ssh::PublicKey::parse(&text).is_ok() {
                    let line = lease_line(&text, RequestId(request), worker(1), at());
                    prop_assert!(line.is_ok(), "{:?}", line);
                    let line = line.unwrap_or_default();
                    prop_assert!(!line.contains(['\n', '\r', '\0']));
                    prop_assert_eq!(owner(line.as_bytes()), Some((RequestId(request), worker(1))));
                }
            }

            /// On any content the editor never panics, never changes or
            /// drops a line it does not own, and is idempotent.
            #[test]
            fn the_editor_keeps_what_it_does_not_own(content in content(), request in 1u64..4, key in "[ -~]{0,80}") {
                let (w, request) = (worker(1), RequestId(request as i64));
                let _ = lease_line(&key, request, w, at());
                let line = line(KEY, request.0 as u64, 1);
                let added = with_lease(&content, &line, request, w).unwrap_or_else(|| content.clone());
                prop_assert_eq!(foreign(&added, w), foreign(&content, w));
                prop_assert_eq!(with_lease(&added, &line, request, w), None);
                let ours: Vec<_> = added.split_inclusive(|b| *b == b'\n').filter(|l| owner(l).is_some_and(|(_, o)| o == w)).collect();
                prop_assert_eq!(ours.len(), 1);

                let renewed = with_expiry(&added, request, w, at() + Duration::from_secs(60)).unwrap_or_else(|| added.clone());
                prop_assert_eq!(foreign(&renewed, w), foreign(&content, w));
                prop_assert_eq!(with_expiry(&renewed, request, w, at() + Duration::from_secs(60)), None);

                let removed = without_leases(&renewed, w, None).unwrap_or_else(|| renewed.clone());
                prop_assert_eq!(foreign(&removed, w), foreign(&content, w));
                prop_assert_eq!(without_leases(&removed, w, None), None);
                let _ = without_leases(&content, w, Some(request));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ed25519_host_key_is_preferred() {
        let output = "# 127.0.0.1:2222 SSH-2.0-OpenSSH_9.2\n\
            [127.0.0.1]:2222 ssh-rsa AAAArsa\n\
            [127.0.0.1]:2222 ecdsa-sha2-nistp256 AAAAecdsa\n\
            [127.0.0.1]:2222 ssh-ed25519 AAAAed\n";
        assert_eq!(pick_host_key(output).as_deref(), Some("ssh-ed25519 AAAAed"));
        assert_eq!(pick_host_key("h ssh-rsa AAAArsa\nh ecdsa-sha2-nistp256 B\n").as_deref(), Some("ssh-rsa AAAArsa"));
        assert_eq!(pick_host_key("# nothing\n"), None);
    }

    #[test]
    fn tails_are_short() {
        assert_eq!(tail(b"  ok \n", 10), "ok");
        assert_eq!(tail("abcdéf".as_bytes(), 3), "…déf");
    }

    fn config(hooks: &str) -> WorkerConfig {
        let text = format!(
            "server = \"http://x\"\ntoken = \"t\"\n[[worker]]\nssh_addr = \"127.0.0.1:1\"\nuser = \"lab\"\n\
             [worker.hooks]\n{hooks}"
        );
        let (config, _) = AgentConfig::parse(&text, std::path::Path::new("/agent.toml")).unwrap();
        config.workers[0].clone()
    }

    #[actix_rt::test]
    async fn hooks_see_the_worker_and_report_failures() {
        let worker = config(
            "prepare = 'echo \"$CORRAL_ACTION $CORRAL_USER $CORRAL_SSH_ADDR $CORRAL_WORKER\"'\n\
             healthcheck = 'echo usb gone >&2; exit 3'\n\
             power_cycle = 'sleep 30'\npower_cycle_timeout = '300ms'\n",
        );
        let outcome = run_hook_for(&worker, HookKind::Prepare).await;
        assert!(outcome.ok, "{outcome:?}");
        assert_eq!(outcome.message, format!("prepare lab 127.0.0.1:1 {}", worker.uuid));
        let outcome = run_hook_for(&worker, HookKind::HealthCheck).await;
        assert_eq!(outcome, Outcome::failed("healthcheck hook exited with status 3: usb gone"));
        let started = std::time::Instant::now();
        let outcome = run_hook_for(&worker, HookKind::PowerCycle).await;
        assert_eq!(outcome, Outcome::failed("power_cycle hook timed out after 300ms"));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(run_hook_for(&worker, HookKind::Maintenance).await, Outcome::ok(), "no hook: success");
    }

    /// Input: a hook command that does not exist. Must: fail the command
    /// with sh's status and its complaint naming the command.
    #[actix_rt::test]
    async fn a_hook_that_does_not_exist_fails_its_command_and_says_why() {
        let worker = config("prepare = '/nonexistent/corral-reflash rpi4-1'\n");
        let outcome = run_hook_for(&worker, HookKind::Prepare).await;
        assert!(!outcome.ok, "{outcome:?}");
        assert!(outcome.message.starts_with("prepare hook exited with status 127: "), "{outcome:?}");
        assert!(outcome.message.contains("/nonexistent/corral-reflash"), "{outcome:?}");
    }

    /// Input: a worker whose key file lies behind a symbolic link, with
    /// `sshd_check = "refuse"`, then with `"off"`. Must: refuse to start
    /// naming the worker, the file and why (the cause kept as the source);
    /// with the check off, fail each key edit with the same cause.
    #[actix_rt::test]
    async fn an_unsafe_key_file_refuses_the_start_and_fails_key_edits() {
        use std::error::Error as _;

        let dir = std::env::temp_dir().join(format!("corral-unsafe-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("real")).unwrap();
        std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).unwrap();
        let keys = dir.join("link/authorized_keys");
        let me = nix::unistd::User::from_uid(nix::unistd::geteuid()).unwrap().unwrap().name;
        let text = format!(
            "server = \"http://x\"\ntoken = \"t\"\n[[worker]]\nssh_addr = \"127.0.0.1:1\"\nuser = \"{me}\"\n\
             authorized_keys = \"{}\"\nsshd_check = \"refuse\"\n",
            keys.display()
        );
        let (config, _) = AgentConfig::parse(&text, std::path::Path::new("/agent.toml")).unwrap();
        let uuid = config.workers[0].uuid;
        let refused = Host::new(&config).err().expect("an unsafe key file refuses the start");
        let StartError::SshdUnsafe { worker, source: SshdError::KeyFile { path, .. } } = &refused else {
            panic!("{refused:?}");
        };
        assert_eq!((*worker, path), (uuid, &keys));
        let message = chain(&refused);
        assert!(message.starts_with(&format!("worker {uuid}: refusing to start")), "{message}");
        assert!(message.contains("symbolic link"), "{message}");
        assert!(refused.source().is_some(), "the cause is kept");

        let (host, uuid) = host_for(&me, &keys, "");
        let outcome = host.execute(uuid, &Action::Revoke { request: RequestId(1) }).await;
        assert!(!outcome.ok, "{outcome:?}");
        assert!(outcome.message.starts_with(&format!("cannot update {}: ", keys.display())), "{outcome:?}");
        assert!(outcome.message.contains("symbolic link"), "{outcome:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[actix_rt::test]
    async fn a_timed_out_hook_loses_its_children_too() {
        let worker = config("prepare = 'sleep 30 & sleep 30'\nprepare_timeout = '200ms'\n");
        let started = std::time::Instant::now();
        let outcome = run_hook_for(&worker, HookKind::Prepare).await;
        assert!(!outcome.ok);
        assert!(started.elapsed() < Duration::from_secs(2), "the background sleep did not hold the pipes");
    }

    #[actix_rt::test]
    async fn interrogation_turns_bad_output_into_unhealthy_facts() {
        let facts = interrogate(&config("interrogate = 'echo {\\\"battery\\\": 80}'\n")).await;
        assert_eq!(Value::Object(facts), serde_json::json!({"battery": 80}));
        for (hook, error) in [
            ("interrogate = 'echo not json'\n", "interrogate: output is not JSON"),
            ("interrogate = 'echo [1]'\n", "interrogate: printed an array, not a JSON object"),
            ("interrogate = 'echo {}; exit 1'\n", "interrogate: exited with status 1"),
        ] {
            let facts = interrogate(&config(hook)).await;
            assert_eq!(facts["healthy"], Value::Bool(false), "{hook}");
            assert!(facts["error"].as_str().unwrap().starts_with(error), "{hook}: {facts:?}");
        }
    }

    /// A host with one worker whose keys live in `keys`, for `user`.
    fn host_for(user: &str, keys: &std::path::Path, hooks: &str) -> (Host, WorkerId) {
        let text = format!(
            "server = \"http://x\"\ntoken = \"t\"\n[[worker]]\nssh_addr = \"127.0.0.1:1\"\nuser = \"{user}\"\n\
             authorized_keys = \"{}\"\nsshd_check = \"off\"\n[worker.hooks]\n{hooks}",
            keys.display()
        );
        let (config, _) = AgentConfig::parse(&text, std::path::Path::new("/agent.toml")).unwrap();
        (Host::new(&config).unwrap(), config.workers[0].uuid)
    }

    /// Registration tells the server which hooks each worker has (the
    /// server offers a power cycle only when `power_cycle` is one).
    #[actix_rt::test]
    async fn registration_lists_the_hooks_the_worker_has() {
        let keys = std::env::temp_dir().join(format!("corral-hooks-{}", uuid::Uuid::new_v4().simple()));
        let me = nix::unistd::User::from_uid(nix::unistd::geteuid()).unwrap().unwrap().name;
        let (host, _) = host_for(&me, &keys, "power_cycle = 'true'\nprepare = 'true'\n");
        let hooks = host.workers().await.remove(0).hooks;
        assert_eq!(hooks, Some(vec!["prepare".to_string(), "power_cycle".to_string()]));
        let (bare, _) = host_for(&me, &keys, "");
        assert_eq!(bare.workers().await.remove(0).hooks, Some(Vec::new()), "no hooks: none listed");
    }

    #[actix_rt::test]
    async fn commands_edit_only_the_workers_lines() {
        use authorized_keys::lease_line;
        let dir = std::env::temp_dir().join(format!("corral-host-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let keys = dir.join("authorized_keys");
        let me = nix::unistd::User::from_uid(nix::unistd::geteuid()).unwrap().unwrap().name;
        let marker = dir.join("prepared");
        let (host, uuid) = host_for(&me, &keys, &format!("prepare = 'touch {}'\n", marker.display()));
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm3hWqdYf0bCQ2uJxq1RxvVn5Cq5dLx0aQ0v8d8aZ3C";
        let now = SystemTime::now();
        let line = |request: i64, worker: WorkerId| lease_line(key, RequestId(request), worker, now).unwrap();
        let (one, two) = (line(1, uuid), line(2, uuid));
        let other = line(3, WorkerId(uuid::Uuid::from_u128(7)));
        std::fs::write(&keys, format!("{one}\n# mine\n{two}\n{other}\n")).unwrap();

        assert_eq!(host.execute(uuid, &Action::Revoke { request: RequestId(1) }).await, Outcome::ok());
        assert_eq!(std::fs::read_to_string(&keys).unwrap(), format!("# mine\n{two}\n{other}\n"));
        assert!(host.execute(uuid, &Action::Prepare).await.ok);
        assert_eq!(std::fs::read_to_string(&keys).unwrap(), format!("# mine\n{other}\n"));
        assert!(marker.exists(), "the prepare hook ran");

        let later = now + Duration::from_secs(3600);
        std::fs::write(&keys, format!("# mine\n{two}\n{other}\n")).unwrap();
        let extend = Action::ExtendLease { request: RequestId(2), expires_at: later };
        assert_eq!(host.execute(uuid, &extend).await, Outcome::ok());
        let renewed = lease_line(key, RequestId(2), uuid, later).unwrap();
        assert_eq!(
            std::fs::read_to_string(&keys).unwrap(),
            format!("# mine\n{renewed}\n{other}\n"),
            "renewed in place"
        );
        assert_eq!(host.execute(uuid, &Action::Revoke { request: RequestId(2) }).await, Outcome::ok());
        assert_eq!(host.execute(uuid, &extend).await, Outcome::ok(), "extending a revoked lease is a no-op");
        assert_eq!(std::fs::read_to_string(&keys).unwrap(), format!("# mine\n{other}\n"), "and adds nothing");

        let bad = Action::StartLease {
            request: RequestId(4),
            public_key: "command=\"x\" ssh-ed25519 AAAA".into(),
            expires_at: later,
        };
        let outcome = host.execute(uuid, &bad).await;
        assert!(outcome.message.starts_with("the lease's public key is unusable"), "{outcome:?}");
        // Nothing listens on port 1: no host key, no lease.
        let good = Action::StartLease { request: RequestId(4), public_key: key.into(), expires_at: later };
        let outcome = host.execute(uuid, &good).await;
        assert!(outcome.message.starts_with("cannot read the SSH host key of 127.0.0.1:1"), "{outcome:?}");
        assert_eq!(std::fs::read_to_string(&keys).unwrap(), format!("# mine\n{other}\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sshd_key_files_are_expanded_as_sshd_does() {
        let home = std::path::Path::new("/home/lab");
        let files = |output: &str| sshd_key_files(output, "lab", 1001, home);
        let managed = PathBuf::from("/etc/corral/authorized_keys/lab");
        assert_eq!(
            files("port 22\nauthorizedkeysfile /etc/corral/authorized_keys/%u\n"),
            std::slice::from_ref(&managed)
        );
        assert_eq!(
            files("authorizedkeysfile /etc/corral/authorized_keys/%u .ssh/authorized_keys %h/k%% /k/%U\n"),
            [managed, home.join(".ssh/authorized_keys"), PathBuf::from("/home/lab/k%"), PathBuf::from("/k/1001")]
        );
        assert_eq!(files("authorizedkeysfile ~/.ssh/keys\n"), [home.join(".ssh/keys")]);
        assert_eq!(files("port 22\n").len(), 2, "sshd's default reads the home's files");
        assert!(files("authorizedkeysfile none\n").is_empty());
    }

    /// The lab user name and home reach the reset script through its
    /// environment only, and an odd home is refused.
    #[test]
    fn the_account_reset_is_built_from_the_environment() {
        let mut worker = config("");
        worker.reset_account = true;
        let env = reset_env(&worker, std::path::Path::new("/home/lab")).unwrap();
        assert!(env.contains(&("CORRAL_HOME", "/home/lab".to_string())), "{env:?}");
        assert!(env.contains(&("CORRAL_USER", "lab".to_string())), "{env:?}");
        assert!(!RESET_SCRIPT.contains("lab"), "no name in the script text");
        for home in ["/", "/home", "home/lab", "/home/../etc"] {
            let refused = reset_env(&worker, std::path::Path::new(home));
            assert!(matches!(&refused, Err(ResetError::HomeNotPlain { user, .. }) if user == "lab"), "{home}");
        }
    }

    #[actix_rt::test]
    async fn a_missing_lab_user_has_no_keys_to_remove() {
        let (host, uuid) = host_for("corral-no-such-user", std::path::Path::new("/nonexistent/keys"), "");
        assert_eq!(host.execute(uuid, &Action::Prepare).await, Outcome::ok());
        assert_eq!(host.execute(uuid, &Action::Revoke { request: RequestId(1) }).await, Outcome::ok());
        let other = WorkerId(uuid::Uuid::from_u128(7));
        assert!(!host.execute(other, &Action::Prepare).await.ok, "not a worker of this host");
    }

    #[actix_rt::test]
    async fn heartbeats_do_not_wait_for_a_slow_interrogation() {
        let text = "server = \"http://x\"\ntoken = \"t\"\n[[worker]]\nssh_addr = \"127.0.0.1:1\"\nuser = \"lab\"\n\
            sshd_check = \"off\"\n[worker.hooks]\ninterrogate = 'sleep 3; echo {}'\n";
        let (config, _) = AgentConfig::parse(text, std::path::Path::new("/agent.toml")).unwrap();
        let host = Host::new(&config).unwrap();
        let uuid = config.workers[0].uuid;
        let started = std::time::Instant::now();
        assert!(host.observe(uuid).await.is_empty());
        assert!(host.observe(uuid).await.is_empty());
        assert!(started.elapsed() < OBSERVE_WAIT * 2 + Duration::from_millis(500), "{:?}", started.elapsed());
    }
}
