//! The embedded PostgreSQL cluster that `corral serve` runs when no database URL is configured.
//!
//! corral does not ship PostgreSQL: it drives the server binaries installed on the machine (`initdb`, `pg_ctl`,
//! `postgres`, found by [`find_binaries`]) and keeps the cluster under its data directory:
//!
//! ```text
//! DATA_DIR/postgres/       the cluster (mode 0700, owned by the user PostgreSQL runs as)
//! DATA_DIR/postgres.log    the server log
//! DATA_DIR/postgres.lock   held while a process starts the cluster, so two starts do not race
//! DATA_DIR/run/            the unix socket directory (mode 0700), unless that path is too long (see below)
//! ```
//!
//! The server listens only on its unix socket (`listen_addresses = ''`): no TCP port can conflict, so tests run
//! many clusters side by side, and the port number 5432 is only part of the socket file name. Authentication is
//! `trust`, which is safe because the socket directory is 0700 and owned by the cluster's OS user (root, who
//! started corral, can still connect).
//!
//! PostgreSQL refuses to run as root. When corral runs as root (as CI does), `initdb` and `pg_ctl` run as the
//! unprivileged system user `postgres` (or, for an existing cluster, as the user that owns it) and the
//! directories above are handed to that user.
//!
//! `pg_ctl` daemonizes the postmaster, so a corral killed with SIGKILL leaves the server running; the next
//! [`EmbeddedPostgres::start`] finds it with `pg_ctl status` and reuses it. Dropping an [`EmbeddedPostgres`] does
//! not stop the server; [`EmbeddedPostgres::stop`] does.
//!
//! Settings that corral depends on are written at every start into `postgresql.conf`'s include file
//! `corral.conf` (so a moved data directory gets the right socket directory); `ALTER SYSTEM` still overrides them.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use nix::unistd::{Gid, Uid, User};
use sha2::{Digest, Sha256};
use tokio::process::Command;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};
use tracing::{debug, info};

/// Environment variable naming the directory of the PostgreSQL server binaries.
pub const PG_BIN_ENV: &str = "CORRAL_PG_BIN";

/// The database corral keeps its state in.
pub const CORRAL_DATABASE: &str = "corral";

/// The superuser that `initdb` creates and corral connects as.
const SUPERUSER: &str = "corral";

/// The port the server is configured with. Only the unix socket is open, so this is just the socket file name.
const DEFAULT_PORT: u16 = 5432;

/// `sizeof(sockaddr_un.sun_path)` on Linux is 108, including the terminating NUL.
const MAX_SOCKET_PATH_LEN: usize = 107;

/// The binaries a directory must contain to run a cluster.
const SERVER_BINARIES: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

const INITDB_TIMEOUT: Duration = Duration::from_secs(180);
/// `pg_ctl start/stop -t`: how long pg_ctl itself waits for the server.
const PG_CTL_WAIT_SECONDS: u64 = 60;
/// Upper bound for a whole pg_ctl invocation (its own wait plus slack).
const PG_CTL_TIMEOUT: Duration = Duration::from_secs(PG_CTL_WAIT_SECONDS + 30);
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const READY_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How many trailing lines of a log or command output an error message quotes.
const QUOTED_LINES: usize = 40;

