//! `corral bench lifecycle`: the whole request lifecycle end to end over
//! HTTP, against `corral serve` on its embedded PostgreSQL with a simulated
//! agent.
//!
//! Workload (the portable one other schedulers are measured on): P workers,
//! worker i with caps `{device_type: t(i mod K)}`; C concurrent clients each
//! loop: pick a random type, create a request for it, wait until it is
//! `in_progress` (acquire with `?wait=`), close it. Every step is durable:
//! the server commits each change before it answers.
//!
//! Figures: completed cycles per second and the create→in_progress latency
//! (from sending the create to receiving the acquire answer). Baseline, in
//! the same run: `pgbench` single-row updates against the same PostgreSQL
//! at the same client count, i.e. the commit ceiling at that concurrency.
//! Also the database floor (`floor.rs`): the same cycle's statements
//! called directly by C tasks, i.e. what PostgreSQL alone allows for this
//! workload and durability, and CPU per cycle for both.
//!
//! Checks: every create answered 201, every acquire 200 with a worker and a
//! tunnel port, every close 200 with state `done`; at the end no request is
//! left live and every worker is idle again.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use corral_agent::{AgentOptions, Simulated};
use corral_core::{Caps, WorkerState};
use serde::Serialize;
use serde_json::json;

mod floor;

use crate::options;
use crate::report::{percentile, print_json_line, round_to};
use crate::rng::SplitMix64;
use crate::server::{ApiClient, ServerProcess, cpu_seconds, load_average, pgbench_tps, postgres_cpu_seconds};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Size {
    p: usize,
    k: usize,
    c: usize,
}

const DEFAULT_SIZES: [Size; 2] = [Size { p: 20, k: 4, c: 4 }, Size { p: 200, k: 10, c: 16 }];

/// `corral bench lifecycle`.
#[derive(clap::Args, Debug)]
pub(crate) struct Options {
    /// Workers, device types, concurrent clients [default: 20,4,4 and 200,10,16].
    #[arg(value_name = "P,K,C", value_parser = parse_size)]
    sizes: Vec<Size>,
    /// How long each size runs [default: 30; 3 with --quick].
    #[arg(long, value_name = "N", value_parser = options::count_u64)]
    seconds: Option<u64>,
    /// Only 20,4,4 for 3 s (CI: checks it works, judges no figure).
    #[arg(long)]
    quick: bool,
}

impl Options {
    pub(crate) fn resolve(self) -> Config {
        let Options { mut sizes, seconds, quick } = self;
        if sizes.is_empty() {
            sizes = if quick { vec![DEFAULT_SIZES[0]] } else { DEFAULT_SIZES.to_vec() };
        }
        Config { sizes, seconds: seconds.unwrap_or(if quick { 3 } else { 30 }) }
    }
}

/// A size `P,K,C`: all positive, K at most P.
fn parse_size(text: &str) -> Result<Size, String> {
    let parts: Vec<usize> = text
        .split(',')
        .map(|n| n.parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| "a size is P,K,C (workers, device types, concurrent clients), each a number".to_string())?;
    let [p, k, c] = parts[..] else { return Err("a size is P,K,C (three numbers)".to_string()) };
    if p == 0 || k == 0 || c == 0 || k > p {
        return Err("P, K and C must be positive and K at most P".to_string());
    }
    Ok(Size { p, k, c })
}

pub(crate) struct Config {
    sizes: Vec<Size>,
    seconds: u64,
}

#[derive(Serialize)]
struct Line {
    scenario: &'static str,
    p: usize,
    k: usize,
    c: usize,
    seconds: f64,
    cycles: usize,
    cycles_per_s: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    pgbench_tps: f64,
    ratio: f64,
    server_cpu_s: f64,
    postgres_cpu_s: f64,
    bench_cpu_s: f64,
    /// CPU of server, PostgreSQL and load generator (with the simulated
    /// agent) per completed cycle: what the cycle costs, whatever else the
    /// machine is doing.
    cpu_ms_per_cycle: f64,
    load_avg_before: f64,
    /// The same cycle's statements called directly from C tasks, no server
    /// (see `floor.rs`): PostgreSQL's ceiling for this workload.
    db_floor_cycles_per_s: f64,
    db_floor_p50_ms: f64,
    db_floor_p99_ms: f64,
    db_floor_cpu_ms_per_cycle: f64,
}

