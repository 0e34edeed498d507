//! The session reaper: expires agent sessions whose deadline (database
//! clock) passed, which releases their work locks, and fails their workers.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::Shared;
use crate::agent::session_gone;

pub struct Reaper {
    shared: Arc<Shared>,
    busy: bool,
}

impl Reaper {
    pub(crate) fn new(shared: Arc<Shared>) -> Reaper {
        Reaper { shared, busy: false }
    }

    fn sweep(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        self.busy = true;
        let shared = self.shared.clone();
        // Agent sessions only: server sessions follow the database clock
        // and are expired by standby replicas waiting to lead.
        let work = async move { shared.db.expire_sessions_of(Some("agent"), shared.clock.db_now()).await };
        ctx.spawn(work.into_actor(self).map(|result, act, _| {
            act.busy = false;
            match result {
                Ok(expired) => {
                    for gone in expired {
                        tracing::warn!(session = %gone.session.id, agent = %gone.session.name, reason = %gone.reason, "session expired");
                        session_gone(&act.shared, gone.session.id, &gone.workers, &gone.reason);
                    }
                }
                Err(err) => tracing::error!(cause = %err, "session reaper could not run"),
            }
        }));
    }
}

impl Actor for Reaper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let every = self.shared.settings.tick.max(Duration::from_millis(20)).min(Duration::from_secs(1));
        ctx.run_interval(every, |act, ctx| act.sweep(ctx));
    }
}