/// Why the embedded cluster could not be found, prepared, started, reached or stopped.
///
/// Messages are written for the person running corral: they say what is missing and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "the PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found; looked in: {searched}. \
         Install them (`apt-get install postgresql` on Debian and Ubuntu), set {PG_BIN_ENV} to the directory \
         that contains them, or give corral a database URL"
    )]
    BinariesNotFound { searched: String },

    #[error(
        "{PG_BIN_ENV}={dir} does not contain `{missing}`; set {PG_BIN_ENV} to the directory of the PostgreSQL \
         server binaries (e.g. /usr/lib/postgresql/15/bin) or unset it"
    )]
    BinaryMissingInEnvDir { dir: PathBuf, missing: &'static str },

    #[error(
        "corral is running as root and PostgreSQL refuses to run as root, so the embedded database must run as \
         the system user `postgres`, but that user does not exist. Create it (`apt-get install postgresql` \
         creates it, or run `useradd --system postgres`), run corral as an unprivileged user, or give corral a \
         database URL"
    )]
    NoPostgresUser,

    #[error("could not look up the system user for the embedded database")]
    UserLookup(#[source] nix::Error),

    #[error(
        "the embedded database runs as the user `{user}` (PostgreSQL refuses to run as root), and that user \
         cannot enter {blocking}, so it cannot reach the data directory {data_dir}. Let it through, e.g. \
         `chmod o+x {blocking}`, or choose a data directory that it can reach"
    )]
    DataDirNotReachable { user: String, blocking: PathBuf, data_dir: PathBuf },

    #[error(
        "{path} already exists but is not a directory owned by corral or by the user the embedded database runs \
         as (its owner is uid {owner}); remove it"
    )]
    ForeignDirectory { path: PathBuf, owner: u32 },

    #[error("could not {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("could not run {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{program} did not finish within {} s and was killed", timeout.as_secs())]
    CommandTimedOut { program: PathBuf, timeout: Duration },

    #[error("initdb could not create the database cluster in {cluster_dir} ({status}); its output:\n{output}")]
    InitdbFailed { cluster_dir: PathBuf, status: ExitStatus, output: String },

    #[error(
        "`pg_ctl {action}` failed for the cluster in {cluster_dir} ({status}): {output}\n\
         last lines of the server log {log_file}:\n{log_tail}"
    )]
    PgCtlFailed {
        action: &'static str,
        cluster_dir: PathBuf,
        status: ExitStatus,
        output: String,
        log_file: PathBuf,
        log_tail: String,
    },

    #[error(
        "the embedded PostgreSQL server (socket directory {socket_dir}) did not accept connections within {} s; \
         last error: {last_error}; last lines of the server log {log_file}:\n{log_tail}",
        READY_TIMEOUT.as_secs()
    )]
    NotReady { socket_dir: PathBuf, last_error: String, log_file: PathBuf, log_tail: String },

    #[error("could not create the database `{CORRAL_DATABASE}` in the embedded cluster")]
    CreateDatabase(#[source] tokio_postgres::Error),

    #[error("a background task preparing the embedded database failed")]
    Background(#[source] tokio::task::JoinError),
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> EmbeddedError {
    let path = path.to_path_buf();
    move |source| EmbeddedError::Io { action, path, source }
}

/// The OS user that PostgreSQL runs as when corral runs as root.
#[derive(Clone, Debug)]
struct ClusterUser {
    name: String,
    uid: Uid,
    gid: Gid,
}

/// Paths of one cluster, all absolute.
#[derive(Clone, Debug)]
struct Layout {
    data_dir: PathBuf,
    cluster_dir: PathBuf,
    log_file: PathBuf,
    lock_file: PathBuf,
    socket_dir: PathBuf,
}

/// A running PostgreSQL cluster under corral's data directory.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    bin_dir: PathBuf,
    layout: Layout,
    /// `Some` when corral runs as root and the server runs as this user; `None` when it runs as corral's user.
    user: Option<ClusterUser>,
    port: u16,
    reused: bool,
}

impl EmbeddedPostgres {
    /// Initialises (first time) and starts the cluster under `data_dir`, or reuses it if it is already running
    /// (e.g. a previous server was killed with SIGKILL and left the postmaster running). Creates the database
    /// `corral` if missing. Returns once the server accepts connections.
    pub async fn start(data_dir: &Path) -> Result<EmbeddedPostgres, EmbeddedError> {
        let data_dir = data_dir.to_path_buf();
        let (bin_dir, layout, user, lock) = blocking(move || {
            let bin_dir = find_binaries()?;
            let layout = Layout::create(&data_dir)?;
            let lock = lock_file(&layout.lock_file)?;
            let user = cluster_user(&layout.cluster_dir)?;
            prepare_runtime_paths(&layout, user.as_ref())?;
            Ok((bin_dir, layout, user, lock))
        })
        .await?;

        let mut pg = EmbeddedPostgres { bin_dir, layout, user, port: DEFAULT_PORT, reused: false };
        if let Some(user) = &pg.user {
            pg.check_data_dir_reachable(user).await?;
        }
        pg.start_locked().await?;
        drop(lock);
        Ok(pg)
    }

    /// tokio-postgres connection string in key=value form for the database `dbname`, e.g.
    /// `host=/abs/socket/dir port=5432 user=corral dbname=corral`. Prefer [`EmbeddedPostgres::config`] when the
    /// socket directory may not be UTF-8.
    pub fn connection_string(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user={} dbname={}",
            quote_conn_value(&self.layout.socket_dir.to_string_lossy()),
            self.port,
            quote_conn_value(SUPERUSER),
            quote_conn_value(dbname)
        )
    }

    /// The same connection settings as [`EmbeddedPostgres::connection_string`], as a tokio-postgres config.
    pub fn config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config.host_path(&self.layout.socket_dir).port(self.port).user(SUPERUSER).dbname(dbname);
        config
    }

    /// The directory holding the server's unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.layout.socket_dir
    }

    /// The server's port, which (with only the unix socket open) names the socket file `.s.PGSQL.<port>`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the PostgreSQL binaries in use (benchmarks find `pgbench` there).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The cluster's data directory (`DATA_DIR/postgres`).
    pub fn cluster_dir(&self) -> &Path {
        &self.layout.cluster_dir
    }

    /// The server log (`DATA_DIR/postgres.log`).
    pub fn log_file(&self) -> &Path {
        &self.layout.log_file
    }

    /// Whether [`EmbeddedPostgres::start`] found the server already running instead of starting it.
    pub fn was_already_running(&self) -> bool {
        self.reused
    }

    /// Whether the server is running now (`pg_ctl status`); errors count as
    /// not running.
    pub async fn is_alive(&self) -> bool {
        self.is_running().await.unwrap_or(false)
    }

    /// Stops the server (`pg_ctl stop -m fast`) and waits until it has exited. Holds the start lock meanwhile,
    /// so that a `start` on the same directory waits and then starts afresh instead of adopting a server that is
    /// going away.
    pub async fn stop(self) -> Result<(), EmbeddedError> {
        let lock_path = self.layout.lock_file.clone();
        let _lock = blocking(move || lock_file(&lock_path)).await?;
        info!(cluster_dir = %self.layout.cluster_dir.display(), "stopping embedded PostgreSQL");
        let wait = PG_CTL_WAIT_SECONDS.to_string();
        let output = self
            .run(
                "pg_ctl",
                &["stop", "-m", "fast", "-w", "-t", &wait, "-D"],
                Some(&self.layout.cluster_dir),
                PG_CTL_TIMEOUT,
            )
            .await?;
        if output.status.success() || !self.is_running().await? {
            return Ok(());
        }
        Err(self.pg_ctl_failed("stop", &output).await)
    }

    /// Holding the start lock: reuses the running server or initialises and starts one, then waits for it and
    /// creates the `corral` database.
    async fn start_locked(&mut self) -> Result<(), EmbeddedError> {
        let cluster_dir = self.layout.cluster_dir.clone();
        if self.is_running().await? {
            info!(cluster_dir = %cluster_dir.display(), "reusing running cluster");
            self.reused = true;
            self.adopt_running_settings().await;
        } else {
            if !tokio::fs::try_exists(cluster_dir.join("PG_VERSION"))
                .await
                .map_err(io_error("inspect", &cluster_dir))?
            {
                self.initialise().await?;
            }
            self.write_settings().await?;
            info!(cluster_dir = %cluster_dir.display(), socket_dir = %self.layout.socket_dir.display(), "starting");
            let wait = PG_CTL_WAIT_SECONDS.to_string();
            let log_file = self.layout.log_file.to_string_lossy().into_owned();
            let output = self
                .run("pg_ctl", &["start", "-w", "-t", &wait, "-l", &log_file, "-D"], Some(&cluster_dir), PG_CTL_TIMEOUT)
                .await?;
            if !output.status.success() {
                return Err(self.pg_ctl_failed("start", &output).await);
            }
        }
        let client = self.wait_until_ready().await?;
        create_corral_database(&client).await
    }

    /// `pg_ctl status`: 0 means running, 3 not running, 4 no usable data directory.
    async fn is_running(&self) -> Result<bool, EmbeddedError> {
        let cluster_dir = &self.layout.cluster_dir;
        if !tokio::fs::try_exists(cluster_dir.join("PG_VERSION")).await.map_err(io_error("inspect", cluster_dir))? {
            return Ok(false);
        }
        let output = self.run("pg_ctl", &["status", "-D"], Some(cluster_dir), PG_CTL_TIMEOUT).await?;
        match output.status.code() {
            Some(0) => Ok(true),
            Some(3) => Ok(false),
            _ => Err(self.pg_ctl_failed("status", &output).await),
        }
    }

    /// A running server may have been started with other settings (e.g. before the data directory moved): take
    /// its port and socket directory from `postmaster.pid` (line 4: port, line 5: first socket directory).
    async fn adopt_running_settings(&mut self) {
        let pid_file = self.layout.cluster_dir.join("postmaster.pid");
        let Ok(contents) = tokio::fs::read_to_string(&pid_file).await else {
            return;
        };
        let lines: Vec<&str> = contents.lines().collect();
        if let Some(port) = lines.get(3).and_then(|line| line.trim().parse::<u16>().ok()) {
            self.port = port;
        }
        if let Some(dir) = lines.get(4).map(|line| line.trim()).filter(|dir| dir.starts_with('/')) {
            self.layout.socket_dir = PathBuf::from(dir);
        }
    }

    /// Creates the cluster with initdb in `postgres.init` and renames it to `postgres` once complete, so that an
    /// interrupted initdb never leaves a half-made cluster behind that would later fail to start.
    async fn initialise(&self) -> Result<(), EmbeddedError> {
        let init_dir = self.layout.data_dir.join("postgres.init");
        info!(cluster_dir = %self.layout.cluster_dir.display(), "initialising cluster");
        {
            let init_dir = init_dir.clone();
            let user = self.user.clone();
            blocking(move || {
                match fs::remove_dir_all(&init_dir) {
                    Ok(()) => debug!(dir = %init_dir.display(), "removed the leftover of an interrupted initdb"),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_error("remove the leftover of an interrupted initdb", &init_dir)(e)),
                }
                create_private_dir(&init_dir, user.as_ref())
            })
            .await?;
        }
        let output = self
            .run(
                "initdb",
                &["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C", "-D"],
                Some(&init_dir),
                INITDB_TIMEOUT,
            )
            .await?;
        if !output.status.success() {
            return Err(EmbeddedError::InitdbFailed {
                cluster_dir: self.layout.cluster_dir.clone(),
                status: output.status,
                output: tail(&combined_output(&output), QUOTED_LINES),
            });
        }
        let conf = init_dir.join("postgresql.conf");
        let mut text = tokio::fs::read_to_string(&conf).await.map_err(io_error("read", &conf))?;
        text.push_str("\n# Added by corral: settings it needs, rewritten at every start.\ninclude = 'corral.conf'\n");
        tokio::fs::write(&conf, text).await.map_err(io_error("write", &conf))?;
        tokio::fs::rename(&init_dir, &self.layout.cluster_dir).await.map_err(io_error("rename", &init_dir))
    }

    /// Writes `corral.conf`, included from `postgresql.conf`, with the settings corral relies on.
    async fn write_settings(&self) -> Result<(), EmbeddedError> {
        let socket_dir = self.layout.socket_dir.to_string_lossy();
        let socket_dirs = format!("\"{}\"", socket_dir.replace('"', "\"\""));
        let text = format!(
            "# Written by corral at every start of the embedded cluster; override with ALTER SYSTEM.\n\
             listen_addresses = ''\n\
             port = {DEFAULT_PORT}\n\
             unix_socket_directories = {}\n\
             max_connections = 300\n\
             shared_buffers = 128MB\n\
             # Durability is a product requirement: an acknowledged change must survive a crash.\n\
             fsync = on\n\
             synchronous_commit = on\n\
             log_min_messages = warning\n",
            quote_conf_value(&socket_dirs)
        );
        let path = self.layout.cluster_dir.join("corral.conf");
        let user = self.user.clone();
        blocking(move || {
            let mut options = OpenOptions::new();
            options.write(true).create(true).truncate(true).mode(0o600);
            let mut file = options.open(&path).map_err(io_error("create", &path))?;
            io::Write::write_all(&mut file, text.as_bytes()).map_err(io_error("write", &path))?;
            give_to(&path, user.as_ref())
        })
        .await
    }

    /// Retries connecting to the `postgres` database until the server accepts connections or
    /// [`READY_TIMEOUT`] passes.
    async fn wait_until_ready(&self) -> Result<Client, EmbeddedError> {
        let config = self.config("postgres");
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let mut last_error = String::from("no attempt finished");
        loop {
            match tokio::time::timeout_at(deadline, config.connect(NoTls)).await {
                Ok(Ok((client, connection))) => {
                    tokio::spawn(async move {
                        if let Err(error) = connection.await {
                            debug!(cause = %error, "embedded PostgreSQL set-up connection closed");
                        }
                    });
                    return Ok(client);
                }
                Ok(Err(error)) => last_error = error.to_string(),
                Err(_) => {}
            }
            if tokio::time::Instant::now() + READY_POLL_INTERVAL >= deadline {
                return Err(EmbeddedError::NotReady {
                    socket_dir: self.layout.socket_dir.clone(),
                    last_error,
                    log_file: self.layout.log_file.clone(),
                    log_tail: self.log_tail().await,
                });
            }
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
    }

    /// Checks that the cluster user can enter the data directory, by starting `pg_ctl --version` there as that
    /// user (the working directory is entered after the user switch, so this sees exactly what PostgreSQL will).
    async fn check_data_dir_reachable(&self, user: &ClusterUser) -> Result<(), EmbeddedError> {
        let output = self.run("pg_ctl", &["--version"], None, PG_CTL_TIMEOUT).await;
        let reachable = match output {
            Ok(output) => output.status.success(),
            Err(EmbeddedError::Spawn { source, .. }) if source.kind() == io::ErrorKind::PermissionDenied => false,
            Err(other) => return Err(other),
        };
        if reachable {
            return Ok(());
        }
        let data_dir = self.layout.data_dir.clone();
        let blocking_dir = first_unreachable_ancestor(&data_dir, user).unwrap_or_else(|| data_dir.clone());
        Err(EmbeddedError::DataDirNotReachable { user: user.name.clone(), blocking: blocking_dir, data_dir })
    }

    /// Runs one of the PostgreSQL binaries as the cluster user, in the data directory, with `path` as the last
    /// argument, capturing its output; killed after `timeout`.
    async fn run(
        &self,
        program: &str,
        args: &[&str],
        path: Option<&Path>,
        timeout: Duration,
    ) -> Result<Output, EmbeddedError> {
        let program = self.bin_dir.join(program);
        let mut command = Command::new(&program);
        command.args(args);
        if let Some(path) = path {
            command.arg(path);
        }
        command
            .current_dir(&self.layout.data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Settings that would otherwise leak from corral's environment into the server.
        for variable in ["PGDATA", "PGPORT", "PGHOST", "PGHOSTADDR", "PGOPTIONS"] {
            command.env_remove(variable);
        }
        if let Some(user) = &self.user {
            command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        debug!(program = %program.display(), ?args, "running");
        match tokio::time::timeout(timeout, command.output()).await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(source)) => Err(EmbeddedError::Spawn { program, source }),
            Err(_) => Err(EmbeddedError::CommandTimedOut { program, timeout }),
        }
    }

    async fn pg_ctl_failed(&self, action: &'static str, output: &Output) -> EmbeddedError {
        EmbeddedError::PgCtlFailed {
            action,
            cluster_dir: self.layout.cluster_dir.clone(),
            status: output.status,
            output: tail(&combined_output(output), QUOTED_LINES),
            log_file: self.layout.log_file.clone(),
            log_tail: self.log_tail().await,
        }
    }

    async fn log_tail(&self) -> String {
        match tokio::fs::read(&self.layout.log_file).await {
            Ok(bytes) => tail(&String::from_utf8_lossy(&bytes), QUOTED_LINES),
            Err(error) => format!("(could not read it: {error})"),
        }
    }
}

