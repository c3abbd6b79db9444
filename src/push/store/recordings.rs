//! Environments and recordings: what processing servers send (files received into this
//! node's spool, commits), what operators ask (status, a manual push) and what the spool
//! keeps.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::pushes::refresh_state;
use super::{
    FileRow, RecordingRow, Refused, Store, StoreError, flag, recording_row, recording_state, to_i64,
};
use crate::push::model::{Environment, RecordingState, Target};

impl Store {
    /// Creates or replaces an environment.
    pub async fn put_environment(
        &self,
        name: &str,
        env: &Environment,
        now: i64,
    ) -> Result<(), StoreError> {
        let webhook_url = env.webhook.as_ref().map(|w| w.url.clone());
        let webhook_secret = env.webhook.as_ref().map(|w| w.secret.clone());
        let turn = self.writing().await;
        sqlx::query(
            "INSERT INTO environments (name, account, region, complimentary, webhook_url, \
             webhook_secret, destinations, delete_after_days, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (name) DO UPDATE SET account = excluded.account, \
             region = excluded.region, complimentary = excluded.complimentary, \
             webhook_url = excluded.webhook_url, webhook_secret = excluded.webhook_secret, \
             destinations = excluded.destinations, \
             delete_after_days = excluded.delete_after_days, updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(&env.account)
        .bind(&env.region)
        .bind(env.complimentary_storage)
        .bind(webhook_url)
        .bind(webhook_secret)
        .bind(serde_json::to_string(&env.destinations)?)
        .bind(env.delete_after_days.map(i64::from))
        .bind(now)
        .execute(&self.pool)
        .await?;
        self.written(turn).await?;
        Ok(())
    }

    /// An environment, secrets included.
    pub async fn environment(&self, name: &str) -> Result<Option<Environment>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {ENVIRONMENT} FROM environments e WHERE e.name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(environment_of).transpose()
    }

