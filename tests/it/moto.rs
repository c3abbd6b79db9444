//! The same user-facing scenarios against a second, independent S3 implementation: moto's
//! server mode (`python3 -m moto.server`, installed by `.ci/setup`). Moto checks no
//! signatures, so these tests are about HTTP semantics (ranges, conditionals, 404s, the
//! cache, retries), not signing; the s3s tests cover signing. The gateway must not depend
//! on one server's quirks.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::faults::{Fault, FaultProxy};
use crate::common::{Reply, within};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use s3edge::config::{Addressing, Config, RegionConfig, StaticCredentials};
use s3edge::route::FileKind;
use s3edge_testbed::{REGIONS, SAMPLE_ACCOUNT};

/// A moto server on a loopback port of its choosing; killed on drop.
struct Moto {
    child: Child,
    addr: SocketAddr,
}

impl Moto {
    fn start() -> Moto {
        let mut child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 not found: run `bash .ci/setup`");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("Running on http://").nth(1) {
                    let _ = tx.send(rest.trim().to_string());
                }
                if line.contains("No module named moto") {
                    let _ = tx.send(String::new());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("moto did not start: run `bash .ci/setup`");
        assert!(
            !addr.is_empty(),
            "moto is not installed: run `bash .ci/setup`"
        );
        Moto {
            child,
            addr: addr.parse().unwrap(),
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway whose four regions live on one moto server (one bucket each).
struct MotoGateway {
    addr: SocketAddr,
    client: Client<HttpConnector, Empty<Bytes>>,
    _server: crate::common::Served,
}

fn moto_regions(endpoint: SocketAddr) -> Vec<RegionConfig> {
    REGIONS
        .iter()
        .map(|spec| RegionConfig {
            name: spec.name.into(),
            hosts: vec![spec.host.into()],
            endpoint: format!("http://{endpoint}").parse().unwrap(),
            bucket: spec.bucket.into(),
            signing_region: spec.signing_region.into(),
            addressing: Addressing::Path,
            key_prefix: String::new(),
            provider: spec.provider,
            connect_to: None,
            credentials: StaticCredentials {
                access_key_id: "testing".into(),
                secret_access_key: "testing".into(),
                session_token: None,
            },
            credential_source: Default::default(),
            push_credentials: None,
            timeouts: None,
        })
        .collect()
}

impl MotoGateway {
    /// Uploads the sample set to `moto` (directly) and starts a gateway in front of
    /// `endpoint` (moto itself, or a fault proxy in front of it).
    async fn start(moto: &Moto, endpoint: SocketAddr, adjust: impl FnOnce(&mut Config)) -> Self {
        let uploader = Config::for_regions(moto_regions(moto.addr), "127.0.0.1:0".parse().unwrap());
        within(s3edge_testbed::upload_sample(&uploader.regions))
            .await
            .unwrap();
        let mut config =
            Config::for_regions(moto_regions(endpoint), "127.0.0.1:0".parse().unwrap());
        adjust(&mut config);
        let server = crate::common::serve(&config, None).await;
        MotoGateway {
            addr: server.addr,
            client: Client::builder(TokioExecutor::new()).build_http(),
            _server: server,
        }
    }

    async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let response = within(self.client.request(builder.body(Empty::new()).unwrap()))
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: within(body.collect()).await.unwrap().to_bytes(),
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::GET, path, headers).await
    }
}

fn path(region: &str, kind: FileKind) -> String {
    crate::common::sample_path(region, kind)
}

#[tokio::test]
async fn whole_files_ranges_and_heads_from_moto() {
    let moto = Moto::start();
    for cache in [false, true] {
        let gw = MotoGateway::start(&moto, moto.addr, |c| c.cache.enabled = cache).await;
        for region in ["eu1", "eu2", "us1", "us2"] {
            for kind in FileKind::ALL {
                let reply = gw.get(&path(region, kind), &[]).await;
                assert_eq!(
                    reply.status,
                    StatusCode::OK,
                    "{region} {kind:?} cache {cache}"
                );
                assert!(reply.body == s3edge_testbed::sample_file(kind));
                assert_eq!(reply.header("content-type"), Some(kind.content_type()));
                assert_eq!(reply.header("accept-ranges"), Some("bytes"));
            }
        }
        let whole = s3edge_testbed::sample_file(FileKind::Processed);
        let len = whole.len();
        let p = path("eu1", FileKind::Processed);
        let range = gw.get(&p, &[("range", "bytes=100-1123")]).await;
        assert_eq!(range.status, StatusCode::PARTIAL_CONTENT, "cache {cache}");
        assert_eq!(
            range.header("content-range"),
            Some(format!("bytes 100-1123/{len}").as_str())
        );
        assert_eq!(range.body, whole.slice(100..1124));
        let suffix = gw.get(&p, &[("range", "bytes=-500")]).await;
        assert_eq!(suffix.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(suffix.body, whole.slice(len - 500..));
        let beyond = gw.get(&p, &[("range", &format!("bytes={len}-"))]).await;
        assert_eq!(
            beyond.status,
            StatusCode::RANGE_NOT_SATISFIABLE,
            "cache {cache}"
        );
        let head = gw.send(Method::HEAD, &p, &[]).await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(
            head.header("content-length"),
            Some(len.to_string().as_str())
        );
        assert!(head.body.is_empty());
    }
}

#[tokio::test]
async fn conditionals_and_missing_files_from_moto() {
    let moto = Moto::start();
    for cache in [false, true] {
        let gw = MotoGateway::start(&moto, moto.addr, |c| c.cache.enabled = cache).await;
        let p = path("us2", FileKind::Snapshot);
        let first = gw.get(&p, &[]).await;
        let etag = first.header("etag").unwrap().to_string();
        let not_modified = gw.get(&p, &[("if-none-match", &etag)]).await;
        assert_eq!(
            not_modified.status,
            StatusCode::NOT_MODIFIED,
            "cache {cache}"
        );
        assert!(not_modified.body.is_empty());
        let stale_range = gw
            .get(
                &p,
                &[("range", "bytes=0-9"), ("if-range", "\"not-the-etag\"")],
            )
            .await;
        assert_eq!(
            stale_range.status,
            StatusCode::OK,
            "If-Range mismatch: whole file"
        );
        assert!(stale_range.body == s3edge_testbed::sample_file(FileKind::Snapshot));
        let fresh_range = gw
            .get(&p, &[("range", "bytes=0-9"), ("if-range", &etag)])
            .await;
        assert_eq!(
            fresh_range.status,
            StatusCode::PARTIAL_CONTENT,
            "cache {cache}"
        );
        assert_eq!(fresh_range.body.len(), 10);
        let missing = gw
            .get(&format!("/us2/{SAMPLE_ACCOUNT}/no-such-recording.mp4"), &[])
            .await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND, "cache {cache}");
        assert_eq!(&missing.body[..], b"not found\n");
        let cors = gw.get(&p, &[("origin", "https://player.example")]).await;
        assert_eq!(cors.header("access-control-allow-origin"), Some("*"));
    }
}

#[tokio::test]
async fn the_cache_answers_a_second_request_and_503s_are_retried_with_moto() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.addr);
    let gw = MotoGateway::start(&moto, proxy.addr, |c| {
        c.retry.backoff = Duration::from_millis(5);
    })
    .await;
    let p = path("eu2", FileKind::Raw);
    proxy.script(&[Fault::Status(503)], Fault::Pass);
    let first = gw.get(&p, &[]).await;
    assert_eq!(first.status, StatusCode::OK, "the 503 was retried");
    assert!(first.body == s3edge_testbed::sample_file(FileKind::Raw));
    let asked = proxy.connections();
    let second = gw.get(&p, &[]).await;
    assert_eq!(second.status, StatusCode::OK);
    assert!(second.body == first.body);
    assert!(
        second.header("cache-status").unwrap().contains("hit"),
        "{:?}",
        second.header("cache-status")
    );
    assert_eq!(proxy.connections(), asked, "a hit does not ask moto");
    let _: HeaderMap = second.headers;
}