/// Finds the PostgreSQL server binaries: the directory in `CORRAL_PG_BIN`; else `pg_config --bindir` if it
/// contains them; else the highest `/usr/lib/postgresql/*/bin` that does; else `/usr/local/pgsql/bin`.
///
/// Blocks briefly (runs `pg_config`, reads directories).
pub fn find_binaries() -> Result<PathBuf, EmbeddedError> {
    if let Some(dir) = std::env::var_os(PG_BIN_ENV) {
        let dir = PathBuf::from(dir);
        return match SERVER_BINARIES.into_iter().find(|binary| !dir.join(binary).is_file()) {
            None => Ok(dir),
            Some(missing) => Err(EmbeddedError::BinaryMissingInEnvDir { dir, missing }),
        };
    }
    let mut searched = Vec::new();
    match std::process::Command::new("pg_config").arg("--bindir").stdin(Stdio::null()).stderr(Stdio::null()).output() {
        Ok(output) if output.status.success() => {
            let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
            if has_server_binaries(&dir) {
                return Ok(dir);
            }
            searched.push(format!("{} (from pg_config --bindir)", dir.display()));
        }
        _ => searched.push("pg_config --bindir (no pg_config on PATH)".to_owned()),
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = name.to_str()?.split('.').map(|part| part.parse().ok()).collect::<Option<Vec<u32>>>()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.iter().rev().find(|(_, dir)| has_server_binaries(dir)) {
        return Ok(dir.clone());
    }
    searched.push("/usr/lib/postgresql/*/bin".to_owned());
    let local = PathBuf::from("/usr/local/pgsql/bin");
    if has_server_binaries(&local) {
        return Ok(local);
    }
    searched.push(local.display().to_string());
    Err(EmbeddedError::BinariesNotFound { searched: searched.join(", ") })
}

fn has_server_binaries(dir: &Path) -> bool {
    SERVER_BINARIES.iter().all(|binary| dir.join(binary).is_file())
}

impl Layout {
    /// Creates the data directory and the directories and files the server needs, absolute paths throughout.
    /// The cluster directory itself is made by [`EmbeddedPostgres::initialise`].
    fn create(data_dir: &Path) -> Result<Layout, EmbeddedError> {
        fs::create_dir_all(data_dir).map_err(io_error("create the data directory", data_dir))?;
        let data_dir = data_dir.canonicalize().map_err(io_error("resolve the data directory", data_dir))?;
        Ok(Layout {
            cluster_dir: data_dir.join("postgres"),
            log_file: data_dir.join("postgres.log"),
            lock_file: data_dir.join("postgres.lock"),
            socket_dir: socket_dir_for(&data_dir),
            data_dir,
        })
    }
}

/// `DATA_DIR/run`, unless the socket path `DATA_DIR/run/.s.PGSQL.5432` would exceed the 107 bytes a unix
/// socket path may have. Then the socket goes to `/tmp/corral-pg-<first 16 hex digits of SHA-256(DATA_DIR)>`,
/// which is stable for a data directory, so a restarted corral finds the socket of a server it left running.
fn socket_dir_for(data_dir: &Path) -> PathBuf {
    let preferred = data_dir.join("run");
    let socket = preferred.join(format!(".s.PGSQL.{DEFAULT_PORT}"));
    if socket.as_os_str().len() <= MAX_SOCKET_PATH_LEN {
        return preferred;
    }
    let digest = Sha256::digest(data_dir.as_os_str().as_bytes());
    PathBuf::from(format!("/tmp/corral-pg-{}", hex::encode(&digest[..8])))
}

/// Takes the exclusive start lock; blocks until no other process holds it.
fn lock_file(path: &Path) -> Result<File, EmbeddedError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_error("open the lock file", path))?;
    file.lock().map_err(io_error("lock", path))?;
    Ok(file)
}

