//! Deletion in the database: tombstones, the durable edge purge queue, lifecycle queries and
//! bulk deletion jobs. A tombstone is committed before anything is removed; its objects are
//! marked deleted only once the bucket said so, and the purges are queued in that same
//! transaction, so a crash at any point leaves work that the deleter picks up again.

use sqlx::Row;

use super::{Store, StoreError};
use crate::push::model::Environment;

/// A tombstoned recording and where its objects are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doomed {
    /// Environment.
    pub env: String,
    /// Recording name.
    pub name: String,
    /// Account hash (from the recording when known, else the environment's).
    pub account: String,
    /// Region whose bucket holds it.
    pub region: String,
}

/// A purge an edge has not acknowledged yet.
#[derive(Debug, Clone)]
pub struct PurgeRow {
    /// The edge's admin URL.
    pub admin: String,
    /// Region, account and recording name purged.
    pub region: String,
    /// Account hash.
    pub account: String,
    /// Recording name.
    pub name: String,
    /// Failed tries so far.
    pub attempts: u32,
    /// When it was (re)queued, ms: a purge done for an older queueing does not remove it.
    pub queued_at: i64,
    /// Why the last try failed.
    pub last_error: Option<String>,
}

/// A bulk deletion job.
#[derive(Debug, Clone)]
pub struct JobRow {
    /// Its id.
    pub id: String,
    /// Environment.
    pub env: String,
    /// Recordings committed before this, ms.
    pub before: i64,
    /// `running` or `done`.
    pub state: String,
    /// Matching recordings when the job was created.
    pub total: i64,
    /// Tombstoned so far.
    pub deleted: i64,
    /// Created, ms.
    pub created_at: i64,
    /// Finished, ms.
    pub finished_at: Option<i64>,
}

