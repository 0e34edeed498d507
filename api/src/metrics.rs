//! `GET /metrics`: the server's figures in the Prometheus text format
//! (0.0.4), built with `prometheus-client`.
//!
//! Two kinds of figure:
//! - **Observed** as they happen, kept in [`Metrics`] for the process's
//!   life: database operation latency and errors by operation (fed by
//!   `Observer::database_operation` of `corral_actors::observe`, which
//!   every database call reaches; the batch writers' statements are
//!   counted, not timed), and what the actors time (queue wait, ...).
//! - **Read at scrape time** from memory ([`corral_actors::Corral::summary`]:
//!   workers by state, live requests, the matcher, agent sessions, tunnels,
//!   the batch writers' counters) and from `/proc/self` (process figures):
//!   a scrape sends one message to the matcher and reads no table.
//!
//! Names follow Prometheus' conventions: a `corral_` prefix, base units
//! (`_seconds`, `_bytes`), `_total` on counters, labels instead of names.
//! Who may scrape is the server setting `metrics_access` (`anyone`, the
//! default, or `admin`).

use std::time::Duration;

use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::AppState;
use crate::auth::Auth;
use crate::error::ApiError;

type Label = [(&'static str, &'static str); 1];
type Histograms = Family<Label, Histogram, fn() -> Histogram>;

/// The figures observed as they happen. Cheap to clone (shared counters).
#[derive(Clone)]
pub struct Metrics {
    db_seconds: Histograms,
    db_errors: Family<[(&'static str, &'static str); 2], Counter>,
    queue_wait: Histogram,
    time_to_lease: Histogram,
    lease_length: Histogram,
    requests_ended: Family<Label, Counter>,
    matcher_pass: Histogram,
    matcher_batch: Histogram,
    heartbeat_lag: Histogram,
    command_timeouts: Family<Label, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            db_seconds: Family::new_with_constructor(db_histogram),
            db_errors: Family::default(),
            // 10 ms to about 12 hours.
            queue_wait: Histogram::new(exponential_buckets(0.01, 4.0, 16)),
            time_to_lease: Histogram::new(exponential_buckets(0.01, 4.0, 16)),
            // 1 s to about 3 days.
            lease_length: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            requests_ended: Family::default(),
            // 1 µs to about 4 s.
            matcher_pass: Histogram::new(exponential_buckets(0.000_001, 4.0, 12)),
            // 1 to 512 decisions (the matcher's batches hold at most 256).
            matcher_batch: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            // 10 ms to about 40 s.
            heartbeat_lag: Histogram::new(exponential_buckets(0.01, 2.0, 13)),
            command_timeouts: Family::default(),
        }
    }
}

/// The lifecycle figures the actors report (`corral_actors::observe`).
impl corral_actors::observe::Observer for Metrics {
    fn queue_wait(&self, waited: Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
    }

    fn time_to_lease(&self, elapsed: Duration) {
        self.time_to_lease.observe(elapsed.as_secs_f64());
    }

    fn lease_length(&self, length: Duration) {
        self.lease_length.observe(length.as_secs_f64());
    }

    fn request_ended(&self, state: corral_core::RequestState) {
        self.requests_ended.get_or_create(&[("state", state.as_str())]).inc();
    }

    fn matcher_pass(&self, elapsed: Duration, _decisions: u64) {
        self.matcher_pass.observe(elapsed.as_secs_f64());
    }

    fn matcher_batch(&self, size: usize) {
        self.matcher_batch.observe(size as f64);
    }

    fn heartbeat_lag(&self, lag: Duration) {
        self.heartbeat_lag.observe(lag.as_secs_f64());
    }

    fn command_timed_out(&self, kind: corral_proto::agent::ActionKind) {
        self.command_timeouts.get_or_create(&[("kind", kind.as_str())]).inc();
    }

    fn database_operation(&self, operation: &'static str, elapsed: Duration, error: Option<&'static str>) {
        self.db_seconds.get_or_create(&[("operation", operation)]).observe(elapsed.as_secs_f64());
        if let Some(kind) = error {
            self.db_errors.get_or_create(&[("operation", operation), ("kind", kind)]).inc();
        }
    }
}

/// 0.25 ms to about 4 s.
fn db_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00025, 2.0, 15))
}

/// Who may read `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsAccess {
    Anyone,
    Admin,
}

impl std::str::FromStr for MetricsAccess {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "anyone" => Ok(MetricsAccess::Anyone),
            "admin" => Ok(MetricsAccess::Admin),
            other => Err(format!("metrics_access must be anyone or admin, got {other:?}")),
        }
    }
}

pub(crate) const ROUTES: crate::routes::Family = crate::family! {
    { "/metrics" => [get => metrics] }
};

/// The server's figures in the Prometheus text format (0.0.4). A token is
/// needed only with the server setting `metrics_access = "admin"`.
#[utoipa::path(
    get, path = "/metrics", operation_id = "metrics", tag = "operations",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The figures", content_type = "text/plain; version=0.0.4", body = String),
        (status = 401, description = "`unauthorized` (with `metrics_access = \"admin\"`)", body = corral_proto::error::ErrorBody),
        (status = 403, description = "`forbidden`: not an admin (with `metrics_access = \"admin\"`)", body = corral_proto::error::ErrorBody),
        (status = 503, description = "`unavailable`", body = corral_proto::error::ErrorBody),
    ),
)]
async fn metrics(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    if state.metrics_access == MetricsAccess::Admin {
        let auth = Auth::extract(&req).await.map_err(|e| ApiError::unauthorized(e.to_string()))?;
        auth.require_admin()?;
    }
    let summary = state.corral.summary().await?;
    let text = render(&state.metrics, &summary, &state.limits).map_err(|e| ApiError::internal(&e))?;
    Ok(HttpResponse::Ok().content_type(prometheus_text::CONTENT_TYPE).body(text))
}

