//! The Parquet archive of topics that ask for it (`archive.parquet.enable=true`): the
//! partition leader turns committed records into Parquet files in the bucket (format and
//! layout in `chronik_tiering::archive`), for DuckDB, Spark, pandas and DataFusion.
//!
//! A partition's state holds the archived mark: offsets below it are in archive files.
//! The leader writes the next file from the mark once `archive_file_bytes` are waiting,
//! or once data has waited `archive_interval` (a quiet topic's records still reach the
//! archive), and then commits the new mark through Raft, so a new leader carries on where
//! the last one stopped.
//!
//! No record is archived twice and none is skipped. A file is named by the offset it
//! starts at and written create-only; a file already there (a crash before its mark
//! committed, or a deposed leader racing the new one) holds the same committed records
//! from the same offset, so the leader adopts it: it reads the file's last offset and
//! commits the mark after it. Retention does not delete records the archive does not have
//! yet: it waits for them (and has them archived at once). DeleteRecords does not wait:
//! records it deletes before they are archived are not archived. Archive files are not
//! deleted by retention or topic deletion: they are the analysts' copy.

use std::sync::atomic::Ordering;

use bytes::{Buf, Bytes};
use kafka_protocol::compression::{Decompressor, Gzip, Lz4, Snappy, Zstd};

use chronik_tiering::archive::{archive_key, archived_range, ArchiveRecord, ArchiveWriter};

use super::Tier;
use crate::errors::code;
use crate::partition::batch::BatchHeader;
use crate::partition::log::archived_command;
use crate::partition::Partition;

/// Bytes read from the log per call while a file is gathered.
const READ_BYTES: usize = 1 << 20;
/// Bytes of batches decoded and added to the file at a time.
const PIECE_BYTES: usize = 4 << 20;

impl Tier {
    /// Writes the partition's next archive file when one is due.
    pub(super) async fn archive(&self, p: &Partition, enabled: bool) -> Result<(), String> {
        if !enabled {
            self.archive_waiting.lock().remove(&p.group);
            return Ok(());
        }
        let (from, end, waiting) = {
            let log = p.log.read();
            let from = log.archived_to().max(log.log_start_offset());
            (from, log.high_watermark(), log.bytes_from(from))
        };
        if from >= end {
            self.archive_waiting.lock().remove(&p.group);
            return Ok(());
        }
        let full = waiting >= self.config.archive_file_bytes as u64;
        let since = *self
            .archive_waiting
            .lock()
            .entry(p.group)
            .or_insert_with(tokio::time::Instant::now);
        if !full && since.elapsed() < self.config.archive_interval {
            return Ok(());
        }
        // One file at a time per node, built piece by piece: the node holds a piece of
        // batches (PIECE_BYTES), one Arrow batch of rows, one encoded row group and the
        // file so far, not the whole file's batches as well.
        let _one_at_a_time = self.archive_slot.lock().await;
        let mut writer = ArchiveWriter::new(&p.topic, p.topic_id, p.index)?;
        let (mut at, mut gathered, mut skipped) = (from, 0usize, 0u64);
        while at < end && gathered < self.config.archive_file_bytes {
            let want = PIECE_BYTES.min(self.config.archive_file_bytes - gathered);
            let (piece, next, bytes) = self.gather(p, at, end, want).await?;
            if piece.is_empty() {
                break;
            }
            let (topic, partition) = (p.topic.clone(), p.index);
            let (w, left_out) = tokio::task::spawn_blocking(move || {
                push_batches(writer, piece, from, &topic, partition)
            })
            .await
            .map_err(|e| format!("archive task: {e}"))??;
            writer = w;
            skipped += left_out;
            gathered += bytes;
            at = next;
        }
        let up_to = at;
        self.stats
            .archive_skipped_batches
            .fetch_add(skipped, Ordering::Relaxed);
        if up_to == from {
            return Ok(());
        }
        if writer.rows() == 0 {
            // Only control records (or batches left out): no file, but the mark moves on.
            return self.commit_archived(p, from, up_to).await;
        }
        let rows = writer.rows() as u64;
        let file = tokio::task::spawn_blocking(move || writer.finish(from, up_to - 1))
            .await
            .map_err(|e| format!("archive task: {e}"))??;
        let key = archive_key(&p.topic, p.topic_id, p.index, from);
        let size = file.len() as u64;
        let created = self
            .bucket
            .put_if_absent(&key, file)
            .await
            .map_err(|e| format!("upload {key}: {e}"))?;
        let up_to = if created {
            self.stats.archive_files.fetch_add(1, Ordering::Relaxed);
            self.stats
                .archive_records
                .fetch_add(rows, Ordering::Relaxed);
            self.stats.archive_bytes.fetch_add(size, Ordering::Relaxed);
            up_to
        } else {
            let existing = self
                .bucket
                .get(&key)
                .await
                .map_err(|e| format!("read {key}: {e}"))?;
            let (_, last) = archived_range(&existing).map_err(|e| format!("{key}: {e}"))?;
            tracing::info!(topic = %p.topic, partition = p.index, %key, last, "archive file already written: adopted");
            last + 1
        };
        self.commit_archived(p, from, up_to).await?;
        self.archive_waiting.lock().remove(&p.group);
        tracing::debug!(topic = %p.topic, partition = p.index, %key, from, up_to, "archived");
        Ok(())
    }

