//! The batch writers against a real PostgreSQL: calls made at the same time
//! share one statement, and each still gets the outcome it would have had
//! alone (its own conflict, its neighbours' success), including when one
//! row breaks a uniqueness rule and fails the whole statement, and when two
//! calls change the same worker (they must run one after the other).

use std::time::{Duration, SystemTime};

use corral_core::lease::KeyKind;
use corral_core::{Caps, FencingToken, Groups, Priority, RequestId, RequestState, SessionId, WorkerId, WorkerState};
use corral_db::{
    Db, DbError, NewRequestRecord, PoolSettings, RequestRecord, StartLease, WorkerRecord, WorkerTransition,
    WorkerUpsert,
};
use corral_testkit::TestDb;

const LEASES: usize = 8;

async fn database() -> (Db, TestDb) {
    let test = corral_testkit::test_database().await;
    let db = Db::connect(&test.url, &PoolSettings::default()).await.expect("the test database answers");
    db.apply_schema().await.expect("the schema applies");
    (db, test)
}

/// An agent session with `LEASES` idle workers, each bound at submission
/// to a request of its own.
async fn bound_requests(db: &Db, now: SystemTime) -> (SessionId, Vec<(WorkerId, RequestId, FencingToken)>) {
    let day = Duration::from_secs(24 * 3600);
    let agent = SessionId::random();
    db.open_session(agent, "agent", "host-a", "agent", day, Some(now)).await.unwrap();
    let server = SessionId::random();
    db.open_session(server, "server", "replica-1", "server", day, Some(now)).await.unwrap();
    assert!(db.try_lead(server, Some(now)).await.unwrap(), "the only server session leads");
    let mut bound = Vec::new();
    for _ in 0..LEASES {
        let upsert = WorkerUpsert {
            uuid: WorkerId::random(),
            principal: corral_core::UserId(0),
            agent: "host-a".to_string(),
            session: agent,
            caps: Caps::new(),
            groups: Groups::default(),
            ssh_addr: "127.0.0.1:22".to_string(),
            ssh_user: "lab".to_string(),
            host_key: None,
            hooks: None,
        };
        let (worker, _) = db.upsert_worker(&upsert, WorkerState::Idle, now).await.unwrap();
        let (request, fence) =
            db.insert_request(&new_request("gina", now), "user:gina", Some((worker.uuid, server))).await.unwrap();
        bound.push((worker.uuid, request.id, fence.expect("an idle worker and the leader: bound at submission")));
    }
    (server, bound)
}

fn new_request(owner: &str, now: SystemTime) -> NewRequestRecord {
    NewRequestRecord {
        owner: owner.to_string(),
        owner_id: corral_core::UserId(0),
        owner_groups: [format!("{owner}-team"), "lab".to_string()].into_iter().collect(),
        priority: Priority::default(),
        caps: Caps::new(),
        at: now,
        valid_after: now,
        deadline: now + Duration::from_secs(24 * 3600),
        lease: Duration::from_secs(3600),
        ssh_public_key: None,
        key_kind: KeyKind::Ed25519,
    }
}

fn start(request: RequestId, fence: FencingToken, port: u16, now: SystemTime) -> StartLease {
    StartLease {
        request,
        fence,
        at: now,
        expires_at: now + Duration::from_secs(3600),
        key_type: "ssh-ed25519".to_string(),
        public_key: format!("ssh-ed25519 AAAA{request} lease"),
        private_key: Some(format!("private key of {request}")),
        tunnel_port: Some(port),
        actor: "agent:host-a".to_string(),
    }
}

fn transition(uuid: WorkerId, from: WorkerState, to: WorkerState, now: SystemTime) -> WorkerTransition {
    WorkerTransition {
        uuid,
        from,
        to,
        at: now,
        actor: "agent:host-a".to_string(),
        reason: format!("{from} to {to}"),
        clear_drain: false,
    }
}

type Call<T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, DbError>> + Send>>;

/// Runs every future at once on the current runtime and returns their
/// outcomes in order.
async fn all_at_once<T: Send + 'static>(futures: Vec<Call<T>>) -> Vec<Result<T, DbError>> {
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outcomes = Vec::new();
    for handle in handles {
        outcomes.push(handle.await.expect("the call does not panic"));
    }
    outcomes
}

