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
const ZSTD_LEVEL: i32 = 1;

/// Kafka v2 batch header: baseOffset i64, batchLength i32, partitionLeaderEpoch i32,
/// magic i8, crc u32, attributes i16, lastOffsetDelta i32, ... 61 bytes in all.
const BATCH_HEADER_LEN: usize = 61;
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
fn batch_offsets(batch: &[u8]) -> Result<(i64, i64), String> {
    offsets_of(be_i64(batch, 0), batch_delta(batch)?)
}

/// `(base, base + delta)`, refusing a negative base and overflow.
fn offsets_of(base: i64, delta: i64) -> Result<(i64, i64), String> {
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
fn batch_delta(batch: &[u8]) -> Result<i64, String> {
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

    fn encode(&self, out: &mut BytesMut) {
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

    fn encode(&self, out: &mut BytesMut) {
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
        decompress(&self.header, entry, frame_bytes)
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

fn decompress(h: &ChunkHeader, entry: &FrameEntry, bytes: &[u8]) -> Result<Bytes, String> {
    if bytes.len() != entry.compressed_len as usize {
        return Err(format!(
            "{} bytes, index says {}",
            bytes.len(),
            entry.compressed_len
        ));
    }
    let raw = if h.is_compressed() {
        zstd::bulk::decompress(bytes, entry.raw_len as usize).map_err(|e| format!("zstd: {e}"))?
    } else {
        bytes.to_vec()
    };
    if raw.len() != entry.raw_len as usize {
        return Err(format!(
            "{} raw bytes, index says {}",
            raw.len(),
            entry.raw_len
        ));
    }
    Ok(Bytes::from(raw))
}

/// How the writer stores frames; decided once per chunk, on its first frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Trial-compress the first frame and keep zstd only if it pays.
    Auto,
    Zstd,
    Raw,
}

/// zstd must save at least this share of a chunk's first frame to be used for the chunk;
/// below it (random payloads, batches the producer already compressed) frames are stored
/// raw, which saves the compression CPU on the produce path and the decompression on reads.
const MIN_SAVING: f64 = 0.10;

/// A finished chunk as the parts it is written from (header, frames, index + trailer), so
/// that no step concatenates the body; the bucket writes the parts as one object.
#[derive(Clone, Debug)]
pub struct ChunkObject {
    pub parts: Vec<Bytes>,
    pub len: u64,
    /// Whether the frames are zstd-compressed.
    pub compressed: bool,
}

impl ChunkObject {
    /// The object as one buffer (one copy).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.len as usize);
        for p in &self.parts {
            out.put_slice(p);
        }
        out.freeze()
    }
}

/// Builds one chunk. Pure CPU work (a copy of each batch, zstd when it pays): call it from
/// `spawn_blocking` for big chunks.
///
/// Each batch is copied once, into the frame being filled; a raw frame is then stored as
/// that buffer, a compressed one as zstd's output. Whether the chunk is compressed is
/// decided on its first frame (see [`MIN_SAVING`]) unless [`ChunkWriter::uncompressed`].
pub struct ChunkWriter {
    frame_bytes: usize,
    mode: Mode,
    compressor: Option<zstd::bulk::Compressor<'static>>,
    body: Vec<Bytes>,
    body_len: u64,
    body_crc: crc32fast::Hasher,
    frames: Vec<FrameEntry>,
    /// The frame being filled, in order: `shared` (parts taken without copying), then
    /// `pending` (batches copied in). Only raw frames take shared parts.
    shared: Vec<Bytes>,
    pending: BytesMut,
    /// Raw bytes in the frame being filled.
    frame_len: usize,
    pending_first: i64,
    pending_last: i64,
    pending_max_ts: i64,
    base_offset: i64,
    last_offset: i64,
    max_timestamp: i64,
    batch_count: u32,
    raw_bytes: u64,
}

impl std::fmt::Debug for ChunkWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkWriter")
            .field("mode", &self.mode)
            .field("frames", &self.frames.len())
            .field("batch_count", &self.batch_count)
            .field("raw_bytes", &self.raw_bytes)
            .finish()
    }
}

