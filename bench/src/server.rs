//! A real `corral serve` process for end-to-end scenarios: on its embedded
//! PostgreSQL in a throw-away data directory, on a loopback port the kernel
//! picks (`--listen 127.0.0.1:0`; the address is read from what the server
//! prints, by corral_testkit's [`CorralServer`], which the tests use too),
//! with a scenario-specific configuration. Also reads its CPU time and RSS
//! from `/proc`, and finds the cluster's socket and `pgbench` for baselines.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use corral_embedded_pg::EmbeddedPostgres;
use corral_testkit::{CorralServer, Process};

/// The `corral` binary: `CORRAL_BIN`, else this process (`corral bench`).
pub fn corral_binary() -> Result<PathBuf> {
    match std::env::var_os("CORRAL_BIN") {
        Some(path) => Ok(PathBuf::from(path)),
        None => std::env::current_exe().context("finding the corral binary"),
    }
}

pub struct ServerProcess {
    /// Started by [`ServerProcess::start`] or [`ServerProcess::restart`],
    /// until [`ServerProcess::wait_ready`] has read its address.
    spawned: Option<Process>,
    /// The server once it printed its address.
    server: Option<CorralServer>,
    /// `http://ADDR`, known once [`ServerProcess::wait_ready`] returned.
    pub url: String,
    pub dir: PathBuf,
    binary: PathBuf,
    /// `--listen`: `127.0.0.1:0` at first, then the address the first start
    /// printed, so that a restart comes back where agents and clients
    /// expect it (the kernel's pick, bound again: a plain restart).
    listen: String,
    /// `RUST_LOG` of the server, from the next (re)start on.
    log_filter: String,
}

