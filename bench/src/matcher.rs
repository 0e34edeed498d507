//! `corral bench matcher`: the in-memory matching decision path alone,
//! W workers × R waiting requests run to completion, against Boruta's
//! algorithm on the identical input in the same invocation.
//!
//! # The run
//!
//! The input ([`workload`]) is loaded untimed: every worker is registered
//! and made idle (all with the same `last_used`), then every request is
//! added (each must be satisfiable, or the run fails). Then the *driver*
//! loops: it asks `next_match` for a decision; when there is none, it
//! releases the worker that has been busy longest (workers go back to idle
//! in assignment order, one at a time, with an increasing `last_used`) and
//! asks again; it stops when all R requests are assigned. If no decision is
//! possible and no worker is busy, the run fails.
//!
//! # What is timed
//!
//! Only the driver loop: the `next_match` calls (those that decide and
//! those that find nothing) and the `worker_idle` releases that drive them,
//! plus the driver's own bookkeeping (pushing to preallocated vectors and
//! reading the clock; durations are computed after the loop). `seconds` is
//! the loop's wall time and
//! `decisions_per_s = decisions / seconds`. Latency is timed per decision:
//! `std::time::Instant` around each `next_match` call that returned an
//! assignment; `p50_us`/`p99_us` are nearest-rank percentiles over those
//! samples. The clock's own cost (`clock_overhead_ns`, one `Instant::now`
//! pair, about 20-50 ns) is included in every sample; it is not subtracted.
//!
//! # Baseline
//!
//! [`BorutaMatcher`] is driven by the same driver on the same input. Its
//! decisions cost O(R × W), so it cannot run to completion: it runs until a
//! time budget (10 s, 1 s with `--quick`; the budget is checked between
//! calls, so one slow call may overrun it) or a decision limit is reached,
//! always making at least one decision. It runs twice per worker count:
//!
//! - from the start: `baseline_*` figures, and
//!   `ratio = decisions_per_s / baseline_decisions_per_s`. This is Boruta's
//!   fastest stretch (idle workers abound, the first request in the walk is
//!   usually served), while `decisions_per_s` covers the whole run, so this
//!   ratio flatters the baseline. `ratio_same_decisions` compares the two
//!   on exactly the decisions Boruta made (the indexed matcher's loop time
//!   up to the same decision).
//! - from the *steady state*, halfway between the first release and the
//!   end of the run, where each release enables one decision (most of the
//!   run when W < R): Boruta's algorithm is given the indexed run's state at
//!   that point (the same idle workers with the same `last_used`, busy
//!   workers in the same release order, the requests not yet assigned):
//!   `baseline_steady_*` figures and `ratio_steady`. Skipped (null) when the
//!   run released no worker.
//!
//! # Checks (the run fails loudly when one does not hold)
//!
//! Replaying each run's log of assignments and releases: every assigned
//! worker offers the request's caps and its groups admit the requester, no
//! worker is assigned while busy, no request is assigned twice, and (for
//! the indexed matcher) every request is assigned exactly once at the end
//! and none is left in the matcher. Boruta's decisions must equal the
//! indexed matcher's decisions from the same point on (releases included),
//! one for one; a mismatch is reported with the input that reproduces it.

mod workload;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use corral_core::baseline::BorutaMatcher;
use corral_core::matcher::{Assignment, Matcher, RequestSpec, WorkerSpec};
use corral_core::{Groups, RequestId, WorkerId};
use serde::Serialize;

use crate::options;
use crate::report::{self, LatencySummary};
use workload::{Workload, WorkloadSpec, epoch};

/// `corral bench matcher`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Numbers accept _ separators and k/m suffixes (10k, 100_000, 1m).")]
pub(crate) struct Options {
    /// W=N[,N...]: worker counts, run in the order given, one JSON line each
    /// [default: 1000,100000,10000; with --quick 1000]; R=N: waiting requests
    /// [default: 100000; with --quick 10000]; K=N: device types [default: 100].
    #[arg(value_name = "W=N[,N...]|R=N|K=N", value_parser = parse_size)]
    sizes: Vec<Size>,
    /// Seed of the input generator.
    #[arg(long, value_name = "N", default_value = "1", value_parser = options::count_u64)]
    seed: u64,
    /// Time budget of each of Boruta's two runs per worker count (from the start,
    /// from the steady state) [default: 10; with --quick 1].
    #[arg(long, value_name = "S", value_parser = positive_seconds)]
    baseline_secs: Option<f64>,
    /// Also stop each of Boruta's runs after N decisions.
    #[arg(long, value_name = "N", value_parser = options::positive)]
    baseline_decisions: Option<usize>,
    /// Small sizes and a short baseline, for CI.
    #[arg(long)]
    quick: bool,
}

