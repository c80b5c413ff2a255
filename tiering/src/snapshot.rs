//! The snapshot envelope, version 1: how a Raft group's snapshot is wrapped before it goes
//! to `snapshots/group-{group:020}/{seq:020}.snap`. The payload is opaque here (the state
//! machine owns it); the envelope adds the group, the sequence number and the cluster
//! incarnation (fencing: a restore can refuse another cluster's snapshot), compresses the
//! payload, and checksums everything.
//!
//! Big-endian layout:
//!
//! ```text
//! magic            8   b"CHRNKSNP"
//! version          u8  1
//! group            u64
//! seq              u64
//! incarnation_len  u16, then that many bytes of UTF-8
//! raw_len          u64 payload bytes before compression
//! compressed_len   u64, then that many bytes: one zstd frame
//! crc              u32 crc32 (crc32fast) of every byte before it
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use crate::layout;
use crate::{Bucket, TieringError};

pub const SNAPSHOT_MAGIC: &[u8; 8] = b"CHRNKSNP";
pub const SNAPSHOT_VERSION: u8 = 1;
/// Level 1: snapshots are written every second per active group; CPU matters more.
const ZSTD_LEVEL: i32 = 1;
const FIXED_LEN: usize = 8 + 1 + 8 + 8 + 2 + 8 + 8 + 4;

/// Wraps a snapshot payload. Pure CPU work (zstd): use `spawn_blocking` for big payloads.
pub fn encode_snapshot(group: u64, seq: u64, incarnation: &str, payload: &[u8]) -> Bytes {
    let compressed = zstd::bulk::compress(payload, ZSTD_LEVEL)
        .expect("zstd compresses into memory unless its parameters are invalid");
    // An incarnation id is a UUID; a longer one is cut at a char boundary to fit a u16.
    let mut inc = incarnation;
    while inc.len() > usize::from(u16::MAX) {
        let mut end = usize::from(u16::MAX);
        while !inc.is_char_boundary(end) {
            end -= 1;
        }
        inc = &inc[..end];
    }
    let mut out = BytesMut::with_capacity(FIXED_LEN + inc.len() + compressed.len());
    out.put_slice(SNAPSHOT_MAGIC);
    out.put_u8(SNAPSHOT_VERSION);
    out.put_u64(group);
    out.put_u64(seq);
    out.put_u16(inc.len() as u16);
    out.put_slice(inc.as_bytes());
    out.put_u64(payload.len() as u64);
    out.put_u64(compressed.len() as u64);
    out.put_slice(&compressed);
    let crc = crc32fast::hash(&out);
    out.put_u32(crc);
    out.freeze()
}

/// Unwraps a snapshot: `(group, seq, incarnation, payload)`.
pub fn decode_snapshot(bytes: &[u8]) -> Result<(u64, u64, String, Bytes), TieringError> {
    decode_snapshot_named("(unnamed snapshot)", bytes)
}

/// [`decode_snapshot`], naming `key` in errors.
pub fn decode_snapshot_named(
    key: &str,
    bytes: &[u8],
) -> Result<(u64, u64, String, Bytes), TieringError> {
    decode(bytes).map_err(|r| TieringError::corrupt(key, r))
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| format!("truncated at byte {}", self.pos))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
}

fn decode(bytes: &[u8]) -> Result<(u64, u64, String, Bytes), String> {
    if bytes.len() < FIXED_LEN {
        return Err(format!("{} bytes is too short for a snapshot", bytes.len()));
    }
    if &bytes[..8] != SNAPSHOT_MAGIC {
        return Err("bad magic (not a snapshot)".into());
    }
    if bytes[8] != SNAPSHOT_VERSION {
        return Err(format!(
            "snapshot format version {} is not supported (this build reads {SNAPSHOT_VERSION})",
            bytes[8]
        ));
    }
    let crc_at = bytes.len() - 4;
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[crc_at..]);
    if crc32fast::hash(&bytes[..crc_at]) != u32::from_be_bytes(crc) {
        return Err("checksum mismatch".into());
    }
    let mut c = Cursor {
        b: &bytes[..crc_at],
        pos: 9,
    };
    let group = c.u64()?;
    let seq = c.u64()?;
    let inc_len = c.take(2)?;
    let inc_len = usize::from(u16::from_be_bytes([inc_len[0], inc_len[1]]));
    let incarnation = std::str::from_utf8(c.take(inc_len)?)
        .map_err(|_| "incarnation is not UTF-8".to_string())?
        .to_string();
    let raw_len = usize::try_from(c.u64()?).map_err(|_| "payload too large".to_string())?;
    let compressed_len = usize::try_from(c.u64()?).map_err(|_| "payload too large".to_string())?;
    let compressed = c.take(compressed_len)?;
    if c.pos != crc_at {
        return Err(format!(
            "{} stray bytes before the checksum",
            crc_at - c.pos
        ));
    }
    let payload = zstd::bulk::decompress(compressed, raw_len).map_err(|e| format!("zstd: {e}"))?;
    if payload.len() != raw_len {
        return Err(format!(
            "payload is {} bytes, header says {raw_len}",
            payload.len()
        ));
    }
    Ok((group, seq, incarnation, Bytes::from(payload)))
}

