//! The spool: files received from processing servers, kept until every destination has them.
//! A file is streamed to a temporary name, hashed on the way, fsync'd, renamed into place and
//! its directory fsync'd before the upload is acknowledged; a file that fails its
//! `Content-Digest` or its size limit is never kept.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

use super::lock;
use super::store::FileRow;

/// Why a received file was not kept.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Longer than `push.max_file_size`.
    #[error("the file is larger than {0} bytes")]
    TooLarge(u64),
    /// The body's SHA-256 differs from its `Content-Digest`.
    #[error("the body does not match its Content-Digest")]
    DigestMismatch,
    /// The client's body ended with an error.
    #[error("the upload was cut: {0}")]
    Body(String),
    /// The disk refused.
    #[error("spool: {0}")]
    Io(#[from] std::io::Error),
}

/// A file about to be received (see [`Spool::incoming`]).
#[derive(Debug)]
pub struct Incoming {
    tmp: PathBuf,
    file: std::fs::File,
    link: Option<PathBuf>,
}

impl Incoming {
    /// The file's second name, when one was asked for and made.
    pub fn link(&self) -> Option<&Path> {
        self.link.as_deref()
    }
}

/// A file received and kept: its row, and the CRC32C of its bytes (which a client that
/// hashed the file as it sent it compares with its own, at a fraction of SHA-256's cost).
#[derive(Debug)]
pub struct Received {
    /// Suffix, size and SHA-256.
    pub row: FileRow,
    /// CRC32C (Castagnoli) of the bytes.
    pub crc32c: u32,
}

/// How far a file being received is, for an early upload reading it as it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// This many bytes are written to the file (not yet durable).
    Written(u64),
    /// The file is whole, its digest checked, durable and kept: this many bytes.
    Kept(u64),
    /// The file was refused or lost (cut, too large, digest mismatch, disk error).
    Refused,
}

/// The spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    /// Directories whose own entry in their parent this process has synced: a recording's
    /// second file needs only its directory synced, not the environment's too.
    durable: Arc<Mutex<HashSet<PathBuf>>>,
    /// Directory syncs made for received files (tests count them).
    dir_syncs: Arc<AtomicU64>,
}

/// Writes are gathered to this size before each write to the file.
const WRITE_BUFFER: usize = 1024 * 1024;

impl Spool {
    /// Creates `files/` and `tmp/` under `root` (a leftover `tmp/` from a crash is emptied).
    pub async fn open(root: &Path) -> std::io::Result<Spool> {
        tokio::fs::create_dir_all(root.join("files")).await?;
        let tmp = root.join("tmp");
        if tokio::fs::try_exists(&tmp).await.unwrap_or(false) {
            tokio::fs::remove_dir_all(&tmp).await?;
        }
        tokio::fs::create_dir_all(&tmp).await?;
        Ok(Spool {
            root: root.to_path_buf(),
            durable: Arc::default(),
            dir_syncs: Arc::default(),
        })
    }