    /// Retention waits for records the archive does not have yet: archive them at the
    /// next step, however few.
    pub(super) fn archive_now(&self, group: u64) {
        let long_ago = tokio::time::Instant::now()
            .checked_sub(self.config.archive_interval)
            .unwrap_or_else(tokio::time::Instant::now);
        self.archive_waiting.lock().insert(group, long_ago);
    }

    async fn commit_archived(&self, p: &Partition, from: i64, up_to: i64) -> Result<(), String> {
        let res = self
            .propose(p, archived_command(from, up_to))
            .await
            .map_err(|e| format!("commit archive mark: {e}"))?;
        if res.error != code::NONE {
            tracing::info!(topic = %p.topic, partition = p.index, from, up_to, "archive mark refused: it moved meanwhile");
        }
        Ok(())
    }

    /// Whole batches from `from` up to `end` (the high watermark when the step began),
    /// about `max_bytes` of them; the offset after the last, and their size.
    async fn gather(
        &self,
        p: &Partition,
        from: i64,
        end: i64,
        max_bytes: usize,
    ) -> Result<(Vec<Bytes>, i64, usize), String> {
        let mut out = Vec::new();
        let (mut at, mut bytes) = (from, 0usize);
        while at < end && bytes < max_bytes {
            let mut data = p.read_at(at, READ_BYTES, true).await?;
            if data.is_empty() {
                break;
            }
            let before = at;
            while data.len() >= crate::partition::batch::LOG_OVERHEAD && bytes < max_bytes {
                let header = BatchHeader::parse(&data).map_err(|e| format!("archive read: {e}"))?;
                let base = (&data[..8]).get_i64();
                if base >= end {
                    break;
                }
                let batch = data.split_to(header.batch_len.min(data.len()));
                bytes += batch.len();
                at = base + header.last_offset_delta as i64 + 1;
                out.push(batch);
            }
            if at == before {
                return Err(format!("archive read at offset {at} made no progress"));
            }
        }
        Ok((out, at, bytes))
    }
}

/// One record of a batch, its fields sliced out of the (decompressed) batch.
struct Row {
    offset: i64,
    timestamp: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
    /// In record order, repeats included (Kafka allows them); keys as sent, even when they
    /// are not UTF-8.
    headers: Vec<(Bytes, Option<Bytes>)>,
    sequence: i32,
}

/// What the archive keeps of a batch: its header fields and its records.
struct Batch {
    leader_epoch: i32,
    log_append_time: bool,
    control: bool,
    producer_id: i64,
    producer_epoch: i16,
    rows: Vec<Row>,
}

