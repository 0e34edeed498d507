//! `corral user add|list|remove` (admins).

use awc::http::Method;
use clap::{Args, Subcommand};
use corral_proto::users::{CreatedUser, NewUser, User};

use super::http::decode;
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
                let api = args.common.api()?;
                api.delete(&format!("/v1/users/{}", path_segment(&args.name))).await?;
                if args.common.json { Ok(()) } else { output::emit(&format!("user {} removed\n", args.name)) }
            }
        }
    })
}

async fn add(args: AddArgs) -> anyhow::Result<()> {
    let api = args.common.api()?;
    let groups = args.groups.iter().map(|g| g.trim()).filter(|g| !g.is_empty()).collect();
    let body = NewUser { name: args.name.clone(), groups, admin: args.admin, agent: args.agent };
    let answer = api.send(Method::POST, "/v1/users", &body).await?;
    if args.common.json {
        return output::json(&answer);
    }
    let created: CreatedUser = decode(&answer)?;
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
    let api = args.common.api()?;
    let answer = api.get("/v1/users", &[]).await?;
    if args.common.json {
        return output::json(&answer);
    }
    let users: Vec<User> = decode(&answer)?;
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

/// A user name as one URL path segment. Valid names need no escaping;
/// anything else is escaped so the server can say it is not found.
fn path_segment(name: &str) -> String {
    let mut out = String::new();
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_user_names_stay_one_path_segment() {
        assert_eq!(path_segment("alice.b-c_d"), "alice.b-c_d");
        assert_eq!(path_segment("../x y"), "..%2Fx%20y");
    }
}
