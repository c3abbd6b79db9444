//! The push service's database (SQLite in the spool, through `sqlx`): environments,
//! recordings and their files, one push row per destination with its attempt series, every
//! attempt's error, open multipart uploads, and webhook deliveries. Every state change is
//! committed before it is acted upon.

use std::path::Path;
use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous};
use sqlx::{Row, Sqlite, Transaction};

mod deletion;

pub use deletion::{Doomed, JobRow, PurgeRow};

use super::model::{Environment, RecordingState, Target};

/// A database failure (the API answers 503; nothing acknowledged is lost).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A migration failed at start-up.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored JSON value no longer parses.
    #[error("stored value: {0}")]
    Json(#[from] serde_json::Error),
}

/// What a write against a recording found.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The recording is committed: its files are fixed.
    Committed,
    /// Nothing to commit.
    NoFiles,
    /// Not in a state that allows it (with the state found).
    State(RecordingState),
    /// No such recording.
    Unknown,
}

/// One file of a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    /// `.mp4`, `.jpg`, `_filmstrip.jpg` or `_raw.mp4`.
    pub suffix: String,
    /// Its size.
    pub bytes: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

/// One destination's push of a recording.
#[derive(Debug, Clone)]
pub struct PushRow {
    /// Environment.
    pub env: String,
    /// Recording name.
    pub name: String,
    /// `complimentary` or the customer's destination name.
    pub destination: String,
    /// Where it goes.
    pub target: Target,
    /// queued, pushing, retrying, pushed, failed.
    pub state: String,
    /// Attempts made in this series.
    pub attempts: u32,
    /// When this series started (commit or manual push), ms.
    pub series_start: i64,
    /// When the next attempt is due, ms.
    pub next_attempt_at: Option<i64>,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// When it succeeded, ms.
    pub pushed_at: Option<i64>,
    /// The series was started by hand.
    pub manual: bool,
}

/// A recording as stored.
#[derive(Debug, Clone)]
pub struct RecordingRow {
    /// Environment.
    pub env: String,
    /// Name.
    pub name: String,
    /// Account hash.
    pub account: String,
    /// Region of the environment at commit.
    pub region: String,
    /// Its state.
    pub state: RecordingState,
    /// When committed, ms.
    pub committed_at: Option<i64>,
    /// A failed recording's files are kept until then, ms.
    pub keep_until: Option<i64>,
    /// The spool still holds its files.
    pub files_kept: bool,
    /// When deleted, ms.
    pub deleted_at: Option<i64>,
    /// `api` or `lifecycle`.
    pub deleted_by: Option<String>,
}

/// A multipart upload a previous run left.
#[derive(Debug, Clone)]
pub struct OpenMultipart {
    /// Our id of the row.
    pub id: String,
    /// The store's upload id, when its answer arrived.
    pub upload_id: Option<String>,
    /// Where.
    pub target: Target,
    /// The bucket.
    pub bucket: String,
    /// The object key.
    pub key: String,
}

/// A delivery to queue with the success that causes it.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// Its id.
    pub id: String,
    /// Where.
    pub url: String,
    /// The HMAC key.
    pub secret: String,
    /// The exact body.
    pub body: String,
}

/// A webhook delivery due.
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    /// The delivery id (`X-S3edge-Delivery`, the same on every retry).
    pub id: String,
    /// Where.
    pub url: String,
    /// The HMAC key.
    pub secret: String,
    /// The exact body.
    pub body: String,
    /// Attempts made.
    pub attempts: u32,
}

/// The database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

/// The schema's versions, embedded in the binary and applied in order at start-up.
#[derive(Debug)]
struct Migrations;

impl<'s> sqlx::migrate::MigrationSource<'s> for Migrations {
    fn resolve(
        self,
    ) -> futures_util::future::BoxFuture<
        's,
        Result<Vec<sqlx::migrate::Migration>, sqlx::error::BoxDynError>,
    > {
        Box::pin(async {
            let migration = |version, name: &'static str, sql: &'static str| {
                sqlx::migrate::Migration::new(
                    version,
                    name.into(),
                    sqlx::migrate::MigrationType::Simple,
                    sql.into(),
                    false,
                )
            };
            Ok(vec![
                migration(1, "push", include_str!("../../../migrations/0001_push.sql")),
                migration(
                    2,
                    "delete",
                    include_str!("../../../migrations/0002_delete.sql"),
                ),
            ])
        })
    }
}

