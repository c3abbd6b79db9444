//! Deleting recordings: on request (`DELETE /v1/recordings/{env}/{NAME}`), after N days per
//! environment (the lifecycle sweep) and in bulk (jobs). Every path is the same three steps:
//!
//! 1. the tombstone is committed (attempts, files and pending webhooks dropped with it) and
//!    the spool files removed;
//! 2. the four keys leave the complimentary bucket (`DeleteObjects`); only then is the
//!    tombstone marked done and a purge queued for every edge, in one transaction;
//! 3. the purges are sent; an edge that does not acknowledge keeps its queued purge, retried
//!    until it does (so an edge that was down is purged when it comes back).
//!
//! The deleter task redoes step 2 for tombstones a crash or a bucket error left, step 3 for
//! purges due again, runs bulk jobs batch by batch (progress committed with each batch) and
//! the lifecycle sweep every `push.sweep_every`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Mutex, Notify, watch};

use super::Shared;
use super::bucket::{Bucket, UploadError};
use super::model::{Environment, Target};
use super::schedule::now_ms;
use super::store::{Doomed, PurgeRow, StoreError};
use crate::route::FileKind;

/// Recordings tombstoned per transaction by a bulk job or a sweep.
const BATCH: u32 = 250;
/// Purges sent at once.
const PURGES_IN_FLIGHT: usize = 16;
/// Longest wait before a failed purge is tried again: an edge that comes back gets its missed
/// purges within about a second, before HAProxy (rise 5, inter 1s) sends it traffic again.
const PURGE_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Why a deletion did not complete (it is retried by the deleter either way).
#[derive(Debug, thiserror::Error)]
pub(super) enum DeleteError {
    /// The database did not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bucket refused or did not answer.
    #[error("{0}")]
    Bucket(UploadError),
}

/// One edge's purge, as a DELETE reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct EdgePurge {
    /// The edge's admin URL.
    pub admin: String,
    /// Whether the edge acknowledged the purge.
    pub purged: bool,
    /// Why not (the purge stays queued and is retried); `null` when purged.
    pub error: Option<String>,
}

/// What a DELETE of one recording did.
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct Deleted {
    /// Keys removed from the bucket (those that existed).
    pub deleted: Vec<String>,
    /// Every edge's purge.
    pub edges: Vec<EdgePurge>,
}

/// Serialises the deleter's passes (the task, a sweep on request, a DELETE's own pass).
#[derive(Debug, Default)]
pub(super) struct Deleter {
    pass: Mutex<()>,
}

/// Deletes one recording of `env` and purges it from every edge.
pub(super) async fn delete_one(
    shared: &Shared,
    env: &str,
    environment: &Environment,
    name: &str,
) -> Result<Deleted, DeleteError> {
    let now = now_ms();
    let doomed = shared
        .store
        .tombstone(env, environment, &[name.to_string()], "api", now, None)
        .await?;
    shared.metrics.deleted("api", 1);
    remove_spool(shared, &doomed).await;
    let removed = async {
        let mut deleted = Vec::new();
        for d in &doomed {
            let bucket = shared
                .uploader
                .bucket(&Target::Complimentary {
                    region: d.region.clone(),
                })
                .await?;
            let keys = keys(&bucket, d);
            let prefix = format!("{}{}/{}", bucket.key_prefix, d.account, d.name);
            let existing = bucket.existing(&prefix, &keys).await?;
            if !existing.is_empty() {
                bucket.delete(&existing).await?;
            }
            deleted.extend(existing);
        }
        Ok::<_, UploadError>(deleted)
    }
    .await;
    let deleted = match removed {
        Ok(deleted) => deleted,
        Err(e) => {
            // The deleter finishes it, at once rather than when the lease ends.
            shared.store.objects_released(&doomed).await?;
            shared.deleter_wake.notify_one();
            return Err(DeleteError::Bucket(e));
        }
    };
    shared
        .store
        .objects_deleted(&doomed, &shared.edges.admins(), now_ms())
        .await?;
    let mut edges = Vec::new();
    for d in &doomed {
        let queued = shared
            .store
            .purges_of(&d.region, &d.account, &d.name)
            .await?;
        edges.extend(purge_now(shared, queued).await);
    }
    Ok(Deleted { deleted, edges })
}

