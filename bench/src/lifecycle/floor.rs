//! The database floor of a lifecycle cycle: the server's own statements for
//! one cycle (create with its binding, start, end with the worker to
//! prepare, worker idle again), called through `corral-db` from C
//! concurrent tasks, each with a worker of its own, with no HTTP, actors,
//! matcher or agent in between. It is what PostgreSQL alone allows on this
//! machine for the same durability: the ceiling of the end-to-end figure.
//!
//! It runs in a database of its own (`corral_floor`) on the server's
//! cluster, after the end-to-end run, so both figures come from the same
//! PostgreSQL and the same minute.

use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use corral_core::lease::KeyKind;
use corral_core::{Caps, Groups, Priority, RequestState, SessionId, WorkerId, WorkerState};
use corral_db::{Db, NewRequestRecord, PoolSettings, StartLease, WorkerTransition, WorkerUpsert};
use corral_embedded_pg::EmbeddedPostgres;

use crate::report::percentile;
use crate::server::{cpu_seconds, postgres_cpu_seconds};

const DATABASE: &str = "corral_floor";

/// What the floor run measured.
pub struct Floor {
    pub cycles: usize,
    pub cycles_per_s: f64,
    /// Create sent → start committed, microseconds, sorted.
    pub p50_us: u64,
    pub p99_us: u64,
    /// PostgreSQL and this process's CPU per cycle.
    pub cpu_ms_per_cycle: f64,
}

pub async fn run(pg: &EmbeddedPostgres, clients: usize, duration: Duration) -> Result<Floor> {
    let createdb = Command::new(pg.bin_dir().join("createdb"))
        .arg("-h")
        .arg(pg.socket_dir())
        .args(["-p", &pg.port().to_string(), "-U", "corral", DATABASE])
        .output()
        .context("running createdb")?;
    if !createdb.status.success() {
        bail!("createdb {DATABASE} failed: {}", String::from_utf8_lossy(&createdb.stderr));
    }
    let settings = PoolSettings { max_size: clients + 2, ..Default::default() };
    let db =
        Db::connect(&pg.connection_string(DATABASE), &settings).await.context("connecting to the floor database")?;
    db.apply_schema().await.context("applying the schema")?;

    let timeout = Duration::from_secs(600);
    let agent = SessionId::random();
    db.open_session(agent, "agent", "floor", "agent:floor", timeout, None).await?;
    let server = SessionId::random();
    db.open_session(server, "server", "floor", "server", timeout, None).await?;
    if !db.try_lead(server, None).await? {
        bail!("the floor's server session could not lead");
    }
    let mut caps = Caps::new();
    caps.insert("device_type", "t0");
    let mut workers = Vec::new();
    for _ in 0..clients {
        let upsert = WorkerUpsert {
            uuid: WorkerId::random(),
            agent: "floor".to_string(),
            principal: corral_core::UserId(0),
            session: agent,
            caps: caps.clone(),
            groups: Groups::default(),
            ssh_addr: "127.0.0.1:22".to_string(),
            ssh_user: "lab".to_string(),
            host_key: None,
            hooks: None,
        };
        let (worker, _) = db.upsert_worker(&upsert, WorkerState::Idle, SystemTime::now()).await?;
        workers.push(worker.uuid);
    }

    let cluster_dir = pg.cluster_dir().to_path_buf();
    let cpu_before = (postgres_cpu_seconds(&cluster_dir)?, cpu_seconds(std::process::id())?);
    let db = Rc::new(db);
    let began = Instant::now();
    let deadline = began + duration;
    let mut tasks = Vec::new();
    for (n, worker) in workers.into_iter().enumerate() {
        let (db, caps) = (db.clone(), caps.clone());
        tasks.push(actix_rt::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let started = cycle(&db, &caps, worker, server, 30_000 + n as u16).await?;
                latencies.push(started.as_micros() as u64);
            }
            Ok::<Vec<u64>, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.context("floor task")??);
    }
    let elapsed = began.elapsed().as_secs_f64();
    let cpu = postgres_cpu_seconds(&cluster_dir)? - cpu_before.0 + cpu_seconds(std::process::id())? - cpu_before.1;
    if latencies.is_empty() {
        bail!("the floor run completed no cycle");
    }
    latencies.sort_unstable();
    let cycles = latencies.len();
    Ok(Floor {
        cycles,
        cycles_per_s: cycles as f64 / elapsed,
        p50_us: percentile(&latencies, 50.0),
        p99_us: percentile(&latencies, 99.0),
        cpu_ms_per_cycle: cpu * 1000.0 / cycles as f64,
    })
}

/// One cycle through the server's statements; returns how long create →
/// lease started took.
async fn cycle(db: &Db, caps: &Caps, worker: WorkerId, leader: SessionId, port: u16) -> Result<Duration> {
    let sent = Instant::now();
    let now = SystemTime::now();
    let new = NewRequestRecord {
        owner: "floor".to_string(),
        owner_id: corral_core::UserId(0),
        owner_groups: Groups::default(),
        priority: Priority::default(),
        caps: caps.clone(),
        at: now,
        valid_after: now,
        deadline: now + Duration::from_secs(3600),
        lease: Duration::from_secs(3600),
        ssh_public_key: None,
        key_kind: KeyKind::Ed25519,
    };
    let (request, fence) = db.insert_request(&new, "user:floor", Some((worker, leader))).await?;
    let Some(fence) = fence else { bail!("request {} was not bound to worker {worker} at submission", request.id) };
    let start = StartLease {
        request: request.id,
        fence,
        at: SystemTime::now(),
        expires_at: now + Duration::from_secs(3600),
        key_type: "ssh-ed25519".to_string(),
        public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFloorFloorFloorFloorFloorFloorFloorFloor corral-floor"
            .to_string(),
        private_key: Some("-----BEGIN OPENSSH PRIVATE KEY-----\nfloor\n-----END OPENSSH PRIVATE KEY-----\n".into()),
        tunnel_port: Some(port),
        actor: "agent:floor".to_string(),
    };
    db.start_lease(&start).await?;
    let started = sent.elapsed();
    let (_, prepared) = db
        .end_lease(
            request.id,
            fence,
            RequestState::InProgress,
            RequestState::Done,
            SystemTime::now(),
            "user:floor",
            "closed",
        )
        .await?;
    if !prepared {
        bail!("ending the lease of request {} did not move worker {worker} to prepare", request.id);
    }
    let idle = WorkerTransition {
        uuid: worker,
        from: WorkerState::Prepare,
        to: WorkerState::Idle,
        at: SystemTime::now(),
        actor: "agent:floor".to_string(),
        reason: "preparation confirmed by the agent".to_string(),
        clear_drain: false,
    };
    db.worker_transition(&idle).await?;
    Ok(started)
}
