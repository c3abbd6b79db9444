//! Range, If-Range and precondition arithmetic (RFC 9110 §13, §14): pure functions over a
//! cached object's validators, so the cache can answer players without asking the backend.

use std::time::SystemTime;

use http::HeaderMap;
use http::header::{
    IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, RANGE,
};

/// One byte range as the client wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `first-last`, inclusive.
    FromTo(u64, u64),
    /// `first-`.
    From(u64),
    /// `-length`: the last `length` bytes.
    Suffix(u64),
}

/// A resolved, satisfiable span of an object: `start..end`, end exclusive, never empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl Span {
    /// Number of bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Always false: spans are never empty.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// The client asked for bytes that do not exist (416).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsatisfiable;

/// Parses a `Range` header. `None` means "serve the whole object": no header, another unit,
/// several ranges, or bad syntax (RFC 9110 §14.2 lets a server ignore those).
pub fn parse_range(value: &[u8]) -> Option<ByteRange> {
    let spec = value.strip_prefix(b"bytes=")?;
    let spec = trim(spec);
    if spec.contains(&b',') {
        return None;
    }
    let dash = spec.iter().position(|&b| b == b'-')?;
    let (first, last) = (trim(&spec[..dash]), trim(&spec[dash + 1..]));
    match (parse_u64(first), parse_u64(last)) {
        (Some(first), Some(last)) if first <= last => Some(ByteRange::FromTo(first, last)),
        (Some(first), None) if last.is_empty() => Some(ByteRange::From(first)),
        (None, Some(length)) if first.is_empty() => Some(ByteRange::Suffix(length)),
        _ => None,
    }
}

impl ByteRange {
    /// The span of an object of `len` bytes this range selects.
    pub fn resolve(self, len: u64) -> Result<Span, Unsatisfiable> {
        let span = match self {
            ByteRange::FromTo(first, last) => Span {
                start: first,
                end: last.saturating_add(1).min(len),
            },
            ByteRange::From(first) => Span {
                start: first,
                end: len,
            },
            ByteRange::Suffix(length) => Span {
                start: len.saturating_sub(length),
                end: len,
            },
        };
        if span.start >= span.end {
            return Err(Unsatisfiable);
        }
        Ok(span)
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &s[start..end]
}

fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// The validators of a stored object.
#[derive(Debug, Clone, Copy)]
pub struct Validators<'a> {
    /// The strong ETag, quotes included.
    pub etag: &'a str,
    /// Last-Modified, second precision.
    pub last_modified: Option<SystemTime>,
}

/// What the preconditions of a GET/HEAD decide (RFC 9110 §13.2.2 order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Serve the representation (or the range).
    Proceed,
    /// 304.
    NotModified,
    /// 412.
    Failed,
}

/// Evaluates If-Match, If-Unmodified-Since, If-None-Match and If-Modified-Since.
pub fn evaluate(headers: &HeaderMap, v: Validators<'_>) -> Precondition {
    if let Some(value) = headers.get(IF_MATCH) {
        if !etag_list_matches(value.as_bytes(), v.etag, false) {
            return Precondition::Failed;
        }
    } else if let (Some(since), Some(modified)) =
        (date(headers, IF_UNMODIFIED_SINCE), v.last_modified)
        && modified > since
    {
        return Precondition::Failed;
    }
    if let Some(value) = headers.get(IF_NONE_MATCH) {
        if etag_list_matches(value.as_bytes(), v.etag, true) {
            return Precondition::NotModified;
        }
    } else if let (Some(since), Some(modified)) =
        (date(headers, IF_MODIFIED_SINCE), v.last_modified)
        && modified <= since
    {
        return Precondition::NotModified;
    }
    Precondition::Proceed
}

/// The client's Range to honour, after If-Range: `None` serves the whole object.
pub fn effective_range(headers: &HeaderMap, v: Validators<'_>) -> Option<ByteRange> {
    let range = parse_range(headers.get(RANGE)?.as_bytes())?;
    match headers.get(IF_RANGE) {
        None => Some(range),
        Some(value) => {
            let value = value.as_bytes();
            let matches = if value.starts_with(b"\"") {
                // If-Range needs the strong comparison.
                value == v.etag.as_bytes()
            } else if value.starts_with(b"W/") {
                false
            } else {
                let since = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| httpdate::parse_http_date(s).ok());
                matches!((since, v.last_modified), (Some(since), Some(modified)) if since == modified)
            };
            matches.then_some(range)
        }
    }
}

fn date(headers: &HeaderMap, name: http::HeaderName) -> Option<SystemTime> {
    httpdate::parse_http_date(headers.get(name)?.to_str().ok()?).ok()
}

