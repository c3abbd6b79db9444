//! The dispatcher: claims due pushes (the claim is committed before the attempt starts),
//! runs at most `push.concurrency` attempts at once and at most half of them for any one
//! destination (a slow customer bucket cannot starve the rest), records each outcome, queues
//! webhooks, purges edges after a manual re-push; beside it the releaser removes spool files
//! once every destination has them (or retention ended).
//!
//! Every step that commits a state change waits for the log to be synced; steps of different
//! recordings run concurrently so that their commits share the syncs (a claim, an outcome and
//! a release each cost a log sync, and one at a time they bounded a node to a few hundred
//! small recordings a second).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::{Notify, Semaphore, watch};

use super::bucket::UploadError;
use super::model::{COMPLIMENTARY, RecordingState, Target, kind_of_suffix};
use super::schedule::now_ms;
use super::store::{NewDelivery, PushRow};
use super::upload::FileUpload;
use super::urls::urls;
use super::webhook::{Copied, EVENT, delivery_id};
use super::{Shared, lock};

/// A push by its row's key: recording and destination.
type PushKey = (String, String, String);

/// The dispatcher's own state.
pub(super) struct Dispatcher {
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    /// Attempts running per destination (fairness).
    running: Arc<Mutex<HashMap<String, usize>>>,
    /// Pushes handed to an attempt that may not have claimed them yet: the next pass must
    /// not start them twice.
    started: Arc<Mutex<HashSet<PushKey>>>,
    per_destination: usize,
    /// Wakes the releaser after attempts ended.
    release: Arc<Notify>,
}

/// Spool releases (each a committed change and a directory removal) run this many at once.
const RELEASES_AT_ONCE: usize = 16;

impl Dispatcher {
    pub(super) fn new(shared: Arc<Shared>, concurrency: usize) -> Self {
        Dispatcher {
            shared,
            slots: Arc::new(Semaphore::new(concurrency)),
            running: Arc::new(Mutex::new(HashMap::new())),
            started: Arc::new(Mutex::new(HashSet::new())),
            per_destination: concurrency.div_ceil(2).max(1),
            release: Arc::new(Notify::new()),
        }
    }

    /// Dispatches until `stop`, waking on `wake` (a commit, a finished attempt) or when the
    /// next push is due; the releaser runs beside it.
    pub(super) async fn run(self, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
        tokio::spawn(release_spool(
            self.shared.clone(),
            self.release.clone(),
            stop.clone(),
        ));
        loop {
            self.dispatch().await;
            self.release.notify_one();
            let wait = match self.shared.store.next_due().await {
                Ok(Some(due)) => {
                    Duration::from_millis(u64::try_from(due - now_ms()).unwrap_or(0).clamp(5, 1000))
                }
                _ => Duration::from_secs(1),
            };
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Starts an attempt for each due push a slot is free for; each claims its push itself,
    /// so that the claims' commits share log syncs.
    async fn dispatch(&self) {
        let free = self.slots.available_permits();
        if free == 0 {
            return;
        }
        let limit = u32::try_from(free * 4).unwrap_or(u32::MAX);
        let due = match self.shared.store.due_pushes(now_ms(), limit).await {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "due pushes unreadable");
                return;
            }
        };
        for push in due {
            let fairness = fairness_key(&push);
            if lock(&self.running).get(&fairness).copied().unwrap_or(0) >= self.per_destination {
                continue;
            }
            let key = (
                push.env.clone(),
                push.name.clone(),
                push.destination.clone(),
            );
            if lock(&self.started).contains(&key) {
                continue;
            }
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                break;
            };
            lock(&self.started).insert(key.clone());
            *lock(&self.running).entry(fairness.clone()).or_default() += 1;
            let (shared, running, started) = (
                self.shared.clone(),
                self.running.clone(),
                self.started.clone(),
            );
            tokio::spawn(async move {
                let ran = match shared.store.claim(&push).await {
                    Ok(Some(attempt)) => {
                        attempt_push(&shared, &push, attempt).await;
                        true
                    }
                    Ok(None) => false,
                    Err(error) => {
                        tracing::warn!(%error, "push not claimed");
                        false
                    }
                };
                if let Some(n) = lock(&running).get_mut(&fairness) {
                    *n = n.saturating_sub(1);
                }
                lock(&started).remove(&key);
                drop(permit);
                // A claim that failed (a full disk refuses writes, not reads) waits for the
                // next pass instead of waking the dispatcher into the same failure at once.
                if ran {
                    shared.wake.notify_one();
                }
            });
        }
    }
}

