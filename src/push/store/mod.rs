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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Row, Transaction};

mod deletion;
mod deliveries;
mod pushes;
mod recordings;

pub use deletion::{Doomed, JobRow, PurgeRow};

use super::model::{RecordingState, Target};

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
    /// The database's log could not be synced.
    #[error("database log: {0}")]
    Sync(#[from] std::io::Error),
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
    /// SQLite only: turns to write, and the group commit of the write-ahead log.
    writer: Option<Arc<Writer>>,
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
                migration(
                    4,
                    "early",
                    include_str!("../../../migrations/0004_early.sql"),
                ),
                migration(
                    5,
                    "spool",
                    include_str!("../../../migrations/0005_spool.sql"),
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
                // The driver percent-decodes the path: a `%`, `?` or `#` in it is escaped.
                let path = path
                    .replace('%', "%25")
                    .replace('?', "%3F")
                    .replace('#', "%23");
                (format!("sqlite://{path}?mode=rwc"), Dialect::Sqlite, 4)
            }
        };
        let options: sqlx::any::AnyConnectOptions = url
            .parse()
            .map_err(|_| StoreError::Url("not a valid sqlite or postgres URL".into()))?;
        let pool = AnyPoolOptions::new()
            .max_connections(connections)
            // A ping before each use is a round trip to the connection's thread per statement
            // and finds nothing wrong with a file; a server's connection can be dropped.
            .test_before_acquire(dialect == Dialect::Postgres)
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
            writer: (dialect == Dialect::Sqlite).then(|| {
                Arc::new(Writer {
                    turn: tokio::sync::Mutex::new(()),
                    wal: spool.join("push.db-wal"),
                    committed: AtomicU64::new(0),
                    synced: tokio::sync::Mutex::new(Synced::default()),
                    syncs: AtomicU64::new(0),
                })
            }),
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

    /// Whether the database answers now (the push API's readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Which engine this is.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// A writing transaction, and this process's turn to write (held until it ends).
    async fn begin(&self) -> Result<(Transaction<'static, Any>, Writing<'_>), StoreError> {
        let writing = self.writing().await;
        Ok((self.pool.begin_with(self.dialect.begin()).await?, writing))
    }

    /// Whether a read finds a row. The pollers ask it before they claim anything, so that an
    /// idle node never writes nor takes the write lock from the writers.
    async fn finds(&self, query: AnyQuery<'_>) -> Result<bool, StoreError> {
        Ok(query.fetch_optional(&self.pool).await?.is_some())
    }

    /// This process's turn to write (SQLite; nothing to wait for on PostgreSQL). Never
    /// taken twice by one task: a writing method calls no other writing method.
    async fn writing(&self) -> Writing<'_> {
        match &self.writer {
            Some(writer) => Some(writer.turn.lock().await),
            None => None,
        }
    }

    /// Commits a writing transaction; it is on disk when this returns.
    async fn finish(
        &self,
        tx: Transaction<'static, Any>,
        turn: Writing<'_>,
    ) -> Result<(), StoreError> {
        tx.commit().await?;
        self.written(turn).await
    }

    /// After a committed write: gives the turn back, then returns once the write is on disk.
    ///
    /// SQLite commits with `synchronous = NORMAL` (the log is written, not synced: safe from
    /// a killed process, not yet from a power cut), and the writers then sync the log
    /// together: one `fdatasync` covers every commit made before it started. With one sync
    /// per commit (`FULL`) each writer held SQLite's only write lock across its own sync,
    /// and 8 concurrent uploads queued behind one another's syncs.
    async fn written(&self, turn: Writing<'_>) -> Result<(), StoreError> {
        drop(turn);
        let Some(writer) = &self.writer else {
            return Ok(());
        };
        let mine = writer.committed.fetch_add(1, Ordering::SeqCst) + 1;
        let mut synced = writer.synced.lock().await;
        if synced.commits >= mine {
            return Ok(());
        }
        // Every commit counted here had written its frames before it was counted.
        let covers = writer.committed.load(Ordering::SeqCst);
        let (wal, dir, known) = (writer.wal.clone(), writer.dir(), synced.wal);
        let inode = tokio::task::spawn_blocking(move || sync_log(&wal, &dir, known))
            .await
            .map_err(std::io::Error::other)??;
        writer.syncs.fetch_add(1, Ordering::Relaxed);
        *synced = Synced {
            commits: covers,
            wal: inode,
        };
        Ok(())
    }
}