    /// This node's id, made once and kept in `{root}/node-id`: the database records which
    /// node's spool holds a recording, and only that node pushes it (PostgreSQL fleets).
    pub async fn node_id(&self) -> std::io::Result<String> {
        let path = self.root.join("node-id");
        match tokio::fs::read_to_string(&path).await {
            Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let tmp = self.root.join("tmp").join("node-id");
        let file = tokio::fs::File::create(&tmp).await?;
        let mut file = file.into_std().await;
        let written = id.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            file.write_all(written.as_bytes())?;
            file.sync_all()
        })
        .await
        .map_err(std::io::Error::other)??;
        tokio::fs::rename(&tmp, &path).await?;
        sync_dir(&self.root).await?;
        Ok(id)
    }

    /// Where a recording's file lives.
    pub fn path(&self, env: &str, name: &str, suffix: &str) -> PathBuf {
        self.dir(env, name).join(format!("{name}{suffix}"))
    }

    fn dir(&self, env: &str, name: &str) -> PathBuf {
        self.root.join("files").join(env).join(name)
    }

    /// A new temporary file to receive into; with `link`, also a second name for it that
    /// stays valid after [`Spool::receive`] renames the file into place (an early upload
    /// reads the file by that name while it arrives, and removes it when done).
    pub async fn incoming(&self, link: bool) -> std::io::Result<Incoming> {
        let id = format!("{:016x}", fastrand::u64(..));
        let tmp = self.root.join("tmp").join(format!("{id}.part"));
        let second = link.then(|| self.root.join("tmp").join(format!("{id}.early")));
        // One trip to the blocking pool for the file and its second name.
        let path = tmp.clone();
        let (file, link) = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::create(&path)?;
            let link = second.and_then(|second| match std::fs::hard_link(&path, &second) {
                Ok(()) => Some(second),
                Err(e) => {
                    tracing::warn!(error = %e, "no second name for an early upload");
                    None
                }
            });
            Ok::<_, std::io::Error>((file, link))
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(Incoming { tmp, file, link })
    }

    /// Streams `body` into `incoming` and keeps it as `{name}{suffix}`, replacing an earlier
    /// upload, and returns its size and SHA-256 once it is durable. `progress` hears how much
    /// is written as it is, then whether the file was kept.
    #[allow(clippy::too_many_arguments)]
    pub async fn receive<B>(
        &self,
        incoming: Incoming,
        (env, name, suffix): (&str, &str, &str),
        mut body: B,
        max_bytes: u64,
        digest: Option<[u8; 32]>,
        progress: Option<tokio::sync::watch::Sender<Arrival>>,
    ) -> Result<Received, SpoolError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let Incoming { tmp, file, .. } = incoming;
        let result = async {
            let mut writer = BlockWriter::new(file, progress.as_ref());
            let mut hasher = Sha256::new();
            let mut crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
            let mut bytes = 0u64;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| SpoolError::Body(e.to_string()))?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                bytes += data.len() as u64;
                if bytes > max_bytes {
                    return Err(SpoolError::TooLarge(max_bytes));
                }
                hasher.update(&data);
                crc.update(&data);
                writer.push(data).await?;
            }
            writer.finish().await?;
            let sha: [u8; 32] = hasher.finalize().into();
            if digest.is_some_and(|d| d != sha) {
                return Err(SpoolError::DigestMismatch);
            }
            // A CRC-32 is 32 bits wide.
            Ok((bytes, sha, crc.finalize() as u32))
        }
        .await;
        let kept = async {
            let (bytes, sha, crc32c) = result?;
            let dir = self.dir(env, name);
            let (from, to) = (tmp.clone(), self.path(env, name, suffix));
            let (durable, files) = (self.durable.clone(), self.root.join("files"));
            let syncs = self.dir_syncs.clone();
            // One trip to the blocking pool: the rename is durable only once the directories
            // holding it are, up to the first one whose entry is known to be (a directory
            // counts as known only once a sync of its parent finished).
            tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&dir)?;
                std::fs::rename(&from, &to)?;
                std::fs::File::open(&dir)?.sync_all()?;
                syncs.fetch_add(1, Ordering::Relaxed);
                let mut synced = dir.as_path();
                while !lock(&durable).contains(synced) {
                    let Some(parent) = synced.parent() else { break };
                    std::fs::File::open(parent)?.sync_all()?;
                    syncs.fetch_add(1, Ordering::Relaxed);
                    lock(&durable).insert(synced.to_path_buf());
                    if parent == files {
                        break;
                    }
                    synced = parent;
                }
                Ok::<_, std::io::Error>(())
            })
            .await
            .map_err(std::io::Error::other)??;
            Ok(Received {
                row: FileRow {
                    suffix: suffix.to_string(),
                    bytes,
                    sha256: hex::encode(sha),
                },
                crc32c,
            })
        }
        .await;
        match &kept {
            Ok(received) => {
                if let Some(p) = &progress {
                    p.send_replace(Arrival::Kept(received.row.bytes));
                }
            }
            Err(_) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                if let Some(p) = &progress {
                    p.send_replace(Arrival::Refused);
                }
            }
        }
        kept
    }

    /// Removes a recording's files.
    pub async fn remove(&self, env: &str, name: &str) -> std::io::Result<()> {
        let dir = self.dir(env, name);
        // Forgotten first: a directory made again afterwards has its entry synced again.
        lock(&self.durable).remove(&dir);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        if let Some(parent) = dir.parent() {
            sync_dir(parent).await?;
        }
        Ok(())
    }

    /// Every `(env, name)` with a folder in the spool.
    pub async fn recordings(&self) -> Vec<(String, String)> {
        let root = self.root.join("files");
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for env in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                let env_name = env.file_name().to_string_lossy().into_owned();
                for rec in std::fs::read_dir(env.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    out.push((
                        env_name.clone(),
                        rec.file_name().to_string_lossy().into_owned(),
                    ));
                }
            }
            out
        })
        .await
        .unwrap_or_default()
    }

    /// Bytes held in the spool's files (metrics).
    pub async fn bytes(&self) -> u64 {
        let root = self.root.join("files");
        tokio::task::spawn_blocking(move || dir_bytes(&root))
            .await
            .unwrap_or(0)
    }
}

