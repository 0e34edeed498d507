//! The event stream (`GET /v1/events`): one [`EventHub`] per server reads
//! the history rows every transition writes (`request_history`,
//! `worker_history`) and broadcasts each as an [`Event`] to every
//! [`Subscription`]; each subscription keeps what its caller may read.
//!
//! # Positions
//!
//! An event's id is an [`EventId`] `R-W`: every request history row with
//! an id up to R and every worker history row up to W is delivered at or
//! before it. Each table's rows are delivered in id order, so a
//! subscription that starts after `R-W` (a reconnecting client's
//! `Last-Event-ID`) reads the rows above R and above W from the database
//! (the backlog) and then follows the live broadcast, which starts exactly
//! where the backlog ends (both are taken under the hub's lock): no row is
//! sent twice and none is skipped. Positions are rows of the database, so
//! they survive a server restart.
//!
//! # Rows that commit out of id order
//!
//! A BIGSERIAL id is taken when a row is inserted, not when it commits: a
//! row with id 11 may commit after row 12 was read. The hub therefore
//! advances a table's position only over consecutive ids. When it reads
//! row 12 while 11 is missing, it holds 12 back and reads again every
//! [`GAP_RECHECK`] until 11 commits, or until the gap is [`GAP_GRACE`] old:
//! then it takes 11 for an id that was never committed (a rolled back
//! transaction, or ids PostgreSQL skips after a crash) and goes on. A row
//! that commits more than [`GAP_GRACE`] after its id was taken is thus
//! missed by the live stream (it stays in the history, and a client that
//! resumes from a position below it gets it). No corral transaction stays
//! open that long between writing history and committing, unless the
//! database stalls.
//!
//! # Bounds
//!
//! The broadcast keeps the last `events_buffer` events; a subscriber that
//! falls further behind (a client that does not read) gets a reload event
//! and its stream ends, so it cannot hold memory. A resume from a position
//! more than `events_resume_limit` rows of either table behind, or from a
//! position ahead of this database's history (another database), starts
//! with a reload event instead of the backlog.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_core::{Groups, UserId, WorkerId};
use corral_db::{HistoryRange, HistoryRow, HistorySubject};
use corral_proto::events::{Event, EventId};
use tokio::sync::broadcast;

use crate::{ActorError, Caller, Corral, Shared};

/// Events the broadcast keeps for subscribers that are behind, by default
/// ([`crate::Settings::events_buffer`]).
pub const CHANNEL: usize = 4096;

/// Most rows of one table a resume reads by default
/// ([`crate::Settings::events_resume_limit`]); further behind, a reload.
pub const RESUME_LIMIT: u32 = 10_000;

/// How long a missing id holds back the rows after it.
pub const GAP_GRACE: Duration = Duration::from_secs(2);

/// How often the hub reads again while an id is missing.
pub const GAP_RECHECK: Duration = Duration::from_millis(10);

/// How often the hub reads without being woken by a commit (and, without
/// subscribers, at most how often it reads).
const IDLE_READ: Duration = Duration::from_secs(1);

/// Rows of one table read per round.
const READ_BATCH: u32 = 1000;

/// Who may read an event.
#[derive(Clone, Debug)]
enum Audience {
    Everyone,
    /// A request's event: its owner (when known) and admins.
    RequestOwner(Option<UserId>),
    /// A worker's event: those who may see a worker with these groups
    /// (unknown for a worker no longer registered: admins only).
    WorkerGroups(Option<Groups>),
}

/// One event as broadcast: its position, the event and its JSON (made
/// once for every subscriber).
#[derive(Debug)]
pub struct Published {
    pub id: EventId,
    pub event: Event,
    pub json: String,
    audience: Audience,
}

impl Published {
    fn new(id: EventId, event: Event, audience: Audience) -> Published {
        let json = serde_json::to_string(&event).unwrap_or_else(|_| String::from("{}"));
        Published { id, event, json, audience }
    }

    fn reload(id: EventId, reason: &str) -> Published {
        Published::new(id, Event::Reload { reason: reason.to_string() }, Audience::Everyone)
    }