pub(crate) fn run(config: Config) -> Result<()> {
    let Config { sizes, seconds } = config;
    for size in sizes {
        let line = actix_rt::System::new().block_on(run_size(size, Duration::from_secs(seconds)))?;
        print_json_line(&line)?;
    }
    Ok(())
}

fn device_type(i: usize) -> String {
    format!("t{i}")
}

/// Runs a simulated agent on its own thread until `stop` is sent.
fn spawn_agent(
    url: String,
    token: String,
    size: Size,
) -> (tokio::sync::watch::Sender<bool>, std::thread::JoinHandle<()>) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let handle = std::thread::spawn(move || {
        let caps = (0..size.p).map(|i| {
            let mut caps = Caps::new();
            caps.insert("device_type", device_type(i % size.k));
            caps
        });
        let backend = Simulated::with_caps("bench-lifecycle", "127.0.0.1:22", "lab", caps);
        let mut options = AgentOptions::new(url, token);
        options.poll_wait = Duration::from_secs(20);
        actix_rt::System::new().block_on(async move {
            if let Err(err) = corral_agent::run(Rc::new(backend), options, stopped).await {
                eprintln!("agent: {err:#}");
            }
        });
    });
    (stop, handle)
}

/// Waits until all `p` workers are idle, or fails after `timeout` saying
/// how many `what`.
async fn wait_all_idle(admin: &ApiClient, p: usize, timeout: Duration, what: &str) -> Result<()> {
    let started = Instant::now();
    loop {
        let idle = admin.count_workers(WorkerState::Idle).await?;
        if idle == p {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!("only {idle} of {p} workers {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run_size(size: Size, duration: Duration) -> Result<Line> {
    eprintln!("lifecycle P={} K={} C={} for {duration:?}: starting corral serve", size.p, size.k, size.c);
    let dir = ServerProcess::fresh_dir("lifecycle")?;
    // All C clients are one user, each in a long-poll acquire: lift the
    // per-user limit of concurrent long-polls (default 16) for large C.
    let mut server = ServerProcess::start(
        &dir,
        "new_workers = \"idle\"\npool_size = 48\ntunnel_ports = \"21000-21999\"\n\
            max_long_polls_per_user = 4096\n",
    )?;
    server.wait_ready(Duration::from_secs(120)).await?;
    let admin = ApiClient::new(&server.url, &server.token("admin.token")?);
    let (agent_stop, agent) = spawn_agent(server.url.clone(), server.token("agent.token")?, size);

    wait_all_idle(&admin, size.p, Duration::from_secs(60), "became idle").await?;
    let token = admin.create_user("bench").await?;

    eprintln!("  {} workers idle; running {} clients", size.p, size.c);
    let cluster_dir = server.postgres().await?.cluster_dir().to_path_buf();
    let load_avg_before = load_average()?;
    let cpu_before = (server.cpu_seconds()?, postgres_cpu_seconds(&cluster_dir)?, cpu_seconds(std::process::id())?);
    let latencies = Rc::new(RefCell::new(Vec::<u64>::new()));
    let deadline = Instant::now() + duration;
    let began = Instant::now();
    let mut clients = Vec::new();
    for n in 0..size.c {
        let client = ApiClient::new(&server.url, &token);
        let latencies = latencies.clone();
        clients.push(actix_rt::spawn(async move {
            let mut rng = SplitMix64::new(0xC0FFEE + n as u64);
            let mut cycles = 0usize;
            while Instant::now() < deadline {
                let kind = device_type(rng.below(size.k));
                let sent = Instant::now();
                let (status, request) = client.post("/v1/requests", &json!({"caps": {"device_type": kind}})).await?;
                if status != 201 {
                    bail!("create answered {status}: {request}");
                }
                let id = request["id"].as_i64().context("request id")?;
                let (status, access) = client.post(&format!("/v1/requests/{id}/acquire?wait=30s"), &json!({})).await?;
                if status != 200 || access["worker"].as_str().is_none() || access["port"].as_u64().is_none() {
                    bail!("acquire of {id} answered {status}: {access}");
                }
                latencies.borrow_mut().push(sent.elapsed().as_micros() as u64);
                let (status, closed) = client.post(&format!("/v1/requests/{id}/close"), &json!({})).await?;
                if status != 200 || closed["state"] != "done" {
                    bail!("close of {id} answered {status}: {closed}");
                }
                cycles += 1;
            }
            Ok::<usize, anyhow::Error>(cycles)
        }));
    }
    let mut cycles = 0;
    for client in clients {
        cycles += client.await.context("client task")??;
    }
    let elapsed = began.elapsed().as_secs_f64();
    let server_cpu = server.cpu_seconds()? - cpu_before.0;
    let postgres_cpu = postgres_cpu_seconds(&cluster_dir)? - cpu_before.1;
    let bench_cpu = cpu_seconds(std::process::id())? - cpu_before.2;

    // Nothing left live; every worker idle again.
    let live = admin.all("/v1/requests?state=waiting,in_progress").await?;
    if !live.is_empty() {
        bail!("{} requests are still live after every client closed its own", live.len());
    }
    wait_all_idle(&admin, size.p, Duration::from_secs(30), "are idle after the run").await?;
    let _ = agent_stop.send(true);
    let pg = server.postgres().await?;
    let baseline_seconds = duration.as_secs().clamp(3, 10);
    eprintln!("  {cycles} cycles in {elapsed:.1}s; the same statements without the server, {} tasks", size.c);
    let floor = floor::run(&pg, size.c, Duration::from_secs(baseline_seconds)).await.context("database floor")?;
    eprintln!("  {} floor cycles; pgbench baseline with {} clients", floor.cycles, size.c);
    let tps = tokio::task::spawn_blocking({
        let clients = size.c;
        move || pgbench_tps(&pg, clients, baseline_seconds)
    })
    .await??;
    server.stop()?;
    let _ = agent.join();

    let mut samples = latencies.borrow().clone();
    if samples.len() != cycles || cycles == 0 {
        bail!("{cycles} cycles but {} latency samples", samples.len());
    }
    samples.sort_unstable();
    let ms = |us: u64| round_to(us as f64 / 1000.0, 3);
    let cycles_per_s = cycles as f64 / elapsed;
    Ok(Line {
        scenario: "lifecycle",
        p: size.p,
        k: size.k,
        c: size.c,
        seconds: round_to(elapsed, 3),
        cycles,
        cycles_per_s: round_to(cycles_per_s, 1),
        p50_ms: ms(percentile(&samples, 50.0)),
        p95_ms: ms(percentile(&samples, 95.0)),
        p99_ms: ms(percentile(&samples, 99.0)),
        max_ms: ms(*samples.last().unwrap_or(&0)),
        pgbench_tps: round_to(tps, 1),
        ratio: round_to(cycles_per_s / tps, 4),
        server_cpu_s: round_to(server_cpu, 2),
        postgres_cpu_s: round_to(postgres_cpu, 2),
        bench_cpu_s: round_to(bench_cpu, 2),
        cpu_ms_per_cycle: round_to((server_cpu + postgres_cpu + bench_cpu) * 1000.0 / cycles as f64, 3),
        load_avg_before,
        db_floor_cycles_per_s: round_to(floor.cycles_per_s, 1),
        db_floor_p50_ms: ms(floor.p50_us),
        db_floor_p99_ms: ms(floor.p99_us),
        db_floor_cpu_ms_per_cycle: round_to(floor.cpu_ms_per_cycle, 3),
    })
}