impl ServerProcess {
    /// A fresh data directory under the system temp dir.
    pub fn fresh_dir(tag: &str) -> Result<PathBuf> {
        let dir = std::env::temp_dir().join(format!("corral-bench-{tag}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// Writes `config` (TOML, without `listen`/`data_dir`) and starts the
    /// server in `dir`; [`ServerProcess::wait_ready`] waits for it.
    /// `CORRAL_BENCH_SERVER_CONFIG` (lines `key = value`) overrides or adds
    /// top-level settings, for sizing experiments such as
    /// `CORRAL_BENCH_SERVER_CONFIG='actor_threads = 1'`.
    pub fn start(dir: &Path, config: &str) -> Result<ServerProcess> {
        let overrides = std::env::var("CORRAL_BENCH_SERVER_CONFIG").unwrap_or_default();
        let config = with_overrides(config, &overrides);
        std::fs::write(dir.join("corral.toml"), config).context("writing the server configuration")?;
        let mut server = ServerProcess {
            spawned: None,
            server: None,
            url: String::new(),
            dir: dir.to_path_buf(),
            binary: corral_binary()?,
            listen: "127.0.0.1:0".to_string(),
            // CORRAL_BENCH_SERVER_LOG: the server's RUST_LOG, for diagnosing a run.
            log_filter: std::env::var("CORRAL_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".to_string()),
        };
        server.spawn("serve.log")?;
        Ok(server)
    }

    /// Starts the server; its output goes to `log` in its directory too.
    fn spawn(&mut self, log: &str) -> Result<()> {
        let mut command = Command::new(&self.binary);
        command
            .arg("serve")
            .arg("--config")
            .arg(self.dir.join("corral.toml"))
            .args(["--listen", &self.listen, "--data-dir"])
            .arg(&self.dir)
            .env_remove("CORRAL_DATABASE_URL")
            .env("RUST_LOG", &self.log_filter);
        self.spawned = Some(Process::spawn("corral serve", &mut command, Some(&self.dir.join(log)))?);
        Ok(())
    }

    /// The server process, while it has not been stopped or killed here.
    fn process(&self) -> Option<&Process> {
        self.spawned.as_ref().or(self.server.as_ref().map(|server| &server.process))
    }

    fn process_mut(&mut self) -> Option<&mut Process> {
        self.spawned.as_mut().or(self.server.as_mut().map(|server| &mut server.process))
    }

    /// Sets the server's `RUST_LOG` (default `warn`) for the next
    /// [`ServerProcess::restart`].
    pub fn set_log_filter(&mut self, filter: &str) {
        self.log_filter = filter.to_string();
    }

    /// Starts the same server again (same directory, address,
    /// configuration).
    pub fn restart(&mut self, log: &str) -> Result<()> {
        self.stop()?;
        self.spawn(log)
    }

    /// `kill -9` of the server (its embedded PostgreSQL, a daemon, keeps
    /// running); waits until the process is gone. [`ServerProcess::restart`]
    /// then starts it again.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(process) = self.process_mut() {
            process.kill();
        }
        self.spawned = None;
        self.server = None;
        Ok(())
    }

    /// Whether the server process has exited (it was started and not
    /// stopped or killed by us).
    pub fn has_exited(&mut self) -> bool {
        self.process_mut().is_some_and(|process| process.try_wait().is_some())
    }

    pub fn pid(&self) -> Option<u32> {
        self.process().and_then(Process::pid)
    }

    /// Waits until the server prints its address, then until `/readyz`
    /// answers 200; returns how long that took.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        if let Some(spawned) = self.spawned.take() {
            let server = CorralServer::listening(spawned, timeout).await?;
            self.url = server.url().to_string();
            self.listen = server.listen();
            self.server = Some(server);
        }
        let Some(server) = self.server.as_mut() else { bail!("corral serve is not running") };
        server.wait_ready(timeout.saturating_sub(started.elapsed())).await?;
        Ok(started.elapsed())
    }

    pub fn token(&self, name: &str) -> Result<String> {
        let path = self.dir.join(name);
        Ok(std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?.trim().to_string())
    }

    /// User plus system CPU time of the server process so far, in seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let pid = self.pid().context("server not running")?;
        cpu_seconds(pid)
    }

    /// Resident set size of the server process, in MiB.
    pub fn rss_mb(&self) -> Result<f64> {
        let pid = self.pid().context("server not running")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("reading VmRSS")?;
        Ok(kb / 1024.0)
    }

    /// The embedded cluster the server runs (reused, not restarted).
    pub async fn postgres(&self) -> Result<EmbeddedPostgres> {
        EmbeddedPostgres::start(&self.dir).await.context("finding the server's embedded PostgreSQL")
    }

    /// SIGTERM (the server stops its database), then SIGKILL after 30 s.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(process) = self.process_mut() {
            process.terminate(Duration::from_secs(30));
        }
        self.spawned = None;
        self.server = None;
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.stop();
        // CORRAL_BENCH_KEEP=1 keeps the data directory (and serve.log).
        if std::env::var_os("CORRAL_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("kept {}", self.dir.display());
        }
    }
}

/// `config` with each `key = value` line of `overrides` replacing the line
/// that sets the same key, or appended (top-level keys only).
fn with_overrides(config: &str, overrides: &str) -> String {
    let key = |line: &str| line.split_once('=').map(|(k, _)| k.trim().to_string());
    let overrides: Vec<&str> = overrides.lines().map(str::trim).filter(|l| key(l).is_some()).collect();
    let mut lines: Vec<String> = config
        .lines()
        .filter(|line| !overrides.iter().any(|o| key(o).is_some() && key(o) == key(line)))
        .map(str::to_string)
        .collect();
    lines.extend(overrides.iter().map(|o| o.to_string()));
    lines.join("\n") + "\n"
}

/// User plus system CPU seconds of process `pid` (`/proc/PID/stat`).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the line.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).context("parsing /proc stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11).and_then(|v| v.parse().ok()).context("utime")?;
    let stime: f64 = fields.get(12).and_then(|v| v.parse().ok()).context("stime")?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    Ok((utime + stime) / ticks)
}

