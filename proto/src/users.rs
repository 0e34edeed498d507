//! Users and their tokens.

use std::time::SystemTime;

use corral_core::Groups;
pub use corral_core::Role;
use corral_core::schema::Rfc3339;
use corral_core::time::rfc3339;
use serde::{Deserialize, Serialize};

/// Body of `POST /v1/users`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    #[serde(default)]
    pub groups: Groups,
    #[serde(default)]
    pub admin: bool,
    /// Create an agent identity instead of a person (for per-host agent
    /// tokens); `admin` must then be false.
    #[serde(default)]
    pub agent: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct User {
    pub name: String,
    pub groups: Groups,
    pub admin: bool,
    pub role: Role,
    #[serde(with = "rfc3339")]
    #[schema(value_type = Rfc3339)]
    pub created_at: SystemTime,
}

/// Answer of `POST /v1/users`: the token is shown this once (and never by
/// `Debug`).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CreatedUser {
    #[serde(flatten)]
    pub user: User,
    pub token: String,
}

impl std::fmt::Debug for CreatedUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedUser").field("user", &self.user).field("token", &"<redacted>").finish()
    }
}

/// Answer of `GET /v1/me`: who the token belongs to (the dashboard shows
/// admin actions only when `admin`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Me {
    pub name: String,
    pub admin: bool,
    pub role: Role,
    pub groups: Groups,
}
