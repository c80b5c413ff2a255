//! Fetch: read stored batches from the offset asked for, honouring the response and
//! partition byte limits, and long-poll (wake on a new high watermark) until `min_bytes`
//! is there or `max_wait_ms` has passed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, ResponseKind};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::broker::Broker;
use crate::errors::code;
use crate::partition::Partition;

impl Broker {
    pub(crate) async fn fetch(self: Arc<Self>, req: FetchRequest, version: i16) -> ResponseKind {
        // Fetch sessions (KIP-227): a full fetch that asks for one (epoch 0) gets session id
        // 0, "no session", so clients go on sending full fetches. An incremental fetch
        // (any other epoch but -1) names a session this broker never gave out.
        if version >= 7 && req.session_epoch != 0 && req.session_epoch != -1 {
            let mut resp = FetchResponse::default();
            resp.error_code = code::FETCH_SESSION_ID_NOT_FOUND;
            return ResponseKind::Fetch(resp);
        }
        let wait_ms = (req.max_wait_ms.max(0) as u64).min(self.config.fetch_max_wait_ms_cap);
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        let min_bytes = req.min_bytes.max(0) as usize;
        loop {
            // Each partition's watch is taken with its high watermark, under the same lock,
            // so an append after the read still wakes us.
            let mut watches: Vec<watch::Receiver<i64>> = Vec::new();
            let (resp, bytes, errors) = self.fetch_once(&req, version, &mut watches).await;
            // As Kafka: answer at once when min_bytes is there (min_bytes 0 never waits),
            // on any partition error, or when there is nothing to wait on.
            if bytes >= min_bytes || errors || Instant::now() >= deadline || watches.is_empty() {
                self.metrics.add_bytes_out(bytes as u64);
                return ResponseKind::Fetch(resp);
            }
            let changed =
                futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                // Timed out: answer with what is there now (possibly less than min_bytes).
                let (resp, bytes, _) = self.fetch_once(&req, version, &mut Vec::new()).await;
                self.metrics.add_bytes_out(bytes as u64);
                return ResponseKind::Fetch(resp);
            }
        }
    }

    /// One pass over the requested partitions: (response, record bytes, any partition error).
    async fn fetch_once(
        &self,
        req: &FetchRequest,
        version: i16,
        watches: &mut Vec<watch::Receiver<i64>>,
    ) -> (FetchResponse, usize, bool) {
        let mut resp = FetchResponse::default();
        let mut remaining = if req.max_bytes <= 0 {
            i32::MAX as usize
        } else {
            req.max_bytes as usize
        };
        let mut total = 0usize;
        let mut any_error = false;
        for topic in &req.topics {
            let mut t = FetchableTopicResponse::default();
            t.topic = topic.topic.clone();
            t.topic_id = topic.topic_id;
            for fp in &topic.partitions {
                let mut pd = PartitionData::default();
                pd.partition_index = fp.partition;
                pd.high_watermark = -1;
                pd.last_stable_offset = -1;
                pd.log_start_offset = -1;
                pd.preferred_read_replica = kafka_protocol::messages::BrokerId(-1);
                pd.aborted_transactions = Some(Vec::new());
                match self.partitions.get(topic.topic.0.as_str(), fp.partition) {
                    None => pd.error_code = code::UNKNOWN_TOPIC_OR_PARTITION,
                    Some(p) => {
                        let limit = (fp.partition_max_bytes.max(0) as usize).min(remaining);
                        match self
                            .read_partition(&p, fp, limit, total == 0, &mut pd, watches)
                            .await
                        {
                            Ok(n) => {
                                total += n;
                                remaining = remaining.saturating_sub(n);
                            }
                            Err(e) => pd.error_code = e,
                        }
                    }
                }
                if version < 5 {
                    // log_start_offset exists from v5 on.
                    pd.log_start_offset = -1;
                }
                any_error |= pd.error_code != code::NONE;
                t.partitions.push(pd);
            }
            resp.responses.push(t);
        }
        (resp, total, any_error)
    }

    /// Fills `pd` for one partition and adds its high-watermark watch to `watches`;
    /// returns the record bytes added.
    async fn read_partition(
        &self,
        p: &Partition,
        fp: &kafka_protocol::messages::fetch_request::FetchPartition,
        limit: usize,
        first: bool,
        pd: &mut PartitionData,
        watches: &mut Vec<watch::Receiver<i64>>,
    ) -> Result<usize, i16> {
        if !p.is_leader(self.node.node_id) {
            return Err(code::NOT_LEADER_OR_FOLLOWER);
        }
        if let Some(e) = super::offsets::epoch_error(fp.current_leader_epoch, p.leader_epoch()) {
            return Err(e);
        }
        let (start, hwm) = {
            let log = p.log.read();
            watches.push(log.subscribe());
            (log.log_start_offset(), log.high_watermark())
        };
        pd.high_watermark = hwm;
        pd.last_stable_offset = hwm;
        pd.log_start_offset = start;
        if fp.fetch_offset < start || fp.fetch_offset > hwm {
            return Err(code::OFFSET_OUT_OF_RANGE);
        }
        let records = if fp.fetch_offset < hwm && limit > 0 {
            // KIP-74: the first batch of the response is returned even over the limit.
            p.read_at(fp.fetch_offset, limit, first).await.map_err(|e| {
                tracing::error!(topic = %p.topic, partition = p.index, err = %e, "read stored batches");
                code::KAFKA_STORAGE_ERROR
            })?
        } else {
            Bytes::new()
        };
        let n = records.len();
        pd.records = Some(records);
        Ok(n)
    }
}
