//! The matcher's two ordered queues, kept in flat ring buffers rather than
//! balanced trees: the waiting requests of one signature
//! ([`RequestQueue`]) and the idle workers of one class ([`IdleQueue`]).
//!
//! Both are almost always appended to at the back and taken from the
//! front: request ids grow with submission, so within one priority a new
//! request is the latest; a worker that becomes idle is the most recently
//! used of its class. An insertion out of order (a request added late, a
//! worker idle since an earlier time) falls back to a binary search and a
//! shift. In a large queue, a removal from the middle leaves a tombstone
//! (the entry stays, marked removed, so the order and the binary search
//! still hold); the front entry of a queue is never a tombstone, and
//! tombstones are dropped once they reach the front or outnumber the live
//! entries. A small request queue (the common case) removes at once.

use std::collections::VecDeque;

use crate::ids::{RequestId, WorkerId};
use crate::priority::Priority;

use super::{EMPTY, ID_MASK, PackedKey, QueueKey};

/// Priorities 1 to 16, one lane each.
const LANES: usize = 16;

/// Set on a request lane entry whose request left the queue. Ids are below
/// 2^63 (see [`ID_MASK`]), so the bit is free.
const REMOVED: u64 = 1 << 63;

/// Tombstones tolerated beyond the live entries before a compaction.
const SLACK: usize = 64;

/// Waiting requests of one signature in key order.
///
/// Most signatures have a few waiting requests: they are kept as one
/// sorted ring of [packed](super::packed) keys, whose 32-byte header sits
/// in the signature's first cache line (see `Sig`), so that taking the
/// first request reads that line and the ring's. A queue that grows past
/// [`SMALL`] entries moves to [`Lanes`], where an insertion costs O(1) for
/// any mix of priorities (in one sorted ring, a burst of high-priority
/// requests behind many low-priority ones would shift them all).
#[derive(Debug)]
pub(super) enum RequestQueue {
    Small(VecDeque<PackedKey>),
    Lanes(Box<Lanes>),
}

/// The most entries a [`RequestQueue::Small`] holds.
const SMALL: usize = 32;

impl Default for RequestQueue {
    fn default() -> RequestQueue {
        RequestQueue::Small(VecDeque::new())
    }
}

impl RequestQueue {
    pub(super) fn len(&self) -> usize {
        match self {
            RequestQueue::Small(keys) => keys.len(),
            RequestQueue::Lanes(lanes) => lanes.len(),
        }
    }

    /// The first key, [packed](super::packed); [`EMPTY`] when the queue is
    /// empty.
    pub(super) fn first_packed(&self) -> PackedKey {
        match self {
            RequestQueue::Small(keys) => keys.front().copied().unwrap_or(EMPTY),
            RequestQueue::Lanes(lanes) => lanes.first_packed(),
        }
    }

    pub(super) fn insert(&mut self, key: QueueKey) {
        let keys = match self {
            RequestQueue::Small(keys) => keys,
            RequestQueue::Lanes(lanes) => return lanes.insert(key),
        };
        let packed = super::packed(key);
        match keys.back() {
            Some(&last) if last >= packed => {
                let at = keys.partition_point(|entry| *entry < packed);
                if keys.get(at) == Some(&packed) {
                    return;
                }
                keys.insert(at, packed);
            }
            _ => keys.push_back(packed),
        }
        if keys.len() > SMALL {
            let mut lanes = Box::<Lanes>::default();
            for entry in keys.drain(..) {
                lanes.insert(super::unpacked(entry));
            }
            *self = RequestQueue::Lanes(lanes);
        }
    }

