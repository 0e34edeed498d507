//! Work locks that exclude (issue 16), against a real PostgreSQL: an
//! on-demand power cycle and the processes it excludes (maintenance,
//! preparation, a binding) are decided on the worker's row, so two servers
//! sharing one database (here: two `Db` handles, two connection pools)
//! racing for one worker never both win, and the loser's conflict leaves
//! nothing behind.

use std::time::SystemTime;

use corral_core::{SessionId, UserId, WorkerId, WorkerState};
use corral_db::{Db, DbError, PoolSettings, WorkerTransition, WorkerUpsert};
use corral_testkit::TestDb;

async fn replica(test: &TestDb) -> Db {
    Db::connect(&test.url, &PoolSettings::default()).await.expect("the test database answers")
}

/// A worker of a live agent session, in `state`.
async fn worker_in(db: &Db, state: WorkerState, now: SystemTime) -> WorkerId {
    let session = SessionId::random();
    db.open_session(
        session,
        "agent",
        &format!("host-{session}"),
        "agent",
        std::time::Duration::from_secs(600),
        Some(now),
    )
    .await
    .unwrap();
    let upsert = WorkerUpsert {
        uuid: WorkerId::random(),
        principal: UserId(0),
        agent: format!("host-{session}"),
        session,
        caps: Default::default(),
        groups: Default::default(),
        ssh_addr: "127.0.0.1:22".to_string(),
        ssh_user: "lab".to_string(),
        host_key: None,
        hooks: Some(vec!["power_cycle".to_string()]),
    };
    db.upsert_worker(&upsert, state, now).await.unwrap().0.uuid
}

fn transition(worker: WorkerId, from: WorkerState, to: WorkerState, now: SystemTime) -> WorkerTransition {
    WorkerTransition {
        uuid: worker,
        from,
        to,
        at: now,
        actor: "user:admin".to_string(),
        reason: "test".to_string(),
        clear_drain: false,
    }
}

