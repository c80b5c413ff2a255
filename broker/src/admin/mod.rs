//! `chronik topics|groups|cluster …`: admin commands that talk to a running broker over
//! the Kafka protocol and print a table, or JSON with `--json`.

mod client;
mod partitions;

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, DeleteTopicsRequest, DescribeClusterRequest,
    DescribeGroupsRequest, FindCoordinatorRequest, GroupId, ListGroupsRequest, ListOffsetsRequest,
    MetadataRequest, MetadataResponse, OffsetFetchRequest,
};
use serde_json::{json, Value};

pub use client::AdminClient;
pub use partitions::{partitions, PartitionsCommand};

use crate::handlers::{str_bytes, topic_name};

#[derive(clap::Args, Debug)]
pub struct Target {
    /// A broker to talk to.
    #[arg(
        long,
        default_value = "127.0.0.1:9092",
        env = "CHRONIK_BOOTSTRAP",
        global = true
    )]
    pub bootstrap: String,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum TopicsCommand {
    /// List topics with their partition counts.
    List,
    /// Partitions of a topic: leader, leader epoch, earliest and latest offsets.
    Describe { topic: String },
    /// Create a topic.
    Create {
        topic: String,
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        /// Replicas per partition [default: the broker's default, 1].
        #[arg(long)]
        replication_factor: Option<i16>,
        /// Topic config, KEY=VALUE; repeat for more.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
    },
    /// Delete a topic.
    Delete { topic: String },
}

#[derive(clap::Subcommand, Debug)]
pub enum GroupsCommand {
    /// List consumer groups and their states.
    List,
    /// Members, assignments, committed offsets and lag of a group.
    Describe { group: String },
}

#[derive(clap::Subcommand, Debug)]
pub enum ClusterCommand {
    /// Cluster id, brokers, and partition leadership.
    Status,
}

pub(crate) fn error_name(code: i16) -> String {
    match code {
        0 => "NONE".into(),
        3 => "UNKNOWN_TOPIC_OR_PARTITION".into(),
        5 => "LEADER_NOT_AVAILABLE".into(),
        6 => "NOT_LEADER_OR_FOLLOWER".into(),
        17 => "INVALID_TOPIC_EXCEPTION".into(),
        36 => "TOPIC_ALREADY_EXISTS".into(),
        37 => "INVALID_PARTITIONS".into(),
        38 => "INVALID_REPLICATION_FACTOR".into(),
        39 => "INVALID_REPLICA_ASSIGNMENT".into(),
        41 => "NOT_CONTROLLER".into(),
        85 => "NO_REASSIGNMENT_IN_PROGRESS".into(),
        40 => "INVALID_CONFIG".into(),
        69 => "GROUP_ID_NOT_FOUND".into(),
        other => format!("error {other}"),
    }
}

/// `println!` for command output, except that a reader who stopped reading (`| head`)
/// ends the command quietly instead of with a panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

