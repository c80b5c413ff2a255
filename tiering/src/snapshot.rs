//! The snapshot envelope, version 2: how a Raft group's snapshot is wrapped before it goes
//! to `snapshots/group-{group:020}/{seq:020}.snap`. The payload is opaque here (the state
//! machine owns it); the envelope adds the group, the sequence number and the cluster
//! incarnation (fencing: a restore can refuse another cluster's snapshot), compresses the
//! payload when that pays, and checksums everything.
//!
//! Big-endian layout:
//!
//! ```text
//! magic            8   b"CHRNKSNP"
//! version          u8  2
//! group            u64
//! seq              u64
//! incarnation_len  u16, then that many bytes of UTF-8
//! raw_len          u64 payload bytes before compression
//! codec            u8  0: stored as is, 1: one zstd frame
//! stored_len       u64, then that many bytes: the payload as `codec` says
//! crc              u32 crc32 (crc32fast) of every byte before it
//! ```
//!
//! Version 1 had no codec byte and always one zstd frame; it is still read. A partition's
//! snapshot is mostly its untiered tail, the producers' batches, which are often
//! compressed already or random: zstd then costs about a second of CPU per few hundred MB
//! and saves nothing, so it is used only when a sample shrinks by a tenth or more, and a
//! payload stored as is is written from the snapshot's own buffer, not copied.

use bytes::{BufMut, Bytes, BytesMut};
use object_store::PutPayload;

use crate::layout;
use crate::{Bucket, TieringError};

pub const SNAPSHOT_MAGIC: &[u8; 8] = b"CHRNKSNP";
pub const SNAPSHOT_VERSION: u8 = 2;
/// Level 1: snapshots are written every second per active group; CPU matters more.
const ZSTD_LEVEL: i32 = 1;
/// Bytes of the envelope around the payload, without the incarnation (version 2).
const FIXED_LEN: usize = 8 + 1 + 8 + 8 + 2 + 8 + 1 + 8 + 4;
/// Version 1 had no codec byte.
const FIXED_LEN_V1: usize = FIXED_LEN - 1;
const CODEC_NONE: u8 = 0;
const CODEC_ZSTD: u8 = 1;
/// A payload up to this size is compressed whole and kept so if that pays; a larger one
/// only if this many bytes of its end (a partition's tail data) shrink by a tenth.
const SAMPLE_BYTES: usize = 256 * 1024;

/// A wrapped snapshot as the parts it is written from: the envelope's head, the payload
/// as stored, and the checksum.
#[derive(Debug, Clone, Default)]
pub struct WrappedSnapshot {
    parts: Vec<Bytes>,
}

impl WrappedSnapshot {
    /// The parts, to be written one after the other.
    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The parts as one object body (not copied).
    pub fn payload(&self) -> PutPayload {
        self.parts.iter().cloned().collect()
    }

    /// The parts joined (a copy).
    pub fn to_bytes(&self) -> Bytes {
        match self.parts.as_slice() {
            [one] => one.clone(),
            parts => Bytes::from(parts.concat()),
        }
    }
}

impl From<Bytes> for WrappedSnapshot {
    /// Bytes that are a wrapped snapshot already (read back from a file).
    fn from(bytes: Bytes) -> Self {
        WrappedSnapshot { parts: vec![bytes] }
    }
}

/// Wraps a snapshot payload into one buffer. See [`wrap_snapshot`].
pub fn encode_snapshot(group: u64, seq: u64, incarnation: &str, payload: &[u8]) -> Bytes {
    wrap_snapshot(
        group,
        seq,
        incarnation,
        vec![Bytes::copy_from_slice(payload)],
    )
    .to_bytes()
}