/// The push service against moto, the second implementation: every object lands with its
/// bytes, storage class, encryption and Content-Type per provider, multipart above the
/// threshold, and no multipart upload is left open.
#[tokio::test]
async fn push_to_moto_follows_the_policy() {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let moto = Moto::start();
    let regions = moto_regions(moto.addr);
    let dir = tempfile::tempdir().unwrap();
    for region in &regions {
        within(s3edge_testbed::writer(region).ensure_bucket())
            .await
            .unwrap();
    }
    let mut config = Config::for_regions(regions.clone(), "127.0.0.1:0".parse().unwrap());
    config.http_listeners.clear();
    config.push = Some(crate::push::test_push_config(dir.path().join("spool")));
    let (api, _stop, _task) = crate::push::serve_push(&config).await;
    let client = s3edge::push::client::PushClient::new(&format!("http://{api}"), None);
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(format!("http://{}", moto.addr))
            .force_path_style(true)
            .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
            .http_client(aws_smithy_http_client::Builder::new().build_http())
            .build(),
    );
    let files = crate::push::recording(11 * 1024 * 1024);
    let upload_dir = tempfile::tempdir().unwrap();
    for (env, region) in [("moto-aws", "eu1"), ("moto-scw", "eu2")] {
        let body = serde_json::json!({"account": "MOTO", "region": region}).to_string();
        let reply =
            within(client.call(Method::PUT, &format!("/v1/environments/{env}"), body.into()))
                .await
                .unwrap();
        assert!(reply.status.is_success());
        for (kind, bytes) in &files {
            let path = upload_dir.path().join(format!("rec{}", kind.suffix()));
            std::fs::write(&path, bytes).unwrap();
            let reply = within(client.put_file(env, &path, None)).await.unwrap();
            assert_eq!(reply.status, StatusCode::CREATED);
        }
        let reply = within(client.call(
            Method::POST,
            &format!("/v1/recordings/{env}/rec/commit"),
            Bytes::new(),
        ))
        .await
        .unwrap();
        assert_eq!(reply.status, StatusCode::ACCEPTED);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let reply = within(client.call(
                Method::GET,
                &format!("/v1/recordings/{env}/rec"),
                Bytes::new(),
            ))
            .await
            .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
            if v["state"] == "pushed" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "not pushed: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let bucket = format!("{region}-addpipe");
        for (kind, bytes) in &files {
            let key = format!("MOTO/rec{}", kind.suffix());
            let got = within(s3.get_object().bucket(&bucket).key(&key).send())
                .await
                .unwrap();
            assert_eq!(got.content_type(), Some(kind.content_type()), "{key}");
            let class = got.storage_class().map(|c| c.as_str().to_string());
            let sse = got.server_side_encryption().map(|s| s.as_str().to_string());
            let (want_class, want_sse) = match (region, kind) {
                ("eu2", _) => (None, None),
                (_, FileKind::Processed) => (Some("INTELLIGENT_TIERING"), Some("AES256")),
                (_, FileKind::Raw) => (Some("STANDARD_IA"), Some("AES256")),
                _ => (None, Some("AES256")),
            };
            // S3 (and moto) leave out x-amz-storage-class for STANDARD.
            assert_eq!(class.as_deref(), want_class, "{key}");
            assert_eq!(sse.as_deref(), want_sse, "{key}");
            let body = within(got.body.collect()).await.unwrap().into_bytes();
            assert!(body == *bytes, "{key}: bytes differ");
        }
        let open = within(s3.list_multipart_uploads().bucket(&bucket).send())
            .await
            .unwrap();
        assert!(open.uploads().is_empty(), "multipart uploads left open");
        // Every object carries the environment's tag (S3 lifecycle rules filter on it).
        for (kind, _) in &files {
            let key = format!("MOTO/rec{}", kind.suffix());
            let tags = within(s3.get_object_tagging().bucket(&bucket).key(&key).send())
                .await
                .unwrap();
            let tags: Vec<(&str, &str)> = tags
                .tag_set()
                .iter()
                .map(|t| (t.key(), t.value()))
                .collect();
            assert_eq!(tags, vec![("s3edge-env", env)], "{key}");
        }
        // And a DELETE removes the four objects from moto too.
        let reply = within(client.call(
            Method::DELETE,
            &format!("/v1/recordings/{env}/rec"),
            Bytes::new(),
        ))
        .await
        .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(v["deleted"].as_array().unwrap().len(), 4, "{v}");
        let left = within(s3.list_objects_v2().bucket(&bucket).prefix("MOTO/").send())
            .await
            .unwrap();
        assert_eq!(left.key_count(), Some(0), "{env}");
    }
}

