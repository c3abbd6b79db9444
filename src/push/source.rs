//! Reading a file that is sent once: with `O_DIRECT`, from the disk straight into the block
//! that is sent, past the page cache.
//!
//! Why: a read that fills the page cache pays for every page it allocates there, and on a VM
//! that hands freed memory back to its host that is the dominant cost (on the bench machine
//! about 1.1 ms of CPU per MiB read, against 0.1 for a direct read of the same file); the
//! pages are then never read again, and they push out what the machine had cached. Pages of
//! the file that are cached and not yet written are written first (the kernel does that for a
//! direct read), so the bytes are the file's either way. Asking which pages are cached costs
//! more than it saves: a `RWF_NOWAIT` read that finds none starts a readahead into the cache.
//! Where direct reads are refused (tmpfs, an unaligned offset) the file is read normally.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use bytes::{Bytes, BytesMut};
use rustix::fs::OFlags;
use tokio::sync::mpsc;

/// What direct reads align to (offset, length and memory): the largest logical block size a
/// disk has.
const ALIGN: usize = 4096;

/// Bytes read at once with direct reads: at this size they run at 450 MB/s on the bench
/// machine's disk (256 KiB: about half that).
pub(super) const BLOCK: usize = 1024 * 1024;

/// How a block was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Read {
    /// From the disk into the block, past the page cache.
    Direct,
    /// An ordinary read (the file system has no direct reads, or the offset is unaligned).
    Buffered,
}

/// A file read in order, block by block.
#[derive(Debug)]
pub(super) struct Source {
    file: File,
    pos: u64,
    /// The descriptor's `O_DIRECT` flag is set (it is switched per block, on one descriptor,
    /// so both kinds of read see the same file).
    direct_on: bool,
    /// Direct reads work here (tmpfs, for one, refuses them).
    direct: bool,
}

impl Source {
    /// Reads `file` from its start.
    pub(super) fn new(file: File) -> Source {
        Source {
            file,
            pos: 0,
            direct_on: false,
            direct: true,
        }
    }

    /// Reads `limit` bytes block by block into `blocks`, each also shown to `seen`, or on past
    /// `limit` to the end of the file if `past` (to see whether it grew). Blocks: run it on a
    /// blocking thread.
    pub(super) fn pump(
        &mut self,
        limit: u64,
        past: bool,
        blocks: &mpsc::Sender<io::Result<Bytes>>,
        mut seen: impl FnMut(&[u8]),
    ) -> Pumped {
        let mut total = 0u64;
        loop {
            let left = usize::try_from(limit.saturating_sub(total)).unwrap_or(BLOCK);
            // A block no larger than what is left (a snapshot is one small read); past the
            // limit, a small one is enough to see that there is more.
            let want = match (left, past) {
                (0, false) => return Pumped::End(total),
                (0, true) => ALIGN,
                _ => left.min(BLOCK),
            };
            match self.next_block(want) {
                Ok((block, _)) if block.is_empty() => return Pumped::End(total),
                Ok((block, _)) => {
                    seen(&block);
                    total += block.len() as u64;
                    // The reader is gone (the request is over): stop reading.
                    if blocks.blocking_send(Ok(block)).is_err() {
                        return Pumped::Cut;
                    }
                }
                Err(e) => {
                    let _ = blocks.blocking_send(Err(e));
                    return Pumped::Failed;
                }
            }
        }
    }

    /// The next block of at most `max` bytes (empty at the end of the file).
    pub(super) fn next_block(&mut self, max: usize) -> io::Result<(Bytes, Read)> {
        let mut block = aligned(max);
        let (n, how) = self.read(&mut block)?;
        // The block was rounded up to the alignment: no more than asked for.
        let n = n.min(max);
        block.truncate(n);
        self.pos += n as u64;
        Ok((block.freeze(), how))
    }

