//! `corral worker list|show|history|idle|maintenance|groups|hand-over|note|quarantine|power-cycle|deregister`.

use std::time::SystemTime;

use clap::{Args, Subcommand};
use corral_client::workers::WorkerFilter;
use corral_core::WorkerId;
use corral_proto::workers::{AdminState, HandOver, StateChange, Worker};

use super::output;
use super::{CommonArgs, PageArgs, block_on, parse_cap, print_listing};

#[derive(Subcommand, Debug)]
pub enum WorkerCommand {
    /// List the workers you may use (admins: all).
    List(ListArgs),
    /// Show one worker.
    Show(UuidArgs),
    /// A worker's transitions, newest first: when, from, to, who or what
    /// caused it, and why.
    History(HistoryArgs),
    /// Put a worker back into service (admin): it prepares, then becomes idle.
    Idle(IdleArgs),
    /// Take a worker out of service (admin). On a busy worker (its agent
    /// has not confirmed maintenance), stop waiting for the agent.
    Maintenance(MaintenanceArgs),
    /// Set the groups that may use a worker (admin); no groups: everyone.
    Groups(GroupsArgs),
    /// Hand a worker in maintenance or failed over to another agent user
    /// (admin): only that user's agents may claim it from then on.
    HandOver(HandOverArgs),
    /// Set or clear an admin's note on a worker (admin), shown with its
    /// author and time beside the system's own reason.
    Note(NoteArgs),
    /// Hold a worker out of matching until an admin lifts it (admin), or
    /// lift its quarantine with --clear.
    Quarantine(QuarantineArgs),
    /// Have a worker's agent power-cycle it (admins, and the holder of its
    /// lease during the lease). The outcome is in `corral worker history`.
    PowerCycle(UuidArgs),
    /// Forget a worker in maintenance or failed (admin).
    Deregister(UuidArgs),
}

