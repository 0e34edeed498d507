//! The embedded PostgreSQL launcher against the real server binaries: initialise, start, connect, stop, and
//! start again on the same data directory.
//!
//! Run as root (as CI does), this exercises the switch to the `postgres` user.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use corral_embedded_pg::EmbeddedPostgres;
use tempfile::TempDir;
use tokio_postgres::NoTls;

/// A fresh, short directory under the system temp dir (mode 0755: run as
/// root, the cluster runs as the `postgres` user, which must enter it),
/// removed when dropped.
fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("corral-emb-")
        .permissions(std::fs::Permissions::from_mode(0o755))
        .tempdir()
        .unwrap()
}

/// The cluster of the data directory it names, shut down at once when
/// dropped (SIGQUIT: PostgreSQL's immediate shutdown), so that a test that
/// failed before stopping it does not leave a postmaster running in a
/// removed directory. The postmaster is a daemon, not a child of the test:
/// it is found through its pid file. Declare it after the directory.
struct Postmaster(PathBuf);

impl Drop for Postmaster {
    fn drop(&mut self) {
        let pid_file = self.0.join("postgres").join("postmaster.pid");
        if let Some(pid) = std::fs::read_to_string(pid_file).ok().and_then(|text| text.lines().next()?.parse().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGQUIT);
        }
    }
}

async fn select_one(connection_string: &str) -> i32 {
    let (client, connection) = tokio_postgres::connect(connection_string, NoTls).await.unwrap();
    let connection = tokio::spawn(connection);
    let value: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    drop(client);
    connection.await.unwrap().unwrap();
    value
}

#[tokio::test]
async fn embedded_cluster_starts_stops_and_restarts_on_the_same_data() {
    let dir = temp_dir();
    let _postmaster = Postmaster(dir.path().to_path_buf());

    let pg = EmbeddedPostgres::start(dir.path()).await.unwrap_or_else(|e| panic!("first start: {e:#?}"));
    assert!(!pg.was_already_running());
    assert_eq!(pg.port(), 5432);
    assert!(pg.bin_dir().join("pgbench").is_file(), "no pgbench in {}", pg.bin_dir().display());
    let url = pg.connection_string("corral");
    assert_eq!(select_one(&url).await, 1);
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute("CREATE TABLE survives (x int); INSERT INTO survives VALUES (42)").await.unwrap();
    drop(client);
    pg.stop().await.unwrap();
    assert!(tokio_postgres::connect(&url, NoTls).await.is_err(), "server still accepts connections after stop");

    let pg = EmbeddedPostgres::start(dir.path()).await.unwrap_or_else(|e| panic!("second start: {e:#?}"));
    assert!(!pg.was_already_running());
    let (client, connection) = tokio_postgres::connect(&pg.connection_string("corral"), NoTls).await.unwrap();
    tokio::spawn(connection);
    let x: i32 = client.query_one("SELECT x FROM survives", &[]).await.unwrap().get(0);
    assert_eq!(x, 42);
    drop(client);

    // A corral killed without stopping its database leaves the postmaster running: the next start reuses it.
    let again = EmbeddedPostgres::start(dir.path()).await.unwrap_or_else(|e| panic!("start while running: {e:#?}"));
    assert!(again.was_already_running());
    assert_eq!(again.socket_dir(), pg.socket_dir());
    assert_eq!(select_one(&again.connection_string("corral")).await, 1);
    drop(again);
    pg.stop().await.unwrap();
}

#[tokio::test]
async fn embedded_cluster_with_a_long_data_dir_puts_its_socket_in_tmp() {
    let dir = temp_dir();
    let deep = dir.path().join("a-directory-name-long-enough-that-the-unix-socket-path-would-not-fit-in-sun-path");
    let _postmaster = Postmaster(deep.clone());
    let pg = EmbeddedPostgres::start(&deep).await.unwrap_or_else(|e| panic!("start: {e:#?}"));
    let socket_dir = pg.socket_dir().to_string_lossy().into_owned();
    assert!(socket_dir.starts_with("/tmp/corral-pg-"), "{socket_dir}");
    assert_eq!(select_one(&pg.connection_string("corral")).await, 1);
    pg.stop().await.unwrap();
    std::fs::remove_dir_all(socket_dir).unwrap();
}

#[tokio::test]
async fn as_root_a_data_dir_the_postgres_user_cannot_reach_is_reported() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let dir = temp_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let error = EmbeddedPostgres::start(&dir.path().join("data")).await.expect_err("started in an unreachable dir");
    let message = error.to_string();
    assert!(message.contains("cannot enter") && message.contains(&dir.path().display().to_string()), "{message}");
}
