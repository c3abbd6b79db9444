//! The testbed: real, SigV4-verifying S3 backends on loopback (one per region), a sample
//! recording written with the storage policy, and the demo built on them. Used by the
//! integration tests, the benchmarks and `s3edge-testbed demo`; never part of the deployable
//! gateway.

pub mod backend;
pub mod client;
pub mod demo;
pub mod haproxy;

use std::path::Path;

use bytes::Bytes;
use tokio::net::TcpListener;

use s3edge::config::{Addressing, Config, Provider, RegionConfig, StaticCredentials};
use s3edge::policy;
use s3edge::route::FileKind;

use backend::{BackendOptions, S3Backend};
pub use client::{S3Client, WriteError};

/// The account hash of the sample recording.
pub const SAMPLE_ACCOUNT: &str = "3f9c2a7be41d4c0e8a5b6d7e9f0a1b2c";
/// The name of the sample recording.
pub const SAMPLE_NAME: &str = "demo-recording-7f3a";

/// The four files of the sample recording, by kind.
pub fn sample_file(kind: FileKind) -> Bytes {
    Bytes::from_static(match kind {
        FileKind::Processed => include_bytes!("sample/recording.mp4"),
        FileKind::Snapshot => include_bytes!("sample/recording.jpg"),
        FileKind::Filmstrip => include_bytes!("sample/recording_filmstrip.jpg"),
        FileKind::Raw => include_bytes!("sample/recording_raw.mp4"),
    })
}

/// One of the product's regions as the demo models it.
#[derive(Debug, Clone, Copy)]
pub struct RegionSpec {
    /// Region name (path prefix).
    pub name: &'static str,
    /// Public LOCATION host.
    pub host: &'static str,
    /// Bucket.
    pub bucket: &'static str,
    /// Signing region.
    pub signing_region: &'static str,
    /// Provider.
    pub provider: Provider,
}

/// The four regions of the product.
pub const REGIONS: [RegionSpec; 4] = [
    RegionSpec {
        name: "eu1",
        host: "eu1-addpipe.s3.eu-central-1.amazonaws.com",
        bucket: "eu1-addpipe",
        signing_region: "eu-central-1",
        provider: Provider::Aws,
    },
    RegionSpec {
        name: "eu2",
        host: "eu2-addpipe.s3.nl-ams.scw.cloud",
        bucket: "eu2-addpipe",
        signing_region: "nl-ams",
        provider: Provider::Scaleway,
    },
    RegionSpec {
        name: "us1",
        host: "us1-addpipe.s3-us-west-1.amazonaws.com",
        bucket: "us1-addpipe",
        signing_region: "us-west-1",
        provider: Provider::Aws,
    },
    RegionSpec {
        name: "us2",
        host: "us2-addpipe.s3.us-east-1.amazonaws.com",
        bucket: "us2-addpipe",
        signing_region: "us-east-1",
        provider: Provider::Aws,
    },
];

/// Four running backends, one per region, each with its own credentials and region.
#[derive(Debug)]
pub struct Backends {
    /// In [`REGIONS`] order.
    pub backends: Vec<S3Backend>,
    /// Region configs pointing at them (path-style, inline credentials), in the same order.
    pub regions: Vec<RegionConfig>,
}

impl Backends {
    /// Starts the four backends on `127.0.0.1:0`, storing data under `root`.
    pub async fn start(root: &Path) -> std::io::Result<Backends> {
        Backends::start_with(root, false).await
    }