    /// Returns false when the key was not queued.
    pub(super) fn remove(&mut self, key: QueueKey) -> bool {
        let lanes = match self {
            RequestQueue::Small(keys) => {
                let packed = super::packed(key);
                if keys.front() == Some(&packed) {
                    keys.pop_front();
                    return true;
                }
                let at = keys.partition_point(|entry| *entry < packed);
                return keys.get(at) == Some(&packed) && keys.remove(at).is_some();
            }
            RequestQueue::Lanes(lanes) => lanes,
        };
        let removed = lanes.remove(key);
        if lanes.len() == 0 {
            // Back to the small form, and the lanes' memory is freed.
            *self = RequestQueue::default();
        }
        removed
    }

    /// How many queued keys come before `key`.
    pub(super) fn count_before(&self, key: QueueKey) -> usize {
        match self {
            RequestQueue::Small(keys) => keys.partition_point(|entry| *entry < super::packed(key)),
            RequestQueue::Lanes(lanes) => lanes.count_before(key),
        }
    }

    /// The first key, unpacked.
    #[cfg(test)]
    pub(super) fn first(&self) -> Option<QueueKey> {
        let first = self.first_packed();
        (first != EMPTY).then(|| super::unpacked(first))
    }
}

/// A large queue: one lane per priority, each lane in id order, appended
/// to in O(1) whatever the mix of priorities. The first request is the
/// front of the first non-empty lane.
#[derive(Debug, Default)]
pub(super) struct Lanes {
    live: u32,
    tombstones: u32,
    /// Bit `i` is set when lane `i` holds a live entry (then its front).
    occupied: u16,
    /// Request ids, with [`REMOVED`] set on tombstones.
    lanes: [VecDeque<u64>; LANES],
}

fn lane_of(priority: Priority) -> usize {
    usize::from(priority.get()) - 1
}

fn id_bits(id: RequestId) -> u64 {
    id.0 as u64 & ID_MASK
}

impl Lanes {
    fn len(&self) -> usize {
        self.live as usize
    }

    /// The first key, [packed](super::packed); [`EMPTY`] when the queue is
    /// empty.
    fn first_packed(&self) -> PackedKey {
        if self.occupied == 0 {
            return EMPTY;
        }
        let lane = self.occupied.trailing_zeros() as usize;
        match self.lanes[lane].front() {
            Some(&id) => ((lane as PackedKey + 1) << 64) | PackedKey::from(id),
            None => EMPTY,
        }
    }

    fn insert(&mut self, key: QueueKey) {
        let lane_index = lane_of(key.0);
        let id = id_bits(key.1);
        let lane = &mut self.lanes[lane_index];
        match lane.back() {
            Some(&last) if last & ID_MASK >= id => {
                let at = lane.partition_point(|entry| entry & ID_MASK < id);
                if let Some(entry) = lane.get_mut(at)
                    && *entry & ID_MASK == id
                {
                    if *entry & REMOVED == 0 {
                        return;
                    }
                    *entry = id;
                    self.tombstones -= 1;
                } else {
                    lane.insert(at, id);
                }
            }
            _ => lane.push_back(id),
        }
        self.live += 1;
        self.occupied |= 1 << lane_index;
    }

    /// Returns false when the key was not queued.
    fn remove(&mut self, key: QueueKey) -> bool {
        let lane_index = lane_of(key.0);
        let id = id_bits(key.1);
        let lane = &mut self.lanes[lane_index];
        if lane.front() == Some(&id) {
            lane.pop_front();
            while lane.front().is_some_and(|entry| entry & REMOVED != 0) {
                lane.pop_front();
                self.tombstones -= 1;
            }
            if lane.is_empty() {
                self.occupied &= !(1 << lane_index);
            }
        } else {
            let at = lane.partition_point(|entry| entry & ID_MASK < id);
            match lane.get_mut(at) {
                Some(entry) if *entry == id => *entry |= REMOVED,
                _ => return false,
            }
            self.tombstones += 1;
        }
        self.live -= 1;
        if self.tombstones as usize > self.live as usize + SLACK {
            for lane in &mut self.lanes {
                lane.retain(|entry| entry & REMOVED == 0);
            }
            self.tombstones = 0;
        }
        true
    }

