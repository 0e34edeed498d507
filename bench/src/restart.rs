//! `corral bench restart`: how fast a server killed with `kill -9` under a
//! full queue is back: ready, and binding again.
//!
//! # The run
//!
//! 1. `corral serve` starts on a fresh data directory (new workers idle)
//!    with one simulated agent of W workers (worker i offers
//!    `device_type = t{i mod K}`); the run waits until all are idle.
//! 2. The server is killed with SIGKILL. Its embedded PostgreSQL (a
//!    daemon) and the agent keep running; the agent retries the server at
//!    most a second apart.
//! 3. R waiting requests are loaded into its database
//!    ([`corral_db::ScaleFixture`]: request i asks for `device_type =
//!    t{i mod K}`, priorities 1-16; no new workers). The database now
//!    holds what a server that crashed with R requests waiting and W idle
//!    workers leaves behind: every worker can serve some request at once.
//! 4. `corral serve` starts again on it.
//!
//! Defaults: R = 10,000, W = 100, K = 10 (`--quick`: the same R, W = 20).
//!
//! # Figures and targets
//!
//! - `ready_s`: spawn to the first `/readyz` 200 (polled every 20 ms):
//!   starting, rebuilding every actor from the database. Target ≤ 5 s.
//! - `first_binding_s`: from ready to the first lease bound (`leases
//!   .bound_at`; 0 when the first one was bound before `/readyz`
//!   answered). Target ≤ 1 s.
//! - `first_start_s`: ready to the first lease the agent confirmed
//!   (`started_at`: the request is in progress), which includes the agent
//!   noticing the restart.
//! - `bound_in_10s`: leases bound within 10 s of ready.
//!
//! The run checks that every worker got a lease within 60 s (the
//! scheduler really resumed). A full run exits non-zero when a target is
//! missed; `--quick` (CI) judges no figure.

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use corral_core::{Caps, WorkerState};
use corral_db::{Db, PoolSettings, ScaleFixture};
use corral_embedded_pg::CORRAL_DATABASE;
use serde::Serialize;

use crate::chaos::AgentThread;
use crate::chaos::side::{SideDb, epoch_seconds};
use crate::options;
use crate::report::{print_json_line, round_to};
use crate::server::{ApiClient, ServerProcess, load_average};

const READY_TARGET_S: f64 = 5.0;
const FIRST_BINDING_TARGET_S: f64 = 1.0;
const AGENT_NAME: &str = "bench-restart";

/// `corral bench restart`.
#[derive(clap::Args, Debug)]
pub(crate) struct Options {
    /// Waiting requests when the server restarts.
    #[arg(long, value_name = "R", default_value = "10000", value_parser = options::positive)]
    requests: usize,
    /// Idle workers when it restarts [default: 100; 20 with --quick].
    #[arg(long, value_name = "W", value_parser = options::positive)]
    workers: Option<usize>,
    /// Device types of workers and requests.
    #[arg(long, value_name = "K", default_value = "10", value_parser = options::positive)]
    device_types: usize,
    /// Fewer workers, for CI (checks that it works, judges no figure).
    #[arg(long)]
    quick: bool,
}

