//! The push service's database, through `sqlx`: SQLite in the spool (one node), or one
//! PostgreSQL shared by several push nodes. Environments, recordings and their files, one push
//! row per destination with its attempt series, every attempt's error, open multipart uploads,
//! and webhook deliveries. Every state change is committed before it is acted upon.
//!
//! The SQL is written once for both engines (`$N` parameters, `ON CONFLICT`, `RETURNING`);
//! [`Dialect`] holds the few words that differ. Nodes never do the same work: a recording's
//! pushes are run by the node whose spool holds its files (`recordings.node`), and shared work
//! (a webhook delivery, a tombstone's objects, a bulk job) is leased, claimed under row locks
//! that other nodes skip.

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Row, Transaction};

mod deletion;

pub use deletion::{Doomed, JobRow, PurgeRow};

use super::model::{Environment, RecordingState, Target};

/// A database failure (the API answers 503; nothing acknowledged is lost).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL does not parse (the message never carries the URL).
    #[error("database URL: {0}")]
    Url(String),
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
    /// Another push node is receiving this recording (its files go to one node's spool).
    Elsewhere,
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
    pool: AnyPool,
    dialect: Dialect,
    /// This node's id (kept in its spool): the recordings it receives are its to push.
    node: String,
}

/// The engine behind the pool, for the few words the two dialects spell differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// One node: writers are serialised by `BEGIN IMMEDIATE`.
    Sqlite,
    /// Several nodes: rows are locked where they are read to be changed.
    Postgres,
}

impl Dialect {
    /// How a writing transaction begins.
    fn begin(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        }
    }

    /// Appended to a SELECT whose rows the transaction changes next.
    fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// Appended to a SELECT that claims rows: rows another node is claiming are passed over.
    fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }
}

/// How long a claimed delivery, tombstone or job stays another node's (longer than any one
/// piece of that work takes: a webhook times out, a DeleteObjects request times out).
pub const LEASE: Duration = Duration::from_secs(120);

/// How long a request waits for a pooled connection before the API answers 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

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
                migration(
                    3,
                    "nodes",
                    include_str!("../../../migrations/0003_nodes.sql"),
                ),
            ])
        })
    }
}

