//! Scheduling leadership among server replicas sharing one database.
//!
//! Each replica opens a `server` session (BMDB style, database clock). The
//! one whose session holds the `leader` row runs the live system; the
//! others wait as standbys, expiring dead server sessions, and take over
//! when the leader's session goes (its row goes with it). The leader keeps
//! its session alive; if it ever finds it gone (it was paused past the
//! timeout and a standby may lead now), it stops serving at once. Bindings
//! also check the leader row in the database, so a deposed leader cannot
//! bind anything even before it notices.
//!
//! Standbys do not serve the API while they wait: every connection to a
//! standby's address gets `503 Service Unavailable` with `Retry-After: 1`
//! and an error `standby` at once ([`answer_as_standby`]). Agents and the
//! CLI are given the URLs of every replica and move on to the next one on
//! such an answer or a refused connection, so they reach whichever leads.

use std::time::Duration;

use corral_core::SessionId;
use corral_db::Db;

/// Opens this replica's server session and waits until it leads. While
/// the database cannot be used (no host reachable, or only standbys: a
/// failover) it says so and tries again, with a fresh session if its own
/// expired meanwhile.
///
/// `name` is `HOST/ADDRESS` of a listener this process already holds: a
/// session of the same name can only be left by a dead predecessor (a live
/// one would hold the address), so it is replaced at once instead of
/// waiting for it to expire.
pub(crate) async fn lead(db: &Db, name: &str, timeout: Duration, interval: Duration) -> anyhow::Result<SessionId> {
    let mut announced = false;
    loop {
        match lead_with_one_session(db, name, timeout, interval, &mut announced).await {
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
    db: &Db,
    name: &str,
    timeout: Duration,
    interval: Duration,
    announced: &mut bool,
) -> Result<Option<SessionId>, corral_db::DbError> {
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

/// Keeps the leader's session alive; calls `lost` and ends if it is gone.
pub(crate) fn keep_leading(
    db: Db,
    session: SessionId,
    interval: Duration,
    lost: impl FnOnce() + 'static,
) -> actix_web::rt::task::JoinHandle<()> {
    actix_web::rt::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            match db.heartbeat(session, None).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    tracing::error!(session = %session, "this replica lost its leadership (session expired); stopping");
                    lost();
                    return;
                }
                // The database is away: the session survives until its timeout.
                Err(err) => tracing::warn!(cause = %err, "could not renew the leader session"),
            }
        }
    })
}

/// What a standby answers to every request.
const STANDBY_ANSWER: &str = "{\"error\":\"standby\",\"message\":\"this corral replica is a standby; another replica \
                              leads: try the next server URL\"}";

/// Answers every connection on `listener` with a 503 until the returned
/// task is aborted (the replica leads and the HTTP server takes the
/// listener over).
pub(crate) fn answer_as_standby(
    listener: std::net::TcpListener,
) -> anyhow::Result<actix_web::rt::task::JoinHandle<()>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    Ok(actix_web::rt::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            actix_web::rt::spawn(async move {
                // Read (some of) the request first: closing a socket with
                // unread data resets it and the answer could be lost.
                let mut buf = [0u8; 8192];
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await;
                let answer = format!(
                    "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\n\
                     Connection: close\r\nContent-Length: {}\r\n\r\n{STANDBY_ANSWER}",
                    STANDBY_ANSWER.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    }))
}
