//! Who acts: people (users and admins) and agents.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sees and acts on its own requests.
    User,
    /// Sees and acts on everything.
    Admin,
    /// Speaks the agent protocol for the workers it registered.
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
            Role::Agent => "agent",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "user" => Ok(Role::User),
            "admin" => Ok(Role::Admin),
            "agent" => Ok(Role::Agent),
            _ => Err(format!("unknown role {text:?}")),
        }
    }
}

/// User names: 1-64 characters of `[A-Za-z0-9._-]`, so they are safe in
/// logs, URLs and history rows.
pub fn valid_user_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names() {
        for (name, ok) in [("alice", true), ("ci-bot.2", true), ("", false), ("a b", false), ("x/y", false)] {
            assert_eq!(valid_user_name(name), ok, "{name:?}");
        }
        assert!(!valid_user_name(&"a".repeat(65)));
    }
}
