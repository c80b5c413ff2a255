//! The WAL's persisted byte format, version 3: the segment header and the frame.
//!
//! This module is the only place that knows the bytes; `format_pin` below pins them.
//!
//! ```text
//! segment := header frame*
//! header  := "CHRNKWAL" version:u8 flags:u8 zero[2] nonce:u32le    (16 bytes)
//!            flags bit 0: recycled (the file held an earlier segment; see below)
//! frame   := payload_len:u32le crc:u32le payload
//!            crc = crc32fast(payload) XOR salt(segment id, nonce)
//!            (version 1: header "CHRNKWAL" 1 zero[7], and no salt)
//! payload := group:u64le kind:u8 body
//! body    := entry | vote | committed | truncate | purge | drop_group | synced
//!   entry      (1) := term:u64 leader_node:u64 index:u64 type:u8 data
//!                     type 0 blank (no data), 1 normal (data = command bytes to the end),
//!                     2 membership (data = serde_json of the Membership to the end)
//!   vote       (2) := term:u64 node:u64 committed:u8
//!   committed  (3) := present:u8 [term:u64 leader_node:u64 index:u64]
//!   truncate   (4) := since_index:u64       (removes entries >= since_index)
//!   purge      (5) := term:u64 leader_node:u64 index:u64   (removes entries <= index)
//!   drop_group (6) := (empty)               (forgets the whole group)
//!   synced     (7) := segment:u64 offset:u64   (group u64::MAX; every byte before
//!                     `offset` of segment `segment`, and every earlier segment, was
//!                     durable when this frame was placed)
//! ```
//!
//! Version 3 added `synced` and nothing else; version 2 segments are read the same way.
//! A `synced` frame is what lets recovery tell a torn write from damage: a frame that
//! does not check out but lies before a later `synced` frame's position had been made durable,
//! so it is damage; otherwise it was never acknowledged, and the log ends there (see
//! `recovery`).
//!
//! The salt ties a frame to its segment. Segment files are recycled (a dead segment is
//! renamed to the next id and overwritten in place, because an fdatasync that needs no
//! metadata change takes about half as long as one after an append), so after the last
//! frame written in a recycled file come frames of its earlier life. Their crcs carry the
//! old life's salt and fail the check, which is how recovery finds the end. The nonce is
//! random per WAL instance, so nobody can craft bytes (say, a produced record value that
//! looks like a frame) that pass the check in a segment not yet written.
//!
//! Decoding never panics on any input: every read is bounds-checked and reports what was
//! missing, and a record must consume its payload exactly.

use bytes::Bytes;
use openraft::{CommittedLeaderId, EntryPayload, Membership};

use crate::types::{Command, Entry, GroupId, LogId, NodeId, Vote};

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"CHRNKWAL";
/// Format version written in the segment header. Versions 1 and 2 are still read.
pub const FORMAT_VERSION: u8 = 3;
/// Header flag: the segment file was recycled from an earlier segment.
const FLAG_RECYCLED: u8 = 1;
/// Bytes of the segment header; the first frame starts here.
pub const SEGMENT_HEADER_LEN: u64 = 16;
/// Bytes of a frame header (length + crc).
pub const FRAME_HEADER_LEN: u64 = 8;
/// Largest payload a frame may claim. A larger length field is corruption, not a torn write.
pub const MAX_PAYLOAD_BYTES: u32 = 256 * 1024 * 1024;

const KIND_ENTRY: u8 = 1;
const KIND_VOTE: u8 = 2;
const KIND_COMMITTED: u8 = 3;
const KIND_TRUNCATE: u8 = 4;
const KIND_PURGE: u8 = 5;
const KIND_DROP_GROUP: u8 = 6;
const KIND_SYNCED: u8 = 7;

/// The group a `synced` frame names: no real group (group ids are handed out upwards from
/// small numbers).
pub const SYNCED_GROUP: GroupId = GroupId::MAX;
/// The payload length of a `synced` frame: group, kind, segment, offset.
pub const SYNCED_PAYLOAD_LEN: u32 = 25;
/// The first bytes of every `synced` frame's payload, which recovery searches for.
pub const SYNCED_PAYLOAD_PREFIX: [u8; 9] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 7];

