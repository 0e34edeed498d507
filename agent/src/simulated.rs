//! A simulated host for demos, tests and benchmarks: N workers with the
//! given caps whose preparation and key installation succeed at once.
//! Leases tunnel to `ssh_addr` (a real SSH server, if one is given).

use std::collections::BTreeMap;

use corral_core::{Caps, Groups, WorkerId};
use corral_proto::agent::{Action, WorkerRegistration};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::backend::{Backend, Outcome};

#[derive(Clone, Debug)]
pub struct Simulated {
    name: String,
    workers: Vec<WorkerRegistration>,
}

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
            })
            .collect();
        Simulated { name: name.to_string(), workers }
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

    async fn execute(&self, _worker: WorkerId, _action: &Action) -> Outcome {
        Outcome::ok()
    }

    async fn observe(&self, _worker: WorkerId) -> Map<String, Value> {
        Map::new()
    }
}

/// Parses `k=v` arguments into caps.
pub fn parse_caps(pairs: &[String]) -> Result<Caps, String> {
    let mut map = BTreeMap::new();
    for pair in pairs {
        let (k, v) = pair.split_once('=').ok_or_else(|| format!("caps must be key=value, got {pair:?}"))?;
        map.insert(k.to_string(), v.to_string());
    }
    Caps::validated(map).map_err(|e| e.to_string())
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
}
