//! Table tests of the matching rules and property tests of its safety
//! invariants against Boruta's algorithm ([`crate::baseline`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use uuid::Uuid;

use super::*;
use crate::baseline::BorutaMatcher;

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn wid(n: u128) -> WorkerId {
    WorkerId(Uuid::from_u128(n))
}

fn caps(pairs: &[(&str, &str)]) -> Caps {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn worker(n: u128, c: &[(&str, &str)], groups: &[&str]) -> WorkerSpec {
    WorkerSpec { id: wid(n), caps: caps(c), groups: groups.iter().copied().collect() }
}

fn request(id: i64, priority: i64, c: &[(&str, &str)]) -> RequestSpec {
    RequestSpec {
        id: RequestId(id),
        priority: Priority::try_from(priority).unwrap(),
        caps: caps(c),
        groups: Groups::new(),
        valid_after: t(0),
        deadline: t(100_000),
    }
}

fn drain(m: &mut Matcher) -> Vec<(i64, u128)> {
    std::iter::from_fn(|| m.next_match()).map(|a| (a.request.0, a.worker.0.as_u128())).collect()
}

#[test]
fn priority_first_then_submission_order() {
    let mut m = Matcher::new();
    m.register_worker(&worker(1, &[("t", "x")], &[]));
    for (id, prio) in [(1, 8), (2, 2), (3, 8), (4, 2)] {
        assert!(m.add_request(&request(id, prio, &[("t", "x")]), t(1)));
    }
    let mut order = Vec::new();
    for round in 0..4 {
        m.worker_idle(wid(1), t(round));
        order.extend(drain(&mut m).into_iter().map(|(r, _)| r));
    }
    assert_eq!(order, vec![2, 4, 1, 3]);
}

#[test]
fn a_request_nobody_can_serve_now_does_not_block_later_ones() {
    let mut m = Matcher::new();
    m.register_worker(&worker(1, &[("t", "x")], &[]));
    m.register_worker(&worker(2, &[("t", "y")], &[]));
    m.worker_idle(wid(2), t(0));
    m.add_request(&request(1, 1, &[("t", "x")]), t(1));
    m.add_request(&request(2, 9, &[("t", "y")]), t(1));
    assert_eq!(drain(&mut m), vec![(2, 2)]);
}

#[test]
fn fewest_caps_plus_groups_then_least_recently_used_then_uuid() {
    let mut m = Matcher::new();
    m.register_worker(&worker(1, &[("t", "x"), ("sd", "yes")], &[]));
    m.register_worker(&worker(2, &[("t", "x")], &["lab"]));
    m.register_worker(&worker(3, &[("t", "x")], &[]));
    m.register_worker(&worker(4, &[("t", "x")], &[]));
    m.register_worker(&worker(5, &[("t", "x")], &[]));
    m.worker_idle(wid(1), t(0));
    m.worker_idle(wid(2), t(0));
    m.worker_idle(wid(3), t(5));
    m.worker_idle(wid(4), t(3));
    m.worker_idle(wid(5), t(3));
    let mut r = request(1, 8, &[("t", "x")]);
    r.groups = ["lab"].into_iter().collect();
    m.add_request(&r, t(1));
    // Workers 3, 4, 5 have one cap and no group: weight 1. 4 and 5 were
    // used longest ago; 4 has the lower UUID.
    assert_eq!(drain(&mut m), vec![(1, 4)]);
    for id in 2..=4 {
        m.add_request(&request(id, 8, &[("t", "x")]), t(1));
    }
    // Request 2 takes 5, request 3 takes 3. Request 4 cannot use 2 (not in
    // its group) and takes 1 (two caps) last.
    assert_eq!(drain(&mut m), vec![(2, 5), (3, 3), (4, 1)]);
}

#[test]
fn groups_restrict_workers() {
    let mut m = Matcher::new();
    m.register_worker(&worker(1, &[("t", "x")], &["lab-a"]));
    m.worker_idle(wid(1), t(0));
    let outsider = request(1, 1, &[("t", "x")]);
    assert!(!m.add_request(&outsider, t(1)), "no registered worker serves an outsider");
    assert_eq!(drain(&mut m), vec![]);
    let mut member = request(2, 8, &[("t", "x")]);
    member.groups = ["lab-a", "other"].into_iter().collect();
    assert!(m.add_request(&member, t(1)));
    assert_eq!(drain(&mut m), vec![(2, 1)]);
}

#[test]
fn uuid_cap_pins_a_worker() {
    let mut m = Matcher::new();
    m.register_worker(&worker(1, &[("t", "x")], &[]));
    m.register_worker(&worker(2, &[("t", "x")], &[]));
    m.worker_idle(wid(1), t(0));
    m.worker_idle(wid(2), t(0));
    let pinned = request(1, 8, &[("UUID", &wid(2).to_string())]);
    assert!(m.add_request(&pinned, t(1)));
    assert_eq!(drain(&mut m), vec![(1, 2)]);
    let wrong_caps = request(2, 8, &[("UUID", &wid(1).to_string()), ("t", "y")]);
    assert!(!m.add_request(&wrong_caps, t(1)));
    let unknown = request(3, 8, &[("UUID", &wid(9).to_string())]);
    assert!(!m.add_request(&unknown, t(1)));
    m.register_worker(&worker(9, &[], &[]));
    m.worker_idle(wid(9), t(0));
    assert_eq!(drain(&mut m), vec![(3, 9)]);
}

#[test]
fn a_pinned_request_the_worker_cannot_serve_does_not_block_the_next_one() {
    let mut m = Matcher::new();
    m.register_worker(&worker(1, &[("t", "x")], &[]));
    let unservable = request(1, 1, &[("UUID", &wid(1).to_string()), ("t", "y")]);
    assert!(!m.add_request(&unservable, t(1)));
    m.add_request(&request(2, 8, &[("UUID", &wid(1).to_string())]), t(1));
    m.worker_idle(wid(1), t(0));
    assert_eq!(drain(&mut m), vec![(2, 1)]);
    m.worker_idle(wid(1), t(2));
    assert_eq!(drain(&mut m), vec![]);
    assert_eq!(m.waiting_count(), 1);
}

#[test]
fn valid_after_hides_and_deadline_removes() {
    let mut m = Matcher::new();
    m.register_worker(&worker(1, &[("t", "x")], &[]));
    m.worker_idle(wid(1), t(0));
    let mut later = request(1, 1, &[("t", "x")]);
    later.valid_after = t(50);
    m.add_request(&later, t(10));
    let mut doomed = request(2, 1, &[("t", "nope")]);
    doomed.deadline = t(30);
    m.add_request(&doomed, t(10));
    assert_eq!(drain(&mut m), vec![]);
    assert_eq!(m.next_wakeup(), Some(t(30)));
    assert_eq!(m.tick(t(30)), vec![RequestId(2)]);
    assert_eq!(drain(&mut m), vec![]);
    assert_eq!(m.tick(t(50)), vec![]);
    assert_eq!(drain(&mut m), vec![(1, 1)]);
    assert_eq!(m.waiting_count(), 0);
}

#[test]
fn deregistering_the_last_capable_worker_returns_its_requests() {
    let mut m = Matcher::new();
    m.register_worker(&worker(1, &[("t", "x")], &[]));
    m.register_worker(&worker(2, &[("t", "x")], &[]));
    m.add_request(&request(1, 8, &[("t", "x")]), t(1));
    let mut later = request(2, 8, &[("t", "x")]);
    later.valid_after = t(1000);
    m.add_request(&later, t(1));
    m.add_request(&request(3, 8, &[("UUID", &wid(2).to_string())]), t(1));
    assert_eq!(m.deregister_worker(wid(2)), vec![RequestId(3)]);
    assert_eq!(m.deregister_worker(wid(1)), vec![RequestId(1), RequestId(2)]);
    assert_eq!(m.waiting_count(), 0);
}

#[test]
fn explain_counts_competitors_for_the_same_workers() {
    let mut m = Matcher::new();
    m.register_worker(&worker(1, &[("t", "x")], &[]));
    m.register_worker(&worker(2, &[("t", "x")], &["secret"]));
    m.register_worker(&worker(3, &[("t", "y")], &[]));
    m.add_request(&request(1, 8, &[("t", "x")]), t(1));
    m.add_request(&request(2, 8, &[("t", "y")]), t(1));
    m.add_request(&request(3, 4, &[("t", "x")]), t(1));
    m.add_request(&request(4, 8, &[("t", "x")]), t(1));
    let e = m.explain(RequestId(4)).unwrap();
    assert_eq!((e.position, e.competing), (3, 3));
    assert_eq!(e.candidates, vec![wid(1)]);
    assert_eq!(e.group_mismatch, vec![wid(2)]);
    assert!(e.visible);
}

// ----- property tests ------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    AddWorker {
        n: u8,
        caps: Vec<(u8, u8)>,
        groups: Vec<u8>,
    },
    /// Registers a registered worker again with new caps and groups.
    Reregister {
        n: u8,
        caps: Vec<(u8, u8)>,
        groups: Vec<u8>,
    },
    Idle {
        n: u8,
    },
    Busy {
        n: u8,
    },
    Deregister {
        n: u8,
    },
    Submit {
        priority: u8,
        caps: Vec<(u8, u8)>,
        groups: Vec<u8>,
        delay: u8,
        pin: Option<u8>,
        /// Decided on before it has an id (`match_new`), as the server
        /// does at submission.
        at_once: bool,
    },
    Cancel {
        nth: u8,
    },
    Advance {
        secs: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let cap = (0u8..3, 0u8..2);
    prop_oneof![
        (0u8..8, prop::collection::vec(cap.clone(), 0..3), prop::collection::vec(0u8..2, 0..2))
            .prop_map(|(n, caps, groups)| Op::AddWorker { n, caps, groups }),
        (0u8..8, prop::collection::vec(cap.clone(), 0..3), prop::collection::vec(0u8..2, 0..2))
            .prop_map(|(n, caps, groups)| Op::Reregister { n, caps, groups }),
        (0u8..8).prop_map(|n| Op::Idle { n }),
        (0u8..8).prop_map(|n| Op::Idle { n }),
        (0u8..8).prop_map(|n| Op::Busy { n }),
        (0u8..8).prop_map(|n| Op::Deregister { n }),
        (
            1u8..=16,
            prop::collection::vec(cap, 0..3),
            prop::collection::vec(0u8..2, 0..2),
            0u8..3,
            prop::option::weighted(0.1, 0u8..8),
            any::<bool>()
        )
            .prop_map(|(priority, caps, groups, delay, pin, at_once)| Op::Submit {
                priority,
                caps,
                groups,
                delay,
                pin,
                at_once
            }),
        (0u8..32).prop_map(|nth| Op::Cancel { nth }),
        (0u8..40).prop_map(|secs| Op::Advance { secs }),
    ]
}

