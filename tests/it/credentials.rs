//! Credentials from the standard AWS sources, through the real binary with the standard
//! environment variables: a container credential endpoint and the instance metadata
//! service (both served here on loopback, misbehaving on purpose), and a profile file.
//! Failed or non-200 answers are never taken, temporary credentials are refreshed before
//! they expire, and a refresh failure keeps the current credentials in use.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::common::process::{get_fresh, spawn_gateway_env, wait_for_log, write_config};
use crate::common::{Harness, within};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use s3edge::config::{CredentialSource, StaticCredentials};
use s3edge::route::FileKind;

/// One scripted answer of the credential server.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// An error status.
    Status(u16),
    /// 200 with a body that is not credentials.
    NotJson,
    /// 200 with valid credentials expiring this many seconds from now.
    Valid(u64),
}

/// A loopback credential endpoint (container or IMDSv2 style) with a script of answers.
struct CredentialServer {
    addr: SocketAddr,
    script: Arc<Mutex<VecDeque<Answer>>>,
    /// Credential requests seen, with their `Authorization` header.
    seen: Arc<Mutex<Vec<Option<String>>>>,
}

impl CredentialServer {
    async fn start(keys: StaticCredentials, script: &[Answer]) -> CredentialServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (script2, seen2) = (script.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (script, seen, keys) = (script2.clone(), seen2.clone(), keys.clone());
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let reply = answer(&request, &script, &seen, &keys);
                        async move { Ok::<_, Infallible>(reply) }
                    });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        CredentialServer { addr, script, seen }
    }

    fn seen(&self) -> Vec<Option<String>> {
        self.seen.lock().unwrap().clone()
    }

    fn remaining(&self) -> usize {
        self.script.lock().unwrap().len()
    }
}

