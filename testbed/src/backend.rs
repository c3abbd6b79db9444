//! A real, SigV4-verifying S3 server on loopback for the demo and the integration tests:
//! `s3s` + `s3s-fs`, wrapped to behave like AWS S3 or Scaleway where stock `s3s-fs` does not.
//!
//! The wrapper checks the signing region (s3s verifies signatures but not the credential
//! scope's region), refuses anonymous requests, evaluates `If-Match`, `If-None-Match`,
//! `If-Modified-Since` and `If-Unmodified-Since`, answers HEAD with `Range` as 206, sends
//! `Accept-Ranges`, and accepts and remembers the storage classes and SSE of the provider.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use s3s::dto::{
    ETag, ETagCondition, GetObjectInput, GetObjectOutput, HeadObjectInput, HeadObjectOutput,
    PutObjectInput, PutObjectOutput, Range, ServerSideEncryption, StorageClass, Timestamp,
};
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use tokio::net::TcpListener;
use tokio::sync::watch;

use s3edge::config::Provider;

/// How a backend is started.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// Region the credential scope must name.
    pub region: String,
    /// Access key id accepted.
    pub access_key: String,
    /// Secret key accepted.
    pub secret_key: String,
    /// Which provider's storage rules apply.
    pub provider: Provider,
    /// Where objects are stored.
    pub root: PathBuf,
    /// When set, every request is answered `301 PermanentRedirect` naming this region,
    /// as AWS does when a bucket is addressed through another region's endpoint.
    pub redirect_to_region: Option<String>,
    /// Anonymous GET and HEAD of objects are allowed, like a public-read bucket policy
    /// (benchmarks give peers without SigV4 the same origin).
    pub public_read: bool,
    /// When set, `{bucket}.{domain}` Host headers (domain with its port) are read as
    /// virtual-hosted-style requests.
    pub virtual_host_domain: Option<String>,
}

/// One request as the backend received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Method.
    pub method: http::Method,
    /// Path and query as sent.
    pub uri: http::Uri,
    /// All request headers.
    pub headers: http::HeaderMap,
}

/// What the backend has seen: a request counter and the most recent requests.
#[derive(Debug, Default)]
pub struct BackendStats {
    requests: AtomicU64,
    connections: AtomicU64,
    recent: Mutex<VecDeque<RecordedRequest>>,
}

impl BackendStats {
    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far (keep-alive reuse shows as few connections).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// The last requests received (at most 64), oldest first.
    pub fn recent(&self) -> Vec<RecordedRequest> {
        self.recent
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn record<B>(&self, request: &http::Request<B>) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() == 64 {
                recent.pop_front();
            }
            recent.push_back(RecordedRequest {
                method: request.method().clone(),
                uri: request.uri().clone(),
                headers: request.headers().clone(),
            });
        }
    }
}

/// A key named by a request: `DeleteObjects` names several, a listing names its prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRequest {
    /// `ListObjectsV2`, `DeleteObject`, `DeleteObjects`, `PutObject`,
    /// `CreateMultipartUpload`.
    pub operation: &'static str,
    /// The key, or the listing's prefix.
    pub key: String,
}

/// Storage class and encryption an object was written with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPolicy {
    /// `x-amz-storage-class` of the PUT (STANDARD when absent).
    pub storage_class: String,
    /// `x-amz-server-side-encryption` of the PUT.
    pub sse: Option<String>,
}

/// A running backend.
#[derive(Debug)]
pub struct S3Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Request counter and log.
    pub stats: Arc<BackendStats>,
    store: Arc<PolicyStore>,
    stop: watch::Sender<bool>,
    root: PathBuf,
}

