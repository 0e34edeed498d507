//! Starting a server: database (embedded or external), schema, first-start
//! tokens, actors, HTTP. `corral serve` and the tests both use [`serve`].

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use anyhow::Context;
use corral_actors::{Clock, Corral};
use corral_db::embedded::EmbeddedPostgres;
use corral_db::{Db, PoolSettings};
use tracing_actix_web::TracingLogger;

use crate::auth::AuthCache;
use crate::{AppState, Config};

/// The tokens written at first start.
#[derive(Clone, Debug)]
pub struct Tokens {
    pub admin: String,
    pub agent: String,
}

/// A started server.
pub struct Running {
    pub addr: SocketAddr,
    pub corral: Corral,
    /// Read from the data directory, if present there.
    pub tokens: Option<Tokens>,
    server: actix_web::dev::Server,
    embedded: Option<Arc<EmbeddedPostgres>>,
    watchdog: Option<actix_web::rt::task::JoinHandle<()>>,
    leading: actix_web::rt::task::JoinHandle<()>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("addr", &self.addr).finish()
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
        let session = self.corral.shared().leader;
        if let Err(err) = self.corral.db().close_session(session, "server stopped", None).await {
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
        Ok(())
    }
}

pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.token")
}

pub fn agent_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("agent.token")
}

fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{secret}").with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn read_secret(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// On the first start against a database, creates the admin and agent
/// identities and writes their tokens (mode 0600) to the data directory.
async fn ensure_tokens(db: &Db, data_dir: &Path) -> anyhow::Result<Option<Tokens>> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let (admin_path, agent_path) = (admin_token_path(data_dir), agent_token_path(data_dir));
    let admin = corral_db::new_token();
    let agent = corral_db::new_token();
    let fresh_admin = data_dir.join(".admin.token.new");
    let fresh_agent = data_dir.join(".agent.token.new");
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

/// Starts everything. Must run inside an actix system.
pub async fn serve(config: Config, clock: Clock) -> anyhow::Result<Running> {
    let settings = config.settings()?;
    let (url, embedded) = match &config.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let pg = EmbeddedPostgres::start(&config.data_dir).await.context("starting the embedded PostgreSQL")?;
            (pg.connection_string(corral_db::embedded::CORRAL_DATABASE), Some(Arc::new(pg)))
        }
    };
    let pool = PoolSettings {
        max_size: config.pool_size.max(2),
        wait_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
    };
    let db = Db::connect(&url, &pool).await.context("connecting to the database")?;
    db.apply_schema().await.context("applying schema.sql")?;
    let tokens = ensure_tokens(&db, &config.data_dir).await?;
    // Hold the address before leading: it proves no other live process of
    // this replica runs (see leadership::lead).
    let listener =
        std::net::TcpListener::bind(config.listen).with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr().context("reading the listen address")?;
    let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
    let name = format!("{host}/{addr}");
    let session = crate::leadership::lead(&db, &name, settings.session_timeout, settings.heartbeat_interval)
        .await
        .context("taking the scheduling leadership")?;
    let heartbeat = settings.heartbeat_interval;
    let corral = Corral::start(db.clone(), settings, clock, session).await.context("rebuilding the live system")?;

    let state = web::Data::new(AppState {
        corral: corral.clone(),
        config: config.clone(),
        auth: AuthCache::default(),
        limits: crate::limits::Limits::from_config(&config),
    });
    let max_body = config.max_body;
    let server = HttpServer::new(move || {
        App::new()
            .wrap(TracingLogger::default())
            .app_data(state.clone())
            .configure(|cfg| crate::configure(cfg, max_body))
    })
    .workers(config.http_workers.max(1))
    .shutdown_timeout(5)
    .listen(listener)
    .with_context(|| format!("listening on {addr}"))?;
    let server = server.run();
    let handle = server.handle();
    let leading = crate::leadership::keep_leading(db, session, heartbeat, move || {
        actix_web::rt::spawn(async move { handle.stop(false).await });
    });
    tracing::info!(%addr, "corral is ready");
    let watchdog = embedded.as_ref().map(|pg| watch_embedded(pg.clone(), config.data_dir.clone()));
    Ok(Running { addr, corral, tokens, server, embedded, watchdog, leading })
}