/// Writes a stream to a file in blocks of [`WRITE_BUFFER`] on the blocking pool, one block
/// written while the next gathers, then `fsync`s it. A block is the body's own buffers,
/// written with `writev`, not copied into a block first (that copy was half of the push
/// process's `memmove` on the push bench); pieces under [`SMALL`] are copied together, so a
/// body of tiny frames still makes few, large writes.
///
/// Every [`SYNC_EVERY`] bytes the writing of what is written so far to the disk starts
/// beside the writes (on a second descriptor, see [`write_out`]), so the disk works while the
/// body is still arriving: with plenty of RAM the kernel would otherwise hold a 1 GiB file
/// dirty until the final `fsync`, and the client would wait for all of it to be written only
/// after its last byte (4.6 s per GiB on the bench machine's disk, with the disk idle during
/// the transfer before).
struct BlockWriter<'p> {
    /// The next block's pieces, and their bytes.
    gathering: Vec<Bytes>,
    gathered: usize,
    /// Small pieces copied together.
    small: bytes::BytesMut,
    idle: Option<std::fs::File>,
    writing: Option<tokio::task::JoinHandle<Written>>,
    /// A second descriptor of the file, for the early syncs (`None` while one runs).
    syncer: Option<std::fs::File>,
    syncing: Option<tokio::task::JoinHandle<std::io::Result<std::fs::File>>>,
    /// Bytes handed to writes since the last early sync started.
    unsynced: usize,
    /// Bytes written so far, told to `progress`.
    written: u64,
    /// Bytes whose writing to the disk was started.
    out_to: u64,
    progress: Option<&'p tokio::sync::watch::Sender<Arrival>>,
}

/// Early writing to the disk starts after this many bytes are written (see [`BlockWriter`]).
const SYNC_EVERY: usize = 32 * 1024 * 1024;

/// Pieces of a body smaller than this are copied together before they are written.
const SMALL: usize = 16 * 1024;

/// A file and the bytes of a block written to it, back from a block write.
type Written = std::io::Result<(std::fs::File, usize)>;

impl<'p> BlockWriter<'p> {
    fn new(file: std::fs::File, progress: Option<&'p tokio::sync::watch::Sender<Arrival>>) -> Self {
        BlockWriter {
            written: 0,
            out_to: 0,
            progress,
            gathering: Vec::new(),
            gathered: 0,
            small: bytes::BytesMut::new(),
            // Without a second descriptor the file is only synced at the end, as before.
            syncer: file.try_clone().ok(),
            idle: Some(file),
            writing: None,
            syncing: None,
            unsynced: 0,
        }
    }

    async fn push(&mut self, data: Bytes) -> std::io::Result<()> {
        self.gathered += data.len();
        if data.len() < SMALL {
            self.small.extend_from_slice(&data);
            if self.small.len() >= 4 * SMALL {
                self.gathering.push(self.small.split().freeze());
            }
        } else {
            self.take_small();
            self.gathering.push(data);
        }
        if self.gathered >= WRITE_BUFFER {
            self.flush().await?;
        }
        Ok(())
    }

    /// Small pieces gathered so far go before the next piece.
    fn take_small(&mut self) {
        if !self.small.is_empty() {
            self.gathering.push(self.small.split().freeze());
        }
    }