/// Decodes one v2 record batch for the archive. The codec crate's decoder is not used
/// here: it keeps headers in a map (repeated keys collapse) and refuses header keys that
/// are not UTF-8, records Kafka itself accepts and serves.
fn decode_batch(batch: &Bytes) -> Result<Batch, String> {
    const RECORDS_AT: usize = 61;
    if batch.len() < RECORDS_AT || batch[16] != 2 {
        return Err("not a v2 record batch".into());
    }
    let i16_at = |at: usize| i16::from_be_bytes([batch[at], batch[at + 1]]);
    let i32_at =
        |at: usize| i32::from_be_bytes([batch[at], batch[at + 1], batch[at + 2], batch[at + 3]]);
    let i64_at = |at: usize| (&batch[at..at + 8]).get_i64();
    let base_offset = i64_at(0);
    let attributes = i16_at(21);
    let base_timestamp = i64_at(27);
    let max_timestamp = i64_at(35);
    let base_sequence = i32_at(53);
    let count = i32_at(57).max(0) as usize;
    let log_append_time = attributes & 0x08 != 0;
    let mut body = batch.slice(RECORDS_AT..);
    let records = match attributes & 0x07 {
        0 => Ok(body),
        1 => Gzip::decompress(&mut body, take_all),
        2 => Snappy::decompress(&mut body, take_all),
        3 => Lz4::decompress(&mut body, take_all),
        4 => Zstd::decompress(&mut body, take_all),
        other => return Err(format!("unknown compression codec {other}")),
    }
    .map_err(|e| format!("decompress: {e}"))?;
    let mut r = records;
    let mut rows = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let len = varint(&mut r)?;
        let len = usize::try_from(len).map_err(|_| "negative record length")?;
        if r.remaining() < len {
            return Err("record runs past the batch".into());
        }
        let mut rec = r.split_to(len);
        if !rec.has_remaining() {
            return Err("empty record".into());
        }
        rec.advance(1); // attributes (unused)
        let ts_delta = varint(&mut rec)?;
        let offset_delta = varint(&mut rec)?;
        let key = bytes_field(&mut rec)?;
        let value = bytes_field(&mut rec)?;
        let n = usize::try_from(varint(&mut rec)?).map_err(|_| "negative header count")?;
        let mut headers = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let k = bytes_field(&mut rec)?.ok_or("a header without a key")?;
            headers.push((k, bytes_field(&mut rec)?));
        }
        let sequence = if base_sequence < 0 {
            -1
        } else {
            // Sequences wrap from i32::MAX to 0, as Kafka's do.
            ((base_sequence as i64 + offset_delta) % (i32::MAX as i64 + 1)) as i32
        };
        rows.push(Row {
            offset: base_offset + offset_delta,
            timestamp: if log_append_time {
                max_timestamp
            } else {
                base_timestamp.wrapping_add(ts_delta)
            },
            key,
            value,
            headers,
            sequence,
        });
    }
    Ok(Batch {
        leader_epoch: i32_at(12),
        log_append_time,
        control: attributes & 0x20 != 0,
        producer_id: i64_at(43),
        producer_epoch: i16_at(51),
        rows,
    })
}

fn take_all(b: &mut Bytes) -> anyhow::Result<Bytes> {
    Ok(b.split_to(b.len()))
}

/// A zigzag varint (Kafka's varint and varlong), as i64.
fn varint(b: &mut Bytes) -> Result<i64, String> {
    let mut raw: u64 = 0;
    for shift in (0..70).step_by(7) {
        if !b.has_remaining() {
            return Err("record ends inside a varint".into());
        }
        let byte = b.get_u8();
        raw |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
        }
    }
    Err("varint longer than 10 bytes".into())
}

/// A length-prefixed field: None for length -1.
fn bytes_field(b: &mut Bytes) -> Result<Option<Bytes>, String> {
    let len = varint(b)?;
    if len < 0 {
        return Ok(None);
    }
    let len = len as usize;
    if b.remaining() < len {
        return Err("field runs past the record".into());
    }
    Ok(Some(b.split_to(len)))
}

