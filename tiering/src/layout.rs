//! The bucket layout: every key Chronik writes, built and parsed in one place.
//!
//! This is a public contract (docs/BUCKET_LAYOUT.md): disaster recovery and analytics
//! tools read these keys. [`parse_key`] accepts exactly the keys the builders produce and
//! rejects everything else, so a stray object is never mistaken for Chronik data.
//!
//! ```text
//! cluster/incarnation.json
//! topics/{topic_id}/{partition}/chunks/{base_offset:020}-{last_offset:020}.chunk
//! topics/{topic_id}/{partition}/segments/{base_offset:020}-{last_offset:020}.segment
//! topics/{topic_id}/{partition}/manifest/{base_offset:020}-{last_offset:020}.page
//! snapshots/group-{group_id:020}/{snapshot_seq:020}.snap
//! ```
//!
//! `topic_id` is the Kafka topic id (a UUID, lowercase hyphenated); `partition` is a
//! non-negative decimal without padding; offsets are non-negative, zero-padded to 20 digits
//! so that lexical order is numeric order.

use std::fmt;

use uuid::Uuid;

use crate::TieringError;

/// The key of the create-only cluster incarnation record.
pub const INCARNATION_KEY: &str = "cluster/incarnation.json";

/// One key of the layout, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKey {
    Incarnation,
    Chunk {
        topic_id: Uuid,
        partition: i32,
        base_offset: i64,
        last_offset: i64,
    },
    Segment {
        topic_id: Uuid,
        partition: i32,
        base_offset: i64,
        last_offset: i64,
    },
    /// A sealed page of a partition's manifest: the chunks and segments that hold
    /// `base_offset..=last_offset`.
    ManifestPage {
        topic_id: Uuid,
        partition: i32,
        base_offset: i64,
        last_offset: i64,
    },
    Snapshot {
        group: u64,
        seq: u64,
    },
}

/// `topics/{topic_id}/{partition}/`: everything of one partition.
pub fn partition_prefix(topic_id: Uuid, partition: i32) -> String {
    format!("topics/{}/{partition}/", topic_id.as_hyphenated())
}

/// `topics/{topic_id}/{partition}/chunks/`.
pub fn chunks_prefix(topic_id: Uuid, partition: i32) -> String {
    format!("{}chunks/", partition_prefix(topic_id, partition))
}

/// `topics/{topic_id}/{partition}/segments/`.
pub fn segments_prefix(topic_id: Uuid, partition: i32) -> String {
    format!("{}segments/", partition_prefix(topic_id, partition))
}

pub fn chunk_key(topic_id: Uuid, partition: i32, base_offset: i64, last_offset: i64) -> String {
    format!(
        "{}{base_offset:020}-{last_offset:020}.chunk",
        chunks_prefix(topic_id, partition)
    )
}

pub fn segment_key(topic_id: Uuid, partition: i32, base_offset: i64, last_offset: i64) -> String {
    format!(
        "{}{base_offset:020}-{last_offset:020}.segment",
        segments_prefix(topic_id, partition)
    )
}

/// `topics/{topic_id}/{partition}/manifest/`.
pub fn manifest_prefix(topic_id: Uuid, partition: i32) -> String {
    format!("{}manifest/", partition_prefix(topic_id, partition))
}

pub fn manifest_page_key(
    topic_id: Uuid,
    partition: i32,
    base_offset: i64,
    last_offset: i64,
) -> String {
    format!(
        "{}{base_offset:020}-{last_offset:020}.page",
        manifest_prefix(topic_id, partition)
    )
}

/// `snapshots/group-{group:020}/`: every snapshot of one Raft group (group 0 is metadata).
pub fn snapshot_prefix(group: u64) -> String {
    format!("snapshots/group-{group:020}/")
}

pub fn snapshot_key(group: u64, seq: u64) -> String {
    format!("{}{seq:020}.snap", snapshot_prefix(group))
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = match *self {
            ObjectKey::Incarnation => INCARNATION_KEY.to_string(),
            ObjectKey::Chunk {
                topic_id,
                partition,
                base_offset,
                last_offset,
            } => chunk_key(topic_id, partition, base_offset, last_offset),
            ObjectKey::Segment {
                topic_id,
                partition,
                base_offset,
                last_offset,
            } => segment_key(topic_id, partition, base_offset, last_offset),
            ObjectKey::ManifestPage {
                topic_id,
                partition,
                base_offset,
                last_offset,
            } => manifest_page_key(topic_id, partition, base_offset, last_offset),
            ObjectKey::Snapshot { group, seq } => snapshot_key(group, seq),
        };
        f.write_str(&key)
    }
}

