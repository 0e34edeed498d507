//! What a server does with its database before and around the live
//! system: connect (waiting out an unreachable database or a failover),
//! bring the schema up to date, create the first identities, and take and
//! keep the scheduling leadership among replicas. The api crate's `serve`
//! drives these steps; it names no database type ([`Database`] is the
//! handle it holds until [`Database::start`] turns it into a [`Corral`]).
//!
//! Leadership: each replica opens a `server` session (BMDB style,
//! database clock). The one whose session holds the `leader` row runs the
//! live system; the others wait as standbys, expiring dead server
//! sessions, and take over when the leader's session goes (its row goes
//! with it). The leader keeps its session alive; if it ever finds it gone
//! (it was paused past the timeout and a standby may lead now), it stops
//! serving at once. Bindings also check the leader row in the database, so
//! a deposed leader cannot bind anything even before it notices.

use std::sync::Arc;
use std::time::Duration;

use corral_core::SessionId;
/// Plain settings of the connection: how many connections, how long to
/// wait for one, and what the URL names (hosts, read-write).
pub use corral_db::{DatabaseUrl, PoolSettings};
use corral_db::{Db, MigrationError};

use crate::observe::{DatabaseObserver, Observer};
use crate::{ActorError, Clock, Corral, Settings};

/// A new bearer token (random, URL-safe): what a first start writes for
/// the admin and the agent.
pub use corral_db::new_token;

/// The longest wait between two tries to reach the database at start.
const CONNECT_RETRY_MAX: Duration = Duration::from_secs(10);

/// A connected database whose schema is current, before the live system
/// runs on it.
#[derive(Clone)]
pub struct Database {
    db: Db,
    observer: Arc<dyn Observer>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database").finish_non_exhaustive()
    }
}

impl Database {
    /// What `url` names: its hosts and whether only a read-write one is
    /// used. A URL that does not parse is a bad request.
    pub fn describe_url(url: &str) -> Result<DatabaseUrl, ActorError> {
        Db::describe_url(url).map_err(|e| ActorError::BadRequest(e.to_string()))
    }