async fn count(test: &TestDb, sql: &str, id: i64) -> i64 {
    test.connect().await.query_one(sql, &[&id]).await.unwrap().get(0)
}

#[tokio::test]
async fn concurrent_calls_share_statements_and_keep_their_own_outcomes() {
    let (db, test) = database().await;
    let now = SystemTime::now();
    let (leader, bound) = bound_requests(&db, now).await;
    let before = db.batch_stats();

    // Starts, all at once. Input: lease 3 names a fencing token it does not
    // have; leases 4 and 5 ask for the same tunnel port. Must happen: 3 is a
    // conflict, exactly one of 4 and 5 gets the port and the other a
    // conflict, and every other lease starts.
    let calls: Vec<Call<RequestRecord>> = bound
        .iter()
        .enumerate()
        .map(|(i, &(_, request, fence))| {
            let (db, fence) = (db.clone(), if i == 3 { FencingToken(fence.0 + 100) } else { fence });
            let port = if i == 5 { 40_004 } else { 40_000 + i as u16 };
            Box::pin(async move { db.start_lease(&start(request, fence, port, now)).await }) as _
        })
        .collect();
    let started = all_at_once(calls).await;
    assert!(matches!(started[3], Err(DbError::Conflict { .. })), "a wrong fencing token: {:?}", started[3]);
    assert_eq!(started[4].is_ok() as u8 + started[5].is_ok() as u8, 1, "one port, two leases: {started:?}");
    for (i, outcome) in started.iter().enumerate().filter(|(i, _)| ![3, 4, 5].contains(i)) {
        let record = outcome.as_ref().unwrap_or_else(|e| panic!("lease {i} must start: {e}"));
        assert_eq!((record.id, record.state), (bound[i].1, RequestState::InProgress));
    }
    let stats = db.batch_stats();
    assert_eq!(stats.calls - before.calls, LEASES as u64);

    // Ends, all at once, with different transitions in one batch: started
    // leases end done, the ones that never started are cancelled. Every
    // worker goes to prepare.
    let calls: Vec<Call<(RequestRecord, bool)>> = started
        .iter()
        .zip(&bound)
        .map(|(outcome, &(_, request, fence))| {
            let db = db.clone();
            let (from, to) = match outcome {
                Ok(_) => (RequestState::InProgress, RequestState::Done),
                Err(_) => (RequestState::Waiting, RequestState::Cancelled),
            };
            Box::pin(async move { db.end_lease(request, fence, from, to, now, "user:gina", "closed").await }) as _
        })
        .collect();
    let before = db.batch_stats();
    let ended = all_at_once(calls).await;
    let stats = db.batch_stats();
    assert_eq!(stats.calls - before.calls, LEASES as u64);
    let statements = stats.statements - before.statements;
    assert!(statements < LEASES as u64, "simultaneous calls share statements: {statements} for {LEASES} calls");
    for ((ended, outcome), &(_, request, _)) in ended.into_iter().zip(&started).zip(&bound) {
        let (record, prepared) = ended.unwrap_or_else(|e| panic!("request {request} must end: {e}"));
        let expected = if outcome.is_ok() { RequestState::Done } else { RequestState::Cancelled };
        assert_eq!((record.id, record.state, prepared), (request, expected, true));
        let history = "SELECT count(*) FROM request_history WHERE request = $1";
        let rows = if outcome.is_ok() { 4 } else { 3 };
        assert_eq!(count(&test, history, request.0).await, rows, "submitted, matched, [started,] ended");
        let key = "SELECT count(*) FROM leases WHERE request = $1 AND private_key IS NULL AND ended_at IS NOT NULL";
        assert_eq!(count(&test, key, request.0).await, 1, "the lease ended and its private key is erased");
    }

    // Worker transitions, all at once. Input: worker 0 is also sent to
    // maintenance right after it becomes idle, and worker 1 gets a second
    // transition from a state it is not in. Must happen: calls on one
    // worker run in order (0 ends in maintenance, 1's second call is a
    // conflict), and every other worker becomes idle.
    let mut calls: Vec<(WorkerId, WorkerState, WorkerState)> =
        bound.iter().map(|&(w, _, _)| (w, WorkerState::Prepare, WorkerState::Idle)).collect();
    calls.push((bound[0].0, WorkerState::Idle, WorkerState::Maintenance));
    calls.push((bound[1].0, WorkerState::Running, WorkerState::Failed));
    let futures: Vec<Call<WorkerRecord>> = calls
        .iter()
        .map(|&(w, from, to)| {
            let db = db.clone();
            Box::pin(async move { db.worker_transition(&transition(w, from, to, now)).await }) as _
        })
        .collect();
    let moved = all_at_once(futures).await;
    for (i, outcome) in moved.iter().enumerate().take(LEASES) {
        let record = outcome.as_ref().unwrap_or_else(|e| panic!("worker {i} must become idle: {e}"));
        assert_eq!(record.state, WorkerState::Idle);
    }
    assert_eq!(moved[LEASES].as_ref().map(|r| r.state).ok(), Some(WorkerState::Maintenance));
    assert!(matches!(moved[LEASES + 1], Err(DbError::Conflict { .. })), "not running: {:?}", moved[LEASES + 1]);
    let client = test.connect().await;
    for (i, &(worker, _, _)) in bound.iter().enumerate() {
        let state: String =
            client.query_one("SELECT state FROM workers WHERE uuid = $1", &[&worker.0]).await.unwrap().get(0);
        assert_eq!(state, if i == 0 { "maintenance" } else { "idle" });
        let locks: i64 =
            client.query_one("SELECT count(*) FROM work_locks WHERE worker = $1", &[&worker.0]).await.unwrap().get(0);
        assert_eq!(locks, 0, "an idle or maintenance worker holds no work lock");
        let history: i64 = client
            .query_one("SELECT count(*) FROM worker_history WHERE worker = $1", &[&worker.0])
            .await
            .unwrap()
            .get(0);
        // registered, leased, to prepare, to idle (and to maintenance).
        assert_eq!(history, if i == 0 { 5 } else { 4 }, "worker {i}'s history");
    }

    // Submissions, all at once. Input: eight requests, one per idle worker
    // except that worker 0 is in maintenance, one names a session that does
    // not lead, and one names no worker. Must happen: every request is
    // inserted with its own owner and groups; those whose binding's guards
    // hold are bound, the others wait unbound, and each history starts with
    // `submitted`.
    let stranger = SessionId::random();
    let submissions: Vec<(String, Option<(WorkerId, SessionId)>)> = (0..LEASES)
        .map(|i| {
            let bind = match i {
                2 => Some((bound[i].0, stranger)),
                3 => None,
                _ => Some((bound[i].0, leader)),
            };
            (format!("owner-{i}"), bind)
        })
        .collect();
    let futures: Vec<Call<(RequestRecord, Option<FencingToken>)>> = submissions
        .iter()
        .map(|(owner, bind)| {
            let (db, owner, bind) = (db.clone(), owner.clone(), *bind);
            Box::pin(async move { db.insert_request(&new_request(&owner, now), &format!("user:{owner}"), bind).await })
                as _
        })
        .collect();
    let inserted = all_at_once(futures).await;
    for (i, outcome) in inserted.iter().enumerate() {
        let (record, fence) = outcome.as_ref().unwrap_or_else(|e| panic!("request {i} must be inserted: {e}"));
        let owner = format!("owner-{i}");
        assert_eq!((record.owner.as_str(), record.state), (owner.as_str(), RequestState::Waiting));
        assert_eq!(record.owner_groups, new_request(&owner, now).owner_groups);
        let should_bind = ![0, 2, 3].contains(&i);
        assert_eq!(fence.is_some(), should_bind, "request {i}: {record:?}");
        assert_eq!(record.worker, should_bind.then_some(bound[i].0), "request {i}");
        let rows = client
            .query("SELECT to_state, actor FROM request_history WHERE request = $1 ORDER BY id", &[&record.id.0])
            .await
            .unwrap();
        let history: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut expected = vec![("waiting".to_string(), format!("user:{owner}"))];
        if should_bind {
            expected.push(("waiting".to_string(), "matcher".to_string()));
        }
        assert_eq!(history, expected, "request {i}'s history");
    }
}
