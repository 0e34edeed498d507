//! The matcher: which waiting request gets which idle worker (SPEC §3).
//!
//! Order: priority ascending, then submission order (request ids grow with
//! submission). A request that no idle worker can serve does not block later
//! ones. Among the workers that can serve a request, the one with the fewest
//! caps plus groups wins, then the least recently used, then the lowest UUID.
//!
//! # How one decision avoids scanning every worker
//!
//! Workers with the same caps and groups are interchangeable except for
//! their last use, so they are kept together in a *class*, whose idle
//! members wait in a queue, least recently used first. Requests with the
//! same caps and requester groups share a *signature*, whose waiting
//! requests wait in a queue with one lane per priority, each in submission
//! order. Both queues are flat ring buffers, appended to at the back and
//! taken from the front in the common case (see `queues`). The "can serve"
//! relation is kept between classes and signatures (both few), updated only
//! when a new class or signature appears.
//!
//! The matcher keeps one invariant between calls: no waiting, visible
//! request can be served by an idle worker. Only two things can break it: a
//! request becomes visible (new, updated, or its `valid_after` passed), or a
//! worker becomes idle. Each pushes an entry to a heap of *peeks*, keyed by
//! the first request its source could serve: the request's signature (if
//! some idle worker serves it), its pinned worker (for a `UUID` cap), or the
//! idle worker's class (the first request among the signatures it serves).
//! A decision pops the earliest entry; an entry that went stale (its
//! request left, or its source has no idle worker) is pushed again with its
//! source's current first request, or dropped. Its cost depends on the
//! number of classes and signatures involved, not on the number of workers
//! or requests.
//!
//! # Memory
//!
//! Interned caps, classes and signatures live exactly as long as something
//! uses them: a signature is freed when its last request leaves, a class
//! when its last worker leaves, an interned cap when no class or signature
//! holds it (a reference count per cap). Freed indexes are reused. Entries
//! of `peeks` that name a freed (or reused) class or signature are checked
//! against the current state when they come up, like any stale entry, so
//! freeing costs nothing on the path of a decision beyond the request that
//! leaves. Asking whether a request could ever be served
//! ([`Matcher::can_ever_serve`]) creates nothing, so a refused submission
//! leaves nothing behind ([`Matcher::sizes`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::SystemTime;

use crate::caps::{Caps, Groups, UUID_CAP};
use crate::ids::{RequestId, WorkerId};
use crate::priority::Priority;
use queues::{IdleQueue, RequestQueue};
use smallvec::SmallVec;

/// FxHash (rotate, xor, multiply): a fast hasher for the matcher's maps,
/// keyed by server-assigned request ids and worker UUIDs. Not resistant to
/// crafted collisions; the keys do not come from anonymous clients.
#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_i64(&mut self, value: i64) {
        self.write_u64(value as u64);
    }

    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// A time as nanoseconds since the Unix epoch, clamped to `0..=u64::MAX`
/// (1970 to 2554): the clamping keeps the order, and a time outside that
/// range is either long past or never comes.
fn nanos(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn time_of(nanos: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(nanos)
}

/// A queue key in one integer with the same order: priority above bit 64,
/// the request id (any non-negative `i64`, up to 2^63 - 1) in the low 64
/// bits. Ids are not assumed small: CockroachDB's `unique_rowid()` gives
/// ids near 2^62, so the key is 128 bits wide rather than squeezing the id
/// under the priority in 64.
pub(crate) type PackedKey = u128;

fn packed(key: QueueKey) -> PackedKey {
    (PackedKey::from(key.0.get()) << 64) | PackedKey::from(key.1.0 as u64 & ID_MASK)
}

fn unpacked(value: PackedKey) -> QueueKey {
    let priority = Priority::try_from((value >> 64) as i64).unwrap_or_default();
    (priority, request_of(value))
}

fn request_of(value: PackedKey) -> RequestId {
    RequestId((value as u64 & ID_MASK) as i64)
}

/// The bits of a request id: ids are non-negative, so the top bit of a
/// `u64` is free (the queues mark removed entries with it).
const ID_MASK: u64 = (1 << 63) - 1;
/// The id [`Matcher::match_new`] gives a request for the moment it is
/// decided on: after every real one (a sequence would reach it only with
/// its very last value).
const NEW_REQUEST: RequestId = RequestId(i64::MAX);
const EMPTY: PackedKey = PackedKey::MAX;

/// Position of a waiting request in the global order.
pub type QueueKey = (Priority, RequestId);

type CapId = u32;
type ClassIdx = usize;
type SigIdx = usize;
/// A worker's slot in `Matcher::pin_states`.
type Slot = u32;

/// A worker as the matcher sees it.
#[derive(Clone, Debug)]
pub struct WorkerSpec {
    pub id: WorkerId,
    pub caps: Caps,
    pub groups: Groups,
}

/// A waiting request as the matcher sees it.
#[derive(Clone, Debug)]
pub struct RequestSpec {
    pub id: RequestId,
    pub priority: Priority,
    pub caps: Caps,
    /// The requester's groups.
    pub groups: Groups,
    pub valid_after: SystemTime,
    pub deadline: SystemTime,
}

/// One decision: `request` gets `worker`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub request: RequestId,
    pub worker: WorkerId,
}

/// Why a request is still waiting, as far as the matcher knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// 1-based position among the visible waiting requests that compete for
    /// the same workers (1 = next to be served).
    pub position: usize,
    /// How many visible waiting requests compete for those workers.
    pub competing: usize,
    /// False while `valid_after` is in the future.
    pub visible: bool,
    /// Workers whose caps match and whose groups allow the requester.
    pub candidates: Vec<WorkerId>,
    /// Workers whose caps match but whose groups exclude the requester.
    pub group_mismatch: Vec<WorkerId>,
}

#[derive(Debug)]
struct Class {
    /// False once freed (its index waits in `Matcher::free_classes`).
    live: bool,
    caps: Vec<CapId>,
    groups: Groups,
    /// Caps plus groups: fewer wins.
    weight: usize,
    members: BTreeSet<WorkerId>,
    idle: IdleQueue,
    serves: Vec<SigIdx>,
    /// `heads[i]` is the first request of `serves[i]` (`sig_heads`), kept
    /// here too so that finding the first request the class could serve
    /// scans one contiguous array.
    heads: Vec<PackedKey>,
    in_heap: bool,
}

