//! Versioned migrations against a real PostgreSQL (`db/src/migrate.rs`).
//!
//! The released schemas are the `schema.sql` of the commits that changed it
//! before versioning; three are kept under `tests/fixtures/`: the oldest
//! (94fc90d), one from the middle of the history (7c67b92, which made
//! `users.id` with BIGSERIAL) and the last one (9e90803). A database made
//! by one of them and then migrated must have the same catalog as a fresh
//! one made from `schema.sql`, and keep its rows.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use corral_core::lease::KeyKind;
use corral_core::{FencingToken, RequestId, RequestState, SessionId, UserId, WorkerId, WorkerState};
use corral_db::migrate::{MIGRATIONS, newest_version};
use corral_db::{Db, MigrationError, PoolSettings};
use corral_testkit::TestDb;
use tokio_postgres::Client;

const OLDEST: &str = include_str!("fixtures/schema-94fc90d.sql");
const MIDDLE: &str = include_str!("fixtures/schema-7c67b92.sql");
const LAST_UNVERSIONED: &str = include_str!("fixtures/schema-9e90803.sql");

/// A fresh test database and a `Db` on it (the schema not applied).
async fn database() -> (Db, Client, TestDb) {
    let test = corral_testkit::test_database().await;
    let db = Db::connect(&test.url, &PoolSettings::default()).await.expect("the test database answers");
    let client = test.connect().await;
    (db, client, test)
}

/// What the catalog says about the current schema, one line per table,
/// column (type, nullability, default), constraint (definition), index
/// (definition) and sequence (type, owner). Columns are listed by name: a
/// column added to an older database comes after the others, where
/// `schema.sql` may declare it earlier, and corral names every column it
/// reads.
async fn catalog(client: &Client) -> BTreeSet<String> {
    const QUERIES: [&str; 5] = [
        "SELECT 'table ' || c.relname
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')",
        "SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE ' NULL' END
                || COALESCE(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '')
           FROM pg_attribute a
           JOIN pg_class c ON c.oid = a.attrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
          WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped",
        "SELECT 'constraint ' || c.relname || '.' || k.conname || ' ' || pg_get_constraintdef(k.oid)
           FROM pg_constraint k
           JOIN pg_class c ON c.oid = k.conrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = current_schema()",
        "SELECT 'index ' || indexname || ' ' || indexdef FROM pg_indexes WHERE schemaname = current_schema()",
        "SELECT 'sequence ' || c.relname || ' ' || format_type(s.seqtypid, NULL)
                || COALESCE(' OWNED BY ' || oc.relname || '.' || oa.attname, '')
           FROM pg_sequence s
           JOIN pg_class c ON c.oid = s.seqrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN pg_depend dep ON dep.classid = 'pg_class'::regclass AND dep.objid = c.oid
                AND dep.refclassid = 'pg_class'::regclass AND dep.deptype = 'a'
           LEFT JOIN pg_class oc ON oc.oid = dep.refobjid
           LEFT JOIN pg_attribute oa ON oa.attrelid = dep.refobjid AND oa.attnum = dep.refobjsubid
          WHERE n.nspname = current_schema()",
    ];
    let mut lines = BTreeSet::new();
    for query in QUERIES {
        for row in client.query(query, &[]).await.unwrap_or_else(|e| panic!("{query}: {e}")) {
            lines.insert(row.get::<_, String>(0));
        }
    }
    lines
}

/// The catalog of a fresh database given `schema.sql` by start-up.
async fn fresh_catalog() -> BTreeSet<String> {
    let (db, client, _test) = database().await;
    db.apply_schema().await.expect("a fresh database gets schema.sql");
    catalog(&client).await
}

/// `(version, name, applied_at)` of every applied migration.
async fn applied(client: &Client) -> Vec<(i64, String, SystemTime)> {
    let rows = client.query("SELECT version, name, applied_at FROM schema_migrations ORDER BY version", &[]).await;
    rows.expect("schema_migrations can be read").iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()
}

fn difference(left: &BTreeSet<String>, right: &BTreeSet<String>) -> Vec<String> {
    left.difference(right).cloned().collect()
}

