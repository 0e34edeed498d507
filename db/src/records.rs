//! What the database hands back: plain records built from rows, in the
//! core's types.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use corral_core::{Caps, FencingToken, Groups, Priority, RequestId, SessionId, UserId, WorkerId, WorkerState};
use tokio_postgres::Row;

pub use corral_core::records::{HistoryRecord, RequestRecord, UserRecord};

use crate::{DatabaseOperation, DbError};

/// Builds a record of the core's types from a row.
pub(crate) trait FromRow: Sized {
    fn from_row(op: DatabaseOperation, row: &Row) -> Result<Self, DbError>;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: SessionId,
    pub component: String,
    pub name: String,
    pub principal: String,
    /// The id of the user whose token opened it.
    pub principal_id: UserId,
    pub deadline: SystemTime,
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerRecord {
    pub uuid: WorkerId,
    pub agent: String,
    /// The agent user that registered it (None: unclaimed, from before
    /// principals were recorded).
    pub principal: Option<UserId>,
    pub session: Option<SessionId>,
    pub state: WorkerState,
    pub caps: Caps,
    pub groups: Groups,
    pub ssh_addr: String,
    pub ssh_user: String,
    pub host_key: Option<String>,
    pub reason: Option<String>,
    pub state_since: SystemTime,
    pub last_seen: Option<SystemTime>,
    pub last_used: Option<SystemTime>,
    pub fence: FencingToken,
    /// Maintenance asked for after the running lease: its reason.
    pub drain: Option<String>,
    /// The latest facts stored for it and when.
    pub facts: serde_json::Map<String, serde_json::Value>,
    pub facts_at: Option<SystemTime>,
    /// The facts its agent marks as dimensions.
    pub dimensions: Caps,
    /// An admin's note, who wrote it (`user:NAME`) and when.
    pub note: Option<String>,
    pub note_by: Option<String>,
    pub note_at: Option<SystemTime>,
    /// Held out of matching by an admin (or failed preparations): why,
    /// by whom, since when.
    pub quarantine: Option<String>,
    pub quarantine_by: Option<String>,
    pub quarantine_at: Option<SystemTime>,
    /// Held out of matching by its facts: why, since when.
    pub recovery: Option<String>,
    pub recovery_at: Option<SystemTime>,
    /// The hooks its agent says it has (None: an older agent that does
    /// not say).
    pub hooks: Option<Vec<String>>,
    /// The on-demand process running on it besides its state's own
    /// (`power_cycle`); its work lock says who holds it.
    pub work: Option<String>,
}

impl WorkerRecord {
    /// Whether a hold keeps it out of matching.
    pub fn held(&self) -> bool {
        self.quarantine.is_some() || self.recovery.is_some()
    }
}

/// `Debug` never shows the private key.
#[derive(Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub request: RequestId,
    pub worker: WorkerId,
    pub fence: FencingToken,
    pub bound_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub tunnel_port: Option<u16>,
    pub key_type: Option<String>,
    pub public_key: Option<String>,
    pub private_key: Option<String>,
}

impl std::fmt::Debug for LeaseRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseRecord")
            .field("request", &self.request)
            .field("worker", &self.worker)
            .field("fence", &self.fence)
            .field("bound_at", &self.bound_at)
            .field("started_at", &self.started_at)
            .field("tunnel_port", &self.tunnel_port)
            .field("key_type", &self.key_type)
            .field("public_key", &self.public_key)
            .field("private_key", &self.private_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

pub(crate) fn caps_from_json(op: DatabaseOperation, value: serde_json::Value) -> Result<Caps, DbError> {
    let map: BTreeMap<String, String> =
        serde_json::from_value(value).map_err(|e| DbError::internal(op, format!("caps column: {e}")))?;
    Ok(map.into_iter().collect())
}

pub(crate) fn caps_to_json(caps: &Caps) -> serde_json::Value {
    serde_json::Value::Object(caps.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(v))).collect())
}

pub(crate) fn groups_from(list: Vec<String>) -> Groups {
    list.into_iter().collect::<BTreeSet<String>>().into_iter().collect()
}

pub(crate) fn groups_to(groups: &Groups) -> Vec<String> {
    groups.iter().map(str::to_string).collect()
}

