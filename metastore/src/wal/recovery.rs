//! Recovery: replays every segment in order and rebuilds each group's state.
//!
//! Torn tail versus damage. A crash can leave the end of the *last* segment in any state
//! the device allows: a partial frame, zeros, or, since a write of many blocks may reach
//! the disk in any order, a frame that does not check out followed by frames that do.
//! None of that was acknowledged, because an acknowledgement waits for the fsync that
//! covers it. So in the last segment the first frame that does not check out is the end
//! of the log, and what follows it is cut and logged, unless a later `synced` frame (see
//! `format`) records a durable position past it: then the bad frame had been made
//! durable, it is damage, not a torn write, and recovery stops with an error naming the
//! segment and offset instead of dropping acknowledged data. A frame that does not check
//! out in an earlier segment is always damage (a segment is fsynced before the next one
//! is created).
//!
//! Damage to a durable frame that no later `synced` frame covers (say, the last group
//! commit before a crash) cannot be told from a torn write and is cut like one, as the
//! WALs of PostgreSQL and RocksDB do in their default recovery modes.
//!
//! A recycled last segment ends the same way: after its last frame come the frames of the
//! file's earlier life, whose crcs carry another segment's salt. A recycled segment is cut
//! to its end before the next one is created, so once sealed it is checked as strictly
//! as any other.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use super::direct::ALIGN;
use super::error::WalError;
use super::format::{
    self, parse_frame_header, Record, FRAME_HEADER_LEN, MAX_PAYLOAD_BYTES, SEGMENT_HEADER_LEN,
};
use super::group::{EntryLoc, GroupState, Slot};
use super::segment;
use crate::types::GroupId;

/// What recovery found on disk.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    pub groups: HashMap<GroupId, GroupState>,
    /// Segment id -> valid length in bytes. Never empty: a fresh WAL gets segment 0.
    pub segments: BTreeMap<u64, u64>,
    /// Global write position after the last valid byte (sum of segment lengths).
    pub end_pos: u64,
    /// The crc salt of the last segment, where appends continue.
    pub last_salt: u32,
}

/// Scans `dir` (which must exist), cutting a torn tail off the last segment.
/// Segments it creates (a first one, or a rewritten header) get `nonce`.
pub(crate) fn recover(dir: &Path, nonce: u32) -> Result<Recovered, WalError> {
    let ids = segment::list(dir)?;
    let mut rec = Recovered::default();
    if ids.is_empty() {
        drop(segment::create(dir, 0, nonce)?);
        rec.segments.insert(0, SEGMENT_HEADER_LEN);
        rec.end_pos = SEGMENT_HEADER_LEN;
        rec.last_salt = format::salt(0, nonce);
        return Ok(rec);
    }
    let last = ids.len() - 1;
    for (i, id) in ids.iter().copied().enumerate() {
        let (len, salt) = scan_segment(dir, id, i == last, rec.end_pos, nonce, &mut rec.groups)?;
        rec.segments.insert(id, len);
        rec.end_pos += len;
        rec.last_salt = salt;
    }
    Ok(rec)
}

