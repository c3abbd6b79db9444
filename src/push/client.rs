//! A client of the push API for operators and scripts (`s3edge push …`) and benchmarks:
//! files are streamed from disk, never read whole into memory, and checksummed while they are
//! sent; an upload counts only if the service kept the bytes the file read as (its answer
//! carries the size and CRC32C of what it kept: hardware CRC32C costs a fraction of SHA-256,
//! which the service computes anyway for the API).

use std::path::Path;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, oneshot};

use super::source::{Pumped, Source};

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
            http: Client::builder(TokioExecutor::new()).build(connector()),
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
        let opened = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let length = opened
            .metadata()
            .map_err(|e| format!("{}: {e}", file.display()))?
            .len();
        let (blocks, read) = read_hashing(opened, length);
        let chunks = futures_util::stream::unfold(blocks, |mut blocks| async move {
            let block = blocks.recv().await?;
            Some((block.map(http_body::Frame::data), blocks))
        });
        let body = BodyExt::boxed(StreamBody::new(chunks));
        let length = length.to_string();
        let reply = self
            .send(
                Method::PUT,
                &format!("/v1/recordings/{env}/{name}"),
                body,
                &[("content-length", &length)],
            )
            .await?;
        if !reply.status.is_success() {
            return Ok(reply);
        }
        // The whole file was sent (the service answered 201 to its last byte): what it kept
        // must be what was read, or the file changed while it was sent.
        let read = read
            .await
            .map_err(|_| format!("{}: the read ended early", file.display()))?;
        let kept: serde_json::Value = serde_json::from_slice(&reply.body)
            .map_err(|e| format!("{}: the service's answer: {e}", file.display()))?;
        let ReadEnd::Whole(bytes, crc32c) = read else {
            // The request took the `Content-Length` it announced and dropped the rest.
            return Err(format!(
                "{}: the file grew past the {length} bytes it had when its upload started, \
                 but the service kept {} bytes: the file changed while it was sent (PUT it \
                 again before the commit)",
                file.display(),
                kept["bytes"]
            ));
        };
        let crc32c = format!("{crc32c:08x}");
        if kept["bytes"].as_u64() != Some(bytes) || kept["crc32c"].as_str() != Some(&crc32c) {
            return Err(format!(
                "{}: read as {bytes} bytes with CRC32C {crc32c}, but the service kept {} bytes \
                 with {}: the file changed while it was sent (PUT it again before the commit)",
                file.display(),
                kept["bytes"],
                kept["crc32c"]
            ));
        }
        Ok(reply)
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

/// The client's connector. A streamed body goes out after its headers in a second write:
/// with Nagle on, that write waits for the headers' ACK, which the server delays up to 40 ms
/// (every small file cost 40 ms).
fn connector() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http
}

/// A file's blocks as they are read.
type Blocks = mpsc::Receiver<std::io::Result<Bytes>>;

/// How the read of a file sent as a body ended.
#[derive(Debug, PartialEq, Eq)]
enum ReadEnd {
    /// To its end: its length and CRC32C.
    Whole(u64, u32),
    /// The body was dropped before the end: the request is over (answered, or it took all
    /// the bytes it announced and the file had more).
    Cut,
}

/// Reads `file` on a blocking thread in blocks of at most 1 MiB (past the page cache, see
/// [`Source`]), checksumming them on the way: the blocks come out of the channel (a few
/// ahead), the length and CRC32C once the last was read.
fn read_hashing(file: std::fs::File, length: u64) -> (Blocks, oneshot::Receiver<ReadEnd>) {
    let (blocks, out) = mpsc::channel(4);
    let (done, read) = oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let mut crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
        let end = Source::new(file).pump(length, true, &blocks, |block| crc.update(block));
        let _ = match end {
            // A CRC-32 is 32 bits wide.
            Pumped::End(total) => done.send(ReadEnd::Whole(total, crc.finalize() as u32)),
            Pumped::Cut => done.send(ReadEnd::Cut),
            // The error went to the body.
            Pumped::Failed => Ok(()),
        };
    });
    (out, read)
}

#[cfg(test)]
mod tests {
    use super::super::source::BLOCK;
    use super::*;

    /// The CLI's connections send each write at once (`TCP_NODELAY`).
    #[tokio::test]
    async fn connections_are_made_without_nagle() {
        use tower_service::Service as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: http::Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let io = connector().call(uri).await.unwrap();
        assert!(io.inner().nodelay().unwrap());
    }

    #[tokio::test]
    async fn a_read_whose_body_is_dropped_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; BLOCK * 8]).unwrap();
        let len = (BLOCK * 8) as u64;
        let (blocks, read) = read_hashing(std::fs::File::open(&path).unwrap(), len);
        drop(blocks);
        assert_eq!(read.await.unwrap(), ReadEnd::Cut);
    }

    #[tokio::test]
    async fn a_file_is_read_whole_in_blocks_and_checksummed_on_the_way() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        // Not a multiple of the block: the last block is short.
        let data: Vec<u8> = (0..BLOCK * 2 + 12_345)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let len = data.len() as u64;
        let (mut blocks, read) = read_hashing(std::fs::File::open(&path).unwrap(), len);
        let mut got = Vec::new();
        let mut count = 0;
        while let Some(block) = blocks.recv().await {
            let block = block.unwrap();
            assert!(block.len() <= BLOCK);
            got.extend_from_slice(&block);
            count += 1;
        }
        assert_eq!(got, data);
        assert_eq!(count, 3);
        let ReadEnd::Whole(bytes, crc) = read.await.unwrap() else {
            panic!("not read whole");
        };
        assert_eq!(bytes, data.len() as u64);
        // The CRC32C check value (RFC 3720 B.4): 32 bytes of zeros.
        assert_eq!(
            crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &[0u8; 32]),
            0x8a91_36aa
        );
        assert_eq!(
            u64::from(crc),
            crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &data)
        );
    }
}