    /// Whether `caller` may read it (the rules of request and worker
    /// reads: [`Caller::may_read_request_of`], [`Caller::may_see_worker`]).
    pub fn visible_to(&self, caller: &Caller) -> bool {
        match &self.audience {
            Audience::Everyone => true,
            Audience::RequestOwner(Some(owner)) => caller.may_read_request_of(*owner),
            Audience::RequestOwner(None) | Audience::WorkerGroups(None) => caller.is_admin(),
            Audience::WorkerGroups(Some(groups)) => caller.may_see_worker(groups),
        }
    }
}

struct Live {
    /// Every row up to here is broadcast.
    head: EventId,
}

/// The server's one reader of new history rows.
pub struct EventHub {
    live: Mutex<Live>,
    sender: broadcast::Sender<Arc<Published>>,
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub").field("subscribers", &self.sender.receiver_count()).finish()
    }
}

impl EventHub {
    /// A hub whose live stream starts after `head` (the newest rows when
    /// the server starts).
    pub(crate) fn new(head: EventId, buffer: usize) -> EventHub {
        EventHub { live: Mutex::new(Live { head }), sender: broadcast::channel(buffer.max(1)).0 }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The position of the last event broadcast.
    pub fn head(&self) -> EventId {
        self.lock().head
    }

    /// How many subscriptions are open.
    pub fn subscribers(&self) -> usize {
        self.sender.receiver_count()
    }
}

/// What the reader knows of one table between rounds.
#[derive(Debug, Default)]
struct TableCursor {
    /// The id after which a missing id was first seen, and when.
    gap: Option<(i64, Instant)>,
}

impl TableCursor {
    /// The rows of one table (in id order, all above `head`) that may be
    /// delivered now, and the table's new position.
    fn take(&mut self, head: i64, rows: Vec<HistoryRow>, now: Instant) -> (Vec<HistoryRow>, i64) {
        let mut position = head;
        let mut taken = Vec::with_capacity(rows.len());
        for row in rows {
            if row.id != position + 1 {
                let since = match self.gap {
                    Some((after, since)) if after == position => since,
                    _ => {
                        self.gap = Some((position, now));
                        now
                    }
                };
                if now.duration_since(since) < GAP_GRACE {
                    break;
                }
                tracing::debug!(after = position, next = row.id, "history ids missing for too long; skipping them");
            }
            self.gap = None;
            position = row.id;
            taken.push(row);
        }
        (taken, position)
    }