/// The state of a signature a decision reads and writes, laid out for the
/// cache: 128 bytes, aligned, so that it is one pair of lines (which the
/// processor fetches together), with room for the classes serving most
/// signatures inline. Its caps and groups are apart, in `SigKey`.
#[derive(Debug)]
#[repr(C, align(128))]
struct Sig {
    served_by: SmallVec<[Served; 5]>,
    /// All requests of this signature, visible or not.
    members: usize,
    queue: RequestQueue,
}

/// What a signature's requests ask for.
#[derive(Debug)]
struct SigKey {
    /// False once freed (its index waits in `Matcher::free_sigs`).
    live: bool,
    caps: Vec<CapId>,
    groups: Groups,
}

/// A class that serves a signature, and the signature's position in the
/// class's `serves` (and `heads`).
#[derive(Clone, Copy, Debug)]
struct Served {
    class: u32,
    at: u32,
}

impl Served {
    fn class(self) -> ClassIdx {
        self.class as ClassIdx
    }
}

/// The idle worker a decision takes, with where it waits in the idle
/// queues: taking it needs no lookup.
#[derive(Clone, Copy, Debug)]
struct Chosen {
    class: ClassIdx,
    since: u64,
    worker: WorkerId,
}

/// `WorkerEntry::since` of a worker that is not idle.
const NOT_IDLE: u64 = u64::MAX;

/// An idle time as the idle queues keep it: [`nanos`], below `NOT_IDLE`.
fn idle_nanos(time: SystemTime) -> u64 {
    nanos(time).min(NOT_IDLE - 1)
}

/// A registered worker: 16 bytes, so that a bucket of the worker map is 32
/// bytes and a worker coming back to idle costs one cache line of it.
#[derive(Clone, Copy, Debug)]
struct WorkerEntry {
    /// When the worker last became idle ([`idle_nanos`]); `NOT_IDLE` once
    /// it was made unavailable. A decision that takes the worker leaves
    /// this entry alone (it does not even read it): the worker is idle only
    /// while its class's idle queue also holds it (`Matcher::idle_since`).
    since: u64,
    class: u32,
    slot: Slot,
}

/// The requests pinned to one worker, in the worker's slot, apart from its
/// entry: few workers have any.
#[derive(Debug)]
struct PinState {
    worker: WorkerId,
    /// Visible waiting requests pinned to this worker by a `UUID` cap,
    /// with their signatures.
    pinned: BTreeMap<QueueKey, SigIdx>,
    /// The [`packed`] key of this worker's latest entry in `peeks`, `EMPTY`
    /// when it has none; older entries are stale.
    peek_key: PackedKey,
}

impl PinState {
    fn new(worker: WorkerId) -> PinState {
        PinState { worker, pinned: BTreeMap::new(), peek_key: EMPTY }
    }
}

/// 24 bytes, so that a bucket of the request map (the matcher's largest
/// structure) is 32 bytes and never straddles two cache lines. Times are
/// [`nanos`]; the pinned worker, if any, is in `Matcher::pins`.
#[derive(Debug)]
struct RequestEntry {
    deadline: u64,
    valid_after: u64,
    sig: u32,
    priority: Priority,
    visible: bool,
    pinned: bool,
}

const _: () = assert!(std::mem::size_of::<RequestEntry>() == 24);

impl RequestEntry {
    fn key(&self, id: RequestId) -> QueueKey {
        (self.priority, id)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    /// A class that got an idle worker, with the signature whose first
    /// request was the earliest the class could serve.
    Class(ClassIdx, SigIdx),
    /// A worker (its slot) with requests pinned to it.
    Pinned(Slot),
    /// A signature that got a new visible request.
    Sig(SigIdx),
}

/// A [`Source`] in one integer, so that an entry of `peeks` is 16 bytes:
/// the variant in the top two bits (in the enum's order), then its fields
/// (class and signature indexes in 31 bits each: far more classes and
/// signatures than fit in memory).
type PackedSource = u64;

const FIELD: u64 = (1 << 31) - 1;

impl Source {
    fn pack(self) -> PackedSource {
        match self {
            Source::Class(class, sig) => ((class as u64 & FIELD) << 31) | (sig as u64 & FIELD),
            Source::Pinned(slot) => (1 << 62) | u64::from(slot),
            Source::Sig(sig) => (2 << 62) | (sig as u64 & FIELD),
        }
    }