    /// How many queued keys come before `key`.
    fn count_before(&self, key: QueueKey) -> usize {
        let lane_index = lane_of(key.0);
        let id = id_bits(key.1);
        let live = |entry: &&u64| **entry & REMOVED == 0;
        let earlier_lanes: usize = self.lanes[..lane_index].iter().map(|lane| lane.iter().filter(live).count()).sum();
        earlier_lanes + self.lanes[lane_index].iter().take_while(|entry| **entry & ID_MASK < id).filter(live).count()
    }
}

/// Idle workers of one class, least recently used first, then lowest id.
#[derive(Debug, Default)]
pub(super) struct IdleQueue {
    entries: VecDeque<IdleEntry>,
    tombstones: usize,
}

#[derive(Clone, Copy, Debug)]
struct IdleEntry {
    since: u64,
    worker: WorkerId,
    removed: bool,
}

impl IdleEntry {
    fn key(&self) -> (u64, WorkerId) {
        (self.since, self.worker)
    }
}

impl IdleQueue {
    /// The least recently used idle worker.
    pub(super) fn first(&self) -> Option<(u64, WorkerId)> {
        self.entries.front().map(IdleEntry::key)
    }

    /// Whether the worker waits here since `since`.
    pub(super) fn contains(&self, since: u64, worker: WorkerId) -> bool {
        let key = (since, worker);
        let at = self.entries.partition_point(|entry| entry.key() < key);
        self.entries.get(at).is_some_and(|entry| entry.key() == key && !entry.removed)
    }

    pub(super) fn insert(&mut self, since: u64, worker: WorkerId) {
        let key = (since, worker);
        let fresh = IdleEntry { since, worker, removed: false };
        match self.entries.back() {
            Some(last) if last.key() >= key => {
                let at = self.entries.partition_point(|entry| entry.key() < key);
                if let Some(entry) = self.entries.get_mut(at)
                    && entry.key() == key
                {
                    if entry.removed {
                        *entry = fresh;
                        self.tombstones -= 1;
                    }
                } else {
                    self.entries.insert(at, fresh);
                }
            }
            _ => self.entries.push_back(fresh),
        }
    }

