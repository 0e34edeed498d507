//! What the dashboard reads besides the resources themselves: the queue of
//! waiting requests with their positions (`GET /v1/queue`) and the running
//! leases with their holders (`GET /v1/leases`), each scoped to what the
//! caller may read.

use corral_db::RequestRecord;
use corral_proto::requests::LeaseSummary;

use crate::{ActorError, Caller, Corral};

impl Corral {
    /// Waiting requests in the matcher's order with their 1-based position
    /// among all waiting requests: the caller's own (an admin: everyone's),
    /// positions after `after`, at most `limit`.
    pub async fn queue(
        &self,
        caller: &Caller,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, RequestRecord)>, ActorError> {
        let owner = (!caller.is_admin()).then_some(caller.id);
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let rows = self.db().waiting_queue(owner, after, limit).await?;
        Ok(rows.into_iter().map(|(position, record)| (position.max(0) as u64, record)).collect())
    }

    /// Every running lease on a worker the caller may see, by request id;
    /// the owner is named only to an admin or to the owner.
    pub async fn live_leases(&self, caller: &Caller) -> Result<Vec<LeaseSummary>, ActorError> {
        let rows = self.db().live_leases().await?;
        let dir = &self.shared().dir;
        Ok(rows
            .into_iter()
            .filter(|lease| dir.view(lease.worker).is_some_and(|view| caller.may_see_worker(&view.worker.groups)))
            .map(|lease| LeaseSummary {
                request: lease.request,
                worker: lease.worker,
                owner: caller.may_read_request_of(lease.owner_id).then_some(lease.owner),
                expires_at: lease.expires_at,
            })
            .collect())
    }
}
