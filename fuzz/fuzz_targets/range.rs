//! The Range parser and span arithmetic over arbitrary bytes and lengths: never a panic, and
//! every satisfiable span lies inside the object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use s3edge::range::parse_range;

fuzz_target!(|data: &[u8]| {
    let (len, value) = match data.split_first_chunk::<8>() {
        Some((len, rest)) => (u64::from_le_bytes(*len), rest),
        None => (0, data),
    };
    if let Some(range) = parse_range(value)
        && let Ok(span) = range.resolve(len)
    {
        assert!(span.start < span.end && span.end <= len, "{range:?} {len} {span:?}");
    }
});