    /// An environment, and why this node may not receive a file of its recording `name`:
    /// the recording is committed (or deleted), or another node is receiving it (`None` for a
    /// new recording or an open one of this node). One round trip for what a file's PUT
    /// checks before its body is read; a look, not a lock: `receive_file` asks again in its
    /// transaction.
    pub async fn environment_for_file(
        &self,
        env: &str,
        name: &str,
    ) -> Result<Option<(Environment, Option<Refused>)>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {ENVIRONMENT}, r.state, r.node FROM environments e \
             LEFT JOIN recordings r ON r.env = e.name AND r.name = $2 WHERE e.name = $1"
        ))
        .bind(env)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let refused = self.refusal_of(&row);
        Ok(Some((environment_of(&row)?, refused)))
    }

    /// Records a received file of an open recording (creating the recording); a committed
    /// recording refuses it.
    pub async fn receive_file(
        &self,
        env: &str,
        name: &str,
        environment: &Environment,
        file: &FileRow,
    ) -> Result<Result<(), Refused>, StoreError> {
        let (mut tx, turn) = self.begin().await?;
        // Inserted, or (when it exists) updated to what it was: either way the row is this
        // transaction's (of two nodes receiving a new recording at once, the second waits for
        // the first's row) and comes back to be judged, in one round trip.
        let row = sqlx::query(
            "INSERT INTO recordings (env, name, account, region, state, files_kept, node) \
             VALUES ($1, $2, $3, $4, 'open', TRUE, $5) \
             ON CONFLICT (env, name) DO UPDATE SET env = excluded.env RETURNING state, node",
        )
        .bind(env)
        .bind(name)
        .bind(&environment.account)
        .bind(&environment.region)
        .bind(&self.node)
        .fetch_one(&mut *tx)
        .await?;
        if let Some(refused) = self.refusal_of(&row) {
            return Ok(Err(refused));
        }
        sqlx::query(
            "INSERT INTO files (env, name, suffix, bytes, sha256) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (env, name, suffix) DO UPDATE SET bytes = excluded.bytes, \
             sha256 = excluded.sha256",
        )
        .bind(env)
        .bind(name)
        .bind(&file.suffix)
        .bind(to_i64(file.bytes))
        .bind(&file.sha256)
        .execute(&mut *tx)
        .await?;
        self.finish(tx, turn).await?;
        Ok(Ok(()))
    }

    /// Why a recording (a row with its `state` and `node`, both NULL where there is no
    /// recording yet) refuses files on this node.
    fn refusal_of(&self, row: &AnyRow) -> Option<Refused> {
        let state = row.get::<Option<&str>, _>("state")?;
        if state != RecordingState::Open.as_str() {
            return Some(Refused::Committed);
        }
        if row.get::<Option<&str>, _>("node") != Some(self.node.as_str()) {
            return Some(Refused::Elsewhere);
        }
        None
    }

    /// Commits an open recording: one push row per target, all due now. Committing twice
    /// answers with the state reached.
    pub async fn commit(
        &self,
        env: &str,
        name: &str,
        targets: &[(String, Target)],
        now: i64,
    ) -> Result<Result<RecordingState, Refused>, StoreError> {
        let (mut tx, turn) = self.begin().await?;
        match recording_state(&mut tx, self.dialect, env, name).await? {
            None => return Ok(Err(Refused::NoFiles)),
            Some(RecordingState::Open) => {}
            Some(state) => return Ok(Ok(state)),
        }
        let files: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM files WHERE env = $1 AND name = $2")
                .bind(env)
                .bind(name)
                .fetch_one(&mut *tx)
                .await?
                .get("n");
        if files == 0 {
            return Ok(Err(Refused::NoFiles));
        }
        for (destination, target) in targets {
            sqlx::query(
                "INSERT INTO pushes (env, name, destination, target, state, attempts, \
                 series_start, next_attempt_at, manual) VALUES ($1, $2, $3, $4, 'queued', 0, $5, $6, FALSE)",
            )
            .bind(env)
            .bind(name)
            .bind(destination)
            .bind(serde_json::to_string(target)?)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let state = if targets.is_empty() {
            RecordingState::Skipped
        } else {
            RecordingState::Queued
        };
        sqlx::query(
            "UPDATE recordings SET state = $1, committed_at = $2 WHERE env = $3 AND name = $4",
        )
        .bind(state.as_str())
        .bind(now)
        .bind(env)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        self.finish(tx, turn).await?;
        Ok(Ok(state))
    }

    /// A recording.
    pub async fn recording(
        &self,
        env: &str,
        name: &str,
    ) -> Result<Option<RecordingRow>, StoreError> {
        let row = sqlx::query(
            "SELECT env, name, account, region, state, committed_at, keep_until, CAST(files_kept AS INTEGER) AS files_kept, deleted_at, deleted_by \
             FROM recordings WHERE env = $1 AND name = $2",
        )
        .bind(env)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| recording_row(&r)))
    }

    /// Recordings by state and environment (newest first, at most `limit`).
    pub async fn recordings(
        &self,
        state: Option<RecordingState>,
        env: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RecordingRow>, StoreError> {
        // Only the filters asked for are in the query, so an index serves them
        // (`env` with `committed_at`; `state`): `$1 IS NULL OR …` would read every recording.
        let mut sql = String::from(
            "SELECT env, name, account, region, state, committed_at, keep_until, \
             CAST(files_kept AS INTEGER) AS files_kept, deleted_at, deleted_by \
             FROM recordings WHERE state != 'open'",
        );
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        if state.is_some() {
            sql += &format!(" AND state = ${}", next());
        }
        if env.is_some() {
            sql += &format!(" AND env = ${}", next());
        }
        sql += &format!(" ORDER BY committed_at DESC LIMIT ${}", next());
        let mut query = sqlx::query(&sql);
        if let Some(state) = state {
            query = query.bind(state.as_str());
        }
        if let Some(env) = env {
            query = query.bind(env);
        }
        let rows = query.bind(i64::from(limit)).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(recording_row).collect())
    }

    /// The files of a recording.
    pub async fn files(&self, env: &str, name: &str) -> Result<Vec<FileRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT suffix, bytes, sha256 FROM files WHERE env = $1 AND name = $2 ORDER BY suffix",
        )
        .bind(env)
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| FileRow {
                suffix: r.get("suffix"),
                bytes: u64::try_from(r.get::<i64, _>("bytes")).unwrap_or(0),
                sha256: r.get("sha256"),
            })
            .collect())
    }

    /// Starts a fresh attempt series for every destination of a failed recording whose
    /// files are kept.
    pub async fn manual_push(
        &self,
        env: &str,
        name: &str,
        now: i64,
    ) -> Result<Result<(), Refused>, StoreError> {
        let (mut tx, turn) = self.begin().await?;
        let Some(row) = sqlx::query(&format!(
            "SELECT state, CAST(files_kept AS INTEGER) AS files_kept FROM recordings \
                 WHERE env = $1 AND name = $2{}",
            self.dialect.for_update()
        ))
        .bind(env)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(Err(Refused::Unknown));
        };
        let state =
            RecordingState::parse(row.get::<&str, _>("state")).unwrap_or(RecordingState::Open);
        let kept = flag(&row, "files_kept");
        if state != RecordingState::Failed || !kept {
            return Ok(Err(Refused::State(state)));
        }
        sqlx::query(
            "UPDATE pushes SET state = 'queued', attempts = 0, series_start = $1, \
             next_attempt_at = $2, manual = TRUE WHERE env = $3 AND name = $4 AND state = 'failed'",
        )
        .bind(now)
        .bind(now)
        .bind(env)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE recordings SET keep_until = NULL WHERE env = $1 AND name = $2")
            .bind(env)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        refresh_state(&mut tx, self.dialect, env, name).await?;
        self.finish(tx, turn).await?;
        Ok(Ok(()))
    }

    /// Marks a recording's spool files gone (pushed everywhere, skipped, or past retention).
    pub async fn files_removed(&self, env: &str, name: &str) -> Result<(), StoreError> {
        let turn = self.writing().await;
        sqlx::query("UPDATE recordings SET files_kept = FALSE WHERE env = $1 AND name = $2")
            .bind(env)
            .bind(name)
            .execute(&self.pool)
            .await?;
        self.written(turn).await?;
        Ok(())
    }

    /// Whether the spool should still hold a recording's files (unknown recordings: no).
    pub async fn files_kept(&self, env: &str, name: &str) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT CAST(files_kept AS INTEGER) AS files_kept FROM recordings \
             WHERE env = $1 AND name = $2",
        )
        .bind(env)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some_and(|r| flag(&r, "files_kept")))
    }

    /// This node's recordings whose files should leave its spool: pushed, skipped or
    /// deleted (by another node) with files kept, and failed ones past `keep_until`.
    pub async fn spool_releasable(&self, now: i64) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT env, name FROM recordings WHERE files_kept = TRUE AND node = $2 AND \
             (state IN ('pushed', 'skipped', 'deleted') OR (state = 'failed' AND keep_until <= $1))",
        )
        .bind(now)
        .bind(&self.node)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get("env"), r.get("name"))).collect())
    }

    /// Counts for the metrics: recordings by state, and deliveries by state.
    pub async fn counts(&self) -> Result<(Vec<(String, i64)>, Vec<(String, i64)>), StoreError> {
        let recordings = sqlx::query("SELECT state, COUNT(*) AS n FROM recordings GROUP BY state")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| (r.get("state"), r.get("n")))
            .collect();
        let deliveries = sqlx::query("SELECT state, COUNT(*) AS n FROM deliveries GROUP BY state")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| (r.get("state"), r.get("n")))
            .collect();
        Ok((recordings, deliveries))
    }
}

/// The columns [`environment_of`] reads, of `environments e`.
const ENVIRONMENT: &str = "e.account, e.region, CAST(e.complimentary AS INTEGER) AS complimentary, \
     e.webhook_url, e.webhook_secret, e.destinations, e.delete_after_days";

/// An environment from a row with the [`ENVIRONMENT`] columns.
fn environment_of(row: &AnyRow) -> Result<Environment, StoreError> {
    let webhook = match (
        row.get::<Option<String>, _>("webhook_url"),
        row.get::<Option<String>, _>("webhook_secret"),
    ) {
        (Some(url), Some(secret)) => Some(crate::push::model::Webhook { url, secret }),
        _ => None,
    };
    Ok(Environment {
        account: row.get("account"),
        region: row.get("region"),
        complimentary_storage: flag(row, "complimentary"),
        webhook,
        destinations: serde_json::from_str(row.get::<&str, _>("destinations"))?,
        delete_after_days: row
            .get::<Option<i64>, _>("delete_after_days")
            .and_then(|d| u32::try_from(d).ok()),
    })
}
