//! `corral audit`: the audit log of admin actions (admins), newest first.

use clap::Args;
use corral_proto::audit::AuditEntry;
use serde_json::json;

use super::output::{self, Table};
use super::{CommonArgs, PageArgs, block_on};

#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(flatten)]
    page: PageArgs,
    #[command(flatten)]
    common: CommonArgs,
}

pub fn run(args: AuditArgs) -> anyhow::Result<()> {
    block_on(async move {
        let api = args.common.api()?;
        let (items, next_cursor) = args.page.fetch(&api, "/v1/audit", Vec::new()).await?;
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
