//! ListOffsets (earliest, latest, max timestamp, by timestamp) and OffsetForLeaderEpoch.

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    ListOffsetsRequest, ListOffsetsResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse, ResponseKind,
};
use kafka_protocol::records::RecordBatchDecoder;

use super::repeated;
use crate::broker::Broker;
use crate::errors::code;
use crate::partition::Partition;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

impl Broker {
    pub(crate) async fn list_offsets(&self, req: ListOffsetsRequest, version: i16) -> ResponseKind {
        let mut resp = ListOffsetsResponse::default();
        // As Kafka, every entry of a partition asked for twice is answered INVALID_REQUEST.
        let twice = repeated(req.topics.iter().flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.name.clone(), p.partition_index))
        }));
        for topic in req.topics {
            let mut t = ListOffsetsTopicResponse::default();
            t.name = topic.name.clone();
            for lp in topic.partitions {
                let mut r = ListOffsetsPartitionResponse::default();
                r.partition_index = lp.partition_index;
                r.timestamp = -1;
                r.offset = -1;
                r.leader_epoch = -1;
                if twice.contains(&(topic.name.clone(), lp.partition_index)) {
                    r.error_code = code::INVALID_REQUEST;
                    t.partitions.push(r);
                    continue;
                }
                match self
                    .partitions
                    .get(topic.name.0.as_str(), lp.partition_index)
                {
                    None => r.error_code = code::UNKNOWN_TOPIC_OR_PARTITION,
                    Some(p) if !p.is_leader(self.node.node_id) => {
                        r.error_code = code::NOT_LEADER_OR_FOLLOWER
                    }
                    Some(p) => match epoch_error(lp.current_leader_epoch, p.leader_epoch()) {
                        Some(e) => r.error_code = e,
                        None => match self.lookup_offset(&p, lp.timestamp).await {
                            Ok((offset, timestamp, epoch)) => {
                                r.offset = offset;
                                r.timestamp = timestamp;
                                // leader_epoch exists from v4 on.
                                if version >= 4 {
                                    r.leader_epoch = epoch;
                                }
                            }
                            Err(e) => r.error_code = e,
                        },
                    },
                }
                t.partitions.push(r);
            }
            resp.topics.push(t);
        }
        ResponseKind::ListOffsets(resp)
    }

    /// (offset, timestamp, leader epoch) for a ListOffsets query.
    async fn lookup_offset(&self, p: &Partition, query: i64) -> Result<(i64, i64, i32), i16> {
        let (start, hwm, epoch, start_epoch) = {
            let log = p.log.read();
            (
                log.log_start_offset(),
                log.high_watermark(),
                log.current_epoch(),
                log.epoch_at(log.log_start_offset()),
            )
        };
        let found = match query {
            LATEST | EARLIEST => Ok(None),
            MAX_TIMESTAMP => p.max_timestamp().await,
            ts if ts >= 0 => p
                .find_timestamp(ts)
                .await
                .map(|plan| plan.map(|plan| (plan, ts))),
            _ => return Err(code::INVALID_REQUEST),
        }
        .map_err(|e| {
            tracing::error!(topic = %p.topic, partition = p.index, err = %e, "timestamp lookup");
            code::KAFKA_STORAGE_ERROR
        })?;
        match query {
            LATEST => return Ok((hwm, -1, epoch)),
            EARLIEST => return Ok((start, -1, start_epoch)),
            _ => {}
        }
        // No batch at or after the timestamp: Kafka answers offset -1.
        let Some((plan, target)) = found else {
            return Ok((-1, -1, -1));
        };
        let mut bytes = p.read_plan(plan).await.map_err(|e| {
            tracing::error!(topic = %p.topic, partition = p.index, err = %e, "read batches for timestamp lookup");
            code::KAFKA_STORAGE_ERROR
        })?;
        let sets = RecordBatchDecoder::decode_all(&mut bytes).map_err(|e| {
            tracing::error!(topic = %p.topic, partition = p.index, err = %e, "decode stored batch");
            code::CORRUPT_MESSAGE
        })?;
        // The log start as of now: retention may have moved it during the lookup.
        let start = p.log.read().log_start_offset();
        let record = sets
            .iter()
            .flat_map(|s| s.records.iter())
            .find(|r| r.offset >= start && r.timestamp >= target);
        Ok(match record {
            Some(r) => (r.offset, r.timestamp, p.log.read().epoch_at(r.offset)),
            None => (-1, -1, -1),
        })
    }

    pub(crate) fn offset_for_leader_epoch(&self, req: OffsetForLeaderEpochRequest) -> ResponseKind {
        let mut resp = OffsetForLeaderEpochResponse::default();
        for topic in req.topics {
            let mut t = OffsetForLeaderTopicResult::default();
            t.topic = topic.topic.clone();
            for op in topic.partitions {
                let mut r = EpochEndOffset::default();
                r.partition = op.partition;
                r.leader_epoch = -1;
                r.end_offset = -1;
                match self.partitions.get(topic.topic.0.as_str(), op.partition) {
                    None => r.error_code = code::UNKNOWN_TOPIC_OR_PARTITION,
                    Some(p) if !p.is_leader(self.node.node_id) => {
                        r.error_code = code::NOT_LEADER_OR_FOLLOWER
                    }
                    Some(p) => {
                        if let Some(e) = epoch_error(op.current_leader_epoch, p.leader_epoch()) {
                            r.error_code = e;
                        } else {
                            let (epoch, end) = p.log.read().end_offset_for_epoch(op.leader_epoch);
                            r.leader_epoch = epoch;
                            r.end_offset = end;
                        }
                    }
                }
                t.partitions.push(r);
            }
            resp.topics.push(t);
        }
        ResponseKind::OffsetForLeaderEpoch(resp)
    }
}

/// The error for a request that names the leader epoch it believes current (-1: none).
pub(crate) fn epoch_error(requested: i32, current: i32) -> Option<i16> {
    if requested < 0 || requested == current {
        None
    } else if requested < current {
        Some(code::FENCED_LEADER_EPOCH)
    } else {
        Some(code::UNKNOWN_LEADER_EPOCH)
    }
}
