//! `corral audit`: the audit log of admin actions (admins), newest first.

use clap::Args;

use super::output;
use super::{CommonArgs, PageArgs, block_on, print_listing};

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
        let headers = ["AT", "ACTOR", "ADDRESS", "ACTION", "TARGET", "OUTCOME", "DETAIL"];
        print_listing(&args.common, &listing, "entries", None, &headers, |entry| {
            let outcome = match &entry.message {
                Some(message) => format!("{}: {message}", entry.outcome),
                None => entry.outcome.clone(),
            };
            vec![
                output::time(entry.at),
                entry.actor.clone(),
                output::or_dash(entry.address.as_ref()),
                entry.action.clone(),
                entry.target.clone(),
                outcome,
                output::or_dash(Some(&entry.detail)),
            ]
        })
    })
}
