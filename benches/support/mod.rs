//! Shared by the load benchmarks: presigned URLs for reaching a demo backend directly.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use s3edge::config::RegionConfig;

/// A presigned GET URL (query-string SigV4, one hour) for `key` in a path-style region.
pub(crate) fn presign(region: &RegionConfig, key: &str) -> String {
    let url = format!(
        "{}/{}/{}",
        region.endpoint.to_string().trim_end_matches('/'),
        region.bucket,
        key
    );
    let identity = Credentials::new(
        &region.credentials.access_key_id,
        &region.credentials.secret_access_key,
        None,
        None,
        "bench",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(Duration::from_secs(3600));
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&region.signing_region)
        .name("s3")
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let signable = SignableRequest::new(
        "GET",
        &url,
        std::iter::empty(),
        SignableBody::UnsignedPayload,
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut request = http::Request::get(&url).body(()).unwrap();
    instructions.apply_to_request_http1x(&mut request);
    request.uri().to_string()
}

/// `len` bytes of a repeating pattern (distinct per `modulus`), for test objects.
pub(crate) fn pattern(len: usize, modulus: usize) -> bytes::Bytes {
    (0..len)
        .map(|i| (i % modulus) as u8)
        .collect::<Vec<u8>>()
        .into()
}