    fn read(&mut self, block: &mut [u8]) -> io::Result<(usize, Read)> {
        if self.direct && self.pos.is_multiple_of(ALIGN as u64) && self.set_direct(true).is_ok() {
            match self.file.read_at(block, self.pos) {
                Ok(n) => return Ok((n, Read::Direct)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return self.read(block),
                // Refused (EINVAL: an alignment this disk does not take): read normally.
                Err(_) => self.direct = false,
            }
        }
        self.set_direct(false)?;
        loop {
            match self.file.read_at(block, self.pos) {
                Ok(n) => return Ok((n, Read::Buffered)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Sets or clears `O_DIRECT` on the descriptor; a file system that refuses it is read
    /// without it from then on.
    fn set_direct(&mut self, on: bool) -> io::Result<()> {
        if self.direct_on == on {
            return Ok(());
        }
        match set_direct(&self.file, on) {
            Ok(()) => {
                self.direct_on = on;
                Ok(())
            }
            Err(e) => {
                self.direct = false;
                Err(e)
            }
        }
    }
}

/// How [`Source::pump`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pumped {
    /// At the end of the file or of the limit: the bytes read.
    End(u64),
    /// The reader went away first.
    Cut,
    /// A read failed (the error went to the reader).
    Failed,
}

/// Sets or clears `O_DIRECT` on `file`'s open file description (and so on every descriptor
/// duplicated from it).
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    let flags = if on {
        flags | OFlags::DIRECT
    } else {
        flags - OFlags::DIRECT
    };
    Ok(rustix::fs::fcntl_setfl(file, flags)?)
}

/// A zeroed block of `len` bytes (rounded up to [`ALIGN`]) whose memory starts at a multiple
/// of [`ALIGN`], as direct reads need.
fn aligned(len: usize) -> BytesMut {
    let len = len.max(1).div_ceil(ALIGN) * ALIGN;
    let mut block = BytesMut::zeroed(len + ALIGN);
    let skip = block.as_ptr().align_offset(ALIGN).min(ALIGN);
    let _ = block.split_to(skip);
    block.truncate(len);
    block
}

/// Bytes of `path` in the page cache, from util-linux's `fincore` (None without it).
#[cfg(test)]
pub(super) fn cached_bytes(path: &std::path::Path) -> Option<u64> {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--raw", "--output", "RES"])
        .arg(path)
        .output()
        .ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(source: &mut Source, max: usize) -> (Vec<u8>, Vec<Read>) {
        let (mut data, mut how) = (Vec::new(), Vec::new());
        loop {
            let (block, read) = source.next_block(max).unwrap();
            if block.is_empty() {
                return (data, how);
            }
            assert!(block.len() <= max.div_ceil(ALIGN) * ALIGN);
            data.extend_from_slice(&block);
            how.push(read);
        }
    }

    #[test]
    fn blocks_are_aligned_for_direct_reads() {
        for len in [1, 4096, 10_000, 1 << 20] {
            let block = aligned(len);
            assert_eq!(block.as_ptr() as usize % ALIGN, 0);
            assert_eq!(block.len(), len.div_ceil(ALIGN) * ALIGN);
        }
    }

    #[test]
    fn a_file_is_read_whole_past_the_page_cache() {
        // In the package's folder, on a disk (/tmp may be a tmpfs, which has no direct reads).
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("f");
        // Not a multiple of the block or of the alignment: the last block is short.
        let data: Vec<u8> = (0..3 * 65_536 + 1_234)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();

        // Just written (its pages are cached and dirty): the direct reads see them.
        let mut source = Source::new(File::open(&path).unwrap());
        let (got, how) = read_all(&mut source, 65_536);
        assert_eq!(got, data);
        assert!(source.direct, "this disk takes direct reads");
        assert_eq!(how, vec![Read::Direct; 4]);

        // Dropped from the page cache: read from the disk, and not cached again.
        let file = File::open(&path).unwrap();
        file.sync_all().unwrap();
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        let evicted = cached_bytes(&path);
        let (got, how) = read_all(&mut Source::new(file), 65_536);
        assert_eq!(got, data);
        assert_eq!(how, vec![Read::Direct; 4]);
        if let Some(before) = evicted {
            assert_eq!(before, 0);
            assert_eq!(
                cached_bytes(&path),
                Some(0),
                "a direct read fills no page cache"
            );
        }
    }

    #[test]
    fn an_unaligned_offset_is_read_normally() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3 * ALIGN).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mut source = Source::new(File::open(&path).unwrap());
        source.pos = 100;
        let (block, how) = source.next_block(ALIGN).unwrap();
        assert_eq!(how, Read::Buffered);
        assert_eq!(&block[..], &data[100..100 + ALIGN]);
        // Aligned again: direct.
        source.pos = ALIGN as u64;
        let (block, how) = source.next_block(ALIGN).unwrap();
        assert_eq!(how, Read::Direct);
        assert_eq!(&block[..], &data[ALIGN..2 * ALIGN]);
    }
}
