//! The configuration file of an agent on a hardware host (SPEC §9), loaded
//! once by `corral agent --config FILE` and passed down.
//!
//! ```toml
//! server = "http://corral.lab:8487"
//! token_file = "/etc/corral/agent.token"   # or: token = "..."
//! name = "rack-3"                          # default: this host's name
//! ca_file = "/etc/corral/lab-ca.pem"       # for an https:// server with the lab's own CA
//!
//! [[worker]]
//! uuid = "0b5f…"              # written back here when missing
//! caps = { device_type = "rpi4", sdcard = "yes" }
//! groups = ["kernel"]
//! ssh_addr = "10.0.0.7:22"
//! user = "lab"
//! authorized_keys = "/etc/corral/authorized_keys/lab"  # the default: /etc/corral/authorized_keys/USER
//! sshd_config = "/etc/ssh/sshd_config"  # the default: sshd's own
//! sshd_check = "warn"                   # or "refuse", or "off"
//! reset_account = false                 # true: kill the user's processes, re-create its home at prepare
//!
//! [worker.hooks]
//! prepare = "/usr/local/bin/reflash rpi4-1"
//! prepare_timeout = "10m"
//! interrogate = "/usr/local/bin/facts rpi4-1"
//! ```
//!
//! A worker without `uuid` gets a fresh v4 UUID at the first start, written
//! back into the file (the rest of the file, comments included, stays as it
//! was), so the worker keeps its identity across restarts. A relative
//! `token_file` or `ca_file` is relative to the configuration file's
//! directory.
//!
//! Lease keys live in `authorized_keys`, a file the lab user cannot write
//! (root-owned, in a root-owned directory), which must be the only
//! `AuthorizedKeysFile` sshd reads for the lab user, e.g.:
//!
//! ```text
//! Match User lab
//!     AuthorizedKeysFile /etc/corral/authorized_keys/%u
//! ```
//!
//! At start the agent asks `sshd -T` (with `sshd_config`, if given) which
//! files sshd reads for each lab user, and warns (`sshd_check = "warn"`) or
//! refuses to start (`"refuse"`) when it is not exactly that file, or when
//! the file's directory can be written by anyone but root.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_core::time::opt_duration;
use corral_core::{Caps, Groups, WorkerId};
use serde::Deserialize;

/// Problems with the configuration file, each naming the file (and the
/// field). A cause (an IO or TOML error ...) is the error's source: print
/// the chain (`{:#}` of anyhow, or [`crate::report::chain`]).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a valid agent configuration", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{}: {field}: {message}", path.display())]
    Invalid { path: PathBuf, field: String, message: String },
    #[error(
        "{}: could not write the generated worker uuids back (add them to the file yourself, in order: {uuids})",
        path.display()
    )]
    WriteBack {
        path: PathBuf,
        uuids: String,
        #[source]
        source: WriteBackError,
    },
    #[error("cannot read the agent token from {} (token_file of {})", path.display(), config.display())]
    TokenRead {
        path: PathBuf,
        config: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the agent token file {} (token_file of {}) is empty", path.display(), config.display())]
    TokenEmpty { path: PathBuf, config: PathBuf },
}

