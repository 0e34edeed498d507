//! The agent's main loop: open a session (with backoff), then heartbeat,
//! long-poll and execute until the session is gone or shutdown is asked.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use corral_core::{FencingToken, SessionId, WorkerId};
use corral_proto::agent::{Command, CommandResult, Heartbeat, Observation, OpenSession, SessionOpened};
use tokio::sync::{Notify, mpsc, watch};

use crate::backend::Backend;
use crate::client::{AgentClient, ClientError};
use crate::tls::{ClientTls, TlsError};

#[derive(Clone)]
pub struct AgentOptions {
    pub server: String,
    pub token: String,
    /// How an `https://` server is trusted.
    pub tls: ClientTls,
    /// How long one long-poll waits for commands.
    pub poll_wait: Duration,
    /// Longest delay between reconnection attempts (and between attempts
    /// to post results).
    pub max_backoff: Duration,
    /// Faults the HTTP client meets (tests only; see [`crate::faults`]).
    #[cfg(feature = "fault-injection")]
    pub faults: crate::faults::ClientFaults,
}

impl AgentOptions {
    pub fn new(server: impl Into<String>, token: impl Into<String>) -> AgentOptions {
        AgentOptions {
            server: server.into(),
            token: token.into(),
            tls: ClientTls::default(),
            poll_wait: Duration::from_secs(25),
            max_backoff: Duration::from_secs(10),
            #[cfg(feature = "fault-injection")]
            faults: Default::default(),
        }
    }
}

/// The token never shows.
impl std::fmt::Debug for AgentOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentOptions")
            .field("server", &self.server)
            .field("token", &"<redacted>")
            .field("tls", &self.tls)
            .field("poll_wait", &self.poll_wait)
            .field("max_backoff", &self.max_backoff)
            .finish()
    }
}

/// Growing, jittered delays between attempts.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Backoff {
        Backoff { next: Duration::from_millis(200), max }
    }

    fn reset(&mut self) {
        self.next = Duration::from_millis(200);
    }

    fn step(&mut self) -> Duration {
        let jitter = u64::from(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_micros()
                % 100,
        );
        let delay = self.next + Duration::from_millis(jitter);
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

/// Runs the agent until `shutdown` turns true; then closes the session.
/// Fails only when its HTTP client cannot be set up (`options.tls`); the
/// server being away or refusing is retried.
pub async fn run<B: Backend + 'static>(
    backend: Rc<B>,
    options: AgentOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), TlsError> {
    let client = AgentClient::connect(&options.server, &options.token, &options.tls)?;
    #[cfg(feature = "fault-injection")]
    let client = client.with_faults(options.faults.clone());
    let client = Rc::new(client);
    let mut backoff = Backoff::new(options.max_backoff);
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let open = OpenSession { agent: backend.name(), workers: backend.workers().await };
        let opened = tokio::select! {
            opened = client.open(&open) => opened,
            _ = shutdown.changed() => return Ok(()),
        };
        let opened = match opened {
            Ok(opened) => opened,
            Err(err) if err.is_transient() => {
                let delay = backoff.step();
                tracing::warn!(cause = %err, retry_in = ?delay, "cannot open a session");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = shutdown.changed() => return Ok(()),
                }
            }
            Err(err) => {
                // Refused (bad token, conflicting worker): retrying the same
                // thing quickly will not help, slowly it might (an admin fixes it).
                tracing::error!(cause = %err, "the server refused the session");
                tokio::select! {
                    _ = tokio::time::sleep(options.max_backoff) => continue,
                    _ = shutdown.changed() => return Ok(()),
                }
            }
        };
        backoff.reset();
        tracing::info!(session = %opened.session, workers = opened.workers.len(), "session opened");
        let session = opened.session;
        let ended = run_session(&client, &backend, &options, opened, &mut shutdown).await;
        match ended {
            SessionEnd::Shutdown => {
                if let Err(err) = client.close(session).await {
                    tracing::warn!(cause = %err, "could not close the session");
                }
                return Ok(());
            }
            SessionEnd::Gone(why) => tracing::warn!(session = %session, why = %why, "session gone; registering again"),
        }
    }
}