    /// Like [`Backends::start`]; `public_read` also admits anonymous reads (benchmarks).
    pub async fn start_with(root: &Path, public_read: bool) -> std::io::Result<Backends> {
        let mut backends = Vec::with_capacity(REGIONS.len());
        let mut regions = Vec::with_capacity(REGIONS.len());
        for spec in REGIONS {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let credentials = StaticCredentials {
                access_key_id: format!("DEMO{}KEY", spec.name.to_uppercase()),
                secret_access_key: format!("demo-{}-secret-{}", spec.name, random_suffix()),
                session_token: None,
            };
            let backend = S3Backend::start(
                listener,
                BackendOptions {
                    region: spec.signing_region.to_string(),
                    access_key: credentials.access_key_id.clone(),
                    secret_key: credentials.secret_access_key.clone(),
                    provider: spec.provider,
                    root: root.join(spec.name),
                    redirect_to_region: None,
                    public_read,
                    virtual_host_domain: None,
                },
            )?;
            regions.push(RegionConfig {
                name: spec.name.to_string(),
                hosts: vec![spec.host.to_string()],
                endpoint: backend.endpoint().parse().map_err(std::io::Error::other)?,
                bucket: spec.bucket.to_string(),
                signing_region: spec.signing_region.to_string(),
                addressing: Addressing::Path,
                key_prefix: String::new(),
                provider: spec.provider,
                connect_to: None,
                credentials,
                credential_source: Default::default(),
                push_credentials: None,
                timeouts: None,
            });
            backends.push(backend);
        }
        Ok(Backends { backends, regions })
    }
}

/// A signed writer for a region's bucket, with the region's own credentials.
/// Path-style, with the region's key prefix; through `connect_to` when the region has one.
pub fn writer(region: &RegionConfig) -> S3Client {
    let endpoint = region.endpoint.to_string();
    let endpoint = endpoint.trim_end_matches('/');
    let authority = region.endpoint.authority().map(|a| a.as_str());
    let (connect, host) = match (region.connect_to, authority) {
        (Some(ip), Some(authority)) => {
            let port = region.endpoint.port_u16().unwrap_or(80);
            (format!("http://{ip}:{port}"), Some(authority))
        }
        _ => (endpoint.to_string(), None),
    };
    let client = S3Client::new(
        &connect,
        &region.bucket,
        &region.signing_region,
        &region.credentials.access_key_id,
        &region.credentials.secret_access_key,
    )
    .with_key_prefix(&region.key_prefix);
    match host {
        Some(host) => client.with_host(host),
        None => client,
    }
}

/// Creates each region's bucket (when missing) and writes the sample recording's four files
/// with the storage policy.
pub async fn upload_sample(regions: &[RegionConfig]) -> Result<(), WriteError> {
    for region in regions {
        let writer = writer(region);
        writer.ensure_bucket().await?;
        for kind in FileKind::ALL {
            let key = format!("{SAMPLE_ACCOUNT}/{SAMPLE_NAME}{}", kind.suffix());
            writer
                .put_object(
                    &key,
                    sample_file(kind),
                    policy::write_headers(region.provider, kind),
                )
                .await?;
        }
    }
    Ok(())
}

/// Synthetic recordings for a standalone backend (`s3edge backend --seed`).
#[derive(Debug, Clone)]
pub struct Seed {
    /// Bucket to create.
    pub bucket: String,
    /// Signing region of the backend.
    pub signing_region: String,
    /// Access key id of the backend.
    pub access_key: String,
    /// Secret key of the backend.
    pub secret_key: String,
    /// Account hash of the keys.
    pub account: String,
    /// How many `{account}/rec-{i}.mp4` objects.
    pub count: u32,
    /// Bytes each.
    pub size: u64,
}

/// Writes `seed.count` objects, once: a marker file in `root` says a previous start already
/// did.
pub async fn seed_objects(backend: &S3Backend, root: &Path, seed: &Seed) -> Result<(), WriteError> {
    let marker = root.join(format!(
        ".seeded-{}-{}-{}",
        seed.bucket, seed.count, seed.size
    ));
    if seed.count == 0 || tokio::fs::try_exists(&marker).await.unwrap_or(false) {
        return Ok(());
    }
    let writer = S3Client::new(
        &backend.endpoint(),
        &seed.bucket,
        &seed.signing_region,
        &seed.access_key,
        &seed.secret_key,
    );
    writer.ensure_bucket().await?;
    let failed = |reason: String| WriteError {
        what: "seed".into(),
        reason,
    };
    let size = usize::try_from(seed.size).map_err(|e| failed(e.to_string()))?;
    for i in 0..seed.count {
        // Distinct bytes per object, so a mixed-up cache entry shows.
        let body: Bytes = (0..size)
            .map(|j| (j as u64).wrapping_mul(31).wrapping_add(u64::from(i)) as u8)
            .collect::<Vec<u8>>()
            .into();
        let key = format!("{}/rec-{i}.mp4", seed.account);
        writer
            .put_object(
                &key,
                body,
                policy::write_headers(Provider::Aws, FileKind::Processed),
            )
            .await?;
    }
    tokio::fs::write(&marker, b"")
        .await
        .map_err(|e| failed(format!("marker: {e}")))?;
    Ok(())
}

