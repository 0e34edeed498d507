//! `corral bench heartbeats`: what a large lab's agents cost the server
//! while nothing else happens.
//!
//! # The run
//!
//! `corral serve` on its embedded PostgreSQL with its default
//! `heartbeat_interval` (10 s) and `session_timeout` (30 s). A load
//! generator on its own thread (its own actix system) opens S agent
//! sessions (4 at a time) that register W workers between them (default
//! 10,000 over 100), each with a `device_type` and an `arch` cap. By
//! default the server makes new workers `idle` (`new_workers = "idle"`):
//! they go through `prepare`, which the generator confirms, so a session
//! the server wrongly believed lost would fail them. With
//! `--new-workers maintenance` they stay in maintenance, which a lost
//! session does not change (only the heartbeat errors would show it).
//!
//! Like a real agent, every session heartbeats on a fixed schedule, every
//! `heartbeat_interval` as the server announced it, with session `s` of S
//! offset by `s/S` of an interval (so the S sessions are spread evenly over
//! the interval), each heartbeat carrying healthy facts (`battery`,
//! `temperature`, `device_attached`) for each of its workers; and keeps a
//! command long-poll (25 s) going, answering every command with an `ok`
//! result. Heartbeats of one session are sequential: a slot that comes
//! while the previous heartbeat is still unanswered a whole interval later
//! is missed.
//!
//! Once every session is open and every worker has settled (idle, or in
//! maintenance), the measured window of `--seconds` (300 s; 60 s with
//! `--quick`) begins.
//!
//! # Figures
//!
//! - `cpu_share`: CPU seconds (user + system, `/proc/PID/stat`) of the
//!   `corral serve` process during the window over its wall time; 1.0 is
//!   one core. `postgres_cpu_share` is the same for the embedded cluster
//!   (postmaster, its live children, and the children it reaped), and
//!   `bench_cpu_share` for this process (the generator), which shares the
//!   machine.
//! - `p50_ms`/`p99_ms`/`max_ms`: latency of the heartbeat POSTs whose slot
//!   fell in the window, from just before sending to the parsed answer
//!   (failed ones included, at the time they took to fail).
//! - `false_failures`: workers in state `failed` at the end of the window
//!   (`GET /v1/workers?state=failed` as admin, every page), read while the
//!   sessions are still heartbeating.
//!
//! # Checks (the run fails loudly when one does not hold)
//!
//! Every session opens and registers all its workers; every worker settles;
//! the window holds exactly the heartbeats the schedule implies (no missed
//! slot). After the JSON line is printed, the run fails if any worker is
//! failed, any heartbeat failed (a non-2xx answer or no answer in 10 s) or
//! any session was lost.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use corral_agent::simulated::simulated_uuid;
use corral_agent::{AgentClient, ClientError};
use corral_core::{Caps, Groups, SessionId};
use corral_proto::agent::{Action, CommandResult, Heartbeat, Observation, OpenSession, WorkerRegistration};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::options;
use crate::report::{percentile, print_json_line, round_to};
use crate::server::{ApiClient, ServerProcess, cpu_seconds, load_average, postgres_cpu_seconds};

/// Sessions opened at the same time.
const OPEN_CONCURRENCY: usize = 4;
/// How long one command long-poll waits (the agent's default).
const POLL_WAIT: Duration = Duration::from_secs(25);
/// Longest time for opening every session, and for every worker to settle.
const SETUP_TIMEOUT: Duration = Duration::from_secs(900);
/// Error messages kept for the report on stderr.
const KEPT_ERRORS: usize = 20;

/// `corral bench heartbeats`.
#[derive(clap::Args, Debug)]
#[command(after_help = "The server keeps its default heartbeat_interval (10s) and session_timeout (30s).")]
pub(crate) struct Options {
    /// Simulated workers in all.
    #[arg(long, value_name = "N", default_value = "10000", value_parser = options::positive)]
    workers: usize,
    /// Agent sessions they are spread over evenly.
    #[arg(long, value_name = "N", default_value = "100", value_parser = options::positive)]
    sessions: usize,
    /// Length of the measured window [default: 300; 60 with --quick].
    #[arg(long, value_name = "N", value_parser = options::positive_u64)]
    seconds: Option<u64>,
    /// The server's new_workers: idle (workers are prepared and idle, so a session
    /// wrongly expired fails them) or maintenance.
    #[arg(long, value_name = "S", value_enum, default_value = "idle")]
    new_workers: NewWorkers,
    /// A 60 s window, for CI (checks that it works, judges no figure).
    #[arg(long)]
    quick: bool,
}