/// `None` when corral runs unprivileged (the server runs as corral's user). As root: the owner of an existing
/// cluster, else the system user `postgres`.
fn cluster_user(cluster_dir: &Path) -> Result<Option<ClusterUser>, EmbeddedError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let owner = match fs::metadata(cluster_dir) {
        Ok(metadata) if metadata.uid() != 0 => {
            User::from_uid(Uid::from_raw(metadata.uid())).map_err(EmbeddedError::UserLookup)?
        }
        Ok(_) => None,
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_error("inspect", cluster_dir)(e)),
    };
    let user = match owner {
        Some(user) => user,
        None => User::from_name("postgres").map_err(EmbeddedError::UserLookup)?.ok_or(EmbeddedError::NoPostgresUser)?,
    };
    Ok(Some(ClusterUser { name: user.name, uid: user.uid, gid: user.gid }))
}

/// Creates a directory with mode 0700 (or makes an existing one 0700) owned by the cluster user.
fn create_private_dir(path: &Path, user: Option<&ClusterUser>) -> Result<(), EmbeddedError> {
    match DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_error("create", path)(e)),
    }
    let metadata = fs::symlink_metadata(path).map_err(io_error("inspect", path))?;
    let allowed_owners = [nix::unistd::geteuid().as_raw(), user.map_or(u32::MAX, |user| user.uid.as_raw())];
    if !metadata.is_dir() || !allowed_owners.contains(&metadata.uid()) {
        return Err(EmbeddedError::ForeignDirectory { path: path.to_path_buf(), owner: metadata.uid() });
    }
    give_to(path, user)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io_error("set permissions of", path))
}