/// A query of either driver, its values bound.
type AnyQuery<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>;

/// A turn to write, given back when dropped.
type Writing<'a> = Option<tokio::sync::MutexGuard<'a, ()>>;

/// SQLite's writers: one at a time (SQLite has one writer, and a connection that finds the
/// write lock taken sleeps in its busy handler, 1, 2, 5, 10… ms, instead of being woken), and
/// one sync of the log for every commit made before it.
#[derive(Debug)]
struct Writer {
    turn: tokio::sync::Mutex<()>,
    /// `push.db-wal`.
    wal: PathBuf,
    /// Commits made so far.
    committed: AtomicU64,
    synced: tokio::sync::Mutex<Synced>,
    /// Syncs of the log so far.
    syncs: AtomicU64,
}

/// What the last sync of the log covered.
#[derive(Debug, Default)]
struct Synced {
    /// Commits on disk.
    commits: u64,
    /// The log file's inode then (a new log's directory entry is synced once).
    wal: Option<u64>,
}

impl Writer {
    fn dir(&self) -> PathBuf {
        self.wal.parent().map(Path::to_path_buf).unwrap_or_default()
    }
}

/// Syncs SQLite's write-ahead log (and its directory when the log is a new file); the log's
/// inode. No log: the last connection checkpointed it into the database, synced, and
/// removed it.
fn sync_log(wal: &Path, dir: &Path, known: Option<u64>) -> std::io::Result<Option<u64>> {
    use std::os::unix::fs::MetadataExt;
    let log = match std::fs::File::open(wal) {
        Ok(log) => log,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    log.sync_data()?;
    let inode = log.metadata()?.ino();
    if known != Some(inode) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(Some(inode))
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

/// Sets up a new connection: SQLite commits are on disk before they are acted upon
/// (`kill -9` or power loss alike), and a busy database is waited for.
async fn prepare(conn: &mut sqlx::AnyConnection, dialect: Dialect) -> Result<(), sqlx::Error> {
    if dialect == Dialect::Sqlite {
        for pragma in [
            "PRAGMA journal_mode = WAL",
            // Durable once `Store::written` has synced the log (a group commit).
            "PRAGMA synchronous = NORMAL",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::model::Environment;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_all_kept_and_share_syncs_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), None, "node-a").await.unwrap();
        let env = Environment {
            account: "ACC".into(),
            region: "eu1".into(),
            complimentary_storage: true,
            webhook: None,
            destinations: Vec::new(),
            delete_after_days: None,
        };
        let writes: Vec<_> = (0..64)
            .map(|i| {
                let (store, env) = (store.clone(), env.clone());
                tokio::spawn(
                    async move { store.put_environment(&format!("env-{i}"), &env, i).await },
                )
            })
            .collect();
        for write in writes {
            write.await.unwrap().unwrap();
        }
        for i in 0..64 {
            let kept = store.environment(&format!("env-{i}")).await.unwrap();
            assert_eq!(kept.unwrap().account, "ACC");
        }
        let syncs = store.writer.as_ref().unwrap().syncs.load(Ordering::Relaxed);
        // Each commit is synced before its call returns, most of them by another's sync.
        assert!(
            (1..64).contains(&syncs),
            "{syncs} syncs of the log for 64 commits"
        );
        assert!(dir.path().join("push.db-wal").exists());
    }
}
