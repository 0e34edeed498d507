//! Starting a server: database (embedded or external), schema, first-start
//! tokens, actors, HTTP (over TLS when `tls_cert` and `tls_key` are set).
//! `corral serve` and the tests both use [`serve`].

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use anyhow::{Context, bail};
use corral_actors::startup::{Database, PoolSettings, new_token};
use corral_actors::{Clock, Corral};
use corral_embedded_pg::EmbeddedPostgres;
use tracing_actix_web::TracingLogger;

use crate::{AppState, Config};

/// The tokens written at first start.
#[derive(Clone)]
pub struct Tokens {
    pub admin: String,
    pub agent: String,
}

/// The tokens never show.
impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("admin", &"<redacted>").field("agent", &"<redacted>").finish()
    }
}

/// A started server.
pub struct Running {
    pub addr: SocketAddr,
    /// Whether HTTP runs over TLS (`https://`).
    pub tls: bool,
    pub corral: Corral,
    /// Read from the data directory, if present there.
    pub tokens: Option<Tokens>,
    server: actix_web::dev::Server,
    embedded: Option<Arc<EmbeddedPostgres>>,
    watchdog: Option<actix_web::rt::task::JoinHandle<()>>,
    leading: actix_web::rt::task::JoinHandle<()>,
    /// Set when this replica found its leader session gone.
    deposed: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("addr", &self.addr).field("tls", &self.tls).finish()
    }
}

impl Running {
    /// Handle to stop the HTTP server.
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Runs until the HTTP server stops (SIGINT/SIGTERM, or the handle),
    /// then stops the embedded database.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.server.await.context("running the HTTP server")?;
        self.leading.abort();
        // Hand over at once rather than after the session timeout.
        if let Err(err) = self.corral.close_own_session("server stopped").await {
            tracing::warn!(cause = %err, "could not close the server session");
        }
        if let Some(watchdog) = self.watchdog {
            watchdog.abort();
            let _ = watchdog.await;
        }
        if let Some(pg) = self.embedded {
            tracing::info!("stopping the embedded PostgreSQL");
            match Arc::try_unwrap(pg) {
                Ok(pg) => pg.stop().await.context("stopping the embedded PostgreSQL")?,
                Err(_) => tracing::warn!("the embedded PostgreSQL is still in use; leaving it running"),
            }
        }
        if self.deposed.load(std::sync::atomic::Ordering::SeqCst) {
            // A failure exit, so that the service manager starts it again
            // (as a standby, or leading if nobody else does).
            bail!(
                "this replica lost the scheduling leadership (its session expired: the database was unreachable \
                 for longer than session_timeout, or the process was paused); exiting to be restarted"
            );
        }
        Ok(())
    }
}

pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.token")
}

pub fn agent_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("agent.token")
}

/// Refuses a symbolic link at `path`: a secret is never written through
/// one, nor read through one.
fn refuse_symlink(path: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => bail!(
            "{} is a symbolic link; corral does not write or read its tokens through links (remove it)",
            path.display()
        ),
        _ => Ok(()),
    }
}

