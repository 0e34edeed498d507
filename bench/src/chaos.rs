//! `corral bench chaos`: the lifecycle load while the server is killed,
//! its database stopped, its agent crashed and its connections cut, then
//! checks that nothing acknowledged was lost and nothing was leased twice
//! (SPEC §13, "measured, not claimed").
//!
//! # The run
//!
//! `corral serve` on its embedded PostgreSQL (new workers idle), one
//! simulated agent with P workers (worker i offers `device_type =
//! t{i mod K}`) and C clients of one user, each looping create (with an
//! `Idempotency-Key`, retried with the same key until answered 201) →
//! acquire `?wait=5s` → close (see `load.rs`). Meanwhile a schedule drawn
//! from the seed does, one after another (see `faults.rs`):
//!
//! - N times `kill -9` of the server, then a restart: `ready_s` (spawn to
//!   `/readyz` 200) and `first_binding_s` (ready to the first lease bound
//!   since the spawn, from the `leases` table; 0 if one was bound before
//!   ready);
//! - once, PostgreSQL stopped (immediate shutdown of the postmaster) for
//!   10 s while the benchmark holds the cluster's start lock, so that the
//!   server's watchdog cannot bring it back earlier; probes (submissions
//!   and `/readyz`, every 100 ms) must be answered 503 with `Retry-After`
//!   within the server's timeout (12 s), never 500, never hang; then the
//!   lock is released, the watchdog starts PostgreSQL, and
//!   `first_2xx_after_db_s` runs from PostgreSQL accepting connections to
//!   the first 201 of a probe;
//! - agent crashes (its event loop dropped mid-call, no session close),
//!   each followed 0.5-2 s later by a new agent of the same name;
//! - `pg_terminate_backend` of every server connection;
//! - a side transaction holding `FOR UPDATE` locks on a quarter of the
//!   workers for 3 s.
//!
//! The load runs until the run's time is over and every fault is done.
//!
//! # Checks (the run exits non-zero when one fails)
//!
//! After the load, in-progress requests are closed until nothing is live
//! (waiting requests must get bound on their own: the queue drains), and
//! the workers must settle idle, or failed/in maintenance with a reason
//! ("explained"). Then, by SQL on the server's database and through the
//! API (see `verify.rs`): every acknowledged id exists under its key (0
//! lost); no two leases of one worker overlap in time (0 double leases);
//! no request entered `in_progress` twice or has a lease on another
//! worker than its own (0 double bindings); 0 stuck workers; 0 answers
//! 500; 0 hangs; every outage probe answered 503 with `Retry-After`;
//! every restart bound something again.

mod agent;
mod faults;
mod load;
pub(crate) mod side;
mod verify;

pub(crate) use agent::AgentThread;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use corral_core::{Caps, WorkerState};
use serde::Serialize;

use self::faults::{FaultCounts, Target};
use self::load::{Load, Tally};
use self::side::SideDb;
use crate::options;
use crate::report::{percentile, print_json_line, round_to};
use crate::rng::SplitMix64;
use crate::server::{ApiClient, ServerProcess};

const AGENT_NAME: &str = "bench-chaos";

/// `corral bench chaos`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Every run also stops PostgreSQL once for 10 s; a full run crashes the agent 3 times, \
                        cuts the server's connections 10 times and holds row locks 3 times.")]
pub(crate) struct Options {
    /// Kill -9 and restart the server N times [default: 20; 3 with --quick].
    #[arg(long, value_name = "N", value_parser = options::count)]
    kills: Option<usize>,
    /// Length of the load [default: 120; 30 with --quick]; the run goes on until
    /// every fault is done.
    #[arg(long, value_name = "S", value_parser = options::count_u64)]
    seconds: Option<u64>,
    /// Seed of the fault schedule and the clients.
    #[arg(long, value_name = "X", default_value = "1", value_parser = options::count_u64)]
    seed: u64,
    /// Simulated workers.
    #[arg(long, value_name = "P", default_value = "20", value_parser = options::count)]
    workers: usize,
    /// Device types.
    #[arg(long, value_name = "K", default_value = "4", value_parser = options::count)]
    device_types: usize,
    /// Concurrent clients.
    #[arg(long, value_name = "C", default_value = "8", value_parser = options::count)]
    clients: usize,
    /// The short version for CI: 3 kills, 1 database outage, 1 agent crash, 2
    /// connection cuts, 1 lock hold; the checks are the same.
    #[arg(long)]
    quick: bool,
}