/// Why generated worker uuids could not be written into the file.
#[derive(Debug, thiserror::Error)]
pub enum WriteBackError {
    #[error("the file cannot be edited as TOML")]
    Edit(#[source] Box<toml_edit::TomlError>),
    #[error("the file has no worker array")]
    NoWorkers,
    #[error("worker is not an array of tables")]
    NotAnArray,
    #[error("worker #{0} is missing or not a table")]
    NotATable(usize),
    #[error("the rewritten file does not read back")]
    Reread(#[source] Box<ConfigError>),
    #[error("the rewritten file does not read back the same")]
    Differs,
    #[error("cannot replace the file")]
    Replace(#[source] io::Error),
}

/// An `ssh_addr` that is not `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected HOST:PORT (or [IPV6]:PORT), got {0:?}")]
pub struct SshAddrError(pub String);

/// The whole agent configuration, validated, with every worker's uuid.
#[derive(Clone)]
pub struct AgentConfig {
    /// Server URL, e.g. `http://corral.lab:8487`.
    pub server: String,
    /// Where the agent token comes from.
    pub token: TokenSource,
    /// Host name the agent registers as.
    pub name: String,
    /// PEM file of a CA that an `https://` server's certificate may chain
    /// to, besides the system's roots.
    pub ca_file: Option<PathBuf>,
    pub workers: Vec<WorkerConfig>,
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("server", &self.server)
            .field("token", &self.token)
            .field("name", &self.name)
            .field("ca_file", &self.ca_file)
            .field("workers", &self.workers)
            .finish()
    }
}

/// `token` (inline) or `token_file`.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenSource {
    Inline(String),
    File(PathBuf),
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Inline(_) => f.write_str("Inline(<redacted>)"),
            TokenSource::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// One `[[worker]]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerConfig {
    pub uuid: WorkerId,
    pub caps: Caps,
    /// Groups given at the first registration; afterwards admins own them.
    pub groups: Groups,
    /// The SSH server that gives access to the device.
    pub ssh_addr: SshAddr,
    /// The lab user that leases log in as.
    pub user: String,
    /// The file the agent manages for `user` (default
    /// `/etc/corral/authorized_keys/USER`).
    pub authorized_keys: PathBuf,
    /// The sshd configuration that `sshd -T` checks; `None`: sshd's default.
    pub sshd_config: Option<PathBuf>,
    /// What a failed check of sshd's `AuthorizedKeysFile` does at start.
    pub sshd_check: SshdCheck,
    /// At prepare: kill the lab user's processes and re-create its home
    /// from `/etc/skel`.
    pub reset_account: bool,
    pub hooks: Hooks,
}

/// Where lease keys go when `authorized_keys` is not given: one
/// root-owned file per lab user.
pub const DEFAULT_KEYS_DIR: &str = "/etc/corral/authorized_keys";

/// `sshd_check`: what the agent does at start when sshd may read lease
/// keys from a file the lab user controls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SshdCheck {
    /// Log a warning and start.
    #[default]
    Warn,
    /// Do not start.
    Refuse,
    /// Do not check (sshd runs elsewhere, or is not OpenSSH).
    Off,
}

/// `HOST:PORT` of an SSH server (`[V6ADDR]:PORT` for IPv6; port 22 when
/// left out).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SshAddr {
    pub host: String,
    pub port: u16,
}

impl SshAddr {
    pub fn parse(text: &str) -> Result<SshAddr, SshAddrError> {
        let text = text.trim();
        let bad = || SshAddrError(text.to_string());
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(bad)?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':').ok_or_else(bad)?)),
            }
        } else {
            match text.rsplit_once(':') {
                Some((host, _)) if host.contains(':') => return Err(bad()),
                Some((host, port)) => (host, Some(port)),
                None => (text, None),
            }
        };
        let port = match port {
            None => 22,
            Some(port) => port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?,
        };
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '%');
        if host.is_empty() || !host.chars().all(allowed) || host.starts_with('-') {
            return Err(bad());
        }
        Ok(SshAddr { host: host.to_string(), port })
    }
}

impl fmt::Display for SshAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The hooks a worker needs, as they are needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HookKind {
    Prepare,
    HealthCheck,
    PowerCycle,
    Maintenance,
    Interrogate,
}

impl HookKind {
    /// Every hook, in the order of `[worker.hooks]`.
    pub const ALL: [HookKind; 5] =
        [HookKind::Prepare, HookKind::HealthCheck, HookKind::PowerCycle, HookKind::Maintenance, HookKind::Interrogate];

    /// Its key in `[worker.hooks]`, also the `CORRAL_ACTION` the hook sees.
    pub fn name(self) -> &'static str {
        match self {
            HookKind::Prepare => "prepare",
            HookKind::HealthCheck => "healthcheck",
            HookKind::PowerCycle => "power_cycle",
            HookKind::Maintenance => "maintenance",
            HookKind::Interrogate => "interrogate",
        }
    }

    /// How long the hook may run when its `*_timeout` is not given.
    /// Interrogation and health checks are frequent and quick; preparing,
    /// power cycling and maintenance may reflash a device.
    pub fn default_timeout(self) -> Duration {
        match self {
            HookKind::Prepare | HookKind::PowerCycle | HookKind::Maintenance => Duration::from_secs(300),
            HookKind::HealthCheck | HookKind::Interrogate => Duration::from_secs(30),
        }
    }
}

