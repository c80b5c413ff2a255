//! A minimal blocking Kafka client for the admin commands: one connection, one request at
//! a time, encoded and decoded with the same kafka-protocol codecs the broker uses.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

pub struct AdminClient {
    stream: TcpStream,
    correlation_id: i32,
    /// The address given, for messages.
    bootstrap: String,
}

/// How long an answer may take. Every admin request the broker serves finishes well
/// within this (topic creation waits at most 30 s).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(40);

/// Responses larger than this are refused (admin answers are small).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

impl AdminClient {
    pub fn connect(bootstrap: &str) -> anyhow::Result<AdminClient> {
        let addr = crate::config::parse_addr("bootstrap", bootstrap)?;
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .with_context(|| format!("connect to {bootstrap} (is the broker running?)"))?;
        stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
        Ok(AdminClient {
            stream,
            correlation_id: 0,
            bootstrap: bootstrap.to_string(),
        })
    }

    /// Sends one request at `version` and waits for its response.
    pub fn call<R: Request>(&mut self, request: &R, version: i16) -> anyhow::Result<R::Response> {
        let api =
            ApiKey::try_from(R::KEY).map_err(|_| anyhow::anyhow!("unknown api key {}", R::KEY))?;
        self.correlation_id += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = self.correlation_id;
        header.client_id = Some(StrBytes::from_static_str("chronik-admin"));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header.encode(&mut buf, api.request_header_version(version))?;
        request.encode(&mut buf, version)?;
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&buf).context("send request")?;

        let mut size = [0u8; 4];
        self.stream
            .read_exact(&mut size)
            .map_err(|e| self.no_answer(e))?;
        if &size == b"HTTP" {
            bail!(
                "{} answered in HTTP: that is a broker's --http-addr; give its Kafka \
                 address (--kafka-addr, 9092 by default)",
                self.bootstrap
            );
        }
        let size = i32::from_be_bytes(size);
        if size < 0 || size as usize > MAX_RESPONSE_BYTES {
            bail!(
                "{} sent a response of {size} bytes: is it a Kafka broker's address?",
                self.bootstrap
            );
        }
        let mut body = vec![0u8; size as usize];
        self.stream.read_exact(&mut body).context("read response")?;
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, api.response_header_version(version))?;
        if header.correlation_id != self.correlation_id {
            bail!(
                "response correlation id {} does not match {}",
                header.correlation_id,
                self.correlation_id
            );
        }
        let response = R::Response::decode(&mut body, version).context("decode response")?;
        if body.has_remaining() {
            bail!(
                "{} trailing bytes after the {api:?} response",
                body.remaining()
            );
        }
        Ok(response)
    }

    /// The error for a response that never came.
    fn no_answer(&self, e: std::io::Error) -> anyhow::Error {
        use std::io::ErrorKind;
        let at = &self.bootstrap;
        match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => anyhow::anyhow!(
                "{at} did not answer within {} s: is it a Chronik broker's Kafka address, \
                 and is the broker healthy?",
                ANSWER_TIMEOUT.as_secs()
            ),
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset => anyhow::anyhow!(
                "{at} closed the connection without answering: is it a Kafka broker's \
                 address (not its HTTP address)?"
            ),
            _ => anyhow::Error::new(e).context(format!("read the answer from {at}")),
        }
    }
}
