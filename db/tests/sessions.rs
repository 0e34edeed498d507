//! Sessions against a real PostgreSQL: each way a session ends (its owner
//! closes it, it expires, a restarted replica replaces it) deletes the
//! session's work locks in the same transaction, and no one else's.
//! `work_locks.session` has no foreign key (see `schema.sql`), so nothing
//! but these statements removes them, and the start-up sweep of locks left
//! without a session.

use std::time::{Duration, SystemTime};

use corral_core::{SessionId, WorkerId, WorkerState};
use corral_db::{Db, PoolSettings, WorkerTransition, WorkerUpsert};
use corral_testkit::TestDb;

async fn database() -> (Db, TestDb) {
    let test = corral_testkit::test_database().await;
    let db = Db::connect(&test.url, &PoolSettings::default()).await.expect("the test database answers");
    db.apply_schema().await.expect("the schema applies");
    (db, test)
}

/// Registers a new worker of agent `name` in `state`.
async fn register(db: &Db, name: &str, session: SessionId, state: WorkerState, now: SystemTime) -> WorkerId {
    let upsert = WorkerUpsert {
        uuid: WorkerId::random(),
        principal: corral_core::UserId(0),
        agent: name.to_string(),
        session,
        caps: Default::default(),
        groups: Default::default(),
        ssh_addr: "127.0.0.1:22".to_string(),
        ssh_user: "lab".to_string(),
        host_key: None,
        hooks: None,
    };
    db.upsert_worker(&upsert, state, now).await.unwrap().0.uuid
}

/// Opens an agent session named `name` (timeout `timeout`, from `now`)
/// with one worker preparing, which holds the `prepare` work lock.
async fn session_with_lock(db: &Db, name: &str, timeout: Duration, now: SystemTime) -> (SessionId, WorkerId) {
    let session = SessionId::random();
    db.open_session(session, "agent", name, "agent", timeout, Some(now)).await.unwrap();
    let worker = register(db, name, session, WorkerState::Maintenance, now).await;
    let prepare = WorkerTransition {
        uuid: worker,
        from: WorkerState::Maintenance,
        to: WorkerState::Prepare,
        at: now,
        actor: "server".to_string(),
        reason: "test".to_string(),
        clear_drain: false,
    };
    db.worker_transition(&prepare).await.unwrap();
    (session, worker)
}

async fn locks_of(test: &TestDb, worker: WorkerId) -> Vec<String> {
    let client = test.connect().await;
    let rows = client.query("SELECT process FROM work_locks WHERE worker = $1", &[&worker.0]).await.unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

#[tokio::test]
async fn every_way_a_session_ends_releases_its_work_locks_and_only_those() {
    let (db, test) = database().await;
    let now = SystemTime::now();
    let day = Duration::from_secs(24 * 3600);
    let (_, bystander) = session_with_lock(&db, "host-b", day, now).await;

    // Closed by its owner.
    let (closed, worker) = session_with_lock(&db, "host-c", day, now).await;
    assert_eq!(locks_of(&test, worker).await, ["prepare"]);
    assert_eq!(db.close_session(closed, "closing", Some(now)).await.unwrap(), [worker]);
    assert!(locks_of(&test, worker).await.is_empty(), "a closed session's lock must go");

    // Expired: the short session's deadline passes, the bystander's does not.
    let (_, worker) = session_with_lock(&db, "host-e", Duration::from_secs(30), now).await;
    let expired = db.expire_sessions(Some(now + Duration::from_secs(31))).await.unwrap();
    assert_eq!(expired.iter().map(|e| e.session.name.as_str()).collect::<Vec<_>>(), ["host-e"]);
    assert!(locks_of(&test, worker).await.is_empty(), "an expired session's lock must go");

    // Replaced by a newer session of the same name.
    let (_, worker) = session_with_lock(&db, "host-r", day, now).await;
    let newer = SessionId::random();
    db.open_session(newer, "agent", "host-r", "agent", day, Some(now)).await.unwrap();
    assert_eq!(db.replace_sessions_named("agent", "host-r", newer, "replaced").await.unwrap(), 1);
    assert!(locks_of(&test, worker).await.is_empty(), "a replaced session's lock must go");

    assert_eq!(locks_of(&test, bystander).await, ["prepare"], "another session's lock must stay");
}

#[tokio::test]
async fn the_start_up_sweep_releases_locks_left_without_their_session_and_keeps_the_others() {
    let (db, test) = database().await;
    let now = SystemTime::now();
    let day = Duration::from_secs(24 * 3600);
    let (_, kept) = session_with_lock(&db, "host-k", day, now).await;
    let (_, worker) = session_with_lock(&db, "host-o", day, now).await;
    // An orphan as a database from before explicit release could hold: the
    // lock names a session that is gone.
    let client = test.connect().await;
    client
        .execute("UPDATE work_locks SET session = $2 WHERE worker = $1", &[&worker.0, &uuid::Uuid::new_v4()])
        .await
        .unwrap();

    assert_eq!(db.release_orphan_work_locks(now, "server").await.unwrap().len(), 1);
    assert!(locks_of(&test, worker).await.is_empty(), "the orphan must go");
    assert_eq!(locks_of(&test, kept).await, ["prepare"], "a lock whose session lives must stay");
    assert!(db.release_orphan_work_locks(now, "server").await.unwrap().is_empty(), "a second pass finds nothing");
}

#[tokio::test]
async fn a_heartbeat_skips_a_worker_row_held_by_another_statement_and_marks_it_seen_next_time() {
    let (db, test) = database().await;
    // Whole seconds: the database keeps microseconds.
    let now = SystemTime::UNIX_EPOCH
        + Duration::from_secs(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs());
    let day = Duration::from_secs(24 * 3600);
    let (session, held) = session_with_lock(&db, "host-h", day, now).await;
    let free = register(&db, "host-h", session, WorkerState::Idle, now).await;
    let seen = |worker: WorkerId| {
        let test = &test;
        async move {
            let client = test.connect().await;
            let row = client.query_one("SELECT last_seen FROM workers WHERE uuid = $1", &[&worker.0]).await.unwrap();
            row.get::<_, Option<SystemTime>>(0)
        }
    };

    // Input: a heartbeat while another transaction holds one worker's row
    // (as a batch of state changes does). Must happen: the heartbeat
    // returns without waiting for that row, marks the other worker seen,
    // and marks the held one at the next heartbeat.
    let mut holder = test.connect().await;
    let tx = holder.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM workers WHERE uuid = $1 FOR UPDATE", &[&held.0]).await.unwrap();
    let later = now + Duration::from_secs(10);
    let beat = tokio::time::timeout(Duration::from_secs(30), db.heartbeat(session, Some(later))).await;
    let deadline = beat.expect("the heartbeat must not wait for the held row").unwrap();
    assert!(deadline.is_some(), "the session lives");
    assert_eq!(seen(free).await, Some(later));
    assert_ne!(seen(held).await, Some(later), "the held row was skipped");
    tx.rollback().await.unwrap();

    let next = later + Duration::from_secs(10);
    db.heartbeat(session, Some(next)).await.unwrap();
    assert_eq!(seen(held).await, Some(next));
    assert_eq!(seen(free).await, Some(next));
}