impl Store {
    /// Opens the database (`None`: `{spool}/push.db`, created when missing; or a
    /// `postgres://` URL) and applies the migrations. `node` is this node's id.
    pub async fn open(
        spool: &Path,
        postgres: Option<&str>,
        node: &str,
    ) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (url, dialect, connections) = match postgres {
            Some(url) => (url.to_string(), Dialect::Postgres, 8),
            None => {
                let path = spool.join("push.db");
                let path = path
                    .to_str()
                    .ok_or_else(|| StoreError::Url("the spool path is not UTF-8".into()))?;
                (format!("sqlite://{path}?mode=rwc"), Dialect::Sqlite, 4)
            }
        };
        let options: sqlx::any::AnyConnectOptions = url
            .parse()
            .map_err(|_| StoreError::Url("not a valid sqlite or postgres URL".into()))?;
        let pool = AnyPoolOptions::new()
            .max_connections(connections)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _| Box::pin(prepare(conn, dialect)))
            .connect_with(options)
            .await?;
        sqlx::migrate::Migrator::new(Migrations)
            .await?
            .run(&pool)
            .await?;
        let store = Store {
            pool,
            dialect,
            node: node.to_string(),
        };
        if dialect == Dialect::Sqlite {
            // A database from before nodes: everything in it is this spool's.
            sqlx::query("UPDATE recordings SET node = $1 WHERE node IS NULL")
                .bind(node)
                .execute(&store.pool)
                .await?;
        }
        Ok(store)
    }

    /// Which engine this is.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// A writing transaction.
    async fn begin(&self) -> Result<Transaction<'static, Any>, StoreError> {
        Ok(self.pool.begin_with(self.dialect.begin()).await?)
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
        Ok(())
    }

    /// An environment, secrets included.
    pub async fn environment(&self, name: &str) -> Result<Option<Environment>, StoreError> {
        let row = sqlx::query(
            "SELECT account, region, CAST(complimentary AS INTEGER) AS complimentary, webhook_url, webhook_secret, \
             destinations, delete_after_days FROM environments WHERE name = $1",
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
            complimentary_storage: flag(&row, "complimentary"),
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
        let mut tx = self.begin().await?;
        // Inserted first: of two nodes receiving a new recording at once, the second waits
        // for the first's row and then reads it.
        sqlx::query(
            "INSERT INTO recordings (env, name, account, region, state, files_kept, node) \
             VALUES ($1, $2, $3, $4, 'open', TRUE, $5) ON CONFLICT (env, name) DO NOTHING",
        )
        .bind(env)
        .bind(name)
        .bind(&environment.account)
        .bind(&environment.region)
        .bind(&self.node)
        .execute(&mut *tx)
        .await?;
        if let Some(refused) = self.refusal(&mut tx, env, name).await? {
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
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Why this node may not receive a file of a recording: it is committed (or deleted),
    /// or another node is receiving it. `None` for a new or open recording of this node.
    pub async fn refuses_files(
        &self,
        env: &str,
        name: &str,
    ) -> Result<Option<Refused>, StoreError> {
        let mut tx = self.pool.begin().await?;
        self.refusal(&mut tx, env, name).await
    }

    async fn refusal(
        &self,
        tx: &mut Transaction<'_, Any>,
        env: &str,
        name: &str,
    ) -> Result<Option<Refused>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT state, node FROM recordings WHERE env = $1 AND name = $2{}",
            self.dialect.for_update()
        ))
        .bind(env)
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        if row.get::<&str, _>("state") != RecordingState::Open.as_str() {
            return Ok(Some(Refused::Committed));
        }
        if row.get::<Option<&str>, _>("node") != Some(self.node.as_str()) {
            return Ok(Some(Refused::Elsewhere));
        }
        Ok(None)
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
        let mut tx = self.begin().await?;
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
        let rows = sqlx::query(
            "SELECT env, name, account, region, state, committed_at, keep_until, CAST(files_kept AS INTEGER) AS files_kept, deleted_at, deleted_by \
             FROM recordings WHERE state != 'open' AND ($1 IS NULL OR state = $2) \
             AND ($3 IS NULL OR env = $4) ORDER BY committed_at DESC LIMIT $5",
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

    /// The pushes of a recording.
    pub async fn pushes(&self, env: &str, name: &str) -> Result<Vec<PushRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT env, name, destination, target, state, attempts, series_start, \
             next_attempt_at, last_error, pushed_at, CAST(manual AS INTEGER) AS manual FROM pushes \
             WHERE env = $1 AND name = $2 ORDER BY destination",
        )
        .bind(env)
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(push_row).collect()
    }

    /// Pushes of this node's recordings due at `now`, oldest first.
    pub async fn due_pushes(&self, now: i64, limit: u32) -> Result<Vec<PushRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT env, name, destination, target, state, attempts, series_start, \
             next_attempt_at, last_error, pushed_at, CAST(manual AS INTEGER) AS manual FROM pushes \
             WHERE state IN ('queued', 'retrying') AND next_attempt_at <= $1 AND EXISTS \
             (SELECT 1 FROM recordings r WHERE r.env = pushes.env AND r.name = pushes.name \
             AND r.node = $3) ORDER BY next_attempt_at LIMIT $2",
        )
        .bind(now)
        .bind(i64::from(limit))
        .bind(&self.node)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(push_row).collect()
    }

    /// When this node's next push is due, if any is waiting.
    pub async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            "SELECT MIN(next_attempt_at) AS due FROM pushes WHERE state IN ('queued', 'retrying') \
             AND EXISTS (SELECT 1 FROM recordings r WHERE r.env = pushes.env \
             AND r.name = pushes.name AND r.node = $1)",
        )
        .bind(&self.node)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.get::<Option<i64>, _>("due"))
    }

    /// Claims a due push for an attempt (committed before the attempt starts): its attempt
    /// number, or `None` when another claim won.
    pub async fn claim(&self, push: &PushRow) -> Result<Option<u32>, StoreError> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE pushes SET state = 'pushing', attempts = attempts + 1 \
             WHERE env = $1 AND name = $2 AND destination = $3 AND state IN ('queued', 'retrying')",
        )
        .bind(&push.env)
        .bind(&push.name)
        .bind(&push.destination)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        refresh_state(&mut tx, self.dialect, &push.env, &push.name).await?;
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
        let mut tx = self.begin().await?;
        if deleted_meanwhile(&mut tx, self.dialect, push).await? {
            tx.commit().await?;
            return Ok(RecordingState::Deleted);
        }
        if let Some(d) = delivery {
            sqlx::query(
                "INSERT INTO deliveries (id, env, name, destination, url, secret, body, state, \
                 attempts, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8)",
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
            "UPDATE pushes SET state = 'pushed', pushed_at = $1, next_attempt_at = NULL, \
             last_error = NULL WHERE env = $2 AND name = $3 AND destination = $4",
        )
        .bind(now)
        .bind(&push.env)
        .bind(&push.name)
        .bind(&push.destination)
        .execute(&mut *tx)
        .await?;
        let state = refresh_state(&mut tx, self.dialect, &push.env, &push.name).await?;
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
        let mut tx = self.begin().await?;
        if deleted_meanwhile(&mut tx, self.dialect, push).await? {
            tx.commit().await?;
            return Ok(RecordingState::Deleted);
        }
        let last = format!("{code}: {error}");
        sqlx::query(
            "INSERT INTO attempt_errors (env, name, destination, attempt, at, code, error) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
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
            "UPDATE pushes SET state = $1, next_attempt_at = $2, last_error = $3 \
             WHERE env = $4 AND name = $5 AND destination = $6",
        )
        .bind(state)
        .bind(next)
        .bind(&last)
        .bind(&push.env)
        .bind(&push.name)
        .bind(&push.destination)
        .execute(&mut *tx)
        .await?;
        let recording = refresh_state(&mut tx, self.dialect, &push.env, &push.name).await?;
        if recording == RecordingState::Failed {
            sqlx::query(
                "UPDATE recordings SET keep_until = $1 WHERE env = $2 AND name = $3 \
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
        let mut tx = self.begin().await?;
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
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Marks a recording's spool files gone (pushed everywhere, skipped, or past retention).
    pub async fn files_removed(&self, env: &str, name: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE recordings SET files_kept = FALSE WHERE env = $1 AND name = $2")
            .bind(env)
            .bind(name)
            .execute(&self.pool)
            .await?;
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

    /// After a restart: this node's attempts that were running are due again at once (they count as
    /// made), and the multipart uploads they had open are returned for aborting.
    pub async fn recover(&self, now: i64) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        // This node's only: another node's running attempts are its own.
        let interrupted = sqlx::query(
            "UPDATE pushes SET state = 'retrying', next_attempt_at = $1, \
             last_error = COALESCE(last_error, 'interrupted: the process stopped mid-attempt') \
             WHERE state = 'pushing' AND EXISTS (SELECT 1 FROM recordings r \
             WHERE r.env = pushes.env AND r.name = pushes.name AND r.node = $2)",
        )
        .bind(now)
        .bind(&self.node)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE recordings SET state = 'retrying' WHERE state = 'pushing' AND node = $1",
        )
        .bind(&self.node)
        .execute(&mut *tx)
        .await?;
        // What this node had leased before it stopped is free at once, not when leases end.
        for free in [
            "UPDATE deliveries SET leased_by = NULL, lease_until = NULL WHERE leased_by = $1",
            "UPDATE delete_jobs SET leased_by = NULL, lease_until = NULL WHERE leased_by = $1",
            "UPDATE recordings SET objects_leased_by = NULL, objects_lease_until = NULL \
             WHERE objects_leased_by = $1",
        ] {
            sqlx::query(free).bind(&self.node).execute(&mut *tx).await?;
        }
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
             VALUES ($1, $2, $3, $4, $5, $6)",
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
        sqlx::query("UPDATE multipart_uploads SET upload_id = $1 WHERE id = $2")
            .bind(upload_id)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets a multipart upload (completed or aborted).
    pub async fn multipart_ended(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM multipart_uploads WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Multipart uploads a previous run left: `(id, upload_id, target, bucket, key)`.
    pub async fn open_multiparts(&self) -> Result<Vec<OpenMultipart>, StoreError> {
        let rows = sqlx::query(
            "SELECT m.id, m.upload_id, p.target, m.bucket, m.object_key FROM multipart_uploads m \
             JOIN pushes p ON p.env = m.env AND p.name = m.name AND p.destination = m.destination \
             JOIN recordings r ON r.env = m.env AND r.name = m.name WHERE r.node = $1",
        )
        .bind(&self.node)
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

    /// Claims deliveries due at `now` for this node: leased until `now + LEASE`, so no other
    /// node sends them meanwhile.
    pub async fn due_deliveries(&self, now: i64) -> Result<Vec<DeliveryRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "UPDATE deliveries SET leased_by = $2, lease_until = $3 WHERE id IN \
             (SELECT id FROM deliveries WHERE state = 'pending' AND next_attempt_at <= $1 \
             AND (lease_until IS NULL OR lease_until <= $1) \
             ORDER BY next_attempt_at LIMIT 64{}) \
             RETURNING id, url, secret, body, attempts",
            self.dialect.skip_locked()
        ))
        .bind(now)
        .bind(&self.node)
        .bind(now + lease_ms())
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
            "UPDATE deliveries SET state = $1, attempts = attempts + 1, next_attempt_at = $2, \
             last_error = $3, leased_by = NULL, lease_until = NULL WHERE id = $4",
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
    tx: &mut Transaction<'_, Any>,
    dialect: Dialect,
    push: &PushRow,
) -> Result<bool, StoreError> {
    if recording_state(tx, dialect, &push.env, &push.name).await? != Some(RecordingState::Deleted) {
        return Ok(false);
    }
    if matches!(push.target, Target::Complimentary { .. }) {
        sqlx::query("UPDATE recordings SET objects_deleted = FALSE WHERE env = $1 AND name = $2")
            .bind(&push.env)
            .bind(&push.name)
            .execute(&mut **tx)
            .await?;
    }
    Ok(true)
}

/// A recording's state, its row locked for the rest of the transaction (PostgreSQL; SQLite
/// holds the database's write lock from `BEGIN IMMEDIATE` on).
async fn recording_state(
    tx: &mut Transaction<'_, Any>,
    dialect: Dialect,
    env: &str,
    name: &str,
) -> Result<Option<RecordingState>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT state FROM recordings WHERE env = $1 AND name = $2{}",
        dialect.for_update()
    ))
    .bind(env)
    .bind(name)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.and_then(|r| RecordingState::parse(r.get::<&str, _>("state"))))
}

