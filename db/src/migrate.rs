//! The versioned schema: bringing any corral database to the schema this
//! binary knows, at start-up ([`Db::apply_schema`]).
//!
//! `schema.sql` (repository root) is the schema of a fresh database. The
//! numbered migrations `db/migrations/NNNN_name.sql`, listed in
//! [`MIGRATIONS`] and compiled into the binary, take any released schema to
//! the same shape: migration N takes a database at version N-1 to version
//! N, and migration 1 takes any database made before versioning (tables,
//! but no `schema_migrations`) to version 1. `schema_migrations` records
//! each applied version with its name and time; the database's version is
//! the highest one there.
//!
//! Start-up runs one transaction per step, each of which first takes
//! [`MIGRATION_LOCK`] (a transaction-level advisory lock, released by its
//! commit or rollback), then reads the version and does one of:
//! - no version and no corral table: a fresh database gets `schema.sql` and
//!   is stamped with the newest version;
//! - a version older than the newest (none at all for a database made
//!   before versioning): the next migration runs and is stamped;
//! - the newest version: nothing;
//! - a newer version than this binary knows: start-up stops with
//!   [`MigrationError::NewerThanBinary`].
//!
//! So two replicas starting together apply each migration once: the second
//! waits on the lock and then finds the version already raised. Without
//! the lock (a database whose advisory locks are no-ops) a second run of a
//! step would still fail on the version's primary key and roll back, never
//! apply a migration twice.
//!
//! A step whose connection drops is run again like every idempotent
//! operation ([`DatabaseOperation::ApplySchema`]): it reads the version
//! again, so a step that did commit is not repeated.

use deadpool_postgres::Object;

use crate::{DatabaseOperation, Db, DbError, OpResult};

/// The schema of a fresh database.
pub const SCHEMA: &str = include_str!("../../schema.sql");

/// One numbered migration, `db/migrations/<name>.sql`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Migration {
    /// The version the database is at after it; 1, 2, 3, ... without gaps.
    pub version: i64,
    /// The file's name without `.sql`: the version in four digits, `_`, and
    /// what it does (`0001_pre_versioning`).
    pub name: &'static str,
    pub sql: &'static str,
}

/// `migration!(2, "0002_what_it_does")` embeds `db/migrations/0002_what_it_does.sql`.
macro_rules! migration {
    ($version:literal, $name:literal) => {
        Migration { version: $version, name: $name, sql: include_str!(concat!("../migrations/", $name, ".sql")) }
    };
}

/// Every migration, oldest first. Adding one: write the file, add its line
/// here, and make the same change in `schema.sql` (ARCHITECTURE.md,
/// "Changing the schema").
pub const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001_pre_versioning"),
    migration!(2, "0002_facts_notes_audit"),
    migration!(3, "0003_power_cycle_work_locks"),
];

/// The key of the advisory lock every migration step holds: "corral" in
/// ASCII.
pub const MIGRATION_LOCK: i64 = 0x636f_7272_616c;

/// The table of applied versions. Created by the first step of every
/// start-up (inside the lock), so a fresh database and an upgraded one
/// both have it from this one statement.
const CREATE_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version     BIGINT PRIMARY KEY,
    name        TEXT NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
)";

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// A newer corral upgraded the database; this one cannot run on it.
    #[error(
        "the database schema is at version {found}, but this corral knows versions up to {known}: a newer corral \
         upgraded it. Run that corral version (or a newer one), or restore a backup taken before the upgrade"
    )]
    NewerThanBinary { found: i64, known: i64 },
    /// The database failed or could not be reached; the migration that was
    /// running (logged) was rolled back.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The newest version this binary knows.
pub fn newest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// What one step did.
enum Step {
    /// The database is at the newest version.
    UpToDate,
    /// One migration ran; there may be more.
    Migrated,
    /// The database is at a version this binary does not know.
    Newer(i64),
}

impl Db {
    /// Brings the database to the current schema: `schema.sql` for a fresh
    /// one, else every migration it has not had, one transaction each,
    /// under [`MIGRATION_LOCK`] (see the [module docs](crate::migrate)).
    /// A second call, or one running beside it, changes nothing.
    pub async fn apply_schema(&self) -> Result<(), MigrationError> {
        // One step per migration, one for a fresh database, one to see the
        // newest version: any more means the version did not advance.
        for _ in 0..MIGRATIONS.len() + 2 {
            match self.run(DatabaseOperation::ApplySchema, |client| Box::pin(step(client))).await? {
                Step::UpToDate => return Ok(()),
                Step::Migrated => {}
                Step::Newer(found) => return Err(MigrationError::NewerThanBinary { found, known: newest_version() }),
            }
        }
        Err(DbError::internal(DatabaseOperation::ApplySchema, "the schema version did not advance").into())
    }
}

/// One transaction: take the lock, read the version, and apply
/// `schema.sql` or the next migration, or nothing.
async fn step(client: &mut Object) -> OpResult<Step> {
    let op = DatabaseOperation::ApplySchema;
    let tx = client.transaction().await?;
    tx.query_one("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(CREATE_VERSION_TABLE).await?;
    let version: Option<i64> = tx.query_one("SELECT max(version) FROM schema_migrations", &[]).await?.get(0);
    let newest = newest_version();
    let (sql, stamp) = match version {
        Some(found) if found > newest => return Ok(Step::Newer(found)),
        Some(found) if found == newest => {
            tx.commit().await?;
            return Ok(Step::UpToDate);
        }
        None if !has_corral_tables(&tx).await? => {
            let Some(last) = MIGRATIONS.last() else {
                return Err(DbError::internal(op, "no migration is compiled in").into());
            };
            tracing::info!(version = last.version, "fresh database: creating the schema");
            (SCHEMA, last)
        }
        found => {
            let next = found.unwrap_or(0) + 1;
            let Some(migration) = MIGRATIONS.iter().find(|m| m.version == next) else {
                return Err(DbError::internal(op, format!("no migration to version {next}")).into());
            };
            tracing::info!(version = migration.version, name = migration.name, "applying migration");
            (migration.sql, migration)
        }
    };
    tx.batch_execute(sql).await?;
    tx.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", &[&stamp.version, &stamp.name]).await?;
    tx.commit().await?;
    Ok(if stamp.version == newest { Step::UpToDate } else { Step::Migrated })
}

/// Whether the database holds corral's tables (made before versioning):
/// every released schema has `requests`.
async fn has_corral_tables(tx: &tokio_postgres::Transaction<'_>) -> OpResult<bool> {
    let row = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables
                 WHERE table_schema = current_schema() AND table_name = 'requests')",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up_from_one_and_name_their_file() {
        for (i, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, i as i64 + 1, "{}", migration.name);
            assert!(migration.name.starts_with(&format!("{:04}_", migration.version)), "{}", migration.name);
            assert!(!migration.sql.trim().is_empty(), "{}", migration.name);
        }
        assert_eq!(newest_version(), MIGRATIONS.len() as i64);
    }

    #[test]
    fn every_file_in_the_migrations_folder_is_listed() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|entry| entry.expect("a directory entry").file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS.iter().map(|m| format!("{}.sql", m.name)).collect();
        assert_eq!(files, listed, "db/migrations/ and MIGRATIONS in db/src/migrate.rs differ");
    }
}
