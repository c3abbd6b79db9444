//! Early uploads: a file of at least `push.multipart_threshold` bytes starts its multipart
//! upload to our bucket while it is still arriving, each part sent as soon as the spool has
//! written it; the first attempt after the commit only completes it. Nothing is visible in
//! the bucket before that completion, so a commit still means what it meant: an upload that
//! is not claimed by its commit (never committed, replaced by a new PUT, refused, committed
//! to another region or with our storage turned off) is aborted.
//!
//! A raw recording of several GB is then in the bucket seconds after its commit instead of
//! one whole upload later, and the disk, the network and the two phases overlap.
//!
//! Each upload is recorded in the database before it is created (`multipart_uploads`, with
//! its target and node), so a crash leaves nothing a restart does not abort.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::types::CompletedPart;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{Notify, Semaphore, watch};

use super::bucket::{Bucket, UploadError, abort};
use super::model::{Environment, Target};
use super::spool::{self, Arrival};
use super::upload::{FileUpload, OpenUpload, Owner};
use super::{Shared, lock};
use crate::route::FileKind;

/// An early upload nobody claimed is aborted this long after its file was kept.
const UNCLAIMED_FOR: Duration = Duration::from_secs(600);

/// (env, name, suffix).
type FileId = (String, String, &'static str);

/// The early uploads of this node.
#[derive(Debug)]
pub(super) struct EarlyUploads {
    entries: Mutex<HashMap<FileId, Entry>>,
    /// At most `push.concurrency` early uploads at once; more files go up after commit.
    slots: Arc<Semaphore>,
    next_id: AtomicU64,
    running: AtomicUsize,
    ended: Notify,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    state: watch::Receiver<State>,
    control: watch::Sender<Control>,
}

/// Where an early upload is.
#[derive(Debug, Clone)]
enum State {
    Running,
    /// Every part is sent and the file was kept.
    Ready(Arc<Ready>),
    Failed,
}

/// A multipart upload waiting only for its completion.
#[derive(Debug)]
struct Ready {
    bucket: Bucket,
    key: String,
    bytes: u64,
    open: OpenUpload,
    parts: Vec<CompletedPart>,
}

/// What the owner of an early upload tells its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Go,
    /// Replaced or shutting down: abort.
    Cancel,
    /// An attempt took it over (it completes or aborts it).
    Taken,
}

/// An early upload about to start: the file is worth one and a slot is free.
#[derive(Debug)]
pub(super) struct Plan {
    target: Target,
    account: String,
    /// Held while parts are in flight, not while a ready upload waits for its commit.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl EarlyUploads {
    /// At most `concurrency` at once.
    pub(super) fn new(concurrency: usize) -> Self {
        EarlyUploads {
            entries: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            next_id: AtomicU64::new(0),
            running: AtomicUsize::new(0),
            ended: Notify::new(),
        }
    }

    /// Whether a file of `declared` bytes (its Content-Length) for `env` goes up early: it
    /// is multipart-sized, our storage is on, and a slot is free.
    pub(super) fn plan(
        &self,
        shared: &Shared,
        env: &Environment,
        declared: Option<u64>,
    ) -> Option<Plan> {
        let declared = declared?;
        if !env.complimentary_storage || declared < shared.uploader.multipart_threshold() {
            return None;
        }
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(Plan {
            target: Target::Complimentary {
                region: env.region.clone(),
            },
            account: env.account.clone(),
            permit: Some(permit),
        })
    }

    /// Starts the early upload of `env/name{suffix}`, `declared` bytes, read through `link`
    /// as the spool writes it; an earlier one of the same file is aborted. The returned
    /// sender is the spool's progress.
    pub(super) fn start(
        shared: &Arc<Shared>,
        plan: Plan,
        (env, name, kind): (&str, &str, FileKind),
        declared: u64,
        link: PathBuf,
    ) -> watch::Sender<Arrival> {
        let early = &shared.early;
        let (progress, arrival) = watch::channel(Arrival::Written(0));
        let (state_tx, state) = watch::channel(State::Running);
        let (control, control_rx) = watch::channel(Control::Go);
        let id = early.next_id.fetch_add(1, Ordering::Relaxed);
        let file_id: FileId = (env.to_string(), name.to_string(), kind.suffix());
        if let Some(old) =
            lock(&early.entries).insert(file_id.clone(), Entry { id, state, control })
        {
            old.control.send_replace(Control::Cancel);
        }
        early.running.fetch_add(1, Ordering::SeqCst);
        let task = Task {
            shared: shared.clone(),
            id,
            file_id,
            kind,
            declared,
            link,
            plan,
        };
        tokio::spawn(task.run(arrival, control_rx, state_tx));
        progress
    }