/// Removes the spool files of recordings every destination has, skipped ones, and failed
/// ones past retention: after each dispatch pass, and every second (retention ends on its
/// own), a few at once.
async fn release_spool(shared: Arc<Shared>, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    loop {
        if let Ok(done) = shared.store.spool_releasable(now_ms()).await {
            futures_util::stream::iter(done)
                .for_each_concurrent(RELEASES_AT_ONCE, |(env, name)| {
                    let shared = &shared;
                    async move {
                        // Recorded first: from here on a manual push is refused, so nothing
                        // can start on files being deleted. A crash in between leaves files
                        // the next start removes.
                        if let Err(error) = shared.store.files_removed(&env, &name).await {
                            tracing::warn!(%error, %env, %name, "spool release not recorded");
                            return;
                        }
                        if let Err(error) = shared.spool.remove(&env, &name).await {
                            tracing::warn!(%error, %env, %name, "spool files not removed");
                        }
                    }
                })
                .await;
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Attempts of one destination share its slots.
fn fairness_key(push: &PushRow) -> String {
    match &push.target {
        Target::Complimentary { region } => format!("{COMPLIMENTARY}:{region}"),
        Target::Customer(d) => format!("{}|{}|{}", d.endpoint, d.bucket, push.env),
    }
}

/// One attempt: every file of the recording to one destination.
async fn attempt_push(shared: &Shared, push: &PushRow, attempt: u32) {
    shared.metrics.attempt(&push.destination);
    let started = now_ms();
    let outcome = upload_all(shared, push).await;
    let now = now_ms();
    match outcome {
        Ok(()) => {
            let delivery = delivery_for(shared, push, now).await;
            let state = super::until_saved("push outcome", || {
                shared.store.push_succeeded(push, now, delivery.as_ref())
            })
            .await;
            if state == RecordingState::Deleted {
                // Deleted while this attempt ran: the deleter removes what it wrote.
                tracing::info!(env = %push.env, name = %push.name, "pushed a recording deleted meanwhile; its objects are deleted again");
                shared.deleter_wake.notify_one();
                return;
            }
            tracing::info!(env = %push.env, name = %push.name, destination = %push.destination, attempt, ms = now - started, state = state.as_str(), "pushed");
            if delivery.is_some() {
                shared.webhook_wake.notify_one();
            }
            if push.manual && matches!(push.target, Target::Complimentary { .. }) {
                purge_edges(shared, push).await;
            }
        }
        Err(error) => {
            shared.metrics.failure(&push.destination, &error.code);
            let next = shared
                .schedule
                .next_attempt(push.series_start, attempt, now);
            let keep_until = shared.schedule.keep_until(now);
            let saved = super::until_saved("push outcome", || {
                shared.store.push_failed(
                    push,
                    attempt,
                    &error.code,
                    &error.message,
                    now,
                    next,
                    keep_until,
                )
            })
            .await;
            if saved == RecordingState::Deleted {
                shared.deleter_wake.notify_one();
                return;
            }
            let last = next.is_none();
            tracing::warn!(env = %push.env, name = %push.name, destination = %push.destination, attempt, code = %error.code, error = %error.message, last, "push attempt failed");
            if saved == RecordingState::Failed {
                tracing::warn!(env = %push.env, name = %push.name, "recording failed: files kept for a manual push");
            }
        }
    }
}

async fn upload_all(shared: &Shared, push: &PushRow) -> Result<(), UploadError> {
    let io = |e: super::store::StoreError| UploadError {
        code: "Database".into(),
        message: e.to_string(),
    };
    let recording = shared
        .store
        .recording(&push.env, &push.name)
        .await
        .map_err(io)?
        .ok_or_else(|| UploadError {
            code: "Gone".into(),
            message: "the recording no longer exists".into(),
        })?;
    let files = shared
        .store
        .files(&push.env, &push.name)
        .await
        .map_err(io)?;
    let bucket = shared.uploader.bucket(&push.target).await?;
    // The files go up together: a small recording's four PUTs take one round trip's time,
    // not four (parts of large files share the uploader's bound on parts in flight).
    let uploads = files.iter().filter_map(|file| {
        let kind = kind_of_suffix(&file.suffix)?;
        let (bucket, recording) = (&bucket, &recording);
        Some(async move {
            let path = shared.spool.path(&push.env, &push.name, &file.suffix);
            let upload = FileUpload {
                path: &path,
                bytes: file.bytes,
                sha256: &file.sha256,
                kind,
                key: bucket.key(&recording.account, &push.name, kind),
                env: &push.env,
            };
            let started = Instant::now();
            // A large file may have gone up while it arrived: then only its completion is left.
            let early = match push.target {
                Target::Complimentary { .. }
                    if file.bytes >= shared.uploader.multipart_threshold() =>
                {
                    super::early::EarlyUploads::finish(
                        shared,
                        (&push.env, &push.name, kind),
                        bucket,
                        &upload.key,
                        file.bytes,
                    )
                    .await
                }
                _ => None,
            };
            match early {
                Some(done) => done?,
                None => {
                    shared
                        .uploader
                        .upload(bucket, &upload, push, &shared.store)
                        .await?
                }
            }
            shared.metrics.uploaded(
                &push.destination,
                file.bytes,
                started.elapsed().as_secs_f64(),
            );
            Ok::<(), UploadError>(())
        })
    });
    // Every upload runs to its end, even after another failed: one dropped halfway would
    // leave its multipart upload open in the bucket.
    futures_util::future::join_all(uploads)
        .await
        .into_iter()
        .collect()
}

/// A manual re-push overwrote objects the edges may hold: purge them there (queued first,
/// so an edge that is down is purged when it comes back).
async fn purge_edges(shared: &Shared, push: &PushRow) {
    let Ok(Some(recording)) = shared.store.recording(&push.env, &push.name).await else {
        return;
    };
    let (region, account) = (&recording.region, &recording.account);
    let queued = shared
        .store
        .queue_purges(
            region,
            account,
            &push.name,
            &shared.edges.admins(),
            now_ms(),
        )
        .await;
    match shared.store.purges_of(region, account, &push.name).await {
        Ok(purges) if queued.is_ok() => {
            super::deletion::purge_now(shared, purges).await;
        }
        _ => tracing::warn!(env = %push.env, name = %push.name, "edge purges not queued"),
    }
}

/// The `video_copied_s3` delivery a success causes, when the environment has a webhook.
async fn delivery_for(shared: &Shared, push: &PushRow, now: i64) -> Option<NewDelivery> {
    // Most environments have no webhook: then the recording is not read.
    let webhook = shared.store.environment(&push.env).await.ok()??.webhook?;
    let recording = shared.store.recording(&push.env, &push.name).await.ok()??;
    let location = super::urls::location(Some(&shared.config), &recording.region);
    let urls = urls(
        location.as_deref(),
        shared.push.edge_url.as_deref(),
        &recording.region,
        &recording.account,
        &push.name,
    );
    let body = Copied {
        event: EVENT,
        env: &push.env,
        account: &recording.account,
        name: &push.name,
        region: &recording.region,
        destination: &push.destination,
        urls: &urls,
        pushed_at: super::api::rfc3339(now),
    };
    Some(NewDelivery {
        id: delivery_id(),
        url: webhook.url,
        secret: webhook.secret,
        body: serde_json::to_string(&body).ok()?,
    })
}