/// Hands a file or directory to the cluster user (when corral runs as root).
fn give_to(path: &Path, user: Option<&ClusterUser>) -> Result<(), EmbeddedError> {
    let Some(user) = user else {
        return Ok(());
    };
    nix::unistd::chown(path, Some(user.uid), Some(user.gid))
        .map_err(|errno| io_error("change the owner of", path)(io::Error::from(errno)))
}

/// Prepares the socket directory and the log file; runs before every start and reuse.
fn prepare_runtime_paths(layout: &Layout, user: Option<&ClusterUser>) -> Result<(), EmbeddedError> {
    create_private_dir(&layout.socket_dir, user)?;
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&layout.log_file)
        .map_err(io_error("create the server log", &layout.log_file))?;
    give_to(&layout.log_file, user)
}

/// The first directory from `/` down to `dir` that `user` may not search according to its mode bits (the child
/// runs with only the user's primary group: std drops supplementary groups when it switches user as root).
fn first_unreachable_ancestor(dir: &Path, user: &ClusterUser) -> Option<PathBuf> {
    let mut ancestors: Vec<&Path> = dir.ancestors().collect();
    ancestors.reverse();
    ancestors.into_iter().find_map(|ancestor| {
        let metadata = fs::metadata(ancestor).ok()?;
        let bit = if metadata.uid() == user.uid.as_raw() {
            0o100
        } else if metadata.gid() == user.gid.as_raw() {
            0o010
        } else {
            0o001
        };
        (metadata.mode() & bit == 0).then(|| ancestor.to_path_buf())
    })
}