    pub(super) fn remove(&mut self, since: u64, worker: WorkerId) {
        let key = (since, worker);
        if self.entries.front().is_some_and(|entry| entry.key() == key) {
            self.entries.pop_front();
            while self.entries.front().is_some_and(|entry| entry.removed) {
                self.entries.pop_front();
                self.tombstones -= 1;
            }
            return;
        }
        let at = self.entries.partition_point(|entry| entry.key() < key);
        if let Some(entry) = self.entries.get_mut(at)
            && entry.key() == key
            && !entry.removed
        {
            entry.removed = true;
            self.tombstones += 1;
            if self.tombstones > self.entries.len() - self.tombstones + SLACK {
                self.entries.retain(|entry| !entry.removed);
                self.tombstones = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use uuid::Uuid;

    use super::super::packed;
    use super::*;

    fn key(priority: i64, id: i64) -> QueueKey {
        (Priority::try_from(priority).unwrap(), RequestId(id))
    }

    #[test]
    fn requests_come_out_in_key_order_whatever_the_insertion_order() {
        let mut queue = RequestQueue::default();
        for (priority, id) in [(8, 5), (8, 2), (3, 9), (16, 1), (8, 7), (3, 4)] {
            queue.insert(key(priority, id));
        }
        assert_eq!(queue.len(), 6);
        assert_eq!(queue.count_before(key(8, 5)), 3);
        let mut order = Vec::new();
        while let Some(first) = queue.first() {
            assert_eq!(queue.first_packed(), packed(first));
            assert!(queue.remove(first));
            order.push((first.0.get(), first.1.0));
        }
        assert_eq!(order, vec![(3, 4), (3, 9), (8, 2), (8, 5), (8, 7), (16, 1)]);
        assert_eq!(queue.first_packed(), EMPTY);
    }

    #[test]
    fn removal_from_the_middle_leaves_a_tombstone_that_can_be_revived() {
        let mut queue = RequestQueue::default();
        for id in 1..=5 {
            queue.insert(key(8, id));
        }
        assert!(queue.remove(key(8, 3)));
        assert!(!queue.remove(key(8, 3)), "already gone");
        assert!(!queue.remove(key(7, 2)), "never queued with that priority");
        assert_eq!((queue.len(), queue.count_before(key(8, 5))), (4, 3));
        assert!(queue.remove(key(8, 1)));
        assert!(queue.remove(key(8, 2)));
        // The tombstone of 3 is dropped with 2: 4 is first.
        assert_eq!(queue.first(), Some(key(8, 4)));
        queue.insert(key(8, 3));
        assert_eq!(queue.first(), Some(key(8, 3)));
        assert!(queue.remove(key(8, 4)));
        queue.insert(key(8, 4));
        assert_eq!(queue.len(), 3);
        // Many removals from the middle trigger a compaction.
        for id in 100..400 {
            queue.insert(key(8, id));
        }
        for id in 101..400 {
            assert!(queue.remove(key(8, id)));
        }
        assert_eq!(queue.len(), 4);
        assert_eq!(queue.count_before(key(8, 100)), 3);
    }

    #[test]
    fn a_growing_queue_moves_to_lanes_and_back_when_empty() {
        let mut queue = RequestQueue::default();
        let keys: Vec<QueueKey> = (1..=40).map(|id| key(16 - id % 16, id)).collect();
        for k in &keys {
            queue.insert(*k);
        }
        assert!(matches!(queue, RequestQueue::Lanes(_)), "40 entries are more than {SMALL}");
        assert_eq!(queue.first(), Some(key(1, 15)));
        for k in &keys {
            assert!(queue.remove(*k));
        }
        assert!(matches!(queue, RequestQueue::Small(_)), "an emptied queue frees its lanes");
        assert_eq!(queue.first_packed(), EMPTY);
    }

    proptest::proptest! {
        /// Whatever the sequence of insertions and removals, across the
        /// switch between the small form and the lanes and back, the queue
        /// agrees with an ordered set.
        #[test]
        fn request_queue_behaves_like_an_ordered_set(
            ops in proptest::collection::vec((proptest::bool::weighted(0.6), 1i64..=16, 1i64..120), 1..400)
        ) {
            let mut queue = RequestQueue::default();
            let mut model = std::collections::BTreeSet::new();
            for (insert, priority, id) in ops {
                let k = key(priority, id);
                if insert {
                    queue.insert(k);
                    model.insert(k);
                } else {
                    proptest::prop_assert_eq!(queue.remove(k), model.remove(&k));
                }
                proptest::prop_assert_eq!(queue.len(), model.len());
                proptest::prop_assert_eq!(queue.first(), model.first().copied());
                proptest::prop_assert_eq!(queue.count_before(k), model.range(..k).count());
            }
        }
    }

    #[test]
    fn idle_workers_come_out_least_recently_used_then_lowest_id() {
        let worker = |n| WorkerId(Uuid::from_u128(n));
        let mut idle = IdleQueue::default();
        for (since, n) in [(5, 1), (3, 9), (3, 2), (7, 4), (1, 8)] {
            idle.insert(since, worker(n));
        }
        assert!(idle.contains(3, worker(9)));
        idle.remove(3, worker(9));
        idle.remove(3, worker(9));
        assert!(!idle.contains(3, worker(9)), "removed");
        idle.remove(4, worker(4));
        assert!(idle.contains(7, worker(4)), "not waiting since 4: nothing removed");
        assert!(!idle.contains(4, worker(4)));
        let mut order = Vec::new();
        while let Some((since, w)) = idle.first() {
            idle.remove(since, w);
            order.push(w.0.as_u128());
        }
        assert_eq!(order, vec![8, 2, 1, 4]);
    }
}
