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
use kafka_protocol::records::{RecordBatchDecoder, TimestampType};

use chronik_tiering::archive::{archive_key, archived_range, ArchiveRecord, ArchiveWriter};

use super::Tier;
use crate::errors::code;
use crate::partition::batch::BatchHeader;
use crate::partition::log::archived_command;
use crate::partition::Partition;

/// Bytes read from the log per call while a file is gathered.
const READ_BYTES: usize = 1 << 20;

impl Tier {
    /// Writes the partition's next archive file when one is due.
    pub(super) async fn archive(&self, p: &Partition, enabled: bool) -> Result<(), String> {
        if !enabled {
            self.archive_waiting.0.lock().remove(&p.group);
            return Ok(());
        }
        let (from, end, waiting) = {
            let log = p.log.read();
            let from = log.archived_to().max(log.log_start_offset());
            (from, log.high_watermark(), log.bytes_from(from))
        };
        if from >= end {
            self.archive_waiting.0.lock().remove(&p.group);
            return Ok(());
        }
        let full = waiting >= self.config.archive_file_bytes as u64;
        let since = *self
            .archive_waiting
            .0
            .lock()
            .entry(p.group)
            .or_insert_with(tokio::time::Instant::now);
        if !full && since.elapsed() < self.config.archive_interval {
            return Ok(());
        }
        let (data, up_to) = self.gather(p, from, end).await?;
        if data.is_empty() {
            return Ok(());
        }
        let (topic, topic_id, partition) = (p.topic.clone(), p.topic_id, p.index);
        let file = tokio::task::spawn_blocking(move || {
            encode_file(&topic, topic_id, partition, data, from, up_to)
        })
        .await
        .map_err(|e| format!("archive task: {e}"))??;
        let Some((file, rows)) = file else {
            // Only control records: nothing to write, but the mark moves past them.
            return self.commit_archived(p, from, up_to).await;
        };
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
        self.archive_waiting.0.lock().remove(&p.group);
        tracing::debug!(topic = %p.topic, partition = p.index, %key, from, up_to, "archived");
        Ok(())
    }

    /// Retention waits for records the archive does not have yet: archive them at the
    /// next step, however few.
    pub(super) fn archive_now(&self, group: u64) {
        let long_ago = tokio::time::Instant::now()
            .checked_sub(self.config.archive_interval)
            .unwrap_or_else(tokio::time::Instant::now);
        self.archive_waiting.0.lock().insert(group, long_ago);
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
    /// about `archive_file_bytes` of them; and the offset after the last.
    async fn gather(
        &self,
        p: &Partition,
        from: i64,
        end: i64,
    ) -> Result<(Vec<Bytes>, i64), String> {
        let mut out = Vec::new();
        let (mut at, mut bytes) = (from, 0usize);
        while at < end && bytes < self.config.archive_file_bytes {
            let mut data = p.read_at(at, READ_BYTES, true).await?;
            if data.is_empty() {
                break;
            }
            let before = at;
            while data.len() >= crate::partition::batch::LOG_OVERHEAD
                && bytes < self.config.archive_file_bytes
            {
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
        Ok((out, at))
    }
}

/// Decodes the batches and writes the rows at or after `from` as one file; None when
/// there are none (only control records). Returns the file and its row count.
fn encode_file(
    topic: &str,
    topic_id: uuid::Uuid,
    partition: i32,
    batches: Vec<Bytes>,
    from: i64,
    up_to: i64,
) -> Result<Option<(Bytes, u64)>, String> {
    let mut writer = ArchiveWriter::new(topic, topic_id, partition)?;
    for mut batch in batches {
        let set = RecordBatchDecoder::decode(&mut batch)
            .map_err(|e| format!("decode a batch for the archive: {e}"))?;
        for r in set
            .records
            .iter()
            .filter(|r| !r.control && r.offset >= from && r.offset < up_to)
        {
            writer.push(&ArchiveRecord {
                offset: r.offset,
                timestamp: r.timestamp,
                log_append_time: r.timestamp_type == TimestampType::LogAppend,
                key: r.key.as_deref(),
                value: r.value.as_deref(),
                headers: r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_deref()))
                    .collect(),
                producer_id: r.producer_id,
                producer_epoch: r.producer_epoch,
                sequence: r.sequence,
                leader_epoch: r.partition_leader_epoch,
            })?;
        }
    }
    if writer.rows() == 0 {
        return Ok(None);
    }
    let rows = writer.rows() as u64;
    Ok(Some((writer.finish(from, up_to - 1)?, rows)))
}