impl Default for ChunkWriter {
    fn default() -> Self {
        ChunkWriter::new()
    }
}

/// Batches at least this big are shared into raw chunks rather than copied.
pub const SHARE_MIN_BYTES: usize = 4096;

/// Kafka v2 batch attributes: the low three bits name the producer's compression codec.
const BATCH_ATTRIBUTES_POS: usize = 21;

fn producer_compressed(batch: &[u8]) -> bool {
    batch
        .get(BATCH_ATTRIBUTES_POS + 1)
        .is_some_and(|b| b & 0x07 != 0)
}

impl ChunkWriter {
    pub fn new() -> ChunkWriter {
        ChunkWriter {
            frame_bytes: DEFAULT_FRAME_BYTES,
            mode: Mode::Auto,
            compressor: None,
            body: Vec::new(),
            body_len: 0,
            body_crc: crc32fast::Hasher::new(),
            frames: Vec::new(),
            shared: Vec::new(),
            pending: BytesMut::new(),
            frame_len: 0,
            pending_first: -1,
            pending_last: -1,
            pending_max_ts: -1,
            base_offset: -1,
            last_offset: -1,
            max_timestamp: -1,
            batch_count: 0,
            raw_bytes: 0,
        }
    }

    /// Cuts frames after this many raw bytes instead of [`DEFAULT_FRAME_BYTES`].
    pub fn with_frame_bytes(mut self, frame_bytes: usize) -> ChunkWriter {
        self.frame_bytes = frame_bytes.max(1);
        self
    }

    /// Stores frames raw (flag bit 0 clear). Readers handle both.
    pub fn uncompressed(mut self) -> ChunkWriter {
        self.mode = Mode::Raw;
        self
    }

    /// Compresses every frame, whatever it saves.
    pub fn compressed(mut self) -> ChunkWriter {
        self.mode = Mode::Zstd;
        self
    }

    /// Appends one v2 record batch with its final offsets. Offsets must increase from batch
    /// to batch, and `batch` must be exactly one batch whose header agrees with
    /// `base_offset` and `last_offset`.
    pub fn push_batch(
        &mut self,
        base_offset: i64,
        last_offset: i64,
        max_timestamp: i64,
        batch: &[u8],
    ) -> Result<(), TieringError> {
        self.push(base_offset, last_offset, max_timestamp, batch, None)
    }

    /// [`ChunkWriter::push_batch`] for a batch as the producer sent it: its baseOffset
    /// and partitionLeaderEpoch fields are rewritten to `base_offset` and `leader_epoch` in
    /// the chunk (neither is covered by the batch CRC). In a raw chunk, a batch of at least
    /// [`SHARE_MIN_BYTES`] is not copied: the chunk takes a fresh 16-byte head plus a
    /// shared slice of `batch` for the rest.
    pub fn push_batch_at(
        &mut self,
        base_offset: i64,
        last_offset: i64,
        max_timestamp: i64,
        leader_epoch: i32,
        batch: &Bytes,
    ) -> Result<(), TieringError> {
        self.push(
            base_offset,
            last_offset,
            max_timestamp,
            batch,
            Some((leader_epoch, batch)),
        )
    }

