//! Uploads with aws-sdk-s3: `PutObject` below `push.multipart_threshold`, a multipart upload
//! with parts in parallel above it. Bodies stream from the spool file (never the whole file in
//! memory); every request carries a checksum of its bytes: a `PutObject` the SHA-256 the spool
//! computed on receipt (`x-amz-checksum-sha256`), a part the CRC32C the SDK computes while it
//! sends it (an aws-chunked trailer, so a part is read once and not hashed beforehand). The
//! storage class, encryption and `Content-Type` come from the policy. A multipart upload that
//! fails is aborted; one left open by a crash is recorded and aborted at the next start.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ServerSideEncryption, StorageClass,
};
use base64::Engine as _;
use futures_util::StreamExt;

use super::bucket::{Bucket, UploadError, abort, complimentary_bucket, customer_bucket, sdk_error};
use super::lock;
use super::model::Target;
use super::spool_body::spool_range;
use super::store::{PushRow, Store};
use crate::config::Config;
use crate::route::FileKind;

/// Parts of one file in flight at once.
pub(super) const PARTS_IN_FLIGHT: usize = 4;

/// Who opened a multipart upload: an attempt, or an early upload of a file still arriving.
#[derive(Debug, Clone, Copy)]
pub(super) enum Owner<'a> {
    /// An attempt of a committed recording.
    Attempt(&'a PushRow),
    /// An early upload of recording `name` to `target`.
    Early {
        /// The recording.
        name: &'a str,
        /// Where.
        target: &'a Target,
    },
}

/// A multipart upload created and recorded: our row's id and the store's upload id.
#[derive(Debug, Clone)]
pub(super) struct OpenUpload {
    /// The `multipart_uploads` row.
    pub intent: String,
    /// The store's id.
    pub upload_id: String,
}

/// One file to upload.
#[derive(Debug)]
pub struct FileUpload<'a> {
    /// The spool file.
    pub path: &'a Path,
    /// Its size.
    pub bytes: u64,
    /// Its SHA-256, hex.
    pub sha256: &'a str,
    /// Which of the four it is.
    pub kind: FileKind,
    /// The object key.
    pub key: String,
    /// The environment: our bucket's objects are tagged `s3edge-env=<env>` (S3 lifecycle
    /// rules filter on it).
    pub env: &'a str,
}

/// Clients by destination, built once.
#[derive(Debug)]
pub struct Uploader {
    config: Arc<Config>,
    clients: Mutex<HashMap<String, Bucket>>,
    multipart_threshold: u64,
    part_size: u64,
    request_timeout: Duration,
    /// Parts in flight in the whole process (attempts and early uploads alike): each holds
    /// its read buffer and the connection's write buffers, so this bounds upload memory.
    part_slots: Arc<tokio::sync::Semaphore>,
}

impl Uploader {
    /// An uploader for the regions of `config`.
    pub fn new(config: Arc<Config>, request_timeout: Duration) -> Self {
        let push = config.push.as_ref();
        Uploader {
            multipart_threshold: push.map_or(64 << 20, |p| p.multipart_threshold),
            part_size: push.map_or(16 << 20, |p| p.part_size),
            part_slots: Arc::new(tokio::sync::Semaphore::new(
                push.map_or(8, |p| p.concurrency).max(PARTS_IN_FLIGHT),
            )),
            config,
            clients: Mutex::new(HashMap::new()),
            request_timeout,
        }
    }

    /// The bucket of a target (a client is built on first use).
    pub async fn bucket(&self, target: &Target) -> Result<Bucket, UploadError> {
        let cache_key = serde_json::to_string(target).unwrap_or_default();
        if let Some(bucket) = lock(&self.clients).get(&cache_key) {
            return Ok(bucket.clone());
        }
        let bucket = match target {
            Target::Complimentary { region } => {
                let region = self
                    .config
                    .regions
                    .iter()
                    .find(|r| &r.name == region)
                    .ok_or_else(|| {
                        UploadError::new("Config", format!("region {region} is not configured"))
                    })?;
                complimentary_bucket(region, self.request_timeout).await
            }
            Target::Customer(d) => customer_bucket(d, self.request_timeout),
        };
        lock(&self.clients).insert(cache_key, bucket.clone());
        Ok(bucket)
    }

    /// Uploads one file: a single PUT, or a multipart upload recorded in `store` while open.
    pub async fn upload(
        &self,
        bucket: &Bucket,
        file: &FileUpload<'_>,
        push: &PushRow,
        store: &Store,
    ) -> Result<(), UploadError> {
        if file.bytes < self.multipart_threshold {
            self.put(bucket, file).await
        } else {
            self.multipart(bucket, file, push, store).await
        }
    }