#[tokio::test]
async fn a_database_of_each_released_schema_migrated_has_the_catalog_of_a_fresh_one() {
    let fresh = fresh_catalog().await;
    // The comparison sees what it must: the tables, an added column, the
    // NOT VALID check and the version table.
    for line in [
        "table requests",
        "table schema_migrations",
        "column requests.key_type text NOT NULL DEFAULT 'ed25519'::text",
        "sequence users_id_seq bigint OWNED BY users.id",
    ] {
        assert!(fresh.contains(line), "{line} missing from the fresh catalog:\n{fresh:#?}");
    }
    assert!(
        fresh.iter().any(|l| l.starts_with("constraint requests.requests_times_in_range") && l.ends_with("NOT VALID"))
    );

    for (commit, schema) in [("94fc90d", OLDEST), ("7c67b92", MIDDLE), ("9e90803", LAST_UNVERSIONED)] {
        let (db, client, _test) = database().await;
        client.batch_execute(schema).await.unwrap_or_else(|e| panic!("the schema of {commit} applies: {e}"));
        db.apply_schema().await.unwrap_or_else(|e| panic!("the database of {commit} migrates: {e}"));
        let migrated = catalog(&client).await;
        assert!(
            migrated == fresh,
            "the database of {commit}, migrated, differs from a fresh one.\nonly in the migrated one: \
             {:#?}\nonly in the fresh one: {:#?}",
            difference(&migrated, &fresh),
            difference(&fresh, &migrated),
        );
        let versions: Vec<i64> = applied(&client).await.into_iter().map(|(v, _, _)| v).collect();
        assert_eq!(versions, (1..=newest_version()).collect::<Vec<_>>(), "{commit}: every migration, once");
    }
}

/// 2026-11-21T10:00:00Z, when the oldest schema was current.
fn then() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_255_200)
}

#[tokio::test]
async fn rows_of_the_oldest_schema_are_read_through_db_after_the_upgrade() {
    let (db, client, _test) = database().await;
    client.batch_execute(OLDEST).await.expect("the oldest schema applies");
    let session = SessionId::random();
    let worker = WorkerId::random();
    let at = then();
    // Live: the session, the lease and the deadline end tomorrow.
    let far = SystemTime::now() + Duration::from_secs(86_400);
    // Users, an agent session, a running worker with its lease, a waiting
    // request of a user deleted since, history and a work lock, written as
    // the server of 94fc90d wrote them (no ids, no key_type).
    client
        .execute(
            "INSERT INTO users (name, role, token_hash) VALUES ('alice', 'user', sha256('tok-alice'::bytea)),
                    ('lab-agent', 'agent', sha256('tok-agent'::bytea))",
            &[],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO sessions (id, component, name, principal, created_at, timeout_ms, deadline)
             VALUES ($1, 'agent', 'host1', 'lab-agent', $2, 30000, $3)",
            &[&session.0, &at, &far],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO workers (uuid, agent, session, state, caps, ssh_addr, ssh_user, state_since, fence)
             VALUES ($1, 'host1', $2, 'running', '{\"device_type\": \"rpi4\"}', '10.0.0.5:22', 'lab', $3, 7)",
            &[&worker.0, &session.0, &at],
        )
        .await
        .unwrap();
    let running: i64 = client
        .query_one(
            "INSERT INTO requests (owner, state, priority, caps, created_at, valid_after, deadline, lease_ms,
                                   worker, lease_expires_at, updated_at)
             VALUES ('alice', 'in_progress', 4, '{\"device_type\": \"rpi4\"}', $1, $1, $2, 3600000, $3, $2, $1)
             RETURNING id",
            &[&at, &far, &worker.0],
        )
        .await
        .unwrap()
        .get(0);
    // Outside the range the server accepts today (year 12000): kept, as
    // the range check is NOT VALID.
    let orphan: i64 = client
        .query_one(
            "INSERT INTO requests (owner, state, priority, caps, created_at, valid_after, deadline, lease_ms, updated_at)
             VALUES ('bob', 'waiting', 8, '{}', $1, $1, TIMESTAMPTZ '12000-01-01 00:00:00+00', 60000, $1)
             RETURNING id",
            &[&at],
        )
        .await
        .unwrap()
        .get(0);
    client
        .execute(
            "INSERT INTO leases (request, worker, fence, bound_at, started_at, tunnel_port, key_type, public_key,
                                 private_key)
             VALUES ($1, $2, 7, $3, $3, 40001, 'ed25519', 'ssh-ed25519 AAAA', 'PRIVATE')",
            &[&running, &worker.0, &at],
        )
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "INSERT INTO request_history (request, at, from_state, to_state, actor, reason) VALUES
                 ({running}, '2026-11-21T10:00:00Z', NULL, 'waiting', 'user:alice', 'submitted'),
                 ({running}, '2026-11-21T10:00:00Z', 'waiting', 'in_progress', 'matcher', 'matched');
             INSERT INTO worker_history (worker, at, from_state, to_state, actor, reason) VALUES
                 ('{w}', '2026-11-21T10:00:00Z', 'idle', 'running', 'matcher', 'leased');
             INSERT INTO work_locks (worker, process, session, acquired_at) VALUES
                 ('{w}', 'lease', '{s}', '2026-11-21T10:00:00Z');",
            w = worker.0,
            s = session.0,
        ))
        .await
        .unwrap();

    db.apply_schema().await.expect("the oldest database migrates");

    let alice = db.user_by_token("tok-alice").await.unwrap().expect("alice's token still works");
    let agent = db.user_by_name("lab-agent").await.unwrap().expect("the agent user is kept");
    assert_eq!(alice.name, "alice");
    assert!(alice.id.0 > 0 && agent.id.0 > 0 && alice.id != agent.id, "ids given: {alice:?} {agent:?}");

    let request = db.get_request(RequestId(running)).await.unwrap().expect("the running request is kept");
    assert_eq!((request.owner.as_str(), request.owner_id), ("alice", alice.id), "owned by alice's id");
    assert_eq!((request.state, request.worker), (RequestState::InProgress, Some(worker)));
    assert_eq!((request.key_kind, request.lease), (KeyKind::Ed25519, Duration::from_secs(3600)));
    let history: Vec<String> =
        db.request_history(RequestId(running)).await.unwrap().into_iter().map(|h| h.to).collect();
    assert_eq!(history, ["waiting", "in_progress"]);

    let orphan = db.get_request(RequestId(orphan)).await.unwrap().expect("the out-of-range request is kept");
    assert_eq!(orphan.owner_id, UserId(0), "bob was gone: no later bob inherits it");
    assert_eq!(orphan.state, RequestState::Waiting);

    let workers = db.load_workers().await.unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!((workers[0].uuid, workers[0].state), (worker, WorkerState::Running));
    assert_eq!(workers[0].principal, Some(agent.id), "bound to the principal of its live session");
    assert_eq!((workers[0].fence, workers[0].session), (FencingToken(7), Some(session)));
    assert_eq!(db.worker_history(worker).await.unwrap().len(), 1);

    let sessions = db.live_sessions().await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!((sessions[0].id, sessions[0].principal_id), (session, agent.id));

    let leases = db.load_live_leases().await.unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!((leases[0].request, leases[0].worker, leases[0].fence), (RequestId(running), worker, FencingToken(7)));
    assert_eq!((leases[0].tunnel_port, leases[0].private_key.as_deref()), (Some(40001), Some("PRIVATE")));

    let locks: i64 = client.query_one("SELECT count(*) FROM work_locks", &[]).await.unwrap().get(0);
    assert_eq!(locks, 1);
}