/// `[worker.hooks]`: shell commands (run with `sh -c`), each with an
/// optional timeout.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Makes the worker fresh after a lease (reflash, reset the lab user ...).
    pub prepare: Option<String>,
    #[serde(default, with = "opt_duration")]
    pub prepare_timeout: Option<Duration>,
    /// Exits 0 when the worker is usable.
    pub healthcheck: Option<String>,
    #[serde(default, with = "opt_duration")]
    pub healthcheck_timeout: Option<Duration>,
    /// Power cycles the device.
    pub power_cycle: Option<String>,
    #[serde(default, with = "opt_duration")]
    pub power_cycle_timeout: Option<Duration>,
    /// Puts the device into maintenance.
    pub maintenance: Option<String>,
    #[serde(default, with = "opt_duration")]
    pub maintenance_timeout: Option<Duration>,
    /// Prints a JSON object of observed facts (battery, temperature,
    /// device_attached, healthy, error ...), sent with heartbeats.
    pub interrogate: Option<String>,
    #[serde(default, with = "opt_duration")]
    pub interrogate_timeout: Option<Duration>,
}

impl Hooks {
    /// The command and the timeout of `kind` as written.
    fn written(&self, kind: HookKind) -> (Option<&str>, Option<Duration>) {
        let (command, timeout) = match kind {
            HookKind::Prepare => (&self.prepare, self.prepare_timeout),
            HookKind::HealthCheck => (&self.healthcheck, self.healthcheck_timeout),
            HookKind::PowerCycle => (&self.power_cycle, self.power_cycle_timeout),
            HookKind::Maintenance => (&self.maintenance, self.maintenance_timeout),
            HookKind::Interrogate => (&self.interrogate, self.interrogate_timeout),
        };
        (command.as_deref(), timeout)
    }

    /// The command of `kind` and how long it may run, if there is one.
    pub fn get(&self, kind: HookKind) -> Option<(&str, Duration)> {
        let (command, timeout) = self.written(kind);
        command.map(|c| (c, timeout.unwrap_or_else(|| kind.default_timeout())))
    }

    /// The first mistake, as (field, message).
    fn validate(&self) -> Result<(), (String, String)> {
        HookKind::ALL.into_iter().try_for_each(|kind| self.validate_one(kind))
    }

    fn validate_one(&self, kind: HookKind) -> Result<(), (String, String)> {
        let (command, timeout) = self.written(kind);
        let name = kind.name();
        if command.is_some_and(|c| c.trim().is_empty()) {
            return Err((format!("hooks.{name}"), "must not be empty (leave it out for no hook)".to_string()));
        }
        if timeout.is_some_and(|t| t.is_zero()) {
            return Err((format!("hooks.{name}_timeout"), "must be longer than zero".to_string()));
        }
        if timeout.is_some() && command.is_none() {
            return Err((format!("hooks.{name}_timeout"), format!("given without a {name} hook")));
        }
        Ok(())
    }
}

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    server: String,
    token: Option<String>,
    token_file: Option<PathBuf>,
    name: Option<String>,
    ca_file: Option<PathBuf>,
    #[serde(default, rename = "worker")]
    workers: Vec<FileWorker>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWorker {
    uuid: Option<WorkerId>,
    #[serde(default)]
    caps: BTreeMap<String, String>,
    #[serde(default)]
    groups: BTreeSet<String>,
    ssh_addr: String,
    user: String,
    authorized_keys: Option<PathBuf>,
    sshd_config: Option<PathBuf>,
    #[serde(default)]
    sshd_check: SshdCheck,
    #[serde(default)]
    reset_account: bool,
    #[serde(default)]
    hooks: Hooks,
}

