//! Child processes of tests and benchmarks: [`Process`] runs one, collects
//! what it prints and kills it when dropped; [`CorralServer`] is a
//! `corral serve` that tells its address. Also [`temp_dir`], the tests'
//! temporary directories.
//!
//! A process's standard output and error are read line by line by two
//! threads, so that its pipes never fill; the lines are kept (the last
//! [`KEPT_LINES`]) for [`Process::wait_for_line`] and for failure messages,
//! and written to a log file when one is given. When a test fails while a
//! [`Process`] is alive, dropping it prints the lines it kept.
//!
//! Servers tell their address: `corral serve --listen 127.0.0.1:0` binds a
//! port the kernel picks and prints `corral listening on URL` on standard
//! error as soon as it is bound (a standby prints it too), and
//! [`CorralServer::start`] reads it. Nothing here picks a free port and
//! hopes; the one exception is [`racy_free_port`], for programs that cannot
//! bind port 0 and say which port they got.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};

/// How many of a process's latest output lines are kept in memory.
pub const KEPT_LINES: usize = 20_000;

/// How many kept lines a failed test prints per process.
const PRINTED_LINES: usize = 200;

/// What `corral serve` prints on standard error once its address is bound,
/// followed by its URL.
pub const LISTENING: &str = "corral listening on ";

/// The output lines of a process, shared with its reader threads.
#[derive(Default)]
struct Lines {
    kept: VecDeque<String>,
    /// Lines read before the first kept one (dropped from memory).
    dropped: usize,
    /// Streams (stdout, stderr) that reached their end.
    closed: usize,
}

/// A child process, killed (SIGKILL) and reaped when dropped; its process
/// group too when it leads one (a command given `process_group(0)`, as
/// chromedriver is, with the browser it starts).
pub struct Process {
    name: String,
    child: Option<Child>,
    lines: Arc<Mutex<Lines>>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process").field("name", &self.name).field("pid", &self.pid()).finish()
    }
}

