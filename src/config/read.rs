//! Reading the file's tables into the runtime [`Config`]: every table's keys, their checks,
//! and the checks across tables. Problems are collected, never returned early, so one run of
//! `check-config` names all of them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::document::Section;
use super::fields::{Env, guarded_listener, secret};
use super::policies;
use super::{
    Addressing, AdminConfig, CacheConfig, CertificateConfig, Config, CorsConfig, CredentialSource,
    Provider, RegionConfig, RegionCredentials, StaticCredentials, Timeouts,
};

/// Reads the whole file; `None` when something was wrong (the problems are recorded).
pub(super) fn config(root: &Section<'_, '_>, env: Env<'_>) -> Option<Config> {
    // A node may run the gateway, the push service, or both.
    let push_table = root.table("push");
    let push = push_table.as_ref().and_then(|p| super::push::push(p, env));
    let server = root.table("server");
    let (http_listeners, https_listeners, shutdown_grace) = match &server {
        Some(s) => {
            let (http, http_written) = addrs(s, "http");
            let (https, https_written) = addrs(s, "https");
            let grace = s.duration("shutdown_grace");
            if http_written + https_written == 0 && push_table.is_none() {
                s.table_problem("no listener: set server.http or server.https");
            }
            s.finish();
            (http, https, grace)
        }
        None => {
            if push_table.is_none() {
                root.problem("server", "missing: set server.http or server.https");
            }
            (Vec::new(), Vec::new(), None)
        }
    };
    let tls = root.table("tls");
    let certificates = tls.as_ref().map(certificates).unwrap_or_default();
    if let Some(t) = &tls {
        t.finish();
    }
    if !https_listeners.is_empty() && certificates.is_empty() {
        root.problem(
            "tls",
            "server.https is set but no [[tls.certificates]] is configured",
        );
    }
    let cors = cors(root.table("cors").as_ref());
    let timeouts = policies::timeouts(root.table("timeouts").as_ref(), Timeouts::default());
    let retry = policies::retry(root.table("retry").as_ref());
    let circuit = policies::circuit(root.table("circuit").as_ref());
    let limits = policies::limits(root.table("limits").as_ref());
    let regions = match root.table("regions") {
        Some(table) => {
            let entries = table.entries();
            if entries.is_empty() {
                table.table_problem("at least one [regions.NAME] table is required");
            }
            let regions: Vec<(&Section<'_, '_>, RegionConfig)> = entries
                .iter()
                .filter_map(|(name, r)| Some((r, region(name.clone(), r, timeouts, env)?)))
                .collect();
            unique_hosts(&regions);
            regions.into_iter().map(|(_, r)| r).collect()
        }
        None => {
            root.problem(
                "regions",
                "missing: at least one [regions.NAME] table is required",
            );
            Vec::new()
        }
    };
    let cache = cache(root.table("cache").as_ref());
    let admin = root.table("admin").and_then(|a| admin(&a, env));
    root.finish();
    Some(Config {
        http_listeners,
        https_listeners,
        certificates,
        shutdown_grace: shutdown_grace.unwrap_or(Duration::from_secs(10)),
        cors,
        timeouts,
        retry,
        circuit,
        limits,
        regions,
        cache,
        admin,
        push,
    })
}

/// The addresses of a listener list, and how many were written (good or bad).
fn addrs(t: &Section<'_, '_>, name: &str) -> (Vec<SocketAddr>, usize) {
    let written = t.strings(name);
    let mut out = Vec::new();
    for (i, v) in written.iter().enumerate() {
        match v.parse() {
            Ok(addr) => out.push(addr),
            Err(_) => t.problem(
                name,
                format!("item {i}: {v:?} is not an IP:port address; write e.g. \"127.0.0.1:8080\""),
            ),
        }
    }
    (out, written.len())
}

fn certificates(tls: &Section<'_, '_>) -> Vec<CertificateConfig> {
    let mut out = Vec::new();
    for c in tls.array_of_tables("certificates") {
        let cert = c.required_string("cert");
        let key = c.required_string("key");
        let server_names = c.strings("server_names");
        let default = c.bool("default").unwrap_or(false);
        if server_names.is_empty() && !default {
            c.problem(
                "server_names",
                "empty: give host names or set default = true",
            );
        }
        for (field, path) in [("cert", &cert), ("key", &key)] {
            if let Some(path) = path
                && !std::path::Path::new(path).is_file()
            {
                c.problem(field, format!("{path} is not a readable file"));
            }
        }
        c.finish();
        if let (Some(cert), Some(key)) = (cert, key) {
            out.push(CertificateConfig {
                cert: cert.into(),
                key: key.into(),
                server_names: server_names
                    .iter()
                    .map(|s| s.to_ascii_lowercase())
                    .collect(),
                default,
            });
        }
    }
    if out.iter().filter(|c| c.default).count() > 1 {
        tls.problem(
            "certificates",
            "more than one certificate has default = true",
        );
    }
    out
}

