//! Bulk-loaded synthetic data for benchmarks (`corral bench scale`): many
//! users' waiting requests and registered workers, written with set-based
//! SQL (`INSERT ... SELECT generate_series`) in one transaction, so that a
//! database the size of a large lab is ready in seconds. The server never
//! calls this; it exists so that the benchmarks contain no SQL.

use std::time::SystemTime;

use corral_core::RequestId;

use crate::{DatabaseOperation, Db, DbError};

/// What [`Db::load_scale_fixture`] adds to the database.
#[derive(Clone, Debug)]
pub struct ScaleFixture {
    /// Users (role `user`, no groups) with the SHA-256 of their bearer
    /// token (see [`crate::hash_token`]). Requests are spread over them
    /// round robin; there must be at least one.
    pub users: Vec<(String, Vec<u8>)>,
    /// Workers to register, all in `maintenance`, without a session.
    /// Worker `i` offers `device_type = t{i mod device_types}`,
    /// `arch = arm64|x86_64` (alternating every `device_types` workers),
    /// `os = tizen` and `lab = bench`; its UUID is random.
    pub workers: u32,
    /// Waiting requests to submit. Request `i` asks for
    /// `device_type = t{i mod device_types}` with priority
    /// `1 + (7 i mod 16)`; it was created `requests - i` milliseconds before
    /// `now` (ids and creation times grow together), may start at once and
    /// has a deadline 7 days after `now`.
    pub requests: u32,
    pub device_types: u32,
    /// Agent host name recorded on the workers.
    pub agent: String,
    /// The time the data is made to look current at (the server's clock).
    pub now: SystemTime,
}

/// What [`Db::load_scale_fixture`] inserted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScaleFixtureLoaded {
    pub workers: u64,
    pub requests: u64,
    /// Ids of the requests inserted: every id in this range (inclusive) is
    /// one of them when the table was empty before.
    pub first_request: RequestId,
    pub last_request: RequestId,
}