/// `s3edge lifecycle rules`: its XML is what moto's PutBucketLifecycleConfiguration takes
/// (read back with GetBucketLifecycleConfiguration); `--apply` keeps rules it does not own and
/// refuses to go over 1,000 rules.
#[tokio::test]
async fn lifecycle_rules_are_what_moto_takes() {
    use aws_sdk_s3::types::{
        BucketLifecycleConfiguration, ExpirationStatus, LifecycleExpiration, LifecycleRule,
        LifecycleRuleFilter,
    };
    let moto = Moto::start();
    let regions = moto_regions(moto.addr);
    for region in &regions {
        within(s3edge_testbed::writer(region).ensure_bucket())
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let mut config = Config::for_regions(regions.clone(), "127.0.0.1:0".parse().unwrap());
    config.push = Some(crate::push::test_push_config(spool.clone()));
    let path = dir.path().join("s3edge.toml");
    std::fs::write(&path, s3edge_testbed::render_toml(&config)).unwrap();
    std::fs::create_dir_all(&spool).unwrap();
    let postgres = match &config.push.as_ref().unwrap().database {
        s3edge::config::Database::Postgres(url) => Some(url.clone()),
        s3edge::config::Database::Sqlite => None,
    };
    let store = s3edge::push::store::Store::open(&spool, postgres.as_deref(), "test-node")
        .await
        .unwrap();
    for (env, region, days) in [
        ("life-a", "eu1", Some(30)),
        ("life-b", "eu1", Some(7)),
        ("forever", "eu1", None),
        ("elsewhere", "us1", Some(3)),
    ] {
        let environment: s3edge::push::model::Environment = serde_json::from_value(
            serde_json::json!({"account": "ACC", "region": region, "delete_after_days": days}),
        )
        .unwrap();
        store.put_environment(env, &environment, 0).await.unwrap();
    }
    drop(store);
    let s3 = moto_client(moto.addr);
    let rules = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_s3edge"))
            .args(["lifecycle", "rules", "--config"])
            .arg(&path)
            .args(["--region", "eu1"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (ok, xml, err) = rules(&[]);
    assert!(ok, "{err}");
    assert_eq!(xml.matches("<Rule>").count(), 2, "{xml}");
    // The printed XML, put as it is.
    let put = Request::builder()
        .method(Method::PUT)
        .uri(format!("http://{}/eu1-addpipe?lifecycle", moto.addr))
        .body(http_body_util::Full::new(Bytes::from(xml.clone())))
        .unwrap();
    let answer = within(
        Client::builder(TokioExecutor::new())
            .build_http::<http_body_util::Full<Bytes>>()
            .request(put),
    )
    .await
    .unwrap();
    assert!(answer.status().is_success(), "{}", answer.status());
    let read = within(
        s3.get_bucket_lifecycle_configuration()
            .bucket("eu1-addpipe")
            .send(),
    )
    .await
    .unwrap();
    let mut got: Vec<(String, String, i32)> = read
        .rules()
        .iter()
        .map(|r| {
            let tag = r.filter().and_then(|f| f.tag()).unwrap();
            assert_eq!(tag.key(), "s3edge-env");
            assert_eq!(r.status(), &ExpirationStatus::Enabled);
            (
                r.id().unwrap().to_string(),
                tag.value().to_string(),
                r.expiration().and_then(|e| e.days()).unwrap(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("s3edge-env-life-a".into(), "life-a".into(), 30),
            ("s3edge-env-life-b".into(), "life-b".into(), 7),
        ]
    );

    // --apply keeps a rule of the operator's and replaces its own.
    let foreign = |id: String| {
        LifecycleRule::builder()
            .id(id)
            .filter(LifecycleRuleFilter::builder().prefix("logs/").build())
            .status(ExpirationStatus::Enabled)
            .expiration(LifecycleExpiration::builder().days(90).build())
            .build()
            .unwrap()
    };
    let put_rules = |rules: Vec<LifecycleRule>| {
        s3.put_bucket_lifecycle_configuration()
            .bucket("eu1-addpipe")
            .lifecycle_configuration(
                BucketLifecycleConfiguration::builder()
                    .set_rules(Some(rules))
                    .build()
                    .unwrap(),
            )
            .send()
    };
    within(put_rules(vec![
        foreign("operator-logs".into()),
        foreign("s3edge-env-gone".into()),
    ]))
    .await
    .unwrap();
    let (ok, _, err) = rules(&["--apply"]);
    assert!(ok, "{err}");
    let read = within(
        s3.get_bucket_lifecycle_configuration()
            .bucket("eu1-addpipe")
            .send(),
    )
    .await
    .unwrap();
    let mut ids: Vec<&str> = read.rules().iter().filter_map(|r| r.id()).collect();
    ids.sort();
    assert_eq!(
        ids,
        vec!["operator-logs", "s3edge-env-life-a", "s3edge-env-life-b"]
    );

    // 999 rules of the operator's and 2 of s3edge's would be 1,001: refused, nothing changed.
    within(put_rules(
        (0..999).map(|i| foreign(format!("op-{i}"))).collect(),
    ))
    .await
    .unwrap();
    let (ok, _, err) = rules(&["--apply"]);
    assert!(!ok);
    assert!(err.contains("1000"), "{err}");
    let read = within(
        s3.get_bucket_lifecycle_configuration()
            .bucket("eu1-addpipe")
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(read.rules().len(), 999);
}

fn moto_client(addr: SocketAddr) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("eu-central-1"))
            .endpoint_url(format!("http://{addr}"))
            .force_path_style(true)
            .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
            .http_client(aws_smithy_http_client::Builder::new().build_http())
            .build(),
    )
}