fn cors(t: Option<&Section<'_, '_>>) -> CorsConfig {
    let d = CorsConfig::default();
    let Some(t) = t else {
        return d;
    };
    let header = |name: &str, default: String| match t.string(name) {
        Some(v) if http::HeaderValue::from_str(&v).is_err() => {
            t.problem(name, "not a valid header value");
            default
        }
        Some(v) => v,
        None => default,
    };
    let cors = CorsConfig {
        allow_origin: header("allow_origin", d.allow_origin),
        allow_methods: header("allow_methods", d.allow_methods),
        max_age: t
            .number("max_age", 0..=u64::from(u32::MAX))
            .unwrap_or(d.max_age),
        allow_headers: header("allow_headers", d.allow_headers),
        expose_headers: header("expose_headers", d.expose_headers),
    };
    t.finish();
    cors
}

fn cache(t: Option<&Section<'_, '_>>) -> CacheConfig {
    let d = CacheConfig::default();
    let Some(t) = t else {
        return d;
    };
    let ttl = t.duration("ttl").unwrap_or(d.ttl);
    let cache = CacheConfig {
        enabled: t.bool("enabled").unwrap_or(d.enabled),
        capacity: t.size("capacity").unwrap_or(d.capacity),
        max_object_size: t.size("max_object_size").unwrap_or(d.max_object_size),
        chunk_size: t.size("chunk_size").unwrap_or(d.chunk_size),
        read_ahead_chunks: t
            .number("read_ahead_chunks", 1..=64)
            .unwrap_or(d.read_ahead_chunks),
        prefault: t.bool("prefault").unwrap_or(d.prefault),
        ttl,
        stale_while_revalidate: t
            .duration("stale_while_revalidate")
            .unwrap_or(d.stale_while_revalidate),
        stale_if_error: t.duration("stale_if_error").unwrap_or(d.stale_if_error),
        negative_ttl: t.duration("negative_ttl").unwrap_or(d.negative_ttl),
        cache_control: t
            .string("cache_control")
            .unwrap_or_else(|| format!("max-age={}", ttl.as_secs())),
    };
    if !(64 * 1024..=64 * 1024 * 1024).contains(&cache.chunk_size) {
        t.problem("chunk_size", "must be between 64 KiB and 64 MiB");
    } else if cache.enabled && cache.capacity < cache.chunk_size * 4 {
        t.problem("capacity", "must hold at least four chunks");
    }
    if http::HeaderValue::from_str(&cache.cache_control).is_err() {
        t.problem("cache_control", "not a valid header value");
    }
    t.finish();
    cache
}

fn admin(t: &Section<'_, '_>, env: Env<'_>) -> Option<AdminConfig> {
    let (listen, token) = guarded_listener(t, env, "127.0.0.1:9091");
    t.finish();
    Some(AdminConfig {
        listen: listen?,
        token,
    })
}