pub(crate) fn parse<T: std::str::FromStr<Err = String>>(op: DatabaseOperation, text: &str) -> Result<T, DbError> {
    text.parse().map_err(|e: String| DbError::internal(op, e))
}

pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn from_millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

impl FromRow for UserRecord {
    fn from_row(op: DatabaseOperation, row: &Row) -> Result<UserRecord, DbError> {
        Ok(UserRecord {
            id: UserId(row.try_get("id").map_err(|e| DbError::internal(op, e.to_string()))?),
            name: row.try_get("name").map_err(|e| DbError::internal(op, e.to_string()))?,
            role: parse(op, row.try_get::<_, &str>("role").map_err(|e| DbError::internal(op, e.to_string()))?)?,
            groups: groups_from(row.try_get("groups").map_err(|e| DbError::internal(op, e.to_string()))?),
            created_at: row.try_get("created_at").map_err(|e| DbError::internal(op, e.to_string()))?,
        })
    }
}

impl SessionRecord {
    pub(crate) fn from_row(op: DatabaseOperation, row: &Row) -> Result<SessionRecord, DbError> {
        let get = |e: tokio_postgres::Error| DbError::internal(op, e.to_string());
        Ok(SessionRecord {
            id: SessionId(row.try_get("id").map_err(get)?),
            component: row.try_get("component").map_err(get)?,
            name: row.try_get("name").map_err(get)?,
            principal: row.try_get("principal").map_err(get)?,
            principal_id: UserId(row.try_get::<_, Option<i64>>("principal_id").map_err(get)?.unwrap_or(0)),
            deadline: row.try_get("deadline").map_err(get)?,
            timeout: from_millis(row.try_get("timeout_ms").map_err(get)?),
        })
    }
}

impl WorkerRecord {
    pub(crate) fn from_row(op: DatabaseOperation, row: &Row) -> Result<WorkerRecord, DbError> {
        let get = |e: tokio_postgres::Error| DbError::internal(op, e.to_string());
        let drain: bool = row.try_get("drain").map_err(get)?;
        Ok(WorkerRecord {
            uuid: WorkerId(row.try_get("uuid").map_err(get)?),
            agent: row.try_get("agent").map_err(get)?,
            principal: row.try_get::<_, Option<i64>>("principal").map_err(get)?.map(UserId),
            session: row.try_get::<_, Option<uuid::Uuid>>("session").map_err(get)?.map(SessionId),
            state: parse(op, row.try_get::<_, &str>("state").map_err(get)?)?,
            caps: caps_from_json(op, row.try_get("caps").map_err(get)?)?,
            groups: groups_from(row.try_get("groups").map_err(get)?),
            ssh_addr: row.try_get("ssh_addr").map_err(get)?,
            ssh_user: row.try_get("ssh_user").map_err(get)?,
            host_key: row.try_get("host_key").map_err(get)?,
            reason: row.try_get("reason").map_err(get)?,
            state_since: row.try_get("state_since").map_err(get)?,
            last_seen: row.try_get("last_seen").map_err(get)?,
            last_used: row.try_get("last_used").map_err(get)?,
            fence: FencingToken(row.try_get("fence").map_err(get)?),
            drain: if drain {
                Some(row.try_get::<_, Option<String>>("drain_reason").map_err(get)?.unwrap_or_default())
            } else {
                None
            },
            facts: match row.try_get::<_, serde_json::Value>("facts").map_err(get)? {
                serde_json::Value::Object(facts) => facts,
                _ => serde_json::Map::new(),
            },
            facts_at: row.try_get("facts_at").map_err(get)?,
            dimensions: caps_from_json(op, row.try_get("dimensions").map_err(get)?)?,
            note: row.try_get("note").map_err(get)?,
            note_by: row.try_get("note_by").map_err(get)?,
            note_at: row.try_get("note_at").map_err(get)?,
            quarantine: row.try_get("quarantine").map_err(get)?,
            quarantine_by: row.try_get("quarantine_by").map_err(get)?,
            quarantine_at: row.try_get("quarantine_at").map_err(get)?,
            recovery: row.try_get("recovery").map_err(get)?,
            recovery_at: row.try_get("recovery_at").map_err(get)?,
            hooks: row.try_get("hooks").map_err(get)?,
            work: row.try_get("work").map_err(get)?,
        })
    }
}

