"""Raw Kafka requests the client libraries cannot be made to send: hand-built v2 record
batches (CRC-32C, idempotent producer fields, deliberate corruption), and the Produce v3,
Fetch v4, InitProducerId v0 and OffsetForLeaderEpoch v2 messages that carry them.

Non-flexible versions only, so everything is plain big-endian fields; see kwire.py for
framing and the bounded-read connection.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

import kwire
from kwire import Reader, enc_string, request

API_INIT_PRODUCER_ID = 22
API_OFFSET_FOR_LEADER_EPOCH = 23

ERR_OFFSET_OUT_OF_RANGE = 1
ERR_CORRUPT_MESSAGE = 2
ERR_INVALID_REQUIRED_ACKS = 21
ERR_OUT_OF_ORDER_SEQUENCE = 45
ERR_INVALID_RECORD = 87

# ---- CRC-32C (Castagnoli), table-driven ------------------------------------------------

_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _varint(n: int) -> bytes:
    return kwire.enc_uvarint((n << 1) ^ (n >> 63))


def _bytes_field(b: bytes | None) -> bytes:
    return _varint(-1) if b is None else _varint(len(b)) + b


def record_batch(values: list[bytes], producer_id: int = -1, producer_epoch: int = -1,
                 base_sequence: int = -1, timestamp: int | None = None,
                 magic: int = 2) -> bytes:
    """An uncompressed v2 batch of `values` (no keys, no headers), CRC set. The timestamp
    defaults to now: an old one would be deleted by the topic's retention (7 days)."""
    if timestamp is None:
        timestamp = int(time.time() * 1000)
    records = b""
    for i, v in enumerate(values):
        body = b"\x00" + _varint(0) + _varint(i) + _bytes_field(None) + _bytes_field(v) + _varint(0)
        records += _varint(len(body)) + body
    after_crc = struct.pack(">hiqqqhii", 0, len(values) - 1, timestamp, timestamp,
                            producer_id, producer_epoch, base_sequence, len(values)) + records
    crc = crc32c(after_crc)
    batch_len = 4 + 1 + 4 + len(after_crc)  # partitionLeaderEpoch, magic, crc, rest
    return struct.pack(">qiibI", 0, batch_len, -1, magic, crc) + after_crc


# ---- Produce v3 ----------------------------------------------------------------------------

def produce_request(corr: int, topic: str, parts: list[tuple[int, bytes]], acks: int = -1,
                    timeout_ms: int = 10_000) -> bytes:
    body = enc_string(None) + struct.pack(">hii", acks, timeout_ms, 1) + enc_string(topic)
    body += struct.pack(">i", len(parts))
    for partition, records in parts:
        body += struct.pack(">ii", partition, len(records)) + records
    return request(kwire.API_PRODUCE, 3, corr, body)


@dataclass
class ProducePart:
    partition: int
    error: int
    base_offset: int


def parse_produce(payload: bytes) -> tuple[int, list[ProducePart]]:
    r = Reader(payload)
    corr = r.i32()
    out = []
    for _ in range(r.i32()):
        r.string()
        for _ in range(r.i32()):
            partition, err = r.i32(), r.i16()
            (base,) = struct.unpack(">q", r.take(8))
            r.take(8)  # log_append_time
            out.append(ProducePart(partition, err, base))
    r.i32()  # throttle
    return corr, out


def produce(conn: kwire.Conn, topic: str, parts: list[tuple[int, bytes]], acks: int = -1,
            corr: int = 100) -> list[ProducePart]:
    conn.send(produce_request(corr, topic, parts, acks))
    payload = conn.recv_frame(30)
    assert payload is not None, "broker closed the connection instead of answering Produce"
    got_corr, parts_out = parse_produce(payload)
    assert got_corr == corr
    return parts_out


# ---- Fetch v4 --------------------------------------------------------------------------------

def fetch_request(corr: int, topic: str, parts: list[tuple[int, int, int]], max_wait_ms: int = 0,
                  min_bytes: int = 1, max_bytes: int = 50 << 20) -> bytes:
    """parts: (partition, fetch_offset, partition_max_bytes)."""
    body = struct.pack(">iiiib", -1, max_wait_ms, min_bytes, max_bytes, 0)
    body += struct.pack(">i", 1) + enc_string(topic) + struct.pack(">i", len(parts))
    for partition, offset, pmax in parts:
        body += struct.pack(">iqi", partition, offset, pmax)
    return request(kwire.API_FETCH, 4, corr, body)


@dataclass
class FetchPart:
    partition: int
    error: int
    high_watermark: int
    records: bytes

    def batches(self) -> list[tuple[int, int, int]]:
        """(base offset, record count, partition leader epoch) of each whole batch."""
        out, pos, b = [], 0, self.records
        while pos + 61 <= len(b):
            base, length, epoch = struct.unpack(">qii", b[pos:pos + 16])
            if pos + 12 + length > len(b):
                break
            (count,) = struct.unpack(">i", b[pos + 57:pos + 61])
            out.append((base, count, epoch))
            pos += 12 + length
        return out


def parse_fetch(payload: bytes) -> tuple[int, list[FetchPart]]:
    r = Reader(payload)
    corr = r.i32()
    r.i32()  # throttle
    out = []
    for _ in range(r.i32()):
        r.string()
        for _ in range(r.i32()):
            partition, err = r.i32(), r.i16()
            hwm, _lso = struct.unpack(">qq", r.take(16))
            n = r.i32()
            for _ in range(max(n, 0)):
                r.take(16)
            size = r.i32()
            records = r.take(size) if size > 0 else b""
            out.append(FetchPart(partition, err, hwm, records))
    return corr, out


def fetch(conn: kwire.Conn, topic: str, parts: list[tuple[int, int, int]], corr: int = 200,
          timeout: float = 30, **kw) -> list[FetchPart]:
    conn.send(fetch_request(corr, topic, parts, **kw))
    payload = conn.recv_frame(timeout)
    assert payload is not None, "broker closed the connection instead of answering Fetch"
    got_corr, out = parse_fetch(payload)
    assert got_corr == corr
    return out


# ---- InitProducerId v0, OffsetForLeaderEpoch v2 ---------------------------------------------

def init_producer_id(conn: kwire.Conn, corr: int = 300) -> tuple[int, int]:
    conn.send(request(API_INIT_PRODUCER_ID, 0, corr, enc_string(None) + struct.pack(">i", 60000)))
    payload = conn.recv_frame(30)
    assert payload is not None
    r = Reader(payload)
    assert r.i32() == corr
    r.i32()
    err = r.i16()
    assert err == 0, f"InitProducerId error {err}"
    (pid,) = struct.unpack(">q", r.take(8))
    return pid, r.i16()


def offset_for_leader_epoch(conn: kwire.Conn, topic: str, partition: int, leader_epoch: int,
                            current_leader_epoch: int = -1, corr: int = 400) -> tuple[int, int, int]:
    """(error, leader_epoch, end_offset)."""
    body = struct.pack(">i", 1) + enc_string(topic) + struct.pack(
        ">iiii", 1, partition, current_leader_epoch, leader_epoch)
    conn.send(request(API_OFFSET_FOR_LEADER_EPOCH, 2, corr, body))
    payload = conn.recv_frame(30)
    assert payload is not None
    r = Reader(payload)
    assert r.i32() == corr
    r.i32()
    assert r.i32() == 1
    r.string()
    assert r.i32() == 1
    err, _part, epoch = r.i16(), r.i32(), r.i32()
    (end,) = struct.unpack(">q", r.take(8))
    return err, epoch, end
