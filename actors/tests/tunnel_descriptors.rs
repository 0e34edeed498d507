//! A tunnel whose accept fails because the process ran out of file
//! descriptors (EMFILE) backs off instead of spinning a CPU, and carries
//! connections again once descriptors are free (issue 13, class 8).
//!
//! Its own test binary: it lowers this process's RLIMIT_NOFILE.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use corral_actors::tunnel::{TunnelLimits, Tunnels};
use corral_core::RequestId;
use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage, setrlimit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// CPU time (user and system) this process has used.
fn cpu_time() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    let (user, system) = (usage.user_time(), usage.system_time());
    let micros = (user.tv_sec() + system.tv_sec()) * 1_000_000 + user.tv_usec() + system.tv_usec();
    Duration::from_micros(u64::try_from(micros).unwrap())
}

/// The highest file descriptor number open now.
fn highest_fd() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn class8_tunnel_accept_backs_off_when_file_descriptors_run_out() {
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = echo.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = echo.accept().await else { continue };
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let limits = TunnelLimits { max_connections: 8, idle_timeout: Duration::from_secs(600) };
    let tunnels = Tunnels::new(IpAddr::from([127, 0, 0, 1]), 43000..=43999, limits);
    let port = tunnels.open(RequestId(1), None, target).await.unwrap();

    // Leave exactly one descriptor free: the client's socket takes it, and
    // the tunnel's accept of that connection fails with EMFILE.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, highest_fd() + 8, hard).unwrap();
    let mut filler = Vec::new();
    while let Ok(file) = std::fs::File::open("/dev/null") {
        filler.push(file);
    }
    filler.pop();
    let mut client = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await.unwrap();
    assert!(std::fs::File::open("/dev/null").is_err(), "no descriptor may be left");

    // For 1.5 s the tunnel cannot accept: spinning would burn about that
    // much CPU; backing off (10 ms doubling to 1 s) burns next to none.
    let before = cpu_time();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let used = cpu_time() - before;
    drop(filler);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    assert!(used < Duration::from_millis(300), "the accept loop spun: {used:?} of CPU in 1.5 s");

    // Descriptors are free again: the waiting connection is carried.
    client.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(&back, b"ping");
}