/// Creates `path` (which must not exist; a link planted there is not
/// followed) mode 0600 with `secret` and a newline, and syncs it. The one
/// way corral writes a secret to a file (tokens here, the CLI's lease keys).
pub fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    writeln!(file, "{secret}").with_context(|| format!("writing {}", path.display()))?;
    file.sync_all().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Removes what an interrupted start left at `path` (a regular file; a
/// link there is refused, not followed).
fn remove_leftover(path: &Path) -> anyhow::Result<()> {
    refuse_symlink(path)?;
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// The secret in `path`, not following a link there.
fn read_secret(path: &Path) -> Option<String> {
    use std::io::Read;

    let mut file =
        std::fs::OpenOptions::new().read(true).custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits()).open(path).ok()?;
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    Some(text.trim().to_string()).filter(|s| !s.is_empty())
}

/// On the first start against a database, creates the admin and agent
/// identities and writes their tokens (mode 0600) to the data directory.
async fn ensure_tokens(db: &Database, data_dir: &Path) -> anyhow::Result<Option<Tokens>> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let (admin_path, agent_path) = (admin_token_path(data_dir), agent_token_path(data_dir));
    let admin = new_token();
    let agent = new_token();
    let fresh_admin = data_dir.join(".admin.token.new");
    let fresh_agent = data_dir.join(".agent.token.new");
    for path in [&admin_path, &agent_path] {
        refuse_symlink(path)?;
    }
    for path in [&fresh_admin, &fresh_agent] {
        remove_leftover(path)?;
    }
    write_secret(&fresh_admin, &admin)?;
    write_secret(&fresh_agent, &agent)?;
    let created = db.bootstrap(&admin, &agent).await.context("creating the first admin and agent")?;
    if created {
        std::fs::rename(&fresh_admin, &admin_path).context("saving admin.token")?;
        std::fs::rename(&fresh_agent, &agent_path).context("saving agent.token")?;
        tracing::info!(admin = %admin_path.display(), agent = %agent_path.display(), "first start: tokens written");
    } else {
        let _ = std::fs::remove_file(&fresh_admin);
        let _ = std::fs::remove_file(&fresh_agent);
    }
    Ok(match (read_secret(&admin_path), read_secret(&agent_path)) {
        (Some(admin), Some(agent)) => Some(Tokens { admin, agent }),
        _ => None,
    })
}