impl AgentConfig {
    /// Reads and validates `path`; a worker without `uuid` gets one, written
    /// back into the file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let (config, generated) = AgentConfig::parse(&text, path)?;
        if generated.is_empty() {
            return Ok(config);
        }
        let uuids = generated.iter().map(|(_, uuid)| uuid.to_string()).collect::<Vec<_>>().join(", ");
        let write_back = || -> Result<(), WriteBackError> {
            let updated = with_uuids(&text, &generated)?;
            // Paranoia: what we write must read back as the same workers.
            let (reread, missing) =
                AgentConfig::parse(&updated, path).map_err(|e| WriteBackError::Reread(Box::new(e)))?;
            if !missing.is_empty() || reread.workers != config.workers {
                return Err(WriteBackError::Differs);
            }
            replace_file(path, updated.as_bytes()).map_err(WriteBackError::Replace)
        };
        write_back().map_err(|source| ConfigError::WriteBack {
            path: path.to_path_buf(),
            uuids: uuids.clone(),
            source,
        })?;
        tracing::info!(config = %path.display(), uuids = %uuids, "generated worker uuids written back");
        Ok(config)
    }

    /// Parses and validates the text of a configuration file read from
    /// `path` (used in messages and to resolve a relative `token_file`).
    /// Workers without a uuid get a fresh one, returned with their index so
    /// the caller can write them back.
    pub fn parse(text: &str, path: &Path) -> Result<(AgentConfig, Vec<(usize, WorkerId)>), ConfigError> {
        let file: FileConfig =
            toml::from_str(text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })?;
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };

        let server = file.server.trim().trim_end_matches('/').to_string();
        if !(server.starts_with("http://") || server.starts_with("https://")) || server.contains(char::is_whitespace) {
            return Err(invalid("server", format!("must be an http:// or https:// URL, got {:?}", file.server)));
        }
        let token = match (file.token, file.token_file) {
            (Some(_), Some(_)) => return Err(invalid("token", "give token or token_file, not both".to_string())),
            (None, None) => return Err(invalid("token", "give token or token_file".to_string())),
            (Some(token), None) if token.trim().is_empty() => {
                return Err(invalid("token", "must not be empty".to_string()));
            }
            (Some(token), None) => TokenSource::Inline(token.trim().to_string()),
            (None, Some(file)) => {
                let base = path.parent().unwrap_or(Path::new("."));
                TokenSource::File(if file.is_absolute() { file } else { base.join(file) })
            }
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let ca_file = file.ca_file.map(|ca| if ca.is_absolute() { ca } else { base.join(ca) });
        let name = match file.name {
            Some(name) if name.trim().is_empty() => return Err(invalid("name", "must not be empty".to_string())),
            Some(name) => name.trim().to_string(),
            None => host_name(),
        };
        if file.workers.is_empty() {
            return Err(invalid("worker", "at least one [[worker]] table is needed".to_string()));
        }

        let mut workers = Vec::with_capacity(file.workers.len());
        let mut generated = Vec::new();
        let mut seen = HashSet::new();
        for (index, worker) in file.workers.into_iter().enumerate() {
            let at = |field: &str| format!("[[worker]] #{} {field}", index + 1);
            let uuid = match worker.uuid {
                Some(uuid) => uuid,
                None => {
                    let uuid = WorkerId(uuid::Uuid::new_v4());
                    generated.push((index, uuid));
                    uuid
                }
            };
            if !seen.insert(uuid) {
                return Err(invalid(&at("uuid"), format!("{uuid} is used by an earlier worker too")));
            }
            let caps = Caps::validated(worker.caps).map_err(|e| invalid(&at("caps"), e.to_string()))?;
            let groups = Groups::validated(worker.groups).map_err(|e| invalid(&at("groups"), e.to_string()))?;
            let ssh_addr = SshAddr::parse(&worker.ssh_addr).map_err(|e| invalid(&at("ssh_addr"), e.to_string()))?;
            let user = worker.user.trim().to_string();
            if !corral_core::ssh::valid_user_name(&user) {
                return Err(invalid(
                    &at("user"),
                    format!("not a user name (letters, digits, '.', '_', '-'; at most 32): {:?}", worker.user),
                ));
            }
            let authorized_keys = worker.authorized_keys.unwrap_or_else(|| Path::new(DEFAULT_KEYS_DIR).join(&user));
            let plain = |p: &Path| {
                p.is_absolute()
                    && p.file_name().is_some()
                    && !p
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir | std::path::Component::CurDir))
            };
            if !plain(&authorized_keys) {
                return Err(invalid(
                    &at("authorized_keys"),
                    format!("must be an absolute file path without . or .., got {authorized_keys:?}"),
                ));
            }
            if let Some(sshd_config) = &worker.sshd_config
                && !sshd_config.is_absolute()
            {
                return Err(invalid(&at("sshd_config"), format!("must be an absolute path, got {sshd_config:?}")));
            }
            worker.hooks.validate().map_err(|(field, message)| invalid(&at(&field), message))?;
            workers.push(WorkerConfig {
                uuid,
                caps,
                groups,
                ssh_addr,
                user,
                authorized_keys,
                sshd_config: worker.sshd_config,
                sshd_check: worker.sshd_check,
                reset_account: worker.reset_account,
                hooks: worker.hooks,
            });
        }
        Ok((AgentConfig { server, token, name, ca_file, workers }, generated))
    }
}

