//! The deterministic input of the `matcher` scenario: W workers and R
//! waiting requests, generated from a seed by [`SplitMix64`].
//!
//! # Workers
//!
//! Worker `i` has `device_type=type-NNN` with `NNN = i mod K` and five more
//! caps, `arch`, `ram`, `storage`, `usb` and `firmware`. Each device type
//! owns a small value set per key: one value from a pool of four, plus with
//! probability 0.4 a second one. A worker draws each of its five values
//! uniformly from its type's sets, so the workers of one type fall into a
//! handful of interchangeable classes (1.4^5 ≈ 5 on average, at most 32), as
//! boards of one type do in a real lab. About 10% of the workers belong to
//! one of three groups (`lab-a`, `lab-b`, `lab-c`); the others are public.
//! Worker ids are random (version 4) UUIDs drawn from the same generator.
//!
//! # Requests
//!
//! Request `j` (id `j + 1`, so ids follow submission order) copies a
//! *template*: a worker drawn uniformly from all W. It demands the
//! template's `device_type` plus 0, 1 or 2 (uniformly) of its other caps,
//! keys chosen uniformly without repetition, so it has 1 to 3 caps and the
//! template satisfies it. When the template belongs to a group, the
//! requester has that group; otherwise the requester has one random group
//! with probability 0.2 and none otherwise. Priorities are uniform in 1..=16.
//! Every request is therefore satisfiable by construction (its template
//! serves it), which the scenario also checks when loading it.
//!
//! All requests are visible from [`epoch`] on and expire 30 days later.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use corral_core::matcher::{RequestSpec, WorkerSpec};
use corral_core::{Caps, Groups, Priority, RequestId, WorkerId};

use crate::rng::SplitMix64;

/// The caps every worker has besides `device_type`, each with its pool of
/// possible values.
const EXTRA_CAPS: [(&str, [&str; 4]); 5] = [
    ("arch", ["armv7", "aarch64", "x86_64", "riscv64"]),
    ("ram", ["1G", "2G", "4G", "8G"]),
    ("storage", ["sdcard", "emmc", "nvme", "usb"]),
    ("usb", ["none", "2.0", "3.0", "otg"]),
    ("firmware", ["u-boot", "uefi", "coreboot", "vendor"]),
];

const GROUPS: [&str; 3] = ["lab-a", "lab-b", "lab-c"];

/// Share of workers that belong to a group.
const GROUPED_WORKERS: f64 = 0.1;
/// Share of requesters with a group when the template worker is public.
const REQUESTERS_WITH_GROUP: f64 = 0.2;
/// Chance that a device type offers a second value for a cap key.
const SECOND_VALUE: f64 = 0.4;

/// The sizes and seed the input is generated from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkloadSpec {
    pub workers: usize,
    pub requests: usize,
    pub device_types: usize,
    pub seed: u64,
}

/// Generated input, in submission order.
#[derive(Debug)]
pub struct Workload {
    pub spec: WorkloadSpec,
    pub workers: Vec<WorkerSpec>,
    pub requests: Vec<RequestSpec>,
}

/// The instant every request becomes visible and every worker is first
/// idle; release times of the run count up from it.
pub fn epoch() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

