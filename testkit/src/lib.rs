//! Test support for corral's integration tests: a real PostgreSQL with one fresh database per test, child
//! processes that are killed when dropped (a `corral serve` among them, whose address is read from what it
//! prints: [`process`]), temporary directories
//! ([`temp_dir`], a `tempfile` directory) and a bounded polling helper.
//!
//! [`test_database`] shares one embedded PostgreSQL cluster between all tests of a run, also across processes
//! (cargo-nextest runs each test in its own process): the first test to arrive starts it, under an exclusive file
//! lock, and it is left running for the others; the test script stops it. Each test then gets its own database,
//! so tests run in parallel without seeing each other's rows.
//!
//! Environment:
//! - `CORRAL_TEST_DATABASE_URL`: use this PostgreSQL server instead of the embedded cluster (the per-test
//!   databases are created there).
//! - `CORRAL_TEST_PG_DIR`: where the shared cluster lives; default `<target dir>/test-pg`, where the target
//!   directory is `CARGO_TARGET_DIR` or the workspace's `target`.

pub mod browser;
pub mod process;

pub use process::{CorralServer, Process, racy_free_port, temp_dir};
pub use tempfile::TempDir;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use corral_embedded_pg::EmbeddedPostgres;
use tokio_postgres::{Client, NoTls};

/// Environment variable naming an external PostgreSQL server to create the test databases on.
pub const TEST_DATABASE_URL_ENV: &str = "CORRAL_TEST_DATABASE_URL";

/// Environment variable naming the data directory of the shared embedded test cluster.
pub const TEST_PG_DIR_ENV: &str = "CORRAL_TEST_PG_DIR";

/// Prefix of the per-test database names.
const TEST_DATABASE_PREFIX: &str = "t_";

/// A database created for one test.
#[derive(Clone, Debug)]
pub struct TestDb {
    /// Connection string for this database, usable as corral's `--database-url`.
    pub url: String,
    /// The database name, `t_<uuid>`.
    pub name: String,
}

impl TestDb {
    /// The connection settings of [`TestDb::url`].
    pub fn config(&self) -> tokio_postgres::Config {
        self.url.parse().unwrap_or_else(|e| panic!("test database URL {:?} does not parse: {e}", self.url))
    }

    /// Connects to this database; the connection is driven by a spawned task.
    pub async fn connect(&self) -> Client {
        connect(&self.config()).await.unwrap_or_else(|e| panic!("connecting to test database {}: {e:#}", self.name))
    }
}

/// Creates a fresh, empty database for the calling test, on the server named by `CORRAL_TEST_DATABASE_URL` or
/// else on the shared embedded cluster (started if it is not running). Panics with the cause when that fails.
pub async fn test_database() -> TestDb {
    let result = match std::env::var(TEST_DATABASE_URL_ENV) {
        Ok(url) if !url.trim().is_empty() => database_on_server(&url).await,
        _ => database_on_embedded_cluster().await,
    };
    result.unwrap_or_else(|e| panic!("could not create a test database: {e:#}"))
}

/// The data directory of the shared embedded test cluster.
pub fn test_cluster_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(TEST_PG_DIR_ENV) {
        return PathBuf::from(dir);
    }
    target_dir().join("test-pg")
}

/// The build's target directory: `CARGO_TARGET_DIR`, else the workspace's
/// `target` (where tests leave what they make for people to look at).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("target"),
    }
}

async fn database_on_embedded_cluster() -> anyhow::Result<TestDb> {
    let dir = test_cluster_dir();
    let mut lock_path = dir.clone().into_os_string();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let dir_to_create = dir.clone();
    let lock = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir_to_create).with_context(|| format!("creating {}", dir_to_create.display()))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        file.lock().with_context(|| format!("locking {}", lock_path.display()))?;
        anyhow::Ok(file)
    })
    .await
    .context("waiting for the test cluster lock")??;

    let cluster = EmbeddedPostgres::start(&dir)
        .await
        .with_context(|| format!("starting the shared test cluster in {}", dir.display()))?;
    let admin = connect(&cluster.config("postgres")).await?;
    if !cluster.was_already_running() {
        // First test of a run (the test script stops the cluster after each run): no test of this run has a
        // database yet, so the ones left over by earlier runs can go.
        drop_leftover_databases(&admin).await;
    }
    drop(lock);

    let name = new_database_name();
    create_database(&admin, &name).await?;
    Ok(TestDb { url: cluster.connection_string(&name), name })
}

