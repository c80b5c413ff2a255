//! Segment files: naming, listing, creation and positional reads.
//!
//! A segment is `<dir>/<16-digit zero-padded id>.wal`; ids increase by one per roll, so the
//! name order is the write order. A new segment is created with its header and fsynced,
//! and the directory is fsynced, before any frame is written to it.
//!
//! A dead segment may be kept as a spare, `<id>.wal.spare`, and later recycled into a new
//! segment: its header is rewritten (flagged recycled) and synced *before* it is renamed,
//! so a file named as a segment always has the header that tells recovery how to read it.
//! When a quarter of a segment is written and no spare is left, one is prepared in the
//! background: zero-filled with direct I/O (`prepared-<nonce>-<n>.wal.spare`), so the next
//! roll still overwrites blocks in place; recovery reads its zeros after the last frame as
//! the end.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::direct::{AlignedBuf, ALIGN};
use super::error::WalError;
use super::format::{self, parse_frame_header, FRAME_HEADER_LEN};
use crate::types::GroupId;

const SUFFIX: &str = ".wal";
const SPARE_SUFFIX: &str = ".wal.spare";

/// File name of segment `id`.
pub fn file_name(id: u64) -> String {
    format!("{id:016}{SUFFIX}")
}

/// Path of segment `id` in `dir`.
pub fn path(dir: &Path, id: u64) -> PathBuf {
    dir.join(file_name(id))
}

/// Path of the spare made from segment `id`.
pub fn spare_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016}{SPARE_SUFFIX}"))
}

/// Name of the file a spare is zero-filled in before it is renamed to a spare's name.
const PREPARING: &str = "preparing.wal.spare.tmp";

/// Path of the `n`th spare prepared by the WAL instance with `nonce`.
pub fn prepared_spare_path(dir: &Path, nonce: u32, n: u64) -> PathBuf {
    dir.join(format!("prepared-{nonce:08x}-{n}{SPARE_SUFFIX}"))
}

/// Removes a spare whose preparation a crash interrupted, if there is one.
pub fn remove_unfinished_spare(dir: &Path) -> Result<(), WalError> {
    let p = dir.join(PREPARING);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(WalError::io("remove unfinished spare", &p, e)),
    }
}

/// Zeros written per call when preparing a spare.
const ZERO_WRITE_BYTES: usize = 1 << 20;
/// Pause after each write of zeros: a 64 MiB spare takes about 100 ms to prepare.
const ZERO_WRITE_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

/// Creates the spare `spare`: a file of at least `len` zero bytes whose blocks are
/// allocated and written, so that a segment recycled from it is written in place instead
/// of allocating as it grows. On this kind of VM disk, `fdatasync` after appending 1 MiB
/// to a new file takes several times longer than after overwriting 1 MiB in place.
///
/// The zeros are written with direct I/O, which costs the CPU almost nothing (one zero
/// buffer, no page cache); where the filesystem has none, returns `Ok(false)` and
/// prepares nothing, since filling through the page cache would cost about as much CPU
/// as it saves. Written under a temporary name, synced, then renamed and the directory
/// synced: a spare's name always means a whole spare.
pub fn prepare_spare(dir: &Path, spare: &Path, len: u64) -> Result<bool, WalError> {
    let tmp = dir.join(PREPARING);
    let fd = match rustix::fs::open(
        &tmp,
        rustix::fs::OFlags::WRONLY
            | rustix::fs::OFlags::CREATE
            | rustix::fs::OFlags::TRUNC
            | rustix::fs::OFlags::DIRECT
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::from_bits_truncate(0o644),
    ) {
        Ok(fd) => File::from(fd),
        Err(rustix::io::Errno::INVAL) => return Ok(false),
        Err(e) => return Err(WalError::io("create spare", &tmp, e.into())),
    };
    let zeros = AlignedBuf::zeroed(ZERO_WRITE_BYTES);
    let zeros = zeros.as_slice();
    let mut written = 0u64;
    while written < len {
        let n = usize::try_from(len - written)
            .map_or(ZERO_WRITE_BYTES, |r| r.min(ZERO_WRITE_BYTES))
            .next_multiple_of(ALIGN);
        match (&fd).write_all(&zeros[..n]) {
            Ok(()) => {
                written += n as u64;
                // Paced, so that the WAL's own fsyncs never queue behind a long burst.
                std::thread::sleep(ZERO_WRITE_PAUSE);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) {
                    return Ok(false);
                }
                return Err(WalError::io("write spare", &tmp, e));
            }
        }
    }
    fd.sync_all()
        .map_err(|e| WalError::io("fsync spare", &tmp, e))?;
    drop(fd);
    std::fs::rename(&tmp, spare).map_err(|e| WalError::io("rename spare", spare, e))?;
    sync_dir(dir)?;
    Ok(true)
}

