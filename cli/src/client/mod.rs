//! Client commands (`request`, `worker`, `user`, `audit`): they talk to a corral
//! server over its `/v1` HTTP API (SPEC §4, §8).
//!
//! - [`connection`] finds the server and the token (flags, environment,
//!   config file, the admin token of a local `corral serve`);
//! - the calls go through `corral_client::Client` (typed, a timeout on
//!   each, the server's `{"error", "message"}` bodies as errors, the
//!   replicas of a server list tried in turn);
//! - [`requests`], [`workers`], [`users`] are the subcommands;
//! - [`ssh`] opens the interactive session of `request acquire --ssh`;
//! - [`output`] prints tables and `key: value` blocks for people, or the
//!   server's JSON with `--json`.
//!
//! Every command runs its calls inside one `actix_rt::System` (awc is not
//! `Send`) and fails with a non-zero exit status on any error.

mod acquire;
mod audit;
mod connection;
mod events;
mod output;
mod requests;
mod ssh;
mod users;
mod workers;

use std::future::Future;
use std::time::SystemTime;

use clap::Args;

pub use audit::AuditArgs;
pub use events::EventsArgs;
pub use requests::RequestCommand;
pub use users::UserCommand;
pub use workers::WorkerCommand;

use self::connection::{Connection, Environment};
use self::output::Table;
use corral_client::{Client, Listing, Paging};

/// `corral request ...`
pub fn request(command: RequestCommand) -> anyhow::Result<()> {
    requests::run(command)
}

/// `corral worker ...`
pub fn worker(command: WorkerCommand) -> anyhow::Result<()> {
    workers::run(command)
}

/// `corral events`
pub fn events(args: EventsArgs) -> anyhow::Result<()> {
    events::run(args)
}

/// `corral audit`
pub fn audit(args: AuditArgs) -> anyhow::Result<()> {
    audit::run(args)
}

/// `corral user ...`
pub fn user(command: UserCommand) -> anyhow::Result<()> {
    users::run(command)
}

/// The paging flags of a list command.
#[derive(Args, Debug, Clone)]
pub struct PageArgs {
    /// Entries per page (1 to 1000) [server default: 100].
    #[arg(long)]
    limit: Option<u32>,
    /// Start at this page (the next_cursor of an earlier listing).
    #[arg(long)]
    cursor: Option<String>,
    /// Follow next_cursor to the end (at most 100 pages).
    #[arg(long)]
    all: bool,
}

impl PageArgs {
    /// The paging these flags ask for.
    fn paging(&self) -> Paging {
        Paging { limit: self.limit, cursor: self.cursor.clone(), all: self.all }
    }
}

/// Prints a listing: with `--json` as `{"items": [...], "next_cursor": ...}`;
/// else as a table of `headers` with a row per item (or `empty`, if given,
/// when there is no item), then on stderr how to get the next page of
/// `what`.
fn print_listing<T: serde::Serialize>(
    common: &CommonArgs,
    listing: &Listing<T>,
    what: &str,
    empty: Option<&str>,
    headers: &[&'static str],
    row: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    if listing.truncated {
        eprintln!(
            "corral: stopped after {} pages; continue with --cursor {}",
            corral_client::MAX_PAGES,
            listing.next_cursor.as_deref().unwrap_or("")
        );
    }
    if common.json {
        return output::json(&serde_json::json!({ "items": listing.items, "next_cursor": listing.next_cursor }));
    }
    match empty {
        Some(text) if listing.items.is_empty() => output::emit(text)?,
        _ => {
            let mut table = Table::new(headers);
            for item in &listing.items {
                table.row(row(item));
            }
            table.print()?;
        }
    }
    if let Some(cursor) = &listing.next_cursor {
        eprintln!("more {what}: give --all, or --cursor {cursor}");
    }
    Ok(())
}

/// An error as the CLI prints it: the causes, and for a server that
/// cannot be reached, what to check.
pub fn describe_error(err: &anyhow::Error) -> String {
    let unreachable = err
        .chain()
        .any(|e| matches!(e.downcast_ref::<corral_client::Error>(), Some(corral_client::Error::Transport { .. })));
    if unreachable { format!("{err:#} (is it running? give --server or set CORRAL_URL)") } else { format!("{err:#}") }
}

/// Flags every client command takes.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    #[command(flatten)]
    connection: Connection,
    /// Print the server's JSON instead of text (for scripts).
    #[arg(long, help_heading = "Output")]
    json: bool,
}

impl CommonArgs {
    /// A client for the server and token found from the flags and the
    /// environment.
    fn client(&self) -> anyhow::Result<Client> {
        let target = self.connection.resolve(&Environment::from_process())?;
        let tls = corral_client::ClientTls::with_ca_file(target.ca_file.clone());
        Ok(Client::new(&target.server, Some(&target.token), &tls)?)
    }
}

/// Runs the calls of one command.
fn block_on<F: Future>(future: F) -> F::Output {
    actix_rt::System::new().block_on(future)
}

/// `key=value` of `--caps` and `--cap`.
fn parse_cap(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not key=value")),
    }
}

/// A priority from 1 (most urgent) to 16.
fn parse_priority(text: &str) -> Result<corral_core::Priority, String> {
    let n: i64 = text.trim().parse().map_err(|_| format!("{text:?} is not an integer from 1 to 16"))?;
    corral_core::Priority::try_from(n).map_err(|e| e.to_string())
}

/// An instant: RFC 3339 (`2026-01-02T03:04:05Z`), or a duration from now
/// (`2h`, `+2h`, `in 2h`).
fn parse_instant(text: &str) -> Result<SystemTime, String> {
    let text = text.trim();
    if let Ok(t) = corral_core::time::parse_rfc3339(text) {
        return Ok(t);
    }
    let relative = text.strip_prefix('+').or_else(|| text.strip_prefix("in ")).unwrap_or(text).trim();
    match corral_core::time::parse_duration(relative) {
        Ok(d) => Ok(corral_core::time::truncate_to_micros(SystemTime::now() + d)),
        Err(_) => Err(format!(
            "{text:?} is neither an RFC 3339 time such as 2026-01-02T03:04:05Z nor a duration from now such as 2h"
        )),
    }
}

/// A humantime duration: `90s`, `2h 30m`.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    corral_core::time::parse_duration(text.trim())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn argument_forms() {
        assert_eq!(parse_cap("device_type=rpi4").unwrap(), ("device_type".into(), "rpi4".into()));
        assert_eq!(parse_cap("note=a=b").unwrap(), ("note".into(), "a=b".into()));
        assert!(parse_cap("=x").is_err() && parse_cap("x").is_err());
        assert_eq!(parse_priority("3").unwrap().get(), 3);
        assert!(parse_priority("17").is_err() && parse_priority("high").is_err());
        assert_eq!(
            parse_instant("2026-01-02T03:04:05Z").unwrap(),
            corral_core::time::parse_rfc3339("2026-01-02T03:04:05Z").unwrap()
        );
        for relative in ["2h", "+2h", "in 2h"] {
            let t = parse_instant(relative).unwrap();
            let ahead = t.duration_since(SystemTime::now()).unwrap();
            assert!(ahead > Duration::from_secs(7190) && ahead <= Duration::from_secs(7200), "{relative}");
        }
        assert!(parse_instant("tomorrow").is_err());
    }
}
