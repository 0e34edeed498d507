//! TCP tunnels: for each live lease, a port from the configured range that
//! forwards to the leased worker's SSH address. A tunnel accepts
//! connections only while its lease lives; closing it drops the listener
//! and cuts every connection made through it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_core::RequestId;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("no free tunnel port in {start}-{end}")]
    NoFreePort { start: u16, end: u16 },
}

#[derive(Debug)]
struct Tunnel {
    port: u16,
    task: JoinHandle<()>,
}

/// All open tunnels of this server.
#[derive(Debug)]
pub struct Tunnels {
    bind: IpAddr,
    range: RangeInclusive<u16>,
    open: Mutex<HashMap<RequestId, Tunnel>>,
    /// Connections accepted so far, for metrics.
    connections: Arc<AtomicU64>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Tunnels {
    pub fn new(bind: IpAddr, range: RangeInclusive<u16>) -> Tunnels {
        Tunnels { bind, range, open: Mutex::new(HashMap::new()), connections: Arc::new(AtomicU64::new(0)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RequestId, Tunnel>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn port_of(&self, request: RequestId) -> Option<u16> {
        self.lock().get(&request).map(|t| t.port)
    }

    pub fn open_count(&self) -> usize {
        self.lock().len()
    }

    /// Opens (or returns the already open) tunnel of `request` to `target`,
    /// on `preferred` if given and free (a restarted server re-opens live
    /// leases on their ports), else on the first free port of the range.
    /// Must be called from within a tokio runtime.
    pub async fn open(&self, request: RequestId, preferred: Option<u16>, target: String) -> Result<u16, TunnelError> {
        if let Some(port) = self.port_of(request) {
            return Ok(port);
        }
        let used: Vec<u16> = self.lock().values().map(|t| t.port).collect();
        let candidates = preferred.into_iter().chain(self.range.clone().filter(|p| Some(*p) != preferred));
        for port in candidates {
            if used.contains(&port) || !self.range.contains(&port) {
                continue;
            }
            let Ok(listener) = TcpListener::bind(SocketAddr::new(self.bind, port)).await else { continue };
            let task = tokio::spawn(serve(listener, target.clone(), request, self.connections.clone()));
            self.lock().insert(request, Tunnel { port, task });
            tracing::info!(request = %request, port, target = %target, "tunnel open");
            return Ok(port);
        }
        Err(TunnelError::NoFreePort { start: *self.range.start(), end: *self.range.end() })
    }

    /// Closes the tunnel of `request` and cuts its connections.
    pub fn close(&self, request: RequestId) {
        if let Some(tunnel) = self.lock().remove(&request) {
            tunnel.task.abort();
            tracing::info!(request = %request, port = tunnel.port, "tunnel closed");
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for Tunnels {
    fn drop(&mut self) {
        for (_, tunnel) in self.lock().drain() {
            tunnel.task.abort();
        }
    }
}

/// Accepts connections and forwards each to `target`. Aborting this task
/// drops the listener and the `JoinSet`, which aborts every connection.
async fn serve(listener: TcpListener, target: String, request: RequestId, counter: Arc<AtomicU64>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((inbound, peer)) = accepted else { continue };
                let target = target.clone();
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(request = %request, peer = %peer, "tunnel connection");
                connections.spawn(forward(inbound, target, request));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn forward(mut inbound: TcpStream, target: String, request: RequestId) {
    let outbound = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target)).await;
    let mut outbound = match outbound {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::warn!(request = %request, target = %target, cause = %e, "tunnel target unreachable");
            return;
        }
        Err(_) => {
            tracing::warn!(request = %request, target = %target, "tunnel target did not answer");
            return;
        }
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
}