/// Spare files in `dir`.
pub fn list_spares(dir: &Path) -> Result<Vec<PathBuf>, WalError> {
    let mut spares: Vec<PathBuf> = file_names(dir)?
        .into_iter()
        .filter(|n| n.ends_with(SPARE_SUFFIX))
        .map(|n| dir.join(n))
        .collect();
    spares.sort();
    Ok(spares)
}

/// Segment ids in `dir`, ascending. Files that are not segments are skipped with a warning.
pub fn list(dir: &Path) -> Result<Vec<u64>, WalError> {
    let mut ids = Vec::new();
    for name in file_names(dir)? {
        let Some(stem) = name.strip_suffix(SUFFIX) else {
            continue;
        };
        match stem.parse::<u64>() {
            Ok(id) if stem.len() == 16 => ids.push(id),
            _ => tracing::warn!(file = name, "ignoring unexpected file in wal dir"),
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Names (those that are UTF-8) of the entries of `dir`.
fn file_names(dir: &Path) -> Result<Vec<String>, WalError> {
    let rd = std::fs::read_dir(dir).map_err(|e| WalError::io("read dir", dir, e))?;
    let mut names = Vec::new();
    for item in rd {
        let item = item.map_err(|e| WalError::io("read dir", dir, e))?;
        if let Ok(name) = item.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(names)
}

/// Creates segment `id` with its header, fsynced along with the directory. Returns the file
/// opened for writing just after the header.
pub fn create(dir: &Path, id: u64, nonce: u32) -> Result<File, WalError> {
    let p = path(dir, id);
    let mut f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&p)
        .map_err(|e| WalError::io("create segment", &p, e))?;
    f.write_all(&format::segment_header(false, nonce))
        .map_err(|e| WalError::io("write segment header", &p, e))?;
    f.sync_all()
        .map_err(|e| WalError::io("fsync segment", &p, e))?;
    sync_dir(dir)?;
    Ok(f)
}

/// Turns the spare file `spare` into segment `id`: header (flagged recycled) written and
/// synced, then the rename, then the directory synced. Returns the file opened for
/// writing just after the header; what follows the header is the old life's bytes.
pub fn recycle(dir: &Path, spare: &Path, id: u64, nonce: u32) -> Result<File, WalError> {
    // The spare's own name must be durable before its header changes: were the directory
    // still to hold it under its dead segment's name after a crash, that segment's frames
    // would no longer match its header.
    sync_dir(dir)?;
    let mut f = OpenOptions::new()
        .write(true)
        .open(spare)
        .map_err(|e| WalError::io("open spare segment", spare, e))?;
    f.write_all_at(&format::segment_header(true, nonce), 0)
        .map_err(|e| WalError::io("write segment header", spare, e))?;
    f.sync_data()
        .map_err(|e| WalError::io("fsync segment", spare, e))?;
    let p = path(dir, id);
    std::fs::rename(spare, &p).map_err(|e| WalError::io("rename spare segment", &p, e))?;
    sync_dir(dir)?;
    f.seek(SeekFrom::Start(format::SEGMENT_HEADER_LEN))
        .map_err(|e| WalError::io("seek segment", &p, e))?;
    Ok(f)
}

/// Reads and checks the header of an open segment file.
pub fn read_header(f: &File, id: u64) -> Result<format::SegmentHeader, WalError> {
    let mut h = [0u8; format::SEGMENT_HEADER_LEN as usize];
    f.read_exact_at(&mut h, 0)
        .map_err(|e| WalError::io("read segment header", file_name(id), e))?;
    format::check_segment_header(&h).map_err(|m| WalError::corrupt(&file_name(id), 0, m))
}

/// Rewrites the header of a segment whose header write was torn (file shorter than it).
pub fn rewrite_header(dir: &Path, id: u64, nonce: u32) -> Result<(), WalError> {
    let p = path(dir, id);
    let f = OpenOptions::new()
        .write(true)
        .open(&p)
        .map_err(|e| WalError::io("open segment", &p, e))?;
    f.set_len(0)
        .map_err(|e| WalError::io("truncate segment", &p, e))?;
    f.write_all_at(&format::segment_header(false, nonce), 0)
        .map_err(|e| WalError::io("write segment header", &p, e))?;
    f.sync_all()
        .map_err(|e| WalError::io("fsync segment", &p, e))
}

/// Opens an existing segment for writing at its end (recovery has cut it to its last
/// valid frame).
pub fn open_at_end(dir: &Path, id: u64) -> Result<File, WalError> {
    let p = path(dir, id);
    let mut f = OpenOptions::new()
        .write(true)
        .open(&p)
        .map_err(|e| WalError::io("open segment", &p, e))?;
    f.seek(SeekFrom::End(0))
        .map_err(|e| WalError::io("seek segment", &p, e))?;
    Ok(f)
}

/// Cuts segment `id` to `len` bytes and fsyncs it.
pub fn truncate(dir: &Path, id: u64, len: u64) -> Result<(), WalError> {
    let p = path(dir, id);
    let f = OpenOptions::new()
        .write(true)
        .open(&p)
        .map_err(|e| WalError::io("open segment", &p, e))?;
    f.set_len(len)
        .map_err(|e| WalError::io("truncate segment", &p, e))?;
    f.sync_all()
        .map_err(|e| WalError::io("fsync segment", &p, e))
}

/// Fsyncs a directory so created and removed names are durable.
pub fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WalError::io("fsync dir", dir, e))
}

/// Whether every byte of `f` from `from` to its end is zero.
pub fn rest_is_zero(f: &File, from: u64, end: u64) -> std::io::Result<bool> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = from;
    while at < end {
        let n = usize::try_from(end - at).map_or(buf.len(), |r| r.min(buf.len()));
        f.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// The `synced` frame of segment `id` (one that checks out with its `salt`) between `from`
/// and `end` that records the highest durable offset in it, as (the frame's offset, that
/// durable offset).
/// Any bytes may lie in between (a torn write, an earlier life's frames), so this
/// searches for the frame's fixed payload prefix rather than walking frame by frame.
pub fn last_synced_frame(
    f: &File,
    from: u64,
    end: u64,
    salt: u32,
    id: u64,
) -> std::io::Result<Option<(u64, u64)>> {
    const CHUNK: u64 = 1 << 20;
    let frame_len = FRAME_HEADER_LEN + u64::from(format::SYNCED_PAYLOAD_LEN);
    let finder = memchr::memmem::Finder::new(&format::SYNCED_PAYLOAD_PREFIX);
    let mut best: Option<(u64, u64)> = None;
    let mut buf = Vec::new();
    let mut at = from;
    while at + frame_len <= end {
        // Each read overlaps the next by a frame, so a frame across the boundary is seen.
        let n = (CHUNK + frame_len).min(end - at);
        buf.resize(usize::try_from(n).unwrap_or(usize::MAX), 0);
        f.read_exact_at(&mut buf, at)?;
        for i in finder.find_iter(&buf) {
            let Some(start) = i.checked_sub(FRAME_HEADER_LEN as usize) else {
                continue;
            };
            let Some(frame) = buf.get(start..start + frame_len as usize) else {
                continue;
            };
            let Ok((_, format::Record::Synced { segment, offset })) = check_frame(frame, salt)
            else {
                continue;
            };
            if segment == id && best.is_none_or(|(_, o)| offset > o) {
                best = Some((at + start as u64, offset));
            }
        }
        at += CHUNK;
    }
    Ok(best)
}

/// Reads and CRC-checks (with the segment's `salt`) the frame at `offset` of length
/// `frame_len` (header included), and decodes it. Errors name the segment and offset.
pub fn read_frame(
    f: &File,
    segment: u64,
    salt: u32,
    offset: u64,
    frame_len: u64,
) -> Result<(GroupId, format::Record), WalError> {
    let name = file_name(segment);
    let mut buf = vec![0u8; usize::try_from(frame_len).unwrap_or(0)];
    f.read_exact_at(&mut buf, offset)
        .map_err(|e| WalError::io("read frame", name.clone(), e))?;
    check_frame(&buf, salt).map_err(|reason| WalError::corrupt(&name, offset, reason))
}

/// Checks and decodes `buf`, which must be exactly one whole frame that checks out with
/// `salt`; the error says what does not.
fn check_frame(buf: &[u8], salt: u32) -> Result<(GroupId, format::Record), String> {
    let Some((head, payload)) = buf.split_first_chunk::<{ FRAME_HEADER_LEN as usize }>() else {
        return Err("frame shorter than header".into());
    };
    let (len, crc) = parse_frame_header(*head);
    if len as usize != payload.len() {
        return Err("frame length changed on disk".into());
    }
    if !format::crc_matches(payload, crc, salt) {
        return Err("crc mismatch".into());
    }
    format::decode_payload(payload).map_err(|e| e.to_string())
}