/// Wraps a snapshot payload, given as parts to be joined; a payload that does not
/// compress is stored as those parts, not copied. Pure CPU work (zstd, crc): use
/// `spawn_blocking` for big payloads.
pub fn wrap_snapshot(
    group: u64,
    seq: u64,
    incarnation: &str,
    payload: Vec<Bytes>,
) -> WrappedSnapshot {
    let raw_len: usize = payload.iter().map(Bytes::len).sum();
    let (codec, stored) = match compressed(&payload, raw_len) {
        Some(c) => (CODEC_ZSTD, vec![Bytes::from(c)]),
        None => (CODEC_NONE, payload),
    };
    let stored_len: usize = stored.iter().map(Bytes::len).sum();
    // An incarnation id is a UUID; a longer one is cut at a char boundary to fit a u16.
    let mut inc = incarnation;
    while inc.len() > usize::from(u16::MAX) {
        let mut end = usize::from(u16::MAX);
        while !inc.is_char_boundary(end) {
            end -= 1;
        }
        inc = &inc[..end];
    }
    let mut head = BytesMut::with_capacity(FIXED_LEN - 4 + inc.len());
    head.put_slice(SNAPSHOT_MAGIC);
    head.put_u8(SNAPSHOT_VERSION);
    head.put_u64(group);
    head.put_u64(seq);
    head.put_u16(inc.len() as u16);
    head.put_slice(inc.as_bytes());
    head.put_u64(raw_len as u64);
    head.put_u8(codec);
    head.put_u64(stored_len as u64);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head);
    for part in &stored {
        crc.update(part);
    }
    let crc = Bytes::copy_from_slice(&crc.finalize().to_be_bytes());
    let mut parts = Vec::with_capacity(stored.len() + 2);
    parts.push(head.freeze());
    parts.extend(stored);
    parts.push(crc);
    WrappedSnapshot { parts }
}

