//! Writing segments with direct I/O (`O_DIRECT`), around the page cache.
//!
//! A buffered append costs the writer a fresh page-cache page per 4 KiB (allocation,
//! memory-cgroup charge, buffer heads) and, after the fsync, the eviction of those pages
//! (dropped every few MiB, because cached WAL pages only grow the page cache). On this
//! project's 2-core VM that was about a fifth of the broker's CPU at full ingest. With
//! direct I/O the only CPU cost is a copy into an aligned staging buffer.
//!
//! Direct writes must start and end on a block boundary, from an aligned buffer. So each
//! write starts at the block holding the segment's end, rewriting that block's bytes
//! (kept in memory, [`DirectTail::tail`]) in front of the new ones, and pads its last
//! block with zeros. The padding is overwritten by the next write; on disk it reads as a
//! zero tail, which recovery cuts. Rewriting a block that holds acknowledged frames is
//! safe because their bytes do not change: a torn write leaves each sector either old
//! or new, and both hold them.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;

/// Alignment of buffer addresses, file offsets and lengths (covers 512 B and 4 KiB
/// logical blocks).
pub const ALIGN: usize = 4096;
/// Bytes copied before each write; a group commit of a few MiB takes a few writes.
const STAGING_BYTES: usize = 2 << 20;

/// `len` bytes starting at an [`ALIGN`]ed address, carved out of a larger `Vec`.
pub struct AlignedBuf {
    vec: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer.
    pub fn zeroed(len: usize) -> AlignedBuf {
        let vec = vec![0u8; len + ALIGN];
        // Bytes to skip from the allocation's start to the next aligned address.
        let start = (vec.as_ptr() as usize).wrapping_neg() % ALIGN;
        AlignedBuf { vec, start, len }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.vec[self.start..self.start + self.len]
    }

    pub fn as_mut(&mut self) -> &mut [u8] {
        &mut self.vec[self.start..self.start + self.len]
    }
}

/// Switches `file` (segment `path`, whose frames end at `end`) to direct I/O and returns
/// the bytes of its last, partly written block. `Ok(None)` when the filesystem has no
/// direct I/O; the file is then left as it was.
pub fn enable(file: &File, path: &Path, end: u64) -> io::Result<Option<Vec<u8>>> {
    let start = end - end % ALIGN as u64;
    let mut tail = vec![0u8; (end - start) as usize];
    File::open(path)?.read_exact_at(&mut tail, start)?;
    let flags = rustix::fs::fcntl_getfl(file)?;
    match rustix::fs::fcntl_setfl(file, flags | rustix::fs::OFlags::DIRECT) {
        Ok(()) => Ok(Some(tail)),
        Err(rustix::io::Errno::INVAL) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The direct-I/O state of the active segment.
pub struct DirectTail {
    staging: AlignedBuf,
    /// The bytes of the segment's last, partly written block (fewer than [`ALIGN`]).
    tail: Vec<u8>,
}

impl DirectTail {
    pub fn new(tail: Vec<u8>) -> DirectTail {
        DirectTail {
            staging: AlignedBuf::zeroed(STAGING_BYTES),
            tail,
        }
    }

    /// Starts over on another segment whose last partial block holds `tail`.
    pub fn reset(&mut self, tail: Vec<u8>) {
        self.tail = tail;
    }

    /// Appends `bufs` to `file`, whose frames end at `end`.
    pub fn write(&mut self, file: &File, end: u64, bufs: &[Bytes]) -> io::Result<()> {
        let staging = self.staging.as_mut();
        let mut at = end - self.tail.len() as u64;
        let mut filled = self.tail.len();
        staging[..filled].copy_from_slice(&self.tail);
        for buf in bufs {
            let mut rest: &[u8] = buf;
            while !rest.is_empty() {
                let n = rest.len().min(staging.len() - filled);
                staging[filled..filled + n].copy_from_slice(&rest[..n]);
                filled += n;
                rest = &rest[n..];
                if filled == staging.len() {
                    file.write_all_at(staging, at)?;
                    at += staging.len() as u64;
                    filled = 0;
                }
            }
        }
        if filled > 0 {
            let padded = filled.next_multiple_of(ALIGN);
            staging[filled..padded].fill(0);
            file.write_all_at(&staging[..padded], at)?;
        }
        let partial = filled % ALIGN;
        self.tail.clear();
        self.tail
            .extend_from_slice(&staging[filled - partial..filled]);
        Ok(())
    }
}
