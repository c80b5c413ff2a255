//! Helpers shared by the integration tests that drive handlers through the real dispatch.

use std::path::Path;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use chronik_broker::broker::{Answer, Broker};
use chronik_broker::config::Config;
use chronik_broker::protocol::decode_request;

pub const CORRELATION_ID: i32 = 42;

pub fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// A broker configuration for tests: data and a file:// bucket under `dir`, no fsync,
/// no topic auto-creation.
pub fn test_config(dir: &Path) -> Config {
    Config {
        data_dir: dir.join("data"),
        bucket: Some(format!("file://{}", dir.join("bucket").display())),
        auto_create_topics: false,
        wal_fsync: "never".into(),
        ..Config::default()
    }
}

/// A request frame (without the length prefix), as a client sends it.
pub fn frame(key: ApiKey, version: i16, body: &RequestKind) -> Bytes {
    let mut header = RequestHeader::default();
    header.request_api_key = key as i16;
    header.request_api_version = version;
    header.correlation_id = CORRELATION_ID;
    header.client_id = Some(s("chronik-test"));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, key.request_header_version(version))
        .expect("header");
    body.encode(&mut buf, version)
        .unwrap_or_else(|e| panic!("encode {key:?} v{version} request: {e}"));
    buf.freeze()
}

/// Sends one request through dispatch and decodes the response at the same version,
/// checking that it encoded, echoes the correlation id and has no trailing bytes.
pub async fn round_trip(
    broker: &Arc<Broker>,
    key: ApiKey,
    version: i16,
    body: &RequestKind,
) -> ResponseKind {
    let req = decode_request(frame(key, version, body))
        .unwrap_or_else(|e| panic!("decode {key:?} v{version}: {e}"));
    let bytes = match broker
        .handle(req, std::net::Ipv4Addr::LOCALHOST.into())
        .await
        .await
    {
        Answer::Send(b) => b,
        Answer::Nothing => panic!("{key:?} v{version}: no response"),
        Answer::Close => panic!("{key:?} v{version}: the response could not be encoded"),
    };
    let mut payload = bytes.slice(4..);
    let header = ResponseHeader::decode(&mut payload, key.response_header_version(version))
        .expect("response header");
    assert_eq!(header.correlation_id, CORRELATION_ID);
    let resp = ResponseKind::decode(key, &mut payload, version)
        .unwrap_or_else(|e| panic!("{key:?} v{version}: response does not decode: {e}"));
    assert!(
        !payload.has_remaining(),
        "{key:?} v{version}: {} trailing bytes",
        payload.remaining()
    );
    resp
}