pub(crate) fn print(target: &Target, value: Value, table: Vec<Vec<String>>) {
    if target.json {
        out!("{value}");
        return;
    }
    let widths: Vec<usize> = (0..table.first().map(|r| r.len()).unwrap_or(0))
        .map(|c| {
            table
                .iter()
                .map(|r| r.get(c).map(|s| s.len()).unwrap_or(0))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in table {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
            .collect();
        out!("{}", line.join("  ").trim_end());
    }
}

pub(crate) fn metadata(
    client: &mut AdminClient,
    topics: Option<&[String]>,
) -> anyhow::Result<MetadataResponse> {
    let mut req = MetadataRequest::default();
    req.topics = topics.map(|names| {
        names
            .iter()
            .map(|n| {
                let mut t = MetadataRequestTopic::default();
                t.name = Some(topic_name(n));
                t
            })
            .collect()
    });
    req.allow_auto_topic_creation = false;
    // v12: topic ids are in the answer.
    client.call(&req, 12)
}

/// Latest (-1) or earliest (-2) offsets of partitions of one topic, each asked of its
/// leader (only a partition's leader answers ListOffsets for it).
fn offsets(
    client: &mut AdminClient,
    topic: &str,
    partitions: &[i32],
    which: i64,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let md = metadata(client, Some(&[topic.to_string()]))?;
    let addresses: BTreeMap<i32, String> = md
        .brokers
        .iter()
        .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
        .collect();
    let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for t in &md.topics {
        for p in t
            .partitions
            .iter()
            .filter(|p| partitions.contains(&p.partition_index))
        {
            by_leader
                .entry(p.leader_id.0)
                .or_default()
                .push(p.partition_index);
        }
    }
    let mut found = BTreeMap::new();
    for (leader, ids) in by_leader {
        // A partition without a reachable leader has no offsets to show (-1).
        let Some(mut leader_client) = addresses
            .get(&leader)
            .and_then(|addr| AdminClient::connect(addr).ok())
        else {
            continue;
        };
        let mut t = ListOffsetsTopic::default();
        t.name = topic_name(topic);
        t.partitions = ids
            .iter()
            .map(|p| {
                let mut lp = ListOffsetsPartition::default();
                lp.partition_index = *p;
                lp.timestamp = which;
                lp
            })
            .collect();
        let mut req = ListOffsetsRequest::default();
        req.replica_id = BrokerId(-1);
        req.topics = vec![t];
        let resp = leader_client.call(&req, 5)?;
        found.extend(
            resp.topics
                .iter()
                .flat_map(|t| t.partitions.iter())
                .filter(|p| p.error_code == 0)
                .map(|p| (p.partition_index, p.offset)),
        );
    }
    Ok(found)
}

/// A connection to the group coordinator (the one node that serves every group's
/// requests), found through the broker `client` talks to. `Err(code)` for a coordinator
/// error from FindCoordinator.
fn coordinator(client: &mut AdminClient, group: &str) -> anyhow::Result<Result<AdminClient, i16>> {
    let mut req = FindCoordinatorRequest::default();
    req.key = str_bytes(group);
    let resp = client.call(&req, 2)?;
    if resp.error_code != 0 {
        return Ok(Err(resp.error_code));
    }
    let c = AdminClient::connect(&format!("{}:{}", resp.host.as_str(), resp.port))
        .context("connect to the group coordinator")?;
    Ok(Ok(c))
}

/// Coordinator errors that pass by themselves: COORDINATOR_LOAD_IN_PROGRESS,
/// COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR (the role is moving or loading its groups).
fn coordinator_moving(code: i16) -> bool {
    matches!(code, 14..=16)
}

/// Runs `request` against the group coordinator, looking it up again while it is moving or
/// loading (as Kafka's admin client retries these errors), for up to 15 s. `request`
/// answers `Err(code)` for a coordinator error in the response.
fn with_coordinator<T>(
    bootstrap: &mut AdminClient,
    group: &str,
    mut request: impl FnMut(&mut AdminClient) -> anyhow::Result<Result<T, i16>>,
) -> anyhow::Result<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let answer = match coordinator(bootstrap, group)? {
            Ok(mut client) => request(&mut client)?,
            Err(code) => Err(code),
        };
        match answer {
            Ok(t) => return Ok(t),
            Err(code) if coordinator_moving(code) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(code) => bail!(
                "group coordinator: {} (is the cluster's offsets group up?)",
                error_name(code)
            ),
        }
    }
}