fn answer(
    request: &Request<hyper::body::Incoming>,
    script: &Mutex<VecDeque<Answer>>,
    seen: &Mutex<Vec<Option<String>>>,
    keys: &StaticCredentials,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    // IMDSv2 plumbing: a session token, then the role name.
    if request.method() == http::Method::PUT && path == "/latest/api/token" {
        let mut response = Response::new(Full::new(Bytes::from_static(b"imds-session-token")));
        response.headers_mut().insert(
            "x-aws-ec2-metadata-token-ttl-seconds",
            http::HeaderValue::from_static("21600"),
        );
        return response;
    }
    if path == "/latest/meta-data/iam/security-credentials/" {
        return Response::new(Full::new(Bytes::from_static(b"edge-role")));
    }
    let auth = request
        .headers()
        .get("authorization")
        .or_else(|| request.headers().get("x-aws-ec2-metadata-token"))
        .map(|v| v.to_str().unwrap().to_string());
    seen.lock().unwrap().push(auth);
    let next = {
        let mut script = script.lock().unwrap();
        if script.len() > 1 {
            script.pop_front().unwrap()
        } else {
            *script.front().unwrap()
        }
    };
    let (status, body) = match next {
        Answer::Status(code) => (code, "{\"message\":\"try later\"}".to_string()),
        Answer::NotJson => (200, "<html>captive portal</html>".to_string()),
        Answer::Valid(secs) => (
            200,
            format!(
                "{{\"Code\":\"Success\",\"Type\":\"AWS-HMAC\",\"AccessKeyId\":\"{}\",\
                 \"SecretAccessKey\":\"{}\",\"Token\":\"session-token-{secs}\",\
                 \"Expiration\":\"{}\",\"LastUpdated\":\"{}\"}}",
                keys.access_key_id,
                keys.secret_access_key,
                rfc3339(SystemTime::now() + Duration::from_secs(secs)),
                rfc3339(SystemTime::now()),
            ),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
}

/// `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, proleptic Gregorian).
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

async fn get_status(addr: SocketAddr, path: &str) -> StatusCode {
    let response = get_fresh(addr, path, &[]).await;
    let status = response.status();
    let _ = within(response.into_body().collect()).await;
    status
}

/// Polls until eu1 answers 200 (the first credentials arrived).
async fn wait_until_served(addr: SocketAddr, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = get_status(addr, path).await;
        if status == StatusCode::OK {
            return;
        }
        assert!(
            status == StatusCode::SERVICE_UNAVAILABLE,
            "before credentials: {status}"
        );
        assert!(Instant::now() < deadline, "no credentials taken");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The config with eu1 on a dynamic credential source.
fn eu1_from(h: &Harness, source: CredentialSource) -> s3edge::config::Config {
    let mut config = h.config.clone();
    let eu1 = config.regions.iter_mut().find(|r| r.name == "eu1").unwrap();
    eu1.credentials = StaticCredentials::none();
    eu1.credential_source = source;
    config
}

#[tokio::test]
async fn container_credentials_skip_bad_answers_refresh_early_and_survive_a_failed_refresh() {
    let h = Harness::start().await;
    let keys = h.config.regions[0].credentials.clone();
    let server = CredentialServer::start(
        keys.clone(),
        &[
            Answer::Status(500),
            Answer::NotJson,
            Answer::Valid(8),
            // Longer than the provider's own retries: the refresh fails, and the 8-second
            // credentials must stay in use until a later try succeeds.
            Answer::Status(503),
            Answer::Status(503),
            Answer::Status(503),
            Answer::Status(503),
            Answer::Status(503),
            Answer::Status(503),
            Answer::Valid(3600),
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &eu1_from(&h, CredentialSource::Container),
        Duration::from_secs(2),
    );
    let uri = format!("http://{}/v2/credentials/edge", server.addr);
    let (mut child, addr, log) = spawn_gateway_env(
        &path,
        &[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri.as_str()),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "container-auth-token"),
        ],
    );
    let snapshot = crate::common::sample_path("eu1", FileKind::Snapshot);
    wait_until_served(addr, &snapshot).await;
    // Until the 8-second credentials are refreshed (at about 6 s, first with a 503), beyond
    // their expiry, and until the refresh finally succeeds, every request is served. The
    // retry cadence is the provider's; a loaded machine only makes it slower, never wrong.
    let started = Instant::now();
    let give_up = started + Duration::from_secs(40);
    while started.elapsed() < Duration::from_secs(10) || server.remaining() > 1 {
        assert!(
            Instant::now() < give_up,
            "the refresh never reached the valid answer"
        );
        assert_eq!(get_status(addr, &snapshot).await, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(server.remaining(), 1, "the whole script was used");
    let seen = server.seen();
    assert!(seen.len() >= 5, "{seen:?}");
    assert!(
        seen.iter()
            .all(|a| a.as_deref() == Some("container-auth-token")),
        "{seen:?}"
    );
    let line = wait_for_log(&log, "credential refresh failed");
    assert!(!line.contains(&keys.secret_access_key), "{line}");
    assert!(!line.contains("session-token"), "{line}");
    child.kill().unwrap();
    let _ = child.wait();
}

#[tokio::test]
async fn instance_metadata_credentials_are_used() {
    let h = Harness::start().await;
    let keys = h.config.regions[0].credentials.clone();
    let server = CredentialServer::start(keys, &[Answer::Valid(3600)]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &eu1_from(&h, CredentialSource::Instance),
        Duration::from_secs(2),
    );
    let endpoint = format!("http://{}", server.addr);
    let (mut child, addr, _log) = spawn_gateway_env(
        &path,
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", endpoint.as_str())],
    );

    wait_until_served(
        addr,
        &crate::common::sample_path("eu1", FileKind::Processed),
    )
    .await;
    assert_eq!(
        server.seen().first().cloned().flatten().as_deref(),
        Some("imds-session-token"),
        "IMDSv2: the session token is sent"
    );
    child.kill().unwrap();
    let _ = child.wait();
}

#[tokio::test]
async fn a_named_profile_from_the_shared_credentials_file() {
    let h = Harness::start().await;
    let keys = &h.config.regions[0].credentials;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials");
    std::fs::write(
        &file,
        format!(
            "[default]\naws_access_key_id = WRONG\naws_secret_access_key = wrong\n\n\
             [edge]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            keys.access_key_id, keys.secret_access_key
        ),
    )
    .unwrap();
    let path = write_config(
        dir.path(),
        &eu1_from(
            &h,
            CredentialSource::Profile {
                profile: Some("edge".into()),
            },
        ),
        Duration::from_secs(2),
    );
    let file = file.display().to_string();
    let missing = dir.path().join("no-config").display().to_string();
    let (mut child, addr, _log) = spawn_gateway_env(
        &path,
        &[
            ("AWS_SHARED_CREDENTIALS_FILE", file.as_str()),
            ("AWS_CONFIG_FILE", missing.as_str()),
        ],
    );
    wait_until_served(addr, &crate::common::sample_path("eu1", FileKind::Raw)).await;
    child.kill().unwrap();
    let _ = child.wait();
}
