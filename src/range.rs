//! Range arithmetic (RFC 9110 §14): parsing a `Range` header and resolving it against an
//! object's length. Pure functions, table- and property-tested.

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

pub(crate) fn trim(s: &[u8]) -> &[u8] {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
