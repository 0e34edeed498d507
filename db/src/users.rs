//! Users, roles and bearer tokens. Tokens are random (256 bits) and only
//! their SHA-256 is stored.

use corral_core::{Groups, Role, UserId};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

use crate::records::{FromRow, UserRecord, groups_to};
use crate::{DatabaseOperation, Db, DbError};

/// A fresh bearer token: `crl_` and 64 hex digits.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    format!("crl_{}", hex::encode(bytes))
}

pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

impl Db {
    /// Creates the first admin and agent identities with the given tokens,
    /// once per database. Returns false if that was already done.
    pub async fn bootstrap(&self, admin_token: &str, agent_token: &str) -> Result<bool, DbError> {
        let op = DatabaseOperation::Bootstrap;
        let admin = hash_token(admin_token);
        let agent = hash_token(agent_token);
        self.run(op, move |client| {
            let (admin, agent) = (admin.clone(), agent.clone());
            Box::pin(async move {
                let tx = client.transaction().await?;
                let inserted = tx
                    .execute(
                        "INSERT INTO settings (key, value) VALUES ('bootstrapped', 'yes') ON CONFLICT (key) DO NOTHING",
                        &[],
                    )
                    .await?;
                if inserted == 0 {
                    return Ok(false);
                }
                for (name, role, hash) in [("admin", "admin", &admin), ("agent", "agent", &agent)] {
                    tx.execute(
                        "INSERT INTO users (name, role, groups, token_hash) VALUES ($1, $2, '{}', $3)
                         ON CONFLICT (name) DO UPDATE SET role = EXCLUDED.role, token_hash = EXCLUDED.token_hash",
                        &[&name, &role, hash],
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(true)
            })
        })
        .await
    }

    pub async fn create_user(
        &self,
        name: &str,
        role: Role,
        groups: &Groups,
        token: &str,
    ) -> Result<UserRecord, DbError> {
        let op = DatabaseOperation::CreateUser;
        let (name, groups, hash) = (name.to_string(), groups_to(groups), hash_token(token));
        self.run(op, move |client| {
            let (name, groups, hash) = (name.clone(), groups.clone(), hash.clone());
            Box::pin(async move {
                let row = client
                    .query_opt(
                        "INSERT INTO users (name, role, groups, token_hash) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (name) DO NOTHING RETURNING id, name, role, groups, created_at",
                        &[&name, &role.as_str(), &groups, &hash],
                    )
                    .await?;
                match row {
                    Some(row) => Ok(UserRecord::from_row(op, &row)?),
                    None => Err(DbError::conflict(op, format!("user {name:?} exists")).into()),
                }
            })
        })
        .await
    }

    /// Deletes the user `id` (not a later user of the same name).
    pub async fn delete_user(&self, id: UserId) -> Result<bool, DbError> {
        self.run(DatabaseOperation::DeleteUser, move |client| {
            Box::pin(async move { Ok(client.execute("DELETE FROM users WHERE id = $1", &[&id.0]).await? == 1) })
        })
        .await
    }

    pub async fn user_by_name(&self, name: &str) -> Result<Option<UserRecord>, DbError> {
        let op = DatabaseOperation::ListUsers;
        let name = name.to_string();
        self.run(op, move |client| {
            let name = name.clone();
            Box::pin(async move {
                let row = client
                    .query_opt("SELECT id, name, role, groups, created_at FROM users WHERE name = $1", &[&name])
                    .await?;
                Ok(row.map(|r| UserRecord::from_row(op, &r)).transpose()?)
            })
        })
        .await
    }

    /// What still ties an agent user to the lab: its live sessions and the
    /// workers bound to it.
    pub async fn agent_holdings(&self, id: UserId) -> Result<(i64, i64), DbError> {
        self.run(DatabaseOperation::ListUsers, move |client| {
            Box::pin(async move {
                let row = client
                    .query_one(
                        "SELECT (SELECT count(*) FROM sessions WHERE component = 'agent' AND principal_id = $1),
                                (SELECT count(*) FROM workers WHERE principal = $1)",
                        &[&id.0],
                    )
                    .await?;
                Ok((row.get(0), row.get(1)))
            })
        })
        .await
    }

    pub async fn list_users(&self) -> Result<Vec<UserRecord>, DbError> {
        let op = DatabaseOperation::ListUsers;
        self.run(op, move |client| {
            Box::pin(async move {
                let rows =
                    client.query("SELECT id, name, role, groups, created_at FROM users ORDER BY name", &[]).await?;
                Ok(rows.iter().map(|r| UserRecord::from_row(op, r)).collect::<Result<_, _>>()?)
            })
        })
        .await
    }

    pub async fn user_by_token(&self, token: &str) -> Result<Option<UserRecord>, DbError> {
        let op = DatabaseOperation::UserByToken;
        let hash = hash_token(token);
        self.run(op, move |client| {
            let hash = hash.clone();
            Box::pin(async move {
                let stmt = client
                    .prepare_cached("SELECT id, name, role, groups, created_at FROM users WHERE token_hash = $1")
                    .await?;
                let row = client.query_opt(&stmt, &[&hash]).await?;
                Ok(row.map(|r| UserRecord::from_row(op, &r)).transpose()?)
            })
        })
        .await
    }
}
