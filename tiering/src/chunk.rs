//! The chunk object format, version 1: one immutable object holding consecutive Kafka v2
//! record batches exactly as fetched (final offsets), in frames that are either all
//! independent zstd frames or all raw (flag bit 0), plus a sparse index so a reader can
//! range-GET one frame.
//!
//! All integers are big-endian (as in Kafka). Layout:
//!
//! ```text
//! header (50 bytes)
//!   magic            8   b"CHRNKCHK"
//!   version          u8  1
//!   flags            u8  bit 0: frames are zstd-compressed (else stored raw); other bits 0
//!   base_offset      i64 first offset of the first batch (-1 if the chunk is empty)
//!   last_offset      i64 last offset of the last batch (-1 if empty)
//!   max_timestamp    i64 largest batch max_timestamp (-1 if empty)
//!   batch_count      u32
//!   body_len         u64 bytes of the body
//!   index_len        u32 bytes of the index (40 per frame)
//! body (body_len bytes): the frames, back to back. A frame is whole batches, cut after
//!   the batch that brings it to >= frame_bytes raw bytes (default 1 MiB). Compressed,
//!   each is a complete zstd frame with its content checksum; raw, it is the batches as
//!   they are, each still carrying Kafka's own CRC-32C over its records.
//! index (index_len bytes), per frame, in order:
//!   first_offset i64, last_offset i64, max_timestamp i64,
//!   compressed_pos u64 (absolute position in the object), compressed_len u32, raw_len u32
//! trailer (16 bytes)
//!   index_offset     u64 = 50 + body_len
//!   head_crc         u32 crc32 (crc32fast) of header ++ index
//!   crc              u32 crc32 of every byte before this field
//! ```
//!
//! `crc` protects the whole object when it is read whole; `head_crc` lets a reader that
//! fetched only the header and the tail (index + trailer) trust the index, and each zstd
//! frame's own checksum protects a frame fetched by range. A raw frame fetched by range has
//! only its batches' own CRC-32C (which a Kafka consumer checks) and their framing; the
//! broker reads chunks whole, under `crc`. Chunks are stored raw when zstd would save
//! less than 10% (see [`ChunkWriter`]).
//!
//! Decoding never panics: truncated, bit-flipped or newer-version input is
//! [`TieringError::Corrupt`] naming the object key.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

pub use crate::chunk_write::{ChunkObject, ChunkWriter, SHARE_MIN_BYTES};

use crate::TieringError;

pub const CHUNK_MAGIC: &[u8; 8] = b"CHRNKCHK";
pub const CHUNK_VERSION: u8 = 1;
/// Frames are zstd-compressed.
pub const FLAG_ZSTD: u8 = 1;
pub const HEADER_LEN: usize = 50;
pub const INDEX_ENTRY_LEN: usize = 40;
pub const TRAILER_LEN: usize = 16;
/// Raw bytes after which the writer cuts a frame.
pub const DEFAULT_FRAME_BYTES: usize = 1 << 20;
/// A frame claiming more raw bytes than this is taken as corrupt (a frame is ~1 MiB plus at
/// most one batch, and Kafka batches are far smaller).
pub const MAX_FRAME_RAW_BYTES: u32 = 256 << 20;
/// Level 1: most of the ratio at a fraction of level 3's CPU, which the produce path pays.
pub(crate) const ZSTD_LEVEL: i32 = 1;

/// Kafka v2 batch header: baseOffset i64, batchLength i32, partitionLeaderEpoch i32,
/// magic i8, crc u32, attributes i16, lastOffsetDelta i32, ... 61 bytes in all.
pub(crate) const BATCH_HEADER_LEN: usize = 61;
const BATCH_LOG_OVERHEAD: usize = 12;
const BATCH_MAGIC_POS: usize = 16;
const BATCH_LAST_DELTA_POS: usize = 23;

const UNNAMED: &str = "(unnamed chunk)";

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    be_u32(b, at) as i32
}

/// The (base, last) offsets of a v2 batch, read from its own header, after checking that
/// `batch` is exactly one batch.
pub(crate) fn batch_offsets(batch: &[u8]) -> Result<(i64, i64), String> {
    offsets_of(be_i64(batch, 0), batch_delta(batch)?)
}

/// `(base, base + delta)`, refusing a negative base and overflow.
pub(crate) fn offsets_of(base: i64, delta: i64) -> Result<(i64, i64), String> {
    if base < 0 {
        return Err(format!("batch offsets {base}+{delta} are negative"));
    }
    let last = base
        .checked_add(delta)
        .ok_or_else(|| format!("batch offsets {base}+{delta} overflow"))?;
    Ok((base, last))
}