fn to_caps(pairs: &[(u8, u8)]) -> Caps {
    pairs.iter().map(|(k, v)| (format!("k{k}"), format!("v{v}"))).collect()
}

fn to_groups(groups: &[u8]) -> Groups {
    groups.iter().map(|g| format!("g{g}")).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: crate::time::fuzz_cases().max(300), ..ProptestConfig::default() })]

    /// After every operation, the indexed matcher makes exactly the
    /// decisions of Boruta's exhaustive walk, in the same order; no worker
    /// is given to two live requests, no request to two workers, and every
    /// submitted request is accounted for (matched, waiting, cancelled,
    /// timed out or found unsatisfiable).
    #[test]
    fn same_decisions_as_the_exhaustive_walk_and_nothing_lost(ops in prop::collection::vec(op(), 1..80)) {
        let mut m = Matcher::new();
        let mut reference = BorutaMatcher::new();
        let mut now = t(0);
        let mut clock = 0u64;
        let mut registered: BTreeMap<u8, WorkerSpec> = BTreeMap::new();
        let mut busy_with: BTreeMap<WorkerId, RequestId> = BTreeMap::new();
        let mut submitted: Vec<RequestId> = Vec::new();
        let mut matched: BTreeSet<RequestId> = BTreeSet::new();
        let mut ended: BTreeSet<RequestId> = BTreeSet::new();
        let mut next_id = 1i64;
        for op in ops {
            match op {
                Op::AddWorker { n, caps, groups } => {
                    if registered.contains_key(&n) { continue; }
                    let spec = WorkerSpec { id: wid(u128::from(n) + 1), caps: to_caps(&caps), groups: to_groups(&groups) };
                    prop_assert!(m.register_worker(&spec).is_empty());
                    reference.add_worker(spec.clone());
                    registered.insert(n, spec);
                }
                Op::Reregister { n, caps, groups } => {
                    let Some(spec) = registered.get_mut(&n) else { continue };
                    *spec = WorkerSpec { id: spec.id, caps: to_caps(&caps), groups: to_groups(&groups) };
                    let lost = m.register_worker(spec);
                    reference.replace_worker(spec.clone());
                    for r in &lost {
                        reference.remove_request(*r);
                        prop_assert!(ended.insert(*r));
                    }
                    let waiting: Vec<RequestId> = reference.waiting().collect();
                    prop_assert_eq!(waiting.len(), m.waiting_count());
                }
                Op::Idle { n } => {
                    let Some(spec) = registered.get(&n) else { continue };
                    busy_with.remove(&spec.id);
                    clock += 1;
                    m.worker_idle(spec.id, t(clock));
                    reference.worker_idle(spec.id, t(clock));
                }
                Op::Busy { n } => {
                    let Some(spec) = registered.get(&n) else { continue };
                    m.worker_unavailable(spec.id);
                    reference.worker_unavailable(spec.id);
                }
                Op::Deregister { n } => {
                    let Some(spec) = registered.remove(&n) else { continue };
                    busy_with.remove(&spec.id);
                    let lost = m.deregister_worker(spec.id);
                    reference.remove_worker(spec.id);
                    for r in &lost {
                        reference.remove_request(*r);
                        prop_assert!(ended.insert(*r));
                    }
                    // Whatever is still waiting must remain servable.
                    let waiting: Vec<RequestId> = reference.waiting().collect();
                    prop_assert_eq!(waiting.len(), m.waiting_count());
                }
                Op::Submit { priority, caps, groups, delay, pin, at_once } => {
                    let mut caps = to_caps(&caps);
                    if let Some(p) = pin { caps.insert("UUID", wid(u128::from(p) + 1).to_string()); }
                    let spec = RequestSpec {
                        id: RequestId(next_id),
                        priority: Priority::try_from(i64::from(priority)).unwrap(),
                        caps,
                        groups: to_groups(&groups),
                        valid_after: now + Duration::from_secs(u64::from(delay) * 10),
                        deadline: now + Duration::from_secs(60),
                    };
                    next_id += 1;
                    let servable = m.can_ever_serve(&spec.caps, &spec.groups);
                    let brute = registered.values().any(|w| spec.caps.satisfied_by(w.id, &w.caps) && spec.groups.may_use(&w.groups));
                    prop_assert_eq!(servable, brute);
                    if !servable { continue; }
                    let decided = if at_once { m.match_new(&spec, now) } else { None };
                    reference.add_request(spec.clone());
                    submitted.push(spec.id);
                    match decided {
                        // Exactly the worker the walk gives it, now.
                        Some(worker) => {
                            let theirs = reference.next_match(now);
                            prop_assert_eq!(theirs, Some(Assignment { request: spec.id, worker }));
                            prop_assert!(busy_with.insert(worker, spec.id).is_none(), "worker {} leased twice", worker);
                            prop_assert!(matched.insert(spec.id));
                        }
                        None => {
                            if at_once {
                                // Nothing for it now, so nothing for anyone.
                                prop_assert_eq!(reference.next_match(now), None);
                            }
                            prop_assert!(m.add_request(&spec, now));
                        }
                    }
                }
                Op::Cancel { nth } => {
                    let Some(id) = submitted.get(usize::from(nth)) else { continue };
                    if m.remove_request(*id) {
                        reference.remove_request(*id);
                        prop_assert!(ended.insert(*id));
                    }
                }
                Op::Advance { secs } => {
                    now += Duration::from_secs(u64::from(secs));
                    for r in m.tick(now) {
                        reference.remove_request(r);
                        prop_assert!(ended.insert(r));
                    }
                }
            }
            m.check_invariants();
            let ours: Vec<Assignment> = std::iter::from_fn(|| m.next_match()).collect();
            m.check_invariants();
            let theirs: Vec<Assignment> = std::iter::from_fn(|| reference.next_match(now)).collect();
            prop_assert_eq!(&ours, &theirs);
            for spec in registered.values() {
                prop_assert_eq!(m.is_idle(spec.id), reference.is_idle(spec.id), "is worker {} idle?", spec.id);
            }
            for a in ours {
                prop_assert!(busy_with.insert(a.worker, a.request).is_none(), "worker {} leased twice", a.worker);
                prop_assert!(matched.insert(a.request), "request {} matched twice", a.request);
                prop_assert!(!ended.contains(&a.request));
            }
        }
        // Nothing lost: every submitted request is matched, ended, or still waiting.
        let waiting: BTreeSet<RequestId> = reference.waiting().collect();
        for id in submitted {
            let places = usize::from(matched.contains(&id)) + usize::from(ended.contains(&id)) + usize::from(waiting.contains(&id));
            prop_assert_eq!(places, 1, "request {} is in {} places", id, places);
        }
        prop_assert_eq!(waiting.len(), m.waiting_count());
        // Once every request and worker left, nothing is kept.
        for id in waiting {
            m.remove_request(id);
        }
        for spec in registered.values() {
            m.deregister_worker(spec.id);
        }
        m.check_invariants();
        prop_assert_eq!(m.sizes(), MatcherSizes::default());
    }
}

