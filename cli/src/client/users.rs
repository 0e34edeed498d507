//! `corral user add|list|remove` (admins).

use clap::{Args, Subcommand};
use corral_proto::users::NewUser;

use super::output::{self, Table};
use super::{CommonArgs, block_on};

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user and print its token (shown this once).
    Add(AddArgs),
    /// List users.
    List(ListArgs),
    /// Delete a user; its token stops working.
    Remove(RemoveArgs),
}

#[derive(Args, Debug)]
pub struct AddArgs {
    /// User name: letters, digits, '.', '_' or '-'.
    name: String,
    /// A group the user belongs to (repeatable or comma-separated).
    #[arg(long = "group", visible_alias = "groups", value_name = "GROUP", value_delimiter = ',')]
    groups: Vec<String>,
    /// Make the user an admin.
    #[arg(long, conflicts_with = "agent")]
    admin: bool,
    /// Make an agent identity (a per-host agent token) instead of a person.
    #[arg(long)]
    agent: bool,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct RemoveArgs {
    /// User name.
    name: String,
    #[command(flatten)]
    common: CommonArgs,
}

pub fn run(command: UserCommand) -> anyhow::Result<()> {
    block_on(async move {
        match command {
            UserCommand::Add(args) => add(args).await,
            UserCommand::List(args) => list(args).await,
            UserCommand::Remove(args) => {
                args.common.client()?.delete_user(&args.name).await?;
                if args.common.json { Ok(()) } else { output::emit(&format!("user {} removed\n", args.name)) }
            }
        }
    })
}

async fn add(args: AddArgs) -> anyhow::Result<()> {
    let groups = args.groups.iter().map(|g| g.trim()).filter(|g| !g.is_empty()).collect();
    let body = NewUser { name: args.name.clone(), groups, admin: args.admin, agent: args.agent };
    let created = args.common.client()?.create_user(&body).await?;
    if args.common.json {
        return output::json(&created);
    }
    let user = &created.user;
    let use_it = if args.agent {
        "corral agent ... --token-file FILE (a file holding the token)".to_string()
    } else {
        "CORRAL_TOKEN=<token> corral request ...  (or --token-file FILE, or `token` in ~/.config/corral/client.toml)"
            .to_string()
    };
    output::emit(&format!(
        "created {} {} (groups: {})\n\n\
         token, shown this once; keep it secret:\n\n    {}\n\n\
         use it with: {use_it}\n",
        user.role,
        user.name,
        output::list(user.groups.iter()),
        created.token,
    ))
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let users = args.common.client()?.users().await?;
    if args.common.json {
        return output::json(&users);
    }
    let mut table = Table::new(&["NAME", "ROLE", "CREATED", "GROUPS"]);
    for user in &users {
        table.row(vec![
            user.name.clone(),
            user.role.to_string(),
            output::time(user.created_at),
            output::list(user.groups.iter()),
        ]);
    }
    table.print()
}