/// How long an ending session waits for its queued results to be posted.
const RESULTS_FLUSH: Duration = Duration::from_secs(5);

enum SessionEnd {
    Shutdown,
    Gone(String),
}

struct Shared {
    gone: Notify,
    gone_why: RefCell<Option<String>>,
    /// Newest fencing token seen per worker.
    fences: RefCell<HashMap<WorkerId, FencingToken>>,
    /// Commands of one worker run one at a time.
    locks: RefCell<HashMap<WorkerId, Rc<tokio::sync::Mutex<()>>>>,
}

impl Shared {
    fn end(&self, why: String) {
        self.gone_why.borrow_mut().get_or_insert(why);
        self.gone.notify_waiters();
        self.gone.notify_one();
    }
}

async fn run_session<B: Backend + 'static>(
    client: &Rc<AgentClient>,
    backend: &Rc<B>,
    options: &AgentOptions,
    opened: SessionOpened,
    shutdown: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let session = opened.session;
    let shared = Rc::new(Shared {
        gone: Notify::new(),
        gone_why: RefCell::new(None),
        fences: RefCell::new(opened.workers.iter().map(|w| (w.uuid, w.fence)).collect()),
        locks: RefCell::new(HashMap::new()),
    });
    let (results_tx, results_rx) = mpsc::unbounded_channel();
    let heartbeats = actix_rt::spawn(heartbeat_loop(
        client.clone(),
        backend.clone(),
        shared.clone(),
        session,
        opened.heartbeat_interval,
    ));
    let sender = actix_rt::spawn(result_loop(client.clone(), shared.clone(), session, results_rx, options.max_backoff));
    let ended = poll_loop(client, backend, options, &shared, session, results_tx, shutdown).await;
    heartbeats.abort();
    // Let queued results reach the server before the session closes.
    match tokio::time::timeout(RESULTS_FLUSH, sender).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::error!(cause = %err, "the result sender failed; queued results are lost"),
        Err(_) => tracing::warn!(
            session = %session,
            after = ?RESULTS_FLUSH,
            "queued results not sent before the session ended; the server resends what it still needs"
        ),
    }
    ended
}

async fn poll_loop<B: Backend + 'static>(
    client: &Rc<AgentClient>,
    backend: &Rc<B>,
    options: &AgentOptions,
    shared: &Rc<Shared>,
    session: SessionId,
    results: mpsc::UnboundedSender<CommandResult>,
    shutdown: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let mut after = 0u64;
    let mut incarnation: Option<String> = None;
    let mut backoff = Backoff::new(options.max_backoff);
    loop {
        let batch = tokio::select! {
            batch = client.poll(session, after, incarnation.as_deref(), options.poll_wait) => batch,
            _ = shared.gone.notified() => {
                return SessionEnd::Gone(shared.gone_why.borrow().clone().unwrap_or_default());
            }
            _ = shutdown.changed() => return SessionEnd::Shutdown,
        };
        let batch = match batch {
            Ok(batch) => batch,
            Err(ClientError::SessionGone(why)) => return SessionEnd::Gone(why),
            Err(err) => {
                let delay = backoff.step();
                tracing::warn!(cause = %err, retry_in = ?delay, "long-poll failed");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = shutdown.changed() => return SessionEnd::Shutdown,
                }
            }
        };
        backoff.reset();
        if incarnation.as_deref() != Some(batch.incarnation.as_str()) {
            // The server restarted: sequence numbers start again.
            after = 0;
            incarnation = Some(batch.incarnation.clone());
        }
        for command in batch.commands {
            after = after.max(command.seq);
            dispatch(backend, shared, command, &results);
        }
    }
}