fn render(
    observed: &Metrics,
    s: &corral_actors::summary::Summary,
    limits: &crate::limits::Limits,
) -> Result<String, std::fmt::Error> {
    let mut root = Registry::default();
    let registry = root.sub_registry_with_prefix("corral");
    let workers = Family::<Label, Gauge>::default();
    for (worker_state, count) in &s.workers_by_state {
        workers.get_or_create(&[("state", worker_state.as_str())]).set(gauge(*count));
    }
    registry.register("workers", "Registered workers by state", workers);
    registry.register(
        "requests_live",
        "Requests waiting or in progress (one actor each)",
        ConstGauge::new(gauge(s.live_requests)),
    );
    registry.register(
        "requests_queued",
        "Waiting requests in the matcher's queues (not bound to a worker)",
        ConstGauge::new(gauge(s.matcher.waiting)),
    );
    registry.register(
        "matcher_decisions",
        "Requests the matcher bound to workers since start",
        ConstCounter::new(s.matcher.decisions),
    );
    registry.register(
        "matcher_pending_commits",
        "Decisions the matcher made whose batch is being committed",
        ConstGauge::new(gauge(s.matcher.pending_commits)),
    );
    registry.register("agent_sessions", "Live agent sessions", ConstGauge::new(gauge(s.agent_sessions)));
    registry.register(
        "long_polls_open",
        "Calls of acquire?wait= waiting now",
        ConstGauge::new(gauge(limits.long_polls.open())),
    );
    registry.register("event_streams_open", "Event streams open now", ConstGauge::new(gauge(limits.streams.open())));
    registry.register("tunnels_open", "Lease tunnels listening", ConstGauge::new(gauge(s.tunnels_open)));
    registry.register(
        "tunnel_connections",
        "Connections the lease tunnels accepted since start",
        ConstCounter::new(s.tunnel_connections),
    );
    registry.register(
        "database_batched_calls",
        "Calls to the batched lease statements since start",
        ConstCounter::new(s.batch_calls),
    );
    registry.register(
        "database_batch_statements",
        "Statements the batch writers ran for those calls",
        ConstCounter::new(s.batch_statements),
    );
    registry.register_with_unit(
        "database_operation_duration",
        "Database operations by operation (batched lease statements excluded)",
        Unit::Seconds,
        observed.db_seconds.clone(),
    );
    registry.register("database_operation_errors", "Failed database operations", observed.db_errors.clone());
    registry.register_with_unit(
        "request_queue_wait",
        "Time requests waited in the queue until the matcher bound them (from submission or valid_after)",
        Unit::Seconds,
        observed.queue_wait.clone(),
    );
    registry.register_with_unit(
        "request_time_to_lease",
        "Time from entering the queue until the lease started (key installed on the worker)",
        Unit::Seconds,
        observed.time_to_lease.clone(),
    );
    registry.register_with_unit(
        "lease_length",
        "Length of the leases that ended, from their start",
        Unit::Seconds,
        observed.lease_length.clone(),
    );
    let ended = observed.requests_ended.clone();
    for state in corral_core::RequestState::ALL.into_iter().filter(|s| s.is_terminal()) {
        let _ = ended.get_or_create(&[("state", state.as_str())]);
    }
    registry.register("requests_ended", "Requests that reached a terminal state, by state", ended);
    registry.register_with_unit(
        "matcher_pass_duration",
        "Time of one matcher pass that made decisions (every decision possible at that moment)",
        Unit::Seconds,
        observed.matcher_pass.clone(),
    );
    registry.register(
        "matcher_batch_size",
        "Decisions per batch the matcher commits in one transaction",
        observed.matcher_batch.clone(),
    );
    registry.register_with_unit(
        "agent_heartbeat_lag",
        "How much later than the heartbeat interval each agent heartbeat came after the previous one",
        Unit::Seconds,
        observed.heartbeat_lag.clone(),
    );
    let timeouts = observed.command_timeouts.clone();
    for kind in corral_proto::agent::ActionKind::ALL {
        let _ = timeouts.get_or_create(&[("kind", kind.as_str())]);
    }
    registry.register("agent_command_timeouts", "Commands to agents not answered within their timeout", timeouts);
    registry.register("build", "The corral build", Info::new([("version", env!("CARGO_PKG_VERSION"))]));
    process_metrics(root.sub_registry_with_prefix("process"));
    let mut text = String::new();
    prometheus_text::encode(&mut text, &root)?;
    Ok(text)
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Prometheus' standard process figures, from `/proc/self` (left out where
/// it cannot be read), named `process_*` as the convention has them.
fn process_metrics(registry: &mut Registry) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
    // Fields after the command name (which may hold spaces) start at state.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else { return };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100).max(1) as f64;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096).max(1) as u64;
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        registry.register_with_unit(
            "cpu",
            "CPU time used by the server",
            Unit::Seconds,
            ConstCounter::new((utime + stime) as f64 / ticks),
        );
    }
    if let Some(rss) = field(24) {
        registry.register_with_unit(
            "resident_memory",
            "Resident memory of the server",
            Unit::Bytes,
            ConstGauge::new(gauge(usize::try_from(rss * page).unwrap_or(usize::MAX))),
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        registry.register("open_fds", "Open file descriptors", ConstGauge::new(gauge(fds.count())));
    }
}
