//! Real clients, as users run them: headless Chromium on another origin playing a
//! `<video crossorigin>` through the gateway and reading a `fetch()` Range response, and
//! `ffprobe` reading recordings over HTTP.

use std::convert::Infallible;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{Harness, sample_key};
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use s3edge::route::FileKind;
use s3edge_testbed::REGIONS;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

fn page(gateway: &str) -> String {
    let key = |kind: FileKind| sample_key(kind);
    format!(
        r#"<!doctype html><html><body><script>
const GW = "{gateway}";
const out = {{}};
const step = (name) => {{ out.step = name; }};
(async () => {{
  try {{
    step("video");
    const v = document.createElement("video");
    v.crossOrigin = "anonymous"; v.muted = true; v.preload = "auto";
    v.src = GW + "/eu1/{mp4}";
    document.body.appendChild(v);
    await new Promise((ok, fail) => {{
      v.onloadeddata = ok;
      v.onerror = () => fail(new Error("video error " + (v.error && v.error.code) + " " + (v.error && v.error.message)));
    }});
    out.width = v.videoWidth; out.height = v.videoHeight; out.duration = v.duration;
    step("play");
    await v.play();
    await new Promise(ok => {{ const t = () => v.currentTime > 0.5 ? ok() : setTimeout(t, 50); t(); }});
    out.played = v.currentTime;
    step("seek");
    v.pause();
    v.currentTime = 3.0;
    await new Promise(ok => {{ v.onseeked = ok; }});
    out.seeked = v.currentTime;
    step("canvas");
    const c = document.createElement("canvas"); c.width = 32; c.height = 18;
    const ctx = c.getContext("2d"); ctx.drawImage(v, 0, 0, 32, 18);
    out.pixel = Array.from(ctx.getImageData(16, 9, 1, 1).data);
    step("fetch");
    const r = await fetch(GW + "/eu2/{raw}", {{ headers: {{ Range: "bytes=100-199" }} }});
    out.fetchStatus = r.status;
    out.contentRange = r.headers.get("Content-Range");
    out.contentLength = r.headers.get("Content-Length");
    out.etag = r.headers.get("ETag");
    out.acceptRanges = r.headers.get("Accept-Ranges");
    out.lastModified = r.headers.get("Last-Modified");
    out.fetchBytes = Array.from(new Uint8Array(await r.arrayBuffer()));
    step("image");
    const img = new Image(); img.crossOrigin = "anonymous";
    img.src = GW + "/us1/{jpg}";
    await img.decode();
    out.imgWidth = img.naturalWidth;
    step("missing");
    const missing = await fetch(GW + "/us2/{account}/missing.jpg");
    out.missingStatus = missing.status;
    step("done");
  }} catch (e) {{ out.error = String(e); }}
  await fetch("/result", {{ method: "POST", body: JSON.stringify(out) }});
}})();
</script></body></html>"#,
        mp4 = key(FileKind::Processed),
        raw = key(FileKind::Raw),
        jpg = key(FileKind::Snapshot),
        account = s3edge_testbed::SAMPLE_ACCOUNT,
    )
}

/// Serves the page on its own origin and hands back what the page reports.
async fn serve_page(html: String) -> (std::net::SocketAddr, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let html = html.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let html = html.clone();
                    let tx = tx.clone();
                    async move {
                        if req.uri().path() == "/result" {
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            let text =
                                String::from_utf8_lossy(&body.unwrap_or_default()).into_owned();
                            let _ = tx.send(text).await;
                            return Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())));
                        }
                        let mut response = Response::new(Full::new(Bytes::from(html)));
                        if req.uri().path() != "/" {
                            *response.status_mut() = StatusCode::NOT_FOUND;
                        }
                        response
                            .headers_mut()
                            .insert("content-type", "text/html".parse().unwrap());
                        Ok(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, rx)
}

