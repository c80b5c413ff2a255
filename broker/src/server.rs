//! The Kafka listener: one task per connection reading frames, a bounded pipeline of
//! requests in flight, responses written in request order (as Kafka requires).
//!
//! A reader task owns the socket's read half and hands complete frames over a bounded
//! channel, so a slow or stalled client only ever blocks its own connection. Frames over
//! `socket_request_max_bytes`, unknown APIs and undecodable requests close the connection,
//! as a Kafka broker does; an ApiVersions request for a version we lack gets the v0 error
//! answer so the client can retry with a version we have.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::broker::{Answer, Broker};
use crate::protocol::{self, DecodeError};

/// A connection that sends no complete request for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

pub async fn serve(listener: TcpListener, broker: Arc<Broker>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let broker = broker.clone();
                tokio::spawn(async move {
                    broker.metrics.connection_opened();
                    if let Err(err) = connection(stream, peer.ip(), &broker).await {
                        tracing::debug!(%peer, %err, "connection closed");
                    }
                    broker.metrics.connection_closed();
                });
            }
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("request frame of {0} bytes is over socket.request.max.bytes {1}")]
    TooLarge(i64, u32),
    #[error("idle for {0:?}")]
    Idle(Duration),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("closed by the broker: a response could not be encoded, or an acks=0 produce failed")]
    Closed,
}

async fn read_frames(
    mut rd: OwnedReadHalf,
    max_bytes: u32,
    tx: mpsc::Sender<Result<Bytes, ConnError>>,
) {
    let mut buf = BytesMut::with_capacity(READ_BUFFER_BYTES);
    loop {
        let frame =
            tokio::time::timeout(IDLE_TIMEOUT, read_frame(&mut rd, &mut buf, max_bytes)).await;
        let frame = match frame {
            Err(_) => Err(ConnError::Idle(IDLE_TIMEOUT)),
            Ok(Ok(None)) => return,
            Ok(Ok(Some(f))) => Ok(f),
            Ok(Err(e)) => Err(e),
        };
        if buf.is_empty()
            && frame
                .as_ref()
                .is_ok_and(|f| f.len() > KEEP_READ_BUFFER_BYTES)
        {
            // A big request must not pin its big buffer for the connection's life: once
            // the request is done with it, it is freed, and reading starts small again.
            buf = BytesMut::with_capacity(READ_BUFFER_BYTES);
        }
        let stop = frame.is_err();
        if tx.send(frame).await.is_err() || stop {
            return;
        }
    }
}

/// Bytes a connection's read buffer starts with; it grows to the largest frame seen.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// After a frame bigger than this, an empty read buffer is replaced by a small one.
const KEEP_READ_BUFFER_BYTES: usize = 1024 * 1024;

/// Reads one length-prefixed frame through `buf`; `None` on a clean end of stream.
///
/// Reads go straight into `buf`'s spare capacity (nothing is zeroed first) and may run
/// into the next frame, which stays in `buf`. A frame is split off as a shared slice, so
/// once the request that holds it is done, the next `reserve` reuses the same memory
/// instead of allocating (and page-faulting) a new buffer per request.
async fn read_frame(
    rd: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    max_bytes: u32,
) -> Result<Option<Bytes>, ConnError> {
    if !fill(rd, buf, 4).await? {
        if buf.is_empty() {
            return Ok(None);
        }
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as i64;
    if len < 0 || len > max_bytes as i64 {
        return Err(ConnError::TooLarge(len, max_bytes));
    }
    let total = 4 + len as usize;
    if !fill(rd, buf, total).await? {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len as usize).freeze()))
}

/// Reads until `buf` holds at least `want` bytes; false if the stream ended first.
async fn fill(rd: &mut OwnedReadHalf, buf: &mut BytesMut, want: usize) -> std::io::Result<bool> {
    if buf.len() < want {
        buf.reserve((want - buf.len()).max(READ_BUFFER_BYTES));
    }
    while buf.len() < want {
        if rd.read_buf(buf).await? == 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn connection(
    stream: TcpStream,
    peer: IpAddr,
    broker: &Arc<Broker>,
) -> Result<(), ConnError> {
    stream.set_nodelay(true)?;
    let (rd, mut wr) = stream.into_split();
    let max_inflight = broker.config.max_inflight_requests_per_connection.max(1);
    let (tx, mut rx) = mpsc::channel(max_inflight);
    let reader = tokio::spawn(read_frames(rd, broker.config.socket_request_max_bytes, tx));
    let _abort_reader = AbortOnDrop(reader);
    let mut inflight = FuturesOrdered::new();
    loop {
        tokio::select! {
            Some(answer) = inflight.next(), if !inflight.is_empty() => {
                write_answer(&mut wr, answer).await?;
            }
            frame = rx.recv(), if inflight.len() < max_inflight => {
                let Some(frame) = frame else {
                    // Client closed: finish what it asked for, then stop.
                    while let Some(answer) = inflight.next().await {
                        write_answer(&mut wr, answer).await?;
                    }
                    return Ok(());
                };
                let frame = frame.inspect_err(|_| broker.metrics.bad_request())?;
                match protocol::decode_request(frame.clone()) {
                    Ok(req) => inflight.push_back(broker.handle(req, peer).await),
                    Err(DecodeError::UnsupportedVersion { api: ApiKey::ApiVersions, .. }) => {
                        let pre = protocol::preamble(&frame)?;
                        let answer = protocol::api_versions_fallback(pre.correlation_id)
                            .map_err(|e| std::io::Error::other(e.to_string()))?;
                        inflight.push_back(Box::pin(futures::future::ready(Answer::Send(answer))));
                    }
                    Err(e) => {
                        broker.metrics.bad_request();
                        // Answer what is in flight, then close, as Kafka does.
                        while let Some(answer) = inflight.next().await {
                            write_answer(&mut wr, answer).await?;
                        }
                        return Err(e.into());
                    }
                }
            }
        }
    }
}

async fn write_answer(wr: &mut OwnedWriteHalf, answer: Answer) -> Result<(), ConnError> {
    match answer {
        Answer::Send(bytes) => Ok(wr.write_all(&bytes).await?),
        Answer::Nothing => Ok(()),
        Answer::Close => Err(ConnError::Closed),
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
