//! The push service against real S3 backends (s3s-fs in process): every object lands with
//! its key, bytes, storage class, encryption and Content-Type per provider, multipart above the
//! threshold; opt-out and customer destinations; faults follow the schedule to `failed`, files
//! are kept until retention ends, a manual push heals; webhooks are signed and retried; bad
//! input is refused with a JSON error and changes nothing.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use s3edge::config::{Config, KeepFailed, PushConfig};
use s3edge::route::FileKind;
use s3edge_testbed::Backends;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::common::faults::{Fault, FaultProxy};
use crate::common::within;

/// Backends with their buckets, and the push service (no gateway listener) in front.
pub(crate) struct PushHarness {
    pub backends: Backends,
    pub config: Config,
    pub api: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    pub dir: tempfile::TempDir,
}

/// The four backends under `dir`, each with its region's bucket.
pub(crate) async fn backends_with_buckets(dir: &std::path::Path) -> Backends {
    let backends = within(Backends::start(&dir.join("backends")))
        .await
        .unwrap();
    for region in &backends.regions {
        within(s3edge_testbed::writer(region).ensure_bucket())
            .await
            .unwrap();
    }
    backends
}

/// `[push]` for tests: sub-second schedule, small multipart threshold.
pub(crate) fn test_push_config(spool: std::path::PathBuf) -> PushConfig {
    PushConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: None,
        spool,
        retry_delays: vec![Duration::from_millis(100); 4],
        keep_failed: KeepFailed::For(Duration::from_secs(2)),
        retention_timezone: chrono_tz::Europe::Bucharest,
        day_length: None,
        edge_url: Some("https://edge.test".into()),
        concurrency: 4,
        multipart_threshold: 5 * 1024 * 1024,
        part_size: 5 * 1024 * 1024,
        max_file_size: 64 * 1024 * 1024,
        webhook_retry_delays: vec![Duration::from_millis(100); 3],
        webhook_timeout: Duration::from_secs(2),
        edges: Vec::new(),
        sweep_every: Duration::from_secs(3600),
        database: crate::common::pg::test_database(),
    }
}

impl PushHarness {
    pub(crate) async fn start(adjust: impl FnOnce(&mut Config)) -> PushHarness {
        let dir = tempfile::tempdir().unwrap();
        let backends = backends_with_buckets(dir.path()).await;
        let mut config =
            Config::for_regions(backends.regions.clone(), "127.0.0.1:0".parse().unwrap());
        config.http_listeners.clear();
        config.push = Some(test_push_config(dir.path().join("spool")));
        adjust(&mut config);
        let (api, stop, task) = serve_push(&config).await;
        PushHarness {
            backends,
            config,
            api,
            client: Client::builder(TokioExecutor::new()).build_http(),
            stop: Some(stop),
            task: Some(task),
            dir,
        }
    }

