//! What the live system needs to know from the server configuration.

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use corral_core::WorkerState;
use corral_core::request::ScheduleLimits;

pub use corral_core::lease::{KeyKind, TotalLeaseLimit};

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub limits: ScheduleLimits,
    /// How long a lease may last from its start, prolongs included.
    pub total_lease: TotalLeaseLimit,
    pub session_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// A preparation unanswered for this long counts as a failed attempt.
    pub prepare_timeout: Duration,
    /// Any other command to an agent unanswered for this long counts as a
    /// failed attempt.
    pub command_timeout: Duration,
    /// A power cycle unanswered for this long counts as a failed attempt.
    pub power_cycle_timeout: Duration,
    /// Retries of a command that timed out or failed, each after its
    /// backoff; then the worker fails (or, busy, is assumed in maintenance).
    pub command_retries: u32,
    /// Quarantine a worker after this many failed preparations in a row
    /// (0: never).
    pub quarantine_after: u32,
    /// The thresholds of the health and recovery rules applied to facts.
    pub health: corral_core::health::Thresholds,
    /// State of a worker registered for the first time.
    pub new_worker_state: WorkerState,
    /// Address the tunnels listen on.
    pub tunnel_bind: IpAddr,
    pub tunnel_ports: RangeInclusive<u16>,
    /// Connections one lease's tunnel carries at once.
    pub tunnel_max_connections: usize,
    /// A tunnel connection idle (no bytes either way) this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// Host name or address clients use to reach the tunnels.
    pub public_host: String,
    /// Key pair made for leases of the native API (the Boruta API always
    /// asks for RSA).
    pub lease_key: KeyKind,
    /// First delay after a failed command; doubles per failure of the same
    /// command on the same worker.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// How often timers (deadlines, lease expiry, session reaper) look at
    /// the clock.
    pub tick: Duration,
    /// Threads for request and worker actors.
    pub actor_threads: usize,
    /// Most waiting requests one user (not an admin) may have.
    pub max_waiting_requests_per_user: usize,
    /// How often the reconciler compares the database with the live
    /// actors when no failed commit asks it to ([`crate::reconciler`]).
    pub reconcile_interval: Duration,
    /// Most history rows of either table an event stream resumes over
    /// (`Last-Event-ID`); further behind, the client is told to reload.
    pub events_resume_limit: u32,
    /// Events the broadcast keeps for event streams that are behind; one
    /// further behind is told to reload and ended.
    pub events_buffer: usize,
}

/// The defaults of SPEC §11, written once: the server configuration's
/// defaults (`corral_api::Config::default`) are taken from here.
impl Default for Settings {
    fn default() -> Self {
        Settings {
            limits: ScheduleLimits::default(),
            total_lease: TotalLeaseLimit::default(),
            session_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            prepare_timeout: Duration::from_secs(120),
            command_timeout: Duration::from_secs(60),
            power_cycle_timeout: Duration::from_secs(330),
            command_retries: 3,
            quarantine_after: 0,
            health: corral_core::health::Thresholds::default(),
            new_worker_state: WorkerState::Maintenance,
            tunnel_bind: IpAddr::from([127, 0, 0, 1]),
            tunnel_ports: 20000..=20999,
            tunnel_max_connections: 8,
            tunnel_idle_timeout: Duration::from_secs(15 * 60),
            public_host: "127.0.0.1".to_string(),
            lease_key: KeyKind::Ed25519,
            backoff_base: Duration::from_secs(5),
            backoff_cap: Duration::from_secs(600),
            tick: Duration::from_millis(100),
            actor_threads: default_threads(),
            max_waiting_requests_per_user: 1000,
            reconcile_interval: Duration::from_secs(30),
            events_resume_limit: crate::events::RESUME_LIMIT,
            events_buffer: crate::events::CHANNEL,
        }
    }
}

/// Threads of each of the server's pools (HTTP, actors) unless configured:
/// half the machine's cores, at least one, leaving the rest to its
/// database (the embedded PostgreSQL by default runs beside it). On two
/// cores, one thread each spent a fifth less server CPU per lifecycle cycle
/// than two each (fewer cross-thread wake-ups; see
/// `bench/results/2026-12-01-bind-at-submission.md`).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}