async fn create_corral_database(client: &Client) -> Result<(), EmbeddedError> {
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&CORRAL_DATABASE])
        .await
        .map_err(EmbeddedError::CreateDatabase)?
        .is_some();
    if exists {
        return Ok(());
    }
    match client.batch_execute(&format!("CREATE DATABASE {CORRAL_DATABASE}")).await {
        Ok(()) => Ok(()),
        Err(error) if error.code() == Some(&SqlState::DUPLICATE_DATABASE) => Ok(()),
        Err(error) => Err(EmbeddedError::CreateDatabase(error)),
    }
}

/// Runs blocking file-system work off the async threads.
async fn blocking<T, F>(work: F) -> Result<T, EmbeddedError>
where
    F: FnOnce() -> Result<T, EmbeddedError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work).await.map_err(EmbeddedError::Background)?
}

/// Quotes a value for a libpq/tokio-postgres key=value connection string when it needs quoting.
fn quote_conn_value(value: &str) -> String {
    if !value.is_empty() && !value.chars().any(|c| c.is_whitespace() || c == '\'' || c == '\\') {
        return value.to_owned();
    }
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Quotes a string value for postgresql.conf.
fn quote_conf_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

fn combined_output(output: &Output) -> String {
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    text.trim().to_owned()
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_data_dirs_keep_the_socket_inside() {
        assert_eq!(socket_dir_for(Path::new("/var/lib/corral")), PathBuf::from("/var/lib/corral/run"));
    }

    #[test]
    fn long_data_dirs_put_the_socket_in_tmp_under_a_stable_name() {
        let long = PathBuf::from(format!("/{}", "d".repeat(120)));
        let dir = socket_dir_for(&long);
        assert_eq!(dir, socket_dir_for(&long));
        assert!(dir.starts_with("/tmp") && dir.as_os_str().len() == "/tmp/corral-pg-".len() + 16, "{dir:?}");
    }

    #[test]
    fn connection_values_are_quoted_only_when_needed() {
        assert_eq!(quote_conn_value("/srv/corral/run"), "/srv/corral/run");
        assert_eq!(quote_conn_value("/a b/it's\\"), r"'/a b/it\'s\\'");
        let config: tokio_postgres::Config =
            format!("host={} dbname=x", quote_conn_value("/a b/it's\\")).parse().expect("parses");
        assert_eq!(config.get_hosts(), [tokio_postgres::config::Host::Unix(PathBuf::from("/a b/it's\\"))]);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