fn bad(key: &str, reason: &str) -> TieringError {
    TieringError::BadKey {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

/// A zero-padded 20-digit number.
fn padded_u64(s: &str) -> Option<u64> {
    if s.len() != 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn padded_offset(s: &str) -> Option<i64> {
    padded_u64(s).and_then(|v| i64::try_from(v).ok())
}

/// A canonical partition number: decimal, no sign, no leading zeros.
fn partition_number(s: &str) -> Option<i32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

fn offset_range(key: &str, file: &str, ext: &str) -> Result<(i64, i64), TieringError> {
    let stem = file
        .strip_suffix(ext)
        .ok_or_else(|| bad(key, &format!("expected a name ending in {ext}")))?;
    let (base, last) = stem
        .split_once('-')
        .ok_or_else(|| bad(key, "expected BASE-LAST offsets"))?;
    let base = padded_offset(base).ok_or_else(|| bad(key, "base offset is not 20 digits"))?;
    let last = padded_offset(last).ok_or_else(|| bad(key, "last offset is not 20 digits"))?;
    if last < base {
        return Err(bad(key, "last offset is below base offset"));
    }
    Ok((base, last))
}

/// Parses a key of the layout; anything else is [`TieringError::BadKey`].
pub fn parse_key(key: &str) -> Result<ObjectKey, TieringError> {
    if key == INCARNATION_KEY {
        return Ok(ObjectKey::Incarnation);
    }
    let parts: Vec<&str> = key.split('/').collect();
    match parts.as_slice() {
        ["topics", topic, partition, kind @ ("chunks" | "segments" | "manifest"), file] => {
            let topic_id = Uuid::try_parse(topic)
                .ok()
                .filter(|u| u.as_hyphenated().to_string() == *topic)
                .ok_or_else(|| bad(key, "topic id is not a lowercase hyphenated UUID"))?;
            let partition =
                partition_number(partition).ok_or_else(|| bad(key, "partition is not a number"))?;
            if *kind == "chunks" {
                let (base_offset, last_offset) = offset_range(key, file, ".chunk")?;
                Ok(ObjectKey::Chunk {
                    topic_id,
                    partition,
                    base_offset,
                    last_offset,
                })
            } else if *kind == "manifest" {
                let (base_offset, last_offset) = offset_range(key, file, ".page")?;
                Ok(ObjectKey::ManifestPage {
                    topic_id,
                    partition,
                    base_offset,
                    last_offset,
                })
            } else {
                let (base_offset, last_offset) = offset_range(key, file, ".segment")?;
                Ok(ObjectKey::Segment {
                    topic_id,
                    partition,
                    base_offset,
                    last_offset,
                })
            }
        }
        ["snapshots", group_dir, file] => {
            let group = group_dir
                .strip_prefix("group-")
                .and_then(padded_u64)
                .ok_or_else(|| bad(key, "expected group-{20 digits}"))?;
            let seq = file
                .strip_suffix(".snap")
                .and_then(padded_u64)
                .ok_or_else(|| bad(key, "expected {20 digits}.snap"))?;
            Ok(ObjectKey::Snapshot { group, seq })
        }
        _ => Err(bad(key, "unknown path")),
    }
}

/// Of a group's snapshot keys, those to delete so that the newest `keep` (at least one)
/// remain. Keys that are not snapshots of `group` are ignored.
pub fn snapshots_to_prune(group: u64, keys: &[String], keep: usize) -> Vec<String> {
    let mut seqs: Vec<(u64, &String)> = keys
        .iter()
        .filter_map(|k| match parse_key(k) {
            Ok(ObjectKey::Snapshot { group: g, seq }) if g == group => Some((seq, k)),
            _ => None,
        })
        .collect();
    seqs.sort();
    let excess = seqs.len().saturating_sub(keep.max(1));
    seqs.into_iter()
        .take(excess)
        .map(|(_, k)| k.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPIC: &str = "6ba7b810-9dad-11d1-80b4-00c04fd430c8";

    fn topic() -> Uuid {
        Uuid::parse_str(TOPIC).expect("uuid")
    }

    #[test]
    fn builds_the_documented_keys() {
        assert_eq!(
            chunk_key(topic(), 3, 0, 41),
            format!("topics/{TOPIC}/3/chunks/00000000000000000000-00000000000000000041.chunk")
        );
        assert_eq!(
            segment_key(topic(), 0, 100, 200),
            format!("topics/{TOPIC}/0/segments/00000000000000000100-00000000000000000200.segment")
        );
        assert_eq!(
            manifest_page_key(topic(), 2, 0, 99),
            format!("topics/{TOPIC}/2/manifest/00000000000000000000-00000000000000000099.page")
        );
        assert_eq!(
            snapshot_key(0, 7),
            "snapshots/group-00000000000000000000/00000000000000000007.snap"
        );
        assert_eq!(INCARNATION_KEY, "cluster/incarnation.json");
    }

    #[test]
    fn parse_round_trips() {
        let keys = [
            ObjectKey::Incarnation,
            ObjectKey::Chunk {
                topic_id: topic(),
                partition: 12,
                base_offset: 5,
                last_offset: i64::MAX,
            },
            ObjectKey::Segment {
                topic_id: topic(),
                partition: 0,
                base_offset: 0,
                last_offset: 0,
            },
            ObjectKey::ManifestPage {
                topic_id: topic(),
                partition: 7,
                base_offset: 10,
                last_offset: 20,
            },
            ObjectKey::Snapshot {
                group: u64::MAX,
                seq: 3,
            },
        ];
        for k in keys {
            assert_eq!(parse_key(&k.to_string()).expect("parse"), k);
        }
    }

    #[test]
    fn parse_rejects_everything_else() {
        let good_chunk = chunk_key(topic(), 1, 0, 9);
        let bad_keys = [
            "".to_string(),
            "cluster/incarnation.json.tmp".into(),
            "cluster/other.json".into(),
            good_chunk.replace(".chunk", ".segment"),
            good_chunk.replace("/chunks/", "/segments/"),
            good_chunk.replace("/1/", "/01/"),
            good_chunk.replace("/1/", "/-1/"),
            good_chunk.replace(TOPIC, &TOPIC.to_uppercase()),
            good_chunk.replace(TOPIC, "orders"),
            format!("topics/{TOPIC}/1/chunks/0-9.chunk"),
            format!("topics/{TOPIC}/1/chunks/00000000000000000009-00000000000000000000.chunk"),
            format!("topics/{TOPIC}/1/chunks/x/00000000000000000000-00000000000000000009.chunk"),
            "snapshots/group-0/00000000000000000001.snap".into(),
            "snapshots/group-00000000000000000000/1.snap".into(),
            "snapshots/group-00000000000000000000/00000000000000000001.snap/x".into(),
            "snapshots/group-99999999999999999999/00000000000000000001.snap".into(),
            format!("/{good_chunk}"),
        ];
        for k in bad_keys {
            assert!(
                matches!(parse_key(&k), Err(TieringError::BadKey { .. })),
                "{k:?} should be rejected"
            );
        }
    }

    #[test]
    fn keys_sort_by_offset_and_seq() {
        let a = chunk_key(topic(), 0, 9, 99);
        let b = chunk_key(topic(), 0, 100, 100);
        assert!(a < b);
        assert!(snapshot_key(1, 9) < snapshot_key(1, 10));
    }

    #[test]
    fn prunes_all_but_the_newest_snapshots() {
        let keys: Vec<String> = [5, 1, 3, 4, 2]
            .iter()
            .map(|s| snapshot_key(2, *s))
            .chain([snapshot_key(3, 0), "junk".to_string()])
            .collect();
        assert_eq!(
            snapshots_to_prune(2, &keys, 2),
            vec![snapshot_key(2, 1), snapshot_key(2, 2), snapshot_key(2, 3)]
        );
        assert_eq!(snapshots_to_prune(2, &keys, 0).len(), 4);
        assert!(snapshots_to_prune(2, &keys, 10).is_empty());
    }
}
