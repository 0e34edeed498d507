//! The benchmark's own connection to the server's embedded PostgreSQL: a
//! verifier (it reads leases, history and requests behind the server's
//! back) and a source of faults from outside the server (terminating the
//! server's backends, holding row locks, stopping the postmaster while
//! holding the start lock so that the server's watchdog waits).
//!
//! SQL here is a verifier's, not the server's: the server's SQL stays in
//! corral-db.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use tokio_postgres::{Client, NoTls};

/// How often a statement is tried when its connection was dropped (by a
/// fault of this very benchmark) before it counts as failed.
const ATTEMPTS: usize = 5;

pub(crate) struct SideDb {
    config: tokio_postgres::Config,
    client: Option<Client>,
}

/// Seconds since the Unix epoch (the unit the verifier compares database
/// timestamps in: server and database run on this machine's clock).
pub(crate) fn epoch_seconds(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl SideDb {
    pub(crate) fn new(mut config: tokio_postgres::Config) -> SideDb {
        config.connect_timeout(Duration::from_secs(2)).application_name("corral-bench-verifier");
        SideDb { config, client: None }
    }

    /// A fresh connection of its own (for a lock held across other calls).
    pub(crate) async fn connect(&self) -> Result<Client> {
        let (client, connection) = self.config.connect(NoTls).await.context("connecting to the server's PostgreSQL")?;
        actix_rt::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Whether PostgreSQL accepts a connection now.
    pub(crate) async fn is_up(&self) -> bool {
        match self.connect().await {
            Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    }

    async fn client(&mut self) -> Result<&Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = Some(self.connect().await?);
        }
        self.client.as_ref().context("no verifier connection")
    }

    /// Runs `query` with `params`, reconnecting when the connection was
    /// dropped (up to `ATTEMPTS` times).
    async fn query(
        &mut self,
        query: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        let mut last = None;
        for _ in 0..ATTEMPTS {
            match self.client().await {
                Ok(client) => match client.query(query, params).await {
                    Ok(rows) => return Ok(rows),
                    Err(err) => last = Some(anyhow::Error::new(err)),
                },
                Err(err) => last = Some(err),
            }
            self.client = None;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")).context(query.to_string()))
    }

    /// Runs `query` (an aggregate: one row expected) with `params`,
    /// reconnecting when the connection was dropped.
    async fn query_one(
        &mut self,
        query: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<tokio_postgres::Row> {
        let mut rows = self.query(query, params).await?;
        ensure!(rows.len() == 1, "{query}: {} rows where one was expected", rows.len());
        Ok(rows.remove(0))
    }

    /// The earliest `bound_at` (epoch seconds) of a lease bound at or after
    /// `since` (epoch seconds), waiting up to `timeout` for one.
    pub(crate) async fn first_binding_since(&mut self, since: f64, timeout: Duration) -> Result<Option<f64>> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            let row = self
                .query_one(
                    "SELECT extract(epoch FROM min(bound_at))::float8 FROM leases WHERE bound_at >= to_timestamp($1)",
                    &[&since],
                )
                .await?;
            if let Some(at) = row.get::<_, Option<f64>>(0) {
                return Ok(Some(at));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(None)
    }

    /// The earliest `started_at` (the agent confirmed the lease) at or
    /// after `since`, if any yet.
    pub(crate) async fn first_start_since(&mut self, since: f64) -> Result<Option<f64>> {
        let row = self
            .query_one(
                "SELECT extract(epoch FROM min(started_at))::float8 FROM leases WHERE started_at >= to_timestamp($1)",
                &[&since],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Leases bound at or after `since`.
    pub(crate) async fn bindings_since(&mut self, since: f64) -> Result<i64> {
        let row = self.query_one("SELECT count(*) FROM leases WHERE bound_at >= to_timestamp($1)", &[&since]).await?;
        Ok(row.get(0))
    }

    /// `pg_terminate_backend` of every other client backend of the corral
    /// database (the server's pool): real dropped connections. Returns how
    /// many were terminated.
    pub(crate) async fn terminate_server_backends(&mut self) -> Result<usize> {
        let rows = self
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
                   AND application_name <> 'corral-bench-verifier'",
                &[],
            )
            .await?;
        Ok(rows.iter().filter(|row| row.get::<_, bool>(0)).count())
    }

    /// Holds row locks on a quarter of the workers (at least one) from a
    /// connection of its own for `hold`, as a long transaction of another
    /// client would; the server's statements on those rows wait. Returns
    /// how many rows were locked.
    pub(crate) async fn hold_worker_locks(&self, hold: Duration) -> Result<usize> {
        let mut client = self.connect().await?;
        let tx = client.transaction().await.context("BEGIN")?;
        let rows = tx
            .query(
                "SELECT uuid FROM workers ORDER BY random()
                 LIMIT greatest(1, (SELECT count(*) FROM workers) / 4) FOR UPDATE",
                &[],
            )
            .await
            .context("locking worker rows")?;
        tokio::time::sleep(hold).await;
        tx.rollback().await.context("ROLLBACK")?;
        Ok(rows.len())
    }

    /// Runs `query` and returns its single `bigint` result.
    pub(crate) async fn count(
        &mut self,
        query: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<i64> {
        Ok(self.query_one(query, params).await?.get(0))
    }

    /// Pairs of leases of one worker that overlap in time: in `bound_at`
    /// order, each lease must start after every earlier one ended (a lease
    /// not ended yet never ends).
    pub(crate) async fn double_leases(&mut self) -> Result<i64> {
        self.count(
            "SELECT count(*) FROM (
                SELECT bound_at, max(COALESCE(ended_at, 'infinity')) OVER (
                    PARTITION BY worker ORDER BY bound_at, request
                    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS earlier_end
                FROM leases) l
             WHERE earlier_end > bound_at",
            &[],
        )
        .await
    }

    /// Requests that entered `in_progress` more than once (from their
    /// history: rows into `in_progress` from another state; a prolong or a
    /// reconciler's note is a row from `in_progress` to itself and enters
    /// nothing), plus leases whose worker is not their request's.
    pub(crate) async fn double_bindings(&mut self) -> Result<i64> {
        self.count(
            "SELECT (SELECT count(*) FROM (
                        SELECT request FROM request_history
                        WHERE to_state = 'in_progress' AND from_state IS DISTINCT FROM 'in_progress'
                        GROUP BY request HAVING count(*) > 1) twice)
                  + (SELECT count(*) FROM leases l JOIN requests r ON r.id = l.request
                     WHERE r.worker IS DISTINCT FROM l.worker)",
            &[],
        )
        .await
    }

    /// Rows of (idempotency key, id) among `keys`.
    pub(crate) async fn ids_by_key(&mut self, keys: &[String]) -> Result<Vec<(String, i64)>> {
        let rows =
            self.query("SELECT idempotency_key, id FROM requests WHERE idempotency_key = ANY($1)", &[&keys]).await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    /// Which of `ids` exist as requests.
    pub(crate) async fn existing_ids(&mut self, ids: &[i64]) -> Result<Vec<i64>> {
        let rows = self.query("SELECT id FROM requests WHERE id = ANY($1)", &[&ids]).await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }
}

/// The embedded cluster's start lock (`DATA_DIR/postgres.lock`), held so
/// that the server's watchdog cannot start PostgreSQL again until it is
/// dropped.
pub(crate) struct StartLock {
    _file: File,
}

impl StartLock {
    pub(crate) async fn take(data_dir: &Path) -> Result<StartLock> {
        let path = data_dir.join("postgres.lock");
        tokio::task::spawn_blocking(move || {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            file.lock().with_context(|| format!("locking {}", path.display()))?;
            Ok(StartLock { _file: file })
        })
        .await
        .context("taking the start lock")?
    }
}

/// Stops the postmaster of `cluster_dir` the way `pg_ctl stop -m
/// immediate` does (SIGQUIT: no checkpoint, crash recovery at the next
/// start) and waits until it has exited.
pub(crate) async fn stop_postmaster_immediately(cluster_dir: &Path) -> Result<()> {
    let pid_file: PathBuf = cluster_dir.join("postmaster.pid");
    let text = std::fs::read_to_string(&pid_file).with_context(|| format!("reading {}", pid_file.display()))?;
    let pid: i32 = text.lines().next().and_then(|l| l.trim().parse().ok()).context("the postmaster's pid")?;
    let pid = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGQUIT).context("signalling the postmaster")?;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        // Gone, or a zombie nobody reaped yet (it has exited).
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().to_string()))
            .is_some_and(|rest| !rest.starts_with('Z'));
        if !alive {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the postmaster {pid} did not exit within 30 s of SIGQUIT")
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use corral_db::{Db, PoolSettings, ScaleFixture};
    use uuid::Uuid;

    use super::*;

    /// The verifier finds what it must: run on a database holding two
    /// overlapping leases of one worker and a request bound twice, it
    /// counts them; on the same leases made sequential, it counts none.
    #[actix_rt::test]
    async fn the_verifier_counts_overlapping_leases_and_double_bindings() {
        let test_db = corral_testkit::test_database().await;
        let db = Db::connect(&test_db.url, &PoolSettings::default()).await.unwrap();
        db.apply_schema().await.unwrap();
        let fixture = ScaleFixture {
            users: vec![("u".to_string(), corral_db::hash_token("t"))],
            workers: 0,
            requests: 3,
            device_types: 1,
            agent: "a".to_string(),
            now: SystemTime::now(),
        };
        let loaded = db.load_scale_fixture(&fixture).await.unwrap();
        let (r1, r2, r3) = (loaded.first_request.0, loaded.first_request.0 + 1, loaded.first_request.0 + 2);
        let mut side = SideDb::new(test_db.url.parse().unwrap());
        let sql = side.connect().await.unwrap();
        let (worker, other) = (Uuid::new_v4(), Uuid::new_v4());
        // r1 on `worker` 10:00-10:05, r2 on `worker` from 10:03 (overlap),
        // r3 on `other`; each request names its lease's worker.
        sql.execute(
            "INSERT INTO leases (request, worker, fence, bound_at, ended_at) VALUES
                ($1, $4, 1, '2026-01-01 10:00Z', '2026-01-01 10:05Z'),
                ($2, $4, 2, '2026-01-01 10:03Z', NULL),
                ($3, $5, 1, '2026-01-01 10:00Z', NULL)",
            &[&r1, &r2, &r3, &worker, &other],
        )
        .await
        .unwrap();
        sql.execute("UPDATE requests SET worker = l.worker FROM leases l WHERE l.request = requests.id", &[])
            .await
            .unwrap();
        assert_eq!(side.double_leases().await.unwrap(), 1);
        assert_eq!(side.double_bindings().await.unwrap(), 0);

        // Sequential leases are fine, also back to back.
        sql.execute(
            "UPDATE leases SET bound_at = '2026-01-01 10:05Z', ended_at = '2026-01-01 10:06Z' WHERE request = $1",
            &[&r2],
        )
        .await
        .unwrap();
        assert_eq!(side.double_leases().await.unwrap(), 0);
        // A lease that outlives a later one is caught even when a third
        // lies between them.
        sql.execute(
            "UPDATE leases SET worker = $2, fence = 3, bound_at = '2026-01-01 10:06Z', ended_at = '2026-01-01 10:07Z'
             WHERE request = $1",
            &[&r3, &worker],
        )
        .await
        .unwrap();
        assert_eq!(side.double_leases().await.unwrap(), 0);
        sql.execute("UPDATE leases SET ended_at = '2026-01-01 10:08Z' WHERE request = $1", &[&r1]).await.unwrap();
        assert_eq!(side.double_leases().await.unwrap(), 2);
        sql.execute("UPDATE leases SET ended_at = '2026-01-01 10:05Z' WHERE request = $1", &[&r1]).await.unwrap();
        assert_eq!(side.double_leases().await.unwrap(), 0);

        // r3's lease is now on `worker` but the request still names
        // `other`; r1 entered in_progress twice.
        assert_eq!(side.double_bindings().await.unwrap(), 1);
        // A bound request whose lease was prolonged and which the
        // reconciler noted (rows from in_progress to itself) entered
        // in_progress once.
        sql.execute(
            "INSERT INTO request_history (request, at, from_state, to_state, actor, reason) VALUES
                ($1, now(), 'waiting', 'in_progress', 'test', 'bound'),
                ($1, now(), 'in_progress', 'in_progress', 'test', 'lease prolonged'),
                ($1, now(), 'in_progress', 'in_progress', 'reconciler', 'repaired')",
            &[&r2],
        )
        .await
        .unwrap();
        assert_eq!(side.double_bindings().await.unwrap(), 1);
        sql.execute(
            "INSERT INTO request_history (request, at, from_state, to_state, actor, reason) VALUES
                ($1, now(), 'waiting', 'in_progress', 'test', 'bound'),
                ($1, now(), 'waiting', 'in_progress', 'test', 'bound again')",
            &[&r1],
        )
        .await
        .unwrap();
        assert_eq!(side.double_bindings().await.unwrap(), 2);
    }
}