/// The lastOffsetDelta of a v2 batch, after checking that `batch` is exactly one batch
/// (whatever baseOffset the producer put in it).
pub(crate) fn batch_delta(batch: &[u8]) -> Result<i64, String> {
    if batch.len() < BATCH_HEADER_LEN {
        return Err(format!(
            "batch of {} bytes is shorter than a v2 header",
            batch.len()
        ));
    }
    let length = be_i32(batch, 8);
    if length < 0 || length as usize + BATCH_LOG_OVERHEAD != batch.len() {
        return Err(format!(
            "batch length field {length} does not match its {} bytes",
            batch.len()
        ));
    }
    if batch[BATCH_MAGIC_POS] != 2 {
        return Err(format!("batch magic {} is not 2", batch[BATCH_MAGIC_POS]));
    }
    let delta = be_i32(batch, BATCH_LAST_DELTA_POS);
    if delta < 0 {
        return Err(format!("batch last offset delta {delta} is negative"));
    }
    Ok(i64::from(delta))
}

/// Splits a frame's raw bytes into its batches (zero-copy slices).
pub fn split_batches(raw: &Bytes) -> Result<Vec<Bytes>, String> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < raw.len() {
        if raw.len() - pos < BATCH_LOG_OVERHEAD {
            return Err(format!(
                "{} stray bytes after the last batch",
                raw.len() - pos
            ));
        }
        let length = be_i32(raw, pos + 8);
        let size = usize::try_from(length)
            .ok()
            .and_then(|l| l.checked_add(BATCH_LOG_OVERHEAD))
            .filter(|s| *s <= raw.len() - pos)
            .ok_or_else(|| format!("batch at byte {pos} has bad length {length}"))?;
        let batch = raw.slice(pos..pos + size);
        batch_offsets(&batch)?;
        out.push(batch);
        pos += size;
    }
    Ok(out)
}

/// The fixed-size header of a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    pub version: u8,
    pub flags: u8,
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub batch_count: u32,
    pub body_len: u64,
    pub index_len: u32,
}

impl ChunkHeader {
    /// Parses the first [`HEADER_LEN`] bytes of a chunk (more are ignored).
    pub fn parse(bytes: &[u8]) -> Result<ChunkHeader, TieringError> {
        ChunkHeader::decode(bytes).map_err(|r| TieringError::corrupt(UNNAMED, r))
    }

    fn decode(b: &[u8]) -> Result<ChunkHeader, String> {
        if b.len() < HEADER_LEN {
            return Err(format!("header is {} bytes, need {HEADER_LEN}", b.len()));
        }
        if &b[..8] != CHUNK_MAGIC {
            return Err("bad magic (not a chunk)".into());
        }
        let version = b[8];
        if version != CHUNK_VERSION {
            return Err(format!(
                "chunk format version {version} is not supported (this build reads {CHUNK_VERSION})"
            ));
        }
        let flags = b[9];
        if flags & !FLAG_ZSTD != 0 {
            return Err(format!("unknown flags {flags:#04x}"));
        }
        let h = ChunkHeader {
            version,
            flags,
            base_offset: be_i64(b, 10),
            last_offset: be_i64(b, 18),
            max_timestamp: be_i64(b, 26),
            batch_count: be_u32(b, 34),
            body_len: be_u64(b, 38),
            index_len: be_u32(b, 46),
        };
        if !(h.index_len as usize).is_multiple_of(INDEX_ENTRY_LEN) {
            return Err(format!(
                "index length {} is not a whole number of entries",
                h.index_len
            ));
        }
        if h.body_len > u64::MAX / 2 {
            return Err(format!("body length {} is absurd", h.body_len));
        }
        Ok(h)
    }

    pub(crate) fn encode(&self, out: &mut BytesMut) {
        out.put_slice(CHUNK_MAGIC);
        out.put_u8(self.version);
        out.put_u8(self.flags);
        out.put_i64(self.base_offset);
        out.put_i64(self.last_offset);
        out.put_i64(self.max_timestamp);
        out.put_u32(self.batch_count);
        out.put_u64(self.body_len);
        out.put_u32(self.index_len);
    }

    /// Where the index starts: `HEADER_LEN + body_len`.
    pub fn index_offset(&self) -> u64 {
        HEADER_LEN as u64 + self.body_len
    }

