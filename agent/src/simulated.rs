//! A simulated host for demos, tests and benchmarks: N workers with the
//! given caps whose preparation and key installation succeed at once.
//! Leases tunnel to `ssh_addr` (a real SSH server, if one is given).
//!
//! Its fault mode ([`SimFaults`]) makes it misbehave on purpose, counted
//! rather than random so that tests are deterministic: commands of chosen
//! kinds fail (or every n-th command does), hooks are slow, results are
//! lost (never sent), heartbeats stop.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_core::{Caps, Groups, WorkerId};
use corral_proto::agent::{Action, ActionKind, WorkerRegistration};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::backend::{Backend, Outcome};

#[derive(Clone, Debug)]
pub struct Simulated {
    name: String,
    workers: Vec<WorkerRegistration>,
    faults: SimFaults,
}

/// How many times a fault applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Times {
    Always,
    /// The next n commands of the kind.
    Next(usize),
}

impl Times {
    /// Uses up one time; whether the fault applies to this command.
    fn consume(&mut self) -> bool {
        match self {
            Times::Always => true,
            Times::Next(0) => false,
            Times::Next(n) => {
                *n -= 1;
                true
            }
        }
    }
}

/// The faults a simulated host plays. Clones share them: a test or a
/// benchmark keeps a handle and changes them while the agent runs.
#[derive(Clone, Debug, Default)]
pub struct SimFaults(Arc<Mutex<FaultState>>);

#[derive(Debug, Default)]
struct FaultState {
    fail: HashMap<ActionKind, Times>,
    lose: HashMap<ActionKind, Times>,
    slow: HashMap<ActionKind, Duration>,
    /// Every n-th command (of any kind) fails; 0: none.
    fail_every: u64,
    commands: u64,
    executed: HashMap<ActionKind, usize>,
    heartbeats_stopped: bool,
    /// What `interrogate` prints for every worker (empty: nothing).
    facts: Map<String, Value>,
}

/// A fault spec ([`SimFaults::parse`]) that cannot be played; each names
/// its item.
#[derive(Debug, thiserror::Error)]
pub enum FaultSpecError {
    #[error("{item:?}: {message}")]
    Kind { item: String, message: String },
    #[error("{item:?}: the count is not a number")]
    Count { item: String },
    #[error("{item:?}: give slow=KIND:DURATION")]
    NoDuration { item: String },
    #[error("{item:?}: the duration is not one")]
    Duration {
        item: String,
        #[source]
        source: humantime::DurationError,
    },
    #[error(
        "unknown fault {item:?}; use fail=KIND[:N], lose=KIND[:N], slow=KIND:DURATION, fail-every=N or no-heartbeats"
    )]
    Unknown { item: String },
}

/// `--caps` arguments that are not caps.
#[derive(Debug, thiserror::Error)]
pub enum CapsArgError {
    #[error("caps must be key=value, got {0:?}")]
    NotKeyValue(String),
    #[error(transparent)]
    Invalid(#[from] corral_core::caps::CapsError),
}

/// What happens to one command.
struct Plan {
    delay: Option<Duration>,
    fail: bool,
    lose: bool,
}

impl SimFaults {
    fn state(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Commands of `kind` fail (`times` of them, from the next one).
    pub fn fail(&self, kind: ActionKind, times: Times) {
        self.state().fail.insert(kind, times);
    }

    /// Every `n`-th command, of any kind, fails (a failure rate of 1/n
    /// that does not depend on chance); 0 turns it off.
    pub fn fail_every(&self, n: u64) {
        self.state().fail_every = n;
    }

    /// Commands of `kind` run, but their results are never sent.
    pub fn lose_results(&self, kind: ActionKind, times: Times) {
        self.state().lose.insert(kind, times);
    }

    /// Commands of `kind` take `delay` (a slow hook; the worker's later
    /// commands wait behind it, as on a real host).
    pub fn slow(&self, kind: ActionKind, delay: Duration) {
        self.state().slow.insert(kind, delay);
    }

    /// Heartbeats stop (true) or go on (false); commands still flow.
    pub fn stop_heartbeats(&self, stopped: bool) {
        self.state().heartbeats_stopped = stopped;
    }

    /// The output of every worker's `interrogate` hook from now on (a
    /// `dimensions` member included), as a real host's hook would print it.
    pub fn set_facts(&self, facts: Map<String, Value>) {
        self.state().facts = facts;
    }

    /// Ends every fault (the counts of executed commands stay).
    pub fn clear(&self) {
        let mut state = self.state();
        state.fail.clear();
        state.lose.clear();
        state.slow.clear();
        state.fail_every = 0;
        state.heartbeats_stopped = false;
    }

    /// Commands of `kind` this host started to execute so far.
    pub fn executed(&self, kind: ActionKind) -> usize {
        self.state().executed.get(&kind).copied().unwrap_or(0)
    }

    /// Faults from a spec such as
    /// `fail=prepare:3,lose=start_lease,slow=maintenance:5s,fail-every=10,no-heartbeats`
    /// (comma-separated; `KIND` as on the wire; `:N` = the next N
    /// commands, else every one; durations in humantime form).
    pub fn parse(spec: &str) -> Result<SimFaults, FaultSpecError> {
        let faults = SimFaults::default();
        for item in spec.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            let (name, value) = item.split_once('=').map_or((item, None), |(name, value)| (name, Some(value)));
            let (kind, rest) = match value {
                Some(value) => value.split_once(':').map_or((value, None), |(kind, rest)| (kind, Some(rest))),
                None => ("", None),
            };
            let item = item.to_string();
            let kind = || -> Result<ActionKind, FaultSpecError> {
                kind.parse().map_err(|message| FaultSpecError::Kind { item: item.clone(), message })
            };
            let not_a_count = || FaultSpecError::Count { item: item.clone() };
            let times = |n: Option<&str>| {
                n.map_or(Ok(Times::Always), |n| n.parse().map(Times::Next).map_err(|_| not_a_count()))
            };
            match (name, value) {
                ("fail", Some(_)) => faults.fail(kind()?, times(rest)?),
                ("lose", Some(_)) => faults.lose_results(kind()?, times(rest)?),
                ("slow", Some(_)) => {
                    let delay = rest.ok_or_else(|| FaultSpecError::NoDuration { item: item.clone() })?;
                    let delay = humantime::parse_duration(delay)
                        .map_err(|source| FaultSpecError::Duration { item: item.clone(), source })?;
                    faults.slow(kind()?, delay);
                }
                ("fail-every", Some(n)) => faults.fail_every(n.parse().map_err(|_| not_a_count())?),
                ("no-heartbeats", None) => faults.stop_heartbeats(true),
                _ => return Err(FaultSpecError::Unknown { item }),
            }
        }
        Ok(faults)
    }

