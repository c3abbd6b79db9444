//! SigV4 signing of backend requests, and S3's URI encoding of keys.
//!
//! A bodiless request without a query (every GET and HEAD of an object) is signed directly:
//! its canonical request is written into one string and signed with the day's key, derived
//! once a day by `aws-sigv4`. `aws-sigv4`'s general path (a parsed URI, a header map and a
//! string per part) was 6 % of a cold 30 KB miss's CPU. Anything else goes through
//! `aws-sigv4` whole, and the tests check that both give the same headers.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use chrono::{DateTime, Datelike, Timelike, Utc};
use hmac::{Hmac, Mac};
use http::header::{AUTHORIZATION, HOST, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::Empty;
use sha2::{Digest, Sha256};

use crate::credentials::SigningCredentials;
use crate::error::GatewayError;

/// What a bodiless request's payload hash is (S3 accepts it for GET and HEAD).
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// Headers `aws-sigv4` leaves unsigned: proxies may change them.
const UNSIGNED_HEADERS: [&str; 4] = [
    "authorization",
    "user-agent",
    "x-amzn-trace-id",
    "transfer-encoding",
];

/// Signs a region's requests: its signing region and its (refreshable) identity.
#[derive(Debug)]
pub(crate) struct Signer {
    /// SigV4 signing region.
    region: String,
    /// The identity requests are signed with (refreshed in the background when temporary).
    credentials: SigningCredentials,
    /// The signing key of the last day signed for, and the identity it belongs to.
    day_key: Mutex<Option<DayKey>>,
}

/// A derived signing key: valid for one identity, one UTC day.
#[derive(Debug)]
struct DayKey {
    identity: Arc<Identity>,
    date: String,
    key: Vec<u8>,
}

impl Signer {
    /// A signer for `region` with `credentials`.
    pub(crate) fn new(region: String, credentials: SigningCredentials) -> Self {
        Signer {
            region,
            credentials,
            day_key: Mutex::new(None),
        }
    }

    /// Whether there is an identity to sign with.
    pub(crate) fn has_identity(&self) -> bool {
        self.credentials.current().is_some()
    }

    /// A signed, bodiless request (GET or HEAD) carrying `headers`.
    pub(crate) fn sign(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
    ) -> Result<Request<Empty<Bytes>>, GatewayError> {
        self.sign_at(method, url, headers, SystemTime::now())
    }

    fn sign_at(
        &self,
        method: Method,
        url: &str,
        mut headers: HeaderMap,
        now: SystemTime,
    ) -> Result<Request<Empty<Bytes>>, GatewayError> {
        // Only visible-ASCII header values can be signed; anything else is not forwarded.
        headers.retain_valid_ascii();
        let identity = self
            .credentials
            .current()
            .ok_or(GatewayError::NoCredentials)?;
        let uri: Uri = url
            .parse()
            .map_err(|_| GatewayError::Internal("unparsable upstream url"))?;
        let direct = uri.query().is_none()
            && !headers
                .keys()
                .any(|n| n == HOST || n.as_str().starts_with("x-amz-"));
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Empty::new())
            .map_err(|_| GatewayError::Internal("unbuildable upstream request"))?;
        match identity.data::<Credentials>() {
            Some(credentials) if direct => {
                let signed = self.direct(&request, &headers, &identity, credentials, now)?;
                *request.headers_mut() = headers;
                request.headers_mut().extend(signed);
            }
            _ => self.with_aws_sigv4(&mut request, url, headers, &identity, now)?,
        }
        Ok(request)
    }

    /// The signature headers of a bodiless request without a query, written directly.
    fn direct(
        &self,
        request: &Request<Empty<Bytes>>,
        headers: &HeaderMap,
        identity: &Arc<Identity>,
        credentials: &Credentials,
        now: SystemTime,
    ) -> Result<HeaderMap, GatewayError> {
        let stamp = amz_date(now);
        let date = stamp.get(..8).unwrap_or_default();
        let host = host_value(request.uri())?;
        let token = credentials.session_token();
        // Every signed header, lower case (as `http` keeps names), values trimmed and joined.
        let mut signed: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(headers.keys_len() + 4);
        for name in headers.keys() {
            if UNSIGNED_HEADERS.contains(&name.as_str()) {
                continue;
            }
            let mut values = headers
                .get_all(name)
                .iter()
                .map(|v| trim_all(v.to_str().unwrap_or_default()));
            let mut joined = values.next().unwrap_or_default();
            for value in values {
                let joined = joined.to_mut();
                joined.push(',');
                joined.push_str(&value);
            }
            signed.push((name.as_str(), joined));
        }
        signed.push(("host", Cow::Borrowed(host)));
        signed.push(("x-amz-content-sha256", Cow::Borrowed(UNSIGNED_PAYLOAD)));
        signed.push(("x-amz-date", Cow::Borrowed(&stamp)));
        if let Some(token) = token {
            signed.push(("x-amz-security-token", Cow::Borrowed(token)));
        }
        let (names, canonical) = canonical_request(request.method(), request.uri().path(), signed);
        let mut scope = String::with_capacity(32 + self.region.len());
        scope.push_str(date);
        scope.push('/');
        scope.push_str(&self.region);
        scope.push_str("/s3/aws4_request");
        let mut to_sign = String::with_capacity(160);
        to_sign.push_str("AWS4-HMAC-SHA256\n");
        to_sign.push_str(&stamp);
        to_sign.push('\n');
        to_sign.push_str(&scope);
        to_sign.push('\n');
        to_sign.push_str(&hex::encode(Sha256::digest(canonical.as_bytes())));
        let signature = self.signature(identity, credentials, now, date, &to_sign)?;
        let mut authorization = String::with_capacity(160 + names.len());
        let _ = write!(
            authorization,
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={names}, Signature={signature}",
            credentials.access_key_id()
        );

        let value = |text: &str| {
            HeaderValue::from_str(text).map_err(|e| GatewayError::Signing(e.to_string()))
        };
        let mut out = HeaderMap::with_capacity(4);
        out.insert(HeaderName::from_static("x-amz-date"), value(&stamp)?);
        out.insert(
            HeaderName::from_static("x-amz-content-sha256"),
            HeaderValue::from_static(UNSIGNED_PAYLOAD),
        );
        if let Some(token) = token {
            let mut token = value(token)?;
            token.set_sensitive(true);
            out.insert(HeaderName::from_static("x-amz-security-token"), token);
        }
        let mut authorization = value(&authorization)?;
        authorization.set_sensitive(true);
        out.insert(AUTHORIZATION, authorization);
        Ok(out)
    }

    /// The hex HMAC of `to_sign` under the signing key of `identity` and `date` (derived
    /// once, then reused until either changes).
    fn signature(
        &self,
        identity: &Arc<Identity>,
        credentials: &Credentials,
        now: SystemTime,
        date: &str,
        to_sign: &str,
    ) -> Result<String, GatewayError> {
        let mut guard = self.day_key.lock().unwrap_or_else(PoisonError::into_inner);
        let key = match guard.as_ref() {
            Some(k) if k.date == date && Arc::ptr_eq(&k.identity, identity) => k,
            _ => guard.insert(DayKey {
                identity: identity.clone(),
                date: date.to_owned(),
                key: v4::generate_signing_key(
                    credentials.secret_access_key(),
                    now,
                    &self.region,
                    "s3",
                )
                .as_ref()
                .to_vec(),
            }),
        };
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.key)
            .map_err(|_| GatewayError::Signing("unusable signing key".into()))?;
        mac.update(to_sign.as_bytes());
        Ok(hex::encode(mac.finalize().into_bytes()))
    }

    /// Signs `request` (built from `url`) with `aws-sigv4`, and gives it `headers`.
    fn with_aws_sigv4(
        &self,
        request: &mut Request<Empty<Bytes>>,
        url: &str,
        headers: HeaderMap,
        identity: &Identity,
        now: SystemTime,
    ) -> Result<(), GatewayError> {
        let signable_headers = headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
        // GET and HEAD carry no body: S3 accepts an unsigned (empty) payload.
        let signable_body = SignableBody::UnsignedPayload;
        let signable = SignableRequest::new(
            request.method().as_str(),
            url,
            signable_headers,
            signable_body,
        )
        .map_err(|e| GatewayError::Signing(e.to_string()))?;
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let params = v4::SigningParams::builder()
            .identity(identity)
            .region(&self.region)
            .name("s3")
            .time(now)
            .settings(settings)
            .build()
            .map_err(|e| GatewayError::Signing(e.to_string()))?
            .into();
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| GatewayError::Signing(e.to_string()))?
            .into_parts();
        *request.headers_mut() = headers;
        instructions.apply_to_request_http1x(request);
        Ok(())
    }
}

