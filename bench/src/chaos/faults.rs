//! The fault schedule of a chaos run and how each fault is done and
//! measured. The schedule is drawn from the seed alone: each fault gets a
//! moment in the run, and they are done one after another in that order
//! (a fault that is due while the previous one is still recovering waits
//! for it), so that each recovery is measured on its own.

use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use corral_core::Caps;
use serde_json::json;

use super::agent::AgentThread;
use super::load::{Answer, Load, SERVER_TIMEOUT, call};
use super::side::{SideDb, StartLock, epoch_seconds, stop_postmaster_immediately};
use crate::rng::SplitMix64;
use crate::server::ServerProcess;

/// How long the database stays down.
pub(crate) const OUTAGE: Duration = Duration::from_secs(10);
/// How long a side connection holds its row locks.
const LOCK_HOLD: Duration = Duration::from_secs(3);
/// Longest wait for the first binding after a restart, and for the first
/// 2xx after the database is back, before the recovery counts as failed.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Fault {
    /// `kill -9` of the server, then start it again.
    KillServer,
    /// Stop PostgreSQL (immediate shutdown) for [`OUTAGE`]; the server's
    /// watchdog starts it again.
    StopDatabase,
    /// Crash the simulated agent, start it again 0.5-2 s later.
    CrashAgent,
    /// `pg_terminate_backend` of the server's connections.
    TerminateBackends,
    /// A side transaction holds row locks on a quarter of the workers.
    HoldLocks,
}

/// How many faults of each kind a run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FaultCounts {
    pub kills: usize,
    pub outages: usize,
    pub agent_crashes: usize,
    pub terminations: usize,
    pub lock_holds: usize,
}

/// The faults and their moments (from the start of the load), in order.
pub(crate) fn schedule(counts: FaultCounts, run: Duration, seed: u64) -> Vec<(Duration, Fault)> {
    let mut rng = SplitMix64::new(seed);
    let kinds = [
        (Fault::KillServer, counts.kills),
        (Fault::StopDatabase, counts.outages),
        (Fault::CrashAgent, counts.agent_crashes),
        (Fault::TerminateBackends, counts.terminations),
        (Fault::HoldLocks, counts.lock_holds),
    ];
    // Faults fall in the middle 90 % of the run, to the millisecond.
    let span = (run.as_millis() as usize * 9 / 10).max(1);
    let offset = run.as_millis() as u64 / 20;
    let mut faults: Vec<(Duration, Fault)> = kinds
        .iter()
        .flat_map(|(fault, n)| std::iter::repeat_n(*fault, *n))
        .map(|fault| (Duration::from_millis(offset + rng.below(span) as u64), fault))
        .collect();
    faults.sort();
    faults
}

/// What the faults did and how the system recovered.
#[derive(Debug, Default)]
pub(crate) struct FaultLog {
    pub kills: usize,
    pub restarts: usize,
    pub outages: usize,
    pub agent_crashes: usize,
    pub backends_terminated: usize,
    pub terminations: usize,
    pub lock_holds: usize,
    pub rows_locked: usize,
    /// Seconds from spawning the server to its first `/readyz` 200.
    pub ready_s: Vec<f64>,
    /// Seconds from ready to the first lease bound after the restart (0
    /// when one was bound before `/readyz` answered).
    pub first_binding_s: Vec<f64>,
    /// Restarts after which nothing was bound within the recovery timeout.
    pub no_binding: usize,
    /// Seconds from PostgreSQL accepting connections again to the first
    /// 2xx answer to a submission.
    pub first_2xx_after_db_s: Vec<f64>,
    pub outage: OutageProbes,
}

/// Answers to probes sent while the database was down.
#[derive(Debug, Default)]
pub(crate) struct OutageProbes {
    pub sent: usize,
    /// 503 with `Retry-After`: the expected answer.
    pub unavailable: usize,
    pub ok: usize,
    pub http_500: usize,
    /// 503 without `Retry-After`, other statuses, unreachable server.
    pub other: usize,
    pub hangs: usize,
    /// Slowest probe answer during the outage.
    pub max_answer_s: f64,
    /// Recoveries that saw no 2xx within the recovery timeout.
    pub no_recovery: usize,
}

impl OutageProbes {
    /// Probes that were answered otherwise than 503 + Retry-After or 2xx.
    pub(crate) fn bad(&self) -> usize {
        self.http_500 + self.other + self.hangs + self.no_recovery
    }
}

/// Everything the faults act on.
pub(crate) struct Target<'a> {
    pub server: &'a mut ServerProcess,
    pub side: &'a mut SideDb,
    pub cluster_dir: &'a Path,
    pub agent: &'a mut Option<AgentThread>,
    pub agent_name: &'a str,
    pub agent_caps: &'a [Caps],
    pub agent_token: &'a str,
    pub load: &'a Rc<Load>,
}