    fn heartbeats_stopped(&self) -> bool {
        self.state().heartbeats_stopped
    }

    fn plan(&self, kind: ActionKind) -> Plan {
        let mut state = self.state();
        state.commands += 1;
        *state.executed.entry(kind).or_default() += 1;
        let every = state.fail_every > 0 && state.commands.is_multiple_of(state.fail_every);
        let fail = state.fail.get_mut(&kind).is_some_and(Times::consume) || every;
        let lose = state.lose.get_mut(&kind).is_some_and(Times::consume);
        Plan { delay: state.slow.get(&kind).copied(), fail, lose }
    }
}

/// The hooks a simulated worker has: all of them (each succeeds unless a
/// fault says otherwise).
pub const SIMULATED_HOOKS: &[&str] = &["prepare", "healthcheck", "power_cycle", "maintenance", "interrogate"];

/// A stable UUID for worker `index` of agent `name` (FNV-1a, 128 bits), so
/// a restarted simulated agent registers the same workers.
pub fn simulated_uuid(name: &str, index: usize) -> WorkerId {
    let mut hash: u128 = 0x6c62272e07bb014262b821756295c58d;
    for byte in format!("{name}/{index}").bytes() {
        hash ^= u128::from(byte);
        hash = hash.wrapping_mul(0x0000000001000000000000000000013b);
    }
    // Mark it as a version 4, RFC 4122 UUID.
    let uuid = Uuid::from_u128(hash);
    let mut bytes = *uuid.as_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    WorkerId(Uuid::from_bytes(bytes))
}

impl Simulated {
    /// `count` workers of agent `name`, each with `caps`, reachable at
    /// `ssh_addr` as `user`.
    pub fn new(name: &str, count: usize, caps: &Caps, ssh_addr: &str, user: &str) -> Simulated {
        Simulated::with_caps(name, ssh_addr, user, (0..count).map(|_| caps.clone()))
    }

    /// One worker per item of `caps`.
    pub fn with_caps(name: &str, ssh_addr: &str, user: &str, caps: impl IntoIterator<Item = Caps>) -> Simulated {
        let workers = caps
            .into_iter()
            .enumerate()
            .map(|(index, caps)| WorkerRegistration {
                uuid: simulated_uuid(name, index),
                caps,
                groups: Groups::new(),
                ssh_addr: ssh_addr.to_string(),
                user: user.to_string(),
                host_key: None,
                hooks: Some(SIMULATED_HOOKS.iter().map(|h| h.to_string()).collect()),
            })
            .collect();
        Simulated { name: name.to_string(), workers, faults: SimFaults::default() }
    }

    /// The hooks its workers say they have (default: every hook; None: say
    /// nothing, as an older agent).
    pub fn with_hooks(mut self, hooks: Option<Vec<String>>) -> Simulated {
        for worker in &mut self.workers {
            worker.hooks = hooks.clone();
        }
        self
    }

    /// This host plays the faults of `faults` (a handle the caller keeps).
    pub fn with_faults(mut self, faults: SimFaults) -> Simulated {
        self.faults = faults;
        self
    }

    /// A handle on this host's faults.
    pub fn faults(&self) -> SimFaults {
        self.faults.clone()
    }

    pub fn uuids(&self) -> Vec<WorkerId> {
        self.workers.iter().map(|w| w.uuid).collect()
    }
}

impl Backend for Simulated {
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn workers(&self) -> Vec<WorkerRegistration> {
        self.workers.clone()
    }