    fn push(
        &mut self,
        base_offset: i64,
        last_offset: i64,
        max_timestamp: i64,
        batch: &[u8],
        rewrite: Option<(i32, &Bytes)>,
    ) -> Result<(), TieringError> {
        let invalid = |reason: String| TieringError::Invalid {
            what: format!("chunk batch at offset {base_offset}"),
            reason,
        };
        if self.batch_count > 0 && base_offset <= self.last_offset {
            return Err(invalid(format!(
                "offsets must increase; the previous batch ended at {}",
                self.last_offset
            )));
        }
        if self.batch_count == u32::MAX {
            return Err(invalid("too many batches in one chunk".into()));
        }
        if self.mode == Mode::Auto && self.batch_count == 0 && producer_compressed(batch) {
            // The producer compressed its batches: zstd would find nothing left to save.
            self.mode = Mode::Raw;
        }
        let mismatch = |(b, l): (i64, i64)| {
            if (b, l) == (base_offset, last_offset) {
                Ok(())
            } else {
                Err(format!(
                    "batch header says offsets {b}..={l}, caller says {base_offset}..={last_offset}"
                ))
            }
        };
        match rewrite {
            Some((epoch, shared)) if self.mode == Mode::Raw && batch.len() >= SHARE_MIN_BYTES => {
                let delta = batch_delta(batch).map_err(&invalid)?;
                mismatch(offsets_of(base_offset, delta).map_err(&invalid)?).map_err(&invalid)?;
                let mut head = [0u8; 16];
                head.copy_from_slice(&batch[..16]);
                head[..8].copy_from_slice(&base_offset.to_be_bytes());
                head[12..16].copy_from_slice(&epoch.to_be_bytes());
                if !self.pending.is_empty() {
                    self.shared.push(self.pending.split().freeze());
                }
                self.shared.push(Bytes::copy_from_slice(&head));
                self.shared.push(shared.slice(16..));
            }
            _ => {
                let at = self.pending.len();
                if self.pending.capacity() - at < batch.len() {
                    // Room for the rest of the frame, not more: after a shared batch the
                    // old buffer lives on in a frozen part, and a reserve sized past it
                    // would allocate a whole frame per small batch.
                    let rest = self.frame_bytes.saturating_sub(self.frame_len);
                    self.pending.reserve(rest.max(batch.len()));
                }
                self.pending.put_slice(batch);
                let copy = &mut self.pending[at..];
                if let Some((epoch, _)) = rewrite {
                    if copy.len() >= BATCH_HEADER_LEN {
                        copy[..8].copy_from_slice(&base_offset.to_be_bytes());
                        copy[12..16].copy_from_slice(&epoch.to_be_bytes());
                    }
                }
                if let Err(reason) = batch_offsets(copy).and_then(mismatch) {
                    self.pending.truncate(at);
                    return Err(invalid(reason));
                }
            }
        }
        if self.frame_len == 0 {
            self.pending_first = base_offset;
            self.pending_max_ts = max_timestamp;
        }
        if self.batch_count == 0 {
            self.base_offset = base_offset;
        }
        self.frame_len += batch.len();
        self.pending_last = last_offset;
        self.pending_max_ts = self.pending_max_ts.max(max_timestamp);
        self.last_offset = last_offset;
        self.max_timestamp = if self.batch_count == 0 {
            max_timestamp
        } else {
            self.max_timestamp.max(max_timestamp)
        };
        self.batch_count += 1;
        self.raw_bytes += batch.len() as u64;
        if self.frame_len >= self.frame_bytes {
            self.cut_frame();
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.batch_count == 0
    }

    pub fn batch_count(&self) -> u32 {
        self.batch_count
    }

    /// Raw (uncompressed) batch bytes pushed so far.
    pub fn raw_bytes(&self) -> u64 {
        self.raw_bytes
    }

    /// The first offset pushed, or -1.
    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }

    /// The last offset pushed, or -1.
    pub fn last_offset(&self) -> i64 {
        self.last_offset
    }

    fn compress(&mut self, raw: &[u8]) -> Vec<u8> {
        let enc = self.compressor.get_or_insert_with(|| {
            let mut enc = zstd::bulk::Compressor::new(ZSTD_LEVEL)
                .expect("zstd accepts the constant compression level");
            enc.include_checksum(true)
                .expect("zstd accepts the checksum flag");
            enc
        });
        enc.compress(raw)
            .expect("zstd compresses into memory unless its parameters are invalid")
    }