impl Options {
    pub(crate) fn resolve(self) -> Result<Config> {
        let Options { workers, sessions, seconds, new_workers, quick } = self;
        if sessions > workers {
            bail!("--sessions ({sessions}) must not exceed --workers ({workers})");
        }
        let seconds = seconds.unwrap_or(if quick { 60 } else { 300 });
        Ok(Config { workers, sessions, seconds, new_workers, quick })
    }
}

/// The state new workers are registered in, and where they settle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum NewWorkers {
    /// Registered in `prepare`; idle once the agent confirms.
    Idle,
    /// Registered (and kept) in maintenance.
    Maintenance,
}

impl NewWorkers {
    /// The server's `new_workers` setting, which is also the state they
    /// settle in.
    fn as_str(self) -> &'static str {
        match self {
            NewWorkers::Idle => "idle",
            NewWorkers::Maintenance => "maintenance",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Config {
    workers: usize,
    sessions: usize,
    seconds: u64,
    new_workers: NewWorkers,
    quick: bool,
}

#[derive(Serialize)]
struct Line {
    scenario: &'static str,
    workers: usize,
    sessions: usize,
    interval_s: f64,
    session_timeout_s: f64,
    /// Wall time of the measured window.
    seconds: f64,
    cpu_share: f64,
    postgres_cpu_share: f64,
    bench_cpu_share: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Heartbeats sent with their slot in the window, and how many the
    /// schedule implies.
    heartbeats: usize,
    heartbeats_expected: usize,
    heartbeat_errors: usize,
    false_failures: usize,
    workers_by_state: BTreeMap<String, usize>,
    /// Commands the generator answered over the whole run (setup included).
    commands: BTreeMap<&'static str, usize>,
    commands_in_window: usize,
    sessions_lost: usize,
    poll_errors: usize,
    result_errors: usize,
    new_workers: &'static str,
    /// Opening every session, then until every worker settled.
    open_s: f64,
    settle_s: f64,
    server_rss_mb: f64,
    load_avg_before: f64,
    load_avg_after: f64,
    quick: bool,
    build: &'static str,
}

pub(crate) fn run(config: Config) -> Result<()> {
    let line = actix_rt::System::new().block_on(measure(&config))?;
    print_json_line(&line)?;
    let mut problems = Vec::new();
    if line.false_failures > 0 {
        problems.push(format!("{} workers failed", line.false_failures));
    }
    if line.heartbeat_errors > 0 {
        problems.push(format!("{} heartbeats failed", line.heartbeat_errors));
    }
    if line.sessions_lost > 0 {
        problems.push(format!("{} sessions were lost", line.sessions_lost));
    }
    if !problems.is_empty() {
        bail!("heartbeats: {} (see stderr)", problems.join(", "));
    }
    Ok(())
}

/// Workers `[start, end)` of all belong to session `s`.
fn worker_range(s: usize, sessions: usize, workers: usize) -> std::ops::Range<usize> {
    (s * workers / sessions)..((s + 1) * workers / sessions)
}

fn agent_name(s: usize) -> String {
    format!("bench-hb-{s:03}")
}

fn worker_caps(i: usize) -> Caps {
    let mut caps = Caps::new();
    caps.insert("device_type", format!("t{}", i % 50));
    caps.insert("arch", if i.is_multiple_of(2) { "arm64" } else { "x86_64" });
    caps
}

/// What a healthy device reports (see `corral_core::health`).
fn healthy_facts(i: usize) -> Map<String, Value> {
    let mut facts = Map::new();
    facts.insert("battery".to_string(), Value::from(50 + i % 50));
    facts.insert("temperature".to_string(), Value::from(30 + i % 20));
    facts.insert("device_attached".to_string(), Value::from(true));
    facts
}

/// The first slot of session `s`: `anchor` plus `s/sessions` of an
/// interval; its slots follow every `interval`.
fn first_slot(anchor: Instant, interval: Duration, s: usize, sessions: usize) -> Instant {
    anchor + interval.mul_f64(s as f64 / sessions as f64)
}

/// Slots `first + k·interval` (k ≥ 0) that are before `t`.
fn slots_before(first: Instant, interval: Duration, t: Instant) -> u64 {
    match t.checked_duration_since(first) {
        Some(d) => d.as_nanos().div_ceil(interval.as_nanos()) as u64,
        None => 0,
    }
}

/// Slots `first + k·interval` in `[from, to)`.
fn slots_in(first: Instant, interval: Duration, from: Instant, to: Instant) -> u64 {
    slots_before(first, interval, to).saturating_sub(slots_before(first, interval, from))
}

async fn measure(config: &Config) -> Result<Line> {
    eprintln!(
        "heartbeats: {} workers over {} sessions, {} s window, new workers {}: starting corral serve",
        config.workers,
        config.sessions,
        config.seconds,
        config.new_workers.as_str()
    );
    let dir = ServerProcess::fresh_dir("heartbeats")?;
    let mut server = ServerProcess::start(&dir, &format!("new_workers = \"{}\"\n", config.new_workers.as_str()))?;
    server.wait_ready(Duration::from_secs(120)).await?;
    let admin = ApiClient::new(&server.url, &server.token("admin.token")?);
    let plan = Plan {
        url: server.url.clone(),
        token: server.token("agent.token")?,
        workers: config.workers,
        sessions: config.sessions,
    };
    let progress = Arc::new(Progress::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (opened_tx, opened_rx) = oneshot::channel();
    let generator = std::thread::Builder::new()
        .name("bench-agents".to_string())
        .spawn({
            let progress = progress.clone();
            move || actix_rt::System::new().block_on(generate(plan, opened_tx, stop_rx, progress))
        })
        .context("starting the load generator thread")?;

    let opened = tokio::time::timeout(SETUP_TIMEOUT, opened_rx)
        .await
        .context("opening the agent sessions timed out")?
        .context("the load generator stopped")?
        .map_err(|e| anyhow!("opening the agent sessions: {e}"))?;
    eprintln!(
        "  {} sessions open in {:.1}s (heartbeat_interval {:?}, session_timeout {:?}); waiting for {} workers to be {}",
        config.sessions,
        opened.seconds,
        opened.interval,
        opened.session_timeout,
        config.workers,
        config.new_workers.as_str()
    );
    let settle_started = Instant::now();
    let mut last_note = Instant::now();
    loop {
        let settled = admin.all(&format!("/v1/workers?state={}", config.new_workers.as_str())).await?.len();
        if settled == config.workers {
            break;
        }
        if settle_started.elapsed() > SETUP_TIMEOUT {
            let by_state = count_states(&admin.all("/v1/workers").await?);
            bail!("only {settled} of {} workers settled in {SETUP_TIMEOUT:?}: {by_state:?}", config.workers);
        }
        if last_note.elapsed() > Duration::from_secs(5) {
            eprintln!("  {settled} of {} workers {}", config.workers, config.new_workers.as_str());
            last_note = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let settle_s = settle_started.elapsed().as_secs_f64();
    eprintln!("  all workers {} after {settle_s:.1}s; measuring for {} s", config.new_workers.as_str(), config.seconds);

    let cluster_dir = server.postgres().await?.cluster_dir().to_path_buf();
    let load_avg_before = load_average()?;
    let commands_before = progress.commands.load(Ordering::Relaxed);
    let (server_cpu0, pg_cpu0, bench_cpu0) =
        (server.cpu_seconds()?, postgres_cpu_seconds(&cluster_dir)?, cpu_seconds(std::process::id())?);
    let window_start = Instant::now();
    let window_end = window_start + Duration::from_secs(config.seconds);
    while Instant::now() < window_end {
        let left = window_end.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(Duration::from_secs(30))).await;
        eprintln!(
            "  {:.0}s: {} heartbeats sent, {} failed",
            window_start.elapsed().as_secs_f64(),
            progress.beats.load(Ordering::Relaxed),
            progress.beat_errors.load(Ordering::Relaxed)
        );
    }
    let (server_cpu1, pg_cpu1, bench_cpu1) =
        (server.cpu_seconds()?, postgres_cpu_seconds(&cluster_dir)?, cpu_seconds(std::process::id())?);
    let wall = window_start.elapsed().as_secs_f64();
    let commands_in_window = progress.commands.load(Ordering::Relaxed) - commands_before;
    let load_avg_after = load_average()?;
    let server_rss_mb = server.rss_mb()?;

    // Read while the sessions are still alive and heartbeating.
    let failed = admin.all("/v1/workers?state=failed").await?;
    for worker in failed.iter().take(KEPT_ERRORS) {
        eprintln!("  failed: {} ({})", worker["uuid"], worker["reason"]);
    }
    let everyone = admin.all("/v1/workers").await?;
    let workers_by_state = count_states(&everyone);

    let _ = stop_tx.send(true);
    let report = tokio::task::spawn_blocking(move || generator.join())
        .await
        .context("joining the load generator")?
        .map_err(|_| anyhow!("the load generator panicked"))?;
    server.stop()?;

    if everyone.len() != config.workers {
        bail!("the server lists {} workers, {} were registered", everyone.len(), config.workers);
    }
    let tally = report.tally;
    for note in &tally.notes {
        eprintln!("  error: {note}");
    }
    let in_window = |slot: Instant| slot >= window_start && slot < window_end;
    let beats: Vec<&Beat> = tally.beats.iter().filter(|b| in_window(b.slot)).collect();
    let expected: u64 = (0..config.sessions)
        .map(|s| {
            let first = first_slot(report.anchor, report.interval, s, config.sessions);
            slots_in(first, report.interval, window_start, window_end)
        })
        .sum();
    let missed: Vec<&(usize, Instant)> = tally.missed.iter().filter(|(_, slot)| in_window(*slot)).collect();
    if beats.len() as u64 != expected || !missed.is_empty() {
        bail!(
            "the window holds {} heartbeats, the schedule implies {expected}; {} slots missed (sessions {:?})",
            beats.len(),
            missed.len(),
            missed.iter().map(|(s, _)| *s).take(KEPT_ERRORS).collect::<Vec<_>>()
        );
    }
    if beats.is_empty() {
        bail!("no heartbeat fell in the window");
    }
    let heartbeat_errors = beats.iter().filter(|b| b.error.is_some()).count();
    let mut samples: Vec<u64> = beats.iter().map(|b| b.latency.as_micros() as u64).collect();
    samples.sort_unstable();
    let ms = |us: u64| round_to(us as f64 / 1000.0, 3);
    let share = |cpu: f64| round_to(cpu / wall, 4);
    Ok(Line {
        scenario: "heartbeats",
        workers: config.workers,
        sessions: config.sessions,
        interval_s: report.interval.as_secs_f64(),
        session_timeout_s: opened.session_timeout.as_secs_f64(),
        seconds: round_to(wall, 3),
        cpu_share: share(server_cpu1 - server_cpu0),
        postgres_cpu_share: share(pg_cpu1 - pg_cpu0),
        bench_cpu_share: share(bench_cpu1 - bench_cpu0),
        p50_ms: ms(percentile(&samples, 50.0)),
        p99_ms: ms(percentile(&samples, 99.0)),
        max_ms: ms(samples[samples.len() - 1]),
        heartbeats: beats.len(),
        heartbeats_expected: expected as usize,
        heartbeat_errors,
        false_failures: failed.len(),
        workers_by_state,
        commands: tally.commands,
        commands_in_window,
        sessions_lost: tally.sessions_lost,
        poll_errors: tally.poll_errors,
        result_errors: tally.result_errors,
        new_workers: config.new_workers.as_str(),
        open_s: round_to(opened.seconds, 3),
        settle_s: round_to(settle_s, 3),
        server_rss_mb: round_to(server_rss_mb, 1),
        load_avg_before,
        load_avg_after,
        quick: config.quick,
        build: if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

fn count_states(workers: &[Value]) -> BTreeMap<String, usize> {
    let mut by_state = BTreeMap::new();
    for worker in workers {
        *by_state.entry(worker["state"].as_str().unwrap_or("?").to_string()).or_insert(0) += 1;
    }
    by_state
}

/// What the load generator is asked to do.
struct Plan {
    url: String,
    token: String,
    workers: usize,
    sessions: usize,
}

/// Counters the main thread reads for progress lines.
#[derive(Default)]
struct Progress {
    beats: AtomicUsize,
    beat_errors: AtomicUsize,
    commands: AtomicUsize,
}

/// Every session is open.
struct Opened {
    seconds: f64,
    interval: Duration,
    session_timeout: Duration,
}

/// One heartbeat: its scheduled slot, how long it took, how it failed.
struct Beat {
    slot: Instant,
    latency: Duration,
    error: Option<String>,
}

#[derive(Default)]
struct Tally {
    beats: Vec<Beat>,
    /// Slots skipped because the previous heartbeat of the session was
    /// still unanswered an interval later: (session, slot).
    missed: Vec<(usize, Instant)>,
    commands: BTreeMap<&'static str, usize>,
    sessions_lost: usize,
    poll_errors: usize,
    result_errors: usize,
    /// The first few error messages.
    notes: Vec<String>,
}

impl Tally {
    fn note(&mut self, text: String) {
        if self.notes.len() < KEPT_ERRORS {
            self.notes.push(text);
        }
    }
}

struct GeneratorReport {
    anchor: Instant,
    interval: Duration,
    tally: Tally,
}

/// The load generator: every session's task, until `stop` turns true (or
/// its sender is dropped).
async fn generate(
    plan: Plan,
    opened_tx: oneshot::Sender<Result<Opened, String>>,
    stop: watch::Receiver<bool>,
    progress: Arc<Progress>,
) -> GeneratorReport {
    let anchor = Instant::now();
    let plan = Rc::new(plan);
    let tally = Rc::new(RefCell::new(Tally::default()));
    let gate = Rc::new(Semaphore::new(OPEN_CONCURRENCY));
    let (open_tx, mut open_rx) = mpsc::unbounded_channel();
    let tasks: Vec<_> = (0..plan.sessions)
        .map(|s| {
            let session =
                SessionTask { s, plan: plan.clone(), anchor, tally: tally.clone(), progress: progress.clone() };
            actix_rt::spawn(session.run(gate.clone(), open_tx.clone(), stop.clone()))
        })
        .collect();
    drop(open_tx);
    let mut timing = None;
    let mut opened = 0;
    let mut failure = None;
    while opened < plan.sessions {
        match open_rx.recv().await {
            Some(Ok(t)) => {
                timing.get_or_insert(t);
                opened += 1;
            }
            Some(Err(e)) => {
                failure = Some(e);
                break;
            }
            None => break,
        }
    }
    let outcome = match (failure, timing) {
        (Some(e), _) => Err(e),
        (None, Some((interval, session_timeout))) if opened == plan.sessions => {
            Ok(Opened { seconds: anchor.elapsed().as_secs_f64(), interval, session_timeout })
        }
        _ => Err(format!("only {opened} of {} sessions opened", plan.sessions)),
    };
    let interval = timing.map(|(interval, _)| interval).unwrap_or_default();
    let _ = opened_tx.send(outcome);
    for task in tasks {
        let _ = task.await;
    }
    let tally = std::mem::take(&mut *tally.borrow_mut());
    GeneratorReport { anchor, interval, tally }
}

/// One simulated agent session.
struct SessionTask {
    s: usize,
    plan: Rc<Plan>,
    anchor: Instant,
    tally: Rc<RefCell<Tally>>,
    progress: Arc<Progress>,
}

type OpenOutcome = Result<(Duration, Duration), String>;

impl SessionTask {
    async fn run(
        self,
        gate: Rc<Semaphore>,
        opened_tx: mpsc::UnboundedSender<OpenOutcome>,
        stop: watch::Receiver<bool>,
    ) {
        let s = self.s;
        let client = AgentClient::new(&self.plan.url, &self.plan.token);
        let name = agent_name(s);
        let range = worker_range(s, self.plan.sessions, self.plan.workers);
        let workers: Vec<WorkerRegistration> = range
            .clone()
            .map(|i| WorkerRegistration {
                uuid: simulated_uuid(&name, i - range.start),
                caps: worker_caps(i),
                groups: Groups::new(),
                ssh_addr: "127.0.0.1:22".to_string(),
                user: "lab".to_string(),
                host_key: None,
                hooks: None,
            })
            .collect();
        let beat = Heartbeat {
            workers: workers
                .iter()
                .zip(range.clone())
                .map(|(w, i)| Observation { uuid: w.uuid, facts: healthy_facts(i), dimensions: Default::default() })
                .collect(),
        };
        let opened = {
            let Ok(_permit) = gate.acquire().await else { return };
            client.open(&OpenSession { agent: name.clone(), workers }).await
        };
        let opened = match opened {
            Ok(opened) if opened.workers.len() == range.len() => opened,
            Ok(opened) => {
                let _ = opened_tx.send(Err(format!(
                    "session {s}: {} of {} workers registered",
                    opened.workers.len(),
                    range.len()
                )));
                return;
            }
            Err(err) => {
                let _ = opened_tx.send(Err(format!("session {s}: {err}")));
                return;
            }
        };
        let _ = opened_tx.send(Ok((opened.heartbeat_interval, opened.session_timeout)));
        let first = first_slot(self.anchor, opened.heartbeat_interval, s, self.plan.sessions);
        tokio::join!(
            self.heartbeats(&client, opened.session, &beat, first, opened.heartbeat_interval, stop.clone()),
            self.commands(&client, opened.session, stop),
        );
    }

    /// Heartbeats at `first + k·interval` for every k whose slot is still
    /// ahead when the loop gets there.
    async fn heartbeats(
        &self,
        client: &AgentClient,
        session: SessionId,
        beat: &Heartbeat,
        first: Instant,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut k = slots_before(first, interval, Instant::now()) as u32;
        loop {
            let slot = first + interval * k;
            k += 1;
            tokio::select! {
                _ = tokio::time::sleep_until(slot.into()) => {}
                _ = stop.changed() => return,
            }
            if slot.elapsed() >= interval {
                self.tally.borrow_mut().missed.push((self.s, slot));
                continue;
            }
            let sent = Instant::now();
            let result = client.heartbeat(session, beat).await;
            let latency = sent.elapsed();
            self.progress.beats.fetch_add(1, Ordering::Relaxed);
            let mut tally = self.tally.borrow_mut();
            match result {
                Ok(_) => tally.beats.push(Beat { slot, latency, error: None }),
                Err(err) => {
                    self.progress.beat_errors.fetch_add(1, Ordering::Relaxed);
                    tally.note(format!("session {}: heartbeat: {err}", self.s));
                    tally.beats.push(Beat { slot, latency, error: Some(err.to_string()) });
                    if matches!(err, ClientError::SessionGone(_)) {
                        tally.sessions_lost += 1;
                        return;
                    }
                }
            }
        }
    }

    /// The command long-poll: every command is answered `ok` at once.
    async fn commands(&self, client: &AgentClient, session: SessionId, mut stop: watch::Receiver<bool>) {
        let mut after = 0u64;
        let mut incarnation: Option<String> = None;
        loop {
            let batch = tokio::select! {
                batch = client.poll(session, after, incarnation.as_deref(), POLL_WAIT) => batch,
                _ = stop.changed() => return,
            };
            let batch = match batch {
                Ok(batch) => batch,
                Err(ClientError::SessionGone(why)) => {
                    self.tally.borrow_mut().note(format!("session {}: long-poll: session gone: {why}", self.s));
                    return;
                }
                Err(err) => {
                    {
                        let mut tally = self.tally.borrow_mut();
                        tally.poll_errors += 1;
                        tally.note(format!("session {}: long-poll: {err}", self.s));
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.changed() => return,
                    }
                }
            };
            if incarnation.as_deref() != Some(batch.incarnation.as_str()) {
                after = 0;
                incarnation = Some(batch.incarnation.clone());
            }
            if batch.commands.is_empty() {
                continue;
            }
            let mut results = Vec::with_capacity(batch.commands.len());
            {
                let mut tally = self.tally.borrow_mut();
                for command in batch.commands {
                    after = after.max(command.seq);
                    *tally.commands.entry(action_name(&command.action)).or_insert(0) += 1;
                    results.push(CommandResult {
                        seq: command.seq,
                        worker: command.worker,
                        fence: command.fence,
                        ok: true,
                        message: String::new(),
                        host_key: None,
                        stale: false,
                    });
                }
            }
            self.progress.commands.fetch_add(results.len(), Ordering::Relaxed);
            if let Err(err) = client.results(session, &results).await {
                let mut tally = self.tally.borrow_mut();
                tally.result_errors += 1;
                tally.note(format!("session {}: posting {} results: {err}", self.s, results.len()));
            }
        }
    }
}

fn action_name(action: &Action) -> &'static str {
    match action {
        Action::Prepare => "prepare",
        Action::StartLease { .. } => "start_lease",
        Action::ExtendLease { .. } => "extend_lease",
        Action::Revoke { .. } => "revoke",
        Action::Maintenance => "maintenance",
        Action::HealthCheck => "health_check",
        Action::PowerCycle => "power_cycle",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(list: &[&str]) -> Result<Config> {
        crate::parse_options::<Options>(list)?.resolve()
    }

    #[test]
    fn defaults_and_quick() {
        let full = parse(&[]).unwrap();
        assert_eq!(
            full,
            Config { workers: 10_000, sessions: 100, seconds: 300, new_workers: NewWorkers::Idle, quick: false }
        );
        let quick = parse(&["--quick"]).unwrap();
        assert_eq!(quick, Config { seconds: 60, quick: true, ..full });
    }

    #[test]
    fn every_option() {
        let config = parse(&[
            "--workers",
            "1_000",
            "--sessions",
            "10",
            "--seconds",
            "20",
            "--new-workers",
            "maintenance",
            "--quick",
        ])
        .unwrap();
        assert_eq!(
            config,
            Config { workers: 1000, sessions: 10, seconds: 20, new_workers: NewWorkers::Maintenance, quick: true }
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        for (list, expected) in [
            (&["--workers"][..], "a value is required for '--workers <N>'"),
            (&["--workers", "0"][..], "for '--workers <N>': needs a positive integer"),
            (&["--sessions", "ten"][..], "for '--sessions <N>': needs a positive integer"),
            (&["--seconds", "-1"][..], "unexpected argument '-1'"),
            (&["--new-workers", "busy"][..], "[possible values: idle, maintenance]"),
            (&["--workers", "5", "--sessions", "6"][..], "must not exceed --workers"),
            (&["100"][..], "unexpected argument '100'"),
        ] {
            let err = parse(list).unwrap_err().to_string();
            assert!(err.contains(expected), "{list:?}: {err}");
        }
    }

    #[test]
    fn sessions_share_the_workers_and_the_interval() {
        let ranges: Vec<_> = (0..3).map(|s| worker_range(s, 3, 10)).collect();
        assert_eq!(ranges, vec![0..3, 3..6, 6..10]);
        let anchor = Instant::now();
        let interval = Duration::from_secs(10);
        assert_eq!(first_slot(anchor, interval, 0, 4), anchor);
        assert_eq!(first_slot(anchor, interval, 1, 4), anchor + Duration::from_millis(2500));
    }

    #[test]
    fn slots_in_a_window() {
        let first = Instant::now();
        let interval = Duration::from_secs(10);
        let at = |secs: u64| first + Duration::from_secs(secs);
        assert_eq!(slots_before(first, interval, first), 0);
        assert_eq!(slots_before(first, interval, at(1)), 1);
        assert_eq!(slots_before(first, interval, at(10)), 1);
        assert_eq!(slots_before(first, interval, at(11)), 2);
        // [5, 65): slots at 10, 20, ..., 60.
        assert_eq!(slots_in(first, interval, at(5), at(65)), 6);
        // [10, 70): the slot at 10 is in, the one at 70 is not.
        assert_eq!(slots_in(first, interval, at(10), at(70)), 6);
        assert_eq!(slots_in(at(100), interval, at(5), at(65)), 0);
    }
}
