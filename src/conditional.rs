//! Conditional requests in one place (RFC 9110 §13): the request headers a client may send
//! upstream, the translation of `If-Range` into a precondition the backend evaluates reliably,
//! and the evaluation of preconditions and `If-Range` against a cached object's validators.

use std::time::SystemTime;

use http::header::{
    IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, RANGE,
};
use http::{HeaderMap, HeaderName};

use crate::range::{ByteRange, parse_range, trim};

/// Request headers a client may pass to the backend; everything else stays here.
pub const FORWARDED_REQUEST_HEADERS: [HeaderName; 6] = [
    RANGE,
    IF_RANGE,
    IF_NONE_MATCH,
    IF_MODIFIED_SINCE,
    IF_MATCH,
    IF_UNMODIFIED_SINCE,
];

/// Copies the forwardable request headers of a client request.
pub fn forwardable_headers(client: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in FORWARDED_REQUEST_HEADERS {
        for value in client.get_all(&name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// What a relayed request sends upstream, read once from the client's headers.
#[derive(Debug)]
pub(crate) struct Forward {
    /// Headers sent upstream.
    pub(crate) headers: HeaderMap,
    /// `If-Range` became a precondition: on 412 the whole object is fetched instead.
    pub(crate) if_range_translated: bool,
}

impl Forward {
    /// Picks the forwardable headers and rewrites `If-Range` into a precondition the backend
    /// evaluates reliably: a strong ETag becomes `If-Match`, a date `If-Unmodified-Since`.
    pub(crate) fn from_request(client: &HeaderMap) -> Self {
        let mut headers = forwardable_headers(client);
        let mut if_range_translated = false;
        if let Some(if_range) = headers.remove(IF_RANGE)
            && headers.contains_key(RANGE)
        {
            let bytes = if_range.as_bytes();
            let has_precondition =
                headers.contains_key(IF_MATCH) || headers.contains_key(IF_UNMODIFIED_SINCE);
            if bytes.starts_with(b"W/") || has_precondition {
                // A weak validator never matches If-Range; and next to the client's own
                // precondition it cannot be translated. Ignoring Range is always correct.
                headers.remove(RANGE);
            } else {
                let name = if bytes.starts_with(b"\"") {
                    IF_MATCH
                } else {
                    IF_UNMODIFIED_SINCE
                };
                headers.insert(name, if_range);
                if_range_translated = true;
            }
        }
        Forward {
            headers,
            if_range_translated,
        }
    }

    /// The second request after a translated `If-Range` failed (RFC 9110 §13.1.5): the whole,
    /// current object, unconditionally.
    pub(crate) fn whole_object(&self) -> Option<HeaderMap> {
        self.if_range_translated.then(|| {
            let mut headers = self.headers.clone();
            headers.remove(RANGE);
            headers.remove(IF_MATCH);
            headers.remove(IF_UNMODIFIED_SINCE);
            headers
        })
    }
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

fn date(headers: &HeaderMap, name: HeaderName) -> Option<SystemTime> {
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
    use crate::range::ByteRange;
    use http::HeaderValue;

    type Pairs = &'static [(&'static str, &'static str)];

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