impl Db {
    /// Inserts `fixture` (users, workers with their history, waiting
    /// requests with their history) in one transaction, then `ANALYZE`s
    /// the tables, as autovacuum would on a long-running database.
    pub async fn load_scale_fixture(&self, fixture: &ScaleFixture) -> Result<ScaleFixtureLoaded, DbError> {
        // Bulk bootstrap of benchmark data; it has no operation of its own
        // because the server never performs it.
        let op = DatabaseOperation::Bootstrap;
        if fixture.users.is_empty() || fixture.device_types == 0 {
            return Err(DbError::internal(op, "a scale fixture needs users and device types"));
        }
        let fixture = fixture.clone();
        let loaded = self
            .run(op, move |client| {
                let f = fixture.clone();
                Box::pin(async move {
                    let names: Vec<&str> = f.users.iter().map(|(name, _)| name.as_str()).collect();
                    let hashes: Vec<&[u8]> = f.users.iter().map(|(_, hash)| hash.as_slice()).collect();
                    let (workers, requests, device_types) =
                        (i64::from(f.workers), i64::from(f.requests), i64::from(f.device_types));
                    let tx = client.transaction().await?;
                    tx.execute(
                        "INSERT INTO users (name, role, groups, token_hash)
                         SELECT name, 'user', '{}', hash FROM unnest($1::text[], $2::bytea[]) AS u (name, hash)",
                        &[&names, &hashes],
                    )
                    .await?;
                    let row = tx
                        .query_one(
                            "WITH w AS (
                                INSERT INTO workers (uuid, agent, session, state, caps, groups, ssh_addr, ssh_user,
                                    reason, state_since)
                                SELECT gen_random_uuid(), $1, NULL, 'maintenance',
                                    jsonb_build_object(
                                        'device_type', 't' || (i % $2),
                                        'arch', CASE WHEN (i / $2) % 2 = 0 THEN 'arm64' ELSE 'x86_64' END,
                                        'os', 'tizen',
                                        'lab', 'bench'),
                                    '{}', '127.0.0.1:22', 'lab', 'new worker', $3
                                FROM generate_series(0::bigint, $4::bigint - 1) AS i
                                RETURNING uuid, state_since),
                             h AS (
                                INSERT INTO worker_history (worker, at, from_state, to_state, actor, reason)
                                SELECT uuid, state_since, NULL, 'maintenance', 'agent:' || $1, 'registered' FROM w)
                             SELECT count(*) FROM w",
                            &[&f.agent, &device_types, &f.now, &workers],
                        )
                        .await?;
                    let workers_inserted: i64 = row.get(0);
                    let row = tx
                        .query_one(
                            "WITH r AS (
                                INSERT INTO requests (owner, owner_id, owner_groups, state, priority, caps, created_at,
                                    valid_after, deadline, lease_ms, key_type, updated_at)
                                SELECT owners[1 + i % cardinality(owners)],
                                    (SELECT id FROM users WHERE name = owners[1 + i % cardinality(owners)]),
                                    '{}', 'waiting', 1 + (7 * i) % 16,
                                    jsonb_build_object('device_type', 't' || (i % $2)),
                                    at, at, $3::timestamptz + interval '7 days', 3600000, 'ed25519', at
                                FROM generate_series(0::bigint, $4::bigint - 1) AS i,
                                    LATERAL (SELECT $3::timestamptz - ($4::bigint - i)::float8 * interval '1 millisecond' AS at) t,
                                    (SELECT $1::text[] AS owners) o
                                ORDER BY i
                                RETURNING id, owner, created_at),
                             h AS (
                                INSERT INTO request_history (request, at, from_state, to_state, actor, reason)
                                SELECT id, created_at, NULL, 'waiting', 'user:' || owner, 'submitted' FROM r)
                             SELECT count(*), min(id), max(id) FROM r",
                            &[&names, &device_types, &f.now, &requests],
                        )
                        .await?;
                    let requests_inserted: i64 = row.get(0);
                    let first: Option<i64> = row.get(1);
                    let last: Option<i64> = row.get(2);
                    tx.commit().await?;
                    Ok(ScaleFixtureLoaded {
                        workers: workers_inserted as u64,
                        requests: requests_inserted as u64,
                        first_request: RequestId(first.unwrap_or(0)),
                        last_request: RequestId(last.unwrap_or(0)),
                    })
                })
            })
            .await?;
        self.run(op, |client| {
            Box::pin(async move {
                client.batch_execute("ANALYZE users, workers, worker_history, requests, request_history").await?;
                Ok(())
            })
        })
        .await?;
        Ok(loaded)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use corral_core::{RequestState, Role, WorkerState};

    use super::*;
    use crate::{PoolSettings, RequestFilter, hash_token};

    #[tokio::test]
    async fn loads_users_workers_and_waiting_requests() {
        let test_db = corral_testkit::test_database().await;
        let db = Db::connect(&test_db.url, &PoolSettings::default()).await.unwrap();
        db.apply_schema().await.unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let fixture = ScaleFixture {
            users: vec![("u0".to_string(), hash_token("token-0")), ("u1".to_string(), hash_token("token-1"))],
            workers: 30,
            requests: 50,
            device_types: 5,
            agent: "bench".to_string(),
            now,
        };
        let loaded = db.load_scale_fixture(&fixture).await.unwrap();
        assert_eq!((loaded.workers, loaded.requests), (30, 50));
        assert_eq!(loaded.last_request.0 - loaded.first_request.0, 49);

        let user = db.user_by_token("token-1").await.unwrap().unwrap();
        assert_eq!((user.name.as_str(), user.role), ("u1", Role::User));

        let workers = db.load_workers().await.unwrap();
        assert_eq!(workers.len(), 30);
        assert!(workers.iter().all(|w| w.state == WorkerState::Maintenance && w.session.is_none()));
        let of_t3 = workers.iter().filter(|w| w.caps.get("device_type") == Some("t3")).count();
        assert_eq!(of_t3, 6);

        let requests = db.load_live_requests().await.unwrap();
        assert_eq!(requests.len(), 50);
        let u1 = db.user_by_name("u1").await.unwrap().unwrap().id;
        assert!(requests.iter().all(|r| (r.owner == "u1") == (r.owner_id == u1)), "owned by id too");
        for r in &requests {
            let i = r.id.0 - loaded.first_request.0;
            assert_eq!(r.state, RequestState::Waiting);
            assert_eq!(r.owner, format!("u{}", i % 2));
            assert_eq!(r.caps.get("device_type"), Some(format!("t{}", i % 5).as_str()));
            assert_eq!(i64::from(r.priority.get()), 1 + (7 * i) % 16);
            assert_eq!(r.created_at, now - Duration::from_millis((50 - i) as u64));
            assert!(r.valid_after < r.deadline && r.deadline > now);
        }
        let newest = db.list_requests(&RequestFilter { limit: 1, ..RequestFilter::default() }).await.unwrap();
        assert_eq!(newest[0].id, loaded.last_request);
        assert_eq!(db.request_history(loaded.first_request).await.unwrap().len(), 1);
    }
}