const ENTRY_BLANK: u8 = 0;
const ENTRY_NORMAL: u8 = 1;
const ENTRY_MEMBERSHIP: u8 = 2;

/// One decoded WAL record; every frame holds exactly one, for one group.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Entry(Entry),
    Vote(Vote),
    Committed(Option<LogId>),
    Truncate {
        since: u64,
    },
    Purge(LogId),
    DropGroup,
    /// Every byte before `offset` of `segment` (and of every earlier segment) was durable
    /// when the frame was placed. Written under [`SYNCED_GROUP`]; no group's state.
    Synced {
        segment: u64,
        offset: u64,
    },
}

/// Why a payload did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload ends early: need {need} bytes at {at}, have {have}")]
    Short { need: usize, at: usize, have: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("unknown entry payload type {0}")]
    UnknownEntryType(u8),
    #[error("bad flag byte {0}")]
    BadFlag(u8),
    #[error("membership json: {0}")]
    Membership(String),
    #[error("{0} trailing bytes after record")]
    Trailing(usize),
}

/// What a segment header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub version: u8,
    /// The file held an earlier segment, whose frames may follow this one's last frame.
    pub recycled: bool,
    pub nonce: u32,
}

impl SegmentHeader {
    /// The value XORed into the crc of every frame of segment `id`.
    pub fn salt(&self, id: u64) -> u32 {
        if self.version < 2 {
            return 0;
        }
        salt(id, self.nonce)
    }
}

/// The salt of segment `id` with `nonce`. For one nonce it is a bijection of the id's low
/// 32 bits (xor, then multiply by an odd constant): segments fewer than 2^32 ids apart
/// never share a salt.
pub fn salt(id: u64, nonce: u32) -> u32 {
    ((id as u32) ^ 0xA5A5_A5A5).wrapping_mul(0x9E37_79B1) ^ nonce
}

/// A random nonce for the segments a WAL instance creates.
pub fn random_nonce() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS's randomness once per process and differs per
    // instance; the clock only adds to it.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(now);
    h.finish() as u32
}

/// The 16-byte segment header of this version.
pub fn segment_header(recycled: bool, nonce: u32) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8] = FORMAT_VERSION;
    if recycled {
        h[9] = FLAG_RECYCLED;
    }
    h[12..16].copy_from_slice(&nonce.to_le_bytes());
    h
}

/// XORs `salt` into the crc of the encoded frame at the start of `frame`.
pub fn salt_frame(frame: &mut [u8], salt: u32) {
    if let Some(crc) = frame.get_mut(4..FRAME_HEADER_LEN as usize) {
        let salted = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) ^ salt;
        crc.copy_from_slice(&salted.to_le_bytes());
    }
}

/// Whether `payload` matches the (salted) crc of its frame header.
pub fn crc_matches(payload: &[u8], crc: u32, salt: u32) -> bool {
    crc32fast::hash(payload) ^ salt == crc
}

/// Checks a segment header; the error says what is wrong with it.
pub fn check_segment_header(h: &[u8]) -> Result<SegmentHeader, String> {
    if h.len() < SEGMENT_HEADER_LEN as usize {
        return Err(format!(
            "header has {} bytes, need {SEGMENT_HEADER_LEN}",
            h.len()
        ));
    }
    if &h[..8] != SEGMENT_MAGIC {
        return Err("bad magic, not a chronik wal segment".to_string());
    }
    match h[8] {
        1 => Ok(SegmentHeader {
            version: 1,
            recycled: false,
            nonce: 0,
        }),
        v @ 2..=FORMAT_VERSION if h[9] & !FLAG_RECYCLED == 0 => Ok(SegmentHeader {
            version: v,
            recycled: h[9] & FLAG_RECYCLED != 0,
            nonce: u32::from_le_bytes([h[12], h[13], h[14], h[15]]),
        }),
        2..=FORMAT_VERSION => Err(format!("unknown segment flags {:#04x}", h[9])),
        v => Err(format!(
            "unsupported format version {v} (this build reads 1 to {FORMAT_VERSION})"
        )),
    }
}

/// Splits a frame header into (payload_len, crc).
pub fn parse_frame_header(h: [u8; FRAME_HEADER_LEN as usize]) -> (u32, u32) {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    (len, crc)
}

