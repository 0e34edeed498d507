//! The SSH session of `corral request acquire ID --ssh`.
//!
//! The lease's private key and a `known_hosts` file holding only the
//! worker's pinned host key go into a directory only the user can read,
//! `lease-ID` under `$XDG_RUNTIME_DIR/corral` (or `$TMPDIR/corral-UID`),
//! and the process becomes
//! `ssh -i KEY -o IdentitiesOnly=yes -p PORT -o StrictHostKeyChecking=yes
//! -o UserKnownHostsFile=FILE -o GlobalKnownHostsFile=/dev/null -- USER@HOST [COMMAND...]`.
//! The files stay while ssh runs (it reads them when it authenticates);
//! `corral request close ID` removes them, and the next acquire of the same
//! request replaces them.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use corral_core::RequestId;
use corral_proto::requests::AccessDetails;

/// How to run ssh.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// The ssh program (`ssh`, or `CORRAL_SSH`).
    pub program: String,
    /// Connect without checking the host key when the server has none.
    pub insecure_host_key: bool,
    /// Private key to use when the server has none (the request brought
    /// its own public key).
    pub identity: Option<PathBuf>,
    /// Remote command instead of a login shell.
    pub remote: Vec<String>,
}

/// The `known_hosts` host pattern of `host:port`.
pub fn known_hosts_pattern(host: &str, port: u16) -> String {
    if port == 22 { host.to_string() } else { format!("[{host}]:{port}") }
}

/// Writes the key files and builds the ssh command line.
pub fn command(details: &AccessDetails, options: &SshOptions) -> anyhow::Result<Command> {
    check_word("host", &details.host)?;
    check_word("username", &details.username)?;
    let host_key = match &details.host_key {
        Some(key) => Some(check_host_key(key)?),
        None if options.insecure_host_key => None,
        None => bail!(
            "the server knows no SSH host key for worker {}, so this connection could not be checked; \
             give --insecure-host-key to connect anyway",
            details.worker
        ),
    };
    let needs_files = details.private_key.is_some() || host_key.is_some();
    let dir = if needs_files { Some(private_lease_dir(details.request_id)?) } else { None };
    let mut command = Command::new(&options.program);
    match (&details.private_key, &options.identity, &dir) {
        (Some(key), _, Some(dir)) => {
            let file = dir.join("id_lease");
            write_secret(&file, key)?;
            command.arg("-i").arg(file).args(["-o", "IdentitiesOnly=yes"]);
        }
        (None, Some(identity), _) => {
            command.arg("-i").arg(identity).args(["-o", "IdentitiesOnly=yes"]);
        }
        _ => {}
    }
    command.arg("-p").arg(details.port.to_string());
    match (host_key, &dir) {
        (Some(key), Some(dir)) => {
            let file = dir.join("known_hosts");
            write_secret(&file, &format!("{} {key}\n", known_hosts_pattern(&details.host, details.port)))?;
            command
                .args(["-o", "StrictHostKeyChecking=yes", "-o"])
                .arg(format!("UserKnownHostsFile={}", file.display()));
        }
        _ => {
            command.args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]);
        }
    }
    command.args(["-o", "GlobalKnownHostsFile=/dev/null", "--"]);
    command.arg(format!("{}@{}", details.username, details.host));
    command.args(&options.remote);
    Ok(command)
}

/// Becomes `command`; returns only if that fails.
pub fn exec(mut command: Command) -> anyhow::Result<()> {
    let program = command.get_program().to_string_lossy().into_owned();
    let err = command.exec();
    Err(err).with_context(|| format!("running {program}"))
}

/// Removes the key files of a request's lease, if any (best effort).
pub fn forget_lease(id: RequestId) {
    let dir = runtime_base().join(format!("lease-{id}"));
    if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Writes a secret to a file only the user may read, replacing the file; a
/// link planted at `path` is removed, never followed.
pub fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(err).with_context(|| format!("replacing {}", path.display()));
        }
        _ => {}
    }
    corral_api::serve::write_secret(path, text.strip_suffix('\n').unwrap_or(text))
}