impl Target<'_> {
    pub(crate) async fn run(
        &mut self,
        faults: &[(Duration, Fault)],
        began: Instant,
        rng: &mut SplitMix64,
    ) -> Result<FaultLog> {
        let mut log = FaultLog::default();
        for (n, (at, fault)) in faults.iter().enumerate() {
            let due = began + *at;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
            eprintln!("  {:6.1}s fault {}/{}: {fault:?}", began.elapsed().as_secs_f64(), n + 1, faults.len());
            self.one(*fault, &mut log, rng).await.with_context(|| format!("fault {fault:?}"))?;
        }
        Ok(log)
    }

    async fn one(&mut self, fault: Fault, log: &mut FaultLog, rng: &mut SplitMix64) -> Result<()> {
        match fault {
            Fault::KillServer => self.kill_server(log).await,
            Fault::StopDatabase => self.stop_database(log).await,
            Fault::CrashAgent => {
                if let Some(agent) = self.agent.take() {
                    agent.crash().await;
                }
                log.agent_crashes += 1;
                tokio::time::sleep(Duration::from_millis(500 + rng.below(1500) as u64)).await;
                *self.agent = Some(AgentThread::start(
                    &self.server.url,
                    self.agent_token,
                    self.agent_name,
                    self.agent_caps.to_vec(),
                ));
                Ok(())
            }
            Fault::TerminateBackends => {
                log.backends_terminated += self.side.terminate_server_backends().await?;
                log.terminations += 1;
                Ok(())
            }
            Fault::HoldLocks => {
                log.rows_locked += self.side.hold_worker_locks(LOCK_HOLD).await?;
                log.lock_holds += 1;
                Ok(())
            }
        }
    }

    /// `kill -9`, restart; measures ready and first binding after ready.
    async fn kill_server(&mut self, log: &mut FaultLog) -> Result<()> {
        self.server.kill()?;
        log.kills += 1;
        let spawned_at = epoch_seconds(SystemTime::now());
        self.server.restart(&format!("serve-{}.log", log.kills))?;
        log.restarts += 1;
        let ready = self.server.wait_ready(Duration::from_secs(120)).await?;
        let ready_at = epoch_seconds(SystemTime::now());
        log.ready_s.push(ready.as_secs_f64());
        match self.side.first_binding_since(spawned_at, RECOVERY_TIMEOUT).await? {
            Some(bound_at) => log.first_binding_s.push((bound_at - ready_at).max(0.0)),
            None => log.no_binding += 1,
        }
        Ok(())
    }

    /// Stops PostgreSQL for [`OUTAGE`] while probing the API; then waits
    /// for the watchdog to bring it back and for the first 2xx.
    async fn stop_database(&mut self, log: &mut FaultLog) -> Result<()> {
        // Held first, so that the watchdog cannot start PostgreSQL again
        // before the outage is over.
        let lock = StartLock::take(self.server.dir.as_path()).await?;
        stop_postmaster_immediately(self.cluster_dir).await?;
        log.outages += 1;
        let down_at = Instant::now();
        let http = awc::Client::builder().timeout(SERVER_TIMEOUT).finish();
        let mut probe = 0usize;
        while down_at.elapsed() < OUTAGE {
            self.probe(&http, &mut probe, &mut log.outage, true).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(lock);
        let released = Instant::now();
        let mut back_at = None;
        while released.elapsed() < RECOVERY_TIMEOUT {
            if self.side.is_up().await {
                back_at = Some(Instant::now());
                break;
            }
            // Still down: what the API says meanwhile is judged as before.
            self.probe(&http, &mut probe, &mut log.outage, true).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let back_at = back_at.context("PostgreSQL did not come back after the outage")?;
        while back_at.elapsed() < RECOVERY_TIMEOUT {
            if self.probe(&http, &mut probe, &mut log.outage, false).await {
                log.first_2xx_after_db_s.push(back_at.elapsed().as_secs_f64());
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        log.outage.no_recovery += 1;
        Ok(())
    }

    /// One probe: a submission (alternating with `/readyz`). During the
    /// outage the answer must be 503 with Retry-After within the server's
    /// timeout. Returns whether it was a 2xx.
    async fn probe(&self, http: &awc::Client, n: &mut usize, probes: &mut OutageProbes, down: bool) -> bool {
        *n += 1;
        let load = self.load;
        let sent = Instant::now();
        let (op, answer) = if n.is_multiple_of(2) {
            let url = format!("{}/readyz", load.url);
            ("readyz", call(http, awc::http::Method::GET, &url, None, None, None, SERVER_TIMEOUT).await)
        } else {
            let url = format!("{}/v1/requests", load.url);
            let key = format!("probe-{}-{}", load.seed, *n);
            let body = json!({"caps": {"device_type": "t0"}});
            let answer =
                call(http, awc::http::Method::POST, &url, Some(&load.token), Some(&key), Some(&body), SERVER_TIMEOUT)
                    .await;
            if let Answer::Http { status: 201, body, .. } = &answer
                && let Some(id) = body["id"].as_i64()
            {
                load.tally.borrow_mut().acknowledged.push((key, id));
            }
            ("probe", answer)
        };
        let took = sent.elapsed().as_secs_f64();
        let ok = matches!(answer, Answer::Http { status: 200..=299, .. });
        if down {
            probes.sent += 1;
            probes.max_answer_s = probes.max_answer_s.max(took);
            match &answer {
                Answer::Http { status: 503, retry_after: Some(_), .. } => probes.unavailable += 1,
                Answer::Http { status: 200..=299, .. } => probes.ok += 1,
                Answer::Http { status: 500, .. } => probes.http_500 += 1,
                Answer::Timeout => probes.hangs += 1,
                _ => probes.other += 1,
            }
        }
        if !matches!(answer, Answer::Http { status: 200..=299, .. }) {
            load.tally.borrow_mut().count(op, &answer);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_the_seeds_and_within_the_run() {
        let counts = FaultCounts { kills: 20, outages: 1, agent_crashes: 3, terminations: 10, lock_holds: 3 };
        let run = Duration::from_secs(120);
        let a = schedule(counts, run, 7);
        assert_eq!(a, schedule(counts, run, 7));
        assert_ne!(a, schedule(counts, run, 8));
        assert_eq!(a.len(), 37);
        assert_eq!(a.iter().filter(|(_, f)| *f == Fault::KillServer).count(), 20);
        assert!(a.windows(2).all(|w| w[0].0 <= w[1].0), "in time order");
        assert!(a.iter().all(|(at, _)| *at >= Duration::from_secs(6) && *at < Duration::from_secs(114)));
    }
}