pub fn topics(target: &Target, command: &TopicsCommand) -> anyhow::Result<()> {
    let mut client = AdminClient::connect(&target.bootstrap)?;
    match command {
        TopicsCommand::List => {
            let md = metadata(&mut client, None)?;
            let mut rows = vec![vec!["TOPIC".into(), "PARTITIONS".into(), "ID".into()]];
            let mut out = Vec::new();
            for t in &md.topics {
                let name = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
                rows.push(vec![
                    name.clone(),
                    t.partitions.len().to_string(),
                    t.topic_id.to_string(),
                ]);
                out.push(json!({"topic": name, "partitions": t.partitions.len(), "id": t.topic_id.to_string()}));
            }
            print(target, json!(out), rows);
        }
        TopicsCommand::Describe { topic } => {
            let md = metadata(&mut client, Some(std::slice::from_ref(topic)))?;
            let Some(t) = md.topics.first() else {
                bail!("no answer for topic {topic}")
            };
            if t.error_code != 0 {
                bail!("topic {topic}: {}", error_name(t.error_code));
            }
            let ids: Vec<i32> = t.partitions.iter().map(|p| p.partition_index).collect();
            let earliest = offsets(&mut client, topic, &ids, -2)?;
            let latest = offsets(&mut client, topic, &ids, -1)?;
            let mut rows = vec![vec![
                "PARTITION".into(),
                "LEADER".into(),
                "EPOCH".into(),
                "EARLIEST".into(),
                "LATEST".into(),
            ]];
            let mut out = Vec::new();
            for p in &t.partitions {
                let i = p.partition_index;
                let (e, l) = (
                    earliest.get(&i).copied().unwrap_or(-1),
                    latest.get(&i).copied().unwrap_or(-1),
                );
                rows.push(vec![
                    i.to_string(),
                    p.leader_id.0.to_string(),
                    p.leader_epoch.to_string(),
                    e.to_string(),
                    l.to_string(),
                ]);
                out.push(json!({"partition": i, "leader": p.leader_id.0, "leader_epoch": p.leader_epoch, "earliest": e, "latest": l}));
            }
            print(target, json!({"topic": topic, "partitions": out}), rows);
        }
        TopicsCommand::Create {
            topic,
            partitions,
            replication_factor,
            configs,
        } => {
            let mut t = CreatableTopic::default();
            t.name = topic_name(topic);
            t.num_partitions = *partitions;
            t.replication_factor = replication_factor.unwrap_or(-1);
            for kv in configs {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("--config {kv:?} must be KEY=VALUE"))?;
                let mut c = CreatableTopicConfig::default();
                c.name = str_bytes(k);
                c.value = Some(str_bytes(v));
                t.configs.push(c);
            }
            let mut req = CreateTopicsRequest::default();
            req.topics = vec![t];
            req.timeout_ms = 30_000;
            let resp = client.call(&req, 5)?;
            for r in &resp.topics {
                if r.error_code != 0 {
                    let msg = r
                        .error_message
                        .as_ref()
                        .map(|m| m.to_string())
                        .unwrap_or_default();
                    bail!("create topic {topic}: {} {msg}", error_name(r.error_code));
                }
            }
            print(
                target,
                json!({"created": topic, "partitions": partitions}),
                vec![vec![format!(
                    "created topic {topic} with {partitions} partition(s)"
                )]],
            );
        }
        TopicsCommand::Delete { topic } => {
            let mut req = DeleteTopicsRequest::default();
            req.topic_names = vec![topic_name(topic)];
            req.timeout_ms = 30_000;
            let resp = client.call(&req, 4)?;
            for r in &resp.responses {
                if r.error_code != 0 {
                    bail!("delete topic {topic}: {}", error_name(r.error_code));
                }
            }
            print(
                target,
                json!({"deleted": topic}),
                vec![vec![format!("deleted topic {topic}")]],
            );
        }
    }
    Ok(())
}

const GROUP_ID_NOT_FOUND: i16 = 69;