/// Uploads a snapshot (create-only: a snapshot object is never overwritten) and prunes the
/// group's older ones so that `keep` remain. Returns the key and whether it was created.
pub async fn upload_snapshot(
    bucket: &Bucket,
    group: u64,
    seq: u64,
    incarnation: &str,
    payload: &[u8],
    keep: usize,
) -> Result<(String, bool), TieringError> {
    let key = layout::snapshot_key(group, seq);
    let created = bucket
        .put_if_absent(&key, encode_snapshot(group, seq, incarnation, payload))
        .await?;
    let keys: Vec<String> = bucket
        .list(&layout::snapshot_prefix(group))
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for old in layout::snapshots_to_prune(group, &keys, keep) {
        bucket.delete(&old).await?;
    }
    Ok((key, created))
}

/// The group's snapshot keys in the bucket, newest (highest seq) first. Restore tries them
/// in this order and falls back to older ones when one is corrupt.
pub async fn list_snapshots(
    bucket: &Bucket,
    group: u64,
) -> Result<Vec<(u64, String)>, TieringError> {
    let mut out: Vec<(u64, String)> = bucket
        .list(&layout::snapshot_prefix(group))
        .await?
        .into_iter()
        .filter_map(|(k, _)| match layout::parse_key(&k) {
            Ok(layout::ObjectKey::Snapshot { group: g, seq }) if g == group => Some((seq, k)),
            _ => None,
        })
        .collect();
    out.sort_by(|a, b| b.cmp(a));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::sync::Arc;

    #[test]
    fn round_trips() {
        let payload = b"state machine bytes ".repeat(100);
        let enc = encode_snapshot(3, 99, "inc-1", &payload);
        let (g, s, inc, p) = decode_snapshot(&enc).expect("decode");
        assert_eq!(
            (g, s, inc.as_str(), p.as_ref()),
            (3, 99, "inc-1", payload.as_slice())
        );
        assert!(enc.len() < payload.len());
        let (_, _, _, empty) = decode_snapshot(&encode_snapshot(0, 0, "", b"")).expect("empty");
        assert!(empty.is_empty());
    }

    #[test]
    fn pins_the_v1_envelope() {
        let enc = encode_snapshot(1, 2, "ab", b"");
        let mut fixed = Vec::new();
        fixed.extend_from_slice(b"CHRNKSNP\x01");
        fixed.extend_from_slice(&1u64.to_be_bytes());
        fixed.extend_from_slice(&2u64.to_be_bytes());
        fixed.extend_from_slice(&2u16.to_be_bytes());
        fixed.extend_from_slice(b"ab");
        fixed.extend_from_slice(&0u64.to_be_bytes()); // raw_len
        assert_eq!(&enc[..fixed.len()], fixed.as_slice());
        let clen = u64::from_be_bytes(enc[fixed.len()..fixed.len() + 8].try_into().expect("8"));
        assert_eq!(enc.len(), fixed.len() + 8 + clen as usize + 4);
        let crc_at = enc.len() - 4;
        assert_eq!(enc[crc_at..], crc32fast::hash(&enc[..crc_at]).to_be_bytes());
    }

    #[test]
    fn corrupt_input_is_an_error() {
        let enc = encode_snapshot(7, 8, "incarnation", &b"x".repeat(3000));
        for len in 0..enc.len() {
            assert!(decode_snapshot(&enc[..len]).is_err());
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..1000 {
            let mut bad = enc.to_vec();
            let at = rng.gen_range(0..bad.len());
            bad[at] ^= 1 << rng.gen_range(0..8);
            assert!(decode_snapshot(&bad).is_err());
        }
        let mut v2 = enc.to_vec();
        v2[8] = 2;
        let err = decode_snapshot_named("snapshots/x", &v2).expect_err("version");
        assert!(err.to_string().contains("snapshots/x") && err.to_string().contains("version 2"));
    }

    #[tokio::test]
    async fn uploads_and_prunes() {
        let bucket = Bucket::from_store("mem://", Arc::new(object_store::memory::InMemory::new()));
        for seq in 1..=5 {
            let (key, created) = upload_snapshot(&bucket, 4, seq, "inc", b"p", 2)
                .await
                .expect("upload");
            assert!(created);
            assert_eq!(key, layout::snapshot_key(4, seq));
        }
        let (_, created) = upload_snapshot(&bucket, 4, 5, "inc", b"other", 2)
            .await
            .expect("again");
        assert!(!created, "snapshots are create-only");
        let listed = list_snapshots(&bucket, 4).await.expect("list");
        assert_eq!(
            listed,
            vec![
                (5, layout::snapshot_key(4, 5)),
                (4, layout::snapshot_key(4, 4))
            ]
        );
        let bytes = bucket.get(&listed[0].1).await.expect("get");
        let (g, s, _, p) = decode_snapshot(&bytes).expect("decode");
        assert_eq!((g, s, p.as_ref()), (4, 5, b"p".as_slice()));
    }
}