fn region(
    name: String,
    t: &Section<'_, '_>,
    defaults: Timeouts,
    env: Env<'_>,
) -> Option<RegionConfig> {
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !name_ok {
        t.table_problem("region names use a-z, 0-9 and - only");
    }
    let mut hosts = Vec::new();
    for (i, host) in t.strings("hosts").iter().enumerate() {
        let host = host.to_ascii_lowercase();
        if host.is_empty()
            || host.contains(['/', ':', ' '])
            || http::uri::Authority::try_from(host.as_str()).is_err()
        {
            t.problem("hosts", format!("item {i}: {host:?} is not a host name"));
        } else {
            hosts.push(host);
        }
    }
    if !t.has("hosts") {
        t.missing("hosts");
    }
    let endpoint = t.required_string("endpoint").and_then(|e| {
        let uri: Option<http::Uri> = e.parse().ok();
        let ok = uri.as_ref().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some()
                && matches!(u.path(), "" | "/")
                && u.query().is_none()
        });
        if !ok {
            t.problem(
                "endpoint",
                format!(
                    "{e:?} is not http:// or https:// host[:port] with no path; write e.g. \"https://s3.eu-central-1.amazonaws.com\""
                ),
            );
        }
        uri.filter(|_| ok)
    });
    let bucket = t.required_string("bucket").filter(|b| {
        let ok = is_valid_bucket(b);
        if !ok {
            t.problem("bucket", format!("{b:?} is not a valid S3 bucket name"));
        }
        ok
    });
    let signing_region = t.required_string("signing_region").filter(|r| {
        let ok = !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            t.problem(
                "signing_region",
                format!("{r:?} is not a region name; write e.g. \"eu-central-1\""),
            );
        }
        ok
    });
    let addressing = t
        .choice(
            "addressing",
            &[
                ("virtual-hosted", Addressing::VirtualHosted),
                ("path", Addressing::Path),
            ],
        )
        .unwrap_or(Addressing::VirtualHosted);
    let key_prefix = t.string("key_prefix").unwrap_or_default();
    let provider = t.choice(
        "provider",
        &[("aws", Provider::Aws), ("scaleway", Provider::Scaleway)],
    );
    if !t.has("provider") {
        t.missing("provider");
    }
    if let (Some(bucket), Some(endpoint)) = (&bucket, &endpoint)
        && addressing == Addressing::VirtualHosted
        && bucket.contains('.')
        && endpoint.scheme_str() == Some("https")
    {
        t.problem(
            "addressing",
            "a bucket name with dots cannot be virtual-hosted over https: use addressing = \"path\"",
        );
    }
    let connect_to = t.string("connect_to").and_then(|ip| match ip.parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            t.problem("connect_to", format!("{ip:?} is not an IP address"));
            None
        }
    });
    let read_credentials = match t.table("credentials") {
        Some(c) => credentials(&c, env),
        None => {
            if !t.has("credentials") {
                t.missing("credentials");
            }
            None
        }
    };
    let push_credentials = t.table("push_credentials").and_then(|c| {
        credentials(&c, env).map(|(keys, source)| RegionCredentials { keys, source })
    });
    let timeouts = t
        .table("timeouts")
        .map(|table| policies::timeouts(Some(&table), defaults));
    t.finish();
    let (credentials, credential_source) = read_credentials?;
    Some(RegionConfig {
        name,
        hosts,
        endpoint: endpoint?,
        bucket: bucket?,
        signing_region: signing_region?,
        addressing,
        key_prefix,
        provider: provider?,
        connect_to,
        credentials,
        credential_source,
        push_credentials,
        timeouts,
    })
}

/// The sources a region's `credentials.source` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceKind {
    Static,
    DefaultChain,
    Profile,
    Container,
    Instance,
    WebIdentity,
}

fn credentials(t: &Section<'_, '_>, env: Env<'_>) -> Option<(StaticCredentials, CredentialSource)> {
    let source = t
        .choice(
            "source",
            &[
                ("static", SourceKind::Static),
                ("default-chain", SourceKind::DefaultChain),
                ("profile", SourceKind::Profile),
                ("container", SourceKind::Container),
                ("instance", SourceKind::Instance),
                ("web-identity", SourceKind::WebIdentity),
            ],
        )
        .unwrap_or(SourceKind::Static);
    let profile = t.string("profile");
    if profile.is_some() && !matches!(source, SourceKind::Profile | SourceKind::DefaultChain) {
        t.problem(
            "profile",
            "only used with source = \"profile\" or \"default-chain\"",
        );
    }
    if source != SourceKind::Static {
        for key in [
            "access_key_id",
            "access_key_id_env",
            "secret_access_key",
            "secret_access_key_env",
            "session_token",
            "session_token_env",
        ] {
            if t.string(key).is_some() {
                t.problem(key, "keys are only read with source = \"static\"");
            }
        }
        t.finish();
        let dynamic = match source {
            SourceKind::DefaultChain => CredentialSource::DefaultChain { profile },
            SourceKind::Profile => CredentialSource::Profile { profile },
            SourceKind::Container => CredentialSource::Container,
            SourceKind::Instance => CredentialSource::Instance,
            SourceKind::WebIdentity => CredentialSource::WebIdentity,
            SourceKind::Static => CredentialSource::Static,
        };
        return Some((StaticCredentials::none(), dynamic));
    }
    let access_key_id = secret(t, "access_key_id", true, env);
    let secret_access_key = secret(t, "secret_access_key", true, env);
    let session_token = secret(t, "session_token", false, env);
    t.finish();
    Some((
        StaticCredentials {
            access_key_id: access_key_id?,
            secret_access_key: secret_access_key?,
            session_token,
        },
        CredentialSource::Static,
    ))
}

fn unique_hosts(regions: &[(&Section<'_, '_>, RegionConfig)]) {
    let mut seen = BTreeMap::new();
    for (table, region) in regions {
        for host in &region.hosts {
            if let Some(other) = seen.insert(host.as_str(), region.name.as_str()) {
                table.problem(
                    "hosts",
                    format!("{host:?} is already a host of region {other}"),
                );
            }
        }
    }
}

/// S3 bucket naming rules: 3–63 of a-z, 0-9, `.`, `-`, starting and ending alphanumeric.
fn is_valid_bucket(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}