impl S3Backend {
    /// Starts serving on an already-bound listener.
    pub fn start(listener: TcpListener, options: BackendOptions) -> std::io::Result<S3Backend> {
        let addr = listener.local_addr()?;
        std::fs::create_dir_all(&options.root)?;
        let fs = s3s_fs::FileSystem::new(&options.root)
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        let store = Arc::new(PolicyStore::default());
        let wrapper = PolicyFs {
            fs,
            root: options.root.clone(),
            region: options.region.clone(),
            provider: options.provider,
            redirect_to_region: options.redirect_to_region.clone(),
            public_read: options.public_read,
            store: store.clone(),
        };
        let mut builder = s3s::service::S3ServiceBuilder::new(wrapper);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(
            options.access_key.clone(),
            options.secret_key.clone(),
        ));
        if let Some(domain) = &options.virtual_host_domain {
            let host = s3s::host::MultiDomain::new([domain.as_str()])
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            builder.set_host(host);
        }
        builder.set_access(PublicRead(options.public_read));
        let service = builder.build();
        let stats = Arc::new(BackendStats::default());
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(accept_loop(listener, service, stats.clone(), stop_rx));
        Ok(S3Backend {
            addr,
            stats,
            store,
            stop,
            root: options.root.clone(),
        })
    }

    /// `http://addr`, the endpoint to put in a region's config.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The storage class and encryption an object was written with.
    pub fn stored_policy(&self, bucket: &str, key: &str) -> Option<StoredPolicy> {
        self.store.get(bucket, key)
    }

    /// Every key (or listing prefix) the requests so far named, in order.
    pub fn keys_requested(&self) -> Vec<KeyRequest> {
        self.store
            .touched
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default()
    }

    /// Multipart uploads created and neither completed nor aborted.
    pub fn open_multipart_uploads(&self) -> usize {
        count_open_uploads(&self.root)
    }

    /// A probe of [`S3Backend::open_multipart_uploads`] that can move into a task.
    pub fn open_multipart_uploads_probe(&self) -> impl Fn() -> usize + Send + 'static {
        let root = self.root.clone();
        move || count_open_uploads(&root)
    }

    /// The bytes of a stored object, read from the backend's folder.
    pub fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.root.join(bucket).join(key)).ok()
    }

    /// Stops accepting and closes connections.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// `.upload-{id}.json` files: s3s-fs keeps one per multipart upload until it ends.
fn count_open_uploads(root: &std::path::Path) -> usize {
    std::fs::read_dir(root)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with(".upload-") && name.ends_with(".json")
                })
                .count()
        })
        .unwrap_or(0)
}

impl Drop for S3Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(
    listener: TcpListener,
    service: s3s::service::S3Service,
    stats: Arc<BackendStats>,
    mut stop: watch::Receiver<bool>,
) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = stop.changed() => return,
        };
        // Stock s3s-fs stalls ~40 ms per reused connection without it (Nagle + delayed ACK).
        let _ = stream.set_nodelay(true);
        stats.connections.fetch_add(1, Ordering::SeqCst);
        let service = service.clone();
        let stats = stats.clone();
        let builder = builder.clone();
        let mut conn_stop = stop.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    stats.record(&request);
                    let service = service.clone();
                    async move {
                        let response = service.call(request.map(s3s::Body::from)).await?;
                        Ok::<_, s3s::HttpError>(apply_status_override(response))
                    }
                });
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = conn_stop.changed() => {}
            }
        });
    }
}

/// Signed requests pass; anonymous GET and HEAD pass too on a public-read bucket.
struct PublicRead(bool);

#[async_trait::async_trait]
impl s3s::access::S3Access for PublicRead {
    async fn check(&self, cx: &mut s3s::access::S3AccessContext<'_>) -> S3Result<()> {
        let read = matches!(*cx.method(), http::Method::GET | http::Method::HEAD);
        if cx.credentials().is_some() || (self.0 && read) {
            return Ok(());
        }
        Err(s3_error!(AccessDenied, "Signature is required"))
    }
}

/// s3s serialises HEAD as 200 whatever the handler says, and cannot express 304: handlers
/// name the status they mean in this header and the HTTP layer applies it.
const STATUS_OVERRIDE: &str = "x-s3edge-backend-status";

fn with_status<T>(output: T, status: http::StatusCode) -> S3Response<T> {
    let mut response = S3Response::new(output);
    response
        .headers
        .insert(STATUS_OVERRIDE, http::HeaderValue::from(status.as_u16()));
    response
}

