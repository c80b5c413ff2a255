//! The Kafka v2 record batch header: parsing and validation of batches as sent by clients.
//!
//! Batches are stored exactly as sent. Only `baseOffset` and `partitionLeaderEpoch` are
//! rewritten, on the way out, and both sit outside the CRC-32C (which covers `attributes`
//! to the end), so a stored batch's checksum stays valid forever.

use bytes::{BufMut, Bytes, BytesMut};

pub const HEADER_LEN: usize = 61;
/// Bytes of the header that precede `batchLength`'s coverage (baseOffset + batchLength).
pub const LOG_OVERHEAD: usize = 12;
const CRC_START: usize = 21;

const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub batch_len: usize,
    pub magic: i8,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("record batch is truncated ({0} bytes)")]
    Truncated(usize),
    #[error("record batch magic {0} is not supported (only v2)")]
    UnsupportedMagic(i8),
    #[error("record batch checksum mismatch")]
    Crc,
    #[error("record batch of {size} bytes exceeds max.message.bytes {max}")]
    TooLarge { size: usize, max: usize },
    #[error("record batch header is invalid: {0}")]
    Invalid(&'static str),
    #[error("produce requests must carry exactly one record batch per partition")]
    NotOneBatch,
    #[error("transactional and control batches are not supported")]
    Transactional,
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

impl BatchHeader {
    /// Parses the fixed header of the batch at the start of `b`, checking only that the
    /// bytes are there and the declared length fits.
    pub fn parse(b: &[u8]) -> Result<BatchHeader, BatchError> {
        if b.len() < HEADER_LEN {
            return Err(BatchError::Truncated(b.len()));
        }
        let batch_len = i32_at(b, 8);
        if batch_len < (HEADER_LEN - LOG_OVERHEAD) as i32 {
            return Err(BatchError::Invalid("batchLength too small"));
        }
        let total = batch_len as usize + LOG_OVERHEAD;
        if total > b.len() {
            return Err(BatchError::Truncated(b.len()));
        }
        Ok(BatchHeader {
            batch_len: total,
            magic: b[16] as i8,
            attributes: i16_at(b, 21),
            last_offset_delta: i32_at(b, 23),
            base_timestamp: i64_at(b, 27),
            max_timestamp: i64_at(b, 35),
            producer_id: i64_at(b, 43),
            producer_epoch: i16_at(b, 51),
            base_sequence: i32_at(b, 53),
            record_count: i32_at(b, 57),
        })
    }

    pub fn compression(&self) -> i16 {
        self.attributes & ATTR_COMPRESSION_MASK
    }

    pub fn is_idempotent(&self) -> bool {
        self.producer_id >= 0
    }

    /// The sequence number of the last record, with Kafka's wrap-around at i32::MAX.
    pub fn last_sequence(&self) -> i32 {
        let last = self.base_sequence as i64 + self.last_offset_delta as i64;
        if last > i32::MAX as i64 {
            (last - i32::MAX as i64 - 1) as i32
        } else {
            last as i32
        }
    }
}

/// Validates a produce request's records for one partition: exactly one v2 batch, intact,
/// within `max_message_bytes`. Returns its header.
pub fn validate_produce(
    records: &[u8],
    max_message_bytes: usize,
) -> Result<BatchHeader, BatchError> {
    // The magic byte sits at the same place in every message format, so an old-format
    // message set is named as such even when it is shorter than a v2 header.
    if records.len() > 16 && records[16] as i8 != 2 {
        return Err(BatchError::UnsupportedMagic(records[16] as i8));
    }
    let header = BatchHeader::parse(records)?;
    if header.magic != 2 {
        return Err(BatchError::UnsupportedMagic(header.magic));
    }
    if header.batch_len != records.len() {
        return Err(BatchError::NotOneBatch);
    }
    if header.batch_len > max_message_bytes {
        return Err(BatchError::TooLarge {
            size: header.batch_len,
            max: max_message_bytes,
        });
    }
    if header.attributes & (ATTR_TRANSACTIONAL | ATTR_CONTROL) != 0 {
        return Err(BatchError::Transactional);
    }
    if header.compression() > 4 {
        return Err(BatchError::Invalid("unknown compression codec"));
    }
    if header.record_count < 0 || header.last_offset_delta < 0 {
        return Err(BatchError::Invalid("negative record count or offset delta"));
    }
    if header.record_count == 0 {
        return Err(BatchError::Invalid("empty batch"));
    }
    // Offsets are assigned from lastOffsetDelta, so it must agree with the record count.
    if header.last_offset_delta as i64 + 1 != header.record_count as i64 {
        return Err(BatchError::Invalid(
            "record count does not match lastOffsetDelta",
        ));
    }
    if header.is_idempotent() && header.base_sequence < 0 {
        return Err(BatchError::Invalid(
            "idempotent batch without a base sequence",
        ));
    }
    let stored_crc = u32::from_be_bytes([records[17], records[18], records[19], records[20]]);
    if crc32c::crc32c(&records[CRC_START..]) != stored_crc {
        return Err(BatchError::Crc);
    }
    Ok(header)
}

/// Appends `batch` to `out` with its baseOffset and partitionLeaderEpoch rewritten.
pub fn write_with_offset(out: &mut BytesMut, batch: &Bytes, base_offset: i64, leader_epoch: i32) {
    out.reserve(batch.len());
    out.put_i64(base_offset);
    out.put_slice(&batch[8..12]);
    out.put_i32(leader_epoch);
    out.put_slice(&batch[16..]);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a minimal valid v2 batch with `count` empty records' worth of header fields.
    pub fn batch(pid: i64, epoch: i16, base_seq: i32, count: i32, max_ts: i64) -> Vec<u8> {
        let mut records = Vec::new();
        for i in 0..count {
            // length varint, attributes, tsDelta varint, offsetDelta varint, key -1, value -1, headers 0
            let body = [0u8, 0, (i as u8) << 1, 1, 1, 0];
            records.push(body.len() as u8 * 2);
            records.extend_from_slice(&body);
        }
        let mut b = Vec::new();
        b.extend_from_slice(&0i64.to_be_bytes());
        let batch_len = (HEADER_LEN - LOG_OVERHEAD + records.len()) as i32;
        b.extend_from_slice(&batch_len.to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.push(2);
        b.extend_from_slice(&[0, 0, 0, 0]);
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(count - 1).to_be_bytes());
        b.extend_from_slice(&max_ts.to_be_bytes());
        b.extend_from_slice(&max_ts.to_be_bytes());
        b.extend_from_slice(&pid.to_be_bytes());
        b.extend_from_slice(&epoch.to_be_bytes());
        b.extend_from_slice(&base_seq.to_be_bytes());
        b.extend_from_slice(&count.to_be_bytes());
        b.extend_from_slice(&records);
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    #[test]
    fn a_valid_batch_passes_and_its_header_is_read() {
        let b = batch(7, 1, 10, 3, 1234);
        let h = validate_produce(&b, 1 << 20).expect("valid");
        assert_eq!(h.producer_id, 7);
        assert_eq!(h.base_sequence, 10);
        assert_eq!(h.last_sequence(), 12);
        assert_eq!(h.record_count, 3);
        assert_eq!(h.max_timestamp, 1234);
    }

    #[test]
    fn corruption_and_limits_are_caught() {
        let mut b = batch(-1, -1, -1, 2, 0);
        assert_eq!(
            validate_produce(&b, 10),
            Err(BatchError::TooLarge {
                size: b.len(),
                max: 10
            })
        );
        let last = b.len() - 1;
        b[last] ^= 0xff;
        assert_eq!(validate_produce(&b, 1 << 20), Err(BatchError::Crc));
        assert!(matches!(
            validate_produce(&b[..30], 1 << 20),
            Err(BatchError::Truncated(_))
        ));
        let mut two = batch(-1, -1, -1, 1, 0);
        two.extend(batch(-1, -1, -1, 1, 0));
        assert_eq!(
            validate_produce(&two, 1 << 20),
            Err(BatchError::NotOneBatch)
        );
        let mut magic = batch(-1, -1, -1, 1, 0);
        magic[16] = 1;
        assert_eq!(
            validate_produce(&magic, 1 << 20),
            Err(BatchError::UnsupportedMagic(1))
        );
        // A short magic v1 message set is still named by its magic, not as truncated.
        assert_eq!(
            validate_produce(&magic[..40], 1 << 20),
            Err(BatchError::UnsupportedMagic(1))
        );
        let mut count = batch(-1, -1, -1, 2, 0);
        count[57..61].copy_from_slice(&3i32.to_be_bytes());
        let crc = crc32c::crc32c(&count[CRC_START..]);
        count[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            validate_produce(&count, 1 << 20),
            Err(BatchError::Invalid(_))
        ));
        assert!(matches!(
            validate_produce(&batch(5, 0, -1, 1, 0), 1 << 20),
            Err(BatchError::Invalid(_))
        ));
    }

    #[test]
    fn rewriting_offset_and_epoch_keeps_the_crc_valid() {
        let b = Bytes::from(batch(-1, -1, -1, 2, 0));
        let mut out = BytesMut::new();
        write_with_offset(&mut out, &b, 42, 7);
        assert_eq!(i64_at(&out, 0), 42);
        assert_eq!(i32_at(&out, 12), 7);
        assert!(validate_produce(&out, 1 << 20).is_ok());
    }

    #[test]
    fn sequence_wraps_at_i32_max() {
        let mut h = BatchHeader::parse(&batch(1, 0, i32::MAX, 2, 0)).expect("parse");
        assert_eq!(h.last_sequence(), 0);
        h.base_sequence = 5;
        assert_eq!(h.last_sequence(), 6);
    }
}
