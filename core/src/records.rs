//! What is stored, as the layers above the database see it: plain records
//! in the core's types. The database builds them from rows; the actors
//! pass them on; the API turns them into its wire types.

use std::time::{Duration, SystemTime};

use sha2::Digest;

use crate::lease::KeyKind;
use crate::{Caps, Groups, Priority, RequestId, RequestState, Role, UserId, WorkerId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    /// Never reused: a later user of the same name is another user.
    pub id: UserId,
    pub name: String,
    pub role: Role,
    pub groups: Groups,
    pub created_at: SystemTime,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub id: RequestId,
    pub owner: String,
    /// The owner's identity; ownership checks compare this, never the name.
    pub owner_id: UserId,
    pub owner_groups: Groups,
    pub state: RequestState,
    pub priority: Priority,
    pub caps: Caps,
    pub created_at: SystemTime,
    pub valid_after: SystemTime,
    pub deadline: SystemTime,
    pub lease: Duration,
    pub ssh_public_key: Option<String>,
    pub key_kind: KeyKind,
    pub worker: Option<WorkerId>,
    pub lease_expires_at: Option<SystemTime>,
    pub reason: Option<String>,
    pub updated_at: SystemTime,
}

/// Filters of `GET /v1/requests`; newest first.
#[derive(Clone, Debug, Default)]
pub struct RequestFilter {
    /// By name (what admins filter on).
    pub owner: Option<String>,
    /// By identity (what a user's own listing uses).
    pub owner_id: Option<UserId>,
    pub states: Vec<RequestState>,
    pub priority: Option<Priority>,
    /// Only ids below this one (the cursor).
    pub before: Option<RequestId>,
    /// Only these requests (one query however many).
    pub ids: Option<Vec<RequestId>>,
    pub limit: u32,
}

/// How an admin action ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditOutcome {
    Done,
    /// Refused with a 4xx answer: nothing changed.
    Refused,
    /// A 5xx answer: it may or may not have happened.
    Failed,
}

impl AuditOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Done => "done",
            AuditOutcome::Refused => "refused",
            AuditOutcome::Failed => "failed",
        }
    }
}

/// One transition in a request's or a worker's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRecord {
    pub at: SystemTime,
    pub from: Option<String>,
    pub to: String,
    pub actor: String,
    pub reason: String,
}

/// A submission's `Idempotency-Key` and the SHA-256 of what it asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idempotency {
    key: String,
    digest: [u8; 32],
}

impl Idempotency {
    /// The longest key accepted.
    pub const MAX_LEN: usize = 255;

    /// `key` (1 to [`Idempotency::MAX_LEN`] printable ASCII characters,
    /// else an error saying so) for a submission whose canonical form is
    /// `canonical`: equal submissions must give equal values.
    pub fn new(key: &str, canonical: &serde_json::Value) -> Result<Idempotency, String> {
        if key.is_empty() || key.len() > Self::MAX_LEN || !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(format!("Idempotency-Key must be 1 to {} printable ASCII characters", Self::MAX_LEN));
        }
        // serde_json's maps are sorted by key: one text per value.
        let digest = sha2::Sha256::digest(canonical.to_string().as_bytes()).into();
        Ok(Idempotency { key: key.to_string(), digest })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The SHA-256 of what the submission asked for.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }
}