impl TokenSource {
    /// The token, read from its file now if it has one; `config` names the
    /// configuration file in messages.
    pub fn read(&self, config: &Path) -> Result<String, ConfigError> {
        match self {
            TokenSource::Inline(token) => Ok(token.clone()),
            TokenSource::File(path) => {
                let (path, config) = (path.clone(), config.to_path_buf());
                let token = match std::fs::read_to_string(&path) {
                    Ok(token) => token,
                    Err(source) => return Err(ConfigError::TokenRead { path, config, source }),
                };
                let token = token.trim();
                if token.is_empty() {
                    return Err(ConfigError::TokenEmpty { path, config });
                }
                Ok(token.to_string())
            }
        }
    }
}

/// `text` with `uuid = "..."` added to the given workers (by index),
/// everything else kept as written.
pub fn with_uuids(text: &str, uuids: &[(usize, WorkerId)]) -> Result<String, WriteBackError> {
    use toml_edit::{DocumentMut, Item, Value};

    let mut document: DocumentMut = text.parse().map_err(|e| WriteBackError::Edit(Box::new(e)))?;
    let workers = document.get_mut("worker").ok_or(WriteBackError::NoWorkers)?;
    for (index, uuid) in uuids {
        let uuid = uuid.to_string();
        let not_a_table = || WriteBackError::NotATable(index + 1);
        match workers {
            Item::ArrayOfTables(tables) => {
                tables.get_mut(*index).ok_or_else(not_a_table)?.insert("uuid", toml_edit::value(uuid));
            }
            Item::Value(Value::Array(array)) => match array.get_mut(*index) {
                Some(Value::InlineTable(table)) => {
                    table.insert("uuid", uuid.into());
                }
                _ => return Err(not_a_table()),
            },
            _ => return Err(WriteBackError::NotAnArray),
        }
    }
    Ok(document.to_string())
}

/// Replaces `path` (following a symbolic link to the real file) with
/// `contents` at once: a temporary file in the same directory, with the
/// original's permissions (and owner, when running as root), renamed over it.
fn replace_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};

    let path = std::fs::canonicalize(path)?;
    let metadata = std::fs::metadata(&path)?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = dir.join(format!(".{name}.corral-{}", uuid::Uuid::new_v4().simple()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp)?;
        file.write_all(contents)?;
        file.set_permissions(std::fs::Permissions::from_mode(metadata.mode() & 0o7777))?;
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::fchown(&file, Some(metadata.uid()), Some(metadata.gid()))?;
        }
        file.sync_all()?;
        std::fs::rename(&temp, &path)
    })();
    if written.is_err()
        && let Err(err) = std::fs::remove_file(&temp)
        && err.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(file = %temp.display(), cause = %err, "cannot remove a temporary file; remove it yourself");
    }
    written
}