/// CPU seconds of the PostgreSQL cluster in `cluster_dir` (as found by
/// [`EmbeddedPostgres::cluster_dir`]): the postmaster's own time, the time of
/// its children that have exited (which it has reaped), and that of its live
/// children (backends, checkpointer, WAL writer ...). Compare two readings.
pub fn postgres_cpu_seconds(cluster_dir: &Path) -> Result<f64> {
    let pid_file = cluster_dir.join("postmaster.pid");
    let text = std::fs::read_to_string(&pid_file).with_context(|| format!("reading {}", pid_file.display()))?;
    let postmaster: u32 = text.lines().next().and_then(|l| l.trim().parse().ok()).context("postmaster pid")?;
    let fields = stat_fields(postmaster)?;
    let mut ticks =
        stat_ticks(&fields, 11)? + stat_ticks(&fields, 12)? + stat_ticks(&fields, 13)? + stat_ticks(&fields, 14)?;
    for entry in std::fs::read_dir("/proc").context("listing /proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        // A process may exit between listing and reading: skip it.
        let Ok(fields) = stat_fields(pid) else { continue };
        if fields.get(1).and_then(|ppid| ppid.parse::<u32>().ok()) == Some(postmaster) {
            ticks += stat_ticks(&fields, 11)? + stat_ticks(&fields, 12)?;
        }
    }
    Ok(ticks / clock_ticks_per_second())
}

/// The fields of `/proc/PID/stat` after the parenthesised command name
/// (index 0 is the state, 1 the parent pid, 11 utime, 12 stime, 13 cutime,
/// 14 cstime).
fn stat_fields(pid: u32) -> Result<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).context("parsing /proc stat")?;
    Ok(after.split_whitespace().map(str::to_string).collect())
}

fn stat_ticks(fields: &[String], index: usize) -> Result<f64> {
    fields.get(index).and_then(|v| v.parse().ok()).with_context(|| format!("field {index} of /proc stat"))
}

fn clock_ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64
}

/// The machine's 1-minute load average (`/proc/loadavg`), to record how
/// busy the machine was around a measurement.
pub fn load_average() -> Result<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").context("reading /proc/loadavg")?;
    text.split_whitespace().next().and_then(|v| v.parse().ok()).context("parsing /proc/loadavg")
}

/// A bearer-token client of the `/v1` API, for a scenario's setup and
/// checks (and for timing single calls). `create_user` and
/// `count_workers` go through `corral_client`; `get`/`post`/`all` stay raw
/// (status and JSON of any path) for the scenarios' checks and timings.
pub struct ApiClient {
    http: awc::Client,
    base: String,
    token: String,
    typed: corral_client::Client,
}

impl ApiClient {
    pub fn new(base: &str, token: &str) -> ApiClient {
        let http = awc::Client::builder().timeout(Duration::from_secs(60)).finish();
        let typed = corral_client::Client::plain(base, Some(token))
            .expect("a corral serve URL of this benchmark")
            .with_timeout(Duration::from_secs(60));
        ApiClient { http, base: base.to_string(), token: token.to_string(), typed }
    }

    /// Creates a user (admins): its token.
    pub async fn create_user(&self, name: &str) -> Result<String> {
        let user = corral_proto::users::NewUser { name: name.to_string(), ..Default::default() };
        let created = self.typed.create_user(&user).await.with_context(|| format!("creating the user {name}"))?;
        Ok(created.token)
    }

    /// How many workers are in `state`.
    pub async fn count_workers(&self, state: corral_core::WorkerState) -> Result<usize> {
        let filter = corral_client::workers::WorkerFilter { states: vec![state.to_string()], ..Default::default() };
        let paging = corral_client::Paging { all: true, ..Default::default() };
        let listing = self.typed.workers(&filter, &paging).await.context("listing the workers")?;
        if listing.truncated {
            bail!("more than {} pages of {state} workers", corral_client::MAX_PAGES);
        }
        Ok(listing.items.len())
    }