    /// Connects to the database and brings its schema up to date. While
    /// no host of the URL is reachable, or none accepts writes (only
    /// standbys, a failover under way), it says so and tries again, for as
    /// long as it takes: a service manager starting corral before its
    /// database is not an error. A URL that does not parse, a schema newer
    /// than this binary, or any other error ends the start. Every
    /// statement's time and outcome is reported to `observer`.
    pub async fn connect(url: &str, pool: &PoolSettings, observer: Arc<dyn Observer>) -> Result<Database, ActorError> {
        let described = Database::describe_url(url)?;
        if described.hosts.len() > 1 && !described.read_write {
            tracing::warn!(
                hosts = %described.hosts.join(","),
                "the database URL names several hosts without target_session_attrs=read-write: corral may reach a \
                 standby and be refused every write; add target_session_attrs=read-write"
            );
        }
        let mut delay = Duration::from_millis(500);
        loop {
            let tried = match Db::connect(url, pool).await {
                Ok(db) => match db.apply_schema().await {
                    Ok(()) => Ok(db),
                    Err(MigrationError::Db(err)) => Err(err),
                    Err(err) => {
                        return Err(ActorError::Internal(format!("bringing the database schema up to date: {err}")));
                    }
                },
                Err(err) => Err(err),
            };
            match tried {
                Ok(db) => {
                    let db = db.with_observer(Arc::new(DatabaseObserver(observer.clone())));
                    return Ok(Database { db, observer });
                }
                Err(err) if err.is_unavailable() => {
                    tracing::error!(
                        hosts = %described.hosts.join(","),
                        cause = %err,
                        retry_in = ?delay,
                        "cannot use the database yet; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(CONNECT_RETRY_MAX);
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// On the first start against this database, creates the admin and
    /// agent identities with these tokens; `false` when they exist
    /// already (the tokens are then not used).
    pub async fn bootstrap(&self, admin_token: &str, agent_token: &str) -> Result<bool, ActorError> {
        Ok(self.db.bootstrap(admin_token, agent_token).await?)
    }

    /// Opens this replica's server session and waits until it leads.
    /// While the database cannot be used (no host reachable, or only
    /// standbys: a failover) it says so and tries again, with a fresh
    /// session if its own expired meanwhile.
    ///
    /// `name` is `HOST/ADDRESS` of a listener this process already holds:
    /// a session of the same name can only be left by a dead predecessor
    /// (a live one would hold the address), so it is replaced at once
    /// instead of waiting for it to expire.
    pub async fn lead(&self, name: &str, timeout: Duration, interval: Duration) -> Result<SessionId, ActorError> {
        let mut announced = false;
        loop {
            match self.lead_with_one_session(name, timeout, interval, &mut announced).await {
                Ok(Some(session)) => return Ok(session),
                Ok(None) => tracing::warn!("this replica's own server session expired while waiting; opening another"),
                Err(err) if err.is_unavailable() => {
                    tracing::error!(cause = %err, "standby: cannot use the database; retrying");
                }
                Err(err) => return Err(err.into()),
            }
            tokio::time::sleep(interval.min(Duration::from_secs(1))).await;
        }
    }

    /// One session's wait: `Some` once it leads, `None` if it expired.
    async fn lead_with_one_session(
        &self,
        name: &str,
        timeout: Duration,
        interval: Duration,
        announced: &mut bool,
    ) -> Result<Option<SessionId>, corral_db::DbError> {
        let db = &self.db;
        let session = SessionId::random();
        db.open_session(session, "server", name, "server", timeout, None).await?;
        let replaced = db.replace_sessions_named("server", name, session, "its replica restarted").await?;
        if replaced > 0 {
            tracing::info!(replica = %name, "replaced the session of this replica's previous run");
        }
        loop {
            for gone in db.expire_sessions_of(Some("server"), None).await? {
                tracing::warn!(replica = %gone.session.name, reason = %gone.reason, "server session expired");
            }
            if db.try_lead(session, None).await? {
                tracing::info!(session = %session, replica = %name, "leading scheduling");
                return Ok(Some(session));
            }
            if !*announced {
                let leader = db.leader_name().await?.unwrap_or_else(|| "another replica".to_string());
                tracing::info!(leader = %leader, "standby: another replica leads; waiting to take over");
                *announced = true;
            }
            if db.heartbeat(session, None).await?.is_none() {
                return Ok(None);
            }
            tokio::time::sleep(interval.min(Duration::from_secs(1))).await;
        }
    }

    /// Starts the live system on this database, for the replica whose
    /// server session `leader` leads (see [`Corral::start`]).
    pub async fn start(self, settings: Settings, clock: Clock, leader: SessionId) -> Result<Corral, ActorError> {
        Corral::start_observed(self.db, settings, clock, leader, self.observer).await
    }
}

impl Corral {
    /// Keeps this replica's leader session alive every `interval`; calls
    /// `lost` and ends if the session is gone. A database that cannot be
    /// reached meanwhile is not a loss: the session lives until its
    /// timeout.
    pub fn keep_leading(&self, interval: Duration, lost: impl FnOnce() + 'static) -> tokio::task::JoinHandle<()> {
        let (db, session) = (self.shared().db.clone(), self.shared().leader);
        actix::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                match db.heartbeat(session, None).await {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        tracing::error!(session = %session, "this replica lost its leadership (session expired); stopping");
                        lost();
                        return;
                    }
                    Err(err) => tracing::warn!(cause = %err, "could not renew the leader session"),
                }
            }
        })
    }

    /// Closes this replica's server session (at a clean stop), so that a
    /// standby takes over at once rather than after the session timeout.
    pub async fn close_own_session(&self, reason: &str) -> Result<(), ActorError> {
        let shared = self.shared();
        shared.db.close_session(shared.leader, reason, None).await?;
        Ok(())
    }
}
