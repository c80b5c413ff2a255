//! DeleteRecords: move partitions' log start offsets forward. The move is a Raft command
//! (see `partition::log`), so every replica agrees; chunks wholly below the new start go
//! to the GC list and leave the bucket after the grace period.

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse, ResponseKind};
use openraft::error::{ClientWriteError, RaftError};

use crate::broker::Broker;
use crate::errors::code;
use crate::partition::log::{delete_records_command, AppendResult};
use crate::tiering::now_ms;

impl Broker {
    pub(crate) async fn delete_records(&self, req: DeleteRecordsRequest) -> ResponseKind {
        let mut resp = DeleteRecordsResponse::default();
        for topic in req.topics {
            let mut t = DeleteRecordsTopicResult::default();
            t.name = topic.name.clone();
            let name = topic.name.0.as_str();
            let answers = topic.partitions.iter().map(|dp| async move {
                let mut r = DeleteRecordsPartitionResult::default();
                r.partition_index = dp.partition_index;
                r.low_watermark = -1;
                match self
                    .delete_partition_records(name, dp.partition_index, dp.offset)
                    .await
                {
                    Ok(low) => r.low_watermark = low,
                    Err(e) => r.error_code = e,
                }
                r
            });
            t.partitions = futures::future::join_all(answers).await;
            resp.topics.push(t);
        }
        ResponseKind::DeleteRecords(resp)
    }

    /// The new low watermark of one partition, or the Kafka error.
    async fn delete_partition_records(
        &self,
        topic: &str,
        index: i32,
        offset: i64,
    ) -> Result<i64, i16> {
        let Some(p) = self.partitions.get(topic, index) else {
            return Err(code::UNKNOWN_TOPIC_OR_PARTITION);
        };
        if !p.is_leader(self.node.node_id) {
            return Err(code::NOT_LEADER_OR_FOLLOWER);
        }
        match p
            .raft
            .client_write(delete_records_command(offset, now_ms()))
            .await
        {
            Ok(written) => {
                let res = AppendResult::decode(&written.data);
                if res.error == code::NONE {
                    Ok(res.base_offset)
                } else {
                    Err(res.error)
                }
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(code::NOT_LEADER_OR_FOLLOWER)
            }
            Err(err) => {
                tracing::warn!(topic, partition = index, %err, "delete records proposal failed");
                Err(code::UNKNOWN_SERVER_ERROR)
            }
        }
    }
}