fn apply_status_override(mut response: http::Response<s3s::Body>) -> http::Response<s3s::Body> {
    let Some(value) = response.headers_mut().remove(STATUS_OVERRIDE) else {
        return response;
    };
    let status = value
        .to_str()
        .ok()
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|code| http::StatusCode::from_u16(code).ok());
    if let Some(status) = status {
        *response.status_mut() = status;
        if status == http::StatusCode::NOT_MODIFIED {
            response.headers_mut().remove(http::header::CONTENT_LENGTH);
            *response.body_mut() = s3s::Body::empty();
        }
    }
    response
}

#[derive(Debug, Default)]
struct PolicyStore {
    objects: Mutex<HashMap<(String, String), StoredPolicy>>,
    /// Every key (or listing prefix) a request named, with its operation.
    touched: Mutex<Vec<KeyRequest>>,
}

impl PolicyStore {
    fn touch(&self, operation: &'static str, key: &str) {
        if let Ok(mut touched) = self.touched.lock() {
            touched.push(KeyRequest {
                operation,
                key: key.to_string(),
            });
        }
    }

    fn get(&self, bucket: &str, key: &str) -> Option<StoredPolicy> {
        self.objects
            .lock()
            .ok()?
            .get(&(bucket.to_string(), key.to_string()))
            .cloned()
    }

    fn set(&self, bucket: &str, key: &str, policy: StoredPolicy) {
        if let Ok(mut objects) = self.objects.lock() {
            objects.insert((bucket.to_string(), key.to_string()), policy);
        }
    }
}

/// `s3s_fs::FileSystem` with the behaviour of a real provider added.
#[derive(Debug)]
struct PolicyFs {
    fs: s3s_fs::FileSystem,
    root: PathBuf,
    region: String,
    provider: Provider,
    redirect_to_region: Option<String>,
    public_read: bool,
    store: Arc<PolicyStore>,
}

impl PolicyFs {
    /// AWS rejects a credential scope for the wrong region; s3s does not check it.
    fn admit<T>(&self, request: &S3Request<T>) -> S3Result<()> {
        if let Some(actual) = &self.redirect_to_region {
            let mut err = s3_error!(
                PermanentRedirect,
                "The bucket you are attempting to access must be addressed using the specified endpoint."
            );
            let mut headers = http::HeaderMap::new();
            if let Ok(value) = http::HeaderValue::from_str(actual) {
                headers.insert("x-amz-bucket-region", value);
            }
            err.set_headers(headers);
            return Err(err);
        }
        if request.credentials.is_none() {
            let read = matches!(request.method, http::Method::GET | http::Method::HEAD);
            if self.public_read && read {
                return Ok(());
            }
            return Err(s3_error!(AccessDenied, "Anonymous access is denied"));
        }
        match &request.region {
            Some(region) if region.as_str() == self.region => Ok(()),
            other => Err(s3_error!(
                AuthorizationHeaderMalformed,
                "the region '{}' is wrong; expecting '{}'",
                other.as_ref().map_or("", |r| r.as_str()),
                self.region
            )),
        }
    }

    /// The storage class and encryption of a write, as this provider accepts them.
    fn write_policy(
        &self,
        class: Option<StorageClass>,
        sse: Option<ServerSideEncryption>,
    ) -> S3Result<StoredPolicy> {
        let class = class.map_or_else(|| "STANDARD".to_string(), |c| c.as_str().to_string());
        if !self.allowed_storage_class(&class) {
            return Err(s3_error!(
                InvalidStorageClass,
                "storage class {class} is not offered here"
            ));
        }
        let sse = sse.map(|s| s.as_str().to_string());
        match (self.provider, sse.as_deref()) {
            (_, None) | (Provider::Aws, Some("AES256" | "aws:kms")) => {}
            _ => {
                return Err(s3_error!(
                    NotImplemented,
                    "server-side encryption is not offered here"
                ));
            }
        }
        Ok(StoredPolicy {
            storage_class: class,
            sse,
        })
    }

