//! The reads behind `GET /v1/events`: history rows of both tables after a
//! position, and the newest position. The rows are the ones every
//! transition already writes (`request_history`, `worker_history`); events
//! need no table of their own.
//!
//! [`Db::commits`] wakes the one reader of new rows (the actors' event
//! hub) after a write committed, so that it reads at once instead of
//! polling the tables on a short timer.

use corral_core::{RequestId, UserId, WorkerId};

use crate::records::FromRow;
use crate::{DatabaseOperation, Db, DbError, HistoryRecord};

/// Whose row a history row is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistorySubject {
    /// A `request_history` row, with the owner of the request (`None`
    /// when unknown: a request stored before owners had ids).
    Request { id: RequestId, owner: Option<UserId> },
    /// A `worker_history` row.
    Worker(WorkerId),
}

/// One row of `request_history` or `worker_history` and its id there.
#[derive(Clone, Debug)]
pub struct HistoryRow {
    /// The row's id in its own table.
    pub id: i64,
    pub subject: HistorySubject,
    pub record: HistoryRecord,
}

/// A range of history rows in both tables: ids above `after` and at most
/// `up_to`, per table.
#[derive(Clone, Copy, Debug)]
pub struct HistoryRange {
    pub requests_after: i64,
    pub requests_up_to: i64,
    pub workers_after: i64,
    pub workers_up_to: i64,
}

/// Request rows then worker rows, each in id order; `limit` rows at most
/// from each table.
const HISTORY_AFTER: &str = "
    (SELECT h.id, 'request' AS kind, h.request, NULL::uuid AS worker, o.owner_id,
            h.at, h.from_state, h.to_state, h.actor, h.reason
       FROM request_history h
       LEFT JOIN LATERAL (SELECT owner_id FROM requests WHERE id = h.request OFFSET 0) o ON true
      WHERE h.id > $1 AND h.id <= $2
      ORDER BY h.id LIMIT $5)
    UNION ALL
    (SELECT h.id, 'worker' AS kind, NULL::bigint, h.worker, NULL::bigint,
            h.at, h.from_state, h.to_state, h.actor, h.reason
       FROM worker_history h
      WHERE h.id > $3 AND h.id <= $4
      ORDER BY h.id LIMIT $5)";

impl Db {
    /// The rows of both history tables in `range`, at most `limit` from
    /// each, request rows first, each table's in id order.
    pub async fn history_after(&self, range: HistoryRange, limit: u32) -> Result<Vec<HistoryRow>, DbError> {
        let op = DatabaseOperation::HistoryAfter;
        self.run(op, move |client| {
            Box::pin(async move {
                let stmt = client.prepare_cached(HISTORY_AFTER).await?;
                let rows = client
                    .query(
                        &stmt,
                        &[
                            &range.requests_after,
                            &range.requests_up_to,
                            &range.workers_after,
                            &range.workers_up_to,
                            &i64::from(limit),
                        ],
                    )
                    .await?;
                let get = |e: tokio_postgres::Error| DbError::internal(op, e.to_string());
                let mut out = Vec::with_capacity(rows.len());
                for row in &rows {
                    let kind: &str = row.try_get("kind").map_err(get)?;
                    let subject = if kind == "request" {
                        HistorySubject::Request {
                            id: RequestId(row.try_get("request").map_err(get)?),
                            owner: row.try_get::<_, Option<i64>>("owner_id").map_err(get)?.map(UserId),
                        }
                    } else {
                        HistorySubject::Worker(WorkerId(row.try_get("worker").map_err(get)?))
                    };
                    out.push(HistoryRow {
                        id: row.try_get("id").map_err(get)?,
                        subject,
                        record: HistoryRecord::from_row(op, row)?,
                    });
                }
                Ok(out)
            })
        })
        .await
    }

    /// The highest id of `request_history` and of `worker_history` (0 for
    /// an empty table).
    pub async fn history_heads(&self) -> Result<(i64, i64), DbError> {
        self.run(DatabaseOperation::HistoryHeads, |client| {
            Box::pin(async move {
                let row = client
                    .query_one(
                        "SELECT (SELECT COALESCE(max(id), 0) FROM request_history),
                                (SELECT COALESCE(max(id), 0) FROM worker_history)",
                        &[],
                    )
                    .await?;
                Ok((row.try_get(0)?, row.try_get(1)?))
            })
        })
        .await
    }

    /// Woken (one stored permit, however many commits) after each
    /// operation that may have written a history row committed.
    pub fn commits(&self) -> &std::sync::Arc<tokio::sync::Notify> {
        &self.commits
    }
}