impl FromRow for RequestRecord {
    fn from_row(op: DatabaseOperation, row: &Row) -> Result<RequestRecord, DbError> {
        let get = |e: tokio_postgres::Error| DbError::internal(op, e.to_string());
        let priority: i16 = row.try_get("priority").map_err(get)?;
        Ok(RequestRecord {
            id: RequestId(row.try_get("id").map_err(get)?),
            owner: row.try_get("owner").map_err(get)?,
            owner_id: UserId(row.try_get::<_, Option<i64>>("owner_id").map_err(get)?.unwrap_or(0)),
            owner_groups: groups_from(row.try_get("owner_groups").map_err(get)?),
            state: parse(op, row.try_get::<_, &str>("state").map_err(get)?)?,
            priority: Priority::try_from(i64::from(priority)).map_err(|e| DbError::internal(op, e.to_string()))?,
            caps: caps_from_json(op, row.try_get("caps").map_err(get)?)?,
            created_at: row.try_get("created_at").map_err(get)?,
            valid_after: row.try_get("valid_after").map_err(get)?,
            deadline: row.try_get("deadline").map_err(get)?,
            lease: from_millis(row.try_get("lease_ms").map_err(get)?),
            ssh_public_key: row.try_get("ssh_public_key").map_err(get)?,
            key_kind: parse(op, row.try_get::<_, &str>("key_type").map_err(get)?)?,
            worker: row.try_get::<_, Option<uuid::Uuid>>("worker").map_err(get)?.map(WorkerId),
            lease_expires_at: row.try_get("lease_expires_at").map_err(get)?,
            reason: row.try_get("reason").map_err(get)?,
            updated_at: row.try_get("updated_at").map_err(get)?,
        })
    }
}

impl LeaseRecord {
    pub(crate) fn from_row(op: DatabaseOperation, row: &Row) -> Result<LeaseRecord, DbError> {
        let get = |e: tokio_postgres::Error| DbError::internal(op, e.to_string());
        let port: Option<i32> = row.try_get("tunnel_port").map_err(get)?;
        Ok(LeaseRecord {
            request: RequestId(row.try_get("request").map_err(get)?),
            worker: WorkerId(row.try_get("worker").map_err(get)?),
            fence: FencingToken(row.try_get("fence").map_err(get)?),
            bound_at: row.try_get("bound_at").map_err(get)?,
            started_at: row.try_get("started_at").map_err(get)?,
            tunnel_port: port.and_then(|p| u16::try_from(p).ok()),
            key_type: row.try_get("key_type").map_err(get)?,
            public_key: row.try_get("public_key").map_err(get)?,
            private_key: row.try_get("private_key").map_err(get)?,
        })
    }
}

impl crate::Db {
    /// The rows of a history table for one key (`query` selects `at`,
    /// `from_state`, `to_state`, `actor`, `reason` WHERE key = $1), oldest
    /// first.
    pub(crate) async fn history<K>(
        &self,
        op: DatabaseOperation,
        query: &'static str,
        key: K,
    ) -> Result<Vec<HistoryRecord>, DbError>
    where
        K: tokio_postgres::types::ToSql + Sync + Send + Copy + 'static,
    {
        self.run(op, move |client| {
            Box::pin(async move {
                let rows = client.query(query, &[&key]).await?;
                Ok(rows.iter().map(|r| HistoryRecord::from_row(op, r)).collect::<Result<_, _>>()?)
            })
        })
        .await
    }
}

impl FromRow for HistoryRecord {
    fn from_row(op: DatabaseOperation, row: &Row) -> Result<HistoryRecord, DbError> {
        let get = |e: tokio_postgres::Error| DbError::internal(op, e.to_string());
        Ok(HistoryRecord {
            at: row.try_get("at").map_err(get)?,
            from: row.try_get("from_state").map_err(get)?,
            to: row.try_get("to_state").map_err(get)?,
            actor: row.try_get("actor").map_err(get)?,
            reason: row.try_get("reason").map_err(get)?,
        })
    }
}
