//! The only URL parser: resolves Host and path once, at the edge, into a typed
//! [`ObjectRef`] (region index, key, file kind).
//!
//! Only the four file kinds of a recording are admitted; everything else is refused here,
//! before any backend is contacted, by one rule:
//! - **400**: the path is malformed: no leading `/`, an empty segment (`//`, a trailing
//!   `/`), a `.` or `..` segment, a percent-encoded byte, or an account hash or name with
//!   characters outside `A-Z a-z 0-9 _ -` or longer than [`MAX_SEGMENT_LEN`];
//! - **404**: the path is well formed but names no file: a bare `/`, too few or too many
//!   segments, an unknown region prefix, an unknown Host without a prefix, or a suffix that
//!   is not one of the four.

use std::fmt;
use std::sync::Arc;

use http::HeaderValue;

use crate::error::GatewayError;

/// Longest accepted account hash or file name, in bytes.
pub const MAX_SEGMENT_LEN: usize = 128;

/// The four files that make up one recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// `{NAME}.mp4`: the processed recording.
    Processed,
    /// `{NAME}.jpg`: the snapshot.
    Snapshot,
    /// `{NAME}_filmstrip.jpg`: the filmstrip.
    Filmstrip,
    /// `{NAME}_raw.mp4`: the raw recording.
    Raw,
}

impl FileKind {
    /// Every kind, longest suffix first, so that `x_raw.mp4` is never read as `x_raw` + `.mp4`.
    pub const ALL: [FileKind; 4] = [
        FileKind::Filmstrip,
        FileKind::Raw,
        FileKind::Processed,
        FileKind::Snapshot,
    ];

    /// The suffix that follows `{NAME}` in the object key.
    pub const fn suffix(self) -> &'static str {
        match self {
            FileKind::Processed => ".mp4",
            FileKind::Snapshot => ".jpg",
            FileKind::Filmstrip => "_filmstrip.jpg",
            FileKind::Raw => "_raw.mp4",
        }
    }

    /// The media type clients expect for this kind.
    pub const fn content_type(self) -> &'static str {
        match self {
            FileKind::Processed | FileKind::Raw => "video/mp4",
            FileKind::Snapshot | FileKind::Filmstrip => "image/jpeg",
        }
    }

    /// The `Content-Type` to send: the backend's, unless it says nothing (absent, empty or
    /// a generic octet-stream), then this kind's. One rule for the relay and the cache.
    pub fn content_type_for(self, backend: Option<&HeaderValue>) -> HeaderValue {
        match backend {
            Some(v)
                if !matches!(
                    v.as_bytes(),
                    b"" | b"application/octet-stream" | b"binary/octet-stream"
                ) =>
            {
                v.clone()
            }
            _ => HeaderValue::from_static(self.content_type()),
        }
    }

    /// Splits `{NAME}{suffix}` into the name and the kind, longest suffix first.
    fn split(file: &str) -> Option<(&str, FileKind)> {
        FileKind::ALL
            .iter()
            .find_map(|kind| file.strip_suffix(kind.suffix()).map(|name| (name, *kind)))
    }
}

/// A validated reference to one file of one recording in one region.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    /// Index of the region in the gateway's region table.
    pub region: usize,
    /// `{ACCOUNT-HASH}/{NAME}{suffix}`, without the region's key prefix.
    pub key: Arc<str>,
    /// Which of the four files this is.
    pub kind: FileKind,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

/// Maps public host names and region names to region indexes.
#[derive(Debug, Clone, Default)]
pub struct Router {
    /// Lower-case host name (no port) → region index.
    hosts: Vec<(Box<str>, usize)>,
    /// Region name as used in the `/{region}/` path prefix → region index.
    names: Vec<(Box<str>, usize)>,
}

impl Router {
    /// Builds a router from `(region name, public host names)` in region-table order.
    pub fn new<'a>(regions: impl IntoIterator<Item = (&'a str, &'a [String])>) -> Self {
        let mut router = Router::default();
        for (index, (name, hosts)) in regions.into_iter().enumerate() {
            router.names.push((name.into(), index));
            for host in hosts {
                router.hosts.push((host.to_ascii_lowercase().into(), index));
            }
        }
        router
    }

    /// The region served under this Host header value (port ignored, case-insensitive).
    pub fn region_for_host(&self, host: &str) -> Option<usize> {
        let host = strip_port(host);
        self.hosts
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(host))
            .map(|(_, index)| *index)
    }

    fn region_for_name(&self, name: &str) -> Option<usize> {
        self.names
            .iter()
            .find(|(n, _)| **n == *name)
            .map(|(_, index)| *index)
    }

    /// Resolves a request's host and path (query already removed) into an object reference.
    pub fn resolve(&self, host: Option<&str>, path: &str) -> Result<ObjectRef, GatewayError> {
        let Some(rest) = path.strip_prefix('/') else {
            return Err(GatewayError::BadPath("path must start with /"));
        };
        if rest.is_empty() {
            return Err(GatewayError::NotFound);
        }
        if rest.contains('%') {
            return Err(GatewayError::BadPath(
                "percent-encoded bytes are not allowed",
            ));
        }
        // At most three segments matter; a fourth means "not a file" (checked after the
        // malformed cases so that `/a//b/c.mp4` is a 400 whatever its length).
        let mut segments = rest.split('/');
        let parts = [
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ];
        for segment in parts.iter().flatten().copied().chain(segments.clone()) {
            if segment.is_empty() {
                return Err(GatewayError::BadPath("empty path segment"));
            }
            if segment == "." || segment == ".." {
                return Err(GatewayError::BadPath("dot segments are not allowed"));
            }
        }
        let (region, hash, file) = match parts {
            [Some(hash), Some(file), None, None] => {
                let region = host
                    .and_then(|h| self.region_for_host(h))
                    .ok_or(GatewayError::NotFound)?;
                (region, hash, file)
            }
            [Some(prefix), Some(hash), Some(file), None] => {
                let region = self.region_for_name(prefix).ok_or(GatewayError::NotFound)?;
                (region, hash, file)
            }
            _ => return Err(GatewayError::NotFound),
        };
        if !is_valid_segment(hash) {
            return Err(GatewayError::BadPath("invalid account hash"));
        }
        let (name, kind) = FileKind::split(file).ok_or(GatewayError::NotFound)?;
        if !is_valid_segment(name) {
            return Err(GatewayError::BadPath("invalid file name"));
        }
        // `{hash}/{file}` is the tail of the path: one allocation, no formatting.
        let key = &rest[rest.len() - hash.len() - 1 - file.len()..];
        Ok(ObjectRef {
            region,
            key: Arc::from(key),
            kind,
        })
    }
}