impl Store {
    /// Opens (or creates) `{spool}/push.db` and applies the migrations.
    pub async fn open(spool: &Path) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(spool.join("push.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Every commit is on disk before it is acted upon, `kill -9` or power loss alike.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = sqlx::pool::PoolOptions::<Sqlite>::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate::Migrator::new(Migrations)
            .await?
            .run(&pool)
            .await?;
        Ok(Store { pool })
    }

    /// Creates or replaces an environment.
    pub async fn put_environment(
        &self,
        name: &str,
        env: &Environment,
        now: i64,
    ) -> Result<(), StoreError> {
        let webhook_url = env.webhook.as_ref().map(|w| w.url.clone());
        let webhook_secret = env.webhook.as_ref().map(|w| w.secret.clone());
        sqlx::query(
            "INSERT INTO environments (name, account, region, complimentary, webhook_url, \
             webhook_secret, destinations, delete_after_days, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
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
        Ok(())
    }

    /// An environment, secrets included.
    pub async fn environment(&self, name: &str) -> Result<Option<Environment>, StoreError> {
        let row = sqlx::query(
            "SELECT account, region, complimentary, webhook_url, webhook_secret, \
             destinations, delete_after_days FROM environments WHERE name = ?",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let webhook = match (
            row.get::<Option<String>, _>("webhook_url"),
            row.get::<Option<String>, _>("webhook_secret"),
        ) {
            (Some(url), Some(secret)) => Some(super::model::Webhook { url, secret }),
            _ => None,
        };
        Ok(Some(Environment {
            account: row.get("account"),
            region: row.get("region"),
            complimentary_storage: row.get("complimentary"),
            webhook,
            destinations: serde_json::from_str(row.get::<&str, _>("destinations"))?,
            delete_after_days: row
                .get::<Option<i64>, _>("delete_after_days")
                .and_then(|d| u32::try_from(d).ok()),
        }))
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if let Some(state) = recording_state(&mut tx, env, name).await?
            && state != RecordingState::Open
        {
            return Ok(Err(Refused::Committed));
        }
        sqlx::query(
            "INSERT INTO recordings (env, name, account, region, state, files_kept) \
             VALUES (?, ?, ?, ?, 'open', TRUE) ON CONFLICT (env, name) DO NOTHING",
        )
        .bind(env)
        .bind(name)
        .bind(&environment.account)
        .bind(&environment.region)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO files (env, name, suffix, bytes, sha256) VALUES (?, ?, ?, ?, ?) \
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
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Whether a recording is committed (its files are fixed).
    pub async fn is_committed(&self, env: &str, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let state = recording_state(&mut tx, env, name).await?;
        Ok(state.is_some_and(|s| s != RecordingState::Open))
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        match recording_state(&mut tx, env, name).await? {
            None => return Ok(Err(Refused::NoFiles)),
            Some(RecordingState::Open) => {}
            Some(state) => return Ok(Ok(state)),
        }
        let files: i64 = sqlx::query("SELECT COUNT(*) AS n FROM files WHERE env = ? AND name = ?")
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
                 series_start, next_attempt_at, manual) VALUES (?, ?, ?, ?, 'queued', 0, ?, ?, FALSE)",
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
        sqlx::query("UPDATE recordings SET state = ?, committed_at = ? WHERE env = ? AND name = ?")
            .bind(state.as_str())
            .bind(now)
            .bind(env)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Ok(state))
    }

    /// A recording.
    pub async fn recording(
        &self,
        env: &str,
        name: &str,
    ) -> Result<Option<RecordingRow>, StoreError> {
        let row = sqlx::query(
            "SELECT env, name, account, region, state, committed_at, keep_until, files_kept, deleted_at, deleted_by \
             FROM recordings WHERE env = ? AND name = ?",
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
        let rows = sqlx::query(
            "SELECT env, name, account, region, state, committed_at, keep_until, files_kept, deleted_at, deleted_by \
             FROM recordings WHERE state != 'open' AND (? IS NULL OR state = ?) \
             AND (? IS NULL OR env = ?) ORDER BY committed_at DESC LIMIT ?",
        )
        .bind(state.map(RecordingState::as_str))
        .bind(state.map(RecordingState::as_str))
        .bind(env)
        .bind(env)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(recording_row).collect())
    }

    /// The files of a recording.
    pub async fn files(&self, env: &str, name: &str) -> Result<Vec<FileRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT suffix, bytes, sha256 FROM files WHERE env = ? AND name = ? ORDER BY suffix",
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

    /// The pushes of a recording.
    pub async fn pushes(&self, env: &str, name: &str) -> Result<Vec<PushRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT env, name, destination, target, state, attempts, series_start, \
             next_attempt_at, last_error, pushed_at, manual FROM pushes \
             WHERE env = ? AND name = ? ORDER BY destination",
        )
        .bind(env)
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(push_row).collect()
    }

