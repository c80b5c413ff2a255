//! Reading chunks from the bucket by range: the header and index first (two range GETs),
//! then only the frames a fetch needs, through the [`ReadCache`] when one is given.

use bytes::Bytes;

use crate::chunk::{split_batches, ChunkIndex, HEADER_LEN};
use crate::{Bucket, ChunkHeader, ReadCache, TieringError};

/// Fetches and verifies a chunk's header and index.
pub async fn fetch_index(bucket: &Bucket, key: &str) -> Result<ChunkIndex, TieringError> {
    let head = bucket.get_range(key, 0..HEADER_LEN as u64).await?;
    let header = ChunkHeader::parse(&head).map_err(|e| match e {
        TieringError::Corrupt { reason, .. } => TieringError::Corrupt {
            key: key.to_string(),
            reason,
        },
        other => other,
    })?;
    let tail = bucket.get_range(key, header.tail_range()).await?;
    let mut both = Vec::with_capacity(head.len() + tail.len());
    both.extend_from_slice(&head);
    both.extend_from_slice(&tail);
    ChunkIndex::parse_named(key, &both)
}

/// Frame `i` of the chunk at `key`, decompressed (raw batches back to back).
pub async fn fetch_frame(
    bucket: &Bucket,
    cache: Option<&ReadCache>,
    key: &str,
    index: &ChunkIndex,
    i: usize,
) -> Result<Bytes, TieringError> {
    let entry = *index.frames().get(i).ok_or_else(|| TieringError::Invalid {
        what: format!("frame of {key}"),
        reason: format!("frame {i} of {}", index.frames().len()),
    })?;
    let load = || async move {
        let compressed = bucket.get_range(key, entry.range()).await?;
        index.decompress_frame(key, i, &compressed)
    };
    match cache {
        Some(cache) => cache.get_or_load(key, i as u32, load).await,
        None => load().await,
    }
}

/// The batches from the one holding `offset` on, frame by frame, until at least
/// `max_bytes` are collected (always at least one batch if any is at or after `offset`).
pub async fn read_batches(
    bucket: &Bucket,
    cache: Option<&ReadCache>,
    key: &str,
    index: &ChunkIndex,
    offset: i64,
    max_bytes: usize,
) -> Result<Vec<Bytes>, TieringError> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let Some(first) = index.frame_for(offset) else {
        return Ok(out);
    };
    for i in first..index.frames().len() {
        let raw = fetch_frame(bucket, cache, key, index, i).await?;
        let batches = split_batches(&raw)
            .map_err(|r| TieringError::corrupt(key, format!("frame {i}: {r}")))?;
        for batch in batches {
            let base = i64::from_be_bytes(batch[..8].try_into().unwrap_or([0; 8]));
            let delta = i32::from_be_bytes(batch[23..27].try_into().unwrap_or([0; 4]));
            if base + i64::from(delta) < offset {
                continue;
            }
            if !out.is_empty() && bytes + batch.len() > max_bytes {
                return Ok(out);
            }
            bytes += batch.len();
            out.push(batch);
        }
        if bytes >= max_bytes {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::test_batch;
    use crate::{ChunkWriter, FailingStore};
    use std::sync::Arc;

    #[tokio::test]
    async fn reads_frames_by_range_through_the_cache() {
        let store = FailingStore::new(Arc::new(object_store::memory::InMemory::new()));
        let bucket = Bucket::from_store("mem://", store.as_store());
        let mut w = ChunkWriter::new().with_frame_bytes(5000);
        for i in 0..40i64 {
            w.push_batch(i * 2, i * 2 + 1, i, &test_batch(i * 2, 2, 1000, i as u8))
                .expect("push");
        }
        bucket.put("c.chunk", w.finish()).await.expect("put");
        let index = fetch_index(&bucket, "c.chunk").await.expect("index");
        assert!(index.frames().len() >= 8);
        let cache = ReadCache::new(1 << 20);
        let got = read_batches(&bucket, Some(&cache), "c.chunk", &index, 31, 3000)
            .await
            .expect("read");
        assert_eq!(
            got.len(),
            2,
            "stops before exceeding max_bytes (batches are 1061 bytes)"
        );
        assert_eq!(i64::from_be_bytes(got[0][..8].try_into().expect("8")), 30);
        let calls = store.calls();
        let again = read_batches(&bucket, Some(&cache), "c.chunk", &index, 31, 3000)
            .await
            .expect("read");
        assert_eq!(again, got);
        assert_eq!(store.calls(), calls, "served from the cache");
        assert!(cache.stats().hits >= 1);
        let all = read_batches(&bucket, None, "c.chunk", &index, 0, usize::MAX)
            .await
            .expect("all");
        assert_eq!(all.len(), 40);
        assert!(read_batches(&bucket, None, "c.chunk", &index, 80, 1)
            .await
            .expect("past")
            .is_empty());
        bucket
            .put(
                "junk.chunk",
                Bytes::from_static(b"not a chunk at all, but long enough to have a header.."),
            )
            .await
            .expect("put");
        let err = fetch_index(&bucket, "junk.chunk").await.expect_err("junk");
        assert!(err.to_string().contains("junk.chunk"), "{err}");
    }
}