/// Encodes one frame holding `record` for `group`, appended to `out`.
pub fn encode_frame(group: GroupId, record: &Record, out: &mut Vec<u8>) -> Result<(), String> {
    match record {
        Record::Entry(e) => encode_entry_frame(group, e, out),
        other => {
            let start = begin_frame(group, kind_of(other), out);
            match other {
                Record::Vote(v) => {
                    put_u64(out, v.leader_id.term);
                    put_u64(out, v.leader_id.node_id);
                    out.push(u8::from(v.committed));
                }
                Record::Committed(None) => out.push(0),
                Record::Committed(Some(id)) => {
                    out.push(1);
                    put_log_id(out, id);
                }
                Record::Truncate { since } => put_u64(out, *since),
                Record::Purge(id) => put_log_id(out, id),
                Record::Synced { segment, offset } => {
                    put_u64(out, *segment);
                    put_u64(out, *offset);
                }
                Record::DropGroup | Record::Entry(_) => {}
            }
            finish_frame(out, start);
            Ok(())
        }
    }
}

/// One encoded frame in two parts: `head` (frame header and fixed fields) and `body`, an
/// entry's command bytes shared with the entry rather than copied. The frame on disk is
/// `head` then `body`.
#[derive(Debug)]
pub struct Frame {
    pub head: Vec<u8>,
    pub body: Bytes,
}