/// Renders the regions and plain listeners of a config as a TOML file for `s3edge serve`,
/// credentials inline: how tests and benchmarks run the binary against demo backends.
pub fn render_toml(config: &Config) -> String {
    use std::fmt::Write as _;
    let quoted = |items: &mut dyn Iterator<Item = String>| {
        items
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "[server]\nhttp = [{}]\nhttps = [{}]\nshutdown_grace = \"{}ms\"\n",
        quoted(&mut config.http_listeners.iter().map(ToString::to_string)),
        quoted(&mut config.https_listeners.iter().map(ToString::to_string)),
        config.shutdown_grace.as_millis()
    );
    for cert in &config.certificates {
        let _ = writeln!(
            out,
            "[[tls.certificates]]\ncert = {:?}\nkey = {:?}\nserver_names = [{}]\ndefault = {}\n",
            cert.cert.display().to_string(),
            cert.key.display().to_string(),
            quoted(&mut cert.server_names.iter().cloned()),
            cert.default
        );
    }
    let _ = writeln!(
        out,
        "[timeouts]\nconnect = \"{}ms\"\nresponse_head = \"{}ms\"\nbody_idle = \"{}ms\"\n",
        config.timeouts.connect.as_millis(),
        config.timeouts.response_head.as_millis(),
        config.timeouts.body_idle.as_millis()
    );
    let c = &config.cache;
    let _ = writeln!(
        out,
        "[cache]\nenabled = {}\ncapacity = {}\nmax_object_size = {}\nchunk_size = {}\nread_ahead_chunks = {}\n\
         prefault = {}\nttl = \"{}ms\"\nstale_while_revalidate = \"{}ms\"\nstale_if_error = \"{}ms\"\n\
         negative_ttl = \"{}ms\"\ncache_control = {:?}\n",
        c.enabled,
        c.capacity,
        c.max_object_size,
        c.chunk_size,
        c.read_ahead_chunks,
        c.prefault,
        c.ttl.as_millis(),
        c.stale_while_revalidate.as_millis(),
        c.stale_if_error.as_millis(),
        c.negative_ttl.as_millis(),
        c.cache_control,
    );
    let _ = writeln!(
        out,
        "[cors]\nallow_origin = {:?}\n",
        config.cors.allow_origin
    );
    if let Some(admin) = &config.admin {
        let _ = writeln!(out, "[admin]\nlisten = \"{}\"", admin.listen);
        if let Some(token) = &admin.token {
            let _ = writeln!(out, "token = {token:?}");
        }
        out.push('\n');
    }
    if let Some(p) = &config.push {
        render_push(&mut out, p);
    }
    for r in &config.regions {
        let provider = match r.provider {
            Provider::Aws => "aws",
            Provider::Scaleway => "scaleway",
        };
        let addressing = match r.addressing {
            Addressing::Path => "path",
            Addressing::VirtualHosted => "virtual-hosted",
        };
        let _ = writeln!(
            out,
            "[regions.{}]\nhosts = [{}]\nendpoint = {:?}\nbucket = {:?}\nsigning_region = {:?}\n\
             addressing = {addressing:?}\nkey_prefix = {:?}\nprovider = {provider:?}\n\
             credentials = {}\n",
            r.name,
            quoted(&mut r.hosts.iter().cloned()),
            r.endpoint.to_string().trim_end_matches('/'),
            r.bucket,
            r.signing_region,
            r.key_prefix,
            render_credentials(r),
        );
    }
    out
}