    /// The gathered block, taken, and its bytes.
    fn block(&mut self) -> (Vec<Bytes>, usize) {
        self.take_small();
        (
            std::mem::take(&mut self.gathering),
            std::mem::take(&mut self.gathered),
        )
    }

    /// Hands the gathered block to the blocking pool once the previous write is done.
    async fn flush(&mut self) -> std::io::Result<()> {
        let mut file = self.wait().await?;
        let (block, length) = self.block();
        self.unsynced += length;
        self.writing = Some(tokio::task::spawn_blocking(move || {
            write_all(&mut file, &block)?;
            Ok((file, length))
        }));
        self.sync_early().await
    }

    /// Starts writing what is written so far to the disk once enough is, unless a start
    /// still runs.
    async fn sync_early(&mut self) -> std::io::Result<()> {
        if self.unsynced < SYNC_EVERY {
            return Ok(());
        }
        if self.syncing.as_ref().is_some_and(|h| h.is_finished()) {
            self.wait_sync().await?;
        }
        if let Some(file) = self.syncer.take() {
            self.unsynced = 0;
            let (from, to) = (self.out_to, self.written);
            self.out_to = to;
            self.syncing = Some(tokio::task::spawn_blocking(move || {
                write_out(&file, from, to - from, false)?;
                Ok(file)
            }));
        }
        Ok(())
    }

    async fn wait_sync(&mut self) -> std::io::Result<()> {
        if let Some(handle) = self.syncing.take() {
            self.syncer = Some(handle.await.map_err(std::io::Error::other)??);
        }
        Ok(())
    }

    async fn wait(&mut self) -> std::io::Result<std::fs::File> {
        match (self.writing.take(), self.idle.take()) {
            (Some(handle), _) => {
                let (file, length) = handle.await.map_err(std::io::Error::other)??;
                self.written += length as u64;
                if let Some(progress) = self.progress {
                    progress.send_replace(Arrival::Written(self.written));
                }
                Ok(file)
            }
            (None, Some(idle)) => Ok(idle),
            (None, None) => Err(std::io::Error::other("spool writer used after an error")),
        }
    }

    /// Writes what is left and `fsync`s the file, in one trip to the blocking pool (a small
    /// file makes no other).
    async fn finish(mut self) -> std::io::Result<()> {
        let mut file = self.wait().await?;
        // An early sync's error is the file's error too (the page may be lost).
        self.wait_sync().await?;
        let (last, length) = self.block();
        tokio::task::spawn_blocking(move || {
            write_all(&mut file, &last)?;
            file.sync_all()
        })
        .await
        .map_err(std::io::Error::other)??;
        self.written += length as u64;
        if let Some(progress) = self.progress {
            progress.send_replace(Arrival::Written(self.written));
        }
        Ok(())
    }
}

/// Writes every piece of `block`, in order, with as few calls as the kernel allows.
fn write_all(file: &mut std::fs::File, block: &[Bytes]) -> std::io::Result<()> {
    use std::io::{IoSlice, Write};
    let mut slices: Vec<IoSlice<'_>> = block.iter().map(|b| IoSlice::new(b)).collect();
    let mut left = &mut slices[..];
    IoSlice::advance_slices(&mut left, 0);
    while !left.is_empty() {
        match file.write_vectored(left) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut left, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Drops bytes `start..end` of a spool file from the page cache once they are on the disk:
/// a part that went up early is not read again (a retry reads it from the disk), and pages
/// freed while the file still arrives are reused by its next writes, where new ones would
/// each cost a fault, and on a VM that hands freed memory back to its host, far more (on the
/// bench machine, writing 1 GiB with a sync every 16 MiB took 2.1–2.3 s of CPU; dropping each
/// 16 MiB after its sync, 0.6–0.67 s). Advisory: a failure changes nothing but the cost.
pub async fn uncache(path: &Path, start: u64, end: u64) {
    let path = path.to_path_buf();
    let dropped = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let file = std::fs::File::open(&path)?;
        let Some(length) = std::num::NonZeroU64::new(end.saturating_sub(start)) else {
            return Ok(());
        };
        // Dirty or in-writeback pages are not dropped: write them first.
        write_out(&file, start, length.get(), true)?;
        Ok(rustix::fs::fadvise(
            &file,
            start,
            Some(length),
            rustix::fs::Advice::DontNeed,
        )?)
    })
    .await;
    if let Ok(Err(error)) = dropped {
        tracing::debug!(%error, "a sent part stays in the page cache");
    }
}