    /// The byte range of the tail (index + trailer), to range-GET after the header.
    pub fn tail_range(&self) -> Range<u64> {
        let start = self.index_offset();
        start..start + u64::from(self.index_len) + TRAILER_LEN as u64
    }

    /// The size of the whole object.
    pub fn object_len(&self) -> u64 {
        self.tail_range().end
    }

    pub fn is_compressed(&self) -> bool {
        self.flags & FLAG_ZSTD != 0
    }
}

/// One frame of a chunk, as listed in its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameEntry {
    pub first_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    /// Absolute byte position of the frame in the object.
    pub compressed_pos: u64,
    pub compressed_len: u32,
    pub raw_len: u32,
}

impl FrameEntry {
    /// The frame's byte range in the object, for a range GET.
    pub fn range(&self) -> Range<u64> {
        self.compressed_pos..self.compressed_pos + u64::from(self.compressed_len)
    }

    pub(crate) fn encode(&self, out: &mut BytesMut) {
        out.put_i64(self.first_offset);
        out.put_i64(self.last_offset);
        out.put_i64(self.max_timestamp);
        out.put_u64(self.compressed_pos);
        out.put_u32(self.compressed_len);
        out.put_u32(self.raw_len);
    }

    fn decode(b: &[u8]) -> FrameEntry {
        FrameEntry {
            first_offset: be_i64(b, 0),
            last_offset: be_i64(b, 8),
            max_timestamp: be_i64(b, 16),
            compressed_pos: be_u64(b, 24),
            compressed_len: be_u32(b, 32),
            raw_len: be_u32(b, 36),
        }
    }
}

/// A chunk's header and frame index: what a reader needs to range-GET single frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkIndex {
    header: ChunkHeader,
    frames: Vec<FrameEntry>,
}

impl ChunkIndex {
    /// Parses `header_and_tail`: the chunk's first [`HEADER_LEN`] bytes followed directly
    /// by its tail ([`ChunkHeader::tail_range`]). Checks `head_crc`.
    pub fn parse(header_and_tail: &[u8]) -> Result<ChunkIndex, TieringError> {
        ChunkIndex::parse_named(UNNAMED, header_and_tail)
    }

    /// [`ChunkIndex::parse`], naming `key` in errors.
    pub fn parse_named(key: &str, header_and_tail: &[u8]) -> Result<ChunkIndex, TieringError> {
        let b = header_and_tail;
        let header = ChunkHeader::decode(b).map_err(|r| TieringError::corrupt(key, r))?;
        let index_len = header.index_len as usize;
        if b.len() != HEADER_LEN + index_len + TRAILER_LEN {
            return Err(TieringError::corrupt(
                key,
                format!(
                    "header and tail are {} bytes, expected {}",
                    b.len(),
                    HEADER_LEN + index_len + TRAILER_LEN
                ),
            ));
        }
        let (head, tail) = b.split_at(HEADER_LEN);
        ChunkIndex::decode(head, tail).map_err(|r| TieringError::corrupt(key, r))
    }

    /// Decodes from the header bytes and the tail bytes (index + trailer).
    fn decode(head: &[u8], tail: &[u8]) -> Result<ChunkIndex, String> {
        let header = ChunkHeader::decode(head)?;
        let index_len = header.index_len as usize;
        if tail.len() != index_len + TRAILER_LEN {
            return Err(format!(
                "tail is {} bytes, expected {}",
                tail.len(),
                index_len + TRAILER_LEN
            ));
        }
        let index = &tail[..index_len];
        let trailer = &tail[index_len..];
        let index_offset = be_u64(trailer, 0);
        if index_offset != header.index_offset() {
            return Err(format!(
                "trailer index offset {index_offset} disagrees with the header ({})",
                header.index_offset()
            ));
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head[..HEADER_LEN]);
        crc.update(index);
        if crc.finalize() != be_u32(trailer, 8) {
            return Err("header/index checksum mismatch".into());
        }
        let frames: Vec<FrameEntry> = index
            .chunks_exact(INDEX_ENTRY_LEN)
            .map(FrameEntry::decode)
            .collect();
        validate(&header, &frames)?;
        Ok(ChunkIndex { header, frames })
    }

    pub fn header(&self) -> &ChunkHeader {
        &self.header
    }

    pub fn frames(&self) -> &[FrameEntry] {
        &self.frames
    }

