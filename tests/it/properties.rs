//! Property tests of the two parsers that read untrusted input: the route parser (Host and
//! path → object key) and the Range / precondition parser. Over arbitrary bytes they never
//! panic, never produce a key outside `{hash}/{name}{suffix}`, and never a span outside the
//! object. Fuzz targets for the same functions live in `fuzz/` (see the README).

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use s3edge::conditional::{self, Validators};
use s3edge::range::{self, ByteRange};
use s3edge::route::{FileKind, Router};

const SUFFIXES: [&str; 4] = ["_filmstrip.jpg", "_raw.mp4", ".mp4", ".jpg"];

fn router() -> Router {
    let hosts = [
        vec!["eu1-addpipe.s3.eu-central-1.amazonaws.com".to_string()],
        vec!["eu2-addpipe.s3.nl-ams.scw.cloud".to_string()],
        vec!["us1-addpipe.s3-us-west-1.amazonaws.com".to_string()],
        vec!["us2-addpipe.s3.us-east-1.amazonaws.com".to_string()],
    ];
    let names = ["eu1", "eu2", "us1", "us2"];
    Router::new(names.iter().copied().zip(hosts.iter().map(Vec::as_slice)))
}

fn is_segment(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The only keys the gateway may ever ask a backend for.
fn is_allowed_key(key: &str, kind: FileKind) -> bool {
    let Some((hash, file)) = key.split_once('/') else {
        return false;
    };
    let Some(name) = file.strip_suffix(kind.suffix()) else {
        return false;
    };
    is_segment(hash) && is_segment(name)
}

/// Paths near the valid shape, so the interesting branches are reached often.
fn near_valid_path() -> impl Strategy<Value = String> {
    let region = prop_oneof![
        Just("eu1"),
        Just("us2"),
        Just("EU1"),
        Just("xx"),
        Just(""),
        Just(".."),
    ];
    let segment = "[A-Za-z0-9_.%/-]{0,12}";
    let suffix = prop_oneof![
        Just(".mp4"),
        Just(".jpg"),
        Just("_raw.mp4"),
        Just("_filmstrip.jpg"),
        Just(".MP4"),
        Just(".txt"),
        Just(""),
        Just("/"),
    ];
    (region, segment, segment, suffix)
        .prop_map(|(r, hash, name, suffix)| format!("/{r}/{hash}/{name}{suffix}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn route_parser_never_panics_and_only_yields_allowed_keys(
        host in proptest::option::of(any::<String>()),
        raw_path in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let router = router();
        let path = String::from_utf8_lossy(&raw_path);
        if let Ok(object) = router.resolve(host.as_deref(), &path) {
            prop_assert!(object.region < 4);
            prop_assert!(is_allowed_key(&object.key, object.kind), "key {:?} from {:?}", object.key, path);
        }
    }

    #[test]
    fn near_valid_paths_resolve_only_to_allowed_keys(path in near_valid_path()) {
        let router = router();
        if let Ok(object) = router.resolve(Some("edge.example"), &path) {
            prop_assert!(is_allowed_key(&object.key, object.kind), "key {:?} from {:?}", object.key, path);
            // The key is exactly what followed the region prefix: nothing was rewritten.
            prop_assert!(path.ends_with(&*object.key));
            prop_assert_eq!(path.len(), 1 + 3 + 1 + object.key.len());
        }
    }

    #[test]
    fn valid_paths_always_resolve(
        region in 0usize..4,
        hash in "[A-Za-z0-9_-]{1,64}",
        name in "[A-Za-z0-9_-]{1,64}",
        suffix in 0usize..4,
        by_host in any::<bool>(),
    ) {
        let router = router();
        let regions = ["eu1", "eu2", "us1", "us2"];
        let hosts = [
            "eu1-addpipe.s3.eu-central-1.amazonaws.com",
            "eu2-addpipe.s3.nl-ams.scw.cloud",
            "us1-addpipe.s3-us-west-1.amazonaws.com",
            "us2-addpipe.s3.us-east-1.amazonaws.com",
        ];
        let key = format!("{hash}/{name}{}", SUFFIXES[suffix]);
        let object = if by_host {
            router.resolve(Some(hosts[region]), &format!("/{key}"))
        } else {
            router.resolve(Some("edge.example"), &format!("/{}/{key}", regions[region]))
        }
        .unwrap();
        prop_assert_eq!(object.region, region);
        prop_assert_eq!(&*object.key, key.as_str());
        prop_assert!(is_allowed_key(&object.key, object.kind));
    }

    #[test]
    fn range_parser_never_panics_and_spans_stay_inside(
        value in proptest::collection::vec(any::<u8>(), 0..64),
        len in 0u64..10_000_000,
    ) {
        if let Some(range) = range::parse_range(&value) {
            check_span(range, len)?;
        }
    }

    #[test]
    fn byte_ranges_resolve_inside_the_object(
        first in proptest::option::of(0u64..u64::MAX),
        last in proptest::option::of(0u64..u64::MAX),
        spaces in "[ \t]{0,2}",
        len in prop_oneof![Just(0u64), Just(1u64), 0u64..2_000_000, Just(u64::MAX)],
    ) {
        let text = format!(
            "bytes={spaces}{}-{}{spaces}",
            first.map(|v| v.to_string()).unwrap_or_default(),
            last.map(|v| v.to_string()).unwrap_or_default()
        );
        if let Some(range) = range::parse_range(text.as_bytes()) {
            check_span(range, len)?;
        }
    }

    #[test]
    fn preconditions_never_panic(
        if_match in proptest::option::of(any::<Vec<u8>>()),
        if_none_match in proptest::option::of(any::<Vec<u8>>()),
        if_modified_since in proptest::option::of(any::<Vec<u8>>()),
        if_range in proptest::option::of(any::<Vec<u8>>()),
        range_value in proptest::option::of(any::<Vec<u8>>()),
    ) {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            (http::header::IF_MATCH, if_match),
            (http::header::IF_NONE_MATCH, if_none_match),
            (http::header::IF_MODIFIED_SINCE, if_modified_since),
            (http::header::IF_RANGE, if_range),
            (http::header::RANGE, range_value),
        ] {
            if let Some(value) = value.and_then(|v| HeaderValue::from_bytes(&v).ok()) {
                headers.insert(name, value);
            }
        }
        let validators = Validators {
            etag: "\"abc\"",
            last_modified: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
        };
        let _ = conditional::evaluate(&headers, validators);
        if let Some(range) = conditional::effective_range(&headers, validators) {
            check_span(range, 1000)?;
        }
    }
}

fn check_span(range: ByteRange, len: u64) -> Result<(), TestCaseError> {
    match range.resolve(len) {
        Ok(span) => {
            prop_assert!(span.start < span.end, "{range:?} on {len}: {span:?}");
            prop_assert!(span.end <= len, "{range:?} on {len}: {span:?}");
        }
        Err(_) => {
            // Unsatisfiable only when no byte of the object is selected.
            let none_selected = match range {
                ByteRange::FromTo(first, _) | ByteRange::From(first) => first >= len,
                ByteRange::Suffix(n) => n == 0 || len == 0,
            };
            prop_assert!(none_selected, "{range:?} on {len} refused");
        }
    }
    Ok(())
}
