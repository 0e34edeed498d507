//! Issue 14, item 5, against a real PostgreSQL: a submission whose
//! connection drops after its statement was sent is settled by reading its
//! row back, never by running it again blindly (one request, never two);
//! an agent's registration (session, claim checks, every worker) is one
//! transaction, so a failure midway leaves nothing.

use std::time::{Duration, SystemTime};

use corral_core::lease::KeyKind;
use corral_core::{Caps, Groups, Priority, SessionId, UserId, WorkerId, WorkerState};
use corral_db::{AgentRegistration, Db, DbError, NewRequestRecord, PoolSettings, WorkerUpsert};
use corral_testkit::TestDb;

async fn database() -> (Db, TestDb) {
    let test = corral_testkit::test_database().await;
    let db = Db::connect(&test.url, &PoolSettings::default()).await.expect("the test database answers");
    db.apply_schema().await.expect("the schema applies");
    (db, test)
}

/// A plain connection of the test's own, outside corral's pools.
async fn side_connection(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connects");
    tokio::spawn(connection);
    client
}

fn new_request(owner: &str, now: SystemTime) -> NewRequestRecord {
    NewRequestRecord {
        owner: owner.to_string(),
        owner_id: UserId(42),
        owner_groups: Groups::default(),
        priority: Priority::default(),
        caps: Caps::new(),
        at: now,
        valid_after: now,
        deadline: now + Duration::from_secs(3600),
        lease: Duration::from_secs(600),
        ssh_public_key: None,
        key_kind: KeyKind::Ed25519,
    }
}

async fn count_requests(side: &tokio_postgres::Client) -> i64 {
    side.query_one("SELECT count(*) FROM requests", &[]).await.expect("counts").get(0)
}