    fn allowed_storage_class(&self, class: &str) -> bool {
        match self.provider {
            Provider::Aws => matches!(
                class,
                "STANDARD"
                    | "INTELLIGENT_TIERING"
                    | "STANDARD_IA"
                    | "ONEZONE_IA"
                    | "GLACIER_IR"
                    | "GLACIER"
                    | "DEEP_ARCHIVE"
                    | "REDUCED_REDUNDANCY"
            ),
            Provider::Scaleway => matches!(class, "STANDARD" | "ONEZONE_IA" | "GLACIER"),
        }
    }

    async fn head(&self, bucket: &str, key: &str) -> S3Result<HeadObjectOutput> {
        let input = HeadObjectInput::builder()
            .bucket(bucket.to_string())
            .key(key.to_string())
            .build()
            .map_err(|e| s3_error!(e, InternalError))?;
        let request = S3Request {
            input,
            method: http::Method::HEAD,
            uri: http::Uri::from_static("/"),
            headers: http::HeaderMap::new(),
            extensions: http::Extensions::new(),
            credentials: None,
            region: None,
            service: None,
            trailing_headers: None,
        };
        Ok(self.fs.head_object(request).await?.output)
    }

    fn decorate(
        &self,
        bucket: &str,
        key: &str,
    ) -> (Option<StorageClass>, Option<ServerSideEncryption>) {
        match self.store.get(bucket, key) {
            Some(policy) => (
                Some(StorageClass::from(policy.storage_class)),
                policy.sse.map(ServerSideEncryption::from),
            ),
            None => (None, None),
        }
    }
}

/// The outcome of a request's preconditions (RFC 9110 §13.2.2 order).
enum Precondition {
    Proceed,
    NotModified,
    Failed,
}

struct Conditions<'a> {
    if_match: Option<&'a ETagCondition>,
    if_none_match: Option<&'a ETagCondition>,
    if_modified_since: Option<&'a Timestamp>,
    if_unmodified_since: Option<&'a Timestamp>,
}

impl Conditions<'_> {
    fn evaluate(&self, etag: Option<&ETag>, last_modified: Option<&Timestamp>) -> Precondition {
        let etag_matches = |cond: &ETagCondition, weak: bool| match (cond, etag) {
            (ETagCondition::Any, _) => etag.is_some(),
            (ETagCondition::ETag(want), Some(have)) => {
                if weak {
                    want.value() == have.value()
                } else {
                    want.strong_cmp(have)
                }
            }
            (ETagCondition::ETag(_), None) => false,
        };
        let secs = |t: &Timestamp| time::OffsetDateTime::from(t.clone()).unix_timestamp();
        if let Some(cond) = self.if_match {
            if !etag_matches(cond, false) {
                return Precondition::Failed;
            }
        } else if let (Some(since), Some(modified)) = (self.if_unmodified_since, last_modified)
            && secs(modified) > secs(since)
        {
            return Precondition::Failed;
        }
        if let Some(cond) = self.if_none_match {
            if etag_matches(cond, true) {
                return Precondition::NotModified;
            }
        } else if let (Some(since), Some(modified)) = (self.if_modified_since, last_modified)
            && secs(modified) <= secs(since)
        {
            return Precondition::NotModified;
        }
        Precondition::Proceed
    }
}