    fn unpack(packed: PackedSource) -> Source {
        match packed >> 62 {
            0 => Source::Class(((packed >> 31) & FIELD) as ClassIdx, (packed & FIELD) as SigIdx),
            1 => Source::Pinned(packed as Slot),
            _ => Source::Sig((packed & FIELD) as SigIdx),
        }
    }
}

/// The in-memory matching state. See the module documentation.
#[derive(Debug, Default)]
pub struct Matcher {
    cap_ids: HashMap<Arc<(String, String)>, CapId>,
    /// Indexed by [`CapId`]: the interned pair (`None` once freed) and how
    /// many classes and signatures hold it.
    cap_entries: Vec<CapEntry>,
    free_caps: Vec<CapId>,
    free_classes: Vec<ClassIdx>,
    free_sigs: Vec<SigIdx>,
    classes: Vec<Class>,
    class_index: HashMap<(Vec<CapId>, Groups), ClassIdx>,
    classes_with_cap: HashMap<CapId, Vec<ClassIdx>>,
    sigs: Vec<Sig>,
    sig_keys: Vec<SigKey>,
    sig_index: HashMap<(Vec<CapId>, Groups), SigIdx>,
    /// The first request of each signature's queue (`sigs[i].queue.first()`)
    /// as a [`packed`] key, `EMPTY` for an empty queue: peeking at a class
    /// is then a minimum over one small array of integers.
    sig_heads: Vec<PackedKey>,
    /// The [`packed`] key of each signature's latest entry in `peeks`,
    /// `EMPTY` when it has none; older entries are stale.
    sig_peeks: Vec<PackedKey>,
    /// Each class's weight and least recently used idle worker
    /// (`classes[i].idle.first()`), packed for the same reason.
    class_best: Vec<Option<(usize, u64, WorkerId)>>,
    workers: FastMap<WorkerId, WorkerEntry>,
    /// Indexed by [`Slot`]; a slot freed by a deregistration is reused.
    pin_states: Vec<PinState>,
    /// Whether `pin_states[slot].pinned` is not empty, so that a worker
    /// coming back to idle need not read its pin state.
    has_pins: Vec<bool>,
    free_slots: Vec<Slot>,
    requests: FastMap<RequestId, RequestEntry>,
    /// The worker each pinned request (one with a `UUID` cap) is pinned to.
    pins: FastMap<RequestId, WorkerId>,
    /// Requests whose `valid_after` ([`nanos`]) has not come yet.
    future: BTreeSet<(u64, RequestId)>,
    /// Deadlines of tracked requests, earliest first. Entries of requests
    /// that left are dropped lazily: when they come up, or by a compaction
    /// (a pass over `requests`) once they outnumber the live ones three to
    /// one.
    deadlines: BinaryHeap<Reverse<(u64, RequestId)>>,
    stale_deadlines: usize,
    /// Where the next decision may come from, earliest first: each entry
    /// is the first request its source could serve when it was pushed.
    /// Keys are [`packed`], so that comparing two entries is mostly
    /// comparing two integers.
    peeks: BinaryHeap<Reverse<(PackedKey, PackedSource)>>,
    /// Visible requests pinned to a worker id that is not registered.
    orphans: FastMap<WorkerId, BTreeSet<RequestId>>,
    /// Decisions [`Matcher::match_new`] met that were not its own (its
    /// caller had not taken them yet); `next_match` hands them out first.
    held: Vec<Assignment>,
}

/// An interned cap and its holders.
#[derive(Debug)]
struct CapEntry {
    pair: Option<Arc<(String, String)>>,
    holders: u32,
}

/// How much the matcher holds, to show that it frees what is no longer
/// used (issue 13, class 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MatcherSizes {
    pub workers: usize,
    pub requests: usize,
    /// Interned `key=value` pairs.
    pub caps: usize,
    pub classes: usize,
    pub signatures: usize,
}

impl Matcher {
    pub fn new() -> Matcher {
        Matcher::default()
    }