    /// The first frame holding an offset >= `offset` (the frame to start a fetch at), or
    /// `None` if `offset` is past the chunk.
    pub fn frame_for(&self, offset: i64) -> Option<usize> {
        let i = self.frames.partition_point(|f| f.last_offset < offset);
        (i < self.frames.len()).then_some(i)
    }

    /// The first frame with a batch whose max timestamp is >= `timestamp` (ListOffsets by
    /// time), or `None`.
    pub fn frame_for_timestamp(&self, timestamp: i64) -> Option<usize> {
        self.frames
            .iter()
            .position(|f| f.max_timestamp >= timestamp)
    }

    /// Decompresses frame `i` from its bytes (as range-GET at `frames()[i].range()`) and
    /// checks its length and content; returns the raw batches back to back.
    pub fn decompress_frame(
        &self,
        key: &str,
        i: usize,
        frame_bytes: &[u8],
    ) -> Result<Bytes, TieringError> {
        let entry = self.frames.get(i).ok_or_else(|| TieringError::Invalid {
            what: format!("frame of {key}"),
            reason: format!("frame {i} of {}", self.frames.len()),
        })?;
        decompress(&self.header, entry, Bytes::copy_from_slice(frame_bytes))
            .map_err(|r| TieringError::corrupt(key, format!("frame {i}: {r}")))
    }

    /// [`ChunkIndex::decompress_frame`] split into batches.
    pub fn decode_frame(
        &self,
        key: &str,
        i: usize,
        frame_bytes: &[u8],
    ) -> Result<Vec<Bytes>, TieringError> {
        let raw = self.decompress_frame(key, i, frame_bytes)?;
        split_batches(&raw).map_err(|r| TieringError::corrupt(key, format!("frame {i}: {r}")))
    }
}

/// Checks that the index describes a well-formed body.
fn validate(h: &ChunkHeader, frames: &[FrameEntry]) -> Result<(), String> {
    let mut pos = HEADER_LEN as u64;
    let mut prev_last: Option<i64> = None;
    let mut max_ts = -1i64;
    for (i, f) in frames.iter().enumerate() {
        if f.compressed_pos != pos {
            return Err(format!(
                "frame {i} starts at {} not {pos}",
                f.compressed_pos
            ));
        }
        pos += u64::from(f.compressed_len);
        if f.first_offset > f.last_offset || prev_last.is_some_and(|p| f.first_offset <= p) {
            return Err(format!(
                "frame {i} offsets {}..={} out of order",
                f.first_offset, f.last_offset
            ));
        }
        if f.raw_len == 0 || f.raw_len > MAX_FRAME_RAW_BYTES || f.compressed_len == 0 {
            return Err(format!("frame {i} has bad lengths"));
        }
        prev_last = Some(f.last_offset);
        max_ts = max_ts.max(f.max_timestamp);
    }
    if pos != h.index_offset() {
        return Err(format!(
            "frames end at {pos}, body ends at {}",
            h.index_offset()
        ));
    }
    match (frames.first(), frames.last()) {
        (Some(first), Some(last)) => {
            if first.first_offset != h.base_offset || last.last_offset != h.last_offset {
                return Err("frame offsets disagree with the header".into());
            }
            if max_ts != h.max_timestamp {
                return Err("frame timestamps disagree with the header".into());
            }
            if h.batch_count == 0 {
                return Err("frames but no batches".into());
            }
        }
        _ => {
            if h.batch_count != 0 || h.base_offset != -1 || h.last_offset != -1 {
                return Err("no frames but the header counts batches".into());
            }
        }
    }
    Ok(())
}

/// A frame's raw bytes: decompressed, or (uncompressed) `bytes` themselves, not copied.
fn decompress(h: &ChunkHeader, entry: &FrameEntry, bytes: Bytes) -> Result<Bytes, String> {
    if bytes.len() != entry.compressed_len as usize {
        return Err(format!(
            "{} bytes, index says {}",
            bytes.len(),
            entry.compressed_len
        ));
    }
    let raw = if h.is_compressed() {
        Bytes::from(
            zstd::bulk::decompress(&bytes, entry.raw_len as usize)
                .map_err(|e| format!("zstd: {e}"))?,
        )
    } else {
        bytes
    };
    if raw.len() != entry.raw_len as usize {
        return Err(format!(
            "{} raw bytes, index says {}",
            raw.len(),
            entry.raw_len
        ));
    }
    Ok(raw)
}