    /// Stops the service and starts it again on the same spool (a clean restart).
    pub(crate) async fn restart(&mut self) {
        self.shutdown().await;
        let (api, stop, task) = serve_push(&self.config).await;
        self.api = api;
        self.stop = Some(stop);
        self.task = Some(task);
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            within(task).await.unwrap();
        }
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.api));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = within(
            self.client
                .request(request.body(Full::new(body.into())).unwrap()),
        )
        .await
        .unwrap();
        let status = response.status();
        let bytes = within(response.into_body().collect())
            .await
            .unwrap()
            .to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    pub(crate) async fn put_env(&self, env: &str, value: Value) -> (StatusCode, Value) {
        self.call(
            Method::PUT,
            &format!("/v1/environments/{env}"),
            value.to_string(),
            &[],
        )
        .await
    }

    pub(crate) async fn put_file(&self, env: &str, file: &str, body: Bytes) -> StatusCode {
        self.call(
            Method::PUT,
            &format!("/v1/recordings/{env}/{file}"),
            body,
            &[],
        )
        .await
        .0
    }

    pub(crate) async fn commit(&self, env: &str, name: &str) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            &format!("/v1/recordings/{env}/{name}/commit"),
            Bytes::new(),
            &[],
        )
        .await
    }

    pub(crate) async fn status(&self, env: &str, name: &str) -> (StatusCode, Value) {
        self.call(
            Method::GET,
            &format!("/v1/recordings/{env}/{name}"),
            Bytes::new(),
            &[],
        )
        .await
    }

    /// Waits until the recording reaches `state`, failing after 30 s.
    pub(crate) async fn wait_for(&self, env: &str, name: &str, state: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (code, status) = self.status(env, name).await;
            if code == StatusCode::OK && status["state"] == state {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{env}/{name} never became {state}: {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Uploads the four files of a recording and commits it.
    pub(crate) async fn push_recording(&self, env: &str, name: &str, files: &[(FileKind, Bytes)]) {
        for (kind, body) in files {
            let file = format!("{name}{}", kind.suffix());
            assert_eq!(
                self.put_file(env, &file, body.clone()).await,
                StatusCode::CREATED,
                "{file}"
            );
        }
        let (code, status) = self.commit(env, name).await;
        assert_eq!(code, StatusCode::ACCEPTED, "{status}");
    }

    pub(crate) fn backend(&self, region: &str) -> &s3edge_testbed::backend::S3Backend {
        let i = self
            .backends
            .regions
            .iter()
            .position(|r| r.name == region)
            .unwrap();
        &self.backends.backends[i]
    }

    pub(crate) fn spool_files(&self, env: &str, name: &str) -> usize {
        std::fs::read_dir(self.dir.path().join("spool/files").join(env).join(name))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for PushHarness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub(crate) async fn serve_push(
    config: &Config,
) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let bound = s3edge::Bound {
        listeners: Vec::new(),
        certs: None,
        admin: None,
        push: Some(listener),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let config = config.clone();
    let task = tokio::spawn(async move {
        s3edge::run(&config, bound, None, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (api, stop, task)
}

/// Distinct bytes per file.
pub(crate) fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

/// A recording: small mp4, jpg, filmstrip, and a raw file of `raw_len` bytes.
pub(crate) fn recording(raw_len: usize) -> Vec<(FileKind, Bytes)> {
    vec![
        (FileKind::Processed, pattern(300 * 1024, 1)),
        (FileKind::Snapshot, pattern(20 * 1024, 2)),
        (FileKind::Filmstrip, pattern(60 * 1024, 3)),
        (FileKind::Raw, pattern(raw_len, 4)),
    ]
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test]
async fn every_object_lands_with_the_policy_of_its_provider() {
    let h = PushHarness::start(|_| {}).await;
    for (env, region) in [("env-aws", "eu1"), ("env-scw", "eu2")] {
        let (code, _) = h
            .put_env(env, json!({"account": "ACC1", "region": region}))
            .await;
        assert_eq!(code, StatusCode::OK);
        // The raw file is over the 5 MiB threshold: a multipart upload of 3 parts.
        let files = recording(12 * 1024 * 1024 + 17);
        h.push_recording(env, "rec-1", &files).await;
        let status = h.wait_for(env, "rec-1", "pushed").await;
        assert_eq!(status["destinations"][0]["name"], "complimentary");
        assert_eq!(status["destinations"][0]["attempts"], 1);
        assert_eq!(
            status["urls"]["edge"][".mp4"],
            format!("https://edge.test/{region}/ACC1/rec-1.mp4")
        );
        let backend = h.backend(region);
        let bucket = format!("{region}-addpipe");
        for (kind, body) in &files {
            let key = format!("ACC1/rec-1{}", kind.suffix());
            let stored = backend.object(&bucket, &key).expect("object stored");
            assert_eq!(sha256_hex(&stored), sha256_hex(body), "{key}");
            let file = status["files"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["file"] == format!("rec-1{}", kind.suffix()))
                .unwrap();
            assert_eq!(file["sha256"], sha256_hex(body));
            let policy = backend
                .stored_policy(&bucket, &key)
                .expect("policy recorded");
            let (class, sse) = match (region, kind) {
                ("eu2", _) => ("STANDARD", None),
                (_, FileKind::Processed) => ("INTELLIGENT_TIERING", Some("AES256")),
                (_, FileKind::Raw) => ("STANDARD_IA", Some("AES256")),
                _ => ("STANDARD", Some("AES256")),
            };
            assert_eq!(policy.storage_class, class, "{key}");
            assert_eq!(policy.sse.as_deref(), sse, "{key}");
        }
        assert_eq!(backend.open_multipart_uploads(), 0);
    }
    // Content-Type, read back through the gateway on the same buckets.
    let mut gateway = h.config.clone();
    gateway.http_listeners = vec!["127.0.0.1:0".parse().unwrap()];
    gateway.push = None;
    let served = crate::common::serve(&gateway, None).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<Bytes>>();
    for (kind, ty) in [
        (FileKind::Processed, "video/mp4"),
        (FileKind::Snapshot, "image/jpeg"),
        (FileKind::Filmstrip, "image/jpeg"),
        (FileKind::Raw, "video/mp4"),
    ] {
        let url = format!("http://{}/eu1/ACC1/rec-1{}", served.addr, kind.suffix());
        let response = within(client.get(url.parse().unwrap())).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], ty);
    }
    // Pushed everywhere: the spool keeps nothing of it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.spool_files("env-aws", "rec-1") > 0 {
        assert!(tokio::time::Instant::now() < deadline, "spool not released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn opt_out_and_customer_destinations() {
    let h = PushHarness::start(|_| {}).await;
    // The customer's destination is another S3 server (us2's backend, its own bucket).
    let us2 = h
        .backends
        .regions
        .iter()
        .find(|r| r.name == "us2")
        .unwrap()
        .clone();
    let theirs = s3edge_testbed::S3Client::new(
        us2.endpoint.to_string().trim_end_matches('/'),
        "customer-bucket",
        &us2.signing_region,
        &us2.credentials.access_key_id,
        &us2.credentials.secret_access_key,
    );
    within(theirs.ensure_bucket()).await.unwrap();
    let (code, env) = h
        .put_env(
            "optout",
            json!({
                "account": "ACC2",
                "region": "eu1",
                "complimentary_storage": false,
                "destinations": [{
                    "name": "mine",
                    "endpoint": us2.endpoint.to_string().trim_end_matches('/'),
                    "bucket": "customer-bucket",
                    "region": us2.signing_region,
                    "access_key_id": us2.credentials.access_key_id,
                    "secret_access_key": us2.credentials.secret_access_key,
                    "key_prefix": "videos/",
                    "storage_class": "STANDARD_IA"
                }]
            }),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{env}");
    // Secrets never come back.
    assert_eq!(env["destinations"][0]["secret_access_key"], "<redacted>");
    let (_, got) = h
        .call(Method::GET, "/v1/environments/optout", Bytes::new(), &[])
        .await;
    assert_eq!(got["destinations"][0]["secret_access_key"], "<redacted>");
    assert!(!got.to_string().contains(&us2.credentials.secret_access_key));

    let files = recording(100 * 1024);
    h.push_recording("optout", "rec-2", &files).await;
    let status = h.wait_for("optout", "rec-2", "pushed").await;
    let destinations = status["destinations"].as_array().unwrap();
    assert_eq!(destinations.len(), 1, "{status}");
    assert_eq!(destinations[0]["name"], "mine");
    let backend = h.backend("us2");
    for (kind, body) in &files {
        let key = format!("videos/ACC2/rec-2{}", kind.suffix());
        assert_eq!(
            backend
                .object("customer-bucket", &key)
                .map(|b| sha256_hex(&b)),
            Some(sha256_hex(body))
        );
        assert_eq!(
            backend
                .stored_policy("customer-bucket", &key)
                .unwrap()
                .storage_class,
            "STANDARD_IA"
        );
        // Nothing went to our bucket.
        assert!(
            h.backend("eu1")
                .object("eu1-addpipe", &format!("ACC2/rec-2{}", kind.suffix()))
                .is_none()
        );
    }

    // No destination at all: skipped, files dropped at once.
    h.put_env(
        "nothing",
        json!({"account": "ACC3", "region": "eu1", "complimentary_storage": false}),
    )
    .await;
    assert_eq!(
        h.put_file("nothing", "rec-3.jpg", pattern(1000, 9)).await,
        StatusCode::CREATED
    );
    let (code, status) = h.commit("nothing", "rec-3").await;
    assert_eq!(code, StatusCode::ACCEPTED);
    assert_eq!(status["state"], "skipped");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.spool_files("nothing", "rec-3") > 0 {
        assert!(tokio::time::Instant::now() < deadline, "skipped files kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn faults_follow_the_schedule_then_fail_keep_files_and_a_manual_push_heals() {
    let proxy = Arc::new(Mutex::new(None::<FaultProxy>));
    let slot = proxy.clone();
    // An edge: its admin listener is bound first, so the push service can be told of it.
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_url = format!("http://{}", admin.local_addr().unwrap());
    let edge_admin = admin_url.clone();
    let mut h = PushHarness::start(move |c| {
        let eu1 = c.regions.iter_mut().find(|r| r.name == "eu1").unwrap();
        let backend = crate::common::endpoint_addr(eu1);
        let p = FaultProxy::start(backend);
        eu1.endpoint = p.endpoint();
        *slot.lock().unwrap() = Some(p);
        let push = c.push.as_mut().unwrap();
        push.keep_failed = KeepFailed::For(Duration::from_secs(3));
        push.edges = vec![s3edge::config::EdgeConfig {
            admin: edge_admin,
            token: None,
        }];
    })
    .await;
    let proxy = proxy.lock().unwrap().take().unwrap();
    // The edge reads the bucket directly (not through the faulty proxy).
    let (edge, _admin_stop) = crate::delete::start_edge(&h, admin).await;
    let edge_client =
        Client::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<Bytes>>();
    let edge_get = |file: &'static str| {
        let url = format!("http://{}/eu1/ACC4/{file}", edge.addr);
        let client = edge_client.clone();
        async move {
            let response = within(client.get(url.parse().unwrap())).await.unwrap();
            let cache = response
                .headers()
                .get("cache-status")
                .map(|v| v.to_str().unwrap().to_string());
            (response.status(), cache)
        }
    };
    proxy.set(Fault::Status(503));
    h.put_env("faulty", json!({"account": "ACC4", "region": "eu1"}))
        .await;
    let files = recording(64 * 1024);
    h.push_recording("faulty", "rec-4", &files).await;
    let failed = h.wait_for("faulty", "rec-4", "failed").await;
    let d = &failed["destinations"][0];
    assert_eq!(d["attempts"], 5, "{failed}");
    assert_eq!(d["state"], "failed");
    assert!(
        d["last_error"].as_str().unwrap().starts_with("SlowDown"),
        "the S3 error code is recorded: {failed}"
    );
    assert!(failed["keep_until"].is_string());
    // Kept for a manual push.
    assert_eq!(h.spool_files("faulty", "rec-4"), 4);
    let (code, _) = h
        .call(
            Method::GET,
            "/v1/recordings?state=failed&env=faulty",
            Bytes::new(),
            &[],
        )
        .await;
    assert_eq!(code, StatusCode::OK);

    // A player asks the edge meanwhile: a 404, remembered by its negative cache.
    assert_eq!(edge_get("rec-4.jpg").await.0, StatusCode::NOT_FOUND);
    let (status, cache) = edge_get("rec-4.jpg").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        cache.unwrap_or_default().contains("hit"),
        "the 404 is cached"
    );

    // The backend heals; a manual push starts a fresh series and succeeds.
    proxy.set(Fault::Pass);
    let (code, _) = h
        .call(
            Method::POST,
            "/v1/recordings/faulty/rec-4/push",
            Bytes::new(),
            &[],
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED);
    let pushed = h.wait_for("faulty", "rec-4", "pushed").await;
    assert_eq!(pushed["destinations"][0]["attempts"], 1);
    // The manual re-push purged the edge: the file is served at once, not after the 404's TTL.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _) = edge_get("rec-4.jpg").await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the edge kept its 404"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A second manual push of a pushed recording is refused.
    let (code, body) = h
        .call(
            Method::POST,
            "/v1/recordings/faulty/rec-4/push",
            Bytes::new(),
            &[],
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");

    // Another failure, left alone: the files go when retention ends, then no manual push.
    proxy.set(Fault::Status(403));
    h.push_recording("faulty", "rec-5", &files).await;
    let failed = h.wait_for("faulty", "rec-5", "failed").await;
    // A permanent error still follows the schedule (a fixed permission heals the next
    // attempt), and its code is recorded.
    assert_eq!(failed["destinations"][0]["attempts"], 5, "{failed}");
    assert!(
        failed["destinations"][0]["last_error"]
            .as_str()
            .unwrap()
            .starts_with("AccessDenied"),
        "{failed}"
    );
    // Restarting keeps everything.
    h.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while h.spool_files("faulty", "rec-5") > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "files kept past retention"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.set(Fault::Pass);
    let (code, body) = h
        .call(
            Method::POST,
            "/v1/recordings/faulty/rec-5/push",
            Bytes::new(),
            &[],
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "conflict");
}

#[tokio::test]
async fn webhooks_are_signed_and_retried_until_a_2xx() {
    // A receiver that fails the first two deliveries.
    let seen: Arc<Mutex<Vec<(http::HeaderMap, Bytes)>>> = Arc::default();
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver_addr = receiver.local_addr().unwrap();
    {
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = receiver.accept().await else {
                    continue;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: Request<hyper::body::Incoming>| {
                            let seen = seen.clone();
                            async move {
                                let (parts, body) = request.into_parts();
                                let body = body.collect().await.unwrap().to_bytes();
                                let n = {
                                    let mut seen = seen.lock().unwrap();
                                    seen.push((parts.headers, body));
                                    seen.len()
                                };
                                let status = if n <= 2 { 500 } else { 204 };
                                Ok::<_, std::convert::Infallible>(
                                    http::Response::builder()
                                        .status(status)
                                        .body(http_body_util::Empty::<Bytes>::new())
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    }
    let h = PushHarness::start(|_| {}).await;
    let secret = "a-webhook-secret-of-the-customer";
    h.put_env(
        "hooked",
        json!({"account": "ACC5", "region": "us1", "webhook": {"url": format!("http://{receiver_addr}/hook"), "secret": secret}}),
    )
    .await;
    h.push_recording("hooked", "rec-6", &recording(10 * 1024))
        .await;
    h.wait_for("hooked", "rec-6", "pushed").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while seen.lock().unwrap().len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "webhook not retried to success"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        3,
        "delivered once after two failures, then never again"
    );
    let ids: Vec<_> = seen
        .iter()
        .map(|(h, _)| h["x-s3edge-delivery"].clone())
        .collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one delivery id across retries"
    );
    for (headers, body) in &seen {
        assert_eq!(headers["x-s3edge-event"], "video_copied_s3");
        let expected = s3edge::push::webhook::signature(secret, body);
        assert_eq!(headers["x-s3edge-signature"], expected.as_str());
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["event"], "video_copied_s3");
        assert_eq!(v["env"], "hooked");
        assert_eq!(v["account"], "ACC5");
        assert_eq!(v["name"], "rec-6");
        assert_eq!(v["region"], "us1");
        assert_eq!(v["destination"], "complimentary");
        assert_eq!(
            v["urls"]["origin"][".jpg"],
            "https://us1-addpipe.s3-us-west-1.amazonaws.com/ACC5/rec-6.jpg"
        );
        assert!(v["pushed_at"].as_str().unwrap().ends_with('Z'));
    }
}

#[tokio::test]
async fn bad_input_is_a_clear_json_4xx_and_changes_nothing() {
    let h = PushHarness::start(|c| {
        c.push.as_mut().unwrap().max_file_size = 100 * 1024;
    })
    .await;
    type Case = (
        Method,
        String,
        Bytes,
        Vec<(&'static str, &'static str)>,
        StatusCode,
    );
    let cases: Vec<Case> = vec![
        (
            Method::PUT,
            "/v1/environments/bad env".into(),
            Bytes::from("{}"),
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/v1/environments/e1".into(),
            Bytes::from("not json"),
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/v1/environments/e1".into(),
            Bytes::from(r#"{"account":"A","region":"xx9"}"#),
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/v1/environments/e1".into(),
            Bytes::from(r#"{"account":"A","region":"eu1","colour":1}"#),
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/v1/environments/e1".into(),
            Bytes::from(r#"{"account":"A/B","region":"eu1"}"#),
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/v1/recordings/nope/rec.mp4".into(),
            Bytes::from("x"),
            vec![],
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            "/v1/recordings/nope/rec/commit".into(),
            Bytes::new(),
            vec![],
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/v1/recordings?state=lost".into(),
            Bytes::new(),
            vec![],
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::DELETE,
            "/v1/environments/e1".into(),
            Bytes::new(),
            vec![],
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (method, path, body, headers, status) in cases {
        let (code, value) = h
            .call(method.clone(), &path.replace(' ', "%20"), body, &headers)
            .await;
        assert_eq!(code, status, "{method} {path}: {value}");
        assert!(value["error"].is_string(), "{method} {path}: {value}");
    }
    assert_eq!(
        h.put_env("e1", json!({"account": "A", "region": "eu1"}))
            .await
            .0,
        StatusCode::OK
    );
    // Not one of the four files, or a bad name.
    for file in ["rec.txt", "re.c.mp4", "rec.MP4", "_raw.mp4"] {
        assert_eq!(
            h.put_file("e1", file, pattern(10, 1)).await,
            StatusCode::BAD_REQUEST,
            "{file}"
        );
    }
    // Too large: 413, nothing kept.
    assert_eq!(
        h.put_file("e1", "big.mp4", pattern(200 * 1024, 1)).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(h.spool_files("e1", "big"), 0);
    // A Content-Digest that does not match: 400, nothing kept.
    let (code, value) = h
        .call(
            Method::PUT,
            "/v1/recordings/e1/dig.jpg",
            pattern(1000, 1),
            &[(
                "content-digest",
                "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
            )],
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{value}");
    assert_eq!(h.spool_files("e1", "dig"), 0);
    // A matching one is accepted.
    let body = pattern(1000, 1);
    let digest = {
        use base64::Engine as _;
        use sha2::Digest;
        format!(
            "sha-256=:{}:",
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&body))
        )
    };
    let (code, _) = h
        .call(
            Method::PUT,
            "/v1/recordings/e1/dig.jpg",
            body,
            &[("content-digest", digest.as_str())],
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    // Zero files: 400.
    let (code, value) = h.commit("e1", "empty").await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{value}");
    // Re-PUT after commit: 409.
    assert_eq!(h.commit("e1", "dig").await.0, StatusCode::ACCEPTED);
    assert_eq!(
        h.put_file("e1", "dig.jpg", pattern(10, 2)).await,
        StatusCode::CONFLICT
    );
}

#[tokio::test]
async fn a_token_is_required_when_configured() {
    let h = PushHarness::start(|c| {
        c.push.as_mut().unwrap().token = Some("push-token-0123456789".into());
    })
    .await;
    for auth in [None, Some("Bearer wrong-token-0123456789")] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
        let (code, value) = h
            .call(
                Method::PUT,
                "/v1/environments/t1",
                json!({"account": "A", "region": "eu1"}).to_string(),
                &headers,
            )
            .await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert_eq!(value["error"], "unauthorized");
    }
    let (code, _) = h
        .call(
            Method::GET,
            "/v1/environments/t1",
            Bytes::new(),
            &[("authorization", "Bearer push-token-0123456789")],
        )
        .await;
    assert_eq!(
        code,
        StatusCode::NOT_FOUND,
        "the refused PUT changed nothing"
    );
}

#[tokio::test]
async fn a_spool_path_with_url_characters_opens_its_own_database() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool #1?a=b%20c");
    std::fs::create_dir_all(&spool).unwrap();
    let store = s3edge::push::store::Store::open(&spool, None, "node")
        .await
        .unwrap();
    let environment: s3edge::push::model::Environment =
        serde_json::from_value(json!({"account": "ACC", "region": "eu1"})).unwrap();
    store.put_environment("e", &environment, 0).await.unwrap();
    assert_eq!(
        store.environment("e").await.unwrap().unwrap().account,
        "ACC"
    );
    assert!(
        spool.join("push.db").exists(),
        "the database is in the spool"
    );
}