/// Derives and stores the recording's state from its pushes.
async fn refresh_state(
    tx: &mut Transaction<'_, Any>,
    dialect: Dialect,
    env: &str,
    name: &str,
) -> Result<RecordingState, StoreError> {
    if recording_state(tx, dialect, env, name).await? == Some(RecordingState::Deleted) {
        return Ok(RecordingState::Deleted);
    }
    let states: Vec<String> = sqlx::query("SELECT state FROM pushes WHERE env = $1 AND name = $2")
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
    sqlx::query("UPDATE recordings SET state = $1 WHERE env = $2 AND name = $3")
        .bind(state.as_str())
        .bind(env)
        .bind(name)
        .execute(&mut **tx)
        .await?;
    Ok(state)
}

fn recording_row(r: &AnyRow) -> RecordingRow {
    RecordingRow {
        env: r.get("env"),
        name: r.get("name"),
        account: r.get("account"),
        region: r.get("region"),
        state: RecordingState::parse(r.get::<&str, _>("state")).unwrap_or(RecordingState::Open),
        committed_at: r.get("committed_at"),
        keep_until: r.get("keep_until"),
        files_kept: flag(r, "files_kept"),
        deleted_at: r.get("deleted_at"),
        deleted_by: r.get("deleted_by"),
    }
}

fn push_row(r: &AnyRow) -> Result<PushRow, StoreError> {
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
        manual: flag(r, "manual"),
    })
}

/// Sets up a new connection: SQLite commits are on disk before they are acted upon
/// (`kill -9` or power loss alike), and a busy database is waited for.
async fn prepare(conn: &mut sqlx::AnyConnection, dialect: Dialect) -> Result<(), sqlx::Error> {
    if dialect == Dialect::Sqlite {
        for pragma in [
            "PRAGMA journal_mode = WAL",
            "PRAGMA synchronous = FULL",
            "PRAGMA busy_timeout = 10000",
        ] {
            sqlx::query(pragma).execute(&mut *conn).await?;
        }
    }
    Ok(())
}

/// A BOOLEAN column, selected as `CAST(col AS INTEGER) AS col`: the Any driver reads no
/// SQLite BOOLEAN, and an integer reads alike on both engines.
fn flag(row: &AnyRow, column: &str) -> bool {
    row.try_get::<i64, _>(column).is_ok_and(|v| v != 0)
}

/// [`LEASE`] in ms.
pub(super) fn lease_ms() -> i64 {
    i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