/// Issue 13, class 2: refused and finished requests with caps never seen
/// before leave nothing behind; the matcher's sizes come back to what they
/// were.
#[test]
fn class2_refused_and_finished_requests_leave_nothing_behind() {
    let mut m = Matcher::new();
    m.register_worker(&worker(1, &[("device_type", "rpi4")], &[]));
    m.register_worker(&worker(2, &[("device_type", "rpi4"), ("usb", "yes")], &["lab"]));
    m.worker_idle(wid(2), t(0));
    m.add_request(&request(1, 8, &[("device_type", "rpi4")]), t(0));
    let before = m.sizes();
    let mut next = 100;
    for n in 0..500 {
        let unseen = format!("value-{n}");
        let big: Vec<(String, String)> = (0..64).map(|k| (format!("cap-{k}"), format!("{unseen}-{k}"))).collect();
        let big: Caps = big.into_iter().collect();
        // Refused at submission: nobody offers it.
        assert!(!m.can_ever_serve(&big, &Groups::new()));
        // Accepted anyway (allow_unsatisfiable), then cancelled.
        let spec = RequestSpec { caps: big.clone(), ..request(next, 8, &[]) };
        next += 1;
        m.add_request(&spec, t(0));
        assert!(m.remove_request(spec.id));
        // Matched at once, then its worker comes back.
        let spec = RequestSpec {
            caps: caps(&[("usb", "yes")]),
            groups: ["lab"].into_iter().collect(),
            ..request(next, 8, &[])
        };
        next += 1;
        assert_eq!(m.match_new(&spec, t(0)), Some(wid(2)));
        m.worker_idle(wid(2), t(n + 1));
        // Timed out.
        let spec = RequestSpec { deadline: t(1), ..spec };
        m.add_request(&RequestSpec { id: RequestId(next), caps: caps(&[("unseen", &unseen)]), ..spec }, t(0));
        next += 1;
        m.check_invariants();
    }
    let expired = m.tick(t(10));
    assert_eq!(expired.len(), 500);
    // A worker that re-registers with new caps leaves its old class.
    m.register_worker(&worker(3, &[("device_type", "rpi5"), ("extra", "1")], &[]));
    m.register_worker(&worker(3, &[("device_type", "rpi5"), ("extra", "2")], &[]));
    m.deregister_worker(wid(3));
    m.check_invariants();
    assert_eq!(m.sizes(), before);
    assert!(m.has_request(RequestId(1)));
}