    fn cut_frame(&mut self) {
        if self.frame_len == 0 {
            return;
        }
        let raw_len = self.frame_len;
        self.frame_len = 0;
        let mut parts = std::mem::take(&mut self.shared);
        if !self.pending.is_empty() {
            parts.push(self.pending.split().freeze());
        }
        // Only raw frames take shared parts, so a frame to compress is one buffer.
        let stored = match (self.mode, parts.as_slice()) {
            (Mode::Raw, _) => parts,
            (Mode::Zstd, [raw]) => vec![Bytes::from(self.compress(raw))],
            (Mode::Auto, [raw]) => {
                let z = self.compress(raw);
                if (z.len() as f64) <= raw.len() as f64 * (1.0 - MIN_SAVING) {
                    self.mode = Mode::Zstd;
                    vec![Bytes::from(z)]
                } else {
                    self.mode = Mode::Raw;
                    parts
                }
            }
            (_, _) => {
                let raw: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
                self.mode = Mode::Zstd;
                vec![Bytes::from(self.compress(&raw))]
            }
        };
        let stored_len: usize = stored.iter().map(Bytes::len).sum();
        let entry = FrameEntry {
            first_offset: self.pending_first,
            last_offset: self.pending_last,
            max_timestamp: self.pending_max_ts,
            compressed_pos: HEADER_LEN as u64 + self.body_len,
            compressed_len: stored_len as u32,
            raw_len: raw_len as u32,
        };
        for part in &stored {
            self.body_crc.update(part);
        }
        self.body_len += stored_len as u64;
        self.body.extend(stored);
        self.frames.push(entry);
    }

    /// Finishes the chunk and returns the object's bytes (one buffer).
    pub fn finish(self) -> Bytes {
        self.finish_parts().to_bytes()
    }