pub fn groups(target: &Target, command: &GroupsCommand) -> anyhow::Result<()> {
    let mut bootstrap = AdminClient::connect(&target.bootstrap)?;
    let key = match command {
        GroupsCommand::List => "",
        GroupsCommand::Describe { group } => group.as_str(),
    };
    match command {
        GroupsCommand::List => {
            let resp = with_coordinator(&mut bootstrap, key, |client| {
                let resp = client.call(&ListGroupsRequest::default(), 4)?;
                Ok(match resp.error_code {
                    0 => Ok(resp),
                    e => Err(e),
                })
            })?;
            let mut rows = vec![vec!["GROUP".into(), "STATE".into(), "PROTOCOL".into()]];
            let mut out = Vec::new();
            for g in &resp.groups {
                rows.push(vec![
                    g.group_id.0.to_string(),
                    g.group_state.to_string(),
                    g.protocol_type.to_string(),
                ]);
                out.push(json!({"group": g.group_id.0.to_string(), "state": g.group_state.to_string(), "protocol_type": g.protocol_type.to_string()}));
            }
            print(target, json!(out), rows);
        }
        GroupsCommand::Describe { group } => {
            let mut req = DescribeGroupsRequest::default();
            req.groups = vec![GroupId(str_bytes(group.clone()))];
            let mut of = OffsetFetchRequest::default();
            of.group_id = GroupId(str_bytes(group.clone()));
            of.topics = None;
            // v6 answers GROUP_ID_NOT_FOUND for a group the coordinator does not know.
            let (resp, committed) = with_coordinator(&mut bootstrap, key, |client| {
                let resp = client.call(&req, 6)?;
                let g_err = resp.groups.first().map(|g| g.error_code).unwrap_or(0);
                if coordinator_moving(g_err) {
                    return Ok(Err(g_err));
                }
                let committed = client.call(&of, 7)?;
                if coordinator_moving(committed.error_code) {
                    return Ok(Err(committed.error_code));
                }
                Ok(Ok((resp, committed)))
            })?;
            let Some(g) = resp.groups.first() else {
                bail!("no answer for group {group}")
            };
            if g.error_code == GROUP_ID_NOT_FOUND {
                bail!(
                    "group {group} does not exist: it has no members and no committed offsets \
                     (`chronik groups list` shows the groups there are)"
                );
            }
            if g.error_code != 0 {
                bail!("group {group}: {}", error_name(g.error_code));
            }
            let mut rows = vec![vec![
                "TOPIC".into(),
                "PARTITION".into(),
                "COMMITTED".into(),
                "LATEST".into(),
                "LAG".into(),
            ]];
            let mut out = Vec::new();
            for t in &committed.topics {
                let ids: Vec<i32> = t.partitions.iter().map(|p| p.partition_index).collect();
                let latest = offsets(&mut bootstrap, t.name.0.as_str(), &ids, -1)?;
                for p in &t.partitions {
                    let end = latest.get(&p.partition_index).copied().unwrap_or(-1);
                    let lag = if p.committed_offset >= 0 && end >= 0 {
                        end - p.committed_offset
                    } else {
                        -1
                    };
                    rows.push(vec![
                        t.name.0.to_string(),
                        p.partition_index.to_string(),
                        p.committed_offset.to_string(),
                        end.to_string(),
                        lag.to_string(),
                    ]);
                    out.push(json!({"topic": t.name.0.to_string(), "partition": p.partition_index, "committed": p.committed_offset, "latest": end, "lag": lag}));
                }
            }
            let consumer = g.protocol_type.as_str() == "consumer";
            let assigned = |bytes: &bytes::Bytes| {
                if consumer {
                    consumer_assignment(bytes)
                } else {
                    None
                }
            };
            let members: Vec<Value> = g
                .members
                .iter()
                .map(|m| {
                    let assignment = assigned(&m.member_assignment).map(|a| {
                        a.iter()
                            .map(|(t, ps)| json!({"topic": t, "partitions": ps}))
                            .collect::<Vec<_>>()
                    });
                    json!({"member_id": m.member_id.to_string(), "client_id": m.client_id.to_string(), "client_host": m.client_host.to_string(), "instance_id": m.group_instance_id.as_ref().map(|s| s.to_string()), "assignment": assignment})
                })
                .collect();
            if !target.json {
                out!(
                    "group {group}: state {}, {} member(s)",
                    g.group_state.as_str(),
                    g.members.len()
                );
                for m in &g.members {
                    let partitions = match assigned(&m.member_assignment) {
                        Some(a) if !a.is_empty() => a
                            .iter()
                            .map(|(t, ps)| {
                                let ps: Vec<String> = ps.iter().map(i32::to_string).collect();
                                format!("{t}:{}", ps.join(","))
                            })
                            .collect::<Vec<_>>()
                            .join(" "),
                        Some(_) => "no partitions".into(),
                        None => "assignment not shown".into(),
                    };
                    out!(
                        "  member {} (client {}, host {}): {partitions}",
                        m.member_id.as_str(),
                        m.client_id.as_str(),
                        m.client_host.as_str(),
                    );
                }
            }
            print(
                target,
                json!({"group": group, "state": g.group_state.to_string(), "members": members, "offsets": out}),
                rows,
            );
        }
    }
    Ok(())
}

