//! The receiving end of the Raft transport: a gRPC service with one unary method whose
//! request and reply are bincode envelopes ([`super::wire`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::transport::server::TcpIncoming;

use super::wire::{self, BytesCodec, Envelope, RpcReply, CALL_PATH};
use super::Transport;

/// Serves the node's Raft RPCs on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, transport: Arc<Transport>) -> Result<(), String> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .serve_with_incoming(RaftService { transport }, incoming)
        .await
        .map_err(|e| e.to_string())
}

#[derive(Clone)]
struct RaftService {
    transport: Arc<Transport>,
}

impl NamedService for RaftService {
    const NAME: &'static str = "chronik.raft.Raft";
}

struct Call(Arc<Transport>);

impl UnaryService<Bytes> for Call {
    type Response = Bytes;
    type Future = BoxFuture<'static, Result<tonic::Response<Bytes>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let transport = self.0.clone();
        Box::pin(async move {
            let reply = match wire::decode::<Envelope>(&request.into_inner()) {
                Ok(envelope) => transport.handle(envelope).await,
                Err(e) => RpcReply::Refused(format!("undecodable raft envelope: {e}")),
            };
            wire::encode(&reply)
                .map(tonic::Response::new)
                .map_err(tonic::Status::internal)
        })
    }
}

impl tower_service::Service<http::Request<Body>> for RaftService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let transport = self.transport.clone();
        Box::pin(async move {
            if req.uri().path() != CALL_PATH {
                return Ok(
                    tonic::Status::unimplemented(format!("no method {}", req.uri().path()))
                        .into_http(),
                );
            }
            let mut grpc = Grpc::new(BytesCodec)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX);
            Ok(grpc.unary(Call(transport), req).await)
        })
    }
}