#[derive(Args, Debug)]
pub struct QuarantineArgs {
    /// Worker UUID.
    uuid: WorkerId,
    /// Why (shown on the worker).
    #[arg(long, required_unless_present = "clear", conflicts_with = "clear")]
    reason: Option<String>,
    /// Lift the quarantine.
    #[arg(long)]
    clear: bool,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct NoteArgs {
    /// Worker UUID.
    uuid: WorkerId,
    /// The note (at most 1024 bytes; newlines allowed).
    #[arg(value_name = "TEXT", required_unless_present = "clear", conflicts_with = "clear")]
    text: Option<String>,
    /// Remove the note.
    #[arg(long)]
    clear: bool,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Worker UUID.
    uuid: WorkerId,
    #[command(flatten)]
    page: PageArgs,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct HandOverArgs {
    /// Worker UUID.
    uuid: WorkerId,
    /// The agent user (name) whose agents may claim it.
    #[arg(long)]
    principal: String,
    /// The agent host name to register it under [default: unchanged].
    #[arg(long)]
    agent: Option<String>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only these states: maintenance, prepare, idle, running, failed, busy
    /// (repeatable or comma-separated).
    #[arg(long, value_name = "STATE")]
    state: Vec<String>,
    /// Only workers of this group.
    #[arg(long)]
    group: Option<String>,
    /// Only held workers: quarantine, recovery, any; or none (not held).
    #[arg(long)]
    hold: Option<String>,
    /// Only workers offering this cap, KEY=VALUE (repeatable).
    #[arg(long = "cap", visible_alias = "caps", value_name = "KEY=VALUE", value_parser = parse_cap)]
    caps: Vec<(String, String)>,
    #[command(flatten)]
    page: PageArgs,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct UuidArgs {
    /// Worker UUID.
    uuid: WorkerId,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct IdleArgs {
    /// Worker UUID.
    uuid: WorkerId,
    /// Why, for the worker's history.
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct MaintenanceArgs {
    /// Worker UUID.
    uuid: WorkerId,
    /// Why (shown to users whose requests wait for it).
    #[arg(long)]
    reason: Option<String>,
    /// Let the running lease finish first.
    #[arg(long)]
    drain: bool,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct GroupsArgs {
    /// Worker UUID.
    uuid: WorkerId,
    /// The new groups (they replace the old ones).
    #[arg(value_name = "GROUP", required_unless_present = "clear", conflicts_with = "clear")]
    groups: Vec<String>,
    /// Remove every group: the worker becomes public.
    #[arg(long)]
    clear: bool,
    #[command(flatten)]
    common: CommonArgs,
}

pub fn run(command: WorkerCommand) -> anyhow::Result<()> {
    block_on(async move {
        match command {
            WorkerCommand::List(args) => list(args).await,
            WorkerCommand::Show(args) => {
                let worker = args.common.client()?.worker(args.uuid).await?;
                print_worker(&args.common, &worker)
            }
            WorkerCommand::History(args) => history(args).await,
            WorkerCommand::Idle(args) => {
                let change = StateChange { state: AdminState::Idle, reason: args.reason, drain: false };
                set_state(&args.common, args.uuid, &change).await
            }
            WorkerCommand::Maintenance(args) => {
                let change = StateChange { state: AdminState::Maintenance, reason: args.reason, drain: args.drain };
                set_state(&args.common, args.uuid, &change).await
            }
            WorkerCommand::Groups(args) => {
                let worker = args.common.client()?.set_worker_groups(args.uuid, &args.groups).await?;
                print_worker(&args.common, &worker)
            }
            WorkerCommand::HandOver(args) => {
                let body = HandOver { principal: args.principal, agent: args.agent };
                let worker = args.common.client()?.hand_over_worker(args.uuid, &body).await?;
                print_worker(&args.common, &worker)
            }
            WorkerCommand::Note(args) => {
                let note = if args.clear { None } else { args.text };
                let worker = args.common.client()?.set_worker_note(args.uuid, note).await?;
                print_worker(&args.common, &worker)
            }
            WorkerCommand::Quarantine(args) => {
                let client = args.common.client()?;
                let worker = match args.reason {
                    Some(reason) if !args.clear => client.quarantine_worker(args.uuid, &reason).await?,
                    _ => client.lift_quarantine(args.uuid).await?,
                };
                print_worker(&args.common, &worker)
            }
            WorkerCommand::PowerCycle(args) => {
                let worker = args.common.client()?.power_cycle_worker(args.uuid).await?;
                if args.common.json {
                    return output::json(&worker);
                }
                output::emit(&format!(
                    "power cycle of worker {} asked; its outcome will be in `corral worker history {}`\n",
                    args.uuid, args.uuid
                ))
            }
            WorkerCommand::Deregister(args) => {
                args.common.client()?.deregister_worker(args.uuid).await?;
                if args.common.json { Ok(()) } else { output::emit(&format!("worker {} deregistered\n", args.uuid)) }
            }
        }
    })
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let filter = WorkerFilter {
        states: args.state.clone(),
        group: args.group.clone(),
        hold: args.hold.clone(),
        caps: args.caps.clone(),
    };
    let listing = args.common.client()?.workers(&filter, &args.page.paging()).await?;
    let headers = ["UUID", "STATE", "HOLD", "AGENT", "REQUEST", "GROUPS", "CAPS", "REASON", "NOTE"];
    print_listing(&args.common, &listing, "workers", Some("no workers\n"), &headers, |w| {
        vec![
            w.uuid.to_string(),
            w.state.to_string(),
            hold(w),
            w.agent.clone(),
            output::or_dash(w.request),
            output::list(w.groups.iter()),
            output::or_dash(Some(&w.caps)),
            output::or_dash(w.reason.as_deref()),
            output::or_dash(w.note.as_deref().map(|n| n.lines().next().unwrap_or_default())),
        ]
    })
}

async fn history(args: HistoryArgs) -> anyhow::Result<()> {
    let listing = args.common.client()?.worker_history(args.uuid, &args.page.paging()).await?;
    let headers = ["AT", "FROM", "TO", "ACTOR", "REASON"];
    print_listing(&args.common, &listing, "history", None, &headers, |entry| {
        vec![
            output::time(entry.at),
            output::or_dash(entry.from.as_ref()),
            entry.to.clone(),
            entry.actor.clone(),
            output::or_dash(Some(&entry.reason)),
        ]
    })
}

async fn set_state(common: &CommonArgs, uuid: WorkerId, change: &StateChange) -> anyhow::Result<()> {
    let worker = common.client()?.set_worker_state(uuid, change).await?;
    print_worker(common, &worker)
}

fn print_worker(common: &CommonArgs, w: &Worker) -> anyhow::Result<()> {
    if common.json {
        return output::json(w);
    }
    let now = SystemTime::now();
    output::emit(&output::fields(&[
        ("uuid", w.uuid.to_string()),
        ("state", w.state.to_string()),
        ("reason", output::or_dash(w.reason.as_deref())),
        (
            "quarantine",
            output::or_dash(w.quarantine.as_ref().map(|q| {
                format!(
                    "{q} (by {}, {})",
                    w.quarantine_by.as_deref().unwrap_or("-"),
                    w.quarantine_at.map(output::time).unwrap_or_default()
                )
            })),
        ),
        (
            "recovery",
            output::or_dash(
                w.recovery
                    .as_ref()
                    .map(|r| format!("{r} (since {})", w.recovery_at.map(output::time).unwrap_or_default())),
            ),
        ),
        ("work", output::or_dash(w.work.as_deref())),
        (
            "power_cycle",
            match w.can_power_cycle {
                Some(true) => "available".to_string(),
                Some(false) => "no power_cycle hook".to_string(),
                None => "unknown (the agent does not say)".to_string(),
            },
        ),
        (
            "backoff",
            if w.backoff.is_empty() {
                "-".to_string()
            } else {
                w.backoff
                    .iter()
                    .map(|b| {
                        format!(
                            "{}: {} failure(s), retry after {} ({})",
                            b.process,
                            b.failures,
                            output::time_and_distance(b.retry_after, now),
                            b.last_error
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            },
        ),
        ("state_since", output::time_and_distance(w.state_since, now)),
        ("request", output::or_dash(w.request)),
        ("agent", w.agent.clone()),
        ("ssh_addr", w.ssh_addr.clone()),
        ("groups", output::list(w.groups.iter())),
        ("caps", output::or_dash(Some(&w.caps))),
        ("dimensions", if w.dimensions.is_empty() { "-".to_string() } else { w.dimensions.to_string() }),
        ("last_seen", output::or_dash(w.last_seen.map(|t| output::time_and_distance(t, now)))),
        (
            "facts",
            if w.facts.is_empty() { "-".to_string() } else { serde_json::Value::Object(w.facts.clone()).to_string() },
        ),
        ("facts_at", output::or_dash(w.facts_at.map(|t| output::time_and_distance(t, now)))),
        ("note", output::or_dash(w.note.as_deref())),
        (
            "note_by",
            output::or_dash(w.note_by.as_ref().map(|by| match w.note_at {
                Some(at) => format!("{by}, {}", output::time_and_distance(at, now)),
                None => by.clone(),
            })),
        ),
    ]))
}

/// The holds of a worker for a table cell: `quarantine`, `recovery`, both, or `-`.
fn hold(w: &Worker) -> String {
    let holds: Vec<&str> = [w.quarantine.as_ref().map(|_| "quarantine"), w.recovery.as_ref().map(|_| "recovery")]
        .into_iter()
        .flatten()
        .collect();
    if holds.is_empty() { "-".to_string() } else { holds.join(",") }
}