    async fn execute(&self, _worker: WorkerId, action: &Action) -> Outcome {
        let kind = action.kind();
        let plan = self.faults.plan(kind);
        if let Some(delay) = plan.delay {
            tokio::time::sleep(delay).await;
        }
        let mut outcome =
            if plan.fail { Outcome::failed(format!("simulated failure of {kind}")) } else { Outcome::ok() };
        outcome.lost = plan.lose;
        outcome
    }

    async fn observe(&self, _worker: WorkerId) -> Map<String, Value> {
        self.faults.state().facts.clone()
    }

    fn heartbeats(&self) -> bool {
        !self.faults.heartbeats_stopped()
    }
}

/// Parses `k=v` arguments into caps.
pub fn parse_caps(pairs: &[String]) -> Result<Caps, CapsArgError> {
    let mut map = BTreeMap::new();
    for pair in pairs {
        let (k, v) = pair.split_once('=').ok_or_else(|| CapsArgError::NotKeyValue(pair.clone()))?;
        map.insert(k.to_string(), v.to_string());
    }
    Ok(Caps::validated(map)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_stable_and_distinct() {
        assert_eq!(simulated_uuid("a", 0), simulated_uuid("a", 0));
        assert_ne!(simulated_uuid("a", 0), simulated_uuid("a", 1));
        assert_ne!(simulated_uuid("a", 0), simulated_uuid("b", 0));
        assert_eq!(simulated_uuid("a", 3).0.get_version_num(), 4);
    }

    #[actix_rt::test]
    async fn faults_apply_as_many_times_as_asked() {
        let sim = Simulated::new("f", 1, &Caps::default(), "127.0.0.1:9", "lab");
        let faults = sim.faults();
        let worker = sim.uuids()[0];
        faults.fail(ActionKind::Prepare, Times::Next(2));
        faults.lose_results(ActionKind::Maintenance, Times::Always);
        assert!(!sim.execute(worker, &Action::Prepare).await.ok);
        assert!(!sim.execute(worker, &Action::Prepare).await.ok);
        assert!(sim.execute(worker, &Action::Prepare).await.ok, "two failures were asked");
        assert!(sim.execute(worker, &Action::Maintenance).await.lost);
        assert!(sim.execute(worker, &Action::Maintenance).await.lost);
        assert_eq!((faults.executed(ActionKind::Prepare), faults.executed(ActionKind::HealthCheck)), (3, 0));
        faults.clear();
        faults.fail_every(2);
        let outcomes: Vec<bool> = health_checks(&sim, worker, 4).await;
        assert_eq!(outcomes, vec![false, true, false, true], "commands 6 and 8 fail");
        assert!(sim.heartbeats());
        faults.stop_heartbeats(true);
        assert!(!sim.heartbeats());
    }

    #[actix_rt::test]
    async fn fault_specs_parse_into_the_same_faults() {
        let faults =
            SimFaults::parse("fail=prepare:1, lose=maintenance, slow=health_check:1ms, no-heartbeats").unwrap();
        let sim = Simulated::new("p", 1, &Caps::default(), "127.0.0.1:9", "lab").with_faults(faults);
        let worker = sim.uuids()[0];
        assert!(!sim.execute(worker, &Action::Prepare).await.ok);
        assert!(sim.execute(worker, &Action::Prepare).await.ok, "only the next one fails");
        assert!(sim.execute(worker, &Action::Maintenance).await.lost);
        assert!(sim.execute(worker, &Action::HealthCheck).await.ok);
        assert!(!sim.heartbeats());
        assert!(SimFaults::parse("fail-every=3").is_ok());
        for (bad, wrong) in [
            ("fail=reboot", "kind"),
            ("fail=prepare:x", "count"),
            ("slow=prepare", "no duration"),
            ("slow=prepare:soon", "duration"),
            ("explode", "unknown"),
            ("fail-every=-1", "count"),
        ] {
            let err = SimFaults::parse(bad).err().unwrap_or_else(|| panic!("{bad} accepted"));
            let found = match &err {
                FaultSpecError::Kind { .. } => "kind",
                FaultSpecError::Count { .. } => "count",
                FaultSpecError::NoDuration { .. } => "no duration",
                FaultSpecError::Duration { .. } => "duration",
                FaultSpecError::Unknown { .. } => "unknown",
            };
            assert_eq!(found, wrong, "{bad}: {err}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "names the item: {err}");
        }
        let caps = |pairs: &[&str]| parse_caps(&pairs.iter().map(|p| p.to_string()).collect::<Vec<_>>());
        assert_eq!(caps(&["board=rpi4"]).unwrap().get("board"), Some("rpi4"));
        assert!(matches!(caps(&["board"]), Err(CapsArgError::NotKeyValue(pair)) if pair == "board"));
        assert!(matches!(caps(&["UUID=x"]), Err(CapsArgError::Invalid(_))));
    }

    async fn health_checks(sim: &Simulated, worker: WorkerId, n: usize) -> Vec<bool> {
        let mut oks = Vec::new();
        for _ in 0..n {
            oks.push(sim.execute(worker, &Action::HealthCheck).await.ok);
        }
        oks
    }
}