    /// `METHOD path` with an optional JSON body: the status and the JSON
    /// answer (null when empty).
    async fn call(
        &self,
        method: awc::http::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, serde_json::Value)> {
        let request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .insert_header(("Authorization", format!("Bearer {}", self.token)));
        let sent = match body {
            Some(body) => request.send_json(body).await,
            None => request.send().await,
        };
        let mut response = sent.map_err(|e| anyhow::anyhow!("{method} {path}: {e}"))?;
        let bytes = response.body().limit(64 << 20).await.map_err(|e| anyhow::anyhow!("{method} {path}: {e}"))?;
        let value = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).with_context(|| format!("{method} {path}: the answer is not JSON"))?
        };
        Ok((response.status().as_u16(), value))
    }

    /// `GET path`: the status and the body as text (for `/metrics`).
    pub async fn get_text(&self, path: &str) -> Result<(u16, String)> {
        let mut response = self
            .http
            .get(format!("{}{path}", self.base))
            .insert_header(("Authorization", format!("Bearer {}", self.token)))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("GET {path}: {e}"))?;
        let bytes = response.body().limit(64 << 20).await.map_err(|e| anyhow::anyhow!("GET {path}: {e}"))?;
        Ok((response.status().as_u16(), String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// `GET path`: the status and the JSON body (null when empty).
    pub async fn get(&self, path: &str) -> Result<(u16, serde_json::Value)> {
        self.call(awc::http::Method::GET, path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Result<(u16, serde_json::Value)> {
        self.call(awc::http::Method::POST, path, Some(body)).await
    }

    /// Every item of a paged listing (`path` without `limit` or `cursor`).
    pub async fn all(&self, path: &str) -> Result<Vec<serde_json::Value>> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..100_000 {
            let sep = if path.contains('?') { '&' } else { '?' };
            let page_path = match &cursor {
                Some(c) => format!("{path}{sep}limit=1000&cursor={c}"),
                None => format!("{path}{sep}limit=1000"),
            };
            let (status, page) = self.get(&page_path).await?;
            if status != 200 {
                bail!("{page_path} answered {status}: {page}");
            }
            items.extend(page["items"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return Ok(items),
            }
        }
        bail!("{path}: too many pages")
    }
}

/// Runs `pgbench` single-row updates against the cluster, `clients`
/// connections, for `seconds`; returns its TPS (every transaction one
/// committed single-row UPDATE: the cluster's commit ceiling at that
/// concurrency).
pub fn pgbench_tps(pg: &EmbeddedPostgres, clients: usize, seconds: u64) -> Result<f64> {
    let pgbench = pg.bin_dir().join("pgbench");
    let socket = pg.socket_dir().to_path_buf();
    let port = pg.port().to_string();
    let common = |cmd: &mut Command| {
        cmd.arg("-h").arg(&socket).args(["-p", &port, "-U", "corral"]);
    };
    let mut init = Command::new(&pgbench);
    init.args(["-i", "-q", "-s", "1"]);
    common(&mut init);
    let out = init.arg(corral_embedded_pg::CORRAL_DATABASE).output().context("running pgbench -i")?;
    if !out.status.success() {
        bail!("pgbench -i failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let script = std::env::temp_dir().join(format!("corral-pgbench-{}.sql", uuid::Uuid::new_v4().simple()));
    std::fs::write(
        &script,
        "\\set aid random(1, 100000)\nUPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n",
    )?;
    let mut run = Command::new(&pgbench);
    run.args(["-n", "-c", &clients.to_string(), "-j", "2", "-T", &seconds.to_string(), "-f"]).arg(&script);
    common(&mut run);
    let out = run.arg(corral_embedded_pg::CORRAL_DATABASE).output().context("running pgbench")?;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("pgbench failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    }
    let failed: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("number of failed transactions:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if failed > 0 {
        bail!("pgbench reported {failed} failed transactions");
    }
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("reading pgbench's tps")
}

#[cfg(test)]
mod tests {
    use super::with_overrides;

    #[test]
    fn overrides_replace_keys_and_add_new_ones() {
        let config = "http_workers = 2\npool_size = 48\n";
        let merged = with_overrides(config, "pool_size = 16\nactor_threads = 1\nnot a setting");
        assert_eq!(merged, "http_workers = 2\npool_size = 16\nactor_threads = 1\n");
        assert_eq!(with_overrides(config, ""), config);
    }
}