impl Options {
    pub(crate) fn resolve(self) -> Result<Config> {
        let Options { requests, workers, device_types, quick } = self;
        let config = Config { requests, workers: workers.unwrap_or(if quick { 20 } else { 100 }), device_types, quick };
        if config.device_types > config.workers {
            bail!("--device-types must not exceed --workers");
        }
        if config.requests > 1_000_000 || config.workers > 10_000 {
            bail!("--requests at most 1000000, --workers at most 10000");
        }
        Ok(config)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Config {
    requests: usize,
    workers: usize,
    device_types: usize,
    quick: bool,
}

#[derive(Serialize)]
struct Line {
    scenario: &'static str,
    requests: usize,
    workers: usize,
    device_types: usize,
    ready_s: f64,
    first_binding_s: f64,
    /// The same, signed: negative when the first lease was bound before
    /// `/readyz` answered (the scheduler resumes before HTTP is ready).
    first_binding_from_ready_s: f64,
    first_start_s: Option<f64>,
    bound_in_10s: i64,
    ready_target_s: f64,
    first_binding_target_s: f64,
    targets_met: bool,
    load_avg_before: f64,
    quick: bool,
    build: &'static str,
}

pub(crate) fn run(config: Config) -> Result<()> {
    let line = actix_rt::System::new().block_on(measure(&config))?;
    print_json_line(&line)?;
    if !config.quick && !line.targets_met {
        bail!(
            "restart targets missed: ready in {} s (target {READY_TARGET_S}), first binding {} s after \
             (target {FIRST_BINDING_TARGET_S})",
            line.ready_s,
            line.first_binding_s
        );
    }
    Ok(())
}

async fn measure(config: &Config) -> Result<Line> {
    eprintln!(
        "restart: {} waiting requests, {} idle workers, {} device types: starting corral serve",
        config.requests, config.workers, config.device_types
    );
    let dir = ServerProcess::fresh_dir("restart")?;
    let mut server =
        ServerProcess::start(&dir, "new_workers = \"idle\"\npool_size = 16\ntunnel_ports = \"25000-25999\"\n")?;
    server.wait_ready(Duration::from_secs(120)).await?;
    let admin = ApiClient::new(&server.url, &server.token("admin.token")?);
    let caps: Vec<Caps> = (0..config.workers)
        .map(|i| {
            let mut caps = Caps::new();
            caps.insert("device_type", format!("t{}", i % config.device_types));
            caps
        })
        .collect();
    let agent = AgentThread::start(&server.url, &server.token("agent.token")?, AGENT_NAME, caps);
    let idle_since = std::time::Instant::now();
    while admin.count_workers(WorkerState::Idle).await? < config.workers {
        ensure!(idle_since.elapsed() < Duration::from_secs(60), "the workers did not all become idle within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    eprintln!("  {} workers idle; kill -9, then loading {} requests", config.workers, config.requests);
    server.kill()?;
    let pg = server.postgres().await?;
    let db = Db::connect(&pg.connection_string(CORRAL_DATABASE), &PoolSettings { max_size: 2, ..Default::default() })
        .await
        .context("connecting to the embedded PostgreSQL")?;
    let fixture = ScaleFixture {
        users: vec![("bench-user-0".to_string(), corral_db::hash_token(&corral_db::new_token()))],
        workers: 0,
        requests: u32::try_from(config.requests).context("--requests")?,
        device_types: u32::try_from(config.device_types).context("--device-types")?,
        agent: AGENT_NAME.to_string(),
        now: SystemTime::now(),
    };
    let loaded = db.load_scale_fixture(&fixture).await.context("loading the waiting requests")?;
    ensure!(loaded.requests == config.requests as u64, "the fixture inserted {} requests", loaded.requests);
    drop(db);
    let mut side = SideDb::new(pg.config(CORRAL_DATABASE));

    let load_avg_before = load_average()?;
    let spawned_at = epoch_seconds(SystemTime::now());
    server.restart("serve-restart.log")?;
    let ready = server.wait_ready(Duration::from_secs(120)).await?.as_secs_f64();
    let ready_at = epoch_seconds(SystemTime::now());
    let first = side
        .first_binding_since(spawned_at, Duration::from_secs(60))
        .await?
        .context("nothing was bound within 60 s of the restart")?;
    let first_binding_s = (first - ready_at).max(0.0);
    eprintln!("  ready in {ready:.3} s, first binding {first_binding_s:.3} s after ready");

    tokio::time::sleep(Duration::from_secs(10)).await;
    let bound_in_10s = side.bindings_since(spawned_at).await?;
    let first_start_s = side.first_start_since(spawned_at).await?.map(|at| round_to((at - ready_at).max(0.0), 3));
    let all_bound = std::time::Instant::now();
    loop {
        let bound = side.bindings_since(spawned_at).await?;
        if bound >= config.workers as i64 {
            break;
        }
        ensure!(
            all_bound.elapsed() < Duration::from_secs(50),
            "only {bound} of {} idle workers got a lease after the restart",
            config.workers
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.stop().await;
    server.stop()?;
    Ok(Line {
        scenario: "restart",
        requests: config.requests,
        workers: config.workers,
        device_types: config.device_types,
        ready_s: round_to(ready, 3),
        first_binding_s: round_to(first_binding_s, 3),
        first_binding_from_ready_s: round_to(first - ready_at, 3),
        first_start_s,
        bound_in_10s,
        ready_target_s: READY_TARGET_S,
        first_binding_target_s: FIRST_BINDING_TARGET_S,
        targets_met: ready <= READY_TARGET_S && first_binding_s <= FIRST_BINDING_TARGET_S,
        load_avg_before,
        quick: config.quick,
        build: if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(list: &[&str]) -> Result<Config> {
        crate::parse_options::<Options>(list)?.resolve()
    }

    #[test]
    fn defaults_quick_and_bad_arguments() {
        assert_eq!(parse(&[]).unwrap(), Config { requests: 10_000, workers: 100, device_types: 10, quick: false });
        assert_eq!(parse(&["--quick"]).unwrap().workers, 20);
        assert_eq!(parse(&["--requests", "500", "--workers", "30"]).unwrap().requests, 500);
        for (list, expected) in [
            (&["--requests", "0"][..], "positive integer"),
            (&["--workers", "5"][..], "must not exceed --workers"),
            (&["--what"][..], "unexpected argument '--what'"),
        ] {
            let err = parse(list).unwrap_err().to_string();
            assert!(err.contains(expected), "{list:?}: {err}");
        }
    }
}
