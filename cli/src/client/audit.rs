//! `corral audit`: the audit log of admin actions (admins), newest first.

use clap::Args;

use super::output::{self, Table};
use super::{CommonArgs, PageArgs, block_on, print_listing_json};

#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(flatten)]
    page: PageArgs,
    #[command(flatten)]
    common: CommonArgs,
}

pub fn run(args: AuditArgs) -> anyhow::Result<()> {
    block_on(async move {
        let listing = args.common.client()?.audit(&args.page.paging()).await?;
        if print_listing_json(&args.common, &listing)? {
            return Ok(());
        }
        let mut table = Table::new(&["AT", "ACTOR", "ADDRESS", "ACTION", "TARGET", "OUTCOME", "DETAIL"]);
        for entry in listing.items {
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
        if let Some(cursor) = listing.next_cursor {
            eprintln!("more entries: give --all, or --cursor {cursor}");
        }
        Ok(())
    })
}