#[test]
fn sources_survive_packing_in_order() {
    let sources = [
        Source::Class(0, 0),
        Source::Class(0, 7),
        Source::Class(3, 1),
        Source::Class((1 << 31) - 1, (1 << 31) - 1),
        Source::Pinned(0),
        Source::Pinned(u32::MAX),
        Source::Sig(0),
        Source::Sig((1 << 31) - 1),
    ];
    for pair in sources.windows(2) {
        assert!(pair[0].pack() < pair[1].pack(), "{pair:?} must keep its order once packed");
    }
    for source in sources {
        assert_eq!(Source::unpack(source.pack()), source);
    }
}

#[test]
fn what_a_decision_reads_of_a_signature_is_one_pair_of_cache_lines() {
    use std::mem::{align_of, offset_of, size_of};
    assert_eq!((size_of::<Sig>(), align_of::<Sig>()), (128, 128));
    assert_eq!(offset_of!(Sig, served_by), 0);
    assert!(offset_of!(Sig, members) < 64, "the count shares the first line");
}

/// CockroachDB's `unique_rowid()` gives ids near 2^62: they must keep
/// their order (priority first, then id) in small queues and in the large
/// per-priority lanes, and come out of the matcher unchanged.
#[test]
fn ids_near_two_to_the_62_keep_their_order_and_value() {
    const BASE: i64 = 1 << 62;
    for waiting in [4_i64, 40] {
        let mut m = Matcher::new();
        m.register_worker(&worker(1, &[("t", "x")], &[]));
        let mut expected = Vec::new();
        for i in 0..waiting {
            // Alternate priorities; ids spread above and below 2^62 and up
            // to i64::MAX - 2.
            let id = if i % 3 == 0 { i64::MAX - 2 - i } else { BASE + i * 1_000_003 };
            let prio = if i % 2 == 0 { 2 } else { 9 };
            assert!(m.add_request(&request(id, prio, &[("t", "x")]), t(1)), "request {id} is new");
            expected.push((prio, id));
        }
        expected.sort();
        let mut order = Vec::new();
        for round in 0..waiting as u64 {
            m.worker_idle(wid(1), t(round + 2));
            let matched = drain(&mut m);
            assert_eq!(matched.len(), 1, "one match per idle round with {waiting} waiting");
            order.push(matched[0].0);
        }
        assert_eq!(order, expected.iter().map(|(_, id)| *id).collect::<Vec<_>>(), "{waiting} waiting");
    }
}
