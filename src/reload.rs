//! Reload on SIGHUP: the config file is read again (regions, credentials, timeouts, CORS,
//! certificates), everything new is built beside the old, and only then swapped in. A bad
//! file or an unreadable certificate is rejected with one log line and the old config keeps
//! serving. Requests in flight finish on the gateway they started with.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::config::Config;
use crate::server::CertStore;
use crate::service::LiveGateway;

/// Why a reload was refused (the old config is still serving).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
    /// The file does not parse or validate.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigErrors),
    /// A certificate or key could not be loaded.
    #[error("certificates: {0}")]
    Certificates(#[source] std::io::Error),
    /// The gateway could not be built from the new config.
    #[error("gateway: {0}")]
    Gateway(#[source] crate::error::StartupError),
    /// The blocking read was cancelled.
    #[error("reload task failed")]
    Task,
}

/// Re-reads a config file into a running gateway.
#[derive(Debug)]
pub(crate) struct Reloader {
    path: PathBuf,
    live: LiveGateway,
    certs: Option<CertStore>,
    current: Mutex<Config>,
}

impl Reloader {
    /// A reloader for the gateway started from `config`, read from `path`.
    pub(crate) fn new(
        path: PathBuf,
        config: Config,
        live: LiveGateway,
        certs: Option<CertStore>,
    ) -> Self {
        Reloader {
            path,
            live,
            certs,
            current: Mutex::new(config),
        }
    }

    /// Reads the file and swaps in the new config, or leaves everything as it was.
    pub(crate) async fn reload(&self) -> Result<(), ReloadError> {
        let path = self.path.clone();
        let certs = self.certs.clone();
        // File reads stay off the async workers.
        let (config, resolver) = tokio::task::spawn_blocking(move || {
            let config = Config::load(&path)?;
            let resolver = match &certs {
                Some(_) if !config.https_listeners.is_empty() => {
                    Some(CertStore::load(&config.certificates).map_err(ReloadError::Certificates)?)
                }
                _ => None,
            };
            Ok::<_, ReloadError>((config, resolver))
        })
        .await
        .map_err(|_| ReloadError::Task)??;
        let old = self.live.current();
        let gateway = old.reconfigured(&config).map_err(ReloadError::Gateway)?;
        let Ok(mut current) = self.current.lock() else {
            return Err(ReloadError::Task);
        };
        warn_restart_only(&current, &config);
        if region_identity(&current) != region_identity(&config)
            && let Some(cache) = gateway.cache()
        {
            // Region indexes or buckets changed: cached entries may belong to another bucket.
            cache.clear();
            tracing::info!("region table changed: cache cleared");
        }
        if let (Some(store), Some(resolver)) = (&self.certs, resolver) {
            store.swap(resolver);
        }
        self.live.replace(gateway);
        *current = config;
        Ok(())
    }
}

/// The SIGHUP stream, registered as soon as it is created.
#[derive(Debug)]
pub(crate) struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    /// Starts catching SIGHUP (which would otherwise end the process).
    pub(crate) fn register() -> Hangups {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signal = signal(SignalKind::hangup())
                .inspect_err(|error| {
                    tracing::warn!(%error, "cannot listen for SIGHUP: reload disabled");
                })
                .ok();
            Hangups { signal }
        }
        #[cfg(not(unix))]
        Hangups {}
    }

    async fn next(&mut self) -> Option<()> {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            return signal.recv().await;
        }
        std::future::pending().await
    }
}

/// Reloads on every SIGHUP until `stop` turns true.
pub(crate) async fn on_sighup(
    reloader: Arc<Reloader>,
    mut hangups: Hangups,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            received = hangups.next() => {
                if received.is_none() {
                    return;
                }
            }
            _ = stop.changed() => return,
        }
        match reloader.reload().await {
            Ok(()) => tracing::info!(path = %reloader.path.display(), "config reloaded"),
            Err(error) => tracing::error!(
                path = %reloader.path.display(),
                %error,
                "config reload rejected: the previous config keeps serving"
            ),
        }
    }
}

/// What names a region's stored objects: a change invalidates the cache.
fn region_identity(config: &Config) -> Vec<(String, String, String, String)> {
    config
        .regions
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                r.endpoint.to_string(),
                r.bucket.clone(),
                r.key_prefix.clone(),
            )
        })
        .collect()
}

/// Settings that are bound at start-up: say so instead of silently ignoring them.
fn warn_restart_only(old: &Config, new: &Config) {
    let changed = [
        ("server.http", old.http_listeners != new.http_listeners),
        ("server.https", old.https_listeners != new.https_listeners),
        (
            "server.shutdown_grace",
            old.shutdown_grace != new.shutdown_grace,
        ),
        ("admin", old.admin != new.admin),
        ("cache", old.cache != new.cache),
        ("limits", old.limits != new.limits),
    ];
    for (key, differs) in changed {
        if differs {
            tracing::warn!(
                key,
                "changed in the file but needs a restart; the running value stays"
            );
        }
    }
}