/// Sends queued purges now, each edge tried up to three times quickly; what is not
/// acknowledged stays queued for the deleter.
pub(super) async fn purge_now(shared: &Shared, queued: Vec<PurgeRow>) -> Vec<EdgePurge> {
    let sends = queued.into_iter().map(|purge| async move {
        let mut error = None;
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            match shared.edges.try_purge(&purge).await {
                Ok(()) => {
                    error = None;
                    break;
                }
                Err(e) => error = Some(e),
            }
        }
        settle(shared, &purge, error.as_deref()).await;
        EdgePurge {
            admin: purge.admin,
            purged: error.is_none(),
            error,
        }
    });
    futures_util::future::join_all(sends).await
}

/// Records a purge's outcome: done, or due again after a backoff.
async fn settle(shared: &Shared, purge: &PurgeRow, error: Option<&str>) {
    let saved = match error {
        None => shared.store.purge_done(purge).await,
        Some(e) => {
            tracing::warn!(admin = %purge.admin, region = %purge.region, account = %purge.account, name = %purge.name, error = %e, "edge purge failed; queued");
            let backoff =
                Duration::from_millis(250u64 << purge.attempts.min(8)).min(PURGE_BACKOFF_MAX);
            let next = now_ms() + super::schedule::millis(backoff);
            shared.store.purge_failed(purge, e, next).await
        }
    };
    if let Err(e) = saved {
        tracing::warn!(error = %e, "purge outcome not saved");
    }
}

/// The four keys of a recording in a bucket.
fn keys(bucket: &Bucket, d: &Doomed) -> Vec<String> {
    FileKind::ALL
        .iter()
        .map(|kind| bucket.key(&d.account, &d.name, *kind))
        .collect()
}

async fn remove_spool(shared: &Shared, doomed: &[Doomed]) {
    for d in doomed {
        if let Err(e) = shared.spool.remove(&d.env, &d.name).await {
            tracing::warn!(env = %d.env, name = %d.name, error = %e, "spool files of a deleted recording not removed");
        }
    }
}

