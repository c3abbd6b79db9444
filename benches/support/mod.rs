//! Shared by the load benchmarks: presigned URLs for reaching a demo backend directly,
//! loopback ports for the servers they start, and one curl download.
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

/// A loopback port free now (bound, then released for a server to take).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits up to 5 s for something to listen on loopback `port`.
pub(crate) fn wait_port(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listens on {port}");
}

/// One curl download of `url` to nowhere, on `core` when given: its status, bytes and seconds.
pub(crate) fn curl_download(core: Option<usize>, url: &str) -> (u16, usize, f64) {
    let mut command = match core {
        Some(core) => {
            let mut c = std::process::Command::new("taskset");
            c.args(["-c", &core.to_string(), "curl"]);
            c
        }
        None => std::process::Command::new("curl"),
    };
    let out = command
        .args(["-s", "--max-time", "60", "-o", "/dev/null", "-w"])
        .args(["%{http_code} %{size_download} %{time_total}", url])
        .output()
        .expect("curl is needed");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut fields = text.split_whitespace();
    let mut next = || fields.next().unwrap_or("0");
    (
        next().parse().unwrap_or(0),
        next().parse().unwrap_or(0),
        next().parse().unwrap_or(0.0),
    )
}
