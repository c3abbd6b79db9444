//! SigV4 signing of backend requests with `aws-sigv4`, and S3's URI encoding of keys.

use std::borrow::Cow;
use std::time::SystemTime;

use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::Empty;

use crate::credentials::SigningCredentials;
use crate::error::GatewayError;

/// Signs a region's requests: its signing region and its (refreshable) identity.
#[derive(Debug)]
pub(crate) struct Signer {
    /// SigV4 signing region.
    pub(crate) region: String,
    /// The identity requests are signed with (refreshed in the background when temporary).
    pub(crate) credentials: SigningCredentials,
}

impl Signer {
    /// A signed, bodiless request (GET or HEAD) carrying `headers`.
    pub(crate) fn sign(
        &self,
        method: Method,
        url: &str,
        mut headers: HeaderMap,
    ) -> Result<Request<Empty<Bytes>>, GatewayError> {
        // Only visible-ASCII header values can be signed; anything else is not forwarded.
        headers.retain_valid_ascii();
        let signable_headers = headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
        // GET and HEAD carry no body: S3 accepts an unsigned (empty) payload.
        let signable_body = SignableBody::UnsignedPayload;
        let signable = SignableRequest::new(method.as_str(), url, signable_headers, signable_body)
            .map_err(|e| GatewayError::Signing(e.to_string()))?;
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let identity = self
            .credentials
            .current()
            .ok_or(GatewayError::NoCredentials)?;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| GatewayError::Signing(e.to_string()))?
            .into();
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| GatewayError::Signing(e.to_string()))?
            .into_parts();
        let uri: Uri = url
            .parse()
            .map_err(|_| GatewayError::Internal("unparsable upstream url"))?;
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Empty::new())
            .map_err(|_| GatewayError::Internal("unbuildable upstream request"))?;
        *request.headers_mut() = headers;
        instructions.apply_to_request_http1x(&mut request);
        Ok(request)
    }
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
    use super::*;

    #[test]
    fn encodes_keys_like_s3() {
        assert_eq!(encode_key("abc/def_raw.mp4"), "abc/def_raw.mp4");
        assert_eq!(encode_key("a b+c(d)'é/"), "a%20b%2Bc%28d%29%27%C3%A9/");
        assert_eq!(encode_key("~x-y.z"), "~x-y.z");
    }
}