/// Whether a comma-separated entity-tag list (or `*`) matches `etag`.
fn etag_list_matches(list: &[u8], etag: &str, weak: bool) -> bool {
    let etag = etag.as_bytes();
    let bare = |t: &[u8]| -> Vec<u8> { t.strip_prefix(b"W/").unwrap_or(t).to_vec() };
    list.split(|&b| b == b',').map(trim).any(|tag| {
        if tag == b"*" {
            return true;
        }
        if weak {
            bare(tag) == bare(etag)
        } else {
            !tag.starts_with(b"W/") && tag == etag
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    type Pairs = &'static [(&'static str, &'static str)];
    type Resolved = Result<(u64, u64), Unsatisfiable>;

    #[test]
    fn parses_range_forms() {
        let cases: &[(&str, Option<ByteRange>)] = &[
            ("bytes=0-0", Some(ByteRange::FromTo(0, 0))),
            ("bytes=0-", Some(ByteRange::From(0))),
            ("bytes=-500", Some(ByteRange::Suffix(500))),
            ("bytes= 5 - 9 ", Some(ByteRange::FromTo(5, 9))),
            ("bytes=9-5", None),
            ("bytes=-", None),
            ("bytes=", None),
            ("bytes=a-b", None),
            ("bytes=0-1,5-6", None),
            ("items=0-1", None),
            ("bytes=+1-2", None),
            ("bytes=99999999999999999999-", None),
            (
                "bytes=18446744073709551615-18446744073709551615",
                Some(ByteRange::FromTo(u64::MAX, u64::MAX)),
            ),
        ];
        for (header, expected) in cases {
            assert_eq!(parse_range(header.as_bytes()), *expected, "{header}");
        }
    }

    #[test]
    fn resolves_within_the_object() {
        let len = 1000;
        let cases: &[(ByteRange, Resolved)] = &[
            (ByteRange::FromTo(0, 0), Ok((0, 1))),
            (ByteRange::FromTo(0, 5000), Ok((0, 1000))),
            (ByteRange::FromTo(999, 999), Ok((999, 1000))),
            (ByteRange::FromTo(1000, 1001), Err(Unsatisfiable)),
            (ByteRange::From(0), Ok((0, 1000))),
            (ByteRange::From(1000), Err(Unsatisfiable)),
            (ByteRange::Suffix(1), Ok((999, 1000))),
            (ByteRange::Suffix(5000), Ok((0, 1000))),
            (ByteRange::Suffix(0), Err(Unsatisfiable)),
            (ByteRange::FromTo(u64::MAX, u64::MAX), Err(Unsatisfiable)),
        ];
        for (range, expected) in cases {
            let got = range.resolve(len).map(|s| (s.start, s.end));
            assert_eq!(got, *expected, "{range:?}");
        }
        assert_eq!(ByteRange::From(0).resolve(0), Err(Unsatisfiable));
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn preconditions_in_rfc_order() {
        let modified = httpdate::parse_http_date("Sun, 29 Nov 2026 01:00:00 GMT").unwrap();
        let v = Validators {
            etag: "\"abc\"",
            last_modified: Some(modified),
        };
        const EARLIER: &str = "Sun, 29 Nov 2026 00:00:00 GMT";
        const SAME: &str = "Sun, 29 Nov 2026 01:00:00 GMT";
        use Precondition::*;
        let cases: &[(Pairs, Precondition)] = &[
            (&[], Proceed),
            (&[("if-none-match", "\"abc\"")], NotModified),
            (&[("if-none-match", "W/\"abc\"")], NotModified),
            (&[("if-none-match", "\"x\", \"abc\"")], NotModified),
            (&[("if-none-match", "*")], NotModified),
            (&[("if-none-match", "\"x\"")], Proceed),
            (
                &[("if-none-match", "\"x\""), ("if-modified-since", SAME)],
                Proceed,
            ),
            (&[("if-modified-since", SAME)], NotModified),
            (&[("if-modified-since", EARLIER)], Proceed),
            (&[("if-match", "\"abc\"")], Proceed),
            (&[("if-match", "W/\"abc\"")], Failed),
            (&[("if-match", "\"x\"")], Failed),
            (&[("if-match", "*")], Proceed),
            (&[("if-unmodified-since", EARLIER)], Failed),
            (&[("if-unmodified-since", SAME)], Proceed),
            (
                &[("if-match", "\"x\""), ("if-none-match", "\"abc\"")],
                Failed,
            ),
        ];
        for (pairs, expected) in cases {
            assert_eq!(evaluate(&headers(pairs), v), *expected, "{pairs:?}");
        }
    }

    #[test]
    fn if_range_needs_an_exact_validator() {
        let modified = httpdate::parse_http_date("Sun, 29 Nov 2026 01:00:00 GMT").unwrap();
        let v = Validators {
            etag: "\"abc\"",
            last_modified: Some(modified),
        };
        let range = Some(ByteRange::FromTo(0, 9));
        let cases: &[(Pairs, Option<ByteRange>)] = &[
            (&[("range", "bytes=0-9")], range),
            (&[("range", "bytes=0-9"), ("if-range", "\"abc\"")], range),
            (&[("range", "bytes=0-9"), ("if-range", "\"x\"")], None),
            (&[("range", "bytes=0-9"), ("if-range", "W/\"abc\"")], None),
            (
                &[
                    ("range", "bytes=0-9"),
                    ("if-range", "Sun, 29 Nov 2026 01:00:00 GMT"),
                ],
                range,
            ),
            (
                &[
                    ("range", "bytes=0-9"),
                    ("if-range", "Sun, 29 Nov 2026 00:59:59 GMT"),
                ],
                None,
            ),
            (&[("if-range", "\"abc\"")], None),
        ];
        for (pairs, expected) in cases {
            assert_eq!(effective_range(&headers(pairs), v), *expected, "{pairs:?}");
        }
    }
}