impl Process {
    /// Spawns `command` with no standard input, reading its standard output
    /// and error (also into `log`, a file created here, when given). `name`
    /// names it in messages.
    pub fn spawn(name: &str, command: &mut Command, log: Option<&Path>) -> anyhow::Result<Process> {
        let log = match log {
            Some(path) => {
                let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
                Some(Arc::new(Mutex::new(file)))
            }
            None => None,
        };
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", command.get_program()))?;
        let lines = Arc::new(Mutex::new(Lines::default()));
        let stdout = child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>);
        let stderr = child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>);
        for stream in [stdout, stderr].into_iter().flatten() {
            let (lines, log) = (lines.clone(), log.clone());
            std::thread::Builder::new()
                .name(format!("{name} output"))
                .spawn(move || read_lines(stream, &lines, log.as_deref()))
                .context("starting an output reader thread")?;
        }
        Ok(Process { name: name.to_string(), child: Some(child), lines })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id, while it has not been killed.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status, once it has exited (and been reaped here).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|child| child.try_wait().ok().flatten())
    }

    /// The output lines kept so far (standard output and error, in the
    /// order they were read).
    pub fn output(&self) -> String {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let mut text = String::new();
        if lines.dropped > 0 {
            text.push_str(&format!("[{} earlier lines not kept]\n", lines.dropped));
        }
        for line in &lines.kept {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    /// Waits until a line printed from now on, or already kept, makes
    /// `found` return `Some`, and returns that value. Fails, with the output
    /// so far, if the process ends its output (exits) first or `timeout`
    /// passes; `what` says what was awaited.
    pub async fn wait_for_line<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut found: impl FnMut(&str) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut next = 0;
        loop {
            let ended = {
                let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
                let start = next.max(lines.dropped);
                for line in lines.kept.iter().skip(start - lines.dropped) {
                    if let Some(value) = found(line) {
                        return Ok(value);
                    }
                }
                next = lines.dropped + lines.kept.len();
                lines.closed == 2
            };
            if ended {
                bail!("{} ended its output before {what}; it printed:\n{}", self.name, self.output());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("{} did not print {what} within {timeout:?}; it printed:\n{}", self.name, self.output());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `kill -9` (of its group, if it leads one), and reaps it. Its output
    /// stays readable.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Ok(pid) = i32::try_from(child.id()) {
            let pid = nix::unistd::Pid::from_raw(pid);
            if nix::unistd::getpgid(Some(pid)) == Ok(pid) {
                let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGTERM, then waits up to `grace` for it to exit, then [`Process::kill`].
    pub fn terminate(&mut self, grace: Duration) {
        let Some(child) = self.child.as_mut() else { return };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        let started = std::time::Instant::now();
        while started.elapsed() < grace {
            if child.try_wait().ok().flatten().is_some() {
                self.child = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

/// Killed with its group and reaped; when the test is failing, its last
/// output lines are printed first.
impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let output = self.output();
            let lines: Vec<&str> = output.lines().collect();
            let tail = &lines[lines.len().saturating_sub(PRINTED_LINES)..];
            eprintln!("---- last output of {} ----\n{}", self.name, tail.join("\n"));
        }
    }
}

fn read_lines(stream: Box<dyn Read + Send>, lines: &Mutex<Lines>, log: Option<&Mutex<std::fs::File>>) {
    let mut reader = BufReader::new(stream);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match reader.read_until(b'\n', &mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if let Some(log) = log {
            let _ = log.lock().unwrap_or_else(|e| e.into_inner()).write_all(&buffer);
        }
        let line = String::from_utf8_lossy(&buffer).trim_end_matches(['\n', '\r']).to_string();
        let mut lines = lines.lock().unwrap_or_else(|e| e.into_inner());
        lines.kept.push_back(line);
        if lines.kept.len() > KEPT_LINES {
            lines.kept.pop_front();
            lines.dropped += 1;
        }
    }
    lines.lock().unwrap_or_else(|e| e.into_inner()).closed += 1;
}

/// A `corral serve` process and the address it printed.
#[derive(Debug)]
pub struct CorralServer {
    pub process: Process,
    url: String,
    addr: SocketAddr,
}

impl CorralServer {
    /// Spawns `command` (`corral serve ...`, typically with
    /// `--listen 127.0.0.1:0`) as [`Process::spawn`] does, and waits until
    /// it prints its address (`corral listening on URL`; a standby prints it
    /// too, before it leads). It may not be ready yet:
    /// [`CorralServer::wait_ready`].
    pub async fn start(command: &mut Command, log: Option<&Path>, timeout: Duration) -> anyhow::Result<CorralServer> {
        CorralServer::listening(Process::spawn("corral serve", command, log)?, timeout).await
    }

    /// Waits until `process`, a `corral serve` spawned already, prints its
    /// address; see [`CorralServer::start`].
    pub async fn listening(process: Process, timeout: Duration) -> anyhow::Result<CorralServer> {
        let url = process
            .wait_for_line("its address (`corral listening on URL`)", timeout, |line| {
                line.strip_prefix(LISTENING).map(|url| url.trim().to_string())
            })
            .await?;
        let addr = url
            .split_once("://")
            .and_then(|(_, addr)| addr.parse().ok())
            .with_context(|| format!("corral serve printed an address that does not parse: {url:?}"))?;
        Ok(CorralServer { process, url, addr })
    }

    /// `http://ADDR` or `https://ADDR`, as printed.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The address it bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `--listen` value of a restart on the same address.
    pub fn listen(&self) -> String {
        self.addr.to_string()
    }

    /// Waits until `GET /readyz` answers 200 (plain HTTP only: a TLS test
    /// checks through a client given its CA). Fails, with the output so far,
    /// when the server exits first or `timeout` passes.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        if !self.url.starts_with("http://") {
            bail!("wait_ready speaks plain HTTP; {} is not", self.url);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.try_wait() {
                bail!("corral serve exited ({status}) before it was ready; it printed:\n{}", self.process.output());
            }
            if tokio::time::timeout(Duration::from_secs(2), readyz(self.addr)).await == Ok(true) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("corral serve was not ready within {timeout:?}; it printed:\n{}", self.process.output());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `kill -9` of the server, reaped; a later [`CorralServer::start`]
    /// with `--listen` [`CorralServer::listen`] restarts it on the same
    /// address.
    pub fn kill(&mut self) {
        self.process.kill();
    }
}

/// Whether `GET /readyz` at `addr` answers 200.
async fn readyz(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else { return false };
    if stream.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n").await.is_err() {
        return false;
    }
    let mut status = [0u8; 12];
    stream.read_exact(&mut status).await.is_ok() && (&status == b"HTTP/1.1 200" || &status == b"HTTP/1.0 200")
}

/// A loopback TCP port that nothing was bound to a moment ago (bound to
/// port 0, read, released).
///
/// RACY: another process may take the port before it is used. It is for
/// the two cases where nothing better exists, each of which says why a
/// clash is harmless there:
/// - a program that cannot bind port 0 and tell the port it got (sshd
///   refuses `Port 0`): the caller starts it again on a new port when its
///   bind fails;
/// - an address where nothing must listen (a database URL whose host is
///   down): a clash makes the test fail on a different error; it never
///   makes it pass.
///
/// A `corral serve` never needs it: `--listen 127.0.0.1:0` and
/// [`CorralServer::start`].
pub fn racy_free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap_or_else(|e| panic!("binding 127.0.0.1:0: {e}"));
    listener.local_addr().unwrap_or_else(|e| panic!("reading the bound port: {e}")).port()
}

/// A fresh directory under the system's temporary directory, named
/// `corral-{what}-RANDOM`, removed with what it holds when dropped. Mode
/// 0755, not tempfile's 0700: when the tests run as root, the embedded
/// PostgreSQL runs as the `postgres` user, which must enter a data
/// directory made here.
pub fn temp_dir(what: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;

    tempfile::Builder::new()
        .prefix(&format!("corral-{what}-"))
        .permissions(std::fs::Permissions::from_mode(0o755))
        .tempdir()
        .unwrap_or_else(|e| panic!("creating a temporary directory: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_process_line_is_found_and_an_early_exit_says_what_it_printed() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo one; echo 'two 2' >&2; sleep 30"]);
        let mut process = Process::spawn("sh", &mut command, None).unwrap();
        let two = process
            .wait_for_line("two", Duration::from_secs(10), |line| line.strip_prefix("two ").map(str::to_string))
            .await
            .unwrap();
        assert_eq!(two, "2");
        assert!(process.output().contains("one\n"), "{}", process.output());
        let pid = process.pid().unwrap();
        process.kill();
        assert!(process.pid().is_none());
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "killed and reaped");

        let mut command = Command::new("sh");
        command.args(["-c", "echo failed to start >&2; exit 3"]);
        let process = Process::spawn("early", &mut command, None).unwrap();
        let err = process.wait_for_line("never", Duration::from_secs(10), |_| None::<()>).await.unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("ended its output") && message.contains("failed to start"), "{message}");
    }

    #[tokio::test]
    async fn waiting_for_a_line_is_bounded() {
        let mut command = Command::new("sleep");
        command.arg("30");
        let process = Process::spawn("sleep", &mut command, None).unwrap();
        let err = process.wait_for_line("a line", Duration::from_millis(100), |_| Some(())).await.unwrap_err();
        assert!(format!("{err:#}").contains("did not print a line within"), "{err:#}");
    }

    #[tokio::test]
    async fn a_server_address_is_read_from_its_listening_line() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo starting >&2; echo 'corral listening on http://127.0.0.1:4321' >&2; sleep 30"]);
        let server = CorralServer::start(&mut command, None, Duration::from_secs(10)).await.unwrap();
        assert_eq!(server.url(), "http://127.0.0.1:4321");
        assert_eq!(server.addr(), "127.0.0.1:4321".parse().unwrap());
        assert_eq!(server.listen(), "127.0.0.1:4321");
    }

    #[test]
    fn temporary_directories_are_enterable_and_go_when_dropped() {
        use std::os::unix::fs::PermissionsExt;

        let dir = temp_dir("kit");
        let path = dir.path().to_path_buf();
        assert!(path.file_name().unwrap().to_str().unwrap().starts_with("corral-kit-"), "{}", path.display());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o755);
        std::fs::write(path.join("file"), "x").unwrap();
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn racy_free_ports_are_not_zero() {
        assert_ne!(racy_free_port(), 0);
    }
}