/// Decodes the batches and adds their rows at or after `from` to the file. A batch that
/// cannot be decoded (its CRC held, so its producer wrote it so) is left out with a warning
/// rather than stopping the archive, and retention with it. Returns the writer and the
/// number of batches left out.
fn push_batches(
    mut writer: ArchiveWriter,
    batches: Vec<Bytes>,
    from: i64,
    topic: &str,
    partition: i32,
) -> Result<(ArchiveWriter, u64), String> {
    let mut skipped = 0u64;
    for batch in batches {
        let b = match decode_batch(&batch) {
            Ok(b) => b,
            Err(err) => {
                let base = (&batch[..8]).get_i64();
                tracing::warn!(topic, partition, base_offset = base, %err, "a batch the archive cannot read is left out of it");
                skipped += 1;
                continue;
            }
        };
        if b.control {
            continue;
        }
        for r in b.rows.iter().filter(|r| r.offset >= from) {
            let headers = r
                .headers
                .iter()
                .map(|(k, v)| (String::from_utf8_lossy(k), v.as_deref()))
                .collect::<Vec<_>>();
            writer.push(&ArchiveRecord {
                offset: r.offset,
                timestamp: r.timestamp,
                log_append_time: b.log_append_time,
                key: r.key.as_deref(),
                value: r.value.as_deref(),
                headers: headers.iter().map(|(k, v)| (k.as_ref(), *v)).collect(),
                producer_id: b.producer_id,
                producer_epoch: b.producer_epoch,
                sequence: r.sequence,
                leader_epoch: b.leader_epoch,
            })?;
        }
    }
    Ok((writer, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn record(offset: i64, seq: i32) -> Record {
        let mut headers = IndexMap::new();
        headers.insert(StrBytes::from_static_str("h"), Some(Bytes::from("x")));
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 3,
            producer_id: 9,
            producer_epoch: 1,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: seq,
            timestamp: 1_000 + offset,
            key: (offset % 2 == 0).then(|| Bytes::from(format!("k{offset}"))),
            value: Some(Bytes::from(format!("v{offset}"))),
            headers,
        }
    }

    #[test]
    fn batches_of_every_codec_decode_to_their_records() {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let records: Vec<Record> = (10..15).map(|o| record(o, (o - 10) as i32 + 40)).collect();
            let mut buf = BytesMut::new();
            let options = RecordEncodeOptions {
                version: 2,
                compression,
            };
            RecordBatchEncoder::encode(&mut buf, &records, &options).expect("encode");
            let b = decode_batch(&buf.freeze()).expect("decode");
            assert_eq!((b.producer_id, b.producer_epoch, b.leader_epoch), (9, 1, 3));
            let got: Vec<(i64, i64, Option<Bytes>, i32)> = b
                .rows
                .iter()
                .map(|r| (r.offset, r.timestamp, r.key.clone(), r.sequence))
                .collect();
            let want: Vec<(i64, i64, Option<Bytes>, i32)> = records
                .iter()
                .map(|r| (r.offset, r.timestamp, r.key.clone(), r.sequence))
                .collect();
            assert_eq!(got, want, "{compression:?}");
            assert_eq!(
                b.rows[0].headers,
                vec![(Bytes::from("h"), Some(Bytes::from("x")))]
            );
        }
    }

    fn zigzag(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }

    /// An uncompressed batch of one record with the given headers, built by hand (the
    /// codec crate cannot write repeated or non-UTF-8 header keys).
    fn batch_with_headers(base_sequence: i32, headers: &[(&[u8], Option<&[u8]>)]) -> Bytes {
        let mut rec = vec![0u8];
        zigzag(&mut rec, 0); // timestamp delta
        zigzag(&mut rec, 0); // offset delta
        zigzag(&mut rec, -1); // null key
        zigzag(&mut rec, 1);
        rec.push(b'v');
        zigzag(&mut rec, headers.len() as i64);
        for (k, v) in headers {
            zigzag(&mut rec, k.len() as i64);
            rec.extend_from_slice(k);
            match v {
                Some(v) => {
                    zigzag(&mut rec, v.len() as i64);
                    rec.extend_from_slice(v);
                }
                None => zigzag(&mut rec, -1),
            }
        }
        let mut records = Vec::new();
        zigzag(&mut records, rec.len() as i64);
        records.extend_from_slice(&rec);
        let mut b = BytesMut::new();
        b.put_i64(100); // base offset
        b.put_i32((49 + records.len()) as i32);
        b.put_i32(0); // leader epoch
        b.put_i8(2);
        b.put_u32(0); // crc (not checked here)
        b.put_i16(0);
        b.put_i32(0); // last offset delta
        b.put_i64(5_000);
        b.put_i64(5_000);
        b.put_i64(-1); // producer id
        b.put_i16(-1);
        b.put_i32(base_sequence);
        b.put_i32(1);
        b.put_slice(&records);
        b.freeze()
    }

    #[test]
    fn repeated_and_non_utf8_header_keys_are_kept_in_order() {
        let headers: &[(&[u8], Option<&[u8]>)] = &[
            (b"trace", Some(b"a")),
            (b"trace", Some(b"b")),
            (&[0xff, 0xfe], None),
            (b"trace", Some(b"c")),
        ];
        let b = decode_batch(&batch_with_headers(-1, headers)).expect("decode");
        let got: Vec<(Bytes, Option<Bytes>)> = b.rows[0].headers.clone();
        let want: Vec<(Bytes, Option<Bytes>)> = headers
            .iter()
            .map(|(k, v)| (Bytes::copy_from_slice(k), v.map(Bytes::copy_from_slice)))
            .collect();
        assert_eq!(got, want);
        assert_eq!(b.rows[0].sequence, -1, "no producer id: no sequence");
        assert_eq!((b.rows[0].offset, b.rows[0].timestamp), (100, 5_000));
    }

    #[test]
    fn sequences_wrap_to_zero_and_bad_records_are_errors() {
        let b = decode_batch(&batch_with_headers(i32::MAX, &[])).expect("decode");
        assert_eq!(b.rows[0].sequence, i32::MAX);
        let whole = batch_with_headers(0, &[(b"k", Some(b"v"))]);
        assert!(decode_batch(&whole.slice(..whole.len() - 2)).is_err());
        assert!(decode_batch(&whole.slice(..30)).is_err());
    }
}