/// Replays one segment into `groups`; returns its valid length and its crc salt.
fn scan_segment(
    dir: &Path,
    id: u64,
    is_last: bool,
    base_pos: u64,
    nonce: u32,
    groups: &mut HashMap<GroupId, GroupState>,
) -> Result<(u64, u32), WalError> {
    let path = segment::path(dir, id);
    let name = segment::file_name(id);
    let file = File::open(&path).map_err(|e| WalError::io("open segment", &path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| WalError::io("stat segment", &path, e))?
        .len();
    let io = |e| WalError::io("read segment", &path, e);

    if file_len < SEGMENT_HEADER_LEN {
        if !is_last {
            return Err(WalError::corrupt(
                &name,
                0,
                "segment shorter than its header",
            ));
        }
        tracing::warn!(segment = %name, len = file_len, "wal: rewriting torn segment header");
        segment::rewrite_header(dir, id, nonce)?;
        return Ok((SEGMENT_HEADER_LEN, format::salt(id, nonce)));
    }
    let mut r = BufReader::with_capacity(1 << 20, &file);
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    r.read_exact(&mut header).map_err(io)?;
    let header =
        format::check_segment_header(&header).map_err(|m| WalError::corrupt(&name, 0, m))?;
    let salt = header.salt(id);
    let recycled = is_last && header.recycled;
    // The first bytes at `off` that are not a frame of this segment.
    let end = |off: u64, why: &str| {
        if is_last {
            let synced = segment::last_synced_frame(&file, off, file_len, salt, id).map_err(io)?;
            if let Some((at, upto)) = synced.filter(|(_, upto)| *upto > off) {
                return Err(WalError::corrupt(
                    &name,
                    off,
                    format!(
                        "{why}, but the synced frame at offset {at} records this segment \
                         durable up to offset {upto}, past it"
                    ),
                ));
            }
        }
        torn(dir, id, is_last, off, why).map(|len| (len, salt))
    };

    let mut off = SEGMENT_HEADER_LEN;
    let mut payload = Vec::new();
    while off < file_len {
        let remaining = file_len - off;
        if remaining < FRAME_HEADER_LEN {
            return end(off, "incomplete frame header");
        }
        let mut h = [0u8; FRAME_HEADER_LEN as usize];
        r.read_exact(&mut h).map_err(io)?;
        let (len, crc) = parse_frame_header(h);
        let frame_len = FRAME_HEADER_LEN + u64::from(len);
        let bad = if len == 0 && crc == 0 {
            // Zeros: the rest of a prepared (zero-filled) spare, the padding of a direct
            // write's last block, or blocks a torn write never reached.
            Some(if recycled {
                RECYCLED_END
            } else if segment::rest_is_zero(&file, off, file_len).map_err(io)? {
                let padding = file_len % ALIGN as u64 == 0 && file_len - off < ALIGN as u64;
                if padding {
                    PADDED_END
                } else {
                    "zero-filled tail"
                }
            } else {
                "zero frame header before data"
            })
        } else if len > MAX_PAYLOAD_BYTES {
            Some("frame length above the limit")
        } else if frame_len > remaining {
            Some("incomplete frame")
        } else {
            payload.resize(len as usize, 0);
            r.read_exact(&mut payload).map_err(io)?;
            (!format::crc_matches(&payload, crc, salt)).then_some("crc mismatch")
        };
        if let Some(why) = bad {
            return end(off, if recycled { RECYCLED_END } else { why });
        }
        let (group, record) = format::decode_payload(&payload)
            .map_err(|e| WalError::corrupt(&name, off, e.to_string()))?;
        let loc = EntryLoc {
            segment: id,
            offset: off,
            frame_len,
            pos: base_pos + off,
            log_id: match &record {
                Record::Entry(e) => e.log_id,
                _ => Default::default(),
            },
        };
        replay(groups, group, record, loc);
        off += frame_len;
    }
    Ok((off, salt))
}

/// Applies one recovered record.
fn replay(
    groups: &mut HashMap<GroupId, GroupState>,
    group: GroupId,
    record: Record,
    loc: EntryLoc,
) {
    match record {
        Record::DropGroup => {
            groups.remove(&group);
        }
        // Evidence for the torn-write check above, not state.
        Record::Synced { .. } => {}
        Record::Entry(_) => groups
            .entry(group)
            .or_default()
            .insert(Slot { loc, cached: None }),
        other => groups.entry(group).or_default().apply(&other),
    }
}

/// Why a recycled last segment ends where it does: not damage, so not a warning.
const RECYCLED_END: &str = "end of a recycled segment";
/// Why a segment written with direct I/O ends where it does: the zeros padding its last
/// block (see `direct`), not damage.
const PADDED_END: &str = "end of the padded last block";

/// Cuts the last segment at `off`, or reports corruption in an earlier one.
fn torn(dir: &Path, id: u64, is_last: bool, off: u64, why: &str) -> Result<u64, WalError> {
    let name = segment::file_name(id);
    if !is_last {
        return Err(WalError::corrupt(
            &name,
            off,
            format!("{why} in a sealed segment"),
        ));
    }
    if why == RECYCLED_END || why == PADDED_END {
        tracing::info!(segment = %name, offset = off, reason = why, "wal: cutting what follows the last frame");
    } else {
        tracing::warn!(segment = %name, offset = off, reason = why, "wal: cutting torn tail");
    }
    segment::truncate(dir, id, off)?;
    Ok(off)
}