    pub fn sizes(&self) -> MatcherSizes {
        MatcherSizes {
            workers: self.workers.len(),
            requests: self.requests.len(),
            caps: self.cap_ids.len(),
            classes: self.classes.len() - self.free_classes.len(),
            signatures: self.sigs.len() - self.free_sigs.len(),
        }
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Requests the matcher tracks (visible or not).
    pub fn waiting_count(&self) -> usize {
        self.requests.len()
    }

    pub fn has_request(&self, id: RequestId) -> bool {
        self.requests.contains_key(&id)
    }

    pub fn has_worker(&self, id: WorkerId) -> bool {
        self.workers.contains_key(&id)
    }

    pub fn is_idle(&self, id: WorkerId) -> bool {
        self.workers.get(&id).is_some_and(|entry| self.idle_since(id, entry).is_some())
    }

    // ----- workers -------------------------------------------------------

    /// Registers a worker (not idle yet). Registering a known id again
    /// replaces its caps and groups and keeps it idle if it was.
    /// Returns the waiting requests that no registered worker can serve any
    /// more (possible when caps or groups shrank).
    pub fn register_worker(&mut self, spec: &WorkerSpec) -> Vec<RequestId> {
        let caps = self.intern_caps(&spec.caps);
        let class = self.class_for(caps, spec.groups.clone());
        let mut idle_since = None;
        let mut old_class = None;
        match self.workers.get(&spec.id).copied() {
            Some(old) => {
                let previous = old.class as ClassIdx;
                if previous == class {
                    return Vec::new();
                }
                idle_since = self.idle_since(spec.id, &old);
                if let Some(since) = idle_since {
                    self.idle_remove(previous, since, spec.id);
                }
                self.workers.insert(spec.id, WorkerEntry { since: NOT_IDLE, class: class as u32, slot: old.slot });
                old_class = Some(previous);
            }
            None => {
                let slot = match self.free_slots.pop() {
                    Some(slot) => {
                        self.pin_states[slot as usize] = PinState::new(spec.id);
                        slot
                    }
                    None => {
                        self.pin_states.push(PinState::new(spec.id));
                        self.has_pins.push(false);
                        (self.pin_states.len() - 1) as Slot
                    }
                };
                self.workers.insert(spec.id, WorkerEntry { since: NOT_IDLE, class: class as u32, slot });
            }
        }
        if let Some(old) = old_class {
            self.classes[old].members.remove(&spec.id);
        }
        self.classes[class].members.insert(spec.id);
        // Requests pinned to this id that were kept while it was unknown.
        for request in self.orphans.remove(&spec.id).unwrap_or_default() {
            if let Some(r) = self.requests.get_mut(&request) {
                r.visible = false;
                self.make_visible(request);
            }
        }
        let lost = match old_class {
            // Caps or groups changed: requests only the old class could serve
            // (including those pinned to this worker) may be lost.
            Some(old) => {
                let lost = self.drop_unsatisfiable(old, Some(spec.id));
                self.free_class_if_unused(old);
                lost
            }
            None => Vec::new(),
        };
        if let Some(since) = idle_since {
            self.make_idle(spec.id, since);
        }
        lost
    }

    /// Forgets a worker. Returns the waiting requests that no registered
    /// worker can serve any more; they are removed from the matcher.
    pub fn deregister_worker(&mut self, id: WorkerId) -> Vec<RequestId> {
        let Some(entry) = self.workers.remove(&id) else {
            return Vec::new();
        };
        let (class, slot) = (entry.class as ClassIdx, entry.slot as usize);
        if entry.since != NOT_IDLE {
            self.idle_remove(class, entry.since, id);
        }
        self.pin_states[slot].pinned.clear();
        self.has_pins[slot] = false;
        self.free_slots.push(entry.slot);
        self.classes[class].members.remove(&id);
        let lost = self.drop_unsatisfiable(class, Some(id));
        self.free_class_if_unused(class);
        lost
    }

    /// The worker may be leased from now on. `last_used` orders idle
    /// workers of a class: the least recently used is taken first.
    pub fn worker_idle(&mut self, id: WorkerId, last_used: SystemTime) {
        self.make_idle(id, idle_nanos(last_used));
    }

    fn make_idle(&mut self, id: WorkerId, since: u64) {
        let Some(entry) = self.workers.get_mut(&id) else {
            return;
        };
        let old = std::mem::replace(&mut entry.since, since);
        let (class, slot) = (entry.class as ClassIdx, entry.slot);
        // A class that already had an idle worker serves nothing more now:
        // every request it could serve is already offered by an entry in
        // `peeks`, so its signatures need no scan.
        let class_had_idle = self.class_best[class].is_some();
        if old != NOT_IDLE {
            // Nothing to remove if a decision took the worker meanwhile.
            self.idle_remove(class, old, id);
        }
        self.idle_insert(class, since, id);
        if !class_had_idle {
            self.push_class_peek(class);
        }
        if self.has_pins[slot as usize] {
            self.push_pinned_peek(slot);
        }
    }

    /// The worker left the idle pool (leased elsewhere, failed, maintenance).
    pub fn worker_unavailable(&mut self, id: WorkerId) {
        let Some(entry) = self.workers.get_mut(&id) else {
            return;
        };
        let old = std::mem::replace(&mut entry.since, NOT_IDLE);
        if old != NOT_IDLE {
            let class = entry.class as ClassIdx;
            self.idle_remove(class, old, id);
        }
    }

    // ----- requests ------------------------------------------------------

    /// Whether some registered worker could ever serve these caps for a
    /// requester with these groups (its current state does not matter).
    /// Interns and creates nothing: a refused submission leaves no trace.
    pub fn can_ever_serve(&self, caps: &Caps, groups: &Groups) -> bool {
        // A cap no class holds is not interned; then no class serves it.
        let Some(cap_ids) = self.known_caps(caps) else {
            return false;
        };
        let sig = SigKey { live: true, caps: cap_ids, groups: groups.clone() };
        let class_serves =
            |class: &Class| class.live && !class.members.is_empty() && serves(&class.caps, &class.groups, &sig);
        match caps.pinned_worker() {
            Some(worker) => self.workers.get(&worker).is_some_and(|w| class_serves(&self.classes[w.class as ClassIdx])),
            None => self.candidate_classes(&sig.caps).into_iter().any(|c| class_serves(&self.classes[c])),
        }
    }

    /// Adds a waiting request. Returns false when no registered worker can
    /// ever serve it (it is kept anyway; the caller decides what to do).
    pub fn add_request(&mut self, spec: &RequestSpec, now: SystemTime) -> bool {
        self.remove_request(spec.id);
        let (sig, pinned) = self.sig_for(&spec.caps, &spec.groups);
        self.sigs[sig].members += 1;
        let (deadline, valid_after) = (nanos(spec.deadline), nanos(spec.valid_after));
        self.requests.insert(
            spec.id,
            RequestEntry {
                deadline,
                valid_after,
                sig: sig as u32,
                priority: spec.priority,
                visible: false,
                pinned: pinned.is_some(),
            },
        );
        if let Some(worker) = pinned {
            self.pins.insert(spec.id, worker);
        }
        self.deadlines.push(Reverse((deadline, spec.id)));
        if valid_after > nanos(now) {
            self.future.insert((valid_after, spec.id));
        } else {
            self.make_visible(spec.id);
        }
        self.sig_satisfiable(sig, pinned)
    }

    /// Removes a request (matched elsewhere, cancelled, timed out).
    pub fn remove_request(&mut self, id: RequestId) -> bool {
        let Some(entry) = self.requests.remove(&id) else {
            return false;
        };
        let sig = entry.sig as SigIdx;
        self.sigs[sig].members -= 1;
        let sig_unused = self.sigs[sig].members == 0;
        self.stale_deadlines += 1;
        if self.stale_deadlines > 1024 && self.stale_deadlines > 3 * self.requests.len() {
            self.compact_deadlines();
        }
        let pinned = if entry.pinned { self.pins.remove(&id) } else { None };
        if entry.visible {
            match pinned {
                Some(worker) => {
                    if let Some(slot) = self.workers.get(&worker).map(|w| w.slot as usize) {
                        let pins = &mut self.pin_states[slot].pinned;
                        pins.remove(&entry.key(id));
                        self.has_pins[slot] = !pins.is_empty();
                    }
                    if let Some(orphans) = self.orphans.get_mut(&worker) {
                        orphans.remove(&id);
                    }
                }
                None => self.queue_remove(sig, entry.key(id)),
            }
        } else {
            self.future.remove(&(entry.valid_after, id));
        }
        if sig_unused {
            self.free_sig(sig);
        }
        true
    }

    /// Moves requests whose `valid_after` has come into the queue and takes
    /// out those whose deadline has passed; returns the latter.
    pub fn tick(&mut self, now: SystemTime) -> Vec<RequestId> {
        let now = nanos(now);
        while let Some(&(at, id)) = self.future.first() {
            if at > now {
                break;
            }
            self.future.pop_first();
            self.make_visible(id);
        }
        let mut expired = Vec::new();
        while let Some(&Reverse((at, id))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            if self.requests.get(&id).is_some_and(|r| r.deadline == at) {
                // remove_request counts this entry as stale; it is gone.
                expired.push(id);
                self.remove_request(id);
            }
            self.stale_deadlines = self.stale_deadlines.saturating_sub(1);
        }
        expired
    }

    /// When `tick` next has something to do.
    pub fn next_wakeup(&self) -> Option<SystemTime> {
        let future = self.future.first().map(|(t, _)| *t);
        let deadline = self.deadlines.peek().map(|Reverse((t, _))| *t);
        let next = match (future, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        next.map(time_of)
    }

    // ----- decisions -----------------------------------------------------

    /// Decides for a request that has no id yet (it is being submitted):
    /// the worker it would get if it were added now and the next decision
    /// taken, so that the caller can commit the request and its lease
    /// together. The worker leaves the idle pool; the request is not kept
    /// either way (add it with its id when this answers `None`). `spec.id`
    /// is not looked at.
    ///
    /// Call it only when [`Matcher::next_match`] has nothing to decide:
    /// then no waiting request can be served by an idle worker, and any
    /// decision must be the new request's. Anything else it meets is kept
    /// for the following `next_match` calls.
    pub fn match_new(&mut self, spec: &RequestSpec, now: SystemTime) -> Option<WorkerId> {
        let spec = RequestSpec { id: NEW_REQUEST, ..spec.clone() };
        self.add_request(&spec, now);
        let mut worker = None;
        while let Some(assignment) = self.next_match() {
            if assignment.request == NEW_REQUEST {
                worker = Some(assignment.worker);
                break;
            }
            // The precondition did not hold: keep this decision for the
            // caller's next `next_match`.
            self.held.push(assignment);
        }
        self.remove_request(NEW_REQUEST);
        worker
    }

    /// The next assignment, or `None` when no waiting visible request can
    /// be served by an idle worker. The request is removed and the worker
    /// leaves the idle pool; call [`Matcher::worker_idle`] when it is back.
    pub fn next_match(&mut self) -> Option<Assignment> {
        if !self.held.is_empty() {
            return Some(self.held.remove(0));
        }
        loop {
            let Reverse((key, source)) = self.peeks.pop()?;
            let source = Source::unpack(source);
            // An entry is current while its request is still its source's
            // first and the source still has an idle worker: anything
            // earlier that the source could serve arrived with an entry of
            // its own (its signature's), and entries earlier than this one
            // were handled first. A stale entry is pushed again with the
            // source's current first request, if any.
            let worker = match source {
                Source::Class(class, sig) => {
                    self.classes[class].in_heap = false;
                    let current = self.sig_heads[sig] == key && self.class_best[class].is_some();
                    if current { self.best_idle_server(sig) } else { None }
                }
                Source::Sig(sig) => {
                    if self.sig_peeks[sig] != key {
                        // Superseded by an earlier entry of the signature.
                        continue;
                    }
                    self.sig_peeks[sig] = EMPTY;
                    if self.sig_heads[sig] == key { self.best_idle_server(sig) } else { None }
                }
                Source::Pinned(slot) => {
                    match self.pin_states.get_mut(slot as usize) {
                        Some(state) if state.peek_key == key => state.peek_key = EMPTY,
                        _ => continue,
                    }
                    let request = request_of(key);
                    if self.still_queued(key) { self.best_worker_for(request) } else { None }
                }
            };
            let Some(worker) = worker else {
                self.push_peek(source);
                continue;
            };
            let assignment = self.assign(request_of(key), worker);
            self.push_peek(source);
            return Some(assignment);
        }
    }

    /// Why `id` still waits. `None` if the matcher does not know it.
    pub fn explain(&self, id: RequestId) -> Option<Explanation> {
        let entry = self.requests.get(&id)?;
        let (key, pinned) = (entry.key(id), self.pinned_to(id));
        let sig = &self.sig_keys[entry.sig as SigIdx];
        let mut candidates = Vec::new();
        let mut group_mismatch = Vec::new();
        let mut classes = Vec::new();
        for (idx, class) in self.classes.iter().enumerate() {
            if class.members.is_empty() || !is_subset(&sig.caps, &class.caps) {
                continue;
            }
            let members = class.members.iter().filter(|w| pinned.is_none_or(|p| p == **w));
            if sig.groups.may_use(&class.groups) {
                candidates.extend(members);
                classes.push(idx);
            } else {
                group_mismatch.extend(members);
            }
        }
        let mut competing_sigs: BTreeSet<SigIdx> = BTreeSet::new();
        for class in &classes {
            competing_sigs.extend(self.classes[*class].serves.iter().copied());
        }
        let mut ahead = 0;
        let mut competing = 0;
        for s in competing_sigs {
            let queue = &self.sigs[s].queue;
            competing += queue.len();
            ahead += queue.count_before(key);
        }
        for w in &candidates {
            if let Some(entry) = self.workers.get(w) {
                let pins = &self.pin_states[entry.slot as usize].pinned;
                competing += pins.len();
                ahead += pins.range(..key).count();
            }
        }
        if !entry.visible {
            competing += 1;
        }
        Some(Explanation { position: ahead + 1, competing, visible: entry.visible, candidates, group_mismatch })
    }

    // ----- internals -----------------------------------------------------

    /// The worker a tracked request is pinned to by a `UUID` cap.
    fn pinned_to(&self, request: RequestId) -> Option<WorkerId> {
        self.pins.get(&request).copied()
    }

    fn assign(&mut self, request: RequestId, chosen: Chosen) -> Assignment {
        self.remove_request(request);
        // The worker's entry is left alone (see `WorkerEntry::since`).
        self.idle_remove(chosen.class, chosen.since, chosen.worker);
        Assignment { request, worker: chosen.worker }
    }

    /// When the worker became idle, if it still is: its entry says so and
    /// a decision has not taken it from its class's idle queue since.
    fn idle_since(&self, id: WorkerId, entry: &WorkerEntry) -> Option<u64> {
        let since = entry.since;
        (since != NOT_IDLE && self.classes[entry.class as ClassIdx].idle.contains(since, id)).then_some(since)
    }

    /// The best idle worker for a visible waiting request.
    fn best_worker_for(&self, request: RequestId) -> Option<Chosen> {
        let sig = self.requests.get(&request)?.sig as SigIdx;
        if let Some(pinned) = self.pinned_to(request) {
            let entry = self.workers.get(&pinned)?;
            let since = self.idle_since(pinned, entry)?;
            let class = entry.class as ClassIdx;
            return self.classes[class].serves.contains(&sig).then_some(Chosen { class, since, worker: pinned });
        }
        self.best_idle_server(sig)
    }

    /// The best idle worker for an unpinned request of `sig`.
    fn best_idle_server(&self, sig: SigIdx) -> Option<Chosen> {
        let mut best: Option<((usize, u64, WorkerId), ClassIdx)> = None;
        for served in &self.sigs[sig].served_by {
            if let Some(candidate) = self.class_best[served.class()]
                && best.is_none_or(|(b, _)| candidate < b)
            {
                best = Some((candidate, served.class()));
            }
        }
        best.map(|((_, since, worker), class)| Chosen { class, since, worker })
    }

    /// Queues a request that became visible and offers it to the next
    /// decisions through its signature's (or pinned worker's) entry in
    /// `peeks`.
    fn make_visible(&mut self, id: RequestId) {
        let Some(entry) = self.requests.get_mut(&id) else {
            return;
        };
        if entry.visible {
            return;
        }
        entry.visible = true;
        let (key, sig, pinned) = (entry.key(id), entry.sig as SigIdx, entry.pinned);
        let Some(worker) = pinned.then(|| self.pinned_to(id)).flatten() else {
            self.queue_insert(sig, key);
            self.push_sig_peek(sig);
            return;
        };
        match self.workers.get(&worker) {
            Some(entry) => {
                let slot = entry.slot;
                self.pin_states[slot as usize].pinned.insert(key, sig);
                self.has_pins[slot as usize] = true;
                self.push_pinned_peek(slot);
            }
            // The pinned worker is unknown; the request waits for a worker
            // with that id to register.
            None => {
                self.orphans.entry(worker).or_default().insert(id);
            }
        }
    }

    /// The first request an idle worker of `class` can serve, [`packed`],
    /// with its signature.
    fn class_first(&self, class: ClassIdx) -> Option<(PackedKey, SigIdx)> {
        self.class_best[class]?;
        // A plain loop: this runs on every release, over every signature
        // the class serves.
        let class = &self.classes[class];
        let (mut first, mut at) = (EMPTY, 0);
        for (i, &head) in class.heads.iter().enumerate() {
            if head < first {
                (first, at) = (head, i);
            }
        }
        (first != EMPTY).then(|| (first, class.serves[at]))
    }

    /// The first request pinned to `worker` that it can serve, [`packed`],
    /// if the worker is idle.
    fn pinned_first(&self, slot: Slot) -> Option<PackedKey> {
        let state = &self.pin_states[slot as usize];
        let entry = self.workers.get(&state.worker)?;
        self.idle_since(state.worker, entry)?;
        // A request whose caps or groups this worker does not match waits
        // until the worker registers again.
        let serves = &self.classes[entry.class as ClassIdx].serves;
        state.pinned.iter().find(|(_, sig)| serves.contains(sig)).map(|(key, _)| packed(*key))
    }

    fn push_peek(&mut self, source: Source) {
        match source {
            Source::Class(c, _) => self.push_class_peek(c),
            Source::Pinned(w) => self.push_pinned_peek(w),
            Source::Sig(s) => self.push_sig_peek(s),
        }
    }

    fn push_class_peek(&mut self, class: ClassIdx) {
        if self.classes[class].in_heap {
            return;
        }
        if let Some((key, sig)) = self.class_first(class) {
            self.classes[class].in_heap = true;
            self.peeks.push(Reverse((key, Source::Class(class, sig).pack())));
        }
    }

    /// Pushes the worker's first pinned request unless an entry as early
    /// is already there.
    fn push_pinned_peek(&mut self, slot: Slot) {
        let Some(key) = self.pinned_first(slot) else {
            return;
        };
        let state = &mut self.pin_states[slot as usize];
        if key < state.peek_key {
            state.peek_key = key;
            self.peeks.push(Reverse((key, Source::Pinned(slot).pack())));
        }
    }

    /// Pushes the signature's first request unless an entry as early is
    /// already there, or no idle worker can serve it (then none of the
    /// signature's requests can be served now).
    fn push_sig_peek(&mut self, sig: SigIdx) {
        let key = self.sig_heads[sig];
        if key >= self.sig_peeks[sig] || !self.sig_has_idle_server(sig) {
            return;
        }
        self.sig_peeks[sig] = key;
        self.peeks.push(Reverse((key, Source::Sig(sig).pack())));
    }

    fn sig_has_idle_server(&self, sig: SigIdx) -> bool {
        self.sigs[sig].served_by.iter().any(|served| self.class_best[served.class()].is_some())
    }

    /// The ids of the caps (but `UUID`), interned now if new. Whoever keeps
    /// them (a new class or signature) counts itself with `hold_caps`.
    fn intern_caps(&mut self, caps: &Caps) -> Vec<CapId> {
        let mut ids: Vec<CapId> = Vec::with_capacity(caps.len());
        for (k, v) in caps.iter().filter(|(k, _)| *k != UUID_CAP) {
            let pair = (k.to_string(), v.to_string());
            let id = match self.cap_ids.get(&pair) {
                Some(id) => *id,
                None => {
                    let pair = Arc::new(pair);
                    let entry = CapEntry { pair: Some(pair.clone()), holders: 0 };
                    let id = match self.free_caps.pop() {
                        Some(id) => {
                            self.cap_entries[id as usize] = entry;
                            id
                        }
                        None => {
                            self.cap_entries.push(entry);
                            (self.cap_entries.len() - 1) as CapId
                        }
                    };
                    self.cap_ids.insert(pair, id);
                    id
                }
            };
            ids.push(id);
        }
        ids.sort_unstable();
        ids
    }

    /// The ids of the caps (but `UUID`) if all are interned.
    fn known_caps(&self, caps: &Caps) -> Option<Vec<CapId>> {
        let mut ids = caps
            .iter()
            .filter(|(k, _)| *k != UUID_CAP)
            .map(|(k, v)| self.cap_ids.get(&(k.to_string(), v.to_string())).copied())
            .collect::<Option<Vec<CapId>>>()?;
        ids.sort_unstable();
        Some(ids)
    }

    fn hold_caps(&mut self, caps: &[CapId]) {
        for cap in caps {
            self.cap_entries[*cap as usize].holders += 1;
        }
    }

    /// Drops one holder of each cap; frees those no one holds any more.
    fn release_caps(&mut self, caps: &[CapId]) {
        for cap in caps {
            let entry = &mut self.cap_entries[*cap as usize];
            entry.holders -= 1;
            if entry.holders == 0
                && let Some(pair) = entry.pair.take()
            {
                self.cap_ids.remove(&*pair);
                self.free_caps.push(*cap);
            }
        }
    }

    /// Live classes that may serve a signature with these caps: those
    /// holding its rarest cap, or all when it asks for none.
    fn candidate_classes(&self, caps: &[CapId]) -> Vec<ClassIdx> {
        match caps.iter().min_by_key(|c| self.classes_with_cap.get(c).map_or(0, Vec::len)) {
            Some(rarest) => self.classes_with_cap.get(rarest).cloned().unwrap_or_default(),
            None => (0..self.classes.len()).filter(|c| self.classes[*c].live).collect(),
        }
    }

    fn class_for(&mut self, caps: Vec<CapId>, groups: Groups) -> ClassIdx {
        if let Some(&idx) = self.class_index.get(&(caps.clone(), groups.clone())) {
            return idx;
        }
        let idx = self.free_classes.pop().unwrap_or(self.classes.len());
        let serves: Vec<SigIdx> = (0..self.sigs.len())
            .filter(|s| self.sig_keys[*s].live && serves(&caps, &groups, &self.sig_keys[*s]))
            .collect();
        for (at, s) in serves.iter().enumerate() {
            self.sigs[*s].served_by.push(Served { class: idx as u32, at: at as u32 });
        }
        let heads = serves.iter().map(|s| self.sig_heads[*s]).collect();
        for cap in &caps {
            self.classes_with_cap.entry(*cap).or_default().push(idx);
        }
        self.hold_caps(&caps);
        self.class_index.insert((caps.clone(), groups.clone()), idx);
        let weight = caps.len() + groups.len();
        let class = Class {
            live: true,
            caps,
            groups,
            weight,
            members: BTreeSet::new(),
            idle: IdleQueue::default(),
            serves,
            heads,
            in_heap: false,
        };
        if idx == self.classes.len() {
            self.class_best.push(None);
            self.classes.push(class);
        } else {
            self.class_best[idx] = None;
            self.classes[idx] = class;
        }
        idx
    }

    /// Frees a class that has no member left.
    fn free_class_if_unused(&mut self, idx: ClassIdx) {
        let class = &mut self.classes[idx];
        if !class.live || !class.members.is_empty() {
            return;
        }
        class.live = false;
        class.in_heap = false;
        let serves = std::mem::take(&mut class.serves);
        class.heads = Vec::new();
        class.idle = IdleQueue::default();
        let caps = std::mem::take(&mut class.caps);
        let groups = std::mem::take(&mut class.groups);
        self.class_best[idx] = None;
        for s in serves {
            self.sigs[s].served_by.retain(|served| served.class() != idx);
        }
        for cap in &caps {
            if let Some(classes) = self.classes_with_cap.get_mut(cap) {
                classes.retain(|c| *c != idx);
                if classes.is_empty() {
                    self.classes_with_cap.remove(cap);
                }
            }
        }
        self.release_caps(&caps);
        self.class_index.remove(&(caps, groups));
        self.free_classes.push(idx);
    }

    fn sig_for(&mut self, caps: &Caps, groups: &Groups) -> (SigIdx, Option<WorkerId>) {
        let pinned = caps.pinned_worker();
        let cap_ids = self.intern_caps(caps);
        let key = (cap_ids, groups.clone());
        if let Some(&idx) = self.sig_index.get(&key) {
            return (idx, pinned);
        }
        let (cap_ids, groups) = key;
        let idx = self.free_sigs.pop().unwrap_or(self.sigs.len());
        let candidates = self.candidate_classes(&cap_ids);
        let sig = SigKey { live: true, caps: cap_ids, groups };
        let capable: Vec<ClassIdx> =
            candidates.into_iter().filter(|c| serves(&self.classes[*c].caps, &self.classes[*c].groups, &sig)).collect();
        let served_by = capable
            .into_iter()
            .map(|c| {
                let class = &mut self.classes[c];
                class.serves.push(idx);
                class.heads.push(EMPTY);
                Served { class: c as u32, at: (class.serves.len() - 1) as u32 }
            })
            .collect();
        self.hold_caps(&sig.caps);
        self.sig_index.insert((sig.caps.clone(), sig.groups.clone()), idx);
        let entry = Sig { served_by, members: 0, queue: RequestQueue::default() };
        if idx == self.sigs.len() {
            self.sig_keys.push(sig);
            self.sigs.push(entry);
            self.sig_heads.push(EMPTY);
            self.sig_peeks.push(EMPTY);
        } else {
            self.sig_keys[idx] = sig;
            self.sigs[idx] = entry;
            self.sig_heads[idx] = EMPTY;
            self.sig_peeks[idx] = EMPTY;
        }
        (idx, pinned)
    }

    /// Frees a signature whose last request left: the classes that served
    /// it forget it, and its caps lose a holder.
    fn free_sig(&mut self, idx: SigIdx) {
        let served_by = std::mem::take(&mut self.sigs[idx].served_by);
        for served in served_by {
            let (class, at) = (served.class(), served.at as usize);
            let entry = &mut self.classes[class];
            entry.serves.swap_remove(at);
            entry.heads.swap_remove(at);
            // The signature that moved into `at` records its new place.
            if let Some(&moved) = entry.serves.get(at) {
                for other in self.sigs[moved].served_by.iter_mut().filter(|s| s.class() == class) {
                    other.at = at as u32;
                }
            }
        }
        let key =
            std::mem::replace(&mut self.sig_keys[idx], SigKey { live: false, caps: Vec::new(), groups: Groups::new() });
        self.release_caps(&key.caps);
        self.sig_index.remove(&(key.caps, key.groups));
        self.sigs[idx] = Sig { served_by: SmallVec::new(), members: 0, queue: RequestQueue::default() };
        self.sig_heads[idx] = EMPTY;
        self.sig_peeks[idx] = EMPTY;
        self.free_sigs.push(idx);
    }

    fn sig_satisfiable(&self, sig: SigIdx, pinned: Option<WorkerId>) -> bool {
        match pinned {
            Some(worker) => {
                self.workers.get(&worker).is_some_and(|w| self.classes[w.class as ClassIdx].serves.contains(&sig))
            }
            None => self.sigs[sig].served_by.iter().any(|served| !self.classes[served.class()].members.is_empty()),
        }
    }

    fn idle_insert(&mut self, class: ClassIdx, since: u64, worker: WorkerId) {
        let entry = &mut self.classes[class];
        entry.idle.insert(since, worker);
        if self.class_best[class].is_none_or(|(_, s, w)| (since, worker) < (s, w)) {
            self.class_best[class] = Some((entry.weight, since, worker));
        }
    }

    fn idle_remove(&mut self, class: ClassIdx, since: u64, worker: WorkerId) {
        let entry = &mut self.classes[class];
        entry.idle.remove(since, worker);
        if self.class_best[class].is_some_and(|(_, s, w)| (s, w) == (since, worker)) {
            self.class_best[class] = entry.idle.first().map(|(s, w)| (entry.weight, s, w));
        }
    }

    fn queue_insert(&mut self, sig: SigIdx, key: QueueKey) {
        self.sigs[sig].queue.insert(key);
        self.set_sig_head(sig, self.sig_heads[sig].min(packed(key)));
    }

    fn queue_remove(&mut self, sig: SigIdx, key: QueueKey) {
        let queue = &mut self.sigs[sig].queue;
        queue.remove(key);
        if self.sig_heads[sig] == packed(key) {
            let head = queue.first_packed();
            self.set_sig_head(sig, head);
        }
    }

    /// Records the first request of a signature's queue, in `sig_heads` and
    /// in the `heads` of the classes that serve the signature.
    fn set_sig_head(&mut self, sig: SigIdx, head: PackedKey) {
        if self.sig_heads[sig] == head {
            return;
        }
        self.sig_heads[sig] = head;
        let entry = &self.sigs[sig];
        for served in &entry.served_by {
            self.classes[served.class()].heads[served.at as usize] = head;
        }
    }

    /// Whether the request of a [`packed`] key still waits, visible, with
    /// that key.
    fn still_queued(&self, key: PackedKey) -> bool {
        self.requests.get(&request_of(key)).is_some_and(|r| r.visible && packed(r.key(request_of(key))) == key)
    }

    /// Drops the deadline entries of requests that left.
    fn compact_deadlines(&mut self) {
        let live: Vec<Reverse<(u64, RequestId)>> =
            self.requests.iter().map(|(id, r)| Reverse((r.deadline, *id))).collect();
        self.deadlines = BinaryHeap::from(live);
        self.stale_deadlines = 0;
    }

    /// After `class` lost a member (`worker`), removes and returns the
    /// requests no registered worker can serve any more: those of the
    /// signatures the class served, and those pinned to the worker.
    fn drop_unsatisfiable(&mut self, class: ClassIdx, worker: Option<WorkerId>) -> Vec<RequestId> {
        let lost_sigs: BTreeSet<SigIdx> = if self.classes[class].members.is_empty() {
            self.classes[class]
                .serves
                .iter()
                .copied()
                .filter(|s| self.sigs[*s].members > 0 && !self.sig_satisfiable(*s, None))
                .collect()
        } else {
            BTreeSet::new()
        };
        if lost_sigs.is_empty() && worker.is_none() {
            return Vec::new();
        }
        let mut lost: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(id, r)| {
                let sig = r.sig as SigIdx;
                match self.pinned_to(**id) {
                    pinned @ Some(_) => pinned == worker && !self.sig_satisfiable(sig, pinned),
                    None => lost_sigs.contains(&sig),
                }
            })
            .map(|(id, _)| *id)
            .collect();
        lost.sort();
        for id in &lost {
            self.remove_request(*id);
        }
        lost
    }
}

#[cfg(test)]
impl Matcher {
    /// Panics unless every live class and signature is used, the two
    /// sides of the "serves" relation agree, and each interned cap is
    /// counted once per holder.
    pub(crate) fn check_invariants(&self) {
        let mut holders: HashMap<CapId, u32> = HashMap::new();
        for (s, key) in self.sig_keys.iter().enumerate() {
            if !key.live {
                assert!(self.free_sigs.contains(&s), "dead signature {s} not free");
                continue;
            }
            assert!(self.sigs[s].members > 0, "signature {s} lives without requests");
            assert_eq!(self.sig_index.get(&(key.caps.clone(), key.groups.clone())), Some(&s));
            for served in &self.sigs[s].served_by {
                let class = &self.classes[served.class()];
                assert!(class.live, "signature {s} served by dead class {}", served.class);
                assert_eq!(class.serves[served.at as usize], s);
            }
            for cap in &key.caps {
                *holders.entry(*cap).or_default() += 1;
            }
        }
        for (c, class) in self.classes.iter().enumerate() {
            if !class.live {
                assert!(self.free_classes.contains(&c), "dead class {c} not free");
                continue;
            }
            assert!(!class.members.is_empty(), "class {c} lives without workers");
            assert_eq!(self.class_index.get(&(class.caps.clone(), class.groups.clone())), Some(&c));
            assert_eq!(class.serves.len(), class.heads.len());
            for (at, s) in class.serves.iter().enumerate() {
                assert!(self.sig_keys[*s].live, "class {c} serves dead signature {s}");
                assert!(self.sigs[*s].served_by.iter().any(|x| x.class() == c && x.at as usize == at));
            }
            for cap in &class.caps {
                *holders.entry(*cap).or_default() += 1;
                assert!(self.classes_with_cap[cap].contains(&c));
            }
        }
        assert_eq!(self.cap_ids.len(), holders.len(), "interned caps without holders");
        for (cap, n) in holders {
            assert_eq!(self.cap_entries[cap as usize].holders, n, "holders of cap {cap}");
        }
    }
}

fn serves(class_caps: &[CapId], class_groups: &Groups, sig: &SigKey) -> bool {
    is_subset(&sig.caps, class_caps) && sig.groups.may_use(class_groups)
}

/// Both sorted.
fn is_subset(small: &[CapId], big: &[CapId]) -> bool {
    let mut big = big.iter();
    small.iter().all(|s| big.by_ref().any(|b| b == s))
}

mod queues;
#[cfg(test)]
mod tests;
