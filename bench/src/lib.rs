//! `corral bench`: load generators and micro-benchmarks of corral, each
//! measured against its baseline in the same invocation.
//!
//! The CLI calls [`run`] with the arguments that follow `bench`:
//! `SCENARIO [--quick] [sizes...]`. Every scenario lives in its own module,
//! prints its progress on stderr and, as its last stdout line, one JSON
//! object with its name, sizes, figures and baseline figures (see
//! [`report`]). Every scenario checks that the work it timed really
//! succeeded and fails loudly if not; `--quick` variants run in CI with no
//! timing thresholds.
//!
//! Scenarios: `matcher` (the in-memory matching decision path against
//! Boruta's algorithm), `lifecycle` (end to end over HTTP against
//! `corral serve`, with pgbench as the baseline), `heartbeats` (the server's
//! CPU and heartbeat latency under 10,000 workers' agents, and no worker
//! wrongly failed) and `scale` (start-up time, memory, listing and explain
//! latency on a database of 100,000 waiting requests and 10,000 workers),
//! `chaos` (the lifecycle load under server kills, a database outage, agent
//! crashes and cut connections, then checks that nothing acknowledged was
//! lost and nothing leased twice) and `restart` (ready and first binding
//! after a `kill -9` with 10,000 requests waiting), `events` (commit to
//! delivery latency of `GET /v1/events` with 1,000 subscribers),
//! `dashboard` (the web dashboard's first render with 10,000 workers in
//! headless Chromium).

mod chaos;
mod dashboard;
mod events;
mod heartbeats;
mod lifecycle;
mod matcher;
mod report;
mod restart;
mod rng;
mod scale;
mod server;

use anyhow::{Result, bail};

const USAGE: &str = "\
usage: corral bench SCENARIO [--quick] [options and sizes...]

scenarios:
  matcher      the in-memory matching decision path vs Boruta's algorithm
               (corral bench matcher --help for its sizes)
  lifecycle    create → in_progress → close over HTTP vs pgbench's commit ceiling
  heartbeats   10,000 simulated workers' heartbeats over 100 agent sessions:
               server CPU share, heartbeat latency, workers wrongly failed
  scale        corral serve on 100,000 waiting requests and 10,000 workers:
               time to ready, RSS, list and explain latency
  chaos        lifecycle load while the server is killed -9, PostgreSQL stopped,
               the agent crashed and connections cut; checks nothing acknowledged
               is lost, nothing leased twice, no worker stuck
  restart      kill -9 with 10,000 requests waiting: time to ready and to the first
               binding after the restart
  events       1,000 subscribers on GET /v1/events while requests change: commit to
               delivery latency, every change delivered to every subscriber
  dashboard    the web dashboard in headless Chromium with 10,000 workers: time to
               the first rows of the workers table, to all read, to a sort
               (corral bench SCENARIO --help for each one's options)

Progress goes to stderr; stdout gets one JSON line per size, the default size last.";

/// Runs one benchmark scenario; `args` are the arguments after `bench`.
pub fn run(args: &[String]) -> Result<()> {
    let Some((scenario, rest)) = args.split_first() else {
        bail!("no scenario given\n\n{USAGE}");
    };
    match scenario.as_str() {
        "matcher" => matcher::run(rest),
        "lifecycle" => lifecycle::run(rest),
        "heartbeats" => heartbeats::run(rest),
        "scale" => scale::run(rest),
        "chaos" => chaos::run(rest),
        "restart" => restart::run(rest),
        "events" => events::run(rest),
        "dashboard" => dashboard::run(rest),
        "-h" | "--help" | "help" => {
            eprintln!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown scenario {other:?}\n\n{USAGE}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn scenarios_are_dispatched_and_unknown_ones_are_errors() {
        for scenario in ["heartbeats", "scale", "chaos", "restart", "events"] {
            run(&args(&[scenario, "--help"])).unwrap();
            let err = run(&args(&[scenario, "--bogus"])).unwrap_err();
            assert!(err.to_string().contains("unexpected argument \"--bogus\""), "{scenario}: {err}");
        }
        assert!(run(&args(&["nope"])).unwrap_err().to_string().contains("unknown scenario"));
        assert!(run(&[]).unwrap_err().to_string().contains("usage"));
    }
}