/// A whole chunk, verified and decompressed.
#[derive(Clone, Debug)]
pub struct ChunkReader {
    index: ChunkIndex,
    /// (base_offset, last_offset, bytes) per batch, in order.
    batches: Vec<(i64, i64, Bytes)>,
}

impl ChunkReader {
    /// Parses and verifies a whole chunk object.
    pub fn parse(data: Bytes) -> Result<ChunkReader, TieringError> {
        ChunkReader::parse_named(UNNAMED, data)
    }

    /// [`ChunkReader::parse`], naming `key` in errors.
    pub fn parse_named(key: &str, data: Bytes) -> Result<ChunkReader, TieringError> {
        ChunkReader::decode(data).map_err(|r| TieringError::corrupt(key, r))
    }

    fn decode(data: Bytes) -> Result<ChunkReader, String> {
        if data.len() < HEADER_LEN + TRAILER_LEN {
            return Err(format!("{} bytes is too short for a chunk", data.len()));
        }
        let header = ChunkHeader::decode(&data)?;
        if header.object_len() != data.len() as u64 {
            return Err(format!(
                "object is {} bytes, header says {}",
                data.len(),
                header.object_len()
            ));
        }
        let crc_at = data.len() - 4;
        if crc32fast::hash(&data[..crc_at]) != be_u32(&data, crc_at) {
            return Err("checksum mismatch".into());
        }
        let tail_start = header.index_offset() as usize;
        let index = ChunkIndex::decode(&data[..HEADER_LEN], &data[tail_start..])?;
        let mut batches = Vec::with_capacity(header.batch_count as usize);
        for (i, f) in index.frames.iter().enumerate() {
            // Uncompressed batches stay slices of the object as read: no copy.
            let bytes = data.slice(f.compressed_pos as usize..f.range().end as usize);
            let raw = decompress(&header, f, bytes).map_err(|r| format!("frame {i}: {r}"))?;
            for batch in split_batches(&raw).map_err(|r| format!("frame {i}: {r}"))? {
                let (base, last) = batch_offsets(&batch)?;
                batches.push((base, last, batch));
            }
        }
        if batches.len() != header.batch_count as usize {
            return Err(format!(
                "{} batches, header says {}",
                batches.len(),
                header.batch_count
            ));
        }
        if batches.windows(2).any(|w| w[1].0 <= w[0].1) {
            return Err("batch offsets do not increase".into());
        }
        Ok(ChunkReader { index, batches })
    }

    pub fn header(&self) -> &ChunkHeader {
        self.index.header()
    }

    pub fn index(&self) -> &ChunkIndex {
        &self.index
    }

    /// Every batch, in offset order.
    pub fn batches(&self) -> impl Iterator<Item = Bytes> + '_ {
        self.batches.iter().map(|(_, _, b)| b.clone())
    }

    /// The batches whose last offset is >= `offset` (the first may start before it, as
    /// Kafka fetch returns whole batches).
    pub fn read_from(&self, offset: i64) -> Vec<Bytes> {
        let i = self.batches.partition_point(|(_, last, _)| *last < offset);
        self.batches[i..]
            .iter()
            .map(|(_, _, b)| b.clone())
            .collect()
    }
}

/// Test helper: a syntactically valid v2 batch (CRC not computed) of `records` offsets.
#[cfg(test)]
pub(crate) fn test_batch(base_offset: i64, records: i32, payload_len: usize, fill: u8) -> Vec<u8> {
    let mut b = Vec::with_capacity(BATCH_HEADER_LEN + payload_len);
    b.extend_from_slice(&base_offset.to_be_bytes());
    let length = (BATCH_HEADER_LEN - BATCH_LOG_OVERHEAD + payload_len) as i32;
    b.extend_from_slice(&length.to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes()); // partition leader epoch
    b.push(2); // magic
    b.extend_from_slice(&0u32.to_be_bytes()); // crc
    b.extend_from_slice(&0i16.to_be_bytes()); // attributes
    b.extend_from_slice(&(records - 1).to_be_bytes()); // last offset delta
    b.extend_from_slice(&1_700_000_000_000i64.to_be_bytes()); // base timestamp
    b.extend_from_slice(&1_700_000_000_000i64.to_be_bytes()); // max timestamp
    b.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
    b.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    b.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    b.extend_from_slice(&records.to_be_bytes()); // record count
    b.extend(std::iter::repeat_n(fill, payload_len));
    b
}

#[cfg(test)]
#[path = "chunk_tests.rs"]
mod tests;