impl Store {
    /// Tombstones recordings of `env` (rows are created for names never seen: the keys follow
    /// from the URL scheme), dropping their attempts, files and pending webhook deliveries,
    /// and marks their objects to be deleted. `job` counts them in a bulk job, in the same
    /// transaction. Returns where each recording's objects are.
    ///
    /// A DELETE (`by` = `api`, no job) tombstones a deleted recording again (its objects are
    /// looked for once more); a sweep or a job passes over it, so of two nodes sweeping at
    /// once each recording is deleted by one. The spool files stay marked kept when another
    /// node holds them: that node removes them.
    ///
    /// A DELETE's tombstones are leased to this node: it removes their objects itself and
    /// answers which keys it found, so the deleter task must not remove them first.
    pub async fn tombstone(
        &self,
        env: &str,
        environment: &Environment,
        names: &[String],
        by: &str,
        now: i64,
        job: Option<&str>,
    ) -> Result<Vec<Doomed>, StoreError> {
        let (mut tx, turn) = self.begin().await?;
        let mut doomed = Vec::with_capacity(names.len());
        let again = by == "api" && job.is_none();
        let mut counted = 0i64;
        for name in names {
            let known =
                sqlx::query("SELECT account, region FROM recordings WHERE env = $1 AND name = $2")
                    .bind(env)
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
            let (account, region) = match known {
                Some(row) => (row.get("account"), row.get("region")),
                None => (environment.account.clone(), environment.region.clone()),
            };
            let tombstoned = sqlx::query(&format!(
                "INSERT INTO recordings (env, name, account, region, state, files_kept, \
                 deleted_at, deleted_by, objects_deleted, objects_leased_by, \
                 objects_lease_until) \
                 VALUES ($1, $2, $3, $4, 'deleted', FALSE, $5, $6, FALSE, $8, $9) \
                 ON CONFLICT (env, name) DO UPDATE SET state = 'deleted', \
                 files_kept = CASE WHEN recordings.node = $7 THEN FALSE \
                 ELSE recordings.files_kept END, \
                 keep_until = NULL, objects_deleted = FALSE, \
                 deleted_at = COALESCE(recordings.deleted_at, excluded.deleted_at), \
                 deleted_by = COALESCE(recordings.deleted_by, excluded.deleted_by), \
                 objects_leased_by = excluded.objects_leased_by, \
                 objects_lease_until = excluded.objects_lease_until{}",
                if again {
                    ""
                } else {
                    " WHERE recordings.state <> 'deleted'"
                }
            ))
            .bind(env)
            .bind(name)
            .bind(&account)
            .bind(&region)
            .bind(now)
            .bind(by)
            .bind(&self.node)
            .bind(again.then_some(self.node.as_str()))
            .bind(again.then_some(now + super::lease_ms()))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if tombstoned == 0 {
                continue;
            }
            counted += 1;
            for table in ["pushes", "files"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE env = $1 AND name = $2"))
                    .bind(env)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(
                "DELETE FROM deliveries WHERE env = $1 AND name = $2 AND state = 'pending'",
            )
            .bind(env)
            .bind(name)
            .execute(&mut *tx)
            .await?;
            doomed.push(Doomed {
                env: env.to_string(),
                name: name.clone(),
                account,
                region,
            });
        }
        if let Some(job) = job {
            sqlx::query("UPDATE delete_jobs SET deleted = deleted + $1 WHERE id = $2")
                .bind(counted)
                .bind(job)
                .execute(&mut *tx)
                .await?;
        }
        self.finish(tx, turn).await?;
        Ok(doomed)
    }

    /// Claims tombstones whose objects may still be in a bucket, oldest first: leased to this
    /// node until `now + LEASE`, so no other node deletes them meanwhile.
    pub async fn objects_pending(&self, now: i64, limit: u32) -> Result<Vec<Doomed>, StoreError> {
        // Polled every second: a read first, so that an idle node never writes.
        let due = sqlx::query(
            "SELECT 1 AS x FROM recordings WHERE objects_deleted = FALSE AND state = 'deleted' \
             AND (objects_lease_until IS NULL OR objects_lease_until <= $1) LIMIT 1",
        );
        if !self.finds(due.bind(now)).await? {
            return Ok(Vec::new());
        }
        let turn = self.writing().await;
        let rows = sqlx::query(&format!(
            "UPDATE recordings SET objects_lease_until = $3, objects_leased_by = $4 \
             WHERE (env, name) IN \
             (SELECT env, name FROM recordings WHERE objects_deleted = FALSE \
             AND state = 'deleted' AND (objects_lease_until IS NULL OR objects_lease_until <= $2) \
             ORDER BY deleted_at LIMIT $1{}) RETURNING env, name, account, region, deleted_at",
            self.dialect.skip_locked()
        ))
        .bind(i64::from(limit))
        .bind(now)
        .bind(now + super::lease_ms())
        .bind(&self.node)
        .fetch_all(&self.pool)
        .await?;
        drop(turn);
        let mut rows = rows;
        rows.sort_by_key(|r| r.get::<Option<i64>, _>("deleted_at"));
        Ok(rows
            .iter()
            .map(|r| Doomed {
                env: r.get("env"),
                name: r.get("name"),
                account: r.get("account"),
                region: r.get("region"),
            })
            .collect())
    }

    /// The bucket did not take these tombstones' deletion: free for the next pass, on any node.
    pub async fn objects_released(&self, doomed: &[Doomed]) -> Result<(), StoreError> {
        let (mut tx, turn) = self.begin().await?;
        for d in doomed {
            sqlx::query(
                "UPDATE recordings SET objects_lease_until = NULL, objects_leased_by = NULL \
                 WHERE env = $1 AND name = $2",
            )
            .bind(&d.env)
            .bind(&d.name)
            .execute(&mut *tx)
            .await?;
        }
        self.finish(tx, turn).await?;
        Ok(())
    }

    /// The bucket no longer has these recordings' objects: purges of them are queued for
    /// every edge in the same transaction (after the bucket, so no edge refills from it).
    pub async fn objects_deleted(
        &self,
        doomed: &[Doomed],
        edges: &[String],
        now: i64,
    ) -> Result<(), StoreError> {
        let (mut tx, turn) = self.begin().await?;
        for d in doomed {
            sqlx::query(
                "UPDATE recordings SET objects_deleted = TRUE, objects_lease_until = NULL, \
                 objects_leased_by = NULL \
                 WHERE env = $1 AND name = $2 AND state = 'deleted'",
            )
            .bind(&d.env)
            .bind(&d.name)
            .execute(&mut *tx)
            .await?;
            insert_purges(&mut tx, &d.region, &d.account, &d.name, edges, now).await?;
        }
        self.finish(tx, turn).await?;
        Ok(())
    }

    /// Queues a purge of one recording on every edge (a re-push replaced its objects).
    pub async fn queue_purges(
        &self,
        region: &str,
        account: &str,
        name: &str,
        edges: &[String],
        now: i64,
    ) -> Result<(), StoreError> {
        let (mut tx, turn) = self.begin().await?;
        insert_purges(&mut tx, region, account, name, edges, now).await?;
        self.finish(tx, turn).await?;
        Ok(())
    }

    /// Purges due now (at most `limit`).
    pub async fn due_purges(&self, now: i64, limit: u32) -> Result<Vec<PurgeRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT admin, region, account, name, attempts, queued_at, last_error FROM purges \
             WHERE next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $2",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(purge_row).collect())
    }

