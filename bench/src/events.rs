//! `corral bench events`: N subscribers on `GET /v1/events` of a real
//! `corral serve`, while a driver makes request changes at a steady rate;
//! how long each change takes from its commit to each subscriber.
//!
//! Subscribers: one user (its stream limit raised to N), N connections
//! from this process. Driver: that user submits a request (allowed to
//! wait: no worker is needed) and closes it, one change every 1/rate s;
//! each is one `request.state` event for every subscriber.
//!
//! Latency of a delivery: the time this process read the event minus the
//! event's `at` (the server's clock when it decided the change, before it
//! committed it; same machine, same clock), so it includes the commit.
//!
//! Checks: every subscriber receives every change the driver made (by the
//! last event's request id and its count), no reload, no stream ends.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use corral_proto::events::SseParser;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::json;

use crate::options;
use crate::report::{percentile, print_json_line, round_to};
use crate::server::{ApiClient, ServerProcess, load_average};

/// Target of a full run: p99 from commit to delivery.
const TARGET_P99_MS: f64 = 50.0;

#[derive(Serialize)]
struct Line {
    scenario: &'static str,
    subscribers: usize,
    seconds: f64,
    rate: u32,
    changes: usize,
    deliveries: usize,
    missing: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    connect_s: f64,
    server_rss_mb: f64,
    server_cpu_s: f64,
    load_avg_before: f64,
    target_p99_ms: f64,
}

/// `corral bench events`.
#[derive(clap::Args, Debug)]
pub(crate) struct Options {
    /// Concurrent event streams [default: 1000; 100 with --quick].
    #[arg(long, value_name = "N", value_parser = options::count)]
    subscribers: Option<usize>,
    /// How long the driver makes changes [default: 20; 3 with --quick].
    #[arg(long, value_name = "S", value_parser = options::count_u64)]
    seconds: Option<u64>,
    /// Changes per second (1 to 10000).
    #[arg(long, value_name = "R", default_value = "20", value_parser = options::count_u64)]
    rate: u64,
    /// CI: checks it works, judges no figure.
    #[arg(long)]
    quick: bool,
}

impl Options {
    pub(crate) fn resolve(self) -> Config {
        let Options { subscribers, seconds, rate, quick } = self;
        Config {
            subscribers: subscribers.unwrap_or(if quick { 100 } else { 1000 }).max(1),
            seconds: seconds.unwrap_or(if quick { 3 } else { 20 }).max(1),
            rate: rate.clamp(1, 10_000) as u32,
            quick,
        }
    }
}

pub(crate) struct Config {
    subscribers: usize,
    seconds: u64,
    rate: u32,
    quick: bool,
}

pub(crate) fn run(config: Config) -> Result<()> {
    raise_open_files(config.subscribers)?;
    let line = actix_rt::System::new().block_on(run_once(&config))?;
    print_json_line(&line)?;
    if !config.quick && line.p99_ms > TARGET_P99_MS {
        bail!("p99 commit to delivery {} ms is over the target {TARGET_P99_MS} ms", line.p99_ms);
    }
    Ok(())
}

/// Each subscriber is a socket here and one in the server (which inherits
/// the limit).
fn raise_open_files(subscribers: usize) -> Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading the open-files limit")?;
    let needed = (subscribers as u64) * 2 + 512;
    if soft < needed {
        if hard < needed {
            bail!("{subscribers} subscribers need {needed} open files; the hard limit is {hard}");
        }
        setrlimit(Resource::RLIMIT_NOFILE, needed, hard).context("raising the open-files limit")?;
    }
    Ok(())
}

/// What the subscribers saw, shared by their tasks (one thread).
#[derive(Default)]
struct Seen {
    /// Per subscriber: request events received and the last request id.
    counts: Vec<usize>,
    /// Latency samples in microseconds.
    samples: Vec<u64>,
    /// Each event's `at`, parsed once (by event id).
    at: HashMap<String, SystemTime>,
    /// Problems (a reload, a stream that ended); the run fails with them.
    errors: Vec<String>,
}