#[tokio::test]
async fn unknown_outcome_of_a_submission_is_settled_by_reading() {
    let (db, test) = database().await;
    let side = side_connection(&test.url).await;
    let locker = side_connection(&test.url).await;
    let now = SystemTime::now();
    // The test holds the requests table: the batch writer's INSERT is sent
    // and blocks on it.
    locker.batch_execute("BEGIN; LOCK TABLE requests IN ACCESS EXCLUSIVE MODE").await.expect("locks");
    let submit = {
        let db = db.clone();
        tokio::spawn(async move { db.submit_request(&new_request("gina", now), "user:gina", None, None).await })
    };
    // Wait (by polling the server's view, not by sleeping a guess) until
    // the INSERT is waiting on the lock (named by its start: the view keeps
    // only the first kilobyte of a statement), then end its backend: the writer
    // sees its connection drop after the statement was sent.
    let pid: i32 = loop {
        let row = side
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'
                 AND query LIKE '%SELECT nextval(pg_get_serial_sequence(''requests'', ''id'')) AS id%'",
                &[],
            )
            .await
            .expect("reads pg_stat_activity");
        if let Some(row) = row {
            break row.get(0);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let ended: bool = side.query_one("SELECT pg_terminate_backend($1)", &[&pid]).await.expect("terminates").get(0);
    assert!(ended, "the writer's backend was ended");
    // The settling read waits on the lock too; release it.
    locker.batch_execute("COMMIT").await.expect("unlocks");
    let outcome = tokio::time::timeout(Duration::from_secs(30), submit).await.expect("the call ends").expect("joins");
    // The call either succeeded (read back, or run again once it was known
    // not to have committed) or said clearly that its outcome is unknown:
    // never two rows.
    match &outcome {
        Ok(submitted) => {
            assert!(!submitted.replayed);
            let stored: i64 = side.query_one("SELECT id FROM requests", &[]).await.expect("exactly one request").get(0);
            assert_eq!(stored, submitted.record.id.0);
        }
        Err(err) => assert!(matches!(err, DbError::UnknownOutcome { .. }), "{err}"),
    }
    assert!(outcome.is_ok(), "the INSERT was rolled back when its backend ended: the call runs it again");
    assert_eq!(count_requests(&side).await, 1, "one request, never a duplicate");
    // The writer works on afterwards.
    db.submit_request(&new_request("gina", now), "user:gina", None, None).await.expect("the next submission");
    assert_eq!(count_requests(&side).await, 2);
}

fn upsert(uuid: WorkerId, session: SessionId, ssh_addr: &str) -> WorkerUpsert {
    WorkerUpsert {
        uuid,
        agent: "host-a".to_string(),
        principal: UserId(7),
        session,
        caps: [("device_type".to_string(), "rpi4".to_string())].into_iter().collect(),
        groups: Groups::default(),
        ssh_addr: ssh_addr.to_string(),
        ssh_user: "lab".to_string(),
        host_key: None,
        hooks: None,
    }
}

fn registration(session: SessionId, workers: Vec<WorkerUpsert>, now: SystemTime) -> AgentRegistration {
    AgentRegistration {
        session,
        agent: "host-a".to_string(),
        principal: "agent".to_string(),
        principal_id: UserId(7),
        timeout: Duration::from_secs(3600),
        now: Some(now),
        workers,
        initial: WorkerState::Maintenance,
        at: now,
    }
}

#[tokio::test]
async fn half_registration_leaves_nothing() {
    let (db, test) = database().await;
    let side = side_connection(&test.url).await;
    let now = SystemTime::now();
    // A first session registers worker A.
    let (first, a) = (SessionId::random(), WorkerId::random());
    let opened = db.register_agent(&registration(first, vec![upsert(a, first, "10.0.0.1:22")], now)).await;
    let (_, workers) = opened.expect("registers").expect("nothing refused");
    assert!(workers[0].1, "A is new");

    // A second session of the same agent registers A (new address) and B,
    // whose row the database refuses (a NUL byte in a text column): the
    // whole registration fails.
    let (second, b) = (SessionId::random(), WorkerId::random());
    let workers = vec![upsert(a, second, "10.0.0.2:22"), upsert(b, second, "10.0.0.3:22\0")];
    let failed = db.register_agent(&registration(second, workers, now)).await;
    assert!(failed.is_err(), "the registration failed: {failed:?}");

    // Nothing of it remains: no second session (nor its history), A still
    // held by the first session at its first address, no B.
    let sessions: Vec<uuid::Uuid> =
        side.query("SELECT id FROM sessions", &[]).await.expect("reads").iter().map(|r| r.get(0)).collect();
    assert_eq!(sessions, vec![first.0]);
    let history: i64 = side
        .query_one("SELECT count(*) FROM session_history WHERE session = $1", &[&second.0])
        .await
        .expect("reads")
        .get(0);
    assert_eq!(history, 0);
    let worker_a = db.load_worker(a).await.expect("reads").expect("A exists");
    assert_eq!(worker_a.session, Some(first));
    assert_eq!(worker_a.ssh_addr, "10.0.0.1:22");
    assert!(db.load_worker(b).await.expect("reads").is_none(), "B was not registered");
}

#[tokio::test]
async fn registration_refused_by_a_claim_changes_nothing() {
    let (db, test) = database().await;
    let side = side_connection(&test.url).await;
    let now = SystemTime::now();
    let (first, a) = (SessionId::random(), WorkerId::random());
    db.register_agent(&registration(first, vec![upsert(a, first, "10.0.0.1:22")], now))
        .await
        .expect("registers")
        .expect("nothing refused");
    // Another agent user claims a new worker C and worker A: refused, and
    // neither its session nor C exists afterwards.
    let (other, c) = (SessionId::random(), WorkerId::random());
    let mut claim = registration(other, vec![upsert(c, other, "10.0.0.9:22"), upsert(a, other, "10.0.0.9:22")], now);
    claim.agent = "host-b".to_string();
    claim.principal_id = UserId(8);
    for worker in &mut claim.workers {
        worker.agent = "host-b".to_string();
        worker.principal = UserId(8);
    }
    let refused = db.register_agent(&claim).await.expect("no database error");
    assert!(refused.is_err(), "A is bound to another agent token");
    let sessions: i64 = side.query_one("SELECT count(*) FROM sessions", &[]).await.expect("reads").get(0);
    assert_eq!(sessions, 1);
    assert!(db.load_worker(c).await.expect("reads").is_none());
    assert_eq!(db.load_worker(a).await.expect("reads").expect("A exists").session, Some(first));
}

/// A TCP proxy in front of the test database's socket. While `cut` is
/// set, the next answer the server sends on any connection is dropped and
/// that connection closed: the statement ran (and committed) but its
/// caller never hears so.
async fn cutting_proxy(test: &TestDb, cut: std::sync::Arc<std::sync::atomic::AtomicBool>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = test.config();
    let socket = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Unix(dir) => dir.join(format!(".s.PGSQL.{}", config.get_ports()[0])),
        tokio_postgres::config::Host::Tcp(host) => panic!("the test cluster listens on a socket, not {host}"),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let port = listener.local_addr().expect("an address").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::UnixStream::connect(&socket).await.expect("the database socket");
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
            });
            let cut = cut.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match server_read.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if cut.swap(false, std::sync::atomic::Ordering::SeqCst) {
                        // Drops the answer and closes the client's side.
                        return;
                    }
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!(
        "host=127.0.0.1 port={port} user={} dbname={}",
        config.get_user().expect("a user"),
        config.get_dbname().expect("a database")
    )
}

#[tokio::test]
async fn unknown_outcome_of_a_committed_submission_is_settled_by_reading() {
    let test = corral_testkit::test_database().await;
    let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = cutting_proxy(&test, cut.clone()).await;
    let db = Db::connect(&url, &PoolSettings::default()).await.expect("the database answers through the proxy");
    db.apply_schema().await.expect("the schema applies");
    let side = side_connection(&test.url).await;
    let now = SystemTime::now();
    // A first submission opens the batch writer's connection and prepares
    // its statement.
    let first =
        db.submit_request(&new_request("gina", now), "user:gina", None, None).await.expect("the first submission");
    // The second one's INSERT commits, but its answer is lost on the way:
    // the call reads its row back by its token and answers it, and does
    // not insert it a second time.
    cut.store(true, std::sync::atomic::Ordering::SeqCst);
    let submitted =
        db.submit_request(&new_request("gina", now), "user:gina", None, None).await.expect("settled by reading");
    assert!(!cut.load(std::sync::atomic::Ordering::SeqCst), "an answer was cut");
    assert_eq!(count_requests(&side).await, 2, "two submissions, two requests: no duplicate");
    let newest: i64 = side.query_one("SELECT max(id) FROM requests", &[]).await.expect("reads").get(0);
    assert_eq!(submitted.record.id.0, newest);
    // The id that the cut statement drew: a second run would have drawn
    // the next one (sequences do not roll back).
    assert_eq!(submitted.record.id.0, first.record.id.0 + 1, "read back, not run again");
}