impl Deleter {
    /// Runs passes until `stop`: at once, on `wake`, and every second.
    pub(super) async fn run(
        self: Arc<Self>,
        shared: Arc<Shared>,
        wake: Arc<Notify>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut next_sweep = now_ms();
        loop {
            if now_ms() >= next_sweep {
                next_sweep = now_ms() + super::schedule::millis(shared.push.sweep_every);
                if let Err(e) = self.sweep(&shared).await {
                    tracing::warn!(error = %e, "lifecycle sweep incomplete; retried");
                }
            }
            let busy = match self.pass(&shared).await {
                Ok(busy) => busy,
                Err(e) => {
                    tracing::warn!(error = %e, "deletion pass incomplete; retried");
                    false
                }
            };
            if busy && !*stop.borrow() {
                continue;
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// One pass: a batch of every bulk job, the objects of tombstones, due purges. Whether
    /// work is left that need not wait.
    async fn pass(&self, shared: &Shared) -> Result<bool, DeleteError> {
        let _one = self.pass.lock().await;
        let mut busy = false;
        for job in shared.store.running_jobs(now_ms()).await? {
            // Bounded: the next batch is tombstoned once the last one left the bucket.
            if shared.store.objects_pending_in(&job.env).await? {
                busy |= self.remove_objects(shared).await?;
                continue;
            }
            let names = shared
                .store
                .committed_before(&job.env, job.before, BATCH)
                .await?;
            if names.is_empty() {
                shared.store.job_finished(&job.id, now_ms()).await?;
                tracing::info!(job = %job.id, env = %job.env, deleted = job.deleted, "bulk deletion done");
                continue;
            }
            let Some(environment) = shared.store.environment(&job.env).await? else {
                shared.store.job_finished(&job.id, now_ms()).await?;
                continue;
            };
            let doomed = shared
                .store
                .tombstone(
                    &job.env,
                    &environment,
                    &names,
                    "api",
                    now_ms(),
                    Some(&job.id),
                )
                .await?;
            shared.metrics.deleted("api", doomed.len() as u64);
            remove_spool(shared, &doomed).await;
            busy = true;
        }
        busy |= self.remove_objects(shared).await?;
        busy |= self.send_purges(shared).await?;
        Ok(busy)
    }

    /// Deletes the objects of pending tombstones, 250 recordings per DeleteObjects.
    async fn remove_objects(&self, shared: &Shared) -> Result<bool, DeleteError> {
        let pending = shared.store.objects_pending(now_ms(), BATCH * 4).await?;
        if pending.is_empty() {
            return Ok(false);
        }
        let mut by_region: BTreeMap<String, Vec<Doomed>> = BTreeMap::new();
        for d in pending {
            by_region.entry(d.region.clone()).or_default().push(d);
        }
        let admins = shared.edges.admins();
        let mut failure = None;
        for (region, doomed) in by_region {
            let bucket = match shared
                .uploader
                .bucket(&Target::Complimentary { region })
                .await
            {
                Ok(bucket) => bucket,
                Err(e) => {
                    shared.store.objects_released(&doomed).await?;
                    failure = Some(e);
                    continue;
                }
            };
            for (i, batch) in doomed.chunks(BATCH as usize).enumerate() {
                let keys: Vec<String> = batch.iter().flat_map(|d| keys(&bucket, d)).collect();
                match bucket.delete(&keys).await {
                    Ok(()) => {
                        shared
                            .store
                            .objects_deleted(batch, &admins, now_ms())
                            .await?
                    }
                    Err(e) => {
                        // Claimed but not done: free for the next pass (of any node).
                        let rest = &doomed[i * BATCH as usize..];
                        shared.store.objects_released(rest).await?;
                        failure = Some(e);
                        break;
                    }
                }
            }
        }
        match failure {
            // Tried again on the next pass (a second later), not in a tight loop.
            Some(e) => Err(DeleteError::Bucket(e)),
            None => Ok(true),
        }
    }

    /// Sends due purges. An edge that fails one is not sent the rest of its due purges in
    /// this pass (they stay due): a dead edge costs one request per pass.
    async fn send_purges(&self, shared: &Shared) -> Result<bool, DeleteError> {
        let due = shared.store.due_purges(now_ms(), 512).await?;
        if due.is_empty() {
            return Ok(false);
        }
        let mut by_edge: BTreeMap<String, Vec<PurgeRow>> = BTreeMap::new();
        for purge in due {
            by_edge.entry(purge.admin.clone()).or_default().push(purge);
        }
        let progressed = futures_util::stream::iter(by_edge.into_values())
            .map(|purges| async move {
                let mut sent = 0usize;
                let mut purges = purges.into_iter();
                // The first tells whether the edge answers at all.
                if let Some(first) = purges.next() {
                    let result = shared.edges.try_purge(&first).await;
                    settle(shared, &first, result.as_ref().err().map(String::as_str)).await;
                    if result.is_err() {
                        return 0;
                    }
                    sent += 1;
                }
                let rest: Vec<PurgeRow> = purges.collect();
                sent += futures_util::stream::iter(rest)
                    .map(|purge| async move {
                        let result = shared.edges.try_purge(&purge).await;
                        settle(shared, &purge, result.as_ref().err().map(String::as_str)).await;
                        usize::from(result.is_ok())
                    })
                    .buffer_unordered(PURGES_IN_FLIGHT)
                    .fold(0, |a, b| async move { a + b })
                    .await;
                sent
            })
            .buffer_unordered(4)
            .fold(0, |a, b| async move { a + b })
            .await;
        Ok(progressed > 0)
    }

    /// Tombstones every recording of every environment with a lifecycle committed more than
    /// its `delete_after_days` ago, then deletes their objects and purges them. Returns
    /// `(env, name)` of each.
    pub(super) async fn sweep(
        &self,
        shared: &Shared,
    ) -> Result<Vec<(String, String)>, DeleteError> {
        let mut swept = Vec::new();
        {
            let _one = self.pass.lock().await;
            let now = now_ms();
            for (env, days) in shared.store.lifecycle_environments(None).await? {
                let Some(environment) = shared.store.environment(&env).await? else {
                    continue;
                };
                let cutoff = shared.schedule.lifecycle_cutoff(days, now);
                loop {
                    let names = shared.store.committed_before(&env, cutoff, BATCH).await?;
                    if names.is_empty() {
                        break;
                    }
                    let doomed = shared
                        .store
                        .tombstone(&env, &environment, &names, "lifecycle", now_ms(), None)
                        .await?;
                    shared.metrics.deleted("lifecycle", doomed.len() as u64);
                    remove_spool(shared, &doomed).await;
                    swept.extend(doomed.into_iter().map(|d| (d.env, d.name)));
                }
            }
        }
        if !swept.is_empty() {
            tracing::info!(
                recordings = swept.len(),
                "lifecycle sweep deleted recordings"
            );
        }
        // The objects and the purges now rather than on the next pass; what fails here is
        // the deleter's to finish (the tombstones are committed).
        loop {
            match self.pass(shared).await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "swept recordings not yet out of the bucket; retried");
                    break;
                }
            }
        }
        Ok(swept)
    }
}
