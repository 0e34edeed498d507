//! `corral bench`: load generators and micro-benchmarks of corral, each
//! measured against its baseline in the same invocation.
//!
//! The CLI parses `corral bench SCENARIO [--quick] [sizes...]` into a
//! [`Bench`] (clap: each scenario's `Options`, see [`options`]) and calls
//! [`run`] with it. Every scenario lives in its own module,
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
mod options;
mod report;
mod restart;
mod rng;
mod scale;
mod server;

use anyhow::Result;
use clap::Subcommand;

/// `corral bench SCENARIO [--quick] [options and sizes...]`: progress goes to
/// stderr; stdout gets one JSON line per size, the default size last.
#[derive(clap::Args, Debug)]
pub struct Bench {
    #[command(subcommand)]
    scenario: Scenario,
}

/// The scenarios (`corral bench SCENARIO --help` for each one's options).
#[derive(Subcommand, Debug)]
enum Scenario {
    /// The in-memory matching decision path vs Boruta's algorithm.
    Matcher(matcher::Options),
    /// Create → in_progress → close over HTTP vs pgbench's commit ceiling.
    Lifecycle(lifecycle::Options),
    /// 10,000 simulated workers' heartbeats over 100 agent sessions: server CPU
    /// share, heartbeat latency, workers wrongly failed.
    Heartbeats(heartbeats::Options),
    /// corral serve on 100,000 waiting requests and 10,000 workers: time to ready,
    /// RSS, list and explain latency.
    Scale(scale::Options),
    /// Lifecycle load while the server is killed -9, PostgreSQL stopped, the agent
    /// crashed and connections cut; checks nothing acknowledged is lost, nothing
    /// leased twice, no worker stuck.
    Chaos(chaos::Options),
    /// kill -9 with 10,000 requests waiting: time to ready and to the first binding
    /// after the restart.
    Restart(restart::Options),
    /// 1,000 subscribers on GET /v1/events while requests change: commit to delivery
    /// latency, every change delivered to every subscriber.
    Events(events::Options),
    /// The web dashboard in headless Chromium with 10,000 workers: time to the first
    /// rows of the workers table, to all read, to a sort.
    Dashboard(dashboard::Options),
}

/// Runs the benchmark scenario the CLI parsed (`corral bench SCENARIO ...`).
pub fn run(bench: Bench) -> Result<()> {
    match bench.scenario {
        Scenario::Matcher(options) => matcher::run(options.resolve()),
        Scenario::Lifecycle(options) => lifecycle::run(options.resolve()),
        Scenario::Heartbeats(options) => heartbeats::run(options.resolve()?),
        Scenario::Scale(options) => scale::run(options.resolve()?),
        Scenario::Chaos(options) => chaos::run(options.resolve()?),
        Scenario::Restart(options) => restart::run(options.resolve()?),
        Scenario::Events(options) => events::run(options.resolve()),
        Scenario::Dashboard(options) => dashboard::run(options.resolve()),
    }
}

/// `corral bench` as a program of its own, parsed as the CLI parses it
/// (the `matcher` example, the tests).
#[derive(clap::Parser, Debug)]
#[command(name = "corral bench")]
pub struct BenchCommand {
    #[command(flatten)]
    pub bench: Bench,
}

/// `args` (`SCENARIO [options]`) parsed as `corral bench` would; `None`
/// when they ask for help.
#[cfg(test)]
fn parse_scenario(args: &[&str]) -> Result<Option<Scenario>> {
    use clap::Parser;
    use clap::error::ErrorKind;
    match BenchCommand::try_parse_from(std::iter::once(&"corral bench").chain(args)) {
        Ok(parsed) => Ok(Some(parsed.bench.scenario)),
        Err(err) if err.kind() == ErrorKind::DisplayHelp => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// One scenario's options parsed from `list` (its arguments), as
/// `corral bench SCENARIO` would parse them.
#[cfg(test)]
fn parse_options<O: clap::Args + clap::FromArgMatches>(list: &[&str]) -> Result<O> {
    let command = O::augment_args(clap::Command::new("scenario"));
    let matches = command.try_get_matches_from(std::iter::once(&"scenario").chain(list))?;
    Ok(O::from_arg_matches(&matches)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_parses_and_unknown_ones_are_errors() {
        for scenario in ["matcher", "lifecycle", "heartbeats", "scale", "chaos", "restart", "events", "dashboard"] {
            assert!(parse_scenario(&[scenario, "--help"]).unwrap().is_none(), "{scenario}");
            assert!(parse_scenario(&[scenario]).unwrap().is_some(), "{scenario}");
            let err = parse_scenario(&[scenario, "--bogus"]).unwrap_err();
            assert!(err.to_string().contains("unexpected argument '--bogus'"), "{scenario}: {err}");
        }
        assert!(parse_scenario(&["nope"]).unwrap_err().to_string().contains("unrecognized subcommand 'nope'"));
        assert!(parse_scenario(&[]).unwrap_err().to_string().contains("Usage: corral bench"));
    }
}
