//! Kafka wire framing on top of the `kafka-protocol` codecs: request header and body
//! decoding with the version checks a broker must make, response encoding, and the
//! ApiVersions fallback answer that clients rely on when they ask for a version we lack.

mod versions;

pub use versions::{api_version_list as versions_list, supported, SUPPORTED_APIS};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::errors::code;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("request frame of {0} bytes is shorter than a request header")]
    Short(usize),
    #[error("unknown api key {0}")]
    UnknownApi(i16),
    #[error("api {api:?} version {version} is not supported")]
    UnsupportedVersion { api: ApiKey, version: i16 },
    #[error("malformed {api:?} v{version} request: {message}")]
    Malformed {
        api: ApiKey,
        version: i16,
        message: String,
    },
}

/// A decoded request.
#[derive(Debug)]
pub struct Request {
    pub api_key: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: RequestKind,
}

/// What the start of a frame says before the body is decoded; enough to answer an
/// unsupported ApiVersions request.
#[derive(Debug, Clone, Copy)]
pub struct Preamble {
    pub api_key: i16,
    pub version: i16,
    pub correlation_id: i32,
}

pub fn preamble(frame: &[u8]) -> Result<Preamble, DecodeError> {
    if frame.len() < 8 {
        return Err(DecodeError::Short(frame.len()));
    }
    let mut b = &frame[..8];
    Ok(Preamble {
        api_key: b.get_i16(),
        version: b.get_i16(),
        correlation_id: b.get_i32(),
    })
}

/// Decodes a whole request frame (without its length prefix).
pub fn decode_request(mut frame: Bytes) -> Result<Request, DecodeError> {
    let pre = preamble(&frame)?;
    let api_key =
        ApiKey::try_from(pre.api_key).map_err(|_| DecodeError::UnknownApi(pre.api_key))?;
    if supported(api_key).is_none_or(|r| pre.version < r.min || pre.version > r.max) {
        return Err(DecodeError::UnsupportedVersion {
            api: api_key,
            version: pre.version,
        });
    }
    let malformed = |e: anyhow::Error| DecodeError::Malformed {
        api: api_key,
        version: pre.version,
        message: e.to_string(),
    };
    let header_version = api_key.request_header_version(pre.version);
    let header = RequestHeader::decode(&mut frame, header_version).map_err(malformed)?;
    let body = RequestKind::decode(api_key, &mut frame, pre.version).map_err(malformed)?;
    Ok(Request {
        api_key,
        version: pre.version,
        header,
        body,
    })
}

/// Encodes a response frame, length prefix included.
pub fn encode_response(
    correlation_id: i32,
    version: i16,
    body: &ResponseKind,
) -> anyhow::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    header.encode(&mut buf, body.header_version(version))?;
    body.encode(&mut buf, version)?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// The answer to an ApiVersions request whose version we do not support: error 35 with our
/// ranges, encoded as v0 so that any client can read it (KIP-511).
pub fn api_versions_fallback(correlation_id: i32) -> anyhow::Result<Bytes> {
    let mut resp = ApiVersionsResponse::default();
    resp.error_code = code::UNSUPPORTED_VERSION;
    resp.api_keys = versions::api_version_list();
    encode_response(correlation_id, 0, &ResponseKind::ApiVersions(resp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use kafka_protocol::protocol::StrBytes;

    fn frame<T: Encodable>(key: ApiKey, version: i16, body: &T) -> Bytes {
        let mut header = RequestHeader::default();
        header.request_api_key = key as i16;
        header.request_api_version = version;
        header.correlation_id = 7;
        header.client_id = Some(StrBytes::from_static_str("t"));
        let mut buf = BytesMut::new();
        header
            .encode(&mut buf, key.request_header_version(version))
            .expect("header");
        body.encode(&mut buf, version).expect("body");
        buf.freeze()
    }

    #[test]
    fn decodes_a_flexible_request() {
        let req = decode_request(frame(ApiKey::Metadata, 12, &MetadataRequest::default()))
            .expect("decode");
        assert_eq!(req.api_key, ApiKey::Metadata);
        assert_eq!(req.header.correlation_id, 7);
        assert!(matches!(req.body, RequestKind::Metadata(_)));
    }

    #[test]
    fn rejects_unknown_keys_versions_and_garbage() {
        let mut f = frame(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()).to_vec();
        f[2..4].copy_from_slice(&99i16.to_be_bytes());
        assert!(matches!(
            decode_request(Bytes::from(f.clone())),
            Err(DecodeError::UnsupportedVersion { .. })
        ));
        f[0..2].copy_from_slice(&9999i16.to_be_bytes());
        assert!(matches!(
            decode_request(Bytes::from(f)),
            Err(DecodeError::UnknownApi(9999))
        ));
        assert!(matches!(
            decode_request(Bytes::from_static(b"abc")),
            Err(DecodeError::Short(3))
        ));
        let truncated = frame(ApiKey::Metadata, 12, &MetadataRequest::default());
        assert!(decode_request(truncated.slice(..9)).is_err());
    }

    #[test]
    fn decoding_random_bytes_never_panics() {
        // A cheap deterministic fuzz of the decode path (the cargo-fuzz target goes further).
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize + 8;
            let mut f: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Aim at real API keys and versions so bodies get decoded too.
            let (key, range) = SUPPORTED_APIS[(next() as usize) % SUPPORTED_APIS.len()];
            f[0..2].copy_from_slice(&(key as i16).to_be_bytes());
            let v = range.0 + (next() as i16).rem_euclid(range.1 - range.0 + 1);
            f[2..4].copy_from_slice(&v.to_be_bytes());
            let _ = decode_request(Bytes::from(f));
        }
    }

    #[test]
    fn a_lying_array_length_is_an_error_not_an_abort() {
        // Metadata v1 whose topics array claims 2^31-1 elements: the codec used to
        // pre-allocate that many and abort the process.
        let mut f = frame(ApiKey::Metadata, 1, &MetadataRequest::default()).to_vec();
        let body_at = f.len() - 4;
        f[body_at..].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(
            decode_request(Bytes::from(f)),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn fallback_is_v0_with_error_35() {
        let b = api_versions_fallback(5).expect("encode");
        let mut r = b.clone();
        let len = r.get_i32();
        assert_eq!(len as usize, b.len() - 4);
        assert_eq!(r.get_i32(), 5);
        assert_eq!(r.get_i16(), 35);
        let n = r.get_i32();
        assert_eq!(n as usize, SUPPORTED_APIS.len());
    }
}