/// `$XDG_RUNTIME_DIR/corral`, or `$TMPDIR/corral-UID`.
fn runtime_base() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() && dir.is_dir() => dir.join("corral"),
        _ => std::env::temp_dir().join(format!("corral-{}", nix::unistd::getuid())),
    }
}

/// The lease's directory, created mode 0700 and checked to be the user's
/// own (another user may have made the name first in a shared `/tmp`).
fn private_lease_dir(id: RequestId) -> anyhow::Result<PathBuf> {
    let base = runtime_base();
    private_dir(&base)?;
    let dir = base.join(format!("lease-{id}"));
    private_dir(&dir)?;
    Ok(dir)
}

fn private_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(err).with_context(|| format!("creating {}", dir.display()));
        }
        _ => {}
    }
    let meta = std::fs::symlink_metadata(dir).with_context(|| format!("checking {}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != nix::unistd::getuid().as_raw() || meta.mode() & 0o077 != 0 {
        bail!(
            "{} is not a directory of yours that only you can read (mode 0700); remove it and try again",
            dir.display()
        );
    }
    Ok(())
}

/// Host names and user names go on the ssh command line: no options, no
/// blanks.
fn check_word(what: &str, text: &str) -> anyhow::Result<()> {
    if text.is_empty() || text.starts_with('-') || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("the server sent an unusable {what} {text:?}");
    }
    Ok(())
}

/// `TYPE BASE64`, one line.
fn check_host_key(key: &str) -> anyhow::Result<&str> {
    let key = key.trim();
    let words: Vec<&str> = key.split_whitespace().collect();
    if words.len() != 2 || key.chars().any(|c| c.is_control()) {
        bail!("the server sent a host key that is not `TYPE BASE64`: {key:?}");
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use corral_core::{FencingToken, WorkerId};

    use super::*;

    fn details(private_key: Option<&str>, host_key: Option<&str>) -> AccessDetails {
        AccessDetails {
            request_id: RequestId(7),
            worker: WorkerId::random(),
            host: "lab.example".to_string(),
            port: 20001,
            username: "lab".to_string(),
            private_key: private_key.map(str::to_string),
            host_key: host_key.map(str::to_string),
            expires_at: SystemTime::now(),
            ssh_command: String::new(),
            fence: FencingToken(1),
        }
    }

    fn args(command: &Command) -> Vec<String> {
        command.get_args().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    fn options(insecure_host_key: bool) -> SshOptions {
        SshOptions { program: "ssh".into(), insecure_host_key, identity: None, remote: vec!["uname".into()] }
    }

    #[test]
    fn without_a_host_key_it_refuses_unless_told_otherwise() {
        let err = command(&details(None, None), &options(false)).unwrap_err();
        assert!(err.to_string().contains("--insecure-host-key"), "{err}");
        let args = args(&command(&details(None, None), &options(true)).unwrap());
        assert!(args.contains(&"StrictHostKeyChecking=no".to_string()));
        assert!(!args.contains(&"-i".to_string()));
        assert_eq!(&args[args.len() - 3..], ["--", "lab@lab.example", "uname"]);
    }

    #[test]
    fn hostile_answers_are_refused() {
        let mut bad = details(None, Some("ssh-ed25519 AAAA"));
        bad.host = "-oProxyCommand=x".to_string();
        assert!(command(&bad, &options(false)).is_err());
        assert!(command(&details(None, Some("ssh-ed25519 AAAA\n[h]:1 ssh-rsa B")), &options(false)).is_err());
    }

    #[test]
    fn known_hosts_patterns() {
        assert_eq!(known_hosts_pattern("h", 22), "h");
        assert_eq!(known_hosts_pattern("h", 2022), "[h]:2022");
    }
}