/// Letters, digits, `_` and `-`, 1 to [`MAX_SEGMENT_LEN`] bytes.
fn is_valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SEGMENT_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Removes a `:port` suffix, leaving bracketed IPv6 literals intact.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let eu1 = vec!["eu1-addpipe.s3.eu-central-1.amazonaws.com".to_string()];
        let eu2 = vec!["eu2-addpipe.s3.nl-ams.scw.cloud".to_string()];
        Router::new([("eu1", eu1.as_slice()), ("eu2", eu2.as_slice())])
    }

    #[test]
    fn host_form_resolves_each_kind() {
        let r = router();
        let host = Some("EU1-addpipe.s3.eu-central-1.amazonaws.com:8443");
        for (file, kind) in [
            ("rec.mp4", FileKind::Processed),
            ("rec.jpg", FileKind::Snapshot),
            ("rec_filmstrip.jpg", FileKind::Filmstrip),
            ("rec_raw.mp4", FileKind::Raw),
        ] {
            let got = r.resolve(host, &format!("/abc123/{file}")).unwrap();
            assert_eq!(got.region, 0);
            assert_eq!(got.kind, kind);
            assert_eq!(&*got.key, format!("abc123/{file}"));
        }
    }

    #[test]
    fn path_form_overrides_host() {
        let r = router();
        let got = r.resolve(Some("localhost"), "/eu2/h-1/n_2.jpg").unwrap();
        assert_eq!((got.region, &*got.key), (1, "h-1/n_2.jpg"));
        let got = r
            .resolve(
                Some("eu1-addpipe.s3.eu-central-1.amazonaws.com"),
                "/eu2/h/n.jpg",
            )
            .unwrap();
        assert_eq!(got.region, 1);
    }

    #[test]
    fn rejects_everything_else() {
        let r = router();
        let host = Some("eu1-addpipe.s3.eu-central-1.amazonaws.com");
        let not_found = [
            "/",
            "/abc",
            "/abc/rec.txt",
            "/abc/rec.MP4",
            "/abc/rec_raw.mov",
            "/eu2",
            "/eu2/abc",
            "/a/b/c/d.mp4",
            "/xx1/abc/rec.mp4",
        ];
        for path in not_found {
            assert!(
                matches!(r.resolve(host, path), Err(GatewayError::NotFound)),
                "{path}"
            );
        }
        let bad = [
            "abc/rec.mp4",
            "//rec.mp4",
            "/abc//rec.mp4",
            "/abc/rec.mp4/",
            "/../abc/rec.mp4",
            "/abc/../rec.mp4",
            "/abc/%2e%2e.mp4",
            "/ab%2Fc/rec.mp4",
            "/ab.c/rec.mp4",
            "/abc/re.c.mp4",
            "/abc/re c.mp4",
            "/ab~c/rec.jpg",
            "/abc/_filmstrip.jpg",
            "/abc/.mp4",
        ];
        for path in bad {
            assert!(
                matches!(r.resolve(host, path), Err(GatewayError::BadPath(_))),
                "{path}"
            );
        }
        let long = "a".repeat(MAX_SEGMENT_LEN + 1);
        assert!(r.resolve(host, &format!("/{long}/rec.mp4")).is_err());
        assert!(r.resolve(host, &format!("/abc/{long}.mp4")).is_err());
        assert!(r.resolve(host, &format!("/{}/rec.mp4", &long[1..])).is_ok());
    }

    #[test]
    fn unknown_host_without_prefix_is_not_found() {
        let r = router();
        for host in [None, Some("evil.example.com"), Some("169.254.169.254")] {
            assert!(matches!(
                r.resolve(host, "/abc/rec.mp4"),
                Err(GatewayError::NotFound)
            ));
        }
    }

    #[test]
    fn strips_ports() {
        assert_eq!(strip_port("a.b:80"), "a.b");
        assert_eq!(strip_port("a.b"), "a.b");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