/// The payload (`parts` joined, `len` bytes) as one zstd frame, if zstd saves a tenth of
/// it (judged on a sample of its end when it is big).
fn compressed(parts: &[Bytes], len: usize) -> Option<Vec<u8>> {
    use std::io::Write;
    let pays = |raw: usize, packed: usize| packed * 10 <= raw * 9;
    // The last SAMPLE_BYTES of the payload, gathered from the end of its parts.
    let mut tail: Vec<&[u8]> = Vec::new();
    let mut have = 0;
    for part in parts.iter().rev() {
        if have == SAMPLE_BYTES {
            break;
        }
        let take = &part[part.len().saturating_sub(SAMPLE_BYTES - have)..];
        have += take.len();
        tail.push(take);
    }
    tail.reverse();
    let sample = tail.concat();
    // zstd compresses into memory unless its parameters are invalid; if it ever fails,
    // the payload is stored as is.
    let packed = zstd::bulk::compress(&sample, ZSTD_LEVEL).ok()?;
    if !pays(sample.len(), packed.len()) {
        return None;
    }
    if sample.len() == len {
        return Some(packed);
    }
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), ZSTD_LEVEL).ok()?;
    encoder.include_contentsize(true).ok()?;
    encoder.set_pledged_src_size(Some(len as u64)).ok()?;
    for part in parts {
        encoder.write_all(part).ok()?;
    }
    let packed = encoder.finish().ok()?;
    pays(len, packed.len()).then_some(packed)
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
    if bytes.len() < FIXED_LEN_V1 {
        return Err(format!("{} bytes is too short for a snapshot", bytes.len()));
    }
    if &bytes[..8] != SNAPSHOT_MAGIC {
        return Err("bad magic (not a snapshot)".into());
    }
    let version = bytes[8];
    if !(1..=SNAPSHOT_VERSION).contains(&version) {
        return Err(format!(
            "snapshot format version {version} is not supported (this build reads 1 to {SNAPSHOT_VERSION})"
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
    let codec = if version == 1 {
        CODEC_ZSTD
    } else {
        c.take(1)?[0]
    };
    let stored_len = usize::try_from(c.u64()?).map_err(|_| "payload too large".to_string())?;
    let stored = c.take(stored_len)?;
    if c.pos != crc_at {
        return Err(format!(
            "{} stray bytes before the checksum",
            crc_at - c.pos
        ));
    }
    let payload = match codec {
        CODEC_NONE => stored.to_vec(),
        CODEC_ZSTD => zstd::bulk::decompress(stored, raw_len).map_err(|e| format!("zstd: {e}"))?,
        other => return Err(format!("unknown payload codec {other}")),
    };
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
    fn pins_the_v2_envelope() {
        let enc = encode_snapshot(1, 2, "ab", b"");
        let mut fixed = Vec::new();
        fixed.extend_from_slice(b"CHRNKSNP\x02");
        fixed.extend_from_slice(&1u64.to_be_bytes());
        fixed.extend_from_slice(&2u64.to_be_bytes());
        fixed.extend_from_slice(&2u16.to_be_bytes());
        fixed.extend_from_slice(b"ab");
        fixed.extend_from_slice(&0u64.to_be_bytes()); // raw_len
        fixed.push(0); // codec: an empty payload does not compress
        fixed.extend_from_slice(&0u64.to_be_bytes()); // stored_len
        assert_eq!(&enc[..fixed.len()], fixed.as_slice());
        assert_eq!(enc.len(), fixed.len() + 4);
        let crc_at = enc.len() - 4;
        assert_eq!(enc[crc_at..], crc32fast::hash(&enc[..crc_at]).to_be_bytes());
    }

    /// Version 1 (no codec byte, always zstd) is still read.
    #[test]
    fn reads_the_v1_envelope() {
        let payload = b"state ".repeat(50);
        let zstd = zstd::bulk::compress(&payload, 1).expect("zstd");
        let mut v1 = Vec::new();
        v1.extend_from_slice(b"CHRNKSNP\x01");
        v1.extend_from_slice(&5u64.to_be_bytes());
        v1.extend_from_slice(&6u64.to_be_bytes());
        v1.extend_from_slice(&3u16.to_be_bytes());
        v1.extend_from_slice(b"inc");
        v1.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        v1.extend_from_slice(&(zstd.len() as u64).to_be_bytes());
        v1.extend_from_slice(&zstd);
        let crc = crc32fast::hash(&v1);
        v1.extend_from_slice(&crc.to_be_bytes());
        let (g, s, inc, p) = decode_snapshot(&v1).expect("decode v1");
        assert_eq!(
            (g, s, inc.as_str(), p.as_ref()),
            (5, 6, "inc", &payload[..])
        );
    }

    /// A payload that zstd cannot shrink is stored as its parts, shared with the caller;
    /// one that compresses is compressed, also when only its end does.
    #[test]
    fn compresses_only_when_it_pays() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut random = || -> Bytes { (0..(300 << 10)).map(|_| rng.gen::<u8>()).collect() };
        let parts = vec![Bytes::from_static(b"{\"json\": 1}"), random(), random()];
        let joined: Vec<u8> = parts.concat();
        let wrapped = wrap_snapshot(1, 1, "inc", parts.clone());
        for part in &parts {
            assert!(
                wrapped.parts().iter().any(|p| p.as_ptr() == part.as_ptr()),
                "shared"
            );
        }
        assert_eq!(wrapped.len(), joined.len() + FIXED_LEN + 3);
        let (_, _, _, back) = decode_snapshot(&wrapped.to_bytes()).expect("decode");
        assert_eq!(back.as_ref(), joined.as_slice());

        let text = |n| Bytes::from(b"tail data tail data ".repeat(n));
        let parts = vec![random(), text(10_000), text(20_000)];
        let joined: Vec<u8> = parts.concat();
        let wrapped = wrap_snapshot(1, 1, "inc", parts);
        assert!(wrapped.len() < joined.len() / 2, "compressed");
        let (_, _, _, back) = decode_snapshot(&wrapped.to_bytes()).expect("decode");
        assert_eq!(back.as_ref(), joined.as_slice());

        let small = vec![
            Bytes::from_static(b"ab"),
            Bytes::from_static(b"abababababababab"),
        ];
        let (_, _, _, back) =
            decode_snapshot(&wrap_snapshot(1, 1, "", small).to_bytes()).expect("decode");
        assert_eq!(back.as_ref(), b"ababababababababab");
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
        let mut v3 = enc.to_vec();
        v3[8] = 3;
        let err = decode_snapshot_named("snapshots/x", &v3).expect_err("version");
        assert!(err.to_string().contains("snapshots/x") && err.to_string().contains("version 3"));
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