/// One of the sizes given as `W=N[,N...]`, `R=N` or `K=N`.
#[derive(Clone, Debug)]
enum Size {
    Workers(Vec<usize>),
    Requests(usize),
    DeviceTypes(usize),
}

fn parse_size(text: &str) -> Result<Size, String> {
    if let Some(list) = text.strip_prefix("W=") {
        Ok(Size::Workers(list.split(',').map(options::positive).collect::<Result<_, _>>()?))
    } else if let Some(r) = text.strip_prefix("R=") {
        options::positive(r).map(Size::Requests)
    } else if let Some(k) = text.strip_prefix("K=") {
        options::positive(k).map(Size::DeviceTypes)
    } else {
        Err("a size is W=N[,N...], R=N or K=N".to_string())
    }
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    text.parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s > 0.0)
        .ok_or_else(|| "needs a positive number of seconds".to_string())
}

impl Options {
    pub(crate) fn resolve(self) -> Config {
        let Options { sizes, seed, baseline_secs, baseline_decisions, quick } = self;
        let (mut worker_counts, mut requests, mut device_types) = (None, None, None);
        for size in sizes {
            match size {
                Size::Workers(counts) => worker_counts = Some(counts),
                Size::Requests(r) => requests = Some(r),
                Size::DeviceTypes(k) => device_types = Some(k),
            }
        }
        Config {
            worker_counts: worker_counts
                .unwrap_or_else(|| if quick { vec![1_000] } else { vec![1_000, 100_000, 10_000] }),
            requests: requests.unwrap_or(if quick { 10_000 } else { 100_000 }),
            device_types: device_types.unwrap_or(100),
            seed,
            baseline_budget: Duration::from_secs_f64(baseline_secs.unwrap_or(if quick { 1.0 } else { 10.0 })),
            baseline_max_decisions: baseline_decisions,
            quick,
        }
    }
}

/// What one invocation runs.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Config {
    worker_counts: Vec<usize>,
    requests: usize,
    device_types: usize,
    seed: u64,
    baseline_budget: Duration,
    baseline_max_decisions: Option<usize>,
    quick: bool,
}

/// Runs the scenario: one JSON line on stdout per worker count.
pub(crate) fn run(config: Config) -> Result<()> {
    let clock_overhead_ns = report::clock_overhead_ns();
    let mut reports = Vec::new();
    for &workers in &config.worker_counts {
        let report = run_one(&config, workers, clock_overhead_ns)
            .with_context(|| format!("matcher scenario with W={workers} R={}", config.requests))?;
        report::print_json_line(&report)?;
        reports.push(report);
    }
    print_growth(&reports);
    Ok(())
}

/// One line of the scenario's output.
#[derive(Clone, Debug, Serialize)]
struct MatcherReport {
    scenario: &'static str,
    workers: usize,
    requests: usize,
    k: usize,
    decisions_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    baseline_decisions_per_s: f64,
    ratio: f64,
    decisions: usize,
    seconds: f64,
    releases: usize,
    mean_us: f64,
    max_us: f64,
    baseline_decisions: usize,
    baseline_seconds: f64,
    baseline_p50_us: f64,
    baseline_p99_us: f64,
    /// Whether Boruta's algorithm finished the whole run within its budget.
    baseline_completed: bool,
    /// The indexed matcher's loop time up to Boruta's last decision.
    same_decisions_seconds: f64,
    ratio_same_decisions: f64,
    /// Decisions after which Boruta's steady-state sample starts (null when
    /// the run released no worker).
    steady_from_decision: Option<usize>,
    baseline_steady_decisions: Option<usize>,
    baseline_steady_seconds: Option<f64>,
    baseline_steady_decisions_per_s: Option<f64>,
    /// The indexed matcher's rate on the same steady-state decisions.
    steady_decisions_per_s: Option<f64>,
    ratio_steady: Option<f64>,
    /// Decisions checked identical between the two (all of Boruta's).
    identical_decisions: usize,
    worker_classes: usize,
    request_signatures: usize,
    clock_overhead_ns: u64,
    seed: u64,
    quick: bool,
    build: &'static str,
}

/// Boruta's figures on a stretch of the run.
struct BaselineSample {
    run: Run,
    /// The indexed matcher's loop time on the same decisions.
    indexed_seconds: f64,
}

impl BaselineSample {
    fn decisions_per_s(&self) -> f64 {
        report::per_second(self.run.decisions(), self.run.seconds)
    }