    /// Pushes due at `now`, oldest first.
    pub async fn due_pushes(&self, now: i64, limit: u32) -> Result<Vec<PushRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT env, name, destination, target, state, attempts, series_start, \
             next_attempt_at, last_error, pushed_at, manual FROM pushes \
             WHERE state IN ('queued', 'retrying') AND next_attempt_at <= ? \
             ORDER BY next_attempt_at LIMIT ?",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(push_row).collect()
    }

    /// When the next push is due, if any is waiting.
    pub async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            "SELECT MIN(next_attempt_at) AS due FROM pushes WHERE state IN ('queued', 'retrying')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.get::<Option<i64>, _>("due"))
    }

    /// Claims a due push for an attempt (committed before the attempt starts): its attempt
    /// number, or `None` when another claim won.
    pub async fn claim(&self, push: &PushRow) -> Result<Option<u32>, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let done = sqlx::query(
            "UPDATE pushes SET state = 'pushing', attempts = attempts + 1 \
             WHERE env = ? AND name = ? AND destination = ? AND state IN ('queued', 'retrying')",
        )
        .bind(&push.env)
        .bind(&push.name)
        .bind(&push.destination)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        refresh_state(&mut tx, &push.env, &push.name).await?;
        tx.commit().await?;
        Ok(Some(push.attempts + 1))
    }

    /// The attempt succeeded: the destination has every file. The webhook delivery it
    /// causes is queued in the same transaction, so it is never lost to a crash.
    pub async fn push_succeeded(
        &self,
        push: &PushRow,
        now: i64,
        delivery: Option<&NewDelivery>,
    ) -> Result<RecordingState, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if deleted_meanwhile(&mut tx, push).await? {
            tx.commit().await?;
            return Ok(RecordingState::Deleted);
        }
        if let Some(d) = delivery {
            sqlx::query(
                "INSERT INTO deliveries (id, env, name, destination, url, secret, body, state, \
                 attempts, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?)",
            )
            .bind(&d.id)
            .bind(&push.env)
            .bind(&push.name)
            .bind(&push.destination)
            .bind(&d.url)
            .bind(&d.secret)
            .bind(&d.body)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE pushes SET state = 'pushed', pushed_at = ?, next_attempt_at = NULL, \
             last_error = NULL WHERE env = ? AND name = ? AND destination = ?",
        )
        .bind(now)
        .bind(&push.env)
        .bind(&push.name)
        .bind(&push.destination)
        .execute(&mut *tx)
        .await?;
        let state = refresh_state(&mut tx, &push.env, &push.name).await?;
        tx.commit().await?;
        Ok(state)
    }

    /// The attempt failed: the error is kept; `next` schedules another attempt, `None` ends
    /// the series (`keep_until` then says how long the files stay).
    #[allow(clippy::too_many_arguments)]
    pub async fn push_failed(
        &self,
        push: &PushRow,
        attempt: u32,
        code: &str,
        error: &str,
        now: i64,
        next: Option<i64>,
        keep_until: i64,
    ) -> Result<RecordingState, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if deleted_meanwhile(&mut tx, push).await? {
            tx.commit().await?;
            return Ok(RecordingState::Deleted);
        }
        let last = format!("{code}: {error}");
        sqlx::query(
            "INSERT INTO attempt_errors (env, name, destination, attempt, at, code, error) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&push.env)
        .bind(&push.name)
        .bind(&push.destination)
        .bind(i64::from(attempt))
        .bind(now)
        .bind(code)
        .bind(error)
        .execute(&mut *tx)
        .await?;
        let state = if next.is_some() { "retrying" } else { "failed" };
        sqlx::query(
            "UPDATE pushes SET state = ?, next_attempt_at = ?, last_error = ? \
             WHERE env = ? AND name = ? AND destination = ?",
        )
        .bind(state)
        .bind(next)
        .bind(&last)
        .bind(&push.env)
        .bind(&push.name)
        .bind(&push.destination)
        .execute(&mut *tx)
        .await?;
        let recording = refresh_state(&mut tx, &push.env, &push.name).await?;
        if recording == RecordingState::Failed {
            sqlx::query(
                "UPDATE recordings SET keep_until = ? WHERE env = ? AND name = ? \
                 AND keep_until IS NULL",
            )
            .bind(keep_until)
            .bind(&push.env)
            .bind(&push.name)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(recording)
    }

    /// Starts a fresh attempt series for every destination of a failed recording whose
    /// files are kept.
    pub async fn manual_push(
        &self,
        env: &str,
        name: &str,
        now: i64,
    ) -> Result<Result<(), Refused>, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let Some(row) =
            sqlx::query("SELECT state, files_kept FROM recordings WHERE env = ? AND name = ?")
                .bind(env)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?
        else {
            return Ok(Err(Refused::Unknown));
        };
        let state =
            RecordingState::parse(row.get::<&str, _>("state")).unwrap_or(RecordingState::Open);
        let kept: bool = row.get("files_kept");
        if state != RecordingState::Failed || !kept {
            return Ok(Err(Refused::State(state)));
        }
        sqlx::query(
            "UPDATE pushes SET state = 'queued', attempts = 0, series_start = ?, \
             next_attempt_at = ?, manual = TRUE WHERE env = ? AND name = ? AND state = 'failed'",
        )
        .bind(now)
        .bind(now)
        .bind(env)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE recordings SET keep_until = NULL WHERE env = ? AND name = ?")
            .bind(env)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        refresh_state(&mut tx, env, name).await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Marks a recording's spool files gone (pushed everywhere, skipped, or past retention).
    pub async fn files_removed(&self, env: &str, name: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE recordings SET files_kept = FALSE WHERE env = ? AND name = ?")
            .bind(env)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Whether the spool should still hold a recording's files (unknown recordings: no).
    pub async fn files_kept(&self, env: &str, name: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT files_kept FROM recordings WHERE env = ? AND name = ?")
            .bind(env)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some_and(|r| r.get::<bool, _>("files_kept")))
    }

    /// Recordings whose files should leave the spool: pushed or skipped with files kept,
    /// and failed ones past `keep_until`.
    pub async fn spool_releasable(&self, now: i64) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT env, name FROM recordings WHERE files_kept = TRUE AND \
             (state IN ('pushed', 'skipped') OR (state = 'failed' AND keep_until <= ?))",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get("env"), r.get("name"))).collect())
    }

    /// After a restart: attempts that were running are due again at once (they count as
    /// made), and the multipart uploads they had open are returned for aborting.
    pub async fn recover(&self, now: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let interrupted = sqlx::query(
            "UPDATE pushes SET state = 'retrying', next_attempt_at = ?, \
             last_error = COALESCE(last_error, 'interrupted: the process stopped mid-attempt') \
             WHERE state = 'pushing'",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("UPDATE recordings SET state = 'retrying' WHERE state = 'pushing'")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(interrupted)
    }

    /// Remembers a multipart upload about to be created (before `CreateMultipartUpload`).
    pub async fn multipart_intent(
        &self,
        id: &str,
        push: &PushRow,
        bucket: &str,
        key: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO multipart_uploads (id, env, name, destination, bucket, object_key) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(&push.env)
        .bind(&push.name)
        .bind(&push.destination)
        .bind(bucket)
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records the upload id `CreateMultipartUpload` answered.
    pub async fn multipart_started(&self, id: &str, upload_id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE multipart_uploads SET upload_id = ? WHERE id = ?")
            .bind(upload_id)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets a multipart upload (completed or aborted).
    pub async fn multipart_ended(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM multipart_uploads WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Multipart uploads a previous run left: `(id, upload_id, target, bucket, key)`.
    pub async fn open_multiparts(&self) -> Result<Vec<OpenMultipart>, StoreError> {
        let rows = sqlx::query(
            "SELECT m.id, m.upload_id, p.target, m.bucket, m.object_key FROM multipart_uploads m \
             JOIN pushes p ON p.env = m.env AND p.name = m.name AND p.destination = m.destination",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OpenMultipart {
                    id: r.get("id"),
                    upload_id: r.get("upload_id"),
                    target: serde_json::from_str(r.get::<&str, _>("target"))?,
                    bucket: r.get("bucket"),
                    key: r.get("object_key"),
                })
            })
            .collect()
    }

    /// Deliveries due at `now`.
    pub async fn due_deliveries(&self, now: i64) -> Result<Vec<DeliveryRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, url, secret, body, attempts FROM deliveries \
             WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT 64",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| DeliveryRow {
                id: r.get("id"),
                url: r.get("url"),
                secret: r.get("secret"),
                body: r.get("body"),
                attempts: u32::try_from(r.get::<i64, _>("attempts")).unwrap_or(u32::MAX),
            })
            .collect())
    }

    /// Records a delivery attempt: delivered, retried at `next`, or given up.
    pub async fn delivery_attempted(
        &self,
        id: &str,
        delivered: bool,
        error: Option<&str>,
        next: Option<i64>,
    ) -> Result<(), StoreError> {
        let state = match (delivered, next) {
            (true, _) => "delivered",
            (false, Some(_)) => "pending",
            (false, None) => "failed",
        };
        sqlx::query(
            "UPDATE deliveries SET state = ?, attempts = attempts + 1, next_attempt_at = ?, \
             last_error = ? WHERE id = ?",
        )
        .bind(state)
        .bind(next)
        .bind(error)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
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

/// Whether the recording of an attempt was deleted while it ran. Then nothing of the attempt
/// is recorded, and if it wrote to our bucket, the objects are deleted again (the deleter
/// sees `objects_deleted` false).
async fn deleted_meanwhile(
    tx: &mut Transaction<'_, Sqlite>,
    push: &PushRow,
) -> Result<bool, StoreError> {
    if recording_state(tx, &push.env, &push.name).await? != Some(RecordingState::Deleted) {
        return Ok(false);
    }
    if matches!(push.target, Target::Complimentary { .. }) {
        sqlx::query("UPDATE recordings SET objects_deleted = FALSE WHERE env = ? AND name = ?")
            .bind(&push.env)
            .bind(&push.name)
            .execute(&mut **tx)
            .await?;
    }
    Ok(true)
}

async fn recording_state(
    tx: &mut Transaction<'_, Sqlite>,
    env: &str,
    name: &str,
) -> Result<Option<RecordingState>, StoreError> {
    let row = sqlx::query("SELECT state FROM recordings WHERE env = ? AND name = ?")
        .bind(env)
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.and_then(|r| RecordingState::parse(r.get::<&str, _>("state"))))
}

