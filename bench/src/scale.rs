//! `corral bench scale`: a server restarted on a large database: how fast it
//! is ready, how much memory it holds, and how fast it lists and explains.
//!
//! # The run
//!
//! 1. `corral serve` starts once on a fresh data directory (creating the
//!    schema and the first tokens) and stops (SIGTERM; its embedded
//!    PostgreSQL stops with it).
//! 2. The embedded cluster is started alone and loaded, in one transaction
//!    of set-based SQL ([`corral_db::ScaleFixture`]), with U users (tokens
//!    made here, only their hashes stored), W workers in maintenance without
//!    a session (worker i offers `device_type = t{i mod K}` and a few other
//!    caps) and R waiting requests spread over the users (request i asks
//!    for `device_type = t{i mod K}`, priorities 1-16, created 1 ms apart),
//!    with their history rows; then it is analysed and stopped. Defaults:
//!    R = 100,000, W = 10,000, K = 100, U = 4 (`--quick`: 10,000 and 1,000).
//! 3. `corral serve` starts again (`RUST_LOG=info`, so its log shows the
//!    start-up phases, which are copied to stderr).
//!
//! # Figures
//!
//! - `ready_s`: from spawning `corral serve` to the first `/readyz` 200
//!   (polled every 20 ms), which includes starting PostgreSQL, the schema,
//!   and rebuilding every actor from the database.
//! - `rss_mb`: the server's resident set 2 s after it was ready;
//!   `rss_after_mb` at the end; `startup_cpu_s` its CPU time when ready.
//! - `list_p50_ms`/`list_p99_ms`: `GET /v1/requests?limit=100` as admin,
//!   N samples (default 200; 50 with `--quick`), one after another; every
//!   fourth starts from the newest request, the three after it follow the
//!   previous answer's `next_cursor`. `user_list_*`: the same as one of the
//!   users (the listing is then filtered by owner).
//! - `explain_p50_ms`/`explain_p99_ms`: `GET /v1/requests/{id}/explain` as
//!   admin of N waiting requests picked at random (seeded).
//! - `metrics_p50_ms`/`metrics_p99_ms`/`metrics_max_ms`: N scrapes of
//!   `GET /metrics` one after another (target: at most 20 ms with 10,000
//!   workers); each must answer 200 and count all W workers in
//!   maintenance. `metrics_bytes`: the size of the last one.
//!
//! # Checks (the run fails loudly when one does not hold)
//!
//! The fixture inserted exactly W workers and R requests; every list answer
//! is 200 with 100 waiting requests in descending id order (the first page
//! starting at the newest request, each next page right below the previous
//! one, a user's pages only that user's requests); every explain answer is
//! 200, says `waiting` with a position and lists exactly the W/K-or-so
//! workers with the request's device type; and at the end the server lists
//! all W workers.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use corral_db::{Db, PoolSettings, ScaleFixture};
use corral_embedded_pg::{CORRAL_DATABASE, EmbeddedPostgres};
use serde::Serialize;
use serde_json::Value;

use crate::options;
use crate::report::{percentile, print_json_line, round_to};
use crate::rng::SplitMix64;
use crate::server::{ApiClient, ServerProcess, load_average};

/// The server's log filter for the timed start: start-up phases, no
/// per-connection noise.
const START_LOG_FILTER: &str = "info,actix_server=warn,actix_web=warn";
const START_LOG: &str = "serve-scale.log";
/// The list calls follow this many cursors after each first page.
const PAGES_PER_WALK: usize = 4;