impl Workload {
    pub fn generate(spec: WorkloadSpec) -> Workload {
        assert!(spec.workers > 0 && spec.device_types > 0, "a workload needs workers and device types");
        let mut rng = SplitMix64::new(spec.seed);
        let type_values: Vec<Vec<Vec<&'static str>>> = (0..spec.device_types)
            .map(|_| {
                EXTRA_CAPS
                    .iter()
                    .map(|(_, pool)| {
                        let first = rng.below(pool.len());
                        let mut values = vec![pool[first]];
                        if rng.chance(SECOND_VALUE) {
                            values.push(pool[(first + 1 + rng.below(pool.len() - 1)) % pool.len()]);
                        }
                        values
                    })
                    .collect()
            })
            .collect();

        let workers: Vec<WorkerSpec> = (0..spec.workers)
            .map(|i| {
                let device_type = i % spec.device_types;
                let mut caps = Caps::new();
                caps.insert("device_type", device_type_name(device_type));
                for ((key, _), values) in EXTRA_CAPS.iter().zip(&type_values[device_type]) {
                    caps.insert(*key, values[rng.below(values.len())]);
                }
                let groups: Groups = if rng.chance(GROUPED_WORKERS) {
                    std::iter::once(GROUPS[rng.below(GROUPS.len())]).collect()
                } else {
                    Groups::new()
                };
                let id = WorkerId(uuid::Builder::from_random_bytes(rng.bytes16()).into_uuid());
                WorkerSpec { id, caps, groups }
            })
            .collect();

        let requests = (0..spec.requests)
            .map(|j| {
                let template = &workers[rng.below(workers.len())];
                let mut caps = Caps::new();
                let device_type = template.caps.get("device_type").expect("every worker has a device_type");
                caps.insert("device_type", device_type);
                // A partial Fisher-Yates shuffle picks distinct extra keys.
                let mut keys: [usize; 5] = [0, 1, 2, 3, 4];
                for k in 0..rng.below(3) {
                    let pick = k + rng.below(keys.len() - k);
                    keys.swap(k, pick);
                    let key = EXTRA_CAPS[keys[k]].0;
                    caps.insert(key, template.caps.get(key).expect("every worker has every extra cap"));
                }
                let groups = if !template.groups.is_empty() {
                    template.groups.clone()
                } else if rng.chance(REQUESTERS_WITH_GROUP) {
                    std::iter::once(GROUPS[rng.below(GROUPS.len())]).collect()
                } else {
                    Groups::new()
                };
                let priority = Priority::try_from(1 + rng.below(16) as i64).expect("1..=16 is a valid priority");
                RequestSpec {
                    id: RequestId(j as i64 + 1),
                    priority,
                    caps,
                    groups,
                    valid_after: epoch(),
                    deadline: epoch() + Duration::from_secs(30 * 24 * 3600),
                }
            })
            .collect();
        Workload { spec, workers, requests }
    }

    /// Distinct (caps, groups) among workers: the matcher's worker classes.
    pub fn worker_classes(&self) -> usize {
        self.workers.iter().map(|w| (&w.caps, &w.groups)).collect::<HashSet<_>>().len()
    }

    /// Distinct (caps, requester groups) among requests: the matcher's
    /// request signatures.
    pub fn request_signatures(&self) -> usize {
        self.requests.iter().map(|r| (&r.caps, &r.groups)).collect::<HashSet<_>>().len()
    }
}

fn device_type_name(index: usize) -> String {
    format!("type-{index:03}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> WorkloadSpec {
        WorkloadSpec { workers: 300, requests: 2_000, device_types: 20, seed: 42 }
    }

    #[test]
    fn same_seed_same_input() {
        let a = Workload::generate(small());
        let b = Workload::generate(small());
        let worker_view =
            |w: &Workload| w.workers.iter().map(|w| (w.id, w.caps.clone(), w.groups.clone())).collect::<Vec<_>>();
        let request_view = |w: &Workload| {
            w.requests.iter().map(|r| (r.id, r.priority, r.caps.clone(), r.groups.clone())).collect::<Vec<_>>()
        };
        assert_eq!(worker_view(&a), worker_view(&b));
        assert_eq!(request_view(&a), request_view(&b));
        let c = Workload::generate(WorkloadSpec { seed: 43, ..small() });
        assert_ne!(worker_view(&a), worker_view(&c));
    }

    #[test]
    fn shapes_match_the_documentation_and_every_request_is_satisfiable() {
        let workload = Workload::generate(small());
        let ids: HashSet<WorkerId> = workload.workers.iter().map(|w| w.id).collect();
        assert_eq!(ids.len(), workload.workers.len(), "worker ids are unique");
        for (i, worker) in workload.workers.iter().enumerate() {
            assert_eq!(worker.caps.len(), 6);
            assert_eq!(worker.caps.get("device_type"), Some(device_type_name(i % 20).as_str()));
            assert!(worker.groups.len() <= 1);
        }
        let grouped = workload.workers.iter().filter(|w| !w.groups.is_empty()).count();
        assert!((10..=60).contains(&grouped), "about 10% of 300 workers are grouped, got {grouped}");
        for (j, request) in workload.requests.iter().enumerate() {
            assert_eq!(request.id, RequestId(j as i64 + 1));
            assert!((1..=3).contains(&request.caps.len()));
            assert!(request.caps.get("device_type").is_some());
            assert!(
                workload
                    .workers
                    .iter()
                    .any(|w| request.caps.satisfied_by(w.id, &w.caps) && request.groups.may_use(&w.groups)),
                "request {} is unsatisfiable",
                request.id
            );
        }
        let priorities: HashSet<Priority> = workload.requests.iter().map(|r| r.priority).collect();
        assert_eq!(priorities.len(), 16);
        // A handful of classes per device type, not one per worker.
        assert!(workload.worker_classes() < 20 * 40, "{} classes", workload.worker_classes());
    }
}