async fn locks_of(test: &TestDb, worker: WorkerId) -> Vec<(String, Option<String>)> {
    let client = test.connect().await;
    let rows = client
        .query("SELECT process, holder FROM work_locks WHERE worker = $1 ORDER BY process", &[&worker.0])
        .await
        .unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// Done: 20 rounds; in each, replica A starts a power cycle on an idle
/// worker while replica B moves it to busy (an admin's maintenance), both
/// at once. Must happen: exactly one of the two wins every round; the
/// worker then holds exactly the winner's lock (`power_cycle` by the admin,
/// or `maintenance`), never both, and the loser got a conflict.
#[tokio::test]
async fn a_power_cycle_and_maintenance_racing_from_two_replicas_never_both_win() {
    let test = corral_testkit::test_database().await;
    let (a, b) = (replica(&test).await, replica(&test).await);
    a.apply_schema().await.unwrap();
    let now = SystemTime::now();
    let (mut cycles, mut maintenances) = (0, 0);
    for round in 0..20 {
        let worker = worker_in(&a, WorkerState::Idle, now).await;
        let busy = transition(worker, WorkerState::Idle, WorkerState::Busy, now);
        let (cycle, maintenance) =
            tokio::join!(a.start_power_cycle(worker, UserId(1), "user:admin", now), b.worker_transition(&busy));
        let locks = locks_of(&test, worker).await;
        match (&cycle, &maintenance) {
            (Ok(record), Err(DbError::Conflict { .. })) => {
                cycles += 1;
                assert_eq!(record.work.as_deref(), Some("power_cycle"));
                assert_eq!(record.state, WorkerState::Idle, "round {round}");
                assert_eq!(locks, [("power_cycle".to_string(), Some("user:admin".to_string()))], "round {round}");
            }
            (Err(DbError::Conflict { .. }), Ok(record)) => {
                maintenances += 1;
                assert_eq!((record.state, record.work.as_deref()), (WorkerState::Busy, None), "round {round}");
                assert_eq!(locks, [("maintenance".to_string(), None)], "round {round}");
            }
            other => panic!("round {round}: exactly one must win, got {other:?}"),
        }
    }
    assert_eq!(cycles + maintenances, 20);
}

/// Done: a power cycle runs on a worker in maintenance; then an admin's
/// "idle" (maintenance → prepare) and a deregistration are tried; then the
/// power cycle ends. Must happen: both are refused while it runs, the
/// worker's row and lock are unchanged by them, and after its end the
/// worker can be prepared; ending it leaves a history row saying how.
#[tokio::test]
async fn a_running_power_cycle_keeps_preparation_and_deregistration_off_the_worker() {
    let test = corral_testkit::test_database().await;
    let db = replica(&test).await;
    db.apply_schema().await.unwrap();
    let now = SystemTime::now();
    let worker = worker_in(&db, WorkerState::Maintenance, now).await;
    db.start_power_cycle(worker, UserId(1), "user:admin", now).await.expect("a worker in maintenance can be cycled");
    let second = db.start_power_cycle(worker, UserId(1), "user:admin", now).await;
    assert!(matches!(second, Err(DbError::Conflict { .. })), "one power cycle at a time: {second:?}");

    let prepare = transition(worker, WorkerState::Maintenance, WorkerState::Prepare, now);
    let refused = db.worker_transition(&prepare).await;
    assert!(matches!(refused, Err(DbError::Conflict { .. })), "{refused:?}");
    let deleted = db.delete_worker(worker, "user:admin", now).await;
    assert!(matches!(deleted, Err(DbError::Conflict { .. })), "{deleted:?}");
    let row = db.load_worker(worker).await.unwrap().expect("still registered");
    assert_eq!((row.state, row.work.as_deref()), (WorkerState::Maintenance, Some("power_cycle")));
    assert_eq!(locks_of(&test, worker).await, [("power_cycle".to_string(), Some("user:admin".to_string()))]);

    let ended = db.end_power_cycle(worker, "agent:h", "power cycle asked by user:admin: done", now).await.unwrap();
    assert_eq!(ended.work, None);
    assert!(locks_of(&test, worker).await.is_empty());
    let again = db.end_power_cycle(worker, "agent:h", "twice", now).await;
    assert!(matches!(again, Err(DbError::NotFound { .. })), "{again:?}");
    let prepared = db.worker_transition(&prepare).await.expect("prepared once the power cycle is over");
    assert_eq!(prepared.state, WorkerState::Prepare);
    let reasons: Vec<String> = db.worker_history(worker).await.unwrap().into_iter().map(|h| h.reason).collect();
    assert!(reasons.contains(&"power cycle asked by user:admin".to_string()), "{reasons:?}");
    assert!(reasons.contains(&"power cycle asked by user:admin: done".to_string()), "{reasons:?}");
}

/// Done: a worker is in prepare (its `prepare` lock) and another is busy
/// (`maintenance`). Must happen: a power cycle is refused on both, and
/// changes nothing.
#[tokio::test]
async fn preparation_and_maintenance_keep_a_power_cycle_off() {
    let test = corral_testkit::test_database().await;
    let db = replica(&test).await;
    db.apply_schema().await.unwrap();
    let now = SystemTime::now();
    let preparing = worker_in(&db, WorkerState::Maintenance, now).await;
    db.worker_transition(&transition(preparing, WorkerState::Maintenance, WorkerState::Prepare, now)).await.unwrap();
    let busy = worker_in(&db, WorkerState::Idle, now).await;
    db.worker_transition(&transition(busy, WorkerState::Idle, WorkerState::Busy, now)).await.unwrap();
    for (worker, lock) in [(preparing, "prepare"), (busy, "maintenance")] {
        let refused = db.start_power_cycle(worker, UserId(1), "user:admin", now).await;
        assert!(matches!(refused, Err(DbError::Conflict { .. })), "{lock}: {refused:?}");
        assert_eq!(locks_of(&test, worker).await, [(lock.to_string(), None)]);
        assert_eq!(db.load_worker(worker).await.unwrap().unwrap().work, None);
    }
}

/// Done: a power cycle runs; its agent session ends (closed). Must happen:
/// the lock goes with the session, and so does the worker's `work` mark.
#[tokio::test]
async fn a_power_cycle_goes_with_its_agent_session() {
    let test = corral_testkit::test_database().await;
    let db = replica(&test).await;
    db.apply_schema().await.unwrap();
    let now = SystemTime::now();
    let worker = worker_in(&db, WorkerState::Maintenance, now).await;
    let session = db.load_worker(worker).await.unwrap().unwrap().session.unwrap();
    db.start_power_cycle(worker, UserId(1), "user:admin", now).await.unwrap();
    db.close_session(session, "test", Some(now)).await.unwrap();
    assert!(locks_of(&test, worker).await.is_empty());
    assert_eq!(db.load_worker(worker).await.unwrap().unwrap().work, None);
}
