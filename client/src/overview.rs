//! The caller (`/v1/me`), the queue and the running leases, the audit log,
//! and the health probes.

use awc::http::Method;
use corral_proto::Page;
use corral_proto::audit::AuditEntry;
use corral_proto::requests::{LeaseSummary, QueuedRequest};
use corral_proto::users::Me;
use serde::Deserialize;

use crate::{Call, Client, Error, Listing, Paging};

/// The answer of `/healthz` and `/readyz`: `{"status": "ok"}`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Health {
    pub status: String,
}

impl Client {
    /// `GET /v1/me`: who the token belongs to.
    pub async fn me(&self) -> Result<Me, Error> {
        self.answer(Call::new(Method::GET, "/v1/me")).await
    }

    /// `GET /v1/queue`: one page of waiting requests in the matcher's
    /// order.
    pub async fn queue(&self, limit: Option<u32>, cursor: Option<&str>) -> Result<Page<QueuedRequest>, Error> {
        self.page("/v1/queue", &[], limit, cursor).await
    }

    /// `GET /v1/leases`: the running leases on workers the caller may see.
    pub async fn leases(&self) -> Result<Vec<LeaseSummary>, Error> {
        self.answer(Call::new(Method::GET, "/v1/leases")).await
    }

    /// `GET /v1/audit`: the audit log, newest first, paged (admins).
    pub async fn audit(&self, paging: &Paging) -> Result<Listing<AuditEntry>, Error> {
        self.pages("/v1/audit", &[], paging).await
    }

    /// `GET /healthz`: the process answers.
    pub async fn healthz(&self) -> Result<Health, Error> {
        self.answer(Call::new(Method::GET, "/healthz")).await
    }

    /// `GET /readyz`: the server can use its database (503 when not).
    pub async fn readyz(&self) -> Result<Health, Error> {
        self.answer(Call::new(Method::GET, "/readyz")).await
    }
}
