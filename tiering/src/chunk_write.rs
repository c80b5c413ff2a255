//! Writing chunk objects ([`ChunkWriter`]); the format is described in [`crate::chunk`].

use bytes::{BufMut, Bytes, BytesMut};

use crate::chunk::{
    batch_delta, batch_offsets, offsets_of, ChunkHeader, FrameEntry, BATCH_HEADER_LEN,
    CHUNK_VERSION, DEFAULT_FRAME_BYTES, FLAG_ZSTD, HEADER_LEN, INDEX_ENTRY_LEN, TRAILER_LEN,
    ZSTD_LEVEL,
};
use crate::TieringError;

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
pub(crate) const BATCH_ATTRIBUTES_POS: usize = 21;

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
        let stored = if self.mode == Mode::Raw {
            let mut parts = std::mem::take(&mut self.shared);
            if !self.pending.is_empty() {
                parts.push(self.pending.split().freeze());
            }
            parts
        } else {
            // Only raw frames take shared parts, so a frame to compress is `pending` alone.
            debug_assert!(self.shared.is_empty());
            let raw = self.pending.split().freeze();
            let z = self.compress(&raw);
            let pays = (z.len() as f64) <= raw.len() as f64 * (1.0 - MIN_SAVING);
            if self.mode == Mode::Zstd || pays {
                self.mode = Mode::Zstd;
                vec![Bytes::from(z)]
            } else {
                self.mode = Mode::Raw;
                vec![raw]
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