    fn indexed_decisions_per_s(&self) -> f64 {
        report::per_second(self.run.decisions(), self.indexed_seconds)
    }
}

fn run_one(config: &Config, workers: usize, clock_overhead_ns: u64) -> Result<MatcherReport> {
    let spec =
        WorkloadSpec { workers, requests: config.requests, device_types: config.device_types, seed: config.seed };
    eprintln!("matcher W={workers} R={} K={}: generating input (seed {})", spec.requests, spec.device_types, spec.seed);
    let workload = Workload::generate(spec);
    let (worker_classes, request_signatures) = (workload.worker_classes(), workload.request_signatures());
    eprintln!("  {worker_classes} worker classes, {request_signatures} request signatures");

    let loading = Instant::now();
    let mut matcher = load_indexed(&workload)?;
    eprintln!("  indexed matcher loaded in {:.2} s (untimed); running to completion", loading.elapsed().as_secs_f64());
    let requests = workload.requests.len();
    let indexed = drive(&mut matcher, DriverState::default(), requests, &Budget::unlimited())?;
    ensure!(indexed.completed, "the indexed matcher stopped after {} decisions", indexed.decisions());
    ensure!(
        matcher.waiting_count() == 0,
        "all {requests} requests were assigned but the matcher still tracks {}",
        matcher.waiting_count()
    );
    drop(matcher);
    validate(&workload, &indexed.events, true).context("the indexed matcher's run is invalid")?;
    let latency = LatencySummary::from_nanos(&indexed.latencies_ns);
    let decisions_per_s = report::per_second(indexed.decisions(), indexed.seconds);
    eprintln!(
        "  indexed: {} decisions, {} releases in {:.3} s: {:.0} decisions/s, p50 {} µs, p99 {} µs, max {} µs (checked)",
        indexed.decisions(),
        indexed.releases,
        indexed.seconds,
        decisions_per_s,
        latency.p50_us,
        latency.p99_us,
        latency.max_us
    );

    let budget =
        Budget { time: Some(config.baseline_budget), decisions: config.baseline_max_decisions.unwrap_or(usize::MAX) };
    let start = baseline_sample(&workload, &indexed, 0, &budget).context("Boruta's algorithm from the start")?;
    // Boruta's decisions get far slower once workers are scarce: sample it
    // again halfway through the part of the run where workers are released.
    let first_release = indexed.events.iter().position(|e| matches!(e, Event::Released(_)));
    let steady_from = first_release.map(|event| {
        let decisions_before = indexed.events[..event].iter().filter(|e| matches!(e, Event::Assigned(_))).count();
        (decisions_before + requests) / 2
    });
    let steady = match steady_from {
        Some(from) => Some(
            baseline_sample(&workload, &indexed, from, &budget)
                .with_context(|| format!("Boruta's algorithm after {from} decisions"))?,
        ),
        None => None,
    };
    let identical_decisions = start.run.decisions() + steady.as_ref().map_or(0, |s| s.run.decisions());

    let baseline_latency = LatencySummary::from_nanos(&start.run.latencies_ns);
    let baseline_decisions_per_s = start.decisions_per_s();
    let ratio = decisions_per_s / baseline_decisions_per_s;
    let ratio_same_decisions = start.indexed_decisions_per_s() / baseline_decisions_per_s;
    eprintln!("  ratio {ratio:.0}× (on Boruta's first decisions: {ratio_same_decisions:.0}×)");
    let round = |x: f64, decimals| report::round_to(x, decimals);
    Ok(MatcherReport {
        scenario: "matcher",
        workers,
        requests,
        k: config.device_types,
        decisions_per_s: round(decisions_per_s, 0),
        p50_us: latency.p50_us,
        p99_us: latency.p99_us,
        baseline_decisions_per_s: round(baseline_decisions_per_s, 2),
        ratio: round(ratio, 1),
        decisions: indexed.decisions(),
        seconds: round(indexed.seconds, 6),
        releases: indexed.releases,
        mean_us: latency.mean_us,
        max_us: latency.max_us,
        baseline_decisions: start.run.decisions(),
        baseline_seconds: round(start.run.seconds, 6),
        baseline_p50_us: baseline_latency.p50_us,
        baseline_p99_us: baseline_latency.p99_us,
        baseline_completed: start.run.completed,
        same_decisions_seconds: round(start.indexed_seconds, 6),
        ratio_same_decisions: round(ratio_same_decisions, 1),
        steady_from_decision: steady_from,
        baseline_steady_decisions: steady.as_ref().map(|s| s.run.decisions()),
        baseline_steady_seconds: steady.as_ref().map(|s| round(s.run.seconds, 6)),
        baseline_steady_decisions_per_s: steady.as_ref().map(|s| round(s.decisions_per_s(), 3)),
        steady_decisions_per_s: steady.as_ref().map(|s| round(s.indexed_decisions_per_s(), 0)),
        ratio_steady: steady.as_ref().map(|s| round(s.indexed_decisions_per_s() / s.decisions_per_s(), 1)),
        identical_decisions,
        worker_classes,
        request_signatures,
        clock_overhead_ns,
        seed: config.seed,
        quick: config.quick,
        build: if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

/// Runs Boruta's algorithm within `budget` from the state the indexed run
/// had after `from_decision` decisions, checks its run and that it made the
/// indexed matcher's decisions, and times the indexed matcher on them.
fn baseline_sample(
    workload: &Workload,
    indexed: &Run,
    from_decision: usize,
    budget: &Budget,
) -> Result<BaselineSample> {
    let loading = Instant::now();
    let (mut boruta, state, from_event) = boruta_after(workload, &indexed.events, from_decision)?;
    let wanted = workload.requests.len() - from_decision;
    eprintln!(
        "  Boruta's algorithm after {from_decision} decisions (loaded in {:.2} s, untimed): \
         running for up to {:.1} s{}",
        loading.elapsed().as_secs_f64(),
        budget.time.unwrap_or_default().as_secs_f64(),
        if budget.decisions < usize::MAX { format!(" or {} decisions", budget.decisions) } else { String::new() }
    );
    let run = drive(&mut boruta, state, wanted, budget)?;
    let mut log = indexed.events[..from_event].to_vec();
    log.extend_from_slice(&run.events);
    validate(workload, &log, run.completed).context("Boruta's run is invalid")?;
    let compared = compare_decisions(workload, &indexed.events, from_event, &run.events)?;
    let indexed_seconds = indexed.seconds_between(from_decision, run.decisions());
    let sample = BaselineSample { run, indexed_seconds };
    let latency = LatencySummary::from_nanos(&sample.run.latencies_ns);
    eprintln!(
        "  Boruta: {} decisions, {} releases in {:.3} s: {:.2} decisions/s, p50 {} µs, p99 {} µs; \
         all {compared} equal the indexed matcher's (which made them at {:.0} decisions/s)",
        sample.run.decisions(),
        sample.run.releases,
        sample.run.seconds,
        sample.decisions_per_s(),
        latency.p50_us,
        latency.p99_us,
        sample.indexed_decisions_per_s()
    );
    Ok(sample)
}

/// How the cost of a decision grows with W, on stderr.
fn print_growth(reports: &[MatcherReport]) {
    let mut by_workers: Vec<&MatcherReport> = reports.iter().collect();
    by_workers.sort_by_key(|r| r.workers);
    let Some(smallest) = by_workers.first() else { return };
    if by_workers.len() < 2 {
        return;
    }
    eprintln!("cost of a decision as W grows (R={}):", smallest.requests);
    for r in &by_workers {
        let cost_us = 1e6 / r.decisions_per_s;
        let smallest_cost_us = 1e6 / smallest.decisions_per_s;
        eprintln!(
            "  W={:>7}: {:.3} µs/decision (×{:.2} for ×{} workers), p50 {} µs, p99 {} µs; \
             Boruta {:.0} µs/decision from the start, {} in the steady state",
            r.workers,
            cost_us,
            cost_us / smallest_cost_us,
            r.workers / smallest.workers,
            r.p50_us,
            r.p99_us,
            1e6 / r.baseline_decisions_per_s,
            r.baseline_steady_decisions_per_s.map_or("-".to_string(), |rate| format!("{:.0} µs/decision", 1e6 / rate))
        );
    }
}

// ----- loading -------------------------------------------------------------

fn load_indexed(workload: &Workload) -> Result<Matcher> {
    let mut matcher = Matcher::new();
    for worker in &workload.workers {
        let lost = matcher.register_worker(worker);
        ensure!(lost.is_empty(), "registering worker {} lost requests {lost:?}", worker.id);
    }
    for worker in &workload.workers {
        matcher.worker_idle(worker.id, epoch());
    }
    for request in &workload.requests {
        ensure!(
            matcher.add_request(request, epoch()),
            "generated request {} ({}, groups {}) cannot be served by any worker",
            request.id,
            request.caps,
            groups_text(&request.groups)
        );
    }
    Ok(matcher)
}

/// Boruta's algorithm with the clock its decisions are made at.
struct Boruta {
    matcher: BorutaMatcher,
    now: SystemTime,
}

/// The time Boruta's decisions are made at: all requests are visible.
fn boruta_clock() -> SystemTime {
    epoch() + Duration::from_secs(1)
}

// ----- the driver ----------------------------------------------------------

/// What the driver needs from a matcher.
trait DecisionPath {
    fn next_match(&mut self) -> Option<Assignment>;
    fn worker_idle(&mut self, worker: WorkerId, last_used: SystemTime);
}

impl DecisionPath for Matcher {
    fn next_match(&mut self) -> Option<Assignment> {
        Matcher::next_match(self)
    }

    fn worker_idle(&mut self, worker: WorkerId, last_used: SystemTime) {
        Matcher::worker_idle(self, worker, last_used);
    }
}

impl DecisionPath for Boruta {
    fn next_match(&mut self) -> Option<Assignment> {
        self.matcher.next_match(self.now)
    }

    fn worker_idle(&mut self, worker: WorkerId, last_used: SystemTime) {
        self.matcher.worker_idle(worker, last_used);
    }
}

/// When the driver stops before every request is assigned. The driver
/// always makes at least one decision, so a rate can be computed.
struct Budget {
    time: Option<Duration>,
    decisions: usize,
}

impl Budget {
    fn unlimited() -> Budget {
        Budget { time: None, decisions: usize::MAX }
    }

    /// The clock is only read when there is a time budget.
    fn spent(&self, decisions: usize, start: Instant, now: Instant) -> bool {
        decisions > 0 && (decisions >= self.decisions || self.time.is_some_and(|t| now - start >= t))
    }
}

/// Where the driver stands: the busy workers in assignment order (the
/// first is released next) and the releases made so far (they set the
/// `last_used` of the next release).
#[derive(Clone, Debug, Default)]
struct DriverState {
    busy: VecDeque<WorkerId>,
    releases: usize,
}

/// One step of a run, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Assigned(Assignment),
    Released(WorkerId),
}

/// The log and timings of one driven run.
struct Run {
    events: Vec<Event>,
    /// Duration of each deciding `next_match` call.
    latencies_ns: Vec<u64>,
    /// Loop time when each decision was made.
    decided_at_ns: Vec<u64>,
    seconds: f64,
    /// Releases made during this run.
    releases: usize,
    completed: bool,
}

impl Run {
    fn decisions(&self) -> usize {
        self.latencies_ns.len()
    }

    /// Loop time of the decisions from index `from` (exclusive of the time
    /// before it) to `from + count`.
    fn seconds_between(&self, from: usize, count: usize) -> f64 {
        let start = if from == 0 { 0 } else { self.decided_at_ns[from - 1] };
        (self.decided_at_ns[from + count - 1] - start) as f64 / 1e9
    }
}

/// Takes every decision, releasing the longest-busy worker whenever there
/// is none, until `wanted` decisions are made or the budget is spent.
fn drive(matcher: &mut impl DecisionPath, mut state: DriverState, wanted: usize, budget: &Budget) -> Result<Run> {
    let mut events = Vec::with_capacity(2 * wanted + 1);
    // The clock readings around each deciding call; durations are
    // computed after the loop, so that the loop only reads the clock.
    let mut timings: Vec<(Instant, Instant)> = Vec::with_capacity(wanted);
    state.busy.reserve(wanted.min(1 << 20));
    let releases_before = state.releases;
    let start = Instant::now();
    let mut completed = false;
    loop {
        let decisions = timings.len();
        if decisions == wanted {
            completed = true;
            break;
        }
        let before = Instant::now();
        if budget.spent(decisions, start, before) {
            break;
        }
        match matcher.next_match() {
            Some(assignment) => {
                timings.push((before, Instant::now()));
                events.push(Event::Assigned(assignment));
                state.busy.push_back(assignment.worker);
            }
            None => {
                let Some(worker) = state.busy.pop_front() else {
                    bail!(
                        "stuck after {decisions} of {wanted} decisions: no waiting request can be served \
                         and no worker is busy"
                    );
                };
                state.releases += 1;
                matcher.worker_idle(worker, release_time(state.releases));
                events.push(Event::Released(worker));
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let latencies_ns = timings.iter().map(|(before, after)| (*after - *before).as_nanos() as u64).collect();
    let decided_at_ns = timings.iter().map(|(_, after)| (*after - start).as_nanos() as u64).collect();
    Ok(Run { events, latencies_ns, decided_at_ns, seconds, releases: state.releases - releases_before, completed })
}

/// The `last_used` given to the `n`th release (1-based) of a run.
fn release_time(n: usize) -> SystemTime {
    epoch() + Duration::from_micros(n as u64)
}

/// Boruta's algorithm in the state the indexed run left after its first
/// `decisions` decisions, the driver state to continue from, and the index
/// of the first event after that point.
fn boruta_after(workload: &Workload, events: &[Event], decisions: usize) -> Result<(Boruta, DriverState, usize)> {
    let mut idle_since: HashMap<WorkerId, Option<SystemTime>> =
        workload.workers.iter().map(|w| (w.id, Some(epoch()))).collect();
    let mut assigned: HashSet<RequestId> = HashSet::new();
    let mut state = DriverState::default();
    let mut next_event = 0;
    while assigned.len() < decisions {
        let event = events.get(next_event).with_context(|| format!("the log has fewer than {decisions} decisions"))?;
        next_event += 1;
        match *event {
            Event::Assigned(Assignment { request, worker }) => {
                assigned.insert(request);
                idle_since.insert(worker, None);
                state.busy.push_back(worker);
            }
            Event::Released(worker) => {
                state.releases += 1;
                idle_since.insert(worker, Some(release_time(state.releases)));
                ensure!(state.busy.pop_front() == Some(worker), "event {next_event}: release out of order");
            }
        }
    }
    let mut matcher = BorutaMatcher::new();
    for worker in &workload.workers {
        matcher.add_worker(worker.clone());
        if let Some(since) = idle_since[&worker.id] {
            matcher.worker_idle(worker.id, since);
        }
    }
    for request in workload.requests.iter().filter(|r| !assigned.contains(&r.id)) {
        matcher.add_request(request.clone());
    }
    Ok((Boruta { matcher, now: boruta_clock() }, state, next_event))
}

// ----- checks --------------------------------------------------------------

/// Replays a run's log against the input: every assignment is valid, no
/// worker is used twice at once, no request is served twice and, when
/// `complete`, every request was served.
fn validate(workload: &Workload, events: &[Event], complete: bool) -> Result<()> {
    let workers: HashMap<WorkerId, &WorkerSpec> = workload.workers.iter().map(|w| (w.id, w)).collect();
    let requests: HashMap<RequestId, &RequestSpec> = workload.requests.iter().map(|r| (r.id, r)).collect();
    let mut busy: HashSet<WorkerId> = HashSet::new();
    let mut assigned: HashSet<RequestId> = HashSet::new();
    for (step, event) in events.iter().enumerate() {
        match *event {
            Event::Assigned(Assignment { request, worker }) => {
                let Some(r) = requests.get(&request) else {
                    bail!("step {step}: request {request} was never submitted but was assigned worker {worker}");
                };
                let Some(w) = workers.get(&worker) else {
                    bail!("step {step}: request {request} was assigned unknown worker {worker}");
                };
                ensure!(
                    assigned.insert(request),
                    "step {step}: request {request} was assigned a second time (worker {worker})"
                );
                ensure!(busy.insert(worker), "step {step}: worker {worker} was assigned request {request} while busy");
                ensure!(
                    r.caps.satisfied_by(w.id, &w.caps),
                    "step {step}: worker {worker} (caps {}) lacks caps of request {request} (wants {})",
                    w.caps,
                    r.caps
                );
                ensure!(
                    r.groups.may_use(&w.groups),
                    "step {step}: worker {worker} (groups {}) is closed to the requester of {request} (groups {})",
                    groups_text(&w.groups),
                    groups_text(&r.groups)
                );
            }
            Event::Released(worker) => {
                ensure!(busy.remove(&worker), "step {step}: worker {worker} was released while not busy");
            }
        }
    }
    if complete {
        ensure!(
            assigned.len() == requests.len(),
            "only {} of {} requests were assigned",
            assigned.len(),
            requests.len()
        );
    }
    Ok(())
}

/// Checks that Boruta's log, started after the indexed run's first
/// `from_event` events, equals the indexed run's log from there on;
/// returns the number of decisions compared.
fn compare_decisions(workload: &Workload, indexed: &[Event], from_event: usize, baseline: &[Event]) -> Result<usize> {
    let ours = &indexed[from_event..];
    for (offset, (ours, theirs)) in ours.iter().zip(baseline).enumerate() {
        if ours != theirs {
            let step = from_event + offset;
            bail!(
                "the indexed matcher and Boruta's algorithm disagree at step {step} (decision {}): \
                 indexed {}, Boruta {}\n{}",
                indexed[..step].iter().filter(|e| matches!(e, Event::Assigned(_))).count() + 1,
                event_text(workload, ours),
                event_text(workload, theirs),
                reproduce_text(workload)
            );
        }
    }
    ensure!(
        baseline.len() <= ours.len(),
        "Boruta's algorithm made more steps ({}) than the indexed matcher ({}) from step {from_event} on\n{}",
        baseline.len(),
        ours.len(),
        reproduce_text(workload)
    );
    Ok(baseline.iter().filter(|e| matches!(e, Event::Assigned(_))).count())
}

fn event_text(workload: &Workload, event: &Event) -> String {
    match event {
        Event::Released(worker) => format!("released worker {worker}"),
        Event::Assigned(Assignment { request, worker }) => {
            let request = workload.requests.iter().find(|r| r.id == *request);
            let worker = workload.workers.iter().find(|w| w.id == *worker);
            match (request, worker) {
                (Some(r), Some(w)) => format!(
                    "request {} (priority {}, caps {}, groups {}) → worker {} (caps {}, groups {})",
                    r.id,
                    r.priority,
                    r.caps,
                    groups_text(&r.groups),
                    w.id,
                    w.caps,
                    groups_text(&w.groups)
                ),
                _ => format!("{event:?} (unknown request or worker)"),
            }
        }
    }
}

fn reproduce_text(workload: &Workload) -> String {
    let s = workload.spec;
    format!(
        "input: corral bench matcher --seed {} W={} R={} K={} (the generator in bench/src/matcher/workload.rs \
         is deterministic; all workers start idle at the same last_used, releases are in assignment order)",
        s.seed, s.workers, s.requests, s.device_types
    )
}

fn groups_text(groups: &Groups) -> String {
    if groups.is_empty() { "none".to_string() } else { groups.iter().collect::<Vec<_>>().join(",") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_config() -> Config {
        Config {
            worker_counts: vec![60],
            requests: 600,
            device_types: 10,
            seed: 7,
            baseline_budget: Duration::from_secs(20),
            baseline_max_decisions: None,
            quick: true,
        }
    }

    #[test]
    fn quick_run_on_a_tiny_size_succeeds_and_agrees_with_the_baseline() {
        let report = run_one(&tiny_config(), 60, 0).unwrap();
        assert_eq!(report.decisions, 600);
        assert_eq!(report.requests, 600);
        assert!(report.releases >= 600 - 60);
        assert!(report.decisions_per_s > 0.0 && report.baseline_decisions_per_s > 0.0);
        // The tiny run fits Boruta's budget, so all its decisions are
        // compared, from the start and again from the steady state.
        assert!(report.baseline_completed);
        let steady_from = report.steady_from_decision.unwrap();
        assert!(steady_from > 60 && steady_from < 600, "{steady_from}");
        assert_eq!(report.baseline_steady_decisions, Some(600 - steady_from));
        assert_eq!(report.identical_decisions, 600 + 600 - steady_from);
        assert!(report.ratio_steady.unwrap() > 0.0);
    }

    #[test]
    fn baseline_budget_stops_boruta_early() {
        let config = Config { baseline_max_decisions: Some(25), ..tiny_config() };
        let report = run_one(&config, 60, 0).unwrap();
        assert_eq!(report.baseline_decisions, 25);
        assert!(!report.baseline_completed);
        assert_eq!(report.baseline_steady_decisions, Some(25));
        assert_eq!(report.identical_decisions, 50);
    }

    #[test]
    fn no_steady_state_sample_without_releases() {
        let config = Config { requests: 30, ..tiny_config() };
        let report = run_one(&config, 60, 0).unwrap();
        assert_eq!(report.releases, 0);
        assert_eq!(report.steady_from_decision, None);
        assert_eq!(report.ratio_steady, None);
        assert_eq!(report.identical_decisions, 30);
    }

    /// A real run's log, for the validation tests to tamper with.
    fn real_run() -> (Workload, Vec<Event>) {
        let workload = Workload::generate(WorkloadSpec { workers: 40, requests: 300, device_types: 10, seed: 3 });
        let mut matcher = load_indexed(&workload).unwrap();
        let run = drive(&mut matcher, DriverState::default(), workload.requests.len(), &Budget::unlimited()).unwrap();
        assert!(run.completed);
        validate(&workload, &run.events, true).unwrap();
        (workload, run.events)
    }

    fn first_assignment(events: &[Event]) -> (usize, Assignment) {
        events
            .iter()
            .enumerate()
            .find_map(|(i, e)| match e {
                Event::Assigned(a) => Some((i, *a)),
                Event::Released(_) => None,
            })
            .unwrap()
    }

    #[test]
    fn validation_rejects_a_worker_lacking_a_cap() {
        let (workload, mut events) = real_run();
        let (step, assignment) = first_assignment(&events);
        let request = workload.requests.iter().find(|r| r.id == assignment.request).unwrap();
        let wrong =
            workload.workers.iter().find(|w| w.caps.get("device_type") != request.caps.get("device_type")).unwrap();
        events[step] = Event::Assigned(Assignment { request: assignment.request, worker: wrong.id });
        let err = validate(&workload, &events, true).unwrap_err().to_string();
        assert!(err.contains("lacks caps"), "{err}");
    }

    #[test]
    fn validation_rejects_a_closed_group() {
        // The same log against an input where the first assigned worker
        // belongs to a group no requester has.
        let (mut workload, events) = real_run();
        let (_, assignment) = first_assignment(&events);
        let worker = workload.workers.iter_mut().find(|w| w.id == assignment.worker).unwrap();
        worker.groups = std::iter::once("nobody-has-this").collect();
        let err = validate(&workload, &events, true).unwrap_err().to_string();
        assert!(err.contains("closed to the requester"), "{err}");
    }

    #[test]
    fn validation_rejects_double_use_and_incomplete_runs() {
        let (workload, events) = real_run();
        let (step, assignment) = first_assignment(&events);

        let mut twice = events.clone();
        twice.insert(step + 1, Event::Assigned(assignment));
        let err = validate(&workload, &twice, true).unwrap_err().to_string();
        assert!(err.contains("second time"), "{err}");

        // Step is the first assignment, so any other request is unassigned.
        let mut busy = events.clone();
        let other_request = workload.requests.iter().find(|r| r.id != assignment.request).unwrap().id;
        busy.insert(step + 1, Event::Assigned(Assignment { request: other_request, worker: assignment.worker }));
        let err = validate(&workload, &busy, false).unwrap_err().to_string();
        assert!(err.contains("while busy"), "{err}");

        let err = validate(&workload, &events[..events.len() - 1], true).unwrap_err().to_string();
        assert!(err.contains("of 300 requests were assigned"), "{err}");
        validate(&workload, &events[..events.len() - 1], false).unwrap();
    }

    #[test]
    fn a_different_decision_is_reported_with_its_input() {
        let (workload, events) = real_run();
        let mut other = events.clone();
        let (step, assignment) = first_assignment(&events);
        let another = workload.workers.iter().find(|w| w.id != assignment.worker).unwrap().id;
        other[step] = Event::Assigned(Assignment { worker: another, ..assignment });
        let err = compare_decisions(&workload, &events, 0, &other).unwrap_err().to_string();
        assert!(err.contains("disagree at step 0") && err.contains("--seed 3 W=40 R=300 K=10"), "{err}");
        assert_eq!(compare_decisions(&workload, &events, 0, &events[..10]).unwrap(), 10);
        let err = compare_decisions(&workload, &events, 5, &events[..10]).unwrap_err().to_string();
        assert!(err.contains("disagree at step 5"), "{err}");
    }

    fn parse(list: &[&str]) -> Result<Config> {
        Ok(crate::parse_options::<Options>(list)?.resolve())
    }

    #[test]
    fn arguments() {
        let quick = parse(&["--quick"]).unwrap();
        assert_eq!(quick.worker_counts, vec![1_000]);
        assert_eq!(quick.requests, 10_000);
        assert_eq!(quick.baseline_budget, Duration::from_secs(1));
        let default = parse(&[]).unwrap();
        assert_eq!(default.worker_counts, vec![1_000, 100_000, 10_000]);
        assert_eq!((default.requests, default.device_types, default.seed), (100_000, 100, 1));
        assert_eq!(default.baseline_budget, Duration::from_secs(10));
        let custom = parse(&[
            "W=1k,20_000",
            "R=5000",
            "K=7",
            "--seed",
            "9",
            "--baseline-secs",
            "0.5",
            "--baseline-decisions",
            "2m",
        ])
        .unwrap();
        assert_eq!(custom.worker_counts, vec![1_000, 20_000]);
        assert_eq!((custom.requests, custom.device_types, custom.seed), (5_000, 7, 9));
        assert_eq!(custom.baseline_budget, Duration::from_millis(500));
        assert_eq!(custom.baseline_max_decisions, Some(2_000_000));
        for (bad, expected) in [
            (&["W=0"][..], "invalid value 'W=0'"),
            (&["R=x"], "invalid value 'R=x'"),
            (&["--seed"], "a value is required for '--seed <N>'"),
            (&["--baseline-secs", "0"], "needs a positive number of seconds"),
            (&["bogus"], "a size is W=N[,N...], R=N or K=N"),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(expected), "{bad:?}: {err}");
        }
    }
}
