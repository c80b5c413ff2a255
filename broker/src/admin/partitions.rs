//! `chronik partitions …` (reassignment) and the partition table of `chronik cluster
//! status`.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, BrokerId, ListPartitionReassignmentsRequest,
    MetadataResponse,
};
use serde_json::{json, Value};

use super::{error_name, metadata, print, AdminClient, Target};
use crate::handlers::topic_name;

#[derive(clap::Subcommand, Debug)]
pub enum PartitionsCommand {
    /// Move a partition to other brokers: new replicas restore from the bucket and catch
    /// up over Raft, then replace the old ones.
    Reassign {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partition: i32,
        /// The new replica list, broker ids: 2,3,4.
        #[arg(long, value_name = "IDS")]
        replicas: String,
        /// Wait (up to this many seconds) until the move has completed.
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
    },
    /// Reassignments in progress.
    Reassignments,
}

/// One partition's leadership as Metadata tells it.
pub struct PartitionState {
    topic: String,
    partition: i32,
    leader: i32,
    epoch: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
}

impl PartitionState {
    pub fn json(&self) -> Value {
        json!({"topic": self.topic, "partition": self.partition, "leader": self.leader, "leader_epoch": self.epoch, "replicas": self.replicas, "isr": self.isr})
    }
}

fn list(ids: &[i32]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Every partition's state, the number of under-replicated ones, and partitions led per
/// broker.
pub fn leadership(md: &MetadataResponse) -> (Vec<PartitionState>, usize, BTreeMap<i32, usize>) {
    let mut parts = Vec::new();
    let mut lead = BTreeMap::new();
    for t in &md.topics {
        let name = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
        for p in &t.partitions {
            *lead.entry(p.leader_id.0).or_insert(0) += 1;
            parts.push(PartitionState {
                topic: name.clone(),
                partition: p.partition_index,
                leader: p.leader_id.0,
                epoch: p.leader_epoch,
                replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                isr: p.isr_nodes.iter().map(|b| b.0).collect(),
            });
        }
    }
    parts.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    let under = parts
        .iter()
        .filter(|p| p.isr.len() < p.replicas.len())
        .count();
    (parts, under, lead)
}

pub fn table(parts: &[PartitionState]) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "TOPIC".into(),
        "PARTITION".into(),
        "LEADER".into(),
        "EPOCH".into(),
        "REPLICAS".into(),
        "ISR".into(),
    ]];
    for p in parts {
        rows.push(vec![
            p.topic.clone(),
            p.partition.to_string(),
            p.leader.to_string(),
            p.epoch.to_string(),
            list(&p.replicas),
            list(&p.isr),
        ]);
    }
    rows
}

pub fn partitions(target: &Target, command: &PartitionsCommand) -> anyhow::Result<()> {
    let mut client = AdminClient::connect(&target.bootstrap)?;
    match command {
        PartitionsCommand::Reassign {
            topic,
            partition,
            replicas,
            wait,
        } => {
            let ids: Vec<BrokerId> = replicas
                .split(',')
                .map(|s| {
                    s.trim().parse::<i32>().map(BrokerId).with_context(|| {
                        format!("--replicas {replicas:?}: {s:?} is not a broker id")
                    })
                })
                .collect::<anyhow::Result<_>>()?;
            let mut p = ReassignablePartition::default();
            p.partition_index = *partition;
            p.replicas = Some(ids.clone());
            let mut t = ReassignableTopic::default();
            t.name = topic_name(topic);
            t.partitions = vec![p];
            let mut req = AlterPartitionReassignmentsRequest::default();
            req.timeout_ms = 30_000;
            req.topics = vec![t];
            let resp = client.call(&req, 0)?;
            if resp.error_code != 0 {
                bail!(
                    "reassignment refused: {} {}",
                    error_name(resp.error_code),
                    resp.error_message.as_deref().unwrap_or("")
                );
            }
            for r in resp.responses.iter().flat_map(|t| t.partitions.iter()) {
                if r.error_code != 0 {
                    bail!(
                        "reassignment of {topic}-{} refused: {} {}",
                        r.partition_index,
                        error_name(r.error_code),
                        r.error_message.as_deref().unwrap_or("")
                    );
                }
            }
            let wanted: Vec<i32> = ids.iter().map(|b| b.0).collect();
            if let Some(secs) = wait {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(*secs);
                loop {
                    let md = metadata(&mut client, Some(std::slice::from_ref(topic)))?;
                    let done = md
                        .topics
                        .iter()
                        .flat_map(|t| t.partitions.iter())
                        .find(|p| p.partition_index == *partition)
                        .is_some_and(|p| {
                            let mut isr: Vec<i32> = p.isr_nodes.iter().map(|b| b.0).collect();
                            isr.sort_unstable();
                            let mut want = wanted.clone();
                            want.sort_unstable();
                            p.leader_id.0 >= 0
                                && isr == want
                                && in_progress(&mut client, topic, *partition).is_ok_and(|b| !b)
                        });
                    if done {
                        break;
                    }
                    if std::time::Instant::now() >= deadline {
                        bail!("{topic}-{partition} has not moved to {replicas} within {secs}s; `chronik partitions reassignments` shows its progress");
                    }
                    std::thread::sleep(std::time::Duration::from_millis(250));
                }
            }
            print(
                target,
                json!({"topic": topic, "partition": partition, "replicas": wanted, "completed": wait.is_some()}),
                vec![
                    vec![
                        "TOPIC".into(),
                        "PARTITION".into(),
                        "REPLICAS".into(),
                        "STATE".into(),
                    ],
                    vec![
                        topic.clone(),
                        partition.to_string(),
                        list(&wanted),
                        if wait.is_some() { "moved" } else { "moving" }.into(),
                    ],
                ],
            );
        }
        PartitionsCommand::Reassignments => {
            let resp = client.call(&ListPartitionReassignmentsRequest::default(), 0)?;
            let mut rows = vec![vec![
                "TOPIC".into(),
                "PARTITION".into(),
                "REPLICAS".into(),
                "ADDING".into(),
                "REMOVING".into(),
            ]];
            let mut out = Vec::new();
            for t in &resp.topics {
                for p in &t.partitions {
                    let ids = |v: &[BrokerId]| v.iter().map(|b| b.0).collect::<Vec<_>>();
                    rows.push(vec![
                        t.name.0.to_string(),
                        p.partition_index.to_string(),
                        list(&ids(&p.replicas)),
                        list(&ids(&p.adding_replicas)),
                        list(&ids(&p.removing_replicas)),
                    ]);
                    out.push(json!({"topic": t.name.0.to_string(), "partition": p.partition_index, "replicas": ids(&p.replicas), "adding": ids(&p.adding_replicas), "removing": ids(&p.removing_replicas)}));
                }
            }
            print(target, json!({"reassignments": out}), rows);
        }
    }
    Ok(())
}

/// Whether a reassignment of the partition is still listed as in progress.
fn in_progress(client: &mut AdminClient, topic: &str, partition: i32) -> anyhow::Result<bool> {
    let resp = client.call(&ListPartitionReassignmentsRequest::default(), 0)?;
    Ok(resp.topics.iter().any(|t| {
        t.name.0.as_str() == topic && t.partitions.iter().any(|p| p.partition_index == partition)
    }))
}
