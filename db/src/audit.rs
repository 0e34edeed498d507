//! The audit log of admin actions: a row is written before the action
//! runs (`pending`) and given its outcome after it, so an action that
//! committed always has its row (see `schema.sql`, table `audit`).

use std::time::SystemTime;

use corral_core::UserId;

pub use corral_core::records::AuditOutcome;

use crate::{DatabaseOperation, Db, DbError};

/// An admin action about to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditIntent {
    pub at: SystemTime,
    pub actor: String,
    pub actor_id: UserId,
    pub action: String,
    pub target: String,
    pub address: Option<String>,
    pub detail: String,
}

/// One row of the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: i64,
    pub intent: AuditIntent,
    /// `pending`, `done`, `refused` or `failed`.
    pub outcome: String,
    pub message: Option<String>,
}

impl Db {
    /// Writes the row of an action about to run; returns its id.
    pub async fn audit_begin(&self, intent: &AuditIntent) -> Result<i64, DbError> {
        let op = DatabaseOperation::AuditBegin;
        let intent = intent.clone();
        self.run(op, move |client| {
            let i = intent.clone();
            Box::pin(async move {
                let row = client
                    .query_one(
                        "INSERT INTO audit (at, actor, actor_id, action, target, address, detail, outcome)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending') RETURNING id",
                        &[&i.at, &i.actor, &i.actor_id.0, &i.action, &i.target, &i.address, &i.detail],
                    )
                    .await?;
                Ok(row.get(0))
            })
        })
        .await
    }

    /// Gives the row `id` its outcome (and the error message, if any).
    pub async fn audit_end(&self, id: i64, outcome: AuditOutcome, message: Option<&str>) -> Result<(), DbError> {
        let message = message.map(|m| m.chars().take(1024).collect::<String>());
        self.run(DatabaseOperation::AuditEnd, move |client| {
            let message = message.clone();
            Box::pin(async move {
                client
                    .execute(
                        "UPDATE audit SET outcome = $2, message = $3 WHERE id = $1",
                        &[&id, &outcome.as_str(), &message],
                    )
                    .await?;
                Ok(())
            })
        })
        .await
    }

    /// One page of the audit log, newest first: at most `limit` rows with
    /// ids below `before` (all when `None`).
    pub async fn audit_page(&self, before: Option<i64>, limit: u32) -> Result<Vec<AuditRecord>, DbError> {
        let op = DatabaseOperation::AuditPage;
        self.run(op, move |client| {
            Box::pin(async move {
                let stmt = client
                    .prepare_cached(
                        "SELECT id, at, actor, actor_id, action, target, address, detail, outcome, message FROM audit
                         WHERE ($1::bigint IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
                    )
                    .await?;
                let rows = client.query(&stmt, &[&before, &i64::from(limit)]).await?;
                let get = |e: tokio_postgres::Error| DbError::internal(op, e.to_string());
                let record = |r: &tokio_postgres::Row| -> Result<AuditRecord, DbError> {
                    Ok(AuditRecord {
                        id: r.try_get("id").map_err(get)?,
                        intent: AuditIntent {
                            at: r.try_get("at").map_err(get)?,
                            actor: r.try_get("actor").map_err(get)?,
                            actor_id: UserId(r.try_get("actor_id").map_err(get)?),
                            action: r.try_get("action").map_err(get)?,
                            target: r.try_get("target").map_err(get)?,
                            address: r.try_get("address").map_err(get)?,
                            detail: r.try_get("detail").map_err(get)?,
                        },
                        outcome: r.try_get("outcome").map_err(get)?,
                        message: r.try_get("message").map_err(get)?,
                    })
                };
                Ok(rows.iter().map(record).collect::<Result<_, DbError>>()?)
            })
        })
        .await
    }
}
