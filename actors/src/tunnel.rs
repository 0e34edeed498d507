//! TCP tunnels: for each live lease, a port from the configured range that
//! forwards to the leased worker's SSH address. A tunnel accepts
//! connections only while its lease lives; closing it drops the listener
//! and cuts every connection made through it.
//!
//! Each tunnel carries at most [`TunnelLimits::max_connections`] at once
//! (more are closed as soon as they are accepted), closes a connection that
//! moved no byte either way for [`TunnelLimits::idle_timeout`], and backs
//! off when accepting fails (an exhausted file-descriptor table) instead of
//! spinning.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_core::RequestId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

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

/// What one tunnel allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelLimits {
    /// Connections carried at once.
    pub max_connections: usize,
    /// A connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
}

/// All open tunnels of this server.
#[derive(Debug)]
pub struct Tunnels {
    bind: IpAddr,
    range: RangeInclusive<u16>,
    limits: TunnelLimits,
    open: Mutex<HashMap<RequestId, Tunnel>>,
    /// Connections accepted so far, for metrics.
    connections: Arc<AtomicU64>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Tunnels {
    pub fn new(bind: IpAddr, range: RangeInclusive<u16>, limits: TunnelLimits) -> Tunnels {
        Tunnels { bind, range, limits, open: Mutex::new(HashMap::new()), connections: Arc::new(AtomicU64::new(0)) }
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
            let task = tokio::spawn(serve(listener, target.clone(), request, self.limits, self.connections.clone()));
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

/// Delays between failed accepts: 10 ms doubling up to 1 s, back to the
/// start after a success.
#[derive(Debug)]
struct AcceptBackoff {
    next: Duration,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MOST: Duration = Duration::from_secs(1);

    fn new() -> AcceptBackoff {
        AcceptBackoff { next: Self::FIRST }
    }

    /// How long to wait after one more failure.
    fn failed(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MOST);
        delay
    }

    fn succeeded(&mut self) {
        self.next = Self::FIRST;
    }

    /// Whether the last accept succeeded (for logging a failure once per
    /// streak).
    fn is_calm(&self) -> bool {
        self.next == Self::FIRST
    }
}

/// Accepts connections and forwards each to `target`, at most
/// `limits.max_connections` at once. Aborting this task drops the listener
/// and the `JoinSet`, which aborts every connection.
async fn serve(
    listener: TcpListener,
    target: String,
    request: RequestId,
    limits: TunnelLimits,
    counter: Arc<AtomicU64>,
) {
    let mut connections = JoinSet::new();
    let mut backoff = AcceptBackoff::new();
    let mut pause: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        tokio::select! {
            accepted = listener.accept(), if pause.is_none() => {
                let (inbound, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        if backoff.is_calm() {
                            tracing::warn!(request = %request, cause = %err, "tunnel cannot accept; backing off");
                        }
                        pause = Some(Box::pin(tokio::time::sleep(backoff.failed())));
                        continue;
                    }
                };
                backoff.succeeded();
                while connections.try_join_next().is_some() {}
                if connections.len() >= limits.max_connections {
                    tracing::warn!(
                        request = %request,
                        peer = %peer,
                        limit = limits.max_connections,
                        "tunnel connection refused: the lease has as many connections as allowed"
                    );
                    drop(inbound);
                    continue;
                }
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(request = %request, peer = %peer, "tunnel connection");
                connections.spawn(forward(inbound, target.clone(), request, limits.idle_timeout));
            }
            () = async { if let Some(pause) = pause.as_mut() { pause.await } }, if pause.is_some() => {
                pause = None;
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn forward(inbound: TcpStream, target: String, request: RequestId, idle_timeout: Duration) {
    let outbound = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target)).await;
    let outbound = match outbound {
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
    if let Idle::TimedOut = relay(inbound, outbound, idle_timeout).await {
        tracing::info!(request = %request, idle = ?idle_timeout, "tunnel connection closed: idle");
    }
}

/// How a relayed connection ended.
#[derive(Debug, PartialEq, Eq)]
enum Idle {
    /// Both sides closed (or one failed).
    Ended,
    /// No byte moved either way for the idle timeout.
    TimedOut,
}

/// Copies bytes both ways until both sides are done, or until no byte moved
/// either way for `idle_timeout`.
async fn relay(mut a: TcpStream, mut b: TcpStream, idle_timeout: Duration) -> Idle {
    let start = Instant::now();
    // Milliseconds since `start` of the last byte moved.
    let last = AtomicU64::new(0);
    let (mut a_read, mut a_write) = a.split();
    let (mut b_read, mut b_write) = b.split();
    let both = async {
        tokio::join!(
            copy_half(&mut a_read, &mut b_write, &last, start),
            copy_half(&mut b_read, &mut a_write, &last, start)
        )
    };
    let watch = async {
        loop {
            let deadline = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle_timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        _ = both => Idle::Ended,
        () = watch => Idle::TimedOut,
    }
}

/// Copies one direction, noting when bytes move; closes the writing side
/// when the reading side ends.
async fn copy_half<R, W>(from: &mut R, to: &mut W, last: &AtomicU64, start: Instant)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; 16 * 1024];
    let note = || {
        let since = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        last.fetch_max(since, Ordering::Relaxed);
    };
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        note();
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
        note();
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a loopback port; returns its address.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    fn tunnels(limits: TunnelLimits) -> Tunnels {
        // A range unlikely to be busy; taken ports are skipped.
        Tunnels::new(IpAddr::from([127, 0, 0, 1]), 42000..=42999, limits)
    }

    /// Sends `text` through `stream` and reads it back from the echo.
    async fn round_trip(stream: &mut TcpStream, text: &[u8]) -> Vec<u8> {
        stream.write_all(text).await.unwrap();
        let mut back = vec![0u8; text.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back)).await.unwrap().unwrap();
        back
    }

    /// Whether the tunnel closed `stream` (EOF or reset) within 5 s.
    async fn is_closed(stream: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        matches!(tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
    }

    #[tokio::test]
    async fn class8_tunnel_closes_connections_beyond_the_limit() {
        let limits = TunnelLimits { max_connections: 2, idle_timeout: Duration::from_secs(600) };
        let tunnels = tunnels(limits);
        let port = tunnels.open(RequestId(1), None, echo_server().await.to_string()).await.unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Two connections (the limit) carry bytes both ways.
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        assert_eq!(round_trip(&mut first, b"one").await, b"one");
        assert_eq!(round_trip(&mut second, b"two").await, b"two");
        // The third is closed at once, and the first two still work.
        let mut third = TcpStream::connect(addr).await.unwrap();
        assert!(is_closed(&mut third).await, "the connection beyond the limit must be closed");
        assert_eq!(round_trip(&mut first, b"still").await, b"still");
        assert_eq!(tunnels.connections(), 2);
        // Once one ends, a new one is carried again.
        drop(second);
        let mut fourth = connect_when_free(addr).await;
        assert_eq!(round_trip(&mut fourth, b"four").await, b"four");
    }

    /// Connects until the tunnel carries the connection (a closed one
    /// frees its slot when the tunnel notices the close).
    async fn connect_when_free(addr: SocketAddr) -> TcpStream {
        for _ in 0..50 {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(b"?").await.unwrap();
            let mut byte = [0u8; 1];
            if let Ok(Ok(1)) = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await {
                return stream;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the tunnel never carried a new connection after one closed");
    }

    #[tokio::test]
    async fn class8_tunnel_closes_idle_connections_and_keeps_busy_ones() {
        let limits = TunnelLimits { max_connections: 8, idle_timeout: Duration::from_millis(400) };
        let tunnels = tunnels(limits);
        let port = tunnels.open(RequestId(2), None, echo_server().await.to_string()).await.unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let mut busy = TcpStream::connect(addr).await.unwrap();
        assert_eq!(round_trip(&mut idle, b"hello").await, b"hello");
        // The busy connection moves a byte every 100 ms, for three idle
        // timeouts: it stays open, bytes keep flowing.
        for i in 0..12u8 {
            assert_eq!(round_trip(&mut busy, &[i]).await, [i]);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The idle one moved nothing since its first bytes: closed.
        assert!(is_closed(&mut idle).await, "an idle connection must be closed");
        assert_eq!(round_trip(&mut busy, b"end").await, b"end");
    }

    #[test]
    fn class8_tunnel_accept_failures_back_off_up_to_a_second() {
        let mut backoff = AcceptBackoff::new();
        let delays: Vec<u64> = (0..10).map(|_| backoff.failed().as_millis() as u64).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        assert!(!backoff.is_calm());
        backoff.succeeded();
        assert!(backoff.is_calm());
        assert_eq!(backoff.failed(), Duration::from_millis(10));
    }
}