#[async_trait::async_trait]
impl S3 for PolicyFs {
    async fn create_bucket(
        &self,
        req: S3Request<s3s::dto::CreateBucketInput>,
    ) -> S3Result<S3Response<s3s::dto::CreateBucketOutput>> {
        self.admit(&req)?;
        self.fs.create_bucket(req).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<s3s::dto::HeadBucketInput>,
    ) -> S3Result<S3Response<s3s::dto::HeadBucketOutput>> {
        self.admit(&req)?;
        self.fs.head_bucket(req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<s3s::dto::ListObjectsV2Input>,
    ) -> S3Result<S3Response<s3s::dto::ListObjectsV2Output>> {
        self.admit(&req)?;
        self.store
            .touch("ListObjectsV2", req.input.prefix.as_deref().unwrap_or(""));
        self.fs.list_objects_v2(req).await
    }

    async fn delete_object(
        &self,
        req: S3Request<s3s::dto::DeleteObjectInput>,
    ) -> S3Result<S3Response<s3s::dto::DeleteObjectOutput>> {
        self.admit(&req)?;
        self.store.touch("DeleteObject", &req.input.key);
        self.fs.delete_object(req).await
    }

    async fn put_object(
        &self,
        mut req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        self.admit(&req)?;
        let policy = self.write_policy(
            req.input.storage_class.take(),
            req.input.server_side_encryption.take(),
        )?;
        let sse = policy.sse.clone();
        let bucket = req.input.bucket.clone();
        let key = req.input.key.clone();
        self.store.touch("PutObject", &key);
        let mut response = self.fs.put_object(req).await?;
        self.store.set(&bucket, &key, policy);
        response.output.server_side_encryption = sse.map(ServerSideEncryption::from);
        Ok(response)
    }

    async fn create_multipart_upload(
        &self,
        mut req: S3Request<s3s::dto::CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<s3s::dto::CreateMultipartUploadOutput>> {
        self.admit(&req)?;
        let policy = self.write_policy(
            req.input.storage_class.take(),
            req.input.server_side_encryption.take(),
        )?;
        let bucket = req.input.bucket.clone();
        let key = req.input.key.clone();
        let response = self.fs.create_multipart_upload(req).await?;
        if let Some(id) = &response.output.upload_id {
            self.store
                .set(&bucket, &format!("{key}#upload:{id}"), policy);
        }
        Ok(response)
    }

    async fn upload_part(
        &self,
        req: S3Request<s3s::dto::UploadPartInput>,
    ) -> S3Result<S3Response<s3s::dto::UploadPartOutput>> {
        self.admit(&req)?;
        self.fs.upload_part(req).await
    }

    async fn list_parts(
        &self,
        req: S3Request<s3s::dto::ListPartsInput>,
    ) -> S3Result<S3Response<s3s::dto::ListPartsOutput>> {
        self.admit(&req)?;
        self.fs.list_parts(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<s3s::dto::CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<s3s::dto::CompleteMultipartUploadOutput>> {
        self.admit(&req)?;
        let bucket = req.input.bucket.clone();
        let key = req.input.key.clone();
        let upload = format!("{key}#upload:{}", req.input.upload_id);
        let response = self.fs.complete_multipart_upload(req).await?;
        if let Some(policy) = self.store.get(&bucket, &upload) {
            self.store.set(&bucket, &key, policy);
        }
        Ok(response)
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<s3s::dto::AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<s3s::dto::AbortMultipartUploadOutput>> {
        self.admit(&req)?;
        self.fs.abort_multipart_upload(req).await
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<s3s::dto::ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<s3s::dto::ListMultipartUploadsOutput>> {
        self.admit(&req)?;
        // s3s-fs keeps `.bucket-{b64}.object-{b64}.upload-{id}.metadata.json` per open upload.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let bucket = req.input.bucket.clone();
        let prefix = req.input.prefix.clone().unwrap_or_default();
        let head = format!(".bucket-{}.object-", b64.encode(&bucket));
        let mut uploads = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(rest) = name
                    .strip_prefix(&head)
                    .and_then(|r| r.strip_suffix(".metadata.json"))
                else {
                    continue;
                };
                let Some((key, id)) = rest.split_once(".upload-") else {
                    continue;
                };
                let Ok(key) = b64
                    .decode(key)
                    .map(|k| String::from_utf8_lossy(&k).into_owned())
                else {
                    continue;
                };
                if key.starts_with(&prefix) {
                    uploads.push(s3s::dto::MultipartUpload {
                        key: Some(key),
                        upload_id: Some(id.to_string()),
                        ..Default::default()
                    });
                }
            }
        }
        Ok(S3Response::new(s3s::dto::ListMultipartUploadsOutput {
            bucket: Some(bucket),
            uploads: Some(uploads),
            ..Default::default()
        }))
    }

    async fn delete_objects(
        &self,
        req: S3Request<s3s::dto::DeleteObjectsInput>,
    ) -> S3Result<S3Response<s3s::dto::DeleteObjectsOutput>> {
        self.admit(&req)?;
        for object in &req.input.delete.objects {
            self.store.touch("DeleteObjects", &object.key);
        }
        self.fs.delete_objects(req).await
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.admit(&req)?;
        let range = req.input.range;
        let conditions = Conditions {
            if_match: req.input.if_match.as_ref(),
            if_none_match: req.input.if_none_match.as_ref(),
            if_modified_since: req.input.if_modified_since.as_ref(),
            if_unmodified_since: req.input.if_unmodified_since.as_ref(),
        };
        let mut output = self.head(&req.input.bucket, &req.input.key).await?;
        match conditions.evaluate(output.e_tag.as_ref(), output.last_modified.as_ref()) {
            Precondition::Proceed => {}
            Precondition::Failed => return Err(s3_error!(PreconditionFailed)),
            Precondition::NotModified => {
                let output = HeadObjectOutput {
                    e_tag: output.e_tag,
                    last_modified: output.last_modified,
                    ..Default::default()
                };
                return Ok(with_status(output, http::StatusCode::NOT_MODIFIED));
            }
        }
        (output.storage_class, output.server_side_encryption) =
            self.decorate(&req.input.bucket, &req.input.key);
        output.accept_ranges = Some("bytes".into());
        let full = u64::try_from(output.content_length.unwrap_or(0)).unwrap_or(0);
        if let Some(range) = range {
            let span = range.check(full)?;
            output.content_length = i64::try_from(span.end - span.start).ok();
            output.content_range = Some(format!("bytes {}-{}/{full}", span.start, span.end - 1));
            return Ok(with_status(output, http::StatusCode::PARTIAL_CONTENT));
        }
        Ok(S3Response::new(output))
    }

    async fn get_object(
        &self,
        mut req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.admit(&req)?;
        let input = &mut req.input;
        let conditions = Conditions {
            if_match: input.if_match.as_ref(),
            if_none_match: input.if_none_match.as_ref(),
            if_modified_since: input.if_modified_since.as_ref(),
            if_unmodified_since: input.if_unmodified_since.as_ref(),
        };
        let any = conditions.if_match.is_some()
            || conditions.if_none_match.is_some()
            || conditions.if_modified_since.is_some()
            || conditions.if_unmodified_since.is_some();
        let suffix = matches!(input.range, Some(Range::Suffix { .. }));
        let mut clamp_suffix = false;
        if any || suffix {
            let head = self.head(&input.bucket, &input.key).await?;
            // A suffix longer than the object means the whole object; s3s-fs seeks before 0.
            if let Some(Range::Suffix { length }) = input.range {
                clamp_suffix = head
                    .content_length
                    .is_some_and(|len| u64::try_from(len).is_ok_and(|len| length > len));
            }
            match conditions.evaluate(head.e_tag.as_ref(), head.last_modified.as_ref()) {
                Precondition::Proceed => {}
                Precondition::Failed => return Err(s3_error!(PreconditionFailed)),
                Precondition::NotModified => {
                    let output = GetObjectOutput {
                        e_tag: head.e_tag,
                        last_modified: head.last_modified,
                        ..Default::default()
                    };
                    return Ok(with_status(output, http::StatusCode::NOT_MODIFIED));
                }
            }
        }
        if clamp_suffix {
            input.range = Some(Range::Int {
                first: 0,
                last: None,
            });
        }
        input.if_match = None;
        input.if_none_match = None;
        input.if_modified_since = None;
        input.if_unmodified_since = None;
        let (bucket, key) = (input.bucket.clone(), input.key.clone());
        let has_range = input.range.is_some();
        let mut response = self.fs.get_object(req).await?;
        (
            response.output.storage_class,
            response.output.server_side_encryption,
        ) = self.decorate(&bucket, &key);
        response.output.accept_ranges = Some("bytes".into());
        if has_range {
            // AWS answers 206 to every satisfiable Range, including `bytes=0-`.
            response
                .headers
                .insert(STATUS_OVERRIDE, http::HeaderValue::from_static("206"));
        }
        Ok(response)
    }
}