/// The rustls configuration of the server: the certificate chain of
/// `cert` (its own certificate first) and the private key of `key`, both
/// PEM. Errors name the file.
fn server_tls(cert: &Path, key: &Path) -> anyhow::Result<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("cannot read the certificate chain in tls_cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        bail!("tls_cert {} holds no PEM certificate", cert.display());
    }
    let private_key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("cannot read the private key in tls_key {}: {e}", key.display()))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("setting up TLS")?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .with_context(|| format!("tls_key {} does not go with tls_cert {}", key.display(), cert.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// How often the embedded cluster is checked.
const WATCHDOG_PERIOD: Duration = Duration::from_secs(5);

/// Restarts the embedded cluster when it stops underneath the server
/// (killed, out of memory): the pool reconnects on its own once it is back.
fn watch_embedded(pg: Arc<EmbeddedPostgres>, data_dir: PathBuf) -> actix_web::rt::task::JoinHandle<()> {
    actix_web::rt::spawn(async move {
        loop {
            tokio::time::sleep(WATCHDOG_PERIOD).await;
            if pg.is_alive().await {
                continue;
            }
            tracing::error!(data_dir = %data_dir.display(), "the embedded PostgreSQL is not running; starting it again");
            match EmbeddedPostgres::start(&data_dir).await {
                Ok(_) => tracing::info!("the embedded PostgreSQL is running again"),
                Err(err) => tracing::error!(cause = %err, "could not start the embedded PostgreSQL"),
            }
        }
    })
}

/// What `corral serve --check-config` reports: one line per checked part.
/// Everything `serve` would refuse at start is refused here too, without
/// starting anything (no database, no listener).
pub fn check_config(config: &Config) -> anyhow::Result<Vec<String>> {
    let settings = config.settings()?;
    let mut report = vec![format!(
        "listen {} ({}); session_timeout {:?}, heartbeat_interval {:?}",
        config.listen,
        if config.tls_cert.is_some() { "https" } else { "http, no TLS" },
        settings.session_timeout,
        settings.heartbeat_interval
    )];
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        server_tls(cert, key)?;
        report.push(format!("tls_cert {} and tls_key {} load and match", cert.display(), key.display()));
    } else if !config.listen.ip().is_loopback() {
        report.push(format!(
            "WARNING: no TLS on the non-loopback address {}: tokens and keys cross the network in clear",
            config.listen
        ));
    }
    match &config.database_url {
        Some(url) => {
            let described = Database::describe_url(url).context("reading the database URL")?;
            if described.hosts.len() > 1 && !described.read_write {
                bail!(
                    "the database URL names several hosts ({}) without target_session_attrs=read-write: corral \
                     could reach a standby; add target_session_attrs=read-write",
                    described.hosts.join(",")
                );
            }
            report.push(format!(
                "database: external, hosts {}{}",
                described.hosts.join(","),
                if described.read_write { ", target_session_attrs=read-write" } else { "" }
            ));
        }
        None => report.push(format!("database: embedded in {}", config.data_dir.display())),
    }
    Ok(report)
}

/// Starts everything. Must run inside an actix system.
pub async fn serve(config: Config, clock: Clock) -> anyhow::Result<Running> {
    let settings = config.settings()?;
    // Bad TLS files stop the start before anything else runs.
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(server_tls(cert, key)?),
        _ => None,
    };
    let (url, embedded) = match &config.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let pg = EmbeddedPostgres::start(&config.data_dir).await.context("starting the embedded PostgreSQL")?;
            (pg.connection_string(corral_embedded_pg::CORRAL_DATABASE), Some(Arc::new(pg)))
        }
    };
    let pool = PoolSettings {
        max_size: config.pool_size.max(2),
        wait_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
    };
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::default());
    let db = Database::connect(&url, &pool, metrics.clone())
        .await
        .context("connecting to the database and applying the schema")?;
    let tokens = ensure_tokens(&db, &config.data_dir).await?;
    // Hold the address before leading: it proves no other live process of
    // this replica runs (see leadership::lead).
    let listener =
        std::net::TcpListener::bind(config.listen).with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr().context("reading the listen address")?;
    // The bound address (the port the kernel picked for `--listen
    // 127.0.0.1:0`), printed before leading so that a standby's address is
    // known too: tests and the benchmarks read it (corral_testkit::process).
    eprintln!("corral listening on {}://{addr}", if tls.is_some() { "https" } else { "http" });
    let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
    let name = format!("{host}/{addr}");
    // While this replica waits as a standby, its address answers 503 at
    // once, so that agents and clients given several server URLs move on
    // to the leader instead of waiting for a timeout.
    let standby = crate::leadership::answer_as_standby(listener.try_clone().context("sharing the listener")?)?;
    let led = db.lead(&name, settings.session_timeout, settings.heartbeat_interval).await;
    standby.abort();
    let _ = standby.await;
    let session = led.context("taking the scheduling leadership")?;
    let heartbeat = settings.heartbeat_interval;
    let corral = db.start(settings, clock, session).await.context("rebuilding the live system")?;

    let state = web::Data::new(AppState {
        corral: corral.clone(),
        config: config.clone(),
        limits: crate::limits::Limits::from_config(&config),
        metrics,
        metrics_access: config.metrics_access()?,
    });
    let max_body = config.max_body;
    let server = HttpServer::new(move || {
        App::new()
            .wrap(TracingLogger::default())
            .app_data(state.clone())
            .configure(|cfg| crate::configure(cfg, max_body))
    })
    .workers(config.http_workers.max(1))
    .shutdown_timeout(5);
    let with_tls = tls.is_some();
    let server = match tls {
        Some(tls) => server.listen_rustls_0_23(listener, tls),
        None => server.listen(listener),
    }
    .with_context(|| format!("listening on {addr}"))?;
    let server = server.run();
    let handle = server.handle();
    let deposed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let leading = corral.keep_leading(heartbeat, {
        let deposed = deposed.clone();
        move || {
            deposed.store(true, std::sync::atomic::Ordering::SeqCst);
            actix_web::rt::spawn(async move { handle.stop(false).await });
        }
    });
    let scheme = if with_tls { "https" } else { "http" };
    if with_tls || addr.ip().is_loopback() {
        tracing::info!(%addr, %scheme, "corral is ready");
    } else {
        tracing::warn!(
            %addr,
            %scheme,
            "corral is ready WITHOUT TLS on a non-loopback address: tokens and lease private keys cross the \
             network in clear; set tls_cert and tls_key"
        );
    }
    let watchdog = embedded.as_ref().map(|pg| watch_embedded(pg.clone(), config.data_dir.clone()));
    Ok(Running { addr, tls: with_tls, corral, tokens, server, embedded, watchdog, leading, deposed })
}
