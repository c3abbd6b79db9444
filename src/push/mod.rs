//! The write side: processing servers hand a finished recording to s3edge, which pushes it
//! to the bucket of the environment's region (and the customer's own destinations) with the
//! storage policy, on a 13-attempt / 75-hour schedule, keeps failures 28 calendar days for a
//! manual push, and tells the customer by a signed webhook.
//!
//! - [`api`]: the HTTP API on `push.listen`;
//! - [`store`]: the database (environments, recordings, files, pushes, deliveries);
//! - [`spool`]: received files, fsync'd before they are acknowledged;
//! - [`worker`]: the dispatcher of attempts, and spool release;
//! - [`upload`]: aws-sdk-s3 uploads (PutObject, parallel multipart); `early`: multipart
//!   uploads of large files started while they arrive, completed by the commit's attempt;
//!   [`bucket`]: a destination's client, storage policy, keys, deletes and lifecycle calls;
//! - [`schedule`]: attempt times and retention days;
//! - [`webhook`]: `video_copied_s3` bodies, signatures and deliveries;
//! - `deletion`: deletes on request, lifecycle sweeps, bulk jobs; [`edges`]: cache purges on
//!   the gateways (queued in the database until acknowledged); [`urls`]: origin and edge URLs;
//! - [`model`]: the values; [`metrics`]: the `s3edge_push_` series;
//! - [`lifecycle`]: `s3edge lifecycle rules` (S3 bucket lifecycle rules per environment);
//! - [`client`] and [`cli`]: the API from a shell (`s3edge push …`, `s3edge urls`).

pub mod api;
pub mod bucket;
pub mod cli;
pub mod client;
mod deletion;
mod early;
pub mod edges;
pub mod lifecycle;
pub mod metrics;
pub mod model;
pub mod schedule;
mod source;
pub mod spool;
mod spool_body;
pub mod store;
pub mod upload;
pub mod urls;
pub mod webhook;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::config::{Config, PushConfig};
use crate::error::StartupError;

/// Everything the API, the dispatcher and the deliverer share.
pub(crate) struct Shared {
    /// The whole config (regions).
    config: Arc<Config>,
    /// `[push]`.
    push: PushConfig,
    /// The database.
    store: store::Store,
    /// Received files.
    spool: spool::Spool,
    /// S3 clients.
    uploader: upload::Uploader,
    /// Multipart uploads of files still arriving.
    early: early::EarlyUploads,
    /// Attempt times and retention.
    schedule: schedule::Schedule,
    /// The `s3edge_push_` series.
    metrics: metrics::PushMetrics,
    /// Gateways to purge.
    edges: edges::Edges,
    /// Wakes the dispatcher (a commit, a finished attempt).
    wake: Arc<Notify>,
    /// Wakes the webhook deliverer.
    webhook_wake: Arc<Notify>,
    /// Deletions: tombstones' objects, queued purges, bulk jobs, lifecycle sweeps.
    deleter: Arc<deletion::Deleter>,
    /// Wakes the deleter (a bulk job, an attempt that wrote a deleted recording).
    deleter_wake: Arc<Notify>,
}