/// The partitions a consumer-protocol assignment gives a member, by topic; `None` if the
/// bytes are not one (another protocol, or an empty assignment during a rebalance).
fn consumer_assignment(bytes: &bytes::Bytes) -> Option<Vec<(String, Vec<i32>)>> {
    use bytes::Buf;
    use kafka_protocol::messages::ConsumerProtocolAssignment;
    use kafka_protocol::protocol::Decodable;
    let mut b = bytes.clone();
    if b.remaining() < 2 {
        return None;
    }
    // Newer versions only add fields at the end: read what this codec knows.
    let version = b.get_i16().clamp(0, 3);
    let a = ConsumerProtocolAssignment::decode(&mut b, version).ok()?;
    Some(
        a.assigned_partitions
            .into_iter()
            .map(|t| (t.topic.0.to_string(), t.partitions))
            .collect(),
    )
}

pub fn cluster(target: &Target, command: &ClusterCommand) -> anyhow::Result<()> {
    let mut client = AdminClient::connect(&target.bootstrap)?;
    match command {
        ClusterCommand::Status => {
            // v2 lists fenced brokers too (a broker the controller has not heard from).
            let dc = client.call(
                &DescribeClusterRequest::default().with_include_fenced_brokers(true),
                2,
            )?;
            let md = metadata(&mut client, None)?;
            let partitions: usize = md.topics.iter().map(|t| t.partitions.len()).sum();
            let leaderless: usize = md
                .topics
                .iter()
                .flat_map(|t| t.partitions.iter())
                .filter(|p| p.leader_id.0 < 0)
                .count();
            let brokers: Vec<Value> = dc
                .brokers
                .iter()
                .map(|b| json!({"id": b.broker_id.0, "host": b.host.to_string(), "port": b.port, "fenced": b.is_fenced}))
                .collect();
            let mut rows = vec![vec!["BROKER".into(), "ADDRESS".into(), "ROLE".into()]];
            for b in &dc.brokers {
                let role = if b.is_fenced {
                    "fenced (not heard from)"
                } else if b.broker_id == dc.controller_id {
                    "controller"
                } else {
                    ""
                };
                rows.push(vec![
                    b.broker_id.0.to_string(),
                    format!("{}:{}", b.host.as_str(), b.port),
                    role.into(),
                ]);
            }
            let (parts, under_replicated, lead) = partitions::leadership(&md);
            for row in rows.iter_mut().skip(1) {
                let id: i32 = row[0].parse().unwrap_or(-1);
                row.push(lead.get(&id).copied().unwrap_or(0).to_string());
            }
            if let Some(h) = rows.first_mut() {
                h.push("LEADS".into());
            }
            if !target.json {
                out!("cluster {}: {} topic(s), {partitions} partition(s), {leaderless} without a leader, {under_replicated} under-replicated", dc.cluster_id.as_str(), md.topics.len());
            }
            print(
                target,
                json!({"cluster_id": dc.cluster_id.to_string(), "controller": dc.controller_id.0, "brokers": brokers, "topics": md.topics.len(), "partitions": partitions, "leaderless_partitions": leaderless, "under_replicated_partitions": under_replicated, "partition_states": parts.iter().map(|p| p.json()).collect::<Vec<_>>()}),
                rows,
            );
            if !target.json && !parts.is_empty() {
                out!("");
                print(target, Value::Null, partitions::table(&parts));
            }
        }
    }
    Ok(())
}
