//! Pushes: one row per recording and destination, claimed by the node whose spool holds the
//! recording, with every attempt's outcome; the multipart uploads attempts leave open.

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{
    Dialect, NewDelivery, OpenMultipart, PushRow, Store, StoreError, flag, recording_state,
};
use crate::push::model::{RecordingState, Target};

impl Store {
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
        let (mut tx, turn) = self.begin().await?;
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
        self.finish(tx, turn).await?;
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
        let (mut tx, turn) = self.begin().await?;
        if deleted_meanwhile(&mut tx, self.dialect, push).await? {
            self.finish(tx, turn).await?;
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
        let state = store_state(&mut tx, &push.env, &push.name).await?;
        self.finish(tx, turn).await?;
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
        let (mut tx, turn) = self.begin().await?;
        if deleted_meanwhile(&mut tx, self.dialect, push).await? {
            self.finish(tx, turn).await?;
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
        let recording = store_state(&mut tx, &push.env, &push.name).await?;
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
        self.finish(tx, turn).await?;
        Ok(recording)
    }

    /// After a restart: this node's attempts that were running are due again at once (they count as
    /// made), and the multipart uploads they had open are returned for aborting.
    pub async fn recover(&self, now: i64) -> Result<u64, StoreError> {
        let (mut tx, turn) = self.begin().await?;
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
        self.finish(tx, turn).await?;
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
        let turn = self.writing().await;
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
        self.written(turn).await?;
        Ok(())
    }

    /// Remembers an early multipart upload about to be created: one of a file still arriving,
    /// before any push row exists, so the row names its target and this node itself.
    pub async fn early_multipart_intent(
        &self,
        id: &str,
        env: &str,
        name: &str,
        (destination, target): (&str, &Target),
        bucket: &str,
        key: &str,
    ) -> Result<(), StoreError> {
        let turn = self.writing().await;
        sqlx::query(
            "INSERT INTO multipart_uploads \
             (id, env, name, destination, bucket, object_key, target, node) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id)
        .bind(env)
        .bind(name)
        .bind(destination)
        .bind(bucket)
        .bind(key)
        .bind(serde_json::to_string(target)?)
        .bind(&self.node)
        .execute(&self.pool)
        .await?;
        self.written(turn).await?;
        Ok(())
    }

    /// Records the upload id `CreateMultipartUpload` answered.
    pub async fn multipart_started(&self, id: &str, upload_id: &str) -> Result<(), StoreError> {
        let turn = self.writing().await;
        sqlx::query("UPDATE multipart_uploads SET upload_id = $1 WHERE id = $2")
            .bind(upload_id)
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.written(turn).await?;
        Ok(())
    }

    /// Forgets a multipart upload (completed or aborted).
    pub async fn multipart_ended(&self, id: &str) -> Result<(), StoreError> {
        let turn = self.writing().await;
        sqlx::query("DELETE FROM multipart_uploads WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.written(turn).await?;
        Ok(())
    }

    /// Multipart uploads a previous run left: `(id, upload_id, target, bucket, key)`.
    pub async fn open_multiparts(&self) -> Result<Vec<OpenMultipart>, StoreError> {
        // An attempt's row finds its target and node through its push and recording; an
        // early upload's row carries both.
        let rows = sqlx::query(
            "SELECT m.id, m.upload_id, COALESCE(m.target, p.target) AS target, m.bucket, \
             m.object_key FROM multipart_uploads m \
             LEFT JOIN pushes p ON p.env = m.env AND p.name = m.name \
             AND p.destination = m.destination \
             LEFT JOIN recordings r ON r.env = m.env AND r.name = m.name \
             WHERE COALESCE(m.node, r.node) = $1 AND COALESCE(m.target, p.target) IS NOT NULL",
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

/// Derives and stores the recording's state from its pushes.
pub(super) async fn refresh_state(
    tx: &mut Transaction<'_, Any>,
    dialect: Dialect,
    env: &str,
    name: &str,
) -> Result<RecordingState, StoreError> {
    if recording_state(tx, dialect, env, name).await? == Some(RecordingState::Deleted) {
        return Ok(RecordingState::Deleted);
    }
    store_state(tx, env, name).await
}

/// [`refresh_state`] for a recording this transaction has already read (and on PostgreSQL
/// locked) and found not deleted: one statement less per outcome.
async fn store_state(
    tx: &mut Transaction<'_, Any>,
    env: &str,
    name: &str,
) -> Result<RecordingState, StoreError> {
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
