//! The end checks of a chaos run, once the load has stopped and every
//! fault is over: the queue drains, no worker is stuck, and, in the
//! database and through the API, every acknowledged submission exists, no
//! worker was ever in two live leases at once and no request was bound
//! twice.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use super::side::SideDb;
use crate::server::ApiClient;

/// How long the queue may take to drain, and the workers to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, Default)]
pub(crate) struct Verdict {
    pub acknowledged: usize,
    /// Acknowledged ids missing from the database or from the API, or
    /// whose key now names another id.
    pub lost: usize,
    pub lost_in_db: usize,
    pub lost_in_api: usize,
    /// Pairs of leases of one worker that overlap in time.
    pub double_leases: i64,
    /// Requests that entered `in_progress` twice, or whose lease names
    /// another worker than the request.
    pub double_bindings: i64,
    /// Requests still live (waiting or in progress) when the settle time
    /// was over, though every in-progress one was closed.
    pub undrained: usize,
    pub drain_s: f64,
    pub idle_workers: usize,
    /// Failed or in maintenance, with a reason.
    pub explained_workers: usize,
    /// Neither idle nor explained when the settle time was over.
    pub stuck_workers: usize,
    pub settle_s: f64,
    /// `state: reason` of each explained or stuck worker.
    pub worker_notes: Vec<String>,
    pub requests_in_db: i64,
    pub leases_in_db: i64,
}

/// Closes whatever is in progress until nothing is live (the queue drains:
/// waiting requests must get bound on their own), then waits for the
/// workers to be idle or explained.
pub(crate) async fn settle(admin: &ApiClient, workers: usize, verdict: &mut Verdict) -> Result<()> {
    let started = Instant::now();
    let mut live = Vec::new();
    while started.elapsed() < SETTLE_TIMEOUT {
        live = match admin.all("/v1/requests?state=waiting,in_progress").await {
            Ok(live) => live,
            Err(err) => {
                eprintln!("  listing live requests: {err:#}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if live.is_empty() {
            break;
        }
        for request in live.iter().filter(|r| r["state"] == "in_progress") {
            if let Some(id) = request["id"].as_i64() {
                let _ = admin.post(&format!("/v1/requests/{id}/close"), &json!({})).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    verdict.undrained = live.len();
    verdict.drain_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut listed = Vec::new();
    while started.elapsed() < SETTLE_TIMEOUT {
        listed = admin.all("/v1/workers").await.unwrap_or_default();
        let settled = listed.len() == workers && listed.iter().all(|w| w["state"] == "idle" || explained(w));
        if settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    verdict.settle_s = started.elapsed().as_secs_f64();
    verdict.idle_workers = listed.iter().filter(|w| w["state"] == "idle").count();
    verdict.explained_workers = listed.iter().filter(|w| explained(w)).count();
    verdict.stuck_workers = workers - verdict.idle_workers.min(workers) - verdict.explained_workers;
    verdict.worker_notes = listed
        .iter()
        .filter(|w| w["state"] != "idle")
        .map(|w| format!("{} {}: {}", w["uuid"], w["state"], w["reason"]))
        .collect();
    Ok(())
}

/// Failed or in maintenance, with a reason.
fn explained(worker: &serde_json::Value) -> bool {
    matches!(worker["state"].as_str(), Some("failed" | "maintenance"))
        && worker["reason"].as_str().is_some_and(|r| !r.is_empty())
}

/// The checks in the database and through the API.
pub(crate) async fn check(
    side: &mut SideDb,
    user: &ApiClient,
    acknowledged: &[(String, i64)],
    verdict: &mut Verdict,
) -> Result<()> {
    verdict.acknowledged = acknowledged.len();
    let ids: Vec<i64> = acknowledged.iter().map(|(_, id)| *id).collect();
    let keys: Vec<String> = acknowledged.iter().map(|(key, _)| key.clone()).collect();
    let in_db: HashSet<i64> = side.existing_ids(&ids).await?.into_iter().collect();
    let by_key: HashMap<String, i64> = side.ids_by_key(&keys).await?.into_iter().collect();
    let in_api: HashSet<i64> = user.all("/v1/requests").await?.iter().filter_map(|r| r["id"].as_i64()).collect();
    let mut lost = 0;
    for (key, id) in acknowledged {
        let missing_in_db = !in_db.contains(id) || by_key.get(key) != Some(id);
        let missing_in_api = !in_api.contains(id);
        verdict.lost_in_db += usize::from(missing_in_db);
        verdict.lost_in_api += usize::from(missing_in_api);
        lost += usize::from(missing_in_db || missing_in_api);
    }
    verdict.lost = lost;

    verdict.double_leases = side.double_leases().await?;
    verdict.double_bindings = side.double_bindings().await?;
    verdict.requests_in_db = side.count("SELECT count(*) FROM requests", &[]).await?;
    verdict.leases_in_db = side.count("SELECT count(*) FROM leases", &[]).await?;
    Ok(())
}