/// Runs a store write until the database takes it: an outcome already acted upon (an upload
/// made, a webhook answered) must be recorded, or the work would be done again. Waits 0.1 s,
/// doubling to 5 s, between tries; logs once it starts waiting.
pub(crate) async fn until_saved<T, F, Fut>(what: &str, mut write: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, store::StoreError>>,
{
    let mut wait = Duration::from_millis(100);
    loop {
        match write().await {
            Ok(v) => return v,
            Err(error) => {
                tracing::error!(%error, what, "not saved; retried until the database answers");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Locks a mutex whose data stays valid if a holder panicked (maps and counters).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Connections the push API holds open at once.
const MAX_CONNECTIONS: usize = 1024;
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a stop waits for early uploads to be aborted (the next start aborts the rest).
const EARLY_SHUTDOWN: Duration = Duration::from_secs(5);

/// How long a request to a bucket may stay silent before the attempt fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens the spool and the database, resumes what a previous run left (interrupted attempts
/// are due again, open multipart uploads are aborted), then serves the API on `listener` and
/// runs the dispatcher and the webhook deliverer until `stop` turns true.
pub async fn run(
    config: Arc<Config>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) -> Result<(), StartupError> {
    let Some(push) = config.push.clone() else {
        return Ok(());
    };
    let failed = |what: &str, e: &dyn std::fmt::Display| StartupError::Push(format!("{what}: {e}"));
    tokio::fs::create_dir_all(&push.spool)
        .await
        .map_err(|e| failed(&format!("cannot create {}", push.spool.display()), &e))?;
    let spool = spool::Spool::open(&push.spool)
        .await
        .map_err(|e| failed("spool", &e))?;
    let node = spool.node_id().await.map_err(|e| failed("spool", &e))?;
    let postgres = match &push.database {
        crate::config::Database::Sqlite => None,
        crate::config::Database::Postgres(url) => Some(url.as_str()),
    };
    let store = store::Store::open(&push.spool, postgres, &node)
        .await
        .map_err(|e| failed("database", &e))?;
    tracing::info!(%node, database = ?store.dialect(), "push state opened");
    let metrics = metrics::PushMetrics::default();
    let edges =
        edges::Edges::new(push.edges.clone(), metrics.clone()).map_err(|e| failed("tls", &e))?;
    let deliverer = webhook::Deliverer::new(
        store.clone(),
        push.webhook_retry_delays.clone(),
        push.webhook_timeout,
        metrics.clone(),
    )
    .map_err(|e| failed("tls", &e))?;
    let shared = Arc::new(Shared {
        uploader: upload::Uploader::new(config.clone(), REQUEST_TIMEOUT),
        early: early::EarlyUploads::new(push.concurrency),
        schedule: schedule::Schedule::new(&push),
        config,
        store,
        spool,
        metrics,
        edges,
        wake: Arc::new(Notify::new()),
        webhook_wake: Arc::new(Notify::new()),
        deleter: Arc::default(),
        deleter_wake: Arc::new(Notify::new()),
        push,
    });
    let interrupted = shared
        .store
        .recover(schedule::now_ms())
        .await
        .map_err(|e| failed("database", &e))?;
    if interrupted > 0 {
        tracing::info!(
            interrupted,
            "attempts interrupted by the last stop are due again"
        );
    }
    shared.uploader.abort_leftovers(&shared.store).await;
    // Files whose release was recorded but not carried out before a crash.
    for (env, name) in shared.spool.recordings().await {
        if let Ok(false) = shared.store.files_kept(&env, &name).await
            && let Err(e) = shared.spool.remove(&env, &name).await
        {
            tracing::warn!(%env, %name, error = %e, "spool leftovers not removed");
        }
    }
    let dispatcher = worker::Dispatcher::new(shared.clone(), shared.push.concurrency);
    tokio::spawn(dispatcher.run(shared.wake.clone(), stop.clone()));
    tokio::spawn(deliverer.run(shared.webhook_wake.clone(), stop.clone()));
    tokio::spawn(shared.deleter.clone().run(
        shared.clone(),
        shared.deleter_wake.clone(),
        stop.clone(),
    ));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "push API listening");
    }
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let builder = Arc::new(builder);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = stop.changed() => {
                // Nothing of an uncommitted file stays open in a bucket after a clean stop.
                shared.early.shutdown(EARLY_SHUTDOWN).await;
                return Ok(());
            }
        };
        // Over the cap the connection is closed at once: processing servers retry.
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!("push API connection refused: {MAX_CONNECTIONS} already open");
            continue;
        };
        // Answers go out at once, not after the ACK of the previous write.
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| api::handle(shared.clone(), request));
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}