impl Frame {
    /// A frame already encoded whole.
    pub fn whole(bytes: Vec<u8>) -> Frame {
        Frame {
            head: bytes,
            body: Bytes::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Encodes one entry frame without copying its command bytes.
pub fn entry_frame(group: GroupId, entry: &Entry) -> Result<Frame, String> {
    let mut head = Vec::with_capacity(FRAME_HEADER_LEN as usize + 64);
    let start = begin_frame(group, KIND_ENTRY, &mut head);
    put_log_id(&mut head, &entry.log_id);
    let body = match &entry.payload {
        EntryPayload::Blank => {
            head.push(ENTRY_BLANK);
            Bytes::new()
        }
        EntryPayload::Normal(cmd) => {
            head.push(ENTRY_NORMAL);
            cmd.0.clone()
        }
        EntryPayload::Membership(m) => {
            head.push(ENTRY_MEMBERSHIP);
            serde_json::to_writer(&mut head, m).map_err(|e| format!("membership json: {e}"))?;
            Bytes::new()
        }
    };
    finish_frame_with(&mut head, start, &body);
    Ok(Frame { head, body })
}

/// Encodes one entry frame, appended to `out`.
pub fn encode_entry_frame(group: GroupId, entry: &Entry, out: &mut Vec<u8>) -> Result<(), String> {
    let frame = entry_frame(group, entry)?;
    out.extend_from_slice(&frame.head);
    out.extend_from_slice(&frame.body);
    Ok(())
}

fn kind_of(r: &Record) -> u8 {
    match r {
        Record::Entry(_) => KIND_ENTRY,
        Record::Vote(_) => KIND_VOTE,
        Record::Committed(_) => KIND_COMMITTED,
        Record::Truncate { .. } => KIND_TRUNCATE,
        Record::Purge(_) => KIND_PURGE,
        Record::DropGroup => KIND_DROP_GROUP,
        Record::Synced { .. } => KIND_SYNCED,
    }
}

/// Reserves the frame header and writes the payload prefix; returns the frame's start.
fn begin_frame(group: GroupId, kind: u8, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN as usize]);
    put_u64(out, group);
    out.push(kind);
    start
}

/// Fills in the length and crc of the frame that starts at `start`.
fn finish_frame(out: &mut [u8], start: usize) {
    finish_frame_with(out, start, &[]);
}

/// Fills in the length and crc of the frame that starts at `start` in `out` and goes on
/// with `body`.
fn finish_frame_with(out: &mut [u8], start: usize, body: &[u8]) {
    let payload_start = start + FRAME_HEADER_LEN as usize;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[payload_start..]);
    crc.update(body);
    // Payloads are bounded far below u32::MAX by the entry size limits upstream.
    let len = u32::try_from(out.len() - payload_start + body.len()).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..payload_start].copy_from_slice(&crc.finalize().to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_log_id(out: &mut Vec<u8>, id: &LogId) {
    put_u64(out, id.leader_id.term);
    put_u64(out, id.leader_id.node_id);
    put_u64(out, id.index);
}

/// Decodes a frame payload (already CRC-checked) into its group and record.
pub fn decode_payload(payload: &[u8]) -> Result<(GroupId, Record), DecodeError> {
    let mut r = Reader {
        buf: payload,
        at: 0,
    };
    let group = r.u64()?;
    let kind = r.u8()?;
    let record = match kind {
        KIND_ENTRY => {
            let log_id = r.log_id()?;
            let payload = match r.u8()? {
                ENTRY_BLANK => EntryPayload::Blank,
                ENTRY_NORMAL => EntryPayload::Normal(Command(Bytes::copy_from_slice(r.rest()))),
                ENTRY_MEMBERSHIP => {
                    let m: Membership<NodeId, openraft::BasicNode> =
                        serde_json::from_slice(r.rest())
                            .map_err(|e| DecodeError::Membership(e.to_string()))?;
                    EntryPayload::Membership(m)
                }
                t => return Err(DecodeError::UnknownEntryType(t)),
            };
            Record::Entry(Entry { log_id, payload })
        }
        KIND_VOTE => {
            let term = r.u64()?;
            let node = r.u64()?;
            let committed = r.flag()?;
            let mut v = Vote::new(term, node);
            v.committed = committed;
            Record::Vote(v)
        }
        KIND_COMMITTED => {
            if r.flag()? {
                Record::Committed(Some(r.log_id()?))
            } else {
                Record::Committed(None)
            }
        }
        KIND_TRUNCATE => Record::Truncate { since: r.u64()? },
        KIND_PURGE => Record::Purge(r.log_id()?),
        KIND_DROP_GROUP => Record::DropGroup,
        KIND_SYNCED => Record::Synced {
            segment: r.u64()?,
            offset: r.u64()?,
        },
        k => return Err(DecodeError::UnknownKind(k)),
    };
    r.finish()?;
    Ok((group, record))
}

/// A bounds-checked little-endian reader over one payload.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let have = self.buf.len() - self.at;
        if have < n {
            return Err(DecodeError::Short {
                need: n,
                at: self.at,
                have,
            });
        }
        let s = &self.buf[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(DecodeError::BadFlag(b)),
        }
    }

    fn log_id(&mut self) -> Result<LogId, DecodeError> {
        let term = self.u64()?;
        let node = self.u64()?;
        let index = self.u64()?;
        Ok(LogId::new(CommittedLeaderId::new(term, node), index))
    }

    fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.at..];
        self.at = self.buf.len();
        s
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.buf.len() - self.at {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn log_id(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    /// Pins the bytes of version 3. If this test fails, the on-disk format changed: bump
    /// FORMAT_VERSION and keep a reader for the old version.
    #[test]
    fn format_pin() {
        let entry = Entry {
            log_id: log_id(2, 1, 3),
            payload: EntryPayload::Normal(Command(Bytes::from_static(b"hi"))),
        };
        let mut out = Vec::new();
        encode_entry_frame(7, &entry, &mut out).expect("encode");
        #[rustfmt::skip]
        let payload: Vec<u8> = vec![
            7, 0, 0, 0, 0, 0, 0, 0, // group
            1,                      // kind entry
            2, 0, 0, 0, 0, 0, 0, 0, // term
            1, 0, 0, 0, 0, 0, 0, 0, // leader node
            3, 0, 0, 0, 0, 0, 0, 0, // index
            1,                      // normal
            b'h', b'i',
        ];
        let mut expected = Vec::new();
        expected.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        expected.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        expected.extend_from_slice(&payload);
        assert_eq!(out, expected);
        // The crc value itself is pinned too, so a change of checksum algorithm is caught.
        assert_eq!(&out[..8], &[36, 0, 0, 0, 0x1e, 0xee, 0x23, 0x3c]);
        assert_eq!(
            segment_header(false, 0x0403_0201),
            [b'C', b'H', b'R', b'N', b'K', b'W', b'A', b'L', 3, 0, 0, 0, 1, 2, 3, 4]
        );
        assert_eq!(
            segment_header(true, 0),
            [b'C', b'H', b'R', b'N', b'K', b'W', b'A', b'L', 3, 1, 0, 0, 0, 0, 0, 0]
        );
        // Salts are pinned: frames written by one build must check out in the next.
        let v3 = check_segment_header(&segment_header(false, 0)).expect("v3 header");
        let mut v2 = segment_header(false, 0);
        v2[8] = 2;
        let v2 = check_segment_header(&v2).expect("v2 header");
        assert_eq!((v2.version, v3.version), (2, 3));
        assert_eq!(v2.salt(7), v3.salt(7));
        assert_eq!(v2.salt(0), 0x3f45_8415);
        assert_eq!(v2.salt(1), 0xa10e_0a64);
        let nonced = check_segment_header(&segment_header(true, 0xff)).expect("v3 header");
        assert_eq!((nonced.salt(1), nonced.recycled), (0xa10e_0a9b, true));
        assert_ne!(random_nonce(), random_nonce());
        let mut v1 = segment_header(false, 0);
        v1[8] = 1;
        let v1 = check_segment_header(&v1).expect("v1 header");
        assert_eq!((v1.salt(5), v1.recycled), (0, false));
        let mut salted = out.clone();
        salt_frame(&mut salted, v2.salt(1));
        let (_, crc) = parse_frame_header(salted[..8].try_into().expect("8 bytes"));
        assert!(crc_matches(&salted[8..], crc, v2.salt(1)));
        assert!(!crc_matches(&salted[8..], crc, v2.salt(0)));

        let mut vote = Vec::new();
        encode_frame(9, &Record::Vote(Vote::new_committed(5, 2)), &mut vote).expect("encode");
        assert_eq!(
            &vote[8..],
            &[9, 0, 0, 0, 0, 0, 0, 0, 2, 5, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1][..]
        );

        let mut synced = Vec::new();
        let record = Record::Synced {
            segment: 3,
            offset: 0x0102,
        };
        encode_frame(SYNCED_GROUP, &record, &mut synced).expect("encode");
        assert_eq!(&synced[..4], &SYNCED_PAYLOAD_LEN.to_le_bytes());
        assert_eq!(&synced[8..17], &SYNCED_PAYLOAD_PREFIX);
        assert_eq!(
            &synced[17..],
            &[3, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn roundtrip_every_record() {
        let members: BTreeSet<u64> = [1, 2, 3].into_iter().collect();
        let records = vec![
            Record::Entry(Entry {
                log_id: log_id(1, 1, 1),
                payload: EntryPayload::Blank,
            }),
            Record::Entry(Entry {
                log_id: log_id(1, 1, 2),
                payload: EntryPayload::Normal(Command(Bytes::from_static(b"abc"))),
            }),
            Record::Entry(Entry {
                log_id: log_id(1, 1, 3),
                payload: EntryPayload::Membership(Membership::new(vec![members], None)),
            }),
            Record::Vote(Vote::new(3, 4)),
            Record::Committed(None),
            Record::Committed(Some(log_id(1, 1, 2))),
            Record::Truncate { since: 9 },
            Record::Purge(log_id(1, 1, 1)),
            Record::DropGroup,
            Record::Synced {
                segment: 7,
                offset: 77,
            },
        ];
        for rec in records {
            let mut out = Vec::new();
            encode_frame(42, &rec, &mut out).expect("encode");
            let (len, crc) = parse_frame_header(out[..8].try_into().expect("8 bytes"));
            assert_eq!(len as usize, out.len() - 8);
            assert_eq!(crc, crc32fast::hash(&out[8..]));
            assert_eq!(decode_payload(&out[8..]), Ok((42, rec)));
        }
    }

    /// Random payloads (with a valid group and kind prefix half the time) never panic.
    #[test]
    fn decode_never_panics_on_random_bytes() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 && buf.len() > 9 {
                buf[8] = (next() % 8) as u8;
            }
            let _ = decode_payload(&buf);
        }
    }

    #[test]
    fn decode_never_panics_on_prefixes() {
        let mut out = Vec::new();
        encode_frame(1, &Record::Purge(log_id(1, 2, 3)), &mut out).expect("encode");
        for n in 0..out.len() - 8 {
            assert!(decode_payload(&out[8..8 + n]).is_err());
        }
        assert_eq!(
            decode_payload(&[0, 0, 0, 0, 0, 0, 0, 0, 99]),
            Err(DecodeError::UnknownKind(99))
        );
    }
}