/// Refuses stale commands; runs the others in the background, one at a
/// time per worker.
fn dispatch<B: Backend + 'static>(
    backend: &Rc<B>,
    shared: &Rc<Shared>,
    command: Command,
    results: &mpsc::UnboundedSender<CommandResult>,
) {
    let newest = shared.fences.borrow().get(&command.worker).copied();
    if newest.is_some_and(|n| command.fence < n) {
        tracing::warn!(worker = %command.worker, fence = %command.fence, newest = ?newest, "refusing a stale command");
        queue_result(
            results,
            CommandResult {
                seq: command.seq,
                worker: command.worker,
                fence: command.fence,
                ok: false,
                message: "stale fencing token".to_string(),
                host_key: None,
                stale: true,
            },
        );
        return;
    }
    shared.fences.borrow_mut().insert(command.worker, command.fence);
    let lock = shared.locks.borrow_mut().entry(command.worker).or_default().clone();
    let (backend, results) = (backend.clone(), results.clone());
    actix_rt::spawn(async move {
        let _turn = lock.lock().await;
        tracing::debug!(worker = %command.worker, seq = command.seq, action = ?command.action, "executing");
        let outcome = backend.execute(command.worker, &command.action).await;
        if !outcome.ok {
            tracing::warn!(worker = %command.worker, action = ?command.action, message = %outcome.message, "command failed");
        }
        if outcome.lost {
            tracing::warn!(worker = %command.worker, seq = command.seq, "result lost (simulated fault)");
            return;
        }
        queue_result(
            &results,
            CommandResult {
                seq: command.seq,
                worker: command.worker,
                fence: command.fence,
                ok: outcome.ok,
                message: outcome.message,
                host_key: outcome.host_key,
                stale: false,
            },
        );
    });
}

/// Queues `result` for the session's result sender; when the session has
/// ended (the sender is gone), says so: the server resends the command to
/// the next session if it still needs it.
fn queue_result(results: &mpsc::UnboundedSender<CommandResult>, result: CommandResult) {
    if let Err(mpsc::error::SendError(result)) = results.send(result) {
        let (worker, seq, ok) = (result.worker, result.seq, result.ok);
        tracing::warn!(worker = %worker, seq, ok, "result not sent: its session has ended");
    }
}

/// Posts results as they come, several at once when several are ready.
async fn result_loop(
    client: Rc<AgentClient>,
    shared: Rc<Shared>,
    session: SessionId,
    mut results: mpsc::UnboundedReceiver<CommandResult>,
    max_delay: Duration,
) {
    while let Some(first) = results.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = results.try_recv() {
            batch.push(more);
        }
        let mut attempts = 0;
        loop {
            match client.results(session, &batch).await {
                Ok(()) => break,
                Err(ClientError::SessionGone(why)) => {
                    shared.end(why);
                    return;
                }
                Err(err) if attempts < 5 => {
                    attempts += 1;
                    tracing::warn!(cause = %err, attempts, "could not post results; retrying");
                    tokio::time::sleep(Duration::from_millis(200 << attempts).min(max_delay)).await;
                }
                Err(err) => {
                    tracing::error!(cause = %err, "results lost; the server will resend what it still needs");
                    break;
                }
            }
        }
    }
}

async fn heartbeat_loop<B: Backend>(
    client: Rc<AgentClient>,
    backend: Rc<B>,
    shared: Rc<Shared>,
    session: SessionId,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if !backend.heartbeats() {
            continue;
        }
        let workers: Vec<WorkerId> = shared.fences.borrow().keys().copied().collect();
        let mut observations = Vec::with_capacity(workers.len());
        for uuid in workers {
            observations.push(Observation::from_hook_output(uuid, backend.observe(uuid).await));
        }
        match client.heartbeat(session, &Heartbeat { workers: observations }).await {
            Ok(_) => {}
            Err(ClientError::SessionGone(why)) => {
                shared.end(why);
                return;
            }
            // A blip: the session survives until its timeout.
            Err(err) => tracing::warn!(cause = %err, "heartbeat failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class9_debug_redacts_agent_options_token() {
        let options = AgentOptions::new("https://corral.lab:8487", "agent-s3cr3t-token");
        let shown = format!("{options:?} {options:#?}");
        assert!(!shown.contains("agent-s3cr3t-token") && shown.contains("<redacted>"), "{shown}");
        assert!(shown.contains("https://corral.lab:8487"), "{shown}");
    }
}