async fn database_on_server(url: &str) -> anyhow::Result<TestDb> {
    let config: tokio_postgres::Config =
        url.parse().with_context(|| format!("parsing {TEST_DATABASE_URL_ENV}={url:?}"))?;
    let admin = connect(&config).await.with_context(|| format!("connecting to {TEST_DATABASE_URL_ENV}"))?;
    let name = new_database_name();
    create_database(&admin, &name).await?;
    let url = with_dbname(url, &name);
    let parsed: tokio_postgres::Config = url.parse().with_context(|| format!("parsing {url:?}"))?;
    if parsed.get_dbname() != Some(name.as_str()) {
        bail!("could not point {TEST_DATABASE_URL_ENV}={url:?} at database {name}");
    }
    Ok(TestDb { url, name })
}

/// `url` with its database replaced by `dbname`: the path of a `postgres://` URL, or a `dbname=` appended to a
/// key=value string (the last occurrence of a key wins).
fn with_dbname(url: &str, dbname: &str) -> String {
    let url = url.trim();
    let Some((scheme, rest)) = url.split_once("://") else {
        return format!("{url} dbname={dbname}");
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let authority = before_query.split_once('/').map_or(before_query, |(authority, _)| authority);
    let query = query
        .map(|query| query.split('&').filter(|pair| !pair.starts_with("dbname=")).collect::<Vec<_>>().join("&"))
        .filter(|query| !query.is_empty());
    match query {
        Some(query) => format!("{scheme}://{authority}/{dbname}?{query}"),
        None => format!("{scheme}://{authority}/{dbname}"),
    }
}

fn new_database_name() -> String {
    format!("{TEST_DATABASE_PREFIX}{}", uuid::Uuid::new_v4().simple())
}

async fn create_database(admin: &Client, name: &str) -> anyhow::Result<()> {
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\" TEMPLATE template0"))
        .await
        .with_context(|| format!("creating database {name}"))
}

/// Whether `name` is one of ours: `t_` and 32 lowercase hex digits.
fn is_test_database_name(name: &str) -> bool {
    name.strip_prefix(TEST_DATABASE_PREFIX)
        .is_some_and(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// Best effort: a database still in use is skipped.
async fn drop_leftover_databases(admin: &Client) {
    let Ok(rows) = admin.query("SELECT datname FROM pg_database", &[]).await else {
        return;
    };
    for name in rows.iter().map(|row| row.get::<_, String>(0)).filter(|name| is_test_database_name(name)) {
        if let Err(error) = admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\"")).await {
            eprintln!("corral-testkit: could not drop leftover test database {name}: {error}");
        }
    }
}

async fn connect(config: &tokio_postgres::Config) -> anyhow::Result<Client> {
    let (client, connection) =
        tokio::time::timeout(Duration::from_secs(30), config.connect(NoTls)).await.context("connect timed out")??;
    tokio::spawn(async move {
        // The connection ends with an error when the test's database or server goes away first; nothing to do.
        let _ = connection.await;
    });
    Ok(client)
}

/// Calls `f` every 20 ms until it returns `Some`, and returns that value; panics naming `what` if `timeout`
/// passes first (a call still running at the deadline is abandoned).
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(Some(value)) = tokio::time::timeout_at(deadline, f()).await {
            return value;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep_until((now + Duration::from_millis(20)).min(deadline)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dbname_replaces_the_url_path_and_query() {
        assert_eq!(
            with_dbname("postgres://u:p@h:5/db?sslmode=disable", "t_1"),
            "postgres://u:p@h:5/t_1?sslmode=disable"
        );
        assert_eq!(with_dbname("postgresql://h", "t_1"), "postgresql://h/t_1");
        assert_eq!(with_dbname("postgresql://h/x?dbname=y", "t_1"), "postgresql://h/t_1");
        assert_eq!(with_dbname("host=/run dbname=x", "t_1"), "host=/run dbname=x dbname=t_1");
        let config: tokio_postgres::Config = with_dbname("host=/run dbname=x", "t_1").parse().unwrap();
        assert_eq!(config.get_dbname(), Some("t_1"));
    }

    #[test]
    fn only_test_databases_count_as_leftovers() {
        assert!(is_test_database_name(&new_database_name()));
        for other in ["template1", "t_", "corral", "postgres", "t_0123456789abcdef0123456789ABCDEF"] {
            assert!(!is_test_database_name(other), "{other}");
        }
    }

    #[tokio::test]
    async fn wait_until_returns_the_first_value() {
        let mut calls = 0;
        let value = wait_until("the third call", Duration::from_secs(5), || {
            calls += 1;
            let ready = calls >= 3;
            async move { ready.then_some(7) }
        })
        .await;
        assert_eq!(value, 7);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting until never")]
    async fn wait_until_gives_up() {
        wait_until("never", Duration::from_millis(50), || async { None::<()> }).await;
    }
}
