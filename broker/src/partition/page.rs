//! Sealed manifest pages: the older part of a partition's manifest, kept in the bucket.
//!
//! A snapshot carries the partition's manifest, and a busy partition's manifest grows by
//! one entry per chunk (8 MiB by default) for as long as its data is kept. Carried whole,
//! every snapshot (one a second while the partition is busy) and every bootstrap would
//! grow with the partition's history. So once the open manifest holds twice
//! `manifest_page_entries` entries, the leader writes its oldest `manifest_page_entries`
//! as one immutable page object and commits a `PageSealed` command that swaps them for a
//! [`PageRef`]. A snapshot then carries the open entries and one small reference per page;
//! a read of data named by a page loads that page on demand (see `Tier::page`).
//!
//! Object format, version 1 (docs/BUCKET_LAYOUT.md):
//!
//! ```text
//! "CKMP" | u8 version = 1 | u32 BE CRC-32C of the body | body: JSON array of ChunkRef
//! ```

use serde::{Deserialize, Serialize};

use super::log::ChunkRef;

const MAGIC: &[u8; 4] = b"CKMP";
pub const PAGE_FORMAT_VERSION: u8 = 1;
const HEADER_LEN: usize = 9;

/// A sealed page of the manifest, as the open manifest names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRef {
    pub key: String,
    /// First offset of the first entry, last offset of the last one.
    pub base_offset: i64,
    pub last_offset: i64,
    /// The largest timestamp of any entry.
    pub max_timestamp: i64,
    /// The smallest of the entries' largest timestamps: retention by time expires none of
    /// the page while this is recent enough.
    pub min_timestamp: i64,
    pub entries: u32,
    /// Total size of the objects its entries name (retention.bytes counts them).
    pub bytes: u64,
    /// Size of the page object itself.
    pub size: u64,
}

impl PageRef {
    /// The reference to a page holding `entries` (non-empty, in offset order).
    pub fn new(key: String, entries: &[ChunkRef], size: u64) -> Option<PageRef> {
        let (first, last) = (entries.first()?, entries.last()?);
        Some(PageRef {
            key,
            base_offset: first.base_offset,
            last_offset: last.last_offset,
            max_timestamp: entries.iter().map(|c| c.max_timestamp).max().unwrap_or(-1),
            min_timestamp: entries.iter().map(|c| c.max_timestamp).min().unwrap_or(-1),
            entries: entries.len() as u32,
            bytes: entries.iter().map(|c| c.size).sum(),
            size,
        })
    }
}

/// The page object for `entries`.
pub fn encode(entries: &[ChunkRef]) -> Vec<u8> {
    let body = serde_json::to_vec(entries).unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.push(PAGE_FORMAT_VERSION);
    out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The entries of a page object, checked against the reference that names it.
pub fn decode(page: &PageRef, bytes: &[u8]) -> Result<Vec<ChunkRef>, String> {
    let key = &page.key;
    let entries = decode_entries(key, bytes)?;
    let matches = entries.len() == page.entries as usize
        && entries.first().map(|c| c.base_offset) == Some(page.base_offset)
        && entries.last().map(|c| c.last_offset) == Some(page.last_offset);
    if !matches {
        return Err(format!(
            "manifest page {key}: its entries do not match the manifest's reference"
        ));
    }
    Ok(entries)
}

/// The entries of the page object stored under `key`, checked only by its checksum.
pub fn decode_entries(key: &str, bytes: &[u8]) -> Result<Vec<ChunkRef>, String> {
    if bytes.len() < HEADER_LEN || &bytes[..4] != MAGIC {
        return Err(format!("manifest page {key}: not a manifest page"));
    }
    if bytes[4] != PAGE_FORMAT_VERSION {
        return Err(format!(
            "manifest page {key}: format version {} is not supported (this build reads {PAGE_FORMAT_VERSION})",
            bytes[4]
        ));
    }
    let crc = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
    let body = &bytes[HEADER_LEN..];
    if crc32c::crc32c(body) != crc {
        return Err(format!("manifest page {key}: checksum mismatch"));
    }
    serde_json::from_slice(body).map_err(|e| format!("manifest page {key}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<ChunkRef> {
        (0..3)
            .map(|i| ChunkRef {
                key: format!("k{i}"),
                base_offset: i * 10,
                last_offset: i * 10 + 9,
                max_timestamp: 100 - i,
                size: 1000 + i as u64,
            })
            .collect()
    }

    #[test]
    fn a_page_round_trips_and_its_reference_summarises_it() {
        let e = entries();
        let bytes = encode(&e);
        let page = PageRef::new("p".into(), &e, bytes.len() as u64).expect("non-empty");
        assert_eq!(
            (
                page.base_offset,
                page.last_offset,
                page.max_timestamp,
                page.min_timestamp
            ),
            (0, 29, 100, 98)
        );
        assert_eq!((page.entries, page.bytes), (3, 3003));
        assert_eq!(decode(&page, &bytes).expect("decode"), e);
        assert_eq!(&bytes[..5], b"CKMP\x01");
    }

    #[test]
    fn damaged_or_mismatched_pages_are_refused() {
        let e = entries();
        let bytes = encode(&e);
        let page = PageRef::new("p".into(), &e, bytes.len() as u64).expect("non-empty");
        let mut flipped = bytes.clone();
        *flipped.last_mut().expect("body") ^= 1;
        assert!(decode(&page, &flipped)
            .expect_err("refused")
            .contains("checksum"));
        let mut newer = bytes.clone();
        newer[4] = 2;
        assert!(decode(&page, &newer)
            .expect_err("refused")
            .contains("version 2"));
        assert!(decode(&page, b"nope").is_err());
        let other = PageRef::new("p".into(), &e[..2], 0).expect("non-empty");
        assert!(decode(&other, &bytes)
            .expect_err("refused")
            .contains("do not match"));
        assert!(PageRef::new("p".into(), &[], 0).is_none());
    }
}