fn chromium() -> &'static str {
    for candidate in [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ] {
        if std::path::Path::new(candidate).exists() {
            return candidate;
        }
    }
    panic!("Chromium is needed for this test: apt-get install chromium (bash .ci/setup does)");
}

#[tokio::test]
async fn chromium_plays_video_and_reads_range_cross_origin() {
    let h = Harness::start().await;
    let gateway = format!("http://127.0.0.1:{}", h.addr.port());
    let (page_addr, mut results) = serve_page(page(&gateway)).await;
    // Another origin: another host name and port than the gateway's.
    let url = format!("http://localhost:{}/", page_addr.port());
    let profile = tempfile::tempdir().unwrap();
    let mut browser = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            "--autoplay-policy=no-user-gesture-required",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(60), results.recv()).await;
    let _ = browser.kill();
    let _ = browser.wait();
    let report = report
        .expect("the page did not report within 60 s")
        .unwrap();
    let out: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert!(out.get("error").is_none(), "page failed: {report}");
    assert_eq!(out["step"], "done", "{report}");
    assert_eq!(out["width"], 320, "{report}");
    assert_eq!(out["height"], 180, "{report}");
    let duration = out["duration"].as_f64().unwrap();
    assert!((duration - 4.0).abs() < 0.2, "{report}");
    assert!(out["played"].as_f64().unwrap() > 0.5, "{report}");
    assert!(
        (out["seeked"].as_f64().unwrap() - 3.0).abs() < 0.5,
        "{report}"
    );
    // A readable pixel proves the crossorigin video did not taint the canvas.
    assert_eq!(out["pixel"].as_array().unwrap().len(), 4, "{report}");

    let raw = s3edge_testbed::sample_file(FileKind::Raw);
    assert_eq!(out["fetchStatus"], 206, "{report}");
    assert_eq!(
        out["contentRange"],
        format!("bytes 100-199/{}", raw.len()),
        "{report}"
    );
    assert_eq!(out["contentLength"], "100", "{report}");
    assert_eq!(out["acceptRanges"], "bytes", "{report}");
    assert!(out["etag"].as_str().unwrap().starts_with('"'), "{report}");
    assert!(out["lastModified"].as_str().is_some(), "{report}");
    let bytes: Vec<u8> = out["fetchBytes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    assert_eq!(bytes, raw[100..200].to_vec());
    assert_eq!(out["imgWidth"], 320, "{report}");
    assert_eq!(out["missingStatus"], 404, "{report}");
    // The player fetched the video through the gateway.
    assert!(h.backends.backends[0].stats.requests() > 4);
}

#[tokio::test]
async fn ffprobe_reads_recordings_over_http() {
    let h = Harness::start().await;
    for (url_path, host) in [
        (format!("/eu1/{}", sample_key(FileKind::Processed)), None),
        (
            format!("/{}", sample_key(FileKind::Raw)),
            Some(REGIONS[3].host),
        ),
    ] {
        let url = format!("http://{}{url_path}", h.addr);
        let mut command = tokio::process::Command::new("ffprobe");
        command.args([
            "-v",
            "error",
            "-show_entries",
            "format=duration,format_name:stream=codec_name",
            "-of",
            "json",
        ]);
        if let Some(host) = host {
            command.args(["-headers", &format!("Host: {host}\r\n")]);
        }
        let output = tokio::time::timeout(Duration::from_secs(30), command.arg(&url).output())
            .await
            .expect("ffprobe hung")
            .expect(
                "ffprobe is needed for this test: apt-get install ffmpeg (bash .ci/setup does)",
            );
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let info: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let codecs: Vec<&str> = info["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["codec_name"].as_str().unwrap())
            .collect();
        assert_eq!(codecs, ["h264", "aac"], "{url}");
        let duration: f64 = info["format"]["duration"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((duration - 4.0).abs() < 0.1, "{url}: {duration}");
        assert!(
            info["format"]["format_name"]
                .as_str()
                .unwrap()
                .contains("mp4")
        );
    }
}
