//! InitProducerId for idempotent producers. Producer ids are allocated through the metadata
//! group, so they are unique across the cluster and across restarts.

use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProducerId, ResponseKind,
};

use chronik_metastore::metadata::{MetadataCommand, MetadataResponse};

use crate::broker::Broker;
use crate::errors::{bootstrap_error_code, code, metadata_error_code};

impl Broker {
    pub(crate) async fn init_producer_id(&self, req: InitProducerIdRequest) -> ResponseKind {
        let mut resp = InitProducerIdResponse::default();
        resp.producer_id = ProducerId(-1);
        resp.producer_epoch = -1;
        if req.transactional_id.is_some() {
            // Transactions are not implemented; say so rather than hand out a fake id.
            resp.error_code = code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
            return ResponseKind::InitProducerId(resp);
        }
        // An idempotent producer that asks to bump its epoch (KIP-360) gets a fresh id,
        // which is always safe: sequences restart at 0 for a new id.
        match self
            .node
            .propose_metadata(&MetadataCommand::AllocateProducerIds { count: 1 })
            .await
        {
            Ok(MetadataResponse::ProducerIds { first }) => {
                resp.producer_id = ProducerId(first);
                resp.producer_epoch = 0;
            }
            Ok(MetadataResponse::Error(e)) => resp.error_code = metadata_error_code(&e),
            Ok(MetadataResponse::Ok) => resp.error_code = code::UNKNOWN_SERVER_ERROR,
            Err(e) => resp.error_code = bootstrap_error_code(&e),
        }
        ResponseKind::InitProducerId(resp)
    }
}