impl Options {
    pub(crate) fn resolve(self) -> Result<Config> {
        let Options { kills, seconds, seed, workers, device_types, clients, quick } = self;
        let config = Config {
            kills: kills.unwrap_or(if quick { 3 } else { 20 }),
            seconds: seconds.unwrap_or(if quick { 30 } else { 120 }),
            seed,
            workers,
            device_types,
            clients,
            quick,
        };
        if config.seconds == 0 || config.seconds > 24 * 3600 {
            bail!("--seconds must be 1 to 86400");
        }
        if config.workers == 0 || config.device_types == 0 || config.device_types > config.workers {
            bail!("--workers and --device-types must be positive, with at most as many types as workers");
        }
        if config.clients == 0 || config.clients > 1000 || config.kills > 10_000 || config.workers > 10_000 {
            bail!("--clients must be 1 to 1000, --kills and --workers at most 10000");
        }
        Ok(config)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Config {
    kills: usize,
    seconds: u64,
    seed: u64,
    workers: usize,
    device_types: usize,
    clients: usize,
    quick: bool,
}

impl Config {
    fn fault_counts(&self) -> FaultCounts {
        FaultCounts {
            kills: self.kills,
            outages: 1,
            agent_crashes: if self.quick { 1 } else { 3 },
            terminations: if self.quick { 2 } else { 10 },
            lock_holds: if self.quick { 1 } else { 3 },
        }
    }
}

/// p50 and max of some seconds.
#[derive(Serialize, Default)]
struct Spread {
    p50: f64,
    max: f64,
    n: usize,
}

impl Spread {
    fn of(seconds: &[f64]) -> Spread {
        if seconds.is_empty() {
            return Spread::default();
        }
        let mut ms: Vec<u64> = seconds.iter().map(|s| (s * 1000.0).round() as u64).collect();
        ms.sort_unstable();
        Spread {
            p50: round_to(percentile(&ms, 50.0) as f64 / 1000.0, 3),
            max: round_to(*ms.last().unwrap_or(&0) as f64 / 1000.0, 3),
            n: seconds.len(),
        }
    }
}

#[derive(Serialize)]
struct Line {
    scenario: &'static str,
    seed: u64,
    quick: bool,
    workers: usize,
    device_types: usize,
    clients: usize,
    seconds: f64,
    kills: usize,
    restarts: usize,
    db_outages: usize,
    agent_crashes: usize,
    backend_terminations: usize,
    backends_terminated: usize,
    lock_holds: usize,
    cycles: u64,
    ended_early: u64,
    acknowledged: usize,
    lost: usize,
    lost_in_db: usize,
    lost_in_api: usize,
    double_leases: i64,
    double_bindings: i64,
    stuck_workers: usize,
    explained_workers: usize,
    idle_workers: usize,
    undrained: usize,
    drain_s: f64,
    http_500: u64,
    hangs: u64,
    restarts_without_binding: usize,
    outage_probes: usize,
    outage_503: usize,
    outage_2xx: usize,
    outage_bad: usize,
    outage_max_answer_s: f64,
    ready_s: Spread,
    first_binding_s: Spread,
    first_2xx_after_db_s: Spread,
    errors: BTreeMap<String, u64>,
    requests_in_db: i64,
    leases_in_db: i64,
    /// Targets missed (empty when the run passed).
    missed: Vec<String>,
    build: &'static str,
}

pub(crate) fn run(config: Config) -> Result<()> {
    let line = actix_rt::System::new().block_on(chaos(&config))?;
    print_json_line(&line)?;
    if !line.missed.is_empty() {
        bail!("chaos targets missed: {}", line.missed.join("; "));
    }
    Ok(())
}

fn worker_caps(config: &Config) -> Vec<Caps> {
    (0..config.workers)
        .map(|i| {
            let mut caps = Caps::new();
            caps.insert("device_type", format!("t{}", i % config.device_types));
            caps
        })
        .collect()
}

async fn chaos(config: &Config) -> Result<Line> {
    eprintln!(
        "chaos: P={} K={} C={}, {} kills over {} s, seed {}: starting corral serve",
        config.workers, config.device_types, config.clients, config.kills, config.seconds, config.seed
    );
    let dir = ServerProcess::fresh_dir("chaos")?;
    let mut server = ServerProcess::start(
        &dir,
        "new_workers = \"idle\"\npool_size = 16\ntunnel_ports = \"24000-24999\"\nmax_long_polls_per_user = 4096\n",
    )?;
    server.wait_ready(Duration::from_secs(120)).await?;
    let admin = ApiClient::new(&server.url, &server.token("admin.token")?);
    let agent_token = server.token("agent.token")?;
    let caps = worker_caps(config);
    let mut agent = Some(AgentThread::start(&server.url, &agent_token, AGENT_NAME, caps.clone()));
    wait_idle(&admin, config.workers).await?;
    let token = admin.create_user("chaos").await?;
    let pg = server.postgres().await?;
    let cluster_dir = pg.cluster_dir().to_path_buf();
    let mut side = SideDb::new(pg.config(corral_embedded_pg::CORRAL_DATABASE));

    let load = Rc::new(Load {
        url: server.url.clone(),
        token: token.clone(),
        device_types: config.device_types,
        seed: config.seed,
        tally: RefCell::new(Tally::default()),
        stopping: Cell::new(false),
    });
    let schedule = faults::schedule(config.fault_counts(), Duration::from_secs(config.seconds), config.seed);
    eprintln!("  {} workers idle; {} clients, {} faults", config.workers, config.clients, schedule.len());
    let began = Instant::now();
    let clients: Vec<_> = (0..config.clients).map(|n| actix_rt::spawn(load.clone().client(n))).collect();
    let mut rng = SplitMix64::new(config.seed ^ 0xFA17);
    let log = Target {
        server: &mut server,
        side: &mut side,
        cluster_dir: &cluster_dir,
        agent: &mut agent,
        agent_name: AGENT_NAME,
        agent_caps: &caps,
        agent_token: &agent_token,
        load: &load,
    }
    .run(&schedule, began, &mut rng)
    .await;
    if let Some(rest) = (began + Duration::from_secs(config.seconds)).checked_duration_since(Instant::now()) {
        tokio::time::sleep(rest).await;
    }
    load.stopping.set(true);
    for client in clients {
        let _ = client.await;
    }
    let seconds = began.elapsed().as_secs_f64();
    let log = log?;
    if server.has_exited() {
        bail!("corral serve exited by itself; see {}", dir.display());
    }
    eprintln!("  load over after {seconds:.1}s; draining and checking");

    let mut verdict = verify::Verdict::default();
    verify::settle(&admin, config.workers, &mut verdict).await?;
    let acknowledged = load.tally.borrow().acknowledged.clone();
    let user_client = ApiClient::new(&server.url, &token);
    verify::check(&mut side, &user_client, &acknowledged, &mut verdict).await?;
    for note in &verdict.worker_notes {
        eprintln!("  worker {note}");
    }
    if let Some(agent) = agent.take() {
        agent.stop().await;
    }
    server.stop()?;

    let tally = load.tally.borrow();
    let mut missed = Vec::new();
    let mut target = |ok: bool, what: String| {
        if !ok {
            missed.push(what);
        }
    };
    target(verdict.lost == 0, format!("{} acknowledged submissions lost", verdict.lost));
    target(verdict.double_leases == 0, format!("{} double leases", verdict.double_leases));
    target(verdict.double_bindings == 0, format!("{} double bindings", verdict.double_bindings));
    target(verdict.stuck_workers == 0, format!("{} stuck workers", verdict.stuck_workers));
    target(verdict.undrained == 0, format!("{} requests still live after the drain", verdict.undrained));
    target(tally.http_500 == 0, format!("{} answers 500", tally.http_500));
    target(tally.hangs == 0, format!("{} calls hung past the server's timeout", tally.hangs));
    target(log.outage.bad() == 0, format!("{} outage probes not answered 503 + Retry-After", log.outage.bad()));
    target(log.no_binding == 0, format!("{} restarts bound nothing within 60 s", log.no_binding));
    target(tally.cycles > 0, "no request went through its whole lifecycle".to_string());
    Ok(Line {
        scenario: "chaos",
        seed: config.seed,
        quick: config.quick,
        workers: config.workers,
        device_types: config.device_types,
        clients: config.clients,
        seconds: round_to(seconds, 3),
        kills: log.kills,
        restarts: log.restarts,
        db_outages: log.outages,
        agent_crashes: log.agent_crashes,
        backend_terminations: log.terminations,
        backends_terminated: log.backends_terminated,
        lock_holds: log.lock_holds,
        cycles: tally.cycles,
        ended_early: tally.ended_early,
        acknowledged: verdict.acknowledged,
        lost: verdict.lost,
        lost_in_db: verdict.lost_in_db,
        lost_in_api: verdict.lost_in_api,
        double_leases: verdict.double_leases,
        double_bindings: verdict.double_bindings,
        stuck_workers: verdict.stuck_workers,
        explained_workers: verdict.explained_workers,
        idle_workers: verdict.idle_workers,
        undrained: verdict.undrained,
        drain_s: round_to(verdict.drain_s, 3),
        http_500: tally.http_500,
        hangs: tally.hangs,
        restarts_without_binding: log.no_binding,
        outage_probes: log.outage.sent,
        outage_503: log.outage.unavailable,
        outage_2xx: log.outage.ok,
        outage_bad: log.outage.bad(),
        outage_max_answer_s: round_to(log.outage.max_answer_s, 3),
        ready_s: Spread::of(&log.ready_s),
        first_binding_s: Spread::of(&log.first_binding_s),
        first_2xx_after_db_s: Spread::of(&log.first_2xx_after_db_s),
        errors: tally.errors.clone(),
        requests_in_db: verdict.requests_in_db,
        leases_in_db: verdict.leases_in_db,
        missed,
        build: if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

/// Waits until `workers` workers are idle (60 s at most).
async fn wait_idle(admin: &ApiClient, workers: usize) -> Result<()> {
    let started = Instant::now();
    loop {
        let idle = admin.count_workers(WorkerState::Idle).await?;
        if idle == workers {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("only {idle} of {workers} workers became idle");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(list: &[&str]) -> Result<Config> {
        crate::parse_options::<Options>(list)?.resolve()
    }

    #[test]
    fn defaults_quick_and_options() {
        let full = parse(&[]).unwrap();
        assert_eq!(
            full,
            Config { kills: 20, seconds: 120, seed: 1, workers: 20, device_types: 4, clients: 8, quick: false }
        );
        assert_eq!(full.fault_counts().agent_crashes, 3);
        let quick = parse(&["--quick"]).unwrap();
        assert_eq!((quick.kills, quick.seconds, quick.quick), (3, 30, true));
        let set = parse(&["--kills", "5", "--seconds", "60", "--seed", "9", "--clients", "2"]).unwrap();
        assert_eq!((set.kills, set.seconds, set.seed, set.clients), (5, 60, 9, 2));
    }

    #[test]
    fn bad_arguments_are_refused() {
        for (list, expected) in [
            (&["--kills"][..], "a value is required for '--kills <N>'"),
            (&["--seconds", "soon"][..], "for '--seconds <S>': needs a non-negative integer"),
            (&["--seconds", "0"][..], "--seconds must be"),
            (&["--device-types", "30"][..], "at most as many types as workers"),
            (&["--clients", "0"][..], "--clients must be"),
            (&["--bogus"][..], "unexpected argument '--bogus'"),
        ] {
            let err = parse(list).unwrap_err().to_string();
            assert!(err.contains(expected), "{list:?}: {err}");
        }
    }

    #[test]
    fn spread_is_p50_and_max() {
        let spread = Spread::of(&[0.5, 2.0, 1.0]);
        assert_eq!((spread.p50, spread.max, spread.n), (1.0, 2.0, 3));
        assert_eq!(Spread::of(&[]).n, 0);
    }
}
