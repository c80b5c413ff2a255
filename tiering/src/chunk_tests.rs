//! Tests of the chunk format: pinned bytes, round trips, corrupt input, the writer.

use super::*;
use crate::chunk_write::BATCH_ATTRIBUTES_POS;
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
            0x43, 0x48, 0x52, 0x4e, 0x4b, 0x43, 0x48, 0x4b, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 7, 0,
            0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x04, 0xd2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 64,
            0, 0, 0, 40
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