/// The signed header names (`a;b;c`) and the canonical request of a bodiless request
/// without a query, from its signed `(name, value)` pairs in any order.
fn canonical_request(
    method: &Method,
    path: &str,
    mut signed: Vec<(&str, Cow<'_, str>)>,
) -> (String, String) {
    signed.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut names = String::with_capacity(signed.len() * 16);
    for (i, (name, _)) in signed.iter().enumerate() {
        if i > 0 {
            names.push(';');
        }
        names.push_str(name);
    }
    let mut canonical = String::with_capacity(512);
    canonical.push_str(method.as_str());
    canonical.push('\n');
    canonical.push_str(path);
    canonical.push_str("\n\n");
    for (name, value) in &signed {
        canonical.push_str(name);
        canonical.push(':');
        canonical.push_str(value);
        canonical.push('\n');
    }
    canonical.push('\n');
    canonical.push_str(&names);
    canonical.push('\n');
    canonical.push_str(UNSIGNED_PAYLOAD);
    (names, canonical)
}

/// `YYYYMMDD'T'HHMMSS'Z'` in UTC, written digit by digit (chrono's formatter was a fifth of
/// signing).
fn amz_date(now: SystemTime) -> String {
    fn push(out: &mut String, value: u32, width: u32) {
        for place in (0..width).rev() {
            let digit = (value / 10u32.pow(place)) % 10;
            out.push(char::from(b'0' + u8::try_from(digit).unwrap_or(0)));
        }
    }
    let time = DateTime::<Utc>::from(now);
    let mut out = String::with_capacity(16);
    push(&mut out, u32::try_from(time.year()).unwrap_or(0), 4);
    push(&mut out, time.month(), 2);
    push(&mut out, time.day(), 2);
    out.push('T');
    push(&mut out, time.hour(), 2);
    push(&mut out, time.minute(), 2);
    push(&mut out, time.second(), 2);
    out.push('Z');
    out
}

/// The Host a request is signed with: the URI's host, and its port unless it is the
/// scheme's default (as `aws-sigv4` and hyper write it).
fn host_value(uri: &Uri) -> Result<&str, GatewayError> {
    let authority = uri
        .authority()
        .ok_or(GatewayError::Internal("upstream url without a host"))?;
    let default_port = matches!(
        (uri.scheme_str(), authority.port_u16()),
        (Some("http"), Some(80)) | (Some("https"), Some(443))
    );
    Ok(if default_port {
        authority.host()
    } else {
        authority.as_str()
    })
}

/// A header value as SigV4 signs it: outer spaces trimmed, runs of spaces made one.
fn trim_all(text: &str) -> Cow<'_, str> {
    let text = text.trim_matches(' ');
    if !text.contains("  ") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if !(c == ' ' && out.ends_with(' ')) {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// S3 URI encoding of a key: every byte but `A-Z a-z 0-9 - _ . ~` and `/` is percent-encoded.
pub fn encode_key(key: &str) -> Cow<'_, str> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let keep = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/');
    if key.bytes().all(keep) {
        return Cow::Borrowed(key);
    }
    let mut out = String::with_capacity(key.len() * 3);
    for b in key.bytes() {
        if keep(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    Cow::Owned(out)
}

/// Keeps only headers whose values can be signed.
trait RetainValidAscii {
    fn retain_valid_ascii(&mut self);
}

impl RetainValidAscii for HeaderMap {
    fn retain_valid_ascii(&mut self) {
        let invalid: Vec<HeaderName> = self
            .iter()
            .filter(|(_, v)| v.to_str().is_err())
            .map(|(k, _)| k.clone())
            .collect();
        for name in invalid {
            self.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn signer(token: Option<&str>) -> Signer {
        let credentials = Credentials::new(
            "AKIDEXAMPLE",
            "secret/key+1",
            token.map(Into::into),
            None,
            "test",
        );
        Signer::new(
            "eu-central-1".into(),
            SigningCredentials::fixed(credentials),
        )
    }

    /// Header lines, sorted.
    type Lines = Vec<(String, Vec<u8>)>;

    fn sorted(headers: &HeaderMap) -> Lines {
        let mut all: Vec<_> = headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect();
        all.sort();
        all
    }

    /// The headers of the request signed directly, and of the same request signed by
    /// `aws-sigv4`.
    fn both(
        signer: &Signer,
        method: Method,
        url: &str,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> (Lines, Lines) {
        let identity = signer.credentials.current().expect("identity");
        let credentials = identity.data::<Credentials>().expect("credentials");
        let request = Request::builder()
            .method(method.clone())
            .uri(url)
            .body(Empty::new())
            .expect("request");
        let mut direct = headers.clone();
        direct.extend(
            signer
                .direct(&request, headers, &identity, credentials, now)
                .expect("signed"),
        );
        let mut reference = Request::builder()
            .method(method)
            .uri(url)
            .body(Empty::new())
            .expect("request");
        signer
            .with_aws_sigv4(&mut reference, url, headers.clone(), &identity, now)
            .expect("signed");
        (sorted(&direct), sorted(reference.headers()))
    }

    #[test]
    fn direct_signatures_equal_aws_sigv4s() {
        let day = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        let mut ranged = HeaderMap::new();
        ranged.insert("range", HeaderValue::from_static("bytes=0-1048575"));
        ranged.insert("if-match", HeaderValue::from_static("\"abc\""));
        let mut odd = HeaderMap::new();
        odd.append(
            "if-none-match",
            HeaderValue::from_static("  \"a\"   ,  \"b\"  "),
        );
        odd.append("if-none-match", HeaderValue::from_static("\"c\""));
        odd.insert("user-agent", HeaderValue::from_static("unsigned/1"));
        odd.insert(
            "if-modified-since",
            HeaderValue::from_static("Tue, 01 Dec 2026 10:00:00 GMT"),
        );
        let cases: [(Method, &str, &HeaderMap); 5] = [
            (
                Method::GET,
                "http://127.0.0.1:19203/eu1-addpipe/acc/rec.mp4",
                &ranged,
            ),
            (
                Method::HEAD,
                "https://eu1-addpipe.s3.eu-central-1.amazonaws.com/",
                &HeaderMap::new(),
            ),
            (
                Method::GET,
                "https://b.example:443/p/a%20b%2Bc_raw.mp4",
                &odd,
            ),
            (Method::GET, "http://b.example:80/k.jpg", &ranged),
            (Method::GET, "http://b.example:9000/k_filmstrip.jpg", &odd),
        ];
        for token in [None, Some("session/token==")] {
            let signer = signer(token);
            // Two days (a new key), and back to the first (the cache follows the date).
            for now in [
                day,
                day + Duration::from_secs(86_400),
                day + Duration::from_secs(7),
            ] {
                for (method, url, headers) in &cases {
                    let (direct, reference) = both(&signer, method.clone(), url, headers, now);
                    assert_eq!(direct, reference, "{method} {url} {token:?}");
                    assert!(direct.iter().any(|(n, _)| n == "authorization"));
                }
            }
        }
    }

    #[test]
    fn requests_are_signed_directly_unless_they_carry_a_query_or_amz_headers() {
        let signer = signer(None);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        let mut headers = HeaderMap::new();
        headers.insert("range", HeaderValue::from_static("bytes=0-9"));
        let url = "http://127.0.0.1:9000/bucket/acc/rec.mp4";
        let signed = signer
            .sign_at(Method::GET, url, headers.clone(), now)
            .expect("signed");
        let (direct, _) = both(&signer, Method::GET, url, &headers, now);
        assert_eq!(sorted(signed.headers()), direct);
        assert_eq!(signed.uri(), url);
        // A query, or a header of the signature's own, goes through aws-sigv4 whole.
        let queried = signer
            .sign_at(
                Method::GET,
                "http://127.0.0.1:9000/bucket?location",
                HeaderMap::new(),
                now,
            )
            .expect("signed");
        assert!(queried.headers().contains_key(AUTHORIZATION));
        let mut own = headers.clone();
        own.insert("x-amz-date", HeaderValue::from_static("20000101T000000Z"));
        let signed = signer.sign_at(Method::GET, url, own, now).expect("signed");
        assert_eq!(signed.headers()["x-amz-date"], "20261130T005320Z");
    }

    #[test]
    fn encodes_keys_like_s3() {
        assert_eq!(encode_key("abc/def_raw.mp4"), "abc/def_raw.mp4");
        assert_eq!(encode_key("a b+c(d)'é/"), "a%20b%2Bc%28d%29%27%C3%A9/");
        assert_eq!(encode_key("~x-y.z"), "~x-y.z");
    }
}