/// This host's name, the agent's name when its file (or `corral agent
/// --simulate` without `--name`) gives none; `agent` (with a warning: two
/// such hosts would register as one) when it cannot be read.
pub fn host_name() -> String {
    match nix::unistd::gethostname().map(std::ffi::OsString::into_string) {
        Ok(Ok(name)) if !name.is_empty() => name,
        unusable => {
            let cause = match unusable {
                Err(err) => err.to_string(),
                _ => "it is empty or not UTF-8".to_string(),
            };
            tracing::warn!(cause = %cause, "cannot use this host's name; registering as \"agent\" (set name in the file)");
            "agent".to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/etc/corral/agent.toml";

    fn parse(text: &str) -> Result<(AgentConfig, Vec<(usize, WorkerId)>), ConfigError> {
        AgentConfig::parse(text, Path::new(PATH))
    }

    fn error(text: &str) -> String {
        parse(text).err().map(|e| crate::report::chain(&e)).unwrap_or_else(|| panic!("accepted:\n{text}"))
    }

    const FULL: &str = r#"
# The lab's agent.
server = "http://corral.lab:8487/"
token_file = "agent.token"
name = "rack-3"

[[worker]]
uuid = "0b5f3a3e-9c53-4c8e-9d0a-1f2e3d4c5b6a"
caps = { device_type = "rpi4", sdcard = "yes" }
groups = ["kernel"]
ssh_addr = "10.0.0.7:2222"
user = "lab"
authorized_keys = "/srv/keys/lab"

[worker.hooks]
prepare = "reflash rpi4-1"
prepare_timeout = "10m"
interrogate = "facts rpi4-1"

[[worker]]
caps = { device_type = "phone" }
ssh_addr = "[::1]"
user = "lab2"
"#;

    #[test]
    fn a_full_file_parses() {
        let (config, generated) = parse(FULL).unwrap();
        assert_eq!(config.server, "http://corral.lab:8487");
        assert_eq!(config.token, TokenSource::File(PathBuf::from("/etc/corral/agent.token")));
        assert_eq!(config.name, "rack-3");
        assert_eq!(config.workers.len(), 2);
        let first = &config.workers[0];
        assert_eq!(first.uuid.to_string(), "0b5f3a3e-9c53-4c8e-9d0a-1f2e3d4c5b6a");
        assert_eq!(first.caps.get("sdcard"), Some("yes"));
        assert!(first.groups.contains("kernel"));
        assert_eq!(first.ssh_addr, SshAddr { host: "10.0.0.7".into(), port: 2222 });
        assert_eq!(first.authorized_keys, PathBuf::from("/srv/keys/lab"));
        assert_eq!((first.sshd_check, first.reset_account, first.sshd_config.as_ref()), (SshdCheck::Warn, false, None));
        assert_eq!(first.hooks.get(HookKind::Prepare), Some(("reflash rpi4-1", Duration::from_secs(600))));
        assert_eq!(first.hooks.get(HookKind::Interrogate), Some(("facts rpi4-1", Duration::from_secs(30))));
        assert_eq!(first.hooks.get(HookKind::PowerCycle), None);
        let second = &config.workers[1];
        assert_eq!(second.ssh_addr, SshAddr { host: "::1".into(), port: 22 });
        assert_eq!(second.ssh_addr.to_string(), "[::1]:22");
        assert_eq!(second.authorized_keys, PathBuf::from("/etc/corral/authorized_keys/lab2"), "root-owned default");
        assert_eq!(generated, vec![(1, second.uuid)]);
        assert_eq!(second.uuid.0.get_version_num(), 4);
    }

    #[test]
    fn class9_debug_redacts_agent_config_token() {
        let text = FULL.replace("token_file = \"agent.token\"", "token = \"s3cr3t\"");
        let (config, _) = parse(&text).unwrap();
        assert_eq!(config.token.read(Path::new(PATH)).unwrap(), "s3cr3t");
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }

    #[test]
    fn the_ca_file_is_relative_to_the_config_file() {
        let (config, _) = parse(FULL).unwrap();
        assert_eq!(config.ca_file, None);
        let text = FULL.replace("name = \"rack-3\"", "name = \"rack-3\"\nca_file = \"lab-ca.pem\"");
        let (config, _) = parse(&text).unwrap();
        assert_eq!(config.ca_file, Some(PathBuf::from("/etc/corral/lab-ca.pem")));
        let text = FULL.replace("name = \"rack-3\"", "name = \"rack-3\"\nca_file = \"/srv/ca.pem\"");
        assert_eq!(parse(&text).unwrap().0.ca_file, Some(PathBuf::from("/srv/ca.pem")));
    }

    #[test]
    fn mistakes_name_the_file_and_the_field() {
        let cases = [
            (FULL.replace("name = \"rack-3\"", "nmae = \"rack-3\""), "unknown field `nmae`"),
            (FULL.replace("prepare_timeout", "prepare_timout"), "unknown field `prepare_timout`"),
            (FULL.replace("http://corral.lab:8487/", "corral.lab"), "server: must be an http://"),
            (FULL.replace("token_file = \"agent.token\"", ""), "token: give token or token_file"),
            (FULL.replace("name = ", "token = \"x\"\nname = "), "give token or token_file, not both"),
            (FULL.replace("10.0.0.7:2222", "10.0.0.7:http"), "[[worker]] #1 ssh_addr: expected HOST:PORT"),
            (FULL.replace("user = \"lab2\"", "user = \"a b\""), "[[worker]] #2 user: not a user name"),
            (FULL.replace("/srv/keys/lab", "keys/lab"), "[[worker]] #1 authorized_keys: must be an absolute"),
            (FULL.replace("/srv/keys/lab", "/srv/../lab"), "[[worker]] #1 authorized_keys: must be an absolute"),
            (FULL.replace("user = \"lab2\"", "user = \"-oProxyCommand=sh\""), "[[worker]] #2 user: not a user name"),
            (FULL.replace("user = \"lab2\"", "user = \"lab2\"\nsshd_check = \"maybe\""), "unknown variant `maybe`"),
            (FULL.replace("\"10m\"", "\"0s\""), "[[worker]] #1 hooks.prepare_timeout: must be longer than zero"),
            (FULL.replace("\"10m\"", "\"ten minutes\""), "prepare_timeout"),
            (FULL.replace("interrogate = \"facts rpi4-1\"", "interrogate = \" \""), "#1 hooks.interrogate: must not"),
            (FULL.replace("sdcard = \"yes\"", "sdcard = 1"), "caps"),
            (FULL.replace("caps = { device_type = \"phone\" }", "caps = { UUID = \"no\" }"), "#2 caps: the UUID"),
            (
                FULL.replace("caps = { device_type = \"phone\" }", "uuid = \"0b5f3a3e-9c53-4c8e-9d0a-1f2e3d4c5b6a\""),
                "#2 uuid: 0b5f3a3e-9c53-4c8e-9d0a-1f2e3d4c5b6a is used by an earlier worker too",
            ),
            ("server = \"http://x\"\ntoken = \"t\"\n".to_string(), "worker: at least one [[worker]]"),
        ];
        for (text, expected) in cases {
            let message = error(&text);
            assert!(message.starts_with(PATH), "{message}");
            assert!(message.contains(expected), "expected {expected:?} in {message:?}");
        }
    }

    #[test]
    fn ssh_addresses() {
        assert_eq!(SshAddr::parse("host.lab").unwrap(), SshAddr { host: "host.lab".into(), port: 22 });
        assert_eq!(SshAddr::parse("127.0.0.1:2200").unwrap().to_string(), "127.0.0.1:2200");
        assert_eq!(SshAddr::parse("[fe80::1%eth0]:22").unwrap().host, "fe80::1%eth0");
        for bad in ["", ":22", "host:0", "host:99999", "::1", "[::1", "[::1]22", "-oProxyCommand=x:22", "a b:22"] {
            assert!(SshAddr::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn uuids_are_written_back_and_nothing_else_changes() {
        let (config, generated) = parse(FULL).unwrap();
        let updated = with_uuids(FULL, &generated).unwrap();
        let uuid = config.workers[1].uuid;
        assert_eq!(updated, FULL.replace("user = \"lab2\"\n", &format!("user = \"lab2\"\nuuid = \"{uuid}\"\n")));
        let (reread, missing) = parse(&updated).unwrap();
        assert!(missing.is_empty());
        assert_eq!(reread.workers, config.workers);
    }

    #[test]
    fn uuids_are_written_back_into_inline_tables() {
        let text = "server = \"http://x\"\ntoken = \"t\"\n# workers\n\
                    worker = [\n  { ssh_addr = \"h:22\", user = \"u\" },\n]\n";
        let (config, generated) = parse(text).unwrap();
        let updated = with_uuids(text, &generated).unwrap();
        assert!(updated.starts_with("server = \"http://x\"\ntoken = \"t\"\n# workers\n"), "{updated}");
        let (reread, missing) = parse(&updated).unwrap();
        assert!(missing.is_empty());
        assert_eq!(reread.workers, config.workers);
    }

    #[test]
    fn load_writes_the_uuids_into_the_file_once() {
        let dir = std::env::temp_dir().join(format!("corral-agent-config-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.toml");
        std::fs::write(&path, FULL).unwrap();
        std::fs::write(dir.join("agent.token"), "tok\n").unwrap();
        let first = AgentConfig::load(&path).unwrap();
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(written.contains(&first.workers[1].uuid.to_string()), "{written}");
        assert!(written.starts_with("\n# The lab's agent.\n"), "{written}");
        let second = AgentConfig::load(&path).unwrap();
        assert_eq!(first.workers, second.workers);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), written, "loading again changes nothing");
        assert_eq!(second.token.read(&path).unwrap(), "tok");
        assert_eq!(second.token, TokenSource::File(dir.join("agent.token")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Input: a token file that is missing, then one that is empty. Must:
    /// name the token file and the configuration file; the IO cause is the
    /// source.
    #[test]
    fn token_file_errors_name_both_files() {
        let dir = std::env::temp_dir().join(format!("corral-agent-token-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let (token, config) = (dir.join("agent.token"), Path::new(PATH));
        let source = TokenSource::File(token.clone());
        let missing = source.read(config).expect_err("a missing token file is refused");
        assert!(
            matches!(&missing, ConfigError::TokenRead { source, .. } if source.kind() == io::ErrorKind::NotFound),
            "{missing:?}"
        );
        let message = crate::report::chain(&missing);
        let expected = format!("cannot read the agent token from {} (token_file of {PATH}): ", token.display());
        assert!(message.starts_with(&expected), "{message}");
        std::fs::write(&token, " \n").unwrap();
        let empty = source.read(config).expect_err("an empty token file is refused");
        assert!(matches!(&empty, ConfigError::TokenEmpty { path, .. } if *path == token), "{empty:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Input: a configuration file that does not exist. Must: a `Read`
    /// error naming it.
    #[test]
    fn a_missing_file_is_a_read_error_naming_it() {
        let path = std::env::temp_dir().join(format!("corral-agent-{}.toml", uuid::Uuid::new_v4().simple()));
        let err = AgentConfig::load(&path).expect_err("a missing file is refused");
        assert!(matches!(&err, ConfigError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound));
        assert!(crate::report::chain(&err).starts_with(&format!("cannot read {}: ", path.display())), "{err}");
    }

    /// Uuids go only into a worker table that is there.
    #[test]
    fn uuids_without_a_worker_table_are_refused() {
        let uuid = WorkerId(uuid::Uuid::from_u128(1));
        assert!(matches!(with_uuids("server = \"http://x\"\n", &[(0, uuid)]), Err(WriteBackError::NoWorkers)));
        let text = "server = \"http://x\"\n[[worker]]\nuser = \"lab\"\n";
        assert!(matches!(with_uuids(text, &[(1, uuid)]), Err(WriteBackError::NotATable(2))));
        assert!(matches!(with_uuids("worker = 3\n", &[(0, uuid)]), Err(WriteBackError::NotAnArray)));
        assert!(matches!(with_uuids("worker = [\n", &[(0, uuid)]), Err(WriteBackError::Edit(_))));
    }

    fn fuzz_cases() -> u32 {
        std::env::var("CORRAL_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(256)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(fuzz_cases()))]

        /// Arbitrary text, and arbitrary values in a valid file, never
        /// panic the parser.
        #[test]
        fn arbitrary_config_text_never_panics(text in proptest::prelude::any::<String>(),
                                              value in "[ -~\\n]{0,40}") {
            let _ = parse(&text);
            for field in ["user", "ssh_addr", "authorized_keys", "sshd_config", "sshd_check", "name", "server"] {
                let text = "server = \"http://x\"\ntoken = \"t\"\n[[worker]]\nssh_addr = \"h:1\"\nuser = \"lab\"\n";
                let _ = parse(&format!("{text}{field} = {value:?}\n"));
                let _ = parse(&format!("{text}{field} = {value}\n"));
            }
        }
    }
}