/// `corral bench scale`.
#[derive(clap::Args, Debug)]
pub(crate) struct Options {
    /// Waiting requests in the database [default: 100000; 10000 with --quick].
    #[arg(long, value_name = "N", value_parser = options::positive)]
    requests: Option<usize>,
    /// Workers in the database [default: 10000; 1000 with --quick].
    #[arg(long, value_name = "N", value_parser = options::positive)]
    workers: Option<usize>,
    /// Device types of workers and requests.
    #[arg(long, value_name = "K", default_value = "100", value_parser = options::positive)]
    device_types: usize,
    /// Owners of the requests.
    #[arg(long, value_name = "N", default_value = "4", value_parser = options::positive)]
    users: usize,
    /// Timed calls of each kind [default: 200; 50 with --quick].
    #[arg(long, value_name = "N", value_parser = options::positive)]
    samples: Option<usize>,
    /// Seed of the explained requests' choice.
    #[arg(long, value_name = "N", default_value = "1", value_parser = options::positive_u64)]
    seed: u64,
    /// Small sizes, for CI (checks that it works, judges no figure).
    #[arg(long)]
    quick: bool,
}

impl Options {
    pub(crate) fn resolve(self) -> Result<Config> {
        let Options { requests, workers, device_types, users, samples, seed, quick } = self;
        let config = Config {
            requests: requests.unwrap_or(if quick { 10_000 } else { 100_000 }),
            workers: workers.unwrap_or(if quick { 1_000 } else { 10_000 }),
            device_types,
            users,
            samples: samples.unwrap_or(if quick { 50 } else { 200 }),
            seed,
            quick,
        };
        if config.device_types > config.workers {
            bail!("--device-types ({device_types}) must not exceed --workers ({})", config.workers);
        }
        // Every list call must be able to fill a page of 100, cursors included.
        if config.requests < 100 * PAGES_PER_WALK * config.users {
            bail!("--requests must be at least {} (full pages for every user)", 100 * PAGES_PER_WALK * config.users);
        }
        if u32::try_from(config.requests).is_err() || u32::try_from(config.workers).is_err() {
            bail!("--requests and --workers must be below 2^32");
        }
        Ok(config)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Config {
    requests: usize,
    workers: usize,
    device_types: usize,
    users: usize,
    samples: usize,
    seed: u64,
    quick: bool,
}

#[derive(Serialize)]
struct Line {
    scenario: &'static str,
    requests: usize,
    workers: usize,
    device_types: usize,
    users: usize,
    samples: usize,
    ready_s: f64,
    rss_mb: f64,
    list_p99_ms: f64,
    explain_p99_ms: f64,
    list_p50_ms: f64,
    list_max_ms: f64,
    explain_p50_ms: f64,
    explain_max_ms: f64,
    user_list_p50_ms: f64,
    user_list_p99_ms: f64,
    /// `GET /metrics` with every worker registered (issue 15: at most 20 ms).
    metrics_p50_ms: f64,
    metrics_p99_ms: f64,
    metrics_max_ms: f64,
    metrics_bytes: usize,
    rss_after_mb: f64,
    startup_cpu_s: f64,
    /// Loading the fixture (one transaction, then ANALYZE).
    load_s: f64,
    load_avg_before: f64,
    load_avg_after: f64,
    seed: u64,
    quick: bool,
    build: &'static str,
}

pub(crate) fn run(config: Config) -> Result<()> {
    let line = actix_rt::System::new().block_on(measure(&config))?;
    print_json_line(&line)
}

/// The requests' ids and owners, as the fixture numbered them.
struct Loaded {
    first: i64,
    last: i64,
    /// (name, token)
    users: Vec<(String, String)>,
}

impl Loaded {
    /// The device type index request `id` asks for.
    fn device_type_of(&self, id: i64, config: &Config) -> usize {
        (id - self.first) as usize % config.device_types
    }
}

/// Workers whose `device_type` is `t{k}` among W.
fn workers_of_type(k: usize, config: &Config) -> usize {
    (config.workers + config.device_types - 1 - k) / config.device_types
}

async fn measure(config: &Config) -> Result<Line> {
    eprintln!(
        "scale: {} requests, {} workers, {} device types, {} users: creating the database",
        config.requests, config.workers, config.device_types, config.users
    );
    let dir = ServerProcess::fresh_dir("scale")?;
    let mut server = ServerProcess::start(&dir, "# corral bench scale: defaults\n")?;
    server.wait_ready(Duration::from_secs(120)).await?;
    let admin_token = server.token("admin.token")?;
    server.stop()?;

    let load_started = Instant::now();
    let loaded = load_fixture(&dir, config).await?;
    let load_s = load_started.elapsed().as_secs_f64();
    eprintln!("  loaded in {load_s:.1}s; starting corral serve on it");

    let load_avg_before = load_average()?;
    server.set_log_filter(START_LOG_FILTER);
    let spawned = Instant::now();
    server.restart(START_LOG)?;
    server.wait_ready(Duration::from_secs(600)).await?;
    let ready_s = spawned.elapsed().as_secs_f64();
    let startup_cpu_s = server.cpu_seconds()?;
    eprintln!("  ready in {ready_s:.3}s ({startup_cpu_s:.2} CPU s); its log:");
    if let Ok(log) = std::fs::read_to_string(dir.join(START_LOG)) {
        for line in log.lines().take(40) {
            eprintln!("    {}", without_ansi(line));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_mb = server.rss_mb()?;

    let admin = ApiClient::new(&server.url, &admin_token);
    let list = time_listing(&admin, None, &loaded, config).await.context("admin listing")?;
    let (user_name, user_token) = &loaded.users[0];
    let user = ApiClient::new(&server.url, user_token);
    let user_list = time_listing(&user, Some(user_name), &loaded, config).await.context("user listing")?;
    let explain = time_explain(&admin, &loaded, config).await?;
    let (metrics, metrics_bytes) = time_metrics(&admin, config).await?;
    let rss_after_mb = server.rss_mb()?;
    let load_avg_after = load_average()?;

    let listed = admin.all("/v1/workers").await?.len();
    ensure!(listed == config.workers, "the server lists {listed} workers, the database has {}", config.workers);
    server.stop()?;

    let ms = |samples: &[u64], pct: f64| round_to(percentile(samples, pct) as f64 / 1000.0, 3);
    Ok(Line {
        scenario: "scale",
        requests: config.requests,
        workers: config.workers,
        device_types: config.device_types,
        users: config.users,
        samples: config.samples,
        ready_s: round_to(ready_s, 3),
        rss_mb: round_to(rss_mb, 1),
        list_p99_ms: ms(&list, 99.0),
        explain_p99_ms: ms(&explain, 99.0),
        list_p50_ms: ms(&list, 50.0),
        list_max_ms: ms(&list, 100.0),
        explain_p50_ms: ms(&explain, 50.0),
        explain_max_ms: ms(&explain, 100.0),
        user_list_p50_ms: ms(&user_list, 50.0),
        user_list_p99_ms: ms(&user_list, 99.0),
        metrics_p50_ms: ms(&metrics, 50.0),
        metrics_p99_ms: ms(&metrics, 99.0),
        metrics_max_ms: ms(&metrics, 100.0),
        metrics_bytes,
        rss_after_mb: round_to(rss_after_mb, 1),
        startup_cpu_s: round_to(startup_cpu_s, 2),
        load_s: round_to(load_s, 3),
        load_avg_before,
        load_avg_after,
        seed: config.seed,
        quick: config.quick,
        build: if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

/// `line` without its terminal colour codes (`ESC [ ... letter`).
fn without_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Starts the stopped server's cluster alone, loads the fixture, stops it.
async fn load_fixture(dir: &std::path::Path, config: &Config) -> Result<Loaded> {
    let pg = EmbeddedPostgres::start(dir).await.context("starting the embedded PostgreSQL")?;
    let db = Db::connect(&pg.connection_string(CORRAL_DATABASE), &PoolSettings { max_size: 2, ..Default::default() })
        .await
        .context("connecting to the embedded PostgreSQL")?;
    let users: Vec<(String, String)> =
        (0..config.users).map(|i| (format!("bench-user-{i}"), corral_db::new_token())).collect();
    let fixture = ScaleFixture {
        users: users.iter().map(|(name, token)| (name.clone(), corral_db::hash_token(token))).collect(),
        workers: config.workers as u32,
        requests: config.requests as u32,
        device_types: config.device_types as u32,
        agent: "bench-scale".to_string(),
        now: SystemTime::now(),
    };
    let done = db.load_scale_fixture(&fixture).await.context("loading the fixture")?;
    drop(db);
    pg.stop().await.context("stopping the embedded PostgreSQL")?;
    ensure!(
        done.workers == config.workers as u64 && done.requests == config.requests as u64,
        "the fixture inserted {} workers and {} requests",
        done.workers,
        done.requests
    );
    ensure!(
        done.last_request.0 - done.first_request.0 + 1 == config.requests as i64,
        "request ids {}..={} are not contiguous",
        done.first_request,
        done.last_request
    );
    Ok(Loaded { first: done.first_request.0, last: done.last_request.0, users })
}

/// Times `samples` list calls (as admin, or as `owner`, the first user);
/// returns the latencies in µs, sorted.
async fn time_listing(client: &ApiClient, owner: Option<&str>, loaded: &Loaded, config: &Config) -> Result<Vec<u64>> {
    // Request i (id first + i) belongs to user i mod U: the admin sees every
    // id, the first user every U-th one, from the newest of theirs.
    let (step, newest) = match owner {
        None => (1, loaded.last),
        Some(_) => {
            let users = config.users as i64;
            let count = loaded.last - loaded.first + 1;
            (users, loaded.first + (count - 1) / users * users)
        }
    };
    let mut samples = Vec::with_capacity(config.samples);
    let mut cursor: Option<(String, i64)> = None;
    for n in 0..config.samples {
        let (path, start) = match (&cursor, n % PAGES_PER_WALK) {
            (_, 0) => ("/v1/requests?limit=100".to_string(), newest),
            (Some((next, last)), _) => (format!("/v1/requests?limit=100&cursor={next}"), last - step),
            (None, _) => bail!("a page that is not the last one has no next_cursor"),
        };
        let sent = Instant::now();
        let (status, page) = client.get(&path).await?;
        samples.push(sent.elapsed().as_micros() as u64);
        if status != 200 {
            bail!("{path} answered {status}: {page}");
        }
        let last = check_page(&page, owner, start, step).with_context(|| path.clone())?;
        cursor = page["next_cursor"].as_str().map(|next| (next.to_string(), last));
    }
    samples.sort_unstable();
    Ok(samples)
}

/// 100 waiting requests (all of `owner`, if given) with ids `start`,
/// `start - step`, ...; returns the last id.
fn check_page(page: &Value, owner: Option<&str>, start: i64, step: i64) -> Result<i64> {
    let items = page["items"].as_array().context("no items")?;
    ensure!(items.len() == 100, "{} items, not 100", items.len());
    let mut expected = start;
    for item in items {
        let id = item["id"].as_i64().context("an item without an id")?;
        ensure!(id == expected, "request {id} where {expected} was expected");
        ensure!(item["state"] == "waiting", "request {id} is {}", item["state"]);
        if let Some(owner) = owner {
            ensure!(item["owner"] == owner, "request {id} belongs to {}", item["owner"]);
        }
        expected -= step;
    }
    Ok(expected + step)
}

/// Times `samples` scrapes of `/metrics` (µs each, sorted); each must
/// answer 200 and count every worker (all in maintenance in the fixture).
async fn time_metrics(admin: &ApiClient, config: &Config) -> Result<(Vec<u64>, usize)> {
    let expected = format!("corral_workers{{state=\"maintenance\"}} {}", config.workers);
    let mut samples = Vec::with_capacity(config.samples);
    let mut bytes = 0;
    for _ in 0..config.samples.max(1) {
        let started = Instant::now();
        let (status, text) = admin.get_text("/metrics").await?;
        samples.push(started.elapsed().as_micros() as u64);
        ensure!(status == 200, "GET /metrics answered {status}: {text}");
        ensure!(text.lines().any(|l| l == expected), "GET /metrics lacks {expected:?}");
        bytes = text.len();
    }
    samples.sort_unstable();
    Ok((samples, bytes))
}

/// Times `samples` explain calls of random waiting requests; returns the
/// latencies in µs, sorted.
async fn time_explain(admin: &ApiClient, loaded: &Loaded, config: &Config) -> Result<Vec<u64>> {
    let mut rng = SplitMix64::new(config.seed);
    let mut samples = Vec::with_capacity(config.samples);
    for _ in 0..config.samples {
        let id = loaded.first + rng.below((loaded.last - loaded.first + 1) as usize) as i64;
        let path = format!("/v1/requests/{id}/explain");
        let sent = Instant::now();
        let (status, answer) = admin.get(&path).await?;
        samples.push(sent.elapsed().as_micros() as u64);
        if status != 200 {
            bail!("{path} answered {status}: {answer}");
        }
        ensure!(answer["state"] == "waiting", "{path}: {answer}");
        ensure!(answer["position"].as_u64().is_some_and(|p| p >= 1), "{path}: no position: {answer}");
        let workers = answer["workers"].as_array().with_context(|| format!("{path}: no workers: {answer}"))?;
        let expected = workers_of_type(loaded.device_type_of(id, config), config);
        ensure!(
            workers.len() == expected && workers.iter().all(|w| w["state"] == "maintenance"),
            "{path}: {} workers listed, {expected} in maintenance expected: {}",
            workers.len(),
            answer["summary"]
        );
    }
    samples.sort_unstable();
    Ok(samples)
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
            Config {
                requests: 100_000,
                workers: 10_000,
                device_types: 100,
                users: 4,
                samples: 200,
                seed: 1,
                quick: false
            }
        );
        let quick = parse(&["--quick"]).unwrap();
        assert_eq!(quick, Config { requests: 10_000, workers: 1_000, samples: 50, quick: true, ..full });
    }

    #[test]
    fn every_option() {
        let config = parse(&[
            "--quick",
            "--requests",
            "20_000",
            "--workers",
            "500",
            "--device-types",
            "10",
            "--users",
            "2",
            "--samples",
            "30",
            "--seed",
            "9",
        ])
        .unwrap();
        assert_eq!(
            config,
            Config { requests: 20_000, workers: 500, device_types: 10, users: 2, samples: 30, seed: 9, quick: true }
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        for (list, expected) in [
            (&["--requests"][..], "a value is required for '--requests <N>'"),
            (&["--workers", "0"][..], "for '--workers <N>': needs a positive integer"),
            (&["--samples", "many"][..], "for '--samples <N>': needs a positive integer"),
            (&["--device-types", "200", "--workers", "100"][..], "must not exceed --workers"),
            (&["--requests", "1000"][..], "--requests must be at least 1600"),
            (&["--requests", "5000000000"][..], "below 2^32"),
            (&["scale"][..], "unexpected argument 'scale'"),
        ] {
            let err = parse(list).unwrap_err().to_string();
            assert!(err.contains(expected), "{list:?}: {err}");
        }
    }

    #[test]
    fn colour_codes_are_removed() {
        assert_eq!(without_ansi("\u{1b}[2mtime\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m x=1"), "time  INFO x=1");
        assert_eq!(without_ansi("plain"), "plain");
    }

    #[test]
    fn workers_per_device_type() {
        let config = parse(&["--workers", "1005", "--device-types", "100"]).unwrap();
        assert_eq!(workers_of_type(0, &config), 11);
        assert_eq!(workers_of_type(4, &config), 11);
        assert_eq!(workers_of_type(5, &config), 10);
        assert_eq!((0..100).map(|k| workers_of_type(k, &config)).sum::<usize>(), 1005);
    }
}