#[tokio::test]
async fn a_second_start_up_changes_nothing() {
    let (db, client, _test) = database().await;
    client.batch_execute(MIDDLE).await.expect("the middle schema applies");
    db.apply_schema().await.expect("first start-up migrates");
    let (catalog_after_first, applied_after_first) = (catalog(&client).await, applied(&client).await);
    db.apply_schema().await.expect("second start-up");
    assert_eq!(applied(&client).await, applied_after_first, "no migration ran again");
    assert_eq!(catalog(&client).await, catalog_after_first);

    let (fresh, fresh_client, _fresh_test) = database().await;
    fresh.apply_schema().await.expect("first start-up of a fresh database");
    let stamped = applied(&fresh_client).await;
    assert_eq!(
        stamped.iter().map(|(v, n, _)| (*v, n.as_str())).collect::<Vec<_>>(),
        [(newest_version(), MIGRATIONS[MIGRATIONS.len() - 1].name)]
    );
    fresh.apply_schema().await.expect("second start-up of a fresh database");
    assert_eq!(applied(&fresh_client).await, stamped);
}

/// Two replicas (two pools) start at once on the same database.
async fn start_together(test: &TestDb) {
    let settings = PoolSettings::default();
    let (a, b) = tokio::join!(Db::connect(&test.url, &settings), Db::connect(&test.url, &settings));
    let (a, b) = (a.expect("replica a connects"), b.expect("replica b connects"));
    let (ra, rb) = tokio::join!(a.apply_schema(), b.apply_schema());
    ra.expect("replica a starts");
    rb.expect("replica b starts");
}

#[tokio::test]
async fn replicas_starting_together_both_start_and_each_migration_runs_once() {
    let (_db, client, test) = database().await;
    client.batch_execute(OLDEST).await.expect("the oldest schema applies");
    start_together(&test).await;
    let versions: Vec<i64> = applied(&client).await.into_iter().map(|(v, _, _)| v).collect();
    assert_eq!(versions, (1..=newest_version()).collect::<Vec<_>>());

    let (_fresh, fresh_client, fresh_test) = database().await;
    start_together(&fresh_test).await;
    assert_eq!(applied(&fresh_client).await.len(), 1, "a fresh database is stamped once");
    let tables: i64 = fresh_client
        .query_one("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'requests'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 1);
}

#[tokio::test]
async fn a_database_of_a_newer_corral_is_refused_and_left_alone() {
    let (db, client, _test) = database().await;
    db.apply_schema().await.expect("a fresh database");
    let newer = newest_version() + 1;
    client
        .execute("INSERT INTO schema_migrations (version, name) VALUES ($1, 'from_the_future')", &[&newer])
        .await
        .unwrap();
    let before = (catalog(&client).await, applied(&client).await);

    let error = db.apply_schema().await.expect_err("a newer schema is refused");
    assert!(
        matches!(error, MigrationError::NewerThanBinary { found, known } if found == newer && known == newest_version()),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains(&format!("version {newer}")) && message.contains("newer corral"), "{message}");
    assert_eq!((catalog(&client).await, applied(&client).await), before, "nothing changed");
}