    /// The pending purges of one recording (answers of a DELETE).
    pub async fn purges_of(
        &self,
        region: &str,
        account: &str,
        name: &str,
    ) -> Result<Vec<PurgeRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT admin, region, account, name, attempts, queued_at, last_error FROM purges \
             WHERE region = $1 AND account = $2 AND name = $3",
        )
        .bind(region)
        .bind(account)
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(purge_row).collect())
    }

    /// The edge acknowledged the purge (unless it was queued again since).
    pub async fn purge_done(&self, purge: &PurgeRow) -> Result<(), StoreError> {
        let turn = self.writing().await;
        sqlx::query(
            "DELETE FROM purges WHERE admin = $1 AND region = $2 AND account = $3 AND name = $4 \
             AND queued_at = $5",
        )
        .bind(&purge.admin)
        .bind(&purge.region)
        .bind(&purge.account)
        .bind(&purge.name)
        .bind(purge.queued_at)
        .execute(&self.pool)
        .await?;
        self.written(turn).await?;
        Ok(())
    }

    /// The edge did not acknowledge: try again at `next`.
    pub async fn purge_failed(
        &self,
        purge: &PurgeRow,
        error: &str,
        next: i64,
    ) -> Result<(), StoreError> {
        let turn = self.writing().await;
        sqlx::query(
            "UPDATE purges SET attempts = attempts + 1, last_error = $1, next_attempt_at = $2 \
             WHERE admin = $3 AND region = $4 AND account = $5 AND name = $6",
        )
        .bind(error)
        .bind(next)
        .bind(&purge.admin)
        .bind(&purge.region)
        .bind(&purge.account)
        .bind(&purge.name)
        .execute(&self.pool)
        .await?;
        self.written(turn).await?;
        Ok(())
    }

    /// Purges waiting, by edge (metrics).
    pub async fn pending_purges(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT admin, COUNT(*) AS n FROM purges GROUP BY admin")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| (r.get("admin"), r.get("n"))).collect())
    }

    /// Environments with a lifecycle (`delete_after_days` > 0) and their day count, of one
    /// region or of all.
    pub async fn lifecycle_environments(
        &self,
        region: Option<&str>,
    ) -> Result<Vec<(String, u32)>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, delete_after_days FROM environments WHERE delete_after_days > 0 \
             AND ($1 IS NULL OR region = $2) ORDER BY name",
        )
        .bind(region)
        .bind(region)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let days: i64 = r.get("delete_after_days");
                (r.get("name"), u32::try_from(days).unwrap_or(u32::MAX))
            })
            .collect())
    }

    /// Names of committed, not deleted recordings of `env` committed before `before` (ms),
    /// oldest first, at most `limit`.
    pub async fn committed_before(
        &self,
        env: &str,
        before: i64,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT name FROM recordings WHERE env = $1 AND committed_at < $2 \
             AND state <> 'deleted' ORDER BY committed_at LIMIT $3",
        )
        .bind(env)
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get("name")).collect())
    }

    /// Starts a bulk deletion job.
    pub async fn create_job(
        &self,
        id: &str,
        env: &str,
        before: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let (mut tx, turn) = self.begin().await?;
        let total: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM recordings WHERE env = $1 AND committed_at < $2 \
             AND state <> 'deleted'",
        )
        .bind(env)
        .bind(before)
        .fetch_one(&mut *tx)
        .await?
        .get("n");
        sqlx::query(
            "INSERT INTO delete_jobs (id, env, before_at, state, total, deleted, created_at) \
             VALUES ($1, $2, $3, 'running', $4, 0, $5)",
        )
        .bind(id)
        .bind(env)
        .bind(before)
        .bind(total)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        self.finish(tx, turn).await?;
        Ok(())
    }

    /// A bulk deletion job.
    pub async fn job(&self, id: &str) -> Result<Option<JobRow>, StoreError> {
        let row = sqlx::query(
            "SELECT id, env, before_at, state, total, deleted, created_at, finished_at \
             FROM delete_jobs WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(job_row))
    }

    /// Claims the jobs not finished (resumed after a restart) that no other node holds: each
    /// is this node's until `now + LEASE`, renewed on every pass.
    pub async fn running_jobs(&self, now: i64) -> Result<Vec<JobRow>, StoreError> {
        // Polled every second: a read first, so that an idle node never writes.
        let due = sqlx::query(
            "SELECT 1 AS x FROM delete_jobs WHERE state = 'running' AND (leased_by = $1 \
             OR lease_until IS NULL OR lease_until <= $2) LIMIT 1",
        );
        if !self.finds(due.bind(&self.node).bind(now)).await? {
            return Ok(Vec::new());
        }
        let turn = self.writing().await;
        let rows = sqlx::query(&format!(
            "UPDATE delete_jobs SET leased_by = $1, lease_until = $3 WHERE id IN \
             (SELECT id FROM delete_jobs WHERE state = 'running' AND (leased_by = $1 \
             OR lease_until IS NULL OR lease_until <= $2){}) \
             RETURNING id, env, before_at, state, total, deleted, created_at, finished_at",
            self.dialect.skip_locked()
        ))
        .bind(&self.node)
        .bind(now)
        .bind(now + super::lease_ms())
        .fetch_all(&self.pool)
        .await?;
        drop(turn);
        let mut jobs: Vec<JobRow> = rows.iter().map(job_row).collect();
        jobs.sort_by_key(|j| j.created_at);
        Ok(jobs)
    }

    /// Whether any tombstone of `env` still waits for its objects to leave the bucket.
    pub async fn objects_pending_in(&self, env: &str) -> Result<bool, StoreError> {
        let pending = sqlx::query(
            "SELECT 1 AS x FROM recordings WHERE env = $1 AND state = 'deleted' \
             AND objects_deleted = FALSE LIMIT 1",
        );
        self.finds(pending.bind(env)).await
    }

    /// A job is complete.
    pub async fn job_finished(&self, id: &str, now: i64) -> Result<(), StoreError> {
        let turn = self.writing().await;
        sqlx::query(
            "UPDATE delete_jobs SET state = 'done', finished_at = $1, leased_by = NULL, \
             lease_until = NULL WHERE id = $2",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        self.written(turn).await?;
        Ok(())
    }
}

/// Queues (or re-queues, due now) the purge of one recording on every edge.
async fn insert_purges(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    region: &str,
    account: &str,
    name: &str,
    edges: &[String],
    now: i64,
) -> Result<(), StoreError> {
    for admin in edges {
        sqlx::query(
            "INSERT INTO purges (admin, region, account, name, attempts, next_attempt_at, \
             queued_at) VALUES ($1, $2, $3, $4, 0, $5, $6) \
             ON CONFLICT (admin, region, account, name) DO UPDATE SET \
             next_attempt_at = excluded.next_attempt_at, queued_at = excluded.queued_at",
        )
        .bind(admin)
        .bind(region)
        .bind(account)
        .bind(name)
        .bind(now)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

fn purge_row(r: &sqlx::any::AnyRow) -> PurgeRow {
    PurgeRow {
        admin: r.get("admin"),
        region: r.get("region"),
        account: r.get("account"),
        name: r.get("name"),
        attempts: u32::try_from(r.get::<i64, _>("attempts")).unwrap_or(u32::MAX),
        queued_at: r.get("queued_at"),
        last_error: r.get("last_error"),
    }
}

fn job_row(r: &sqlx::any::AnyRow) -> JobRow {
    JobRow {
        id: r.get("id"),
        env: r.get("env"),
        before: r.get("before_at"),
        state: r.get("state"),
        total: r.get("total"),
        deleted: r.get("deleted"),
        created_at: r.get("created_at"),
        finished_at: r.get("finished_at"),
    }
}
