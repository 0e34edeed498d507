//! A real hardware host: the [`Backend`] of `corral agent --config FILE`.
//!
//! For each configured worker it manages the lease lines of the lab user's
//! `authorized_keys` ([`authorized_keys`]), reads the SSH host key of the
//! worker's `ssh_addr` with `ssh-keyscan` (at registration and at each lease
//! start, so clients can pin it), and runs the worker's hooks:
//!
//! | command | what the host does |
//! |---|---|
//! | prepare | removes every lease line of the worker, then runs `prepare` |
//! | start_lease | adds the lease's one line (idempotent), answers the host key |
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
use std::time::{Duration, Instant};

use corral_core::{RequestId, WorkerId};
use corral_proto::agent::{Action, WorkerRegistration};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Notify;

use crate::backend::{Backend, Outcome};
use crate::config::{AgentConfig, HookKind, SshAddr, WorkerConfig};

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
    /// exist (yet: a `prepare` hook may create them).
    pub fn new(config: &AgentConfig) -> Host {
        for worker in &config.workers {
            if !matches!(nix::unistd::User::from_name(&worker.user), Ok(Some(_))) {
                tracing::warn!(worker = %worker.uuid, user = %worker.user, "the lab user does not exist");
            }
        }
        Host {
            name: config.name.clone(),
            workers: config
                .workers
                .iter()
                .map(|w| Rc::new(HostWorker { config: w.clone(), interrogation: Interrogation::default() }))
                .collect(),
            host_keys: RefCell::new(HashMap::new()),
            key_edits: tokio::sync::Mutex::new(()),
        }
    }

    fn worker(&self, uuid: WorkerId) -> Option<&Rc<HostWorker>> {
        self.workers.iter().find(|w| w.config.uuid == uuid)
    }

    /// The host key of `addr` read now, or the last one read if that fails.
    async fn host_key(&self, addr: &SshAddr) -> Result<String, String> {
        match scan_host_key(addr).await {
            Ok(key) => {
                self.host_keys.borrow_mut().insert(addr.clone(), (key.clone(), Instant::now()));
                Ok(key)
            }
            Err(err) => match self.host_keys.borrow().get(addr) {
                Some((key, _)) => {
                    let what = "cannot read the host key now; using the last one read";
                    tracing::warn!(ssh_addr = %addr, cause = %err, "{what}");
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
    ) -> Result<Option<PathBuf>, String> {
        let _one_at_a_time = self.key_edits.lock().await;
        let (user, configured) = (worker.user.clone(), worker.authorized_keys.clone());
        let work = move || {
            let Some(owner) =
                nix::unistd::User::from_name(&user).map_err(|e| format!("cannot look up user {user}: {e}"))?
            else {
                return Ok(None);
            };
            let path = configured.unwrap_or_else(|| owner.dir.join(".ssh").join("authorized_keys"));
            authorized_keys::edit(&path, Some((owner.uid.as_raw(), owner.gid.as_raw())), edit)
                .map_err(|e| format!("cannot update {}: {e}", path.display()))?;
            Ok(Some(path))
        };
        tokio::task::spawn_blocking(work).await.map_err(|e| format!("key file edit panicked: {e}"))?
    }

    /// Removes the worker's lease lines (of `request` only, if given).
    async fn remove_keys(&self, worker: &WorkerConfig, request: Option<RequestId>) -> Result<(), String> {
        let uuid = worker.uuid;
        self.edit_keys(worker, move |content| authorized_keys::without_leases(content, uuid, request)).await.map(drop)
    }

    async fn start_lease(&self, worker: &WorkerConfig, request: RequestId, public_key: &str) -> Outcome {
        let line = match authorized_keys::lease_line(public_key, request, worker.uuid) {
            Ok(line) => line,
            Err(err) => return Outcome::failed(format!("the lease's public key is unusable: {err}")),
        };
        let host_key = match self.host_key(&worker.ssh_addr).await {
            Ok(key) => key,
            Err(err) => return Outcome::failed(format!("cannot read the SSH host key of {}: {err}", worker.ssh_addr)),
        };
        let uuid = worker.uuid;
        match self.edit_keys(worker, move |content| authorized_keys::with_lease(content, &line, request, uuid)).await {
            Ok(Some(path)) => Outcome {
                ok: true,
                message: format!("key of request {request} installed in {}", path.display()),
                host_key: Some(host_key),
            },
            Ok(None) => Outcome::failed(format!("the lab user {} does not exist", worker.user)),
            Err(err) => Outcome::failed(err),
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
                Ok((Err(err), addr)) => tracing::warn!(ssh_addr = %addr, cause = %err, "cannot read the host key"),
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
                Ok(()) => run_hook_for(config, HookKind::Prepare).await,
                Err(err) => Outcome::failed(err),
            },
            Action::StartLease { request, public_key } => self.start_lease(config, *request, public_key).await,
            Action::Revoke { request } => match self.remove_keys(config, Some(*request)).await {
                Ok(()) => Outcome::ok(),
                Err(err) => Outcome::failed(err),
            },
            // A worker in maintenance has no lease: no key of ours may stay.
            Action::Maintenance => match self.remove_keys(config, None).await {
                Ok(()) => run_hook_for(config, HookKind::Maintenance).await,
                Err(err) => Outcome::failed(err),
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
        Outcome { ok: true, message: tail(output, MESSAGE_TAIL), host_key: None }
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
    Error(String),
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
            HookEnd::Error(err) => format!("could not run: {err}"),
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
        Err(err) => return HookRun { end: HookEnd::Error(err.to_string()), stdout: Vec::new(), stderr: Vec::new() },
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
        Ok(Err(err)) => HookEnd::Error(err.to_string()),
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
pub async fn scan_host_key(addr: &SshAddr) -> Result<String, String> {
    let scan = tokio::process::Command::new("ssh-keyscan")
        .args(["-T", &KEYSCAN_TIMEOUT_SECS.to_string(), "-p", &addr.port.to_string(), &addr.host])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(KEYSCAN_TIMEOUT_SECS * 2), scan)
        .await
        .map_err(|_| "ssh-keyscan did not finish".to_string())?
        .map_err(|e| format!("cannot run ssh-keyscan: {e}"))?;
    pick_host_key(&String::from_utf8_lossy(&output.stdout)).ok_or_else(|| {
        let why = tail(&output.stderr, 300);
        if why.is_empty() { "no host key offered".to_string() } else { format!("no host key offered: {why}") }
    })
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
/// A lease line is `TYPE BASE64 corral-lease request=ID worker=UUID`: the
/// public key of the lease, with a comment marking it as the agent's (no
/// options, so the lease holder may forward ports as with any account).
/// Only lines ending in that marker are ever changed or removed.
pub mod authorized_keys {
    use std::io::{self, Read, Write};
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
    use std::path::Path;

    use corral_core::{RequestId, WorkerId};

    /// The comment word that marks the agent's lines.
    pub const MARKER: &str = "corral-lease";

    /// Key types a lease line may carry.
    const KEY_TYPES: &[&str] = &[
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];

    /// The line for `public_key` (`TYPE BASE64 [COMMENT]`; the comment is
    /// dropped) of `request` on `worker`. Refuses anything else: options,
    /// several keys, odd characters.
    pub fn lease_line(public_key: &str, request: RequestId, worker: WorkerId) -> Result<String, String> {
        let mut fields = public_key.split_whitespace();
        let kind = fields.next().ok_or("the key is empty")?;
        if !KEY_TYPES.contains(&kind) {
            return Err(format!("unsupported key type {:?}", kind.chars().take(40).collect::<String>()));
        }
        let key = fields.next().ok_or("the key has no data")?;
        let base64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=');
        if key.len() < 16 || !key.chars().all(base64) {
            return Err("the key data is not base64".to_string());
        }
        if public_key.contains(['\n', '\r', '\0']) {
            return Err("the key spans several lines".to_string());
        }
        Ok(format!("{kind} {key} {MARKER} request={request} worker={worker}"))
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

    /// Applies `edit` to the file at `path` and replaces it at once (a
    /// temporary file in the same directory renamed over it) when the edit
    /// changes something. An existing file keeps its owner and mode; a new
    /// file (and its directory, if missing) is made for `owner` (when
    /// running as root) with mode 0600 (0700). A symbolic link (for the
    /// file or its directory) or anything but a regular file is refused:
    /// the directory belongs to the lab user. Returns whether the file
    /// changed.
    pub fn edit(
        path: &Path,
        owner: Option<(u32, u32)>,
        edit: impl FnOnce(&[u8]) -> Option<Vec<u8>>,
    ) -> io::Result<bool> {
        let root = nix::unistd::geteuid().is_root();
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{} has no directory", path.display()))
        })?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let dir_exists = match std::fs::symlink_metadata(dir) {
            Ok(meta) if meta.is_dir() => true,
            Ok(_) => return Err(io::Error::other(format!("{} is not a directory", dir.display()))),
            Err(err) if err.kind() == io::ErrorKind::NotFound => false,
            Err(err) => return Err(err),
        };
        let opened = match dir_exists {
            true => std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
                .open(path),
            false => Err(io::ErrorKind::NotFound.into()),
        };
        let (content, keep) = match opened {
            Ok(mut file) => {
                let meta = file.metadata()?;
                if !meta.is_file() {
                    return Err(io::Error::other(format!("{} is not a regular file", path.display())));
                }
                let mut content = Vec::new();
                file.read_to_end(&mut content)?;
                (content, Some((meta.mode() & 0o7777, meta.uid(), meta.gid())))
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => (Vec::new(), None),
            Err(err) if err.raw_os_error() == Some(nix::libc::ELOOP) => {
                return Err(io::Error::other(format!("{} is a symbolic link; refusing to follow it", path.display())));
            }
            Err(err) => return Err(err),
        };
        let Some(updated) = edit(&content) else { return Ok(false) };
        if !dir_exists {
            std::fs::DirBuilder::new().mode(0o700).create(dir)?;
            if root && let Some((uid, gid)) = owner {
                std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
            }
        }

        let (mode, owner) = match keep {
            Some((mode, uid, gid)) => (mode, Some((uid, gid))),
            None => (0o600, owner),
        };
        let temp = dir.join(format!(".{name}.corral-{}", uuid::Uuid::new_v4().simple()));
        let written = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&temp)?;
            file.write_all(&updated)?;
            if root && let Some((uid, gid)) = owner {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
            }
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
            file.sync_all()?;
            std::fs::rename(&temp, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written.map(|()| true)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm3hWqdYf0bCQ2uJxq1RxvVn5Cq5dLx0aQ0v8d8aZ3C";
        const OTHER: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm3hWqdYf0bCQ2uJxq1RxvVn5Cq5dLx0aQ0v8d8aZ3D";

        fn worker(n: u128) -> WorkerId {
            WorkerId(uuid::Uuid::from_u128(n))
        }

        /// Lines nobody but their author may change: comments, options,
        /// odd spacing, CRLF, no final newline.
        const FOREIGN: &[u8] = b"# managed by hand\n\
            command=\"/bin/true\",no-pty ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ admin@lab\r\n\
            \n   ssh-ed25519   AAAAC3NzaC1lZDI1NTE5AAAAIFoo  corral-lease-not request=1\n\
            ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBar someone corral-lease request=x worker=y";

        #[test]
        fn lease_lines_are_sanitised() {
            let line = lease_line(&format!("{KEY} alice@laptop"), RequestId(7), worker(1)).unwrap();
            assert_eq!(line, format!("{KEY} corral-lease request=7 worker={}", worker(1)));
            assert_eq!(owner(line.as_bytes()), Some((RequestId(7), worker(1))));
            for bad in [
                "",
                "ssh-ed25519",
                "ssh-foo AAAAC3NzaC1lZDI1NTE5AAAAIBm3",
                "command=\"sh\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm3hWqdYf0b",
                "ssh-ed25519 AAAA,C3NzaC1lZDI1NTE5AAAAIBm3hWqdYf0b",
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm3hWqdYf0b\nssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAB",
            ] {
                assert!(lease_line(bad, RequestId(1), worker(1)).is_err(), "{bad:?}");
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
            let line = lease_line(KEY, RequestId(3), worker(1)).unwrap();
            let added = with_lease(FOREIGN, &line, RequestId(3), worker(1)).unwrap();
            assert_eq!(added, [format!("{line}\n").as_bytes(), FOREIGN].concat());
            assert_eq!(with_lease(&added, &line, RequestId(3), worker(1)), None, "adding twice changes nothing");
            assert_eq!(without_leases(&added, worker(1), None).unwrap(), FOREIGN, "removing gives the file back");
            assert_eq!(with_lease(b"", &line, RequestId(3), worker(1)).unwrap(), format!("{line}\n").as_bytes());
        }

        #[test]
        fn a_new_lease_replaces_stale_lines_of_its_worker_only() {
            let old = lease_line(OTHER, RequestId(2), worker(1)).unwrap();
            let neighbour = lease_line(OTHER, RequestId(9), worker(2)).unwrap();
            let content = format!("# hand\n{old}\n{neighbour}\n");
            let line = lease_line(KEY, RequestId(3), worker(1)).unwrap();
            let updated = with_lease(content.as_bytes(), &line, RequestId(3), worker(1)).unwrap();
            assert_eq!(String::from_utf8(updated).unwrap(), format!("{line}\n# hand\n{neighbour}\n"));
            // The same request with a different key (a resent command with a
            // new key cannot happen, but the file must hold one line).
            let other = lease_line(OTHER, RequestId(3), worker(1)).unwrap();
            let twice = format!("{line}\n{line}\n");
            let updated = with_lease(twice.as_bytes(), &other, RequestId(3), worker(1)).unwrap();
            assert_eq!(String::from_utf8(updated).unwrap(), format!("{other}\n"));
            let updated = with_lease(twice.as_bytes(), &line, RequestId(3), worker(1)).unwrap();
            assert_eq!(String::from_utf8(updated).unwrap(), format!("{line}\n"), "a duplicate goes");
        }

        #[test]
        fn removing_takes_only_our_lines() {
            let mine = lease_line(KEY, RequestId(3), worker(1)).unwrap();
            let neighbour = lease_line(OTHER, RequestId(4), worker(2)).unwrap();
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
            dir
        }

        #[test]
        fn editing_a_file_creates_it_and_keeps_its_mode() {
            let dir = temp_dir();
            let path = dir.join(".ssh").join("authorized_keys");
            let line = lease_line(KEY, RequestId(3), worker(1)).unwrap();
            assert!(edit(&path, None, |c| with_lease(c, &line, RequestId(3), worker(1))).unwrap());
            assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
            assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777, 0o700);
            assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{line}\n"));
            assert!(!edit(&path, None, |c| with_lease(c, &line, RequestId(3), worker(1))).unwrap());

            let mut content = FOREIGN.to_vec();
            content.extend_from_slice(format!("\n{line}\n").as_bytes());
            std::fs::write(&path, &content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
            assert!(edit(&path, None, |c| without_leases(c, worker(1), None)).unwrap());
            assert_eq!(std::fs::read(&path).unwrap(), [FOREIGN, b"\n"].concat());
            assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o640, "mode kept");
            let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
            assert_eq!(left.len(), 1, "no temporary file left behind");
            std::fs::remove_dir_all(&dir).unwrap();
        }

        #[test]
        fn symbolic_links_are_refused() {
            let dir = temp_dir();
            let target = dir.join("target");
            std::fs::write(&target, "secret\n").unwrap();
            let path = dir.join("authorized_keys");
            std::os::unix::fs::symlink(&target, &path).unwrap();
            let line = lease_line(KEY, RequestId(3), worker(1)).unwrap();
            let err = edit(&path, None, |c| with_lease(c, &line, RequestId(3), worker(1))).unwrap_err();
            assert!(err.to_string().contains("symbolic link"), "{err}");
            assert_eq!(std::fs::read_to_string(&target).unwrap(), "secret\n");

            let elsewhere = dir.join("elsewhere");
            std::fs::create_dir(&elsewhere).unwrap();
            std::os::unix::fs::symlink(&elsewhere, dir.join(".ssh")).unwrap();
            let err = edit(&dir.join(".ssh/authorized_keys"), None, |c| with_lease(c, &line, RequestId(3), worker(1)))
                .unwrap_err();
            assert!(err.to_string().contains("not a directory"), "{err}");
            assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
            std::fs::remove_dir_all(&dir).unwrap();
        }

        #[test]
        fn removing_from_a_missing_file_creates_nothing() {
            let dir = temp_dir();
            let path = dir.join(".ssh").join("authorized_keys");
            assert!(!edit(&path, None, |c| without_leases(c, worker(1), None)).unwrap());
            assert!(!path.parent().unwrap().exists());
            std::fs::remove_dir_all(&dir).unwrap();
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
             authorized_keys = \"{}\"\n[worker.hooks]\n{hooks}",
            keys.display()
        );
        let (config, _) = AgentConfig::parse(&text, std::path::Path::new("/agent.toml")).unwrap();
        (Host::new(&config), config.workers[0].uuid)
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
        let (one, two) = (lease_line(key, RequestId(1), uuid).unwrap(), lease_line(key, RequestId(2), uuid).unwrap());
        let other = lease_line(key, RequestId(3), WorkerId(uuid::Uuid::from_u128(7))).unwrap();
        std::fs::write(&keys, format!("{one}\n# mine\n{two}\n{other}\n")).unwrap();

        assert_eq!(host.execute(uuid, &Action::Revoke { request: RequestId(1) }).await, Outcome::ok());
        assert_eq!(std::fs::read_to_string(&keys).unwrap(), format!("# mine\n{two}\n{other}\n"));
        assert!(host.execute(uuid, &Action::Prepare).await.ok);
        assert_eq!(std::fs::read_to_string(&keys).unwrap(), format!("# mine\n{other}\n"));
        assert!(marker.exists(), "the prepare hook ran");

        let bad = Action::StartLease { request: RequestId(4), public_key: "command=\"x\" ssh-ed25519 AAAA".into() };
        let outcome = host.execute(uuid, &bad).await;
        assert!(outcome.message.starts_with("the lease's public key is unusable"), "{outcome:?}");
        // Nothing listens on port 1: no host key, no lease.
        let good = Action::StartLease { request: RequestId(4), public_key: key.into() };
        let outcome = host.execute(uuid, &good).await;
        assert!(outcome.message.starts_with("cannot read the SSH host key of 127.0.0.1:1"), "{outcome:?}");
        assert_eq!(std::fs::read_to_string(&keys).unwrap(), format!("# mine\n{other}\n"));
        std::fs::remove_dir_all(&dir).unwrap();
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
            [worker.hooks]\ninterrogate = 'sleep 3; echo {}'\n";
        let (config, _) = AgentConfig::parse(text, std::path::Path::new("/agent.toml")).unwrap();
        let host = Host::new(&config);
        let uuid = config.workers[0].uuid;
        let started = std::time::Instant::now();
        assert!(host.observe(uuid).await.is_empty());
        assert!(host.observe(uuid).await.is_empty());
        assert!(started.elapsed() < OBSERVE_WAIT * 2 + Duration::from_millis(500), "{:?}", started.elapsed());
    }
}