/// Derives and stores the recording's state from its pushes.
async fn refresh_state(
    tx: &mut Transaction<'_, Sqlite>,
    env: &str,
    name: &str,
) -> Result<RecordingState, StoreError> {
    if recording_state(tx, env, name).await? == Some(RecordingState::Deleted) {
        return Ok(RecordingState::Deleted);
    }
    let states: Vec<String> = sqlx::query("SELECT state FROM pushes WHERE env = ? AND name = ?")
        .bind(env)
        .bind(name)
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| r.get("state"))
        .collect();
    let has = |s: &str| states.iter().any(|x| x == s);
    let state = if states.is_empty() {
        RecordingState::Skipped
    } else if has("pushing") {
        RecordingState::Pushing
    } else if has("retrying") {
        RecordingState::Retrying
    } else if has("queued") {
        RecordingState::Queued
    } else if has("failed") {
        RecordingState::Failed
    } else {
        RecordingState::Pushed
    };
    sqlx::query("UPDATE recordings SET state = ? WHERE env = ? AND name = ?")
        .bind(state.as_str())
        .bind(env)
        .bind(name)
        .execute(&mut **tx)
        .await?;
    Ok(state)
}

fn recording_row(r: &sqlx::sqlite::SqliteRow) -> RecordingRow {
    RecordingRow {
        env: r.get("env"),
        name: r.get("name"),
        account: r.get("account"),
        region: r.get("region"),
        state: RecordingState::parse(r.get::<&str, _>("state")).unwrap_or(RecordingState::Open),
        committed_at: r.get("committed_at"),
        keep_until: r.get("keep_until"),
        files_kept: r.get("files_kept"),
        deleted_at: r.get("deleted_at"),
        deleted_by: r.get("deleted_by"),
    }
}

fn push_row(r: &sqlx::sqlite::SqliteRow) -> Result<PushRow, StoreError> {
    Ok(PushRow {
        env: r.get("env"),
        name: r.get("name"),
        destination: r.get("destination"),
        target: serde_json::from_str(r.get::<&str, _>("target"))?,
        state: r.get("state"),
        attempts: u32::try_from(r.get::<i64, _>("attempts")).unwrap_or(u32::MAX),
        series_start: r.get("series_start"),
        next_attempt_at: r.get("next_attempt_at"),
        last_error: r.get("last_error"),
        pushed_at: r.get("pushed_at"),
        manual: r.get("manual"),
    })
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