    async fn put(&self, bucket: &Bucket, file: &FileUpload<'_>) -> Result<(), UploadError> {
        let sha = hex::decode(file.sha256).map_err(|e| UploadError::new("Io", e.to_string()))?;
        let body = spool_range(file.path.to_path_buf(), 0, file.bytes);
        let mut request = bucket
            .client
            .put_object()
            .bucket(&bucket.bucket)
            .key(&file.key)
            .body(body)
            .content_length(i64::try_from(file.bytes).unwrap_or(i64::MAX))
            .content_type(file.kind.content_type())
            .checksum_sha256(b64(&sha));
        if let Some(class) = bucket.storage_class(file.kind) {
            request = request.storage_class(StorageClass::from(class.as_str()));
        }
        if bucket.encrypted() {
            request = request.server_side_encryption(ServerSideEncryption::Aes256);
        }
        if let Some(tag) = bucket.tagging(file.env) {
            request = request.tagging(tag);
        }
        // The body's SHA-256 is in x-amz-checksum-sha256 (the store verifies it): signing the
        // payload too would hash it again, and the SDK buffers a body to hash it over http.
        request
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map(|_| ())
            .map_err(sdk_error)
    }

    /// Files at least this large go up as multipart uploads.
    pub fn multipart_threshold(&self) -> u64 {
        self.multipart_threshold
    }

    async fn multipart(
        &self,
        bucket: &Bucket,
        file: &FileUpload<'_>,
        push: &PushRow,
        store: &Store,
    ) -> Result<(), UploadError> {
        let open = self
            .create(bucket, file, Owner::Attempt(push), store)
            .await?;
        let result = match self.parts(bucket, file, &open.upload_id).await {
            Ok(parts) => {
                self.complete(bucket, &file.key, &open, parts, file.bytes)
                    .await
            }
            Err(e) => Err(e),
        };
        if result.is_err() {
            abort(bucket, &file.key, &open.upload_id).await;
        }
        let _ = store.multipart_ended(&open.intent).await;
        result
    }

    /// Records the intent in `store`, then creates a multipart upload of `file` with the
    /// policy's storage class, encryption, type and tag.
    pub(super) async fn create(
        &self,
        bucket: &Bucket,
        file: &FileUpload<'_>,
        owner: Owner<'_>,
        store: &Store,
    ) -> Result<OpenUpload, UploadError> {
        let mut create = bucket
            .client
            .create_multipart_upload()
            .bucket(&bucket.bucket)
            .key(&file.key)
            .content_type(file.kind.content_type())
            .checksum_algorithm(ChecksumAlgorithm::Crc32C);
        if let Some(class) = bucket.storage_class(file.kind) {
            create = create.storage_class(StorageClass::from(class.as_str()));
        }
        if bucket.encrypted() {
            create = create.server_side_encryption(ServerSideEncryption::Aes256);
        }
        if let Some(tag) = bucket.tagging(file.env) {
            create = create.tagging(tag);
        }
        // Written before the upload exists: a crash from here on leaves a trace to clean up.
        let intent = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let recorded = match owner {
            Owner::Attempt(push) => {
                store
                    .multipart_intent(&intent, push, &bucket.bucket, &file.key)
                    .await
            }
            Owner::Early { name, target } => {
                store
                    .early_multipart_intent(
                        &intent,
                        file.env,
                        name,
                        (super::model::COMPLIMENTARY, target),
                        &bucket.bucket,
                        &file.key,
                    )
                    .await
            }
        };
        recorded.map_err(|e| UploadError::new("Database", e.to_string()))?;
        let created = match create.send().await {
            Ok(created) => created,
            Err(e) => {
                // The store may have created it and lost the answer: clean up the key.
                abort_all(bucket, &file.key, None).await;
                let _ = store.multipart_ended(&intent).await;
                return Err(sdk_error(e));
            }
        };
        let Some(upload_id) = created.upload_id().map(str::to_string) else {
            let _ = store.multipart_ended(&intent).await;
            return Err(UploadError::new(
                "NoUploadId",
                "CreateMultipartUpload without UploadId",
            ));
        };
        if let Err(e) = store.multipart_started(&intent, &upload_id).await {
            abort(bucket, &file.key, &upload_id).await;
            let _ = store.multipart_ended(&intent).await;
            return Err(UploadError::new("Database", e.to_string()));
        }
        Ok(OpenUpload { intent, upload_id })
    }