    /// The attempt's side: when an early upload of this file to `bucket`/`key` exists, waits
    /// for it and completes it. `None`: there is none (or it failed), upload as usual.
    pub(super) async fn finish(
        shared: &Shared,
        (env, name, kind): (&str, &str, FileKind),
        bucket: &Bucket,
        key: &str,
        bytes: u64,
    ) -> Option<Result<(), UploadError>> {
        let entry = lock(&shared.early.entries).remove(&(
            env.to_string(),
            name.to_string(),
            kind.suffix(),
        ))?;
        entry.control.send_replace(Control::Taken);
        let mut state = entry.state;
        let ready = match state.wait_for(|s| !matches!(s, State::Running)).await {
            Ok(s) => match &*s {
                State::Ready(ready) => ready.clone(),
                _ => return None,
            },
            Err(_) => return None,
        };
        if ready.bucket.bucket != bucket.bucket || ready.key != key || ready.bytes != bytes {
            // Committed somewhere else than where it went early (the environment changed).
            abort(&ready.bucket, &ready.key, &ready.open.upload_id).await;
            let _ = shared.store.multipart_ended(&ready.open.intent).await;
            return None;
        }
        let done = shared
            .uploader
            .complete(bucket, key, &ready.open, ready.parts.clone(), bytes)
            .await;
        if done.is_err() {
            abort(bucket, key, &ready.open.upload_id).await;
        }
        let _ = shared.store.multipart_ended(&ready.open.intent).await;
        shared
            .metrics
            .early_upload(if done.is_ok() { "used" } else { "failed" });
        Some(done)
    }

    /// Aborts every early upload and waits (at most `within`) for their tasks to end.
    pub(super) async fn shutdown(&self, within: Duration) {
        for entry in lock(&self.entries).values() {
            entry.control.send_replace(Control::Cancel);
        }
        let _ = tokio::time::timeout(within, async {
            loop {
                let ended = self.ended.notified();
                tokio::pin!(ended);
                // Registered before the check, so an end in between is not missed.
                ended.as_mut().enable();
                if self.running.load(Ordering::SeqCst) == 0 {
                    return;
                }
                ended.await;
            }
        })
        .await;
    }
}

/// One early upload.
struct Task {
    shared: Arc<Shared>,
    id: u64,
    file_id: FileId,
    kind: FileKind,
    declared: u64,
    link: PathBuf,
    plan: Plan,
}

impl Task {
    async fn run(
        mut self,
        arrival: watch::Receiver<Arrival>,
        mut control: watch::Receiver<Control>,
        state: watch::Sender<State>,
    ) {
        let outcome = self.upload(arrival, &mut control).await;
        drop(self.plan.permit.take());
        remove_link(&self.link).await;
        let outcome = match outcome {
            Ok(ready) => {
                state.send_replace(State::Ready(ready.clone()));
                // Kept until an attempt takes it; aborted when replaced, at shutdown, or
                // when nobody claims it.
                let taken = tokio::select! {
                    c = control.wait_for(|c| *c != Control::Go) => {
                        matches!(c.as_deref(), Ok(Control::Taken))
                    }
                    _ = tokio::time::sleep(UNCLAIMED_FOR) => !self.unregister(),
                };
                if taken {
                    None
                } else {
                    self.drop_upload(&ready.bucket, &ready.key, &ready.open)
                        .await;
                    Some("unclaimed")
                }
            }
            Err(open) => {
                state.send_replace(State::Failed);
                self.unregister();
                if let Some((bucket, key, open)) = open {
                    self.drop_upload(&bucket, &key, &open).await;
                }
                Some("failed")
            }
        };
        if let Some(outcome) = outcome {
            self.shared.metrics.early_upload(outcome);
        }
        let early = &self.shared.early;
        early.running.fetch_sub(1, Ordering::SeqCst);
        early.ended.notify_waiters();
    }

