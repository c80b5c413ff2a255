"""Minimal raw Kafka wire-protocol helpers for readiness checks and bad-input tests.

Only what the tests need: request framing (header v1 / v2), ApiVersions v0 and
Metadata v1 encoding/decoding, and a socket wrapper with bounded reads.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

API_PRODUCE = 0
API_FETCH = 1
API_METADATA = 3
API_API_VERSIONS = 18

ERR_NONE = 0
ERR_UNKNOWN_TOPIC_OR_PART = 3
ERR_MSG_SIZE_TOO_LARGE = 10
ERR_INVALID_TOPIC = 17
ERR_UNSUPPORTED_VERSION = 35
ERR_TOPIC_ALREADY_EXISTS = 36
ERR_INVALID_PARTITIONS = 37


def enc_string(s: str | None) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def enc_uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def enc_compact_string(s: str | None) -> bytes:
    if s is None:
        return enc_uvarint(0)
    b = s.encode()
    return enc_uvarint(len(b) + 1) + b


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def request(api_key: int, api_version: int, correlation_id: int, body: bytes = b"",
            client_id: str | None = "chronik-e2e", flexible: bool = False) -> bytes:
    """A framed request. flexible=True uses request header v2 (tagged fields)."""
    header = struct.pack(">hhi", api_key, api_version, correlation_id) + enc_string(client_id)
    if flexible:
        header += b"\x00"  # empty tagged fields
    return frame(header + body)


class Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError(f"truncated response: need {n} bytes at {self.pos}, have {len(self.data)}")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def i8(self) -> int:
        return struct.unpack(">b", self.take(1))[0]

    def i16(self) -> int:
        return struct.unpack(">h", self.take(2))[0]

    def i32(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def string(self) -> str | None:
        n = self.i16()
        if n < 0:
            return None
        return self.take(n).decode()

    def remaining(self) -> int:
        return len(self.data) - self.pos


@dataclass
class ApiVersionsV0:
    correlation_id: int
    error_code: int
    ranges: dict  # api_key -> (min, max)


def parse_api_versions_v0(payload: bytes) -> ApiVersionsV0:
    r = Reader(payload)
    corr = r.i32()
    err = r.i16()
    n = r.i32()
    if n < 0 or n > 1000:
        raise ValueError(f"implausible ApiVersions array length {n}")
    ranges = {}
    for _ in range(n):
        key, lo, hi = r.i16(), r.i16(), r.i16()
        ranges[key] = (lo, hi)
    return ApiVersionsV0(corr, err, ranges)


@dataclass
class MetadataV1:
    correlation_id: int
    brokers: list  # (node_id, host, port, rack)
    controller_id: int
    topics: list  # (error_code, name, is_internal, [(err, partition, leader)])


def metadata_v1_request(correlation_id: int, topics: list[str] | None = None) -> bytes:
    if topics is None:
        body = struct.pack(">i", -1)
    else:
        body = struct.pack(">i", len(topics)) + b"".join(enc_string(t) for t in topics)
    return request(API_METADATA, 1, correlation_id, body)


def parse_metadata_v1(payload: bytes) -> MetadataV1:
    r = Reader(payload)
    corr = r.i32()
    brokers = []
    for _ in range(r.i32()):
        node_id = r.i32()
        host = r.string()
        port = r.i32()
        rack = r.string()
        brokers.append((node_id, host, port, rack))
    controller = r.i32()
    topics = []
    for _ in range(r.i32()):
        err = r.i16()
        name = r.string()
        internal = r.i8()
        parts = []
        for _ in range(r.i32()):
            perr, pid, leader = r.i16(), r.i32(), r.i32()
            for _ in range(r.i32()):  # replicas
                r.i32()
            for _ in range(r.i32()):  # isr
                r.i32()
            parts.append((perr, pid, leader))
        topics.append((err, name, bool(internal), parts))
    return MetadataV1(corr, brokers, controller, topics)


class Conn:
    """A blocking TCP connection to the broker with bounded reads."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv_exact(self, n: int, deadline: float) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out reading {n} bytes (got {len(buf)})")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(n - len(buf))
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def recv_frame(self, timeout: float = 10.0, max_size: int = 64 << 20) -> bytes | None:
        """One response payload (without the size prefix), or None if the peer closed."""
        deadline = time.monotonic() + timeout
        head = self._recv_exact(4, deadline)
        if head is None:
            return None
        (size,) = struct.unpack(">i", head)
        if size < 0 or size > max_size:
            raise ValueError(f"implausible response size {size}")
        return self._recv_exact(size, deadline)

    def wait_closed(self, timeout: float = 10.0) -> bool:
        """True if the peer closes (EOF or reset) within timeout; data before that is ignored."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return True
            except (socket.timeout, TimeoutError):
                return False
            if not chunk:
                return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def api_versions_v0(port: int, correlation_id: int = 1, timeout: float = 10.0) -> ApiVersionsV0:
    with Conn(port, timeout=timeout) as c:
        c.send(request(API_API_VERSIONS, 0, correlation_id))
        payload = c.recv_frame(timeout)
        if payload is None:
            raise ConnectionError("broker closed the connection instead of answering ApiVersions v0")
        resp = parse_api_versions_v0(payload)
        if resp.correlation_id != correlation_id:
            raise ValueError(f"correlation id {resp.correlation_id} != {correlation_id}")
        return resp


def metadata_v1(port: int, topics: list[str] | None = None, correlation_id: int = 2,
                timeout: float = 10.0) -> MetadataV1:
    with Conn(port, timeout=timeout) as c:
        c.send(metadata_v1_request(correlation_id, topics))
        payload = c.recv_frame(timeout)
        if payload is None:
            raise ConnectionError("broker closed the connection instead of answering Metadata v1")
        resp = parse_metadata_v1(payload)
        if resp.correlation_id != correlation_id:
            raise ValueError(f"correlation id {resp.correlation_id} != {correlation_id}")
        return resp