/// The `[push]` table.
fn render_push(out: &mut String, p: &s3edge::config::PushConfig) {
    use std::fmt::Write as _;
    let ms = |d: &[std::time::Duration]| {
        d.iter()
            .map(|d| format!("\"{}ms\"", d.as_millis()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        out,
        "[push]\nlisten = \"{}\"\nspool = {:?}\nretry_delays = [{}]\nretention_timezone = {:?}\n\
         concurrency = {}\nmultipart_threshold = {}\npart_size = {}\nmax_file_size = {}\n\
         webhook_retry_delays = [{}]\nwebhook_timeout = \"{}ms\"\nsweep_every = \"{}ms\"",
        p.listen,
        p.spool.display().to_string(),
        ms(&p.retry_delays),
        p.retention_timezone.name(),
        p.concurrency,
        p.multipart_threshold,
        p.part_size,
        p.max_file_size,
        ms(&p.webhook_retry_delays),
        p.webhook_timeout.as_millis(),
        p.sweep_every.as_millis(),
    );
    match p.keep_failed {
        s3edge::config::KeepFailed::Days(n) => {
            let _ = writeln!(out, "keep_failed_days = {n}");
        }
        s3edge::config::KeepFailed::For(d) => {
            let _ = writeln!(out, "keep_failed_for = \"{}ms\"", d.as_millis());
        }
    }
    if let Some(day) = p.day_length {
        let _ = writeln!(out, "day_length = \"{}ms\"", day.as_millis());
    }
    if let Some(url) = &p.edge_url {
        let _ = writeln!(out, "edge_url = {url:?}");
    }
    if let Some(token) = &p.token {
        let _ = writeln!(out, "token = {token:?}");
    }
    if let s3edge::config::Database::Postgres(url) = &p.database {
        let _ = writeln!(out, "database = {url:?}");
    }
    let edges: Vec<String> = p
        .edges
        .iter()
        .map(|e| match &e.token {
            Some(t) => format!("{{ admin = {:?}, token = {t:?} }}", e.admin),
            None => format!("{{ admin = {:?} }}", e.admin),
        })
        .collect();
    let _ = writeln!(out, "edges = [{}]\n", edges.join(", "));
}

/// The `credentials` inline table of a region.
fn render_credentials(r: &RegionConfig) -> String {
    use s3edge::config::CredentialSource;
    let source = |name: &str, profile: &Option<String>| match profile {
        Some(p) => format!("{{ source = {name:?}, profile = {p:?} }}"),
        None => format!("{{ source = {name:?} }}"),
    };
    match &r.credential_source {
        CredentialSource::Static => format!(
            "{{ access_key_id = {:?}, secret_access_key = {:?} }}",
            r.credentials.access_key_id, r.credentials.secret_access_key
        ),
        CredentialSource::DefaultChain { profile } => source("default-chain", profile),
        CredentialSource::Profile { profile } => source("profile", profile),
        CredentialSource::Container => source("container", &None),
        CredentialSource::Instance => source("instance", &None),
        CredentialSource::WebIdentity => source("web-identity", &None),
    }
}

/// A per-run secret so demo credentials are not guessable from the source.
fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_toml_parses_back() {
        let regions: Vec<RegionConfig> = REGIONS
            .iter()
            .map(|spec| RegionConfig {
                name: spec.name.into(),
                hosts: vec![spec.host.into()],
                endpoint: "http://127.0.0.1:9000".parse().unwrap(),
                bucket: spec.bucket.into(),
                signing_region: spec.signing_region.into(),
                addressing: Addressing::Path,
                key_prefix: "a b/".into(),
                provider: spec.provider,
                connect_to: None,
                credentials: StaticCredentials {
                    access_key_id: "K".into(),
                    secret_access_key: "S\"q".into(),
                    session_token: None,
                },
                credential_source: Default::default(),
                push_credentials: None,
                timeouts: None,
            })
            .collect();
        let mut config = Config::for_regions(regions, "127.0.0.1:0".parse().unwrap());
        config.shutdown_grace = std::time::Duration::from_millis(1500);
        let text = render_toml(&config);
        let parsed = Config::parse("rendered", &text, &|_| None).unwrap();
        assert_eq!(parsed.regions.len(), 4);
        assert_eq!(parsed.regions[1].provider, Provider::Scaleway);
        assert_eq!(parsed.regions[0].key_prefix, "a b/");
        assert_eq!(parsed.regions[0].credentials.secret_access_key, "S\"q");
        assert_eq!(parsed.shutdown_grace, config.shutdown_grace);
        assert_eq!(parsed.cache.capacity, config.cache.capacity);
        assert_eq!(parsed.cache.ttl, config.cache.ttl);
    }
}
