//! Issue 18, item 1, against a real PostgreSQL: a multi-host URL reaches
//! the host that accepts writes; a URL of unreachable hosts, or of
//! read-only servers only, fails as `Unavailable` with a message that
//! says which; a server that turns read-only under open connections (a
//! primary demoted by a failover) makes writes `Unavailable`, and once a
//! server accepts writes again the next write goes through on a fresh
//! connection (the read-only ones left the pool).

use std::time::Duration;

use corral_core::{Groups, Role};
use corral_db::{Db, DbError, PoolSettings};
use corral_testkit::{TestDb, racy_free_port, wait_until};
use tokio_postgres::config::Host;

/// `test`'s connection settings with `host=`/`port=` replaced by a first
/// host on a closed TCP port, then the real one.
///
/// Closed ports are [`racy_free_port`]s: nothing listened there a moment
/// ago. Should another process take one meanwhile, the connection fails
/// differently (it is no PostgreSQL of this test) and the test fails; a
/// clash cannot make it pass.
fn multi_host_url(test: &TestDb, extra: &str) -> String {
    let config = test.config();
    let socket_dir = match &config.get_hosts()[0] {
        Host::Unix(path) => path.display().to_string(),
        Host::Tcp(host) => host.clone(),
    };
    format!(
        "host='127.0.0.1,{socket_dir}' port={},{} user={} dbname={} {extra}",
        racy_free_port(),
        config.get_ports()[0],
        config.get_user().expect("the test URL names a user"),
        test.name,
    )
}

fn settings() -> PoolSettings {
    PoolSettings { max_size: 4, wait_timeout: Duration::from_secs(2), connect_timeout: Duration::from_secs(2) }
}

#[tokio::test]
async fn a_multi_host_url_skips_an_unreachable_host_and_writes_to_the_one_that_accepts_writes() {
    let test = corral_testkit::test_database().await;
    let url = multi_host_url(&test, "target_session_attrs=read-write");
    let db = Db::connect(&url, &settings()).await.expect("the second host answers");
    db.apply_schema().await.expect("the schema applies through the multi-host URL");
    db.create_user("mia", Role::User, &Groups::default(), "token-mia").await.expect("a write goes through");
}

#[tokio::test]
async fn a_url_whose_hosts_are_all_unreachable_says_so() {
    // Input: two hosts, both closed TCP ports. Must: Unavailable, naming
    // that no host could be reached.
    let url =
        format!("host=127.0.0.1,127.0.0.1 port={},{} user=corral dbname=corral", racy_free_port(), racy_free_port());
    let err = Db::connect(&url, &settings()).await.expect_err("nothing listens there");
    assert!(matches!(err, DbError::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("no host of the database URL could be reached"), "{err}");
}

#[tokio::test]
async fn a_url_of_read_only_servers_only_says_no_host_accepts_writes() {
    // Input: the only server reached is read-only (what a standby reports)
    // and the URL asks for a read-write session. Must: Unavailable, naming
    // standbys, not a generic error.
    let test = corral_testkit::test_database().await;
    let url = format!("{} options='-c default_transaction_read_only=on' target_session_attrs=read-write", test.url);
    let err = Db::connect(&url, &settings()).await.expect_err("no host accepts writes");
    assert!(matches!(err, DbError::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("no host of the database URL accepts writes"), "{err}");
}

#[tokio::test]
async fn a_server_turning_read_only_makes_writes_unavailable_until_one_accepts_writes_again() {
    let test = corral_testkit::test_database().await;
    let db = Db::connect(&test.url, &settings()).await.expect("connects");
    db.apply_schema().await.expect("the schema applies");
    db.create_user("before", Role::User, &Groups::default(), "token-before").await.expect("a write before");
    let side = test.connect().await;

    // The "primary" turns read-only under corral: its new sessions are
    // read-only, and the old ones are ended (as a demotion restarts it).
    side.batch_execute(&format!("ALTER DATABASE \"{}\" SET default_transaction_read_only = on", test.name))
        .await
        .expect("alters the database");
    side.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        &[&test.name],
    )
    .await
    .expect("ends corral's sessions");
    // Reads go on (a read retries on fresh connections, now read-only ones).
    wait_until("a read succeeds on the read-only server", Duration::from_secs(10), || async { db.ping().await.ok() })
        .await;

    let err = db
        .create_user("during", Role::User, &Groups::default(), "token-during")
        .await
        .expect_err("a read-only server takes no write");
    assert!(matches!(err, DbError::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("read-only"), "{err}");

    // Writes are possible again: the next write must not land on a pooled
    // read-only connection.
    side.batch_execute(&format!("ALTER DATABASE \"{}\" RESET default_transaction_read_only", test.name))
        .await
        .expect("resets the database");
    db.create_user("after", Role::User, &Groups::default(), "token-after")
        .await
        .expect("the write after the failover goes to a connection that accepts writes");
    let names: Vec<String> = db.list_users().await.expect("lists").into_iter().map(|u| u.name).collect();
    assert!(names.contains(&"before".to_string()) && names.contains(&"after".to_string()), "{names:?}");
    assert!(!names.contains(&"during".to_string()), "the refused write left nothing: {names:?}");
}