    /// Creates the upload and sends each part once the spool has written it. `Err` carries
    /// the upload to abort, when one was created.
    async fn upload(
        &self,
        arrival: watch::Receiver<Arrival>,
        control: &mut watch::Receiver<Control>,
    ) -> Result<Arc<Ready>, Option<(Bucket, String, OpenUpload)>> {
        let shared = &self.shared;
        let (env, name, _) = &self.file_id;
        let bucket = match shared.uploader.bucket(&self.plan.target).await {
            Ok(bucket) => bucket,
            Err(error) => {
                tracing::debug!(%env, %name, %error, "no early upload");
                return Err(None);
            }
        };
        let key = bucket.key(&self.plan.account, name, self.kind);
        let file = FileUpload {
            path: &self.link,
            bytes: self.declared,
            sha256: "",
            kind: self.kind,
            key: key.clone(),
            env,
        };
        let owner = Owner::Early {
            name,
            target: &self.plan.target,
        };
        let open = match shared
            .uploader
            .create(&bucket, &file, owner, &shared.store)
            .await
        {
            Ok(open) => open,
            Err(error) => {
                tracing::info!(%env, %name, %error, "early upload not created");
                return Err(None);
            }
        };
        let sent = tokio::select! {
            sent = self.parts(&bucket, &file, &open, arrival) => sent,
            _ = control.wait_for(|c| *c == Control::Cancel) => {
                Err(UploadError::new("Cancelled", "replaced or shutting down"))
            }
        };
        match sent {
            Ok(parts) => {
                tracing::debug!(%env, %name, %key, "early upload ready");
                Ok(Arc::new(Ready {
                    bucket,
                    key,
                    bytes: self.declared,
                    open,
                    parts,
                }))
            }
            Err(error) => {
                tracing::info!(%env, %name, %error, "early upload stopped");
                Err(Some((bucket, key, open)))
            }
        }
    }

    /// Sends each part once the spool has written it; the parts count only if the file was
    /// then kept whole, as long as declared.
    async fn parts(
        &self,
        bucket: &Bucket,
        file: &FileUpload<'_>,
        open: &OpenUpload,
        mut arrival: watch::Receiver<Arrival>,
    ) -> Result<Vec<CompletedPart>, UploadError> {
        let uploader = &self.shared.uploader;
        let count = uploader.part_count(self.declared);
        // Parts are taken in order as they are written, and every written part waits for one
        // of the uploader's slots (first come, first served): a file that arrives faster than
        // the bucket takes it keeps its lead, so files finish (and complete) one after the
        // other instead of all together at the end.
        let mut sending = FuturesUnordered::new();
        let mut parts = Vec::new();
        for i in 0..count {
            let end = uploader.part_end(i, self.declared);
            loop {
                tokio::select! {
                    Some(sent) = sending.next(), if !sending.is_empty() => parts.push(sent?),
                    seen = arrival.wait_for(|a| !matches!(a, Arrival::Written(n) if *n < end)) => {
                        match seen.map(|a| *a) {
                            Ok(Arrival::Written(_)) => break,
                            Ok(Arrival::Kept(n)) if n == self.declared => break,
                            _ => return Err(not_kept()),
                        }
                    }
                }
            }
            let start = if i == 0 {
                0
            } else {
                uploader.part_end(i - 1, self.declared)
            };
            sending.push(async move {
                let sent = uploader.send_part(bucket, file, &open.upload_id, i).await;
                if sent.is_ok() {
                    spool::uncache(file.path, start, end).await;
                }
                sent
            });
        }
        while let Some(sent) = sending.next().await {
            parts.push(sent?);
        }
        let kept = arrival
            .wait_for(|a| !matches!(a, Arrival::Written(_)))
            .await
            .map(|a| *a);
        match kept {
            Ok(Arrival::Kept(n)) if n == self.declared => Ok(parts),
            _ => Err(not_kept()),
        }
    }

    /// Removes this task's entry unless it was replaced or taken; whether it was there.
    fn unregister(&self) -> bool {
        let mut entries = lock(&self.shared.early.entries);
        if entries.get(&self.file_id).is_some_and(|e| e.id == self.id) {
            entries.remove(&self.file_id);
            true
        } else {
            false
        }
    }

    async fn drop_upload(&self, bucket: &Bucket, key: &str, open: &OpenUpload) {
        abort(bucket, key, &open.upload_id).await;
        let _ = self.shared.store.multipart_ended(&open.intent).await;
    }
}

fn not_kept() -> UploadError {
    UploadError::new("Refused", "the file was not kept as declared")
}

/// The spool's second name of the file is ours to remove.
async fn remove_link(link: &Path) {
    if let Err(e) = tokio::fs::remove_file(link).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(link = %link.display(), error = %e, "early upload link not removed");
    }
}
