//! Timers that outlive any one message: lease expiry, the timeouts and
//! retries of commands sent to agents, and the end of a failed worker's
//! backoff. They are checked against the server's [`crate::Clock`] on every
//! tick, so a test moves a manual clock instead of sleeping.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use actix::prelude::*;
use corral_core::{RequestId, WorkerId};
use corral_proto::agent::ActionKind;

use crate::request::RequestMsg;
use crate::worker::WorkerMsg;
use crate::{Shared, tell};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKey {
    /// The lease of this request ends.
    LeaseExpiry(RequestId),
    /// The command of this kind sent for this worker is unanswered for
    /// too long.
    CommandTimeout(WorkerId, ActionKind),
    /// The backoff after a failed attempt of this command is over: send it
    /// again.
    CommandRetry(WorkerId, ActionKind),
    /// This failed worker's backoff is over: try to heal it.
    BackoffOver(WorkerId),
}

#[derive(Message)]
#[rtype(result = "()")]
pub enum TimerMsg {
    /// Fire `key` at `at` (replaces an earlier time for the same key).
    Watch {
        key: TimerKey,
        at: SystemTime,
    },
    Unwatch {
        key: TimerKey,
    },
    /// Run one tick now and answer how many timers fired
    /// ([`crate::Corral::tick`]).
    Tick {
        reply: crate::Reply<usize>,
    },
}

pub struct Timekeeper {
    shared: Arc<Shared>,
    due: BTreeSet<(SystemTime, TimerKey)>,
    by_key: HashMap<TimerKey, SystemTime>,
}

impl Timekeeper {
    pub(crate) fn new(shared: Arc<Shared>) -> Timekeeper {
        Timekeeper { shared, due: BTreeSet::new(), by_key: HashMap::new() }
    }

    fn unwatch(&mut self, key: TimerKey) {
        if let Some(at) = self.by_key.remove(&key) {
            self.due.remove(&(at, key));
        }
    }

    /// Fires every timer that is due; answers how many.
    fn tick(&mut self) -> usize {
        let now = self.shared.clock.now();
        let mut fired = 0;
        while let Some(&(at, key)) = self.due.first() {
            if at > now {
                break;
            }
            self.due.pop_first();
            self.by_key.remove(&key);
            fired += 1;
            match key {
                TimerKey::LeaseExpiry(request) => {
                    if let Some(addr) = self.shared.dir.request(request) {
                        tell(&addr, RequestMsg::LeaseExpired);
                    }
                }
                TimerKey::CommandTimeout(worker, kind) => {
                    self.shared.observer.command_timed_out(kind);
                    if let Some(addr) = self.shared.dir.worker(worker) {
                        tell(&addr, WorkerMsg::CommandTimedOut { kind });
                    }
                }
                TimerKey::CommandRetry(worker, kind) => {
                    if let Some(addr) = self.shared.dir.worker(worker) {
                        tell(&addr, WorkerMsg::RetryCommand { kind });
                    }
                }
                TimerKey::BackoffOver(worker) => {
                    if let Some(addr) = self.shared.dir.worker(worker) {
                        tell(&addr, WorkerMsg::BackoffOver);
                    }
                }
            }
        }
        fired
    }
}

impl Actor for Timekeeper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
        ctx.run_interval(self.shared.settings.tick, |act, _| {
            act.tick();
        });
    }
}

impl Handler<TimerMsg> for Timekeeper {
    type Result = ();

    fn handle(&mut self, msg: TimerMsg, _: &mut Self::Context) {
        match msg {
            TimerMsg::Watch { key, at } => {
                self.unwatch(key);
                self.by_key.insert(key, at);
                self.due.insert((at, key));
            }
            TimerMsg::Unwatch { key } => self.unwatch(key),
            TimerMsg::Tick { reply } => {
                let _ = reply.send(self.tick());
            }
        }
    }
}
