//! A simulated agent on a thread of its own that can be stopped cleanly
//! (it closes its session) or crashed: its event loop is dropped mid-call,
//! with no session close and no goodbye, as a `kill -9` of `corral agent`
//! would leave it. A new [`AgentThread`] of the same name registers the
//! same workers again (their UUIDs derive from the name).

use std::rc::Rc;
use std::thread::JoinHandle;
use std::time::Duration;

use corral_agent::{AgentOptions, Simulated};
use corral_core::Caps;

pub(crate) struct AgentThread {
    stop: tokio::sync::watch::Sender<bool>,
    crash: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl AgentThread {
    /// Starts agent `name` with one worker per item of `caps`. It retries
    /// the server at most a second apart, so that it is back soon after a
    /// server restart.
    pub(crate) fn start(url: &str, token: &str, name: &str, caps: Vec<Caps>) -> AgentThread {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (crash, crashed) = tokio::sync::oneshot::channel::<()>();
        let (url, token, name) = (url.to_string(), token.to_string(), name.to_string());
        let handle = std::thread::spawn(move || {
            let backend = Simulated::with_caps(&name, "127.0.0.1:22", "lab", caps);
            let mut options = AgentOptions::new(url, token);
            options.poll_wait = Duration::from_secs(10);
            options.max_backoff = Duration::from_secs(1);
            actix_rt::System::new().block_on(async move {
                tokio::select! {
                    result = corral_agent::run(Rc::new(backend), options, stopped) => {
                        if let Err(err) = result {
                            eprintln!("agent {name}: {err:#}");
                        }
                    }
                    // Dropping the agent's future and then its runtime
                    // ends every call in flight: a crash.
                    _ = crashed => {}
                }
            });
        });
        AgentThread { stop, crash: Some(crash), handle: Some(handle) }
    }

    /// A crash: nothing is closed; the server finds out by itself.
    pub(crate) async fn crash(mut self) {
        if let Some(crash) = self.crash.take() {
            let _ = crash.send(());
        }
        self.join().await;
    }

    /// A clean stop: the agent closes its session.
    pub(crate) async fn stop(mut self) {
        let _ = self.stop.send(true);
        self.join().await;
    }

    async fn join(&mut self) {
        if let Some(handle) = self.handle.take() {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

impl Drop for AgentThread {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
