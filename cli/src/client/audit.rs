//! `corral audit`: the audit log of admin actions (admins), newest first.

use clap::Args;
use corral_proto::audit::AuditEntry;
use serde_json::json;

use super::http;
use super::output::{self, Table};
use super::{CommonArgs, block_on};

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Entries per page (1-1000) [server default: 100].
    #[arg(long)]
    limit: Option<u32>,
    /// Continue after a previous page (its next_cursor).
    #[arg(long)]
    cursor: Option<String>,
    /// Every page (at most 100).
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    common: CommonArgs,
}

pub fn run(args: AuditArgs) -> anyhow::Result<()> {
    block_on(async move {
        let api = args.common.api()?;
        let query: Vec<(&str, String)> = args.limit.map(|n| ("limit", n.to_string())).into_iter().collect();
        let (items, next_cursor) = http::pages(&api, "/v1/audit", &query, args.cursor, args.all).await?;
        if args.common.json {
            return output::json(&json!({ "items": items, "next_cursor": next_cursor }));
        }
        let mut table = Table::new(&["AT", "ACTOR", "ADDRESS", "ACTION", "TARGET", "OUTCOME", "DETAIL"]);
        for item in items {
            let entry: AuditEntry = serde_json::from_value(item)?;
            let outcome = match entry.message {
                Some(message) => format!("{}: {message}", entry.outcome),
                None => entry.outcome,
            };
            table.row(vec![
                output::time(entry.at),
                entry.actor,
                output::or_dash(entry.address),
                entry.action,
                entry.target,
                outcome,
                output::or_dash(Some(entry.detail)),
            ]);
        }
        table.print()?;
        if let Some(cursor) = next_cursor {
            eprintln!("more entries: give --all, or --cursor {cursor}");
        }
        Ok(())
    })
}
