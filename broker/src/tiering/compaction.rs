//! Compaction planning: which run of manifest chunks to merge into one segment object.
//!
//! Chunks are cut every tiering interval, so a quiet partition accumulates many small
//! objects; merging them keeps LIST/GET counts low and cold reads sequential. Only chunk
//! objects are merged (a segment is never rewritten, so every byte is rewritten at most
//! once): the oldest run of at least `min_chunks` adjacent small chunks whose sizes total
//! at most `segment_bytes`, as long as the run can grow within that bound. A chunk of at
//! least `small_chunk_bytes` (one a busy partition cut at full size) is left alone:
//! merging it would rewrite every byte a busy partition ingests for no saving in reads.

use std::ops::Range;

use chronik_tiering::layout::{parse_key, ObjectKey};

use crate::partition::log::ChunkRef;

#[derive(Clone, Copy, Debug)]
pub struct CompactionPolicy {
    /// Fewest chunks worth merging (at least 2).
    pub min_chunks: usize,
    /// Largest merged object, in bytes.
    pub segment_bytes: u64,
    /// Chunks this big or bigger are never merged.
    pub small_chunk_bytes: u64,
}

fn is_chunk(c: &ChunkRef) -> bool {
    matches!(parse_key(&c.key), Ok(ObjectKey::Chunk { .. }))
}

/// The manifest positions of the run to merge, if any.
pub fn plan_compaction(chunks: &[ChunkRef], policy: &CompactionPolicy) -> Option<Range<usize>> {
    let min = policy.min_chunks.max(2);
    let mut i = 0;
    while i < chunks.len() {
        let mut total = 0u64;
        let mut j = i;
        while j < chunks.len()
            && is_chunk(&chunks[j])
            && chunks[j].size < policy.small_chunk_bytes
            && total + chunks[j].size <= policy.segment_bytes
        {
            total += chunks[j].size;
            j += 1;
        }
        if j - i >= min {
            return Some(i..j);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronik_tiering::layout;
    use uuid::Uuid;

    fn entry(segment: bool, base: i64, last: i64, size: u64) -> ChunkRef {
        let key = if segment {
            layout::segment_key(Uuid::nil(), 0, base, last)
        } else {
            layout::chunk_key(Uuid::nil(), 0, base, last)
        };
        ChunkRef {
            key,
            base_offset: base,
            last_offset: last,
            max_timestamp: 0,
            size,
        }
    }

    fn chunks(sizes: &[u64]) -> Vec<ChunkRef> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, s)| entry(false, i as i64 * 10, i as i64 * 10 + 9, *s))
            .collect()
    }

    const POLICY: CompactionPolicy = CompactionPolicy {
        min_chunks: 3,
        segment_bytes: 100,
        small_chunk_bytes: 1000,
    };

    #[test]
    fn full_size_chunks_are_left_alone() {
        let policy = CompactionPolicy {
            small_chunk_bytes: 30,
            ..POLICY
        };
        assert_eq!(plan_compaction(&chunks(&[30, 30, 30]), &policy), None);
        // Small runs between big chunks still merge.
        assert_eq!(
            plan_compaction(&chunks(&[30, 10, 10, 10, 30, 10]), &policy),
            Some(1..4)
        );
    }

    #[test]
    fn merges_the_oldest_long_enough_run_within_the_size_bound() {
        assert_eq!(plan_compaction(&chunks(&[10, 10]), &POLICY), None);
        assert_eq!(plan_compaction(&chunks(&[10, 10, 10]), &POLICY), Some(0..3));
        // Grows up to the bound, not past it.
        assert_eq!(
            plan_compaction(&chunks(&[40, 40, 10, 10, 50]), &POLICY),
            Some(0..4)
        );
        // A big chunk at the front is skipped.
        assert_eq!(
            plan_compaction(&chunks(&[90, 20, 20, 20]), &POLICY),
            Some(1..4)
        );
        assert_eq!(plan_compaction(&chunks(&[60, 60, 60, 60]), &POLICY), None);
        assert_eq!(plan_compaction(&[], &POLICY), None);
    }

    #[test]
    fn segments_are_never_merged_again() {
        let mut m = vec![entry(true, 0, 99, 30)];
        m.extend(chunks(&[5, 5]).into_iter().map(|mut c| {
            c.base_offset += 100;
            c.last_offset += 100;
            c.key = layout::chunk_key(Uuid::nil(), 0, c.base_offset, c.last_offset);
            c
        }));
        assert_eq!(plan_compaction(&m, &POLICY), None);
        m.push(entry(false, 120, 129, 5));
        assert_eq!(plan_compaction(&m, &POLICY), Some(1..4));
        let min_two = CompactionPolicy {
            min_chunks: 0,
            ..POLICY
        };
        assert_eq!(plan_compaction(&m[..2], &min_two), None);
    }
}
