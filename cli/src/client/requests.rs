//! `corral request new|list|show|history|update|close|acquire|prolong|explain`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use corral_client::requests::RequestFilter;
use corral_core::{Priority, RequestId};
use corral_proto::requests::{NewRequest, Request, RequestPatch};

use super::acquire::AcquireArgs;
use super::output::{self, Table};
use super::{
    CommonArgs, PageArgs, block_on, parse_cap, parse_duration, parse_instant, parse_priority, print_listing, ssh,
};

#[derive(Subcommand, Debug)]
pub enum RequestCommand {
    /// Ask for a worker with the given caps; prints the new request, id first.
    New(NewArgs),
    /// List requests (your own; admins see everyone's).
    List(ListArgs),
    /// Show one request.
    Show(IdArgs),
    /// Show a request's state transitions, with who caused them.
    History(IdArgs),
    /// Change the priority, valid_after or deadline of a waiting request.
    Update(UpdateArgs),
    /// Close a request: cancel it while waiting, end its lease while in progress.
    Close(IdArgs),
    /// Get the access details of a request's lease, or with --ssh log in.
    Acquire(AcquireArgs),
    /// Extend a running lease.
    Prolong(ProlongArgs),
    /// Explain why a request is still waiting.
    Explain(IdArgs),
}

