//! The session reaper: expires agent sessions whose deadline (database
//! clock) passed, which releases their work locks, and fails their workers.
//!
//! Silence the server caused does not count against an agent: after a
//! sweep failed (the database was away, so heartbeats failed too), the
//! next sweep first gives every agent session a full timeout from now
//! (`Db::grace_sessions`, as the rebuild does at start), then expires.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::agent::session_gone;
use crate::{Reply, Shared};

pub struct Reaper {
    shared: Arc<Shared>,
    busy: bool,
    /// The last sweep failed: grant grace before expiring anything.
    grace_due: bool,
    /// Barriers waiting for the next sweep's answer.
    waiting: Vec<Reply<usize>>,
}

impl Reaper {
    pub(crate) fn new(shared: Arc<Shared>) -> Reaper {
        Reaper { shared, busy: false, grace_due: false, waiting: Vec::new() }
    }

    /// Expires what is due; `reply` (a [`Sweep`] barrier) learns how many
    /// sessions it expired once their workers were told. A sweep already
    /// running answers for both.
    fn sweep(&mut self, ctx: &mut Context<Self>, reply: Option<Reply<usize>>) {
        self.waiting.extend(reply);
        if self.busy {
            return;
        }
        self.busy = true;
        let shared = self.shared.clone();
        // Agent sessions only: server sessions follow the database clock
        // and are expired by standby replicas waiting to lead.
        let grace = self.grace_due;
        let work = async move {
            let now = shared.clock.db_now();
            if grace {
                let graced = shared.db.grace_sessions(now).await?;
                tracing::warn!(graced, "the database is back: agent sessions get a full timeout before expiring");
            }
            shared.db.expire_sessions_of(Some("agent"), now).await
        };
        let answering = std::mem::take(&mut self.waiting);
        ctx.spawn(work.into_actor(self).map(move |result, act, ctx| {
            act.busy = false;
            let mut count = 0;
            match result {
                Ok(expired) => {
                    act.grace_due = false;
                    count = expired.len();
                    for gone in expired {
                        tracing::warn!(session = %gone.session.id, agent = %gone.session.name, reason = %gone.reason, "session expired");
                        session_gone(&act.shared, gone.session.id, &gone.workers, &gone.reason);
                    }
                }
                Err(err) => {
                    act.grace_due = true;
                    tracing::error!(cause = %err, "session reaper could not run");
                }
            }
            for reply in answering {
                let _ = reply.send(count);
            }
            // A barrier that arrived while this sweep ran may have moved
            // the clock after it read it: sweep again for it.
            if !act.waiting.is_empty() {
                act.sweep(ctx, None);
            }
        }));
    }
}

/// Expire what is due now and answer how many sessions expired
/// ([`crate::Corral::tick`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Sweep(pub Reply<usize>);

impl Handler<Sweep> for Reaper {
    type Result = ();

    fn handle(&mut self, Sweep(reply): Sweep, ctx: &mut Self::Context) {
        self.sweep(ctx, Some(reply));
    }
}

impl Actor for Reaper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let every = self.shared.settings.tick.max(Duration::from_millis(20)).min(Duration::from_secs(1));
        ctx.run_interval(every, |act, ctx| act.sweep(ctx, None));
    }
}