    /// Finishes the chunk and returns the object as its parts, without concatenating them.
    pub fn finish_parts(mut self) -> ChunkObject {
        self.cut_frame();
        let header = ChunkHeader {
            version: CHUNK_VERSION,
            flags: if self.mode == Mode::Zstd {
                FLAG_ZSTD
            } else {
                0
            },
            base_offset: self.base_offset,
            last_offset: self.last_offset,
            max_timestamp: self.max_timestamp,
            batch_count: self.batch_count,
            body_len: self.body_len,
            index_len: (self.frames.len() * INDEX_ENTRY_LEN) as u32,
        };
        let mut head = BytesMut::with_capacity(HEADER_LEN);
        header.encode(&mut head);
        let mut tail = BytesMut::with_capacity(header.index_len as usize + TRAILER_LEN);
        for f in &self.frames {
            f.encode(&mut tail);
        }
        let mut head_crc = crc32fast::Hasher::new();
        head_crc.update(&head);
        head_crc.update(&tail);
        tail.put_u64(header.index_offset());
        tail.put_u32(head_crc.finalize());
        // The whole-object CRC, from the pieces: header, then body, then the tail so far.
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        crc.combine(&self.body_crc);
        let mut tail_crc = crc32fast::Hasher::new();
        tail_crc.update(&tail);
        crc.combine(&tail_crc);
        tail.put_u32(crc.finalize());
        let len = header.object_len();
        let mut parts = Vec::with_capacity(self.body.len() + 2);
        parts.push(head.freeze());
        parts.append(&mut self.body);
        parts.push(tail.freeze());
        ChunkObject {
            parts,
            len,
            compressed: self.mode == Mode::Zstd,
        }
    }
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
            let bytes = &data[f.compressed_pos as usize..f.range().end as usize];
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
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// `n` batches of `records` offsets each, starting at `base`.
    fn batches(base: i64, n: usize, records: i32, payload: usize) -> Vec<(i64, i64, i64, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let b = base + i as i64 * i64::from(records);
                let last = b + i64::from(records) - 1;
                (
                    b,
                    last,
                    1000 + i as i64,
                    test_batch(b, records, payload, i as u8),
                )
            })
            .collect()
    }

    fn build(writer: ChunkWriter, input: &[(i64, i64, i64, Vec<u8>)]) -> Bytes {
        let mut w = writer;
        for (b, l, ts, bytes) in input {
            w.push_batch(*b, *l, *ts, bytes).expect("push");
        }
        w.finish()
    }

    /// Random (incompressible) payloads, as a producer's already-compressed data looks.
    fn noisy_batch(records: i32, payload: usize, seed: u64) -> Vec<u8> {
        let mut b = test_batch(0, records, payload, 0);
        let mut x = (seed + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for byte in &mut b[BATCH_HEADER_LEN..] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *byte = x as u8;
        }
        b
    }

    #[test]
    fn producer_batches_are_rewritten_and_shared_into_raw_chunks() {
        // Sizes around SHARE_MIN_BYTES, so copied and shared batches interleave.
        let sent: Vec<Bytes> = (0..40)
            .map(|i| Bytes::from(noisy_batch(2, 1000 + (i % 5) * 2000, i as u64)))
            .collect();
        let mut shared = ChunkWriter::new().with_frame_bytes(20_000);
        let mut copied = ChunkWriter::new().with_frame_bytes(20_000);
        for (i, b) in sent.iter().enumerate() {
            let base = 100 + 2 * i as i64;
            shared
                .push_batch_at(base, base + 1, 5, 9, b)
                .expect("push shared");
            let mut patched = b.to_vec();
            patched[..8].copy_from_slice(&base.to_be_bytes());
            patched[12..16].copy_from_slice(&9i32.to_be_bytes());
            copied
                .push_batch(base, base + 1, 5, &patched)
                .expect("push copied");
        }
        let object = shared.finish_parts();
        assert!(!object.compressed, "noise is stored raw");
        assert!(
            object.parts.len() > 40,
            "big batches are shared, not joined"
        );
        let bytes = object.to_bytes();
        assert_eq!(bytes.len() as u64, object.len);
        assert_eq!(bytes, copied.finish(), "the same object either way");
        let reader = ChunkReader::parse(bytes).expect("parse");
        let got: Vec<Bytes> = reader.batches().collect();
        assert_eq!(got.len(), sent.len());
        for (i, (g, s)) in got.iter().zip(&sent).enumerate() {
            assert_eq!(be_i64(g, 0), 100 + 2 * i as i64);
            assert_eq!(be_i32(g, 12), 9);
            assert_eq!(&g[16..], &s[16..]);
        }
    }

    #[test]
    fn zstd_is_used_only_when_it_pays() {
        let mut w = ChunkWriter::new();
        for i in 0..20 {
            w.push_batch_at(
                i * 2,
                i * 2 + 1,
                0,
                0,
                &Bytes::from(test_batch(0, 2, 5000, 7)),
            )
            .expect("push");
        }
        let repetitive = w.finish_parts();
        assert!(repetitive.compressed);
        let mut w = ChunkWriter::new();
        for i in 0..20 {
            let b = Bytes::from(noisy_batch(2, 5000, i as u64));
            w.push_batch_at(i * 2, i * 2 + 1, 0, 0, &b).expect("push");
        }
        assert!(!w.finish_parts().compressed);
        // A producer-compressed batch (attributes codec bits set) is never recompressed.
        let mut b = test_batch(0, 2, 5000, 7);
        b[BATCH_ATTRIBUTES_POS + 1] = 4;
        let mut w = ChunkWriter::new();
        w.push_batch_at(0, 1, 0, 0, &Bytes::from(b)).expect("push");
        let object = w.finish_parts();
        assert!(!object.compressed);
        assert!(ChunkReader::parse(object.to_bytes()).is_ok());
    }

    #[test]
    fn a_shared_batch_with_bad_offsets_is_refused() {
        let b = Bytes::from(noisy_batch(3, 5000, 1));
        let mut w = ChunkWriter::new().uncompressed();
        assert!(
            w.push_batch_at(10, 11, 0, 0, &b).is_err(),
            "3 records, not 2"
        );
        w.push_batch_at(10, 12, 0, 0, &b).expect("push");
        assert!(w.push_batch_at(12, 14, 0, 0, &b).is_err(), "overlaps");
    }

    #[test]
    fn pins_the_v1_bytes() {
        let batch = test_batch(7, 2, 3, 0xAB);
        let mut w = ChunkWriter::new().uncompressed();
        w.push_batch(7, 8, 1234, &batch).expect("push");
        let chunk = w.finish();
        let mut expected = Vec::new();
        expected.extend_from_slice(b"CHRNKCHK");
        expected.push(1); // version
        expected.push(0); // flags: raw frames
        expected.extend_from_slice(&7i64.to_be_bytes());
        expected.extend_from_slice(&8i64.to_be_bytes());
        expected.extend_from_slice(&1234i64.to_be_bytes());
        expected.extend_from_slice(&1u32.to_be_bytes());
        expected.extend_from_slice(&64u64.to_be_bytes()); // body_len
        expected.extend_from_slice(&40u32.to_be_bytes()); // index_len
        assert_eq!(expected.len(), HEADER_LEN);
        expected.extend_from_slice(&batch);
        expected.extend_from_slice(&7i64.to_be_bytes());
        expected.extend_from_slice(&8i64.to_be_bytes());
        expected.extend_from_slice(&1234i64.to_be_bytes());
        expected.extend_from_slice(&50u64.to_be_bytes());
        expected.extend_from_slice(&64u32.to_be_bytes());
        expected.extend_from_slice(&64u32.to_be_bytes());
        let mut head_crc = crc32fast::Hasher::new();
        head_crc.update(&expected[..HEADER_LEN]);
        head_crc.update(&expected[HEADER_LEN + 64..]);
        let head_crc = head_crc.finalize();
        expected.extend_from_slice(&114u64.to_be_bytes());
        expected.extend_from_slice(&head_crc.to_be_bytes());
        let crc = crc32fast::hash(&expected);
        expected.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(chunk.as_ref(), expected.as_slice());
        // And the literal bytes of the fixed part, so a change to the code above cannot
        // silently move the format.
        assert_eq!(
            &chunk[..HEADER_LEN],
            &[
                0x43, 0x48, 0x52, 0x4e, 0x4b, 0x43, 0x48, 0x4b, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 7,
                0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x04, 0xd2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0,
                0, 64, 0, 0, 0, 40
            ]
        );
        let reader = ChunkReader::parse(chunk).expect("parse");
        assert_eq!(
            reader.batches().collect::<Vec<_>>(),
            vec![Bytes::from(batch)]
        );
    }

    #[test]
    fn compressed_chunk_header_is_pinned() {
        let input = batches(0, 3, 10, 100);
        let chunk = build(ChunkWriter::new(), &input);
        assert_eq!(&chunk[..10], b"CHRNKCHK\x01\x01");
        let h = ChunkHeader::parse(&chunk).expect("header");
        assert_eq!(
            (h.base_offset, h.last_offset, h.max_timestamp),
            (0, 29, 1002)
        );
        assert_eq!(h.batch_count, 3);
        assert_eq!(h.object_len(), chunk.len() as u64);
    }

    #[test]
    fn round_trips_and_reads_from_an_offset() {
        let input = batches(100, 50, 4, 3000);
        let chunk = build(ChunkWriter::new().with_frame_bytes(20_000), &input);
        let reader = ChunkReader::parse(chunk.clone()).expect("parse");
        let all: Vec<Bytes> = reader.batches().collect();
        assert_eq!(all.len(), 50);
        for (got, (_, _, _, want)) in all.iter().zip(&input) {
            assert_eq!(got.as_ref(), want.as_slice());
        }
        assert!(reader.index().frames().len() > 5, "frames are cut");
        assert_eq!(reader.read_from(0).len(), 50);
        assert_eq!(reader.read_from(100).len(), 50);
        assert_eq!(reader.read_from(103).len(), 50);
        assert_eq!(reader.read_from(104).len(), 49);
        assert_eq!(
            reader.read_from(106).len(),
            49,
            "the batch holding 106 starts at 104"
        );
        assert_eq!(reader.read_from(299).len(), 1);
        assert!(reader.read_from(300).is_empty());
        assert!(
            chunk.len() < 50 * 3000 / 4,
            "compresses: {} bytes",
            chunk.len()
        );
    }

    #[test]
    fn range_reads_through_the_index() {
        let input = batches(0, 40, 5, 2000);
        let chunk = build(ChunkWriter::new().with_frame_bytes(10_000), &input);
        let header = ChunkHeader::parse(&chunk[..HEADER_LEN]).expect("header");
        let tail = header.tail_range();
        let mut head_and_tail = chunk[..HEADER_LEN].to_vec();
        head_and_tail.extend_from_slice(&chunk[tail.start as usize..tail.end as usize]);
        let index = ChunkIndex::parse(&head_and_tail).expect("index");
        let i = index.frame_for(123).expect("frame");
        let f = index.frames()[i];
        assert!(f.first_offset <= 123 && 123 <= f.last_offset);
        let frame = &chunk[f.range().start as usize..f.range().end as usize];
        let got = index.decode_frame("k", i, frame).expect("decode");
        assert_eq!(got.first().map(|b| be_i64(b, 0)), Some(f.first_offset));
        assert!(index.frame_for(200).is_none());
        assert_eq!(index.frame_for(-5), Some(0));
        assert_eq!(index.frame_for_timestamp(0), Some(0));
        assert!(index.frame_for_timestamp(5000).is_none());
        // A bit flip inside a range-read frame is caught by zstd's checksum.
        let mut bad = frame.to_vec();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x10;
        assert!(index.decode_frame("k", i, &bad).is_err());
    }

    #[test]
    fn empty_chunk_is_valid() {
        let chunk = ChunkWriter::new().finish();
        let reader = ChunkReader::parse(chunk).expect("parse");
        assert_eq!(reader.header().base_offset, -1);
        assert!(reader.read_from(0).is_empty());
        assert!(reader.index().frame_for(0).is_none());
    }

    #[test]
    fn writer_rejects_bad_batches() {
        let mut w = ChunkWriter::new();
        let b = test_batch(10, 5, 0, 0);
        assert!(w.push_batch(11, 14, 0, &b).is_err(), "base offset mismatch");
        assert!(w.push_batch(10, 15, 0, &b).is_err(), "last offset mismatch");
        assert!(w.push_batch(10, 14, 0, &b[..40]).is_err(), "truncated");
        let mut v1 = b.clone();
        v1[BATCH_MAGIC_POS] = 1;
        assert!(w.push_batch(10, 14, 0, &v1).is_err(), "magic");
        w.push_batch(10, 14, 0, &b).expect("push");
        assert!(
            w.push_batch(10, 14, 0, &b).is_err(),
            "offsets must increase"
        );
        let b2 = test_batch(14, 1, 0, 0);
        assert!(w.push_batch(14, 14, 0, &b2).is_err(), "overlap");
        let gap = test_batch(20, 1, 0, 0);
        w.push_batch(20, 20, 0, &gap)
            .expect("gaps are allowed (compacted input)");
    }

    #[test]
    fn corrupt_input_is_an_error_never_a_panic() {
        let input = batches(0, 30, 3, 500);
        let chunk = build(ChunkWriter::new().with_frame_bytes(4000), &input);
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        for len in 0..chunk.len() {
            if len % 7 == 0 || len < 200 || len > chunk.len() - 200 {
                let err = ChunkReader::parse_named("t/k.chunk", chunk.slice(..len))
                    .expect_err("truncated must fail");
                assert!(err.to_string().contains("t/k.chunk"), "{err}");
            }
        }
        for _ in 0..2000 {
            let mut bad = chunk.to_vec();
            let flips = rng.gen_range(1..4);
            for _ in 0..flips {
                let at = rng.gen_range(0..bad.len());
                bad[at] ^= 1 << rng.gen_range(0..8);
            }
            assert!(ChunkReader::parse(Bytes::from(bad.clone())).is_err());
            // The index parser sees header + tail of the flipped object.
            if let Ok(h) = ChunkHeader::parse(&bad) {
                let tail = h.tail_range();
                if tail.end as usize <= bad.len() {
                    let mut ht = bad[..HEADER_LEN].to_vec();
                    ht.extend_from_slice(&bad[tail.start as usize..tail.end as usize]);
                    let _ = ChunkIndex::parse(&ht);
                }
            }
        }
        for _ in 0..500 {
            let len = rng.gen_range(0..300);
            let mut junk: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if junk.len() >= 10 && rng.gen_bool(0.5) {
                junk[..8].copy_from_slice(CHUNK_MAGIC);
                junk[8] = 1;
                junk[9] = rng.gen_range(0..2);
            }
            assert!(ChunkReader::parse(Bytes::from(junk.clone())).is_err());
            let _ = ChunkIndex::parse(&junk);
            let _ = split_batches(&Bytes::from(junk));
        }
        let mut v2 = chunk.to_vec();
        v2[8] = 2;
        let err = ChunkReader::parse(Bytes::from(v2)).expect_err("version");
        assert!(err.to_string().contains("version 2"), "{err}");
    }
}