#[derive(Args, Debug)]
pub struct NewArgs {
    /// Caps the worker must offer, KEY=VALUE (repeatable; UUID=... pins one worker).
    #[arg(long = "caps", visible_alias = "cap", value_name = "KEY=VALUE", num_args = 1.., value_parser = parse_cap)]
    caps: Vec<(String, String)>,
    /// 1 (most urgent) to 16 [server default: 8].
    #[arg(long, value_parser = parse_priority)]
    priority: Option<Priority>,
    /// Not before this time: RFC 3339, or a duration from now such as 2h [default: now].
    #[arg(long, value_name = "TIME", value_parser = parse_instant)]
    valid_after: Option<SystemTime>,
    /// Give up waiting at this time: RFC 3339, or a duration from now [server default].
    #[arg(long, value_name = "TIME", value_parser = parse_instant)]
    deadline: Option<SystemTime>,
    /// Lease length, e.g. 2h [server default].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    lease: Option<Duration>,
    /// Install this OpenSSH public key (a .pub file) instead of a key pair the server makes.
    #[arg(long, value_name = "FILE")]
    ssh_public_key: Option<PathBuf>,
    /// Accept the request even if no registered worker can serve it now.
    #[arg(long)]
    allow_unsatisfiable: bool,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only these states: waiting, in_progress, cancelled, timeout, invalid, done, failed
    /// (repeatable or comma-separated).
    #[arg(long, value_name = "STATE")]
    state: Vec<String>,
    /// Only this owner's requests (admins).
    #[arg(long, value_name = "USER")]
    owner: Option<String>,
    /// Only this priority.
    #[arg(long, value_parser = parse_priority)]
    priority: Option<Priority>,
    #[command(flatten)]
    page: PageArgs,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct IdArgs {
    /// Request id.
    id: RequestId,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// Request id.
    id: RequestId,
    /// 1 (most urgent) to 16.
    #[arg(long, value_parser = parse_priority)]
    priority: Option<Priority>,
    /// RFC 3339, or a duration from now such as 2h.
    #[arg(long, value_name = "TIME", value_parser = parse_instant)]
    valid_after: Option<SystemTime>,
    /// RFC 3339, or a duration from now such as 2h.
    #[arg(long, value_name = "TIME", value_parser = parse_instant)]
    deadline: Option<SystemTime>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct ProlongArgs {
    /// Request id.
    id: RequestId,
    /// Extend by this much, e.g. 30m [default: the request's lease length].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    by: Option<Duration>,
    #[command(flatten)]
    common: CommonArgs,
}

pub fn run(command: RequestCommand) -> anyhow::Result<()> {
    match command {
        RequestCommand::Acquire(args) => super::acquire::run(args),
        RequestCommand::New(args) => block_on(new(args)),
        RequestCommand::List(args) => block_on(list(args)),
        RequestCommand::Show(args) => block_on(show(args)),
        RequestCommand::History(args) => block_on(history(args)),
        RequestCommand::Update(args) => block_on(update(args)),
        RequestCommand::Close(args) => block_on(close(args)),
        RequestCommand::Prolong(args) => block_on(prolong(args)),
        RequestCommand::Explain(args) => block_on(explain(args)),
    }
}

async fn new(args: NewArgs) -> anyhow::Result<()> {
    let client = args.common.client()?;
    let ssh_public_key = match &args.ssh_public_key {
        Some(file) => {
            let key = std::fs::read_to_string(file)
                .with_context(|| format!("reading the SSH public key {}", file.display()))?;
            if key.contains("PRIVATE KEY") {
                bail!("{} is a private key; give the public key (usually the .pub file next to it)", file.display());
            }
            let key = corral_core::ssh::PublicKey::parse(&key)
                .with_context(|| format!("{} is not an SSH public key the lab accepts", file.display()))?;
            Some(key.to_string())
        }
        None => None,
    };
    let body = NewRequest {
        caps: args.caps.into_iter().collect(),
        priority: args.priority,
        valid_after: args.valid_after,
        deadline: args.deadline,
        lease: args.lease,
        ssh_public_key,
        allow_unsatisfiable: args.allow_unsatisfiable,
    };
    let request = client.submit(&body).await?;
    print_request(&args.common, &request)
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let client = args.common.client()?;
    let filter = RequestFilter { states: args.state.clone(), owner: args.owner.clone(), priority: args.priority };
    let listing = client.requests(&filter, &args.page.paging()).await?;
    let headers = ["ID", "STATE", "PRI", "OWNER", "WORKER", "LEASE ENDS", "CAPS"];
    print_listing(&args.common, &listing, "requests", Some("no requests\n"), &headers, |r| {
        vec![
            r.id.to_string(),
            r.state.to_string(),
            r.priority.to_string(),
            r.owner.clone(),
            output::or_dash(r.worker),
            output::or_dash(r.lease_expires_at.map(output::time)),
            output::or_dash(Some(&r.caps)),
        ]
    })
}

async fn show(args: IdArgs) -> anyhow::Result<()> {
    let request = args.common.client()?.request(args.id).await?;
    print_request(&args.common, &request)
}

async fn history(args: IdArgs) -> anyhow::Result<()> {
    let entries = args.common.client()?.request_history(args.id).await?;
    if args.common.json {
        return output::json(&entries);
    }
    let mut table = Table::new(&["AT", "FROM", "TO", "ACTOR", "REASON"]);
    for entry in entries {
        table.row(vec![
            output::time(entry.at),
            output::or_dash(entry.from),
            entry.to,
            entry.actor,
            output::or_dash(Some(entry.reason)),
        ]);
    }
    table.print()
}

async fn update(args: UpdateArgs) -> anyhow::Result<()> {
    if args.priority.is_none() && args.valid_after.is_none() && args.deadline.is_none() {
        bail!("nothing to change: give --priority, --valid-after or --deadline");
    }
    let body = RequestPatch { priority: args.priority, valid_after: args.valid_after, deadline: args.deadline };
    let request = args.common.client()?.update_request(args.id, &body).await?;
    print_request(&args.common, &request)
}

async fn close(args: IdArgs) -> anyhow::Result<()> {
    let request = args.common.client()?.close_request(args.id).await?;
    ssh::forget_lease(args.id);
    if args.common.json {
        return output::json(&request);
    }
    output::emit(&format!("request {} is {}\n", request.id, request.state))
}

async fn prolong(args: ProlongArgs) -> anyhow::Result<()> {
    let prolonged = args.common.client()?.prolong(args.id, args.by).await?;
    if args.common.json {
        return output::json(&prolonged);
    }
    output::emit(&format!(
        "request {}: the lease now ends at {}\n",
        prolonged.request_id,
        output::time_and_distance(prolonged.lease_expires_at, SystemTime::now())
    ))
}

async fn explain(args: IdArgs) -> anyhow::Result<()> {
    let explanation = args.common.client()?.explain(args.id).await?;
    if args.common.json {
        return output::json(&explanation);
    }
    let mut text = format!("request {} is {}: {}\n", explanation.request_id, explanation.state, explanation.summary);
    match (explanation.position, explanation.competing) {
        (Some(position), Some(competing)) if position > 0 => {
            text.push_str(&format!("queue position: {position} of {competing}\n"));
        }
        _ => {}
    }
    if !explanation.workers.is_empty() {
        let mut table = Table::new(&["WORKER", "STATE", "WHY NOT FREE"]);
        for worker in &explanation.workers {
            table.row(vec![worker.uuid.to_string(), worker.state.to_string(), worker.why.clone()]);
        }
        text.push('\n');
        text.push_str(&table.render());
    }
    output::emit(&text)
}

/// A request answer: JSON, or `key: value` lines with the id first.
fn print_request(common: &CommonArgs, r: &Request) -> anyhow::Result<()> {
    if common.json {
        return output::json(r);
    }
    let now = SystemTime::now();
    output::emit(&output::fields(&[
        ("id", r.id.to_string()),
        ("state", r.state.to_string()),
        ("owner", r.owner.clone()),
        ("priority", r.priority.to_string()),
        ("caps", output::or_dash(Some(&r.caps))),
        ("worker", output::or_dash(r.worker)),
        ("lease", output::duration(r.lease)),
        ("lease_expires_at", output::or_dash(r.lease_expires_at.map(|t| output::time_and_distance(t, now)))),
        ("valid_after", output::time(r.valid_after)),
        ("deadline", output::time_and_distance(r.deadline, now)),
        ("reason", output::or_dash(r.reason.as_deref())),
        ("created_at", output::time(r.created_at)),
        ("updated_at", output::time(r.updated_at)),
    ]))
}