    /// Completes a multipart upload with its parts (in any order).
    pub(super) async fn complete(
        &self,
        bucket: &Bucket,
        key: &str,
        open: &OpenUpload,
        mut parts: Vec<CompletedPart>,
        bytes: u64,
    ) -> Result<(), UploadError> {
        parts.sort_by_key(|p| p.part_number());
        let completed = bucket
            .client
            .complete_multipart_upload()
            .bucket(&bucket.bucket)
            .key(key)
            .upload_id(&open.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map(|_| ())
            .map_err(sdk_error);
        match completed {
            // The answer was lost or unreadable, but the store may have completed it.
            Err(e) if completed_anyway(bucket, key, &open.upload_id, bytes).await => {
                tracing::info!(%key, error = %e, "CompleteMultipartUpload answered badly, but the object is complete");
                Ok(())
            }
            other => other,
        }
    }

    /// Sends every part, a few at a time.
    async fn parts(
        &self,
        bucket: &Bucket,
        file: &FileUpload<'_>,
        upload_id: &str,
    ) -> Result<Vec<CompletedPart>, UploadError> {
        let count = self.part_count(file.bytes);
        futures_util::stream::iter(0..count)
            .map(|i| self.send_part(bucket, file, upload_id, i))
            .buffer_unordered(PARTS_IN_FLIGHT)
            .collect::<Vec<Result<CompletedPart, UploadError>>>()
            .await
            .into_iter()
            .collect()
    }

    /// How many parts a file of `bytes` has.
    pub(super) fn part_count(&self, bytes: u64) -> u64 {
        bytes.div_ceil(self.part_size).max(1)
    }

    /// Where part `i` (from 0) of a file of `bytes` ends.
    pub(super) fn part_end(&self, i: u64, bytes: u64) -> u64 {
        ((i + 1) * self.part_size).min(bytes)
    }

    /// Sends part `i` (from 0) of `file`, read from its spool file.
    pub(super) async fn send_part(
        &self,
        bucket: &Bucket,
        file: &FileUpload<'_>,
        upload_id: &str,
        i: u64,
    ) -> Result<CompletedPart, UploadError> {
        let _slot = self
            .part_slots
            .acquire()
            .await
            .map_err(|e| UploadError::new("Closed", e.to_string()))?;
        let offset = i * self.part_size;
        let length = self.part_end(i, file.bytes) - offset;
        let number = i32::try_from(i + 1).unwrap_or(i32::MAX);
        let body = spool_range(file.path.to_path_buf(), offset, length);
        // The SDK computes the part's CRC32C while it sends and puts it in a trailer: one
        // read of the part, no hashing pass before it.
        let sent = bucket
            .client
            .upload_part()
            .bucket(&bucket.bucket)
            .key(&file.key)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(i64::try_from(length).unwrap_or(i64::MAX))
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .body(body)
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(sent.e_tag().map(str::to_string))
            .set_checksum_crc32_c(sent.checksum_crc32_c().map(str::to_string))
            .build())
    }

    /// Aborts the multipart uploads a previous run left open: the one it recorded, and any
    /// other of the same key the store lists (created, but killed before its answer).
    pub async fn abort_leftovers(&self, store: &Store) {
        let Ok(open) = store.open_multiparts().await else {
            return;
        };
        for left in open {
            if let Ok(mut bucket) = self.bucket(&left.target).await {
                bucket.bucket = left.bucket.clone();
                abort_all(&bucket, &left.key, left.upload_id.as_deref()).await;
            }
            let _ = store.multipart_ended(&left.id).await;
        }
    }
}

/// Whether a multipart upload whose completion answered with an error did complete: the
/// upload is gone and the object has the file's size.
async fn completed_anyway(bucket: &Bucket, key: &str, upload_id: &str, bytes: u64) -> bool {
    let upload_gone = match bucket
        .client
        .list_parts()
        .bucket(&bucket.bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
    {
        Ok(_) => false,
        Err(e) => sdk_error(e).code == "NoSuchUpload",
    };
    if !upload_gone {
        return false;
    }
    match bucket
        .client
        .head_object()
        .bucket(&bucket.bucket)
        .key(key)
        .send()
        .await
    {
        Ok(head) => head.content_length().and_then(|n| u64::try_from(n).ok()) == Some(bytes),
        Err(_) => false,
    }
}

/// Aborts `known` and every multipart upload of `key` the store lists.
async fn abort_all(bucket: &Bucket, key: &str, known: Option<&str>) {
    let mut ids: Vec<String> = known.iter().map(|s| s.to_string()).collect();
    match bucket
        .client
        .list_multipart_uploads()
        .bucket(&bucket.bucket)
        .prefix(key)
        .send()
        .await
    {
        Ok(listed) => ids.extend(
            listed
                .uploads()
                .iter()
                .filter(|u| u.key() == Some(key))
                .filter_map(|u| u.upload_id().map(str::to_string)),
        ),
        Err(e) => tracing::warn!(%key, error = %sdk_error(e), "cannot list multipart uploads"),
    }
    ids.sort();
    ids.dedup();
    for id in ids {
        abort(bucket, key, &id).await;
        tracing::info!(%key, "aborted an unfinished multipart upload");
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