    fn waiting(&self) -> bool {
        self.gap.is_some()
    }
}

/// Who may read the event of `row`; a worker's groups are its current
/// ones.
fn audience(shared: &Shared, subject: &HistorySubject) -> Audience {
    match subject {
        HistorySubject::Request { owner, .. } => Audience::RequestOwner(*owner),
        HistorySubject::Worker(id) => Audience::WorkerGroups(worker_groups(shared, *id)),
    }
}

fn worker_groups(shared: &Shared, id: WorkerId) -> Option<Groups> {
    shared.dir.view(id).map(|v| v.worker.groups)
}

fn event_of(row: &HistoryRow) -> Event {
    let r = &row.record;
    match row.subject {
        HistorySubject::Request { id, .. } => Event::RequestState {
            request: id,
            from: r.from.clone(),
            to: r.to.clone(),
            reason: r.reason.clone(),
            actor: r.actor.clone(),
            at: r.at,
        },
        HistorySubject::Worker(worker) => Event::WorkerState {
            worker,
            from: r.from.clone(),
            to: r.to.clone(),
            reason: r.reason.clone(),
            actor: r.actor.clone(),
            at: r.at,
        },
    }
}

/// Interleaves request rows and worker rows (each in id order) by their
/// time, and gives each the position after it, starting from `from`.
fn positioned(shared: &Shared, from: EventId, requests: Vec<HistoryRow>, workers: Vec<HistoryRow>) -> Vec<Published> {
    let mut out = Vec::with_capacity(requests.len() + workers.len());
    let mut position = from;
    let (mut requests, mut workers) = (requests.into_iter().peekable(), workers.into_iter().peekable());
    loop {
        let take_request = match (requests.peek(), workers.peek()) {
            (Some(r), Some(w)) => r.record.at <= w.record.at,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let row = if take_request { requests.next() } else { workers.next() };
        let Some(row) = row else { break };
        match row.subject {
            HistorySubject::Request { .. } => position.request = row.id,
            HistorySubject::Worker(_) => position.worker = row.id,
        }
        out.push(Published::new(position, event_of(&row), audience(shared, &row.subject)));
    }
    out
}

fn split(rows: Vec<HistoryRow>) -> (Vec<HistoryRow>, Vec<HistoryRow>) {
    rows.into_iter().partition(|row| matches!(row.subject, HistorySubject::Request { .. }))
}

/// The reader: wakes on commits (or every [`IDLE_READ`]), reads the rows
/// after the live head, and broadcasts those that may go out.
pub(crate) async fn run_hub(shared: Arc<Shared>) {
    let hub = &shared.events;
    let commits = shared.db.commits().clone();
    let (mut requests, mut workers) = (TableCursor::default(), TableCursor::default());
    let mut last_read = Instant::now();
    loop {
        let wait = if requests.waiting() || workers.waiting() { GAP_RECHECK } else { IDLE_READ };
        tokio::select! {
            _ = commits.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        // Without subscribers nobody waits for the events: keep the head
        // fresh once a second rather than after every commit.
        if hub.subscribers() == 0 && last_read.elapsed() < IDLE_READ {
            continue;
        }
        loop {
            last_read = Instant::now();
            let head = hub.head();
            let range = HistoryRange {
                requests_after: head.request,
                requests_up_to: i64::MAX,
                workers_after: head.worker,
                workers_up_to: i64::MAX,
            };
            let rows = match shared.db.history_after(range, READ_BATCH).await {
                Ok(rows) => rows,
                Err(err) => {
                    tracing::warn!(cause = %err, "reading new history rows for the event stream failed; retrying");
                    tokio::time::sleep(IDLE_READ).await;
                    break;
                }
            };
            let (request_rows, worker_rows) = split(rows);
            let full = request_rows.len() as u32 == READ_BATCH || worker_rows.len() as u32 == READ_BATCH;
            let now = Instant::now();
            let (request_rows, _) = requests.take(head.request, request_rows, now);
            let (worker_rows, _) = workers.take(head.worker, worker_rows, now);
            if request_rows.is_empty() && worker_rows.is_empty() {
                break;
            }
            let events = positioned(&shared, head, request_rows, worker_rows);
            let mut live = hub.lock();
            for event in events {
                live.head = event.id;
                // An error only says that nobody subscribes.
                let _ = hub.sender.send(Arc::new(event));
            }
            drop(live);
            if !full {
                break;
            }
        }
    }
}

/// One client's stream: the backlog of a resume, then the live events,
/// only those its caller may read.
pub struct Subscription {
    caller: Caller,
    backlog: VecDeque<Arc<Published>>,
    receiver: broadcast::Receiver<Arc<Published>>,
    shared: Arc<Shared>,
    ended: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("caller", &self.caller.name).field("backlog", &self.backlog.len()).finish()
    }
}

impl Subscription {
    /// The next event the caller may read; `None` when the stream ends
    /// (after a reload for a subscriber that fell behind).
    pub async fn next(&mut self) -> Option<Arc<Published>> {
        if let Some(event) = self.backlog.pop_front() {
            return Some(event);
        }
        if self.ended {
            return None;
        }
        loop {
            match self.receiver.recv().await {
                Ok(event) if event.visible_to(&self.caller) => return Some(event),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    self.ended = true;
                    let head = self.shared.events.head();
                    tracing::info!(caller = %self.caller.name, missed, "event subscriber fell behind; told to reload");
                    return Some(Arc::new(Published::reload(
                        head,
                        &format!("this stream fell {missed} events behind; reload and reconnect"),
                    )));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl Corral {
    /// Opens `caller`'s event stream: live from now, or after `after` (a
    /// `Last-Event-ID`), with a reload event first when `after` is too far
    /// behind or not a position of this database.
    pub async fn events(&self, caller: &Caller, after: Option<EventId>) -> Result<Subscription, ActorError> {
        let shared = self.shared().clone();
        let (receiver, head) = {
            let live = shared.events.lock();
            (shared.events.sender.subscribe(), live.head)
        };
        let mut backlog = VecDeque::new();
        if let Some(after) = after.filter(|after| *after != head) {
            if !after.is_at_or_before(head) {
                backlog.push_back(Arc::new(Published::reload(
                    head,
                    "the Last-Event-ID is not a position of this server's history; reload",
                )));
            } else {
                let range = HistoryRange {
                    requests_after: after.request,
                    requests_up_to: head.request,
                    workers_after: after.worker,
                    workers_up_to: head.worker,
                };
                let limit = shared.settings.events_resume_limit;
                let (request_rows, worker_rows) = split(shared.db.history_after(range, limit + 1).await?);
                if request_rows.len() > limit as usize || worker_rows.len() > limit as usize {
                    backlog.push_back(Arc::new(Published::reload(
                        head,
                        &format!("the Last-Event-ID is more than {limit} changes behind; reload"),
                    )));
                } else {
                    backlog.extend(
                        positioned(&shared, after, request_rows, worker_rows)
                            .into_iter()
                            .filter(|event| event.visible_to(caller))
                            .map(Arc::new),
                    );
                }
            }
        }
        Ok(Subscription { caller: caller.clone(), backlog, receiver, shared, ended: false })
    }

    /// The event stream's newest position.
    pub fn events_head(&self) -> EventId {
        self.shared().events.head()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use corral_core::RequestId;
    use corral_db::HistoryRecord;

    use super::*;

    fn row(id: i64) -> HistoryRow {
        HistoryRow {
            id,
            subject: HistorySubject::Request { id: RequestId(1), owner: None },
            record: HistoryRecord {
                at: SystemTime::UNIX_EPOCH,
                from: None,
                to: "waiting".into(),
                actor: "t".into(),
                reason: "t".into(),
            },
        }
    }

    fn ids(rows: &[HistoryRow]) -> Vec<i64> {
        rows.iter().map(|r| r.id).collect()
    }

    #[test]
    fn rows_after_a_missing_id_wait_until_it_commits_or_its_grace_ends() {
        let start = Instant::now();
        let mut cursor = TableCursor::default();
        let (taken, head) = cursor.take(10, vec![row(11), row(13), row(14)], start);
        assert_eq!((ids(&taken), head), (vec![11], 11), "13 waits for 12");
        assert!(cursor.waiting());
        let (taken, head) = cursor.take(11, vec![row(13), row(14)], start + GAP_GRACE / 2);
        assert_eq!((ids(&taken), head), (vec![], 11), "still within the grace");
        let (taken, head) = cursor.take(11, vec![row(12), row(13), row(14)], start + GAP_GRACE / 2);
        assert_eq!((ids(&taken), head), (vec![12, 13, 14], 14), "12 committed late, all go in order");
        assert!(!cursor.waiting());

        let (taken, head) = cursor.take(14, vec![row(16)], start + GAP_GRACE);
        assert_eq!((ids(&taken), head), (vec![], 14));
        let (taken, head) = cursor.take(14, vec![row(16), row(17)], start + GAP_GRACE * 2);
        assert_eq!((ids(&taken), head), (vec![16, 17], 17), "15 never committed: skipped after the grace");
        assert!(!cursor.waiting());
    }

    #[test]
    fn a_new_gap_gets_its_own_grace() {
        let start = Instant::now();
        let mut cursor = TableCursor::default();
        let _ = cursor.take(0, vec![row(2)], start);
        let (_, head) = cursor.take(0, vec![row(1), row(3)], start + GAP_GRACE * 3);
        assert_eq!(head, 1, "the gap after 1 is new: it waits its own grace");
    }
}