/// Starts writing bytes `offset..offset + len` of `file` to the disk, and with `wait` waits
/// until they are written (`sync_file_range(2)`): for the page cache's sake, not durability.
/// Unlike `fdatasync` it writes no metadata and asks the disk for no cache flush; a flush per
/// 16 or 32 MiB was 100 flushes per GiB on the push bench's disk, each waiting for all the
/// disk had cached (the backend's writeback too). The file's final `fsync` makes it durable.
#[allow(unsafe_code)]
fn write_out(file: &std::fs::File, offset: u64, len: u64, wait: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = if wait {
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER
    } else {
        libc::SYNC_FILE_RANGE_WRITE
    };
    let (Ok(offset), Ok(len)) = (offset.try_into(), len.try_into()) else {
        return Err(std::io::ErrorKind::InvalidInput.into());
    };
    // SAFETY: the descriptor is borrowed, so open, for the call; no memory is passed.
    let result = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .map_err(std::io::Error::other)?
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// The SHA-256 of a `Content-Digest` header (RFC 9530): `Ok(None)` when it names only
/// algorithms we do not check, `Err` when it is malformed.
pub fn content_digest(value: &str) -> Result<Option<[u8; 32]>, &'static str> {
    for member in value.split(',') {
        let Some((algorithm, rest)) = member.trim().split_once('=') else {
            return Err("not a structured dictionary");
        };
        if !algorithm.trim().eq_ignore_ascii_case("sha-256") {
            continue;
        }
        let encoded = rest
            .trim()
            .strip_prefix(':')
            .and_then(|r| r.strip_suffix(':'))
            .ok_or("sha-256 is not a byte sequence (:base64:)")?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| "sha-256 is not base64")?;
        return <[u8; 32]>::try_from(bytes.as_slice())
            .map(Some)
            .map_err(|_| "sha-256 is not 32 bytes");
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_content_digest() {
        let sha = Sha256::digest(b"hello");
        let b64 = base64::engine::general_purpose::STANDARD.encode(sha);
        let want: [u8; 32] = sha.into();
        assert_eq!(content_digest(&format!("sha-256=:{b64}:")), Ok(Some(want)));
        assert_eq!(
            content_digest(&format!("sha-512=:AAAA:, sha-256=:{b64}:")),
            Ok(Some(want))
        );
        assert_eq!(content_digest("sha-512=:AAAA:"), Ok(None));
        assert!(content_digest("sha-256=abc").is_err());
        assert!(content_digest("sha-256=:AAAA:").is_err());
        assert!(content_digest("garbage").is_err());
    }

    /// A received file's name is durable: its directory is synced, and each parent up to
    /// `files/` whose entry for it is not yet known to be (a new environment's too); a
    /// recording's next file syncs only its own directory, until the recording is removed.
    #[tokio::test]
    async fn directories_are_synced_up_to_the_first_durable_entry() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).await.unwrap();
        let put = |name: &'static str, suffix: &'static str| {
            let spool = spool.clone();
            async move {
                let body = http_body_util::Full::new(Bytes::from_static(b"bytes"));
                spool
                    .receive(
                        spool.incoming(false).await.unwrap(),
                        ("env", name, suffix),
                        body,
                        u64::MAX,
                        None,
                        None,
                    )
                    .await
                    .unwrap();
                spool.dir_syncs.load(Ordering::Relaxed)
            }
        };
        // New environment, new recording: the recording's, the environment's and `files/`.
        assert_eq!(put("a", ".jpg").await, 3);
        // The same recording: its own directory only.
        assert_eq!(put("a", ".mp4").await, 4);
        // Another recording of the environment: its directory and the environment's.
        assert_eq!(put("b", ".jpg").await, 6);
        // Removed, then received again: its entry in the environment is synced again.
        spool.remove("env", "a").await.unwrap();
        assert_eq!(put("a", ".jpg").await, 8);
        assert_eq!(
            std::fs::read(spool.path("env", "a", ".jpg")).unwrap(),
            b"bytes"
        );
    }

    /// A sent range leaves the page cache, written first (dirty pages would stay), and the
    /// rest of the file stays.
    #[tokio::test]
    async fn a_sent_range_leaves_the_page_cache() {
        // On a disk (a tmpfs file's pages are the file).
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("f");
        // Page-cache folios go up to 2 MiB, and only whole ones are dropped (parts are 16 MiB
        // at 16 MiB offsets): a range of whole 2 MiB.
        let two = 2 * 1024 * 1024;
        std::fs::write(&path, vec![5u8; 4 * two]).unwrap();
        let cached = || super::super::source::cached_bytes(&path);
        let Some(before) = cached() else {
            eprintln!("no fincore here: nothing to check");
            return;
        };
        assert_eq!(before, 4 * two as u64, "just written, so cached");
        uncache(&path, two as u64, 3 * two as u64).await;
        assert_eq!(cached(), Some(2 * two as u64));
        // An empty range drops nothing.
        uncache(&path, 0, 0).await;
        assert_eq!(cached(), Some(2 * two as u64));
        assert_eq!(std::fs::read(&path).unwrap(), vec![5u8; 4 * two]);
    }

    /// A file long enough for early syncs lands whole, hashed and in order, and a wrong
    /// digest still keeps nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_synced_while_it_arrives_is_whole() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).await.unwrap();
        // About 40 MiB in uneven frames, small ones (copied together) between large ones
        // (written as they are): an early sync, pieces in order, and a short last block.
        let frames: Vec<Bytes> = (0..6_500u32)
            .map(|i| {
                let len = if i % 7 == 3 { 40_000 } else { 1024 } + (i as usize % 3);
                Bytes::from(vec![(i % 251) as u8; len])
            })
            .collect();
        assert!(frames.iter().map(Bytes::len).sum::<usize>() > SYNC_EVERY);
        let mut whole = Vec::new();
        for f in &frames {
            whole.extend_from_slice(f);
        }
        let sha: [u8; 32] = Sha256::digest(&whole).into();
        let body = |frames: Vec<Bytes>| {
            http_body_util::StreamBody::new(futures_util::stream::iter(
                frames
                    .into_iter()
                    .map(|b| Ok::<_, std::io::Error>(http_body::Frame::data(b))),
            ))
        };
        let (progress, mut seen) = tokio::sync::watch::channel(Arrival::Written(0));
        let incoming = spool.incoming(true).await.unwrap();
        let link = incoming.link().unwrap().to_path_buf();
        let received = spool
            .receive(
                incoming,
                ("env", "rec", "_raw.mp4"),
                body(frames.clone()),
                u64::MAX,
                Some(sha),
                Some(progress),
            )
            .await
            .unwrap();
        assert_eq!(*seen.borrow_and_update(), Arrival::Kept(whole.len() as u64));
        // The second name is the same file, after the rename too.
        assert!(std::fs::read(&link).unwrap() == whole, "the link differs");
        std::fs::remove_file(&link).unwrap();
        assert_eq!(received.row.bytes, whole.len() as u64);
        assert_eq!(received.row.sha256, hex::encode(sha));
        let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &whole);
        assert_eq!(u64::from(received.crc32c), crc);
        let kept = std::fs::read(spool.path("env", "rec", "_raw.mp4")).unwrap();
        assert!(kept == whole, "the spool file differs from the body");

        let mut wrong = sha;
        wrong[0] ^= 1;
        let (progress, seen) = tokio::sync::watch::channel(Arrival::Written(0));
        let refused = spool
            .receive(
                spool.incoming(false).await.unwrap(),
                ("env", "other", "_raw.mp4"),
                body(frames),
                u64::MAX,
                Some(wrong),
                Some(progress),
            )
            .await;
        assert_eq!(*seen.borrow(), Arrival::Refused);
        assert!(matches!(refused, Err(SpoolError::DigestMismatch)));
        assert!(!spool.path("env", "other", "_raw.mp4").exists());
        let tmp: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
        assert!(tmp.is_empty(), "a refused file left {tmp:?}");
    }
}
