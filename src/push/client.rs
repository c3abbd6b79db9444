//! A client of the push API for operators and scripts (`s3edge push …`) and benchmarks:
//! files are streamed from disk with their `Content-Digest`, never read whole into memory.

use std::path::Path;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncReadExt;

/// The API's answer: status and body.
#[derive(Debug)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The (JSON) body.
    pub body: Bytes,
}

/// A push API endpoint.
#[derive(Debug, Clone)]
pub struct PushClient {
    base: String,
    token: Option<String>,
    http: Client<HttpConnector, BoxBody<Bytes, std::io::Error>>,
}

impl PushClient {
    /// A client of `base` (`http://127.0.0.1:9093`).
    pub fn new(base: &str, token: Option<String>) -> Self {
        PushClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends a request with a small body.
    pub async fn call(&self, method: Method, path: &str, body: Bytes) -> Result<Reply, String> {
        let body = Full::new(body).map_err(|never| match never {}).boxed();
        self.send(method, path, body, &[]).await
    }

    /// Commits recording `name` of `env`.
    pub async fn commit(&self, env: &str, name: &str) -> Result<Reply, String> {
        self.call(
            Method::POST,
            &format!("/v1/recordings/{env}/{name}/commit"),
            Bytes::new(),
        )
        .await
    }

    /// Uploads `file` as `{NAME}{suffix}` of a recording (the file's own name unless `as_name`).
    pub async fn put_file(
        &self,
        env: &str,
        file: &Path,
        as_name: Option<&str>,
    ) -> Result<Reply, String> {
        let name = match as_name {
            Some(name) => name.to_string(),
            None => file
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| format!("{}: no file name", file.display()))?
                .to_string(),
        };
        let digest = sha256_of(file)
            .await
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let length = tokio::fs::metadata(file)
            .await
            .map_err(|e| format!("{}: {e}", file.display()))?
            .len();
        let handle = tokio::fs::File::open(file)
            .await
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let chunks = futures_util::stream::unfold(handle, |mut handle| async move {
            let mut buf = vec![0u8; 256 * 1024];
            match handle.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(http_body::Frame::data(Bytes::from(buf))), handle))
                }
                Err(e) => Some((Err(e), handle)),
            }
        });
        let body = BodyExt::boxed(StreamBody::new(chunks));
        let header = format!("sha-256=:{digest}:");
        let length = length.to_string();
        self.send(
            Method::PUT,
            &format!("/v1/recordings/{env}/{name}"),
            body,
            &[("content-digest", &header), ("content-length", &length)],
        )
        .await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: BoxBody<Bytes, std::io::Error>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request.body(body).map_err(|e| e.to_string())?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| format!("{}: {e}", self.base))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Reply { status, body })
    }
}

/// The base64 SHA-256 of a file, read in blocks.
async fn sha256_of(path: &Path) -> std::io::Result<String> {
    use base64::Engine as _;
    use sha2::Digest;
    let path = path.to_path_buf();
    let digest = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(path)?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok::<_, std::io::Error>(hasher.finalize())
    })
    .await
    .map_err(std::io::Error::other)??;
    Ok(base64::engine::general_purpose::STANDARD.encode(digest))
}