async fn run_once(config: &Config) -> Result<Line> {
    let n = config.subscribers;
    eprintln!("events: {n} subscribers, {} changes/s for {} s: starting corral serve", config.rate, config.seconds);
    let dir = ServerProcess::fresh_dir("events")?;
    let mut server = ServerProcess::start(&dir, &format!("max_streams_per_user = {}\n", n + 8))?;
    server.wait_ready(Duration::from_secs(120)).await?;
    let admin = ApiClient::new(&server.url, &server.token("admin.token")?);
    let token = admin.create_user("bench").await?;

    let seen = Rc::new(RefCell::new(Seen { counts: vec![0; n], ..Seen::default() }));
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .connector(awc::Connector::new().limit(0))
        .add_default_header(("Authorization", format!("Bearer {token}")))
        .finish();
    let connecting = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::unbounded_channel::<Result<()>>();
    for index in 0..n {
        let (client, seen, url, opened) = (client.clone(), seen.clone(), server.url.clone(), opened_tx.clone());
        tasks.push(actix_rt::spawn(async move { subscribe(index, client, url, seen, opened).await }));
        if index % 50 == 49 {
            // Do not flood the listen backlog.
            tokio::task::yield_now().await;
        }
    }
    for _ in 0..n {
        opened_rx.recv().await.context("a subscriber task ended")??;
    }
    let connect_s = connecting.elapsed().as_secs_f64();
    eprintln!("  {n} streams open in {connect_s:.2} s; driving changes");

    let load_avg_before = load_average()?;
    let cpu_before = server.cpu_seconds()?;
    let driver = ApiClient::new(&server.url, &token);
    let interval = Duration::from_secs_f64(1.0 / f64::from(config.rate));
    let deadline = Instant::now() + Duration::from_secs(config.seconds);
    let began = Instant::now();
    let mut next = Instant::now();
    let mut changes = 0usize;
    let mut waiting: Option<i64> = None;
    let body = json!({"caps": {"device_type": "bench-events"}, "allow_unsatisfiable": true});
    while Instant::now() < deadline {
        match waiting.take() {
            None => {
                let (status, request) = driver.post("/v1/requests", &body).await?;
                if status != 201 {
                    bail!("submission answered {status}: {request}");
                }
                waiting = Some(request["id"].as_i64().context("request id")?);
            }
            Some(id) => {
                let (status, closed) = driver.post(&format!("/v1/requests/{id}/close"), &json!({})).await?;
                if status != 200 || closed["state"] != "cancelled" {
                    bail!("close of {id} answered {status}: {closed}");
                }
            }
        }
        changes += 1;
        next += interval;
        let now = Instant::now();
        if next > now {
            tokio::time::sleep(next - now).await;
        }
    }
    if let Some(id) = waiting {
        let (status, closed) = driver.post(&format!("/v1/requests/{id}/close"), &json!({})).await?;
        if status != 200 {
            bail!("close of {id} answered {status}: {closed}");
        }
        changes += 1;
    }
    let elapsed = began.elapsed().as_secs_f64();

    // Every subscriber gets every change (bounded wait).
    let settle = Instant::now();
    while seen.borrow().counts.iter().any(|c| *c < changes) && settle.elapsed() < Duration::from_secs(30) {
        if !seen.borrow().errors.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let server_cpu_s = server.cpu_seconds()? - cpu_before;
    let server_rss_mb = server.rss_mb()?;
    for task in &tasks {
        task.abort();
    }
    server.stop()?;

    let seen = seen.borrow();
    if let Some(error) = seen.errors.first() {
        bail!("{} subscriber problems, the first: {error}", seen.errors.len());
    }
    let missing: usize = seen.counts.iter().map(|c| changes.saturating_sub(*c)).sum();
    let extra: usize = seen.counts.iter().map(|c| c.saturating_sub(changes)).sum();
    if missing > 0 || extra > 0 {
        bail!("{missing} deliveries missing and {extra} extra ({changes} changes, {n} subscribers)");
    }
    let mut samples = seen.samples.clone();
    if samples.len() != changes * n {
        bail!("{} latency samples for {} deliveries", samples.len(), changes * n);
    }
    samples.sort_unstable();
    let ms = |us: u64| round_to(us as f64 / 1000.0, 3);
    Ok(Line {
        scenario: "events",
        subscribers: n,
        seconds: round_to(elapsed, 3),
        rate: config.rate,
        changes,
        deliveries: samples.len(),
        missing,
        p50_ms: ms(percentile(&samples, 50.0)),
        p99_ms: ms(percentile(&samples, 99.0)),
        max_ms: ms(*samples.last().unwrap_or(&0)),
        connect_s: round_to(connect_s, 3),
        server_rss_mb: round_to(server_rss_mb, 1),
        server_cpu_s: round_to(server_cpu_s, 2),
        load_avg_before,
        target_p99_ms: TARGET_P99_MS,
    })
}

/// One subscriber: opens the stream, says so on `opened`, then records
/// every event until aborted.
async fn subscribe(
    index: usize,
    client: awc::Client,
    url: String,
    seen: Rc<RefCell<Seen>>,
    opened: tokio::sync::mpsc::UnboundedSender<Result<()>>,
) {
    let response = client.get(format!("{url}/v1/events")).send().await;
    let mut response = match response {
        Ok(response) if response.status().as_u16() == 200 => response,
        Ok(response) => {
            let _ = opened.send(Err(anyhow::anyhow!("subscriber {index}: the stream answered {}", response.status())));
            return;
        }
        Err(err) => {
            let _ = opened.send(Err(anyhow::anyhow!("subscriber {index}: {err}")));
            return;
        }
    };
    let mut parser = SseParser::default();
    let mut announced = false;
    loop {
        let chunk = match response.next().await {
            Some(Ok(chunk)) => chunk,
            other => {
                let why = match other {
                    Some(Err(err)) => err.to_string(),
                    _ => "the server ended it".to_string(),
                };
                seen.borrow_mut().errors.push(format!("subscriber {index}: stream lost: {why}"));
                return;
            }
        };
        let now = SystemTime::now();
        if !announced {
            // The opening comment: the subscription is in place.
            announced = true;
            let _ = opened.send(Ok(()));
        }
        for message in parser.push(&chunk) {
            let mut seen = seen.borrow_mut();
            let id = message.id.unwrap_or_default();
            let at = match seen.at.get(&id) {
                Some(at) => *at,
                None => match event_time(&message.data) {
                    Ok(at) => {
                        seen.at.insert(id, at);
                        at
                    }
                    Err(err) => {
                        seen.errors.push(format!("subscriber {index}: {err:#}"));
                        continue;
                    }
                },
            };
            seen.counts[index] += 1;
            let latency = now.duration_since(at).unwrap_or_default();
            seen.samples.push(latency.as_micros() as u64);
        }
    }
}

/// The `at` of a request event; anything else (a reload) is an error.
fn event_time(data: &str) -> Result<SystemTime> {
    let event: corral_proto::events::Event =
        serde_json::from_str(data).with_context(|| format!("not an event: {data}"))?;
    match event {
        corral_proto::events::Event::RequestState { at, .. } => Ok(at),
        other => bail!("unexpected event {}: {data}", other.kind()),
    }
}
