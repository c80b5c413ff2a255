//! Node configuration: built-in defaults → `chronik.toml` (`--config`) → `CHRONIK_*`
//! environment → command-line flags, merged with figment.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use chronik_metastore::wal::FsyncPolicy;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub node_id: u64,
    pub kafka_addr: String,
    /// The address clients are told to connect to; defaults to `kafka_addr`.
    pub advertised_addr: Option<String>,
    /// Metrics (`/metrics`) and health (`/health`).
    pub http_addr: String,
    pub data_dir: PathBuf,
    /// `file://…`, `s3://bucket/prefix`, `gs://…`, `az://…`; default `<data_dir>/bucket`.
    pub bucket: Option<String>,
    /// Where the Raft transport listens; defaults to this node's entry in `peers` (which is
    /// the address the other nodes use, e.g. behind 0.0.0.0 or a proxy).
    pub raft_addr: Option<String>,
    /// Every node of a cluster: `ID@HOST:PORT,…` (Raft addresses), this node included.
    pub peers: Option<String>,
    /// Create topics on first Metadata or Produce reference (`auto.create.topics.enable`).
    pub auto_create_topics: bool,
    /// Partitions of an auto-created topic (`num.partitions`).
    pub num_partitions: u32,
    /// Largest record batch accepted, unless a topic overrides it (`message.max.bytes`).
    pub message_max_bytes: u32,
    /// Largest request frame accepted (`socket.request.max.bytes`).
    pub socket_request_max_bytes: u32,
    /// Requests one connection may have in flight before the broker stops reading from it.
    pub max_inflight_requests_per_connection: usize,
    /// Largest fetch wait honoured, whatever a client asks for.
    pub fetch_max_wait_ms_cap: u64,
    pub wal_segment_bytes: u64,
    /// `always` (fsync every group commit), `never`, or `interval` (see `wal_fsync_interval_ms`).
    pub wal_fsync: String,
    pub wal_fsync_interval_ms: u64,
    /// How often a Raft group with new entries is snapshotted (locally and to the bucket);
    /// its WAL entries are purged after each snapshot.
    pub snapshot_interval_ms: u64,
    /// Snapshots kept per group in the bucket.
    pub snapshots_kept: usize,
    /// How often the node renews its lease on the bucket (see bootstrap::fencing).
    pub lease_interval_ms: u64,
    /// A node with an empty data dir restores from a bucket only if the owner's lease is
    /// older than this: a live cluster keeps its bucket.
    pub lease_timeout_ms: u64,
    /// How often each partition leader ships its untiered tail to the bucket (a busy
    /// partition ships sooner, whenever a whole chunk is waiting).
    pub tiering_interval_ms: u64,
    /// A chunk object is cut at this many bytes of record batches; a partition with this
    /// many untiered bytes ships them without waiting for the interval.
    pub tiering_chunk_bytes: u64,
    /// Untiered bytes the node may hold (in memory, awaiting upload) before producers get
    /// a retriable KAFKA_STORAGE_ERROR; reached while the bucket is slow or down, or when
    /// producers pipeline faster than tiering ships. 128 MiB: at 256 MiB a pipelining
    /// producer (librdkafka without idempotence) held the broker near 0.5 GB, at 128 MiB
    /// near 0.3 GB, with more throughput and the same for the idempotent suite; below
    /// that, six busy partitions' whole chunks reach half of it and ship early.
    pub max_untiered_bytes: u64,
    /// Bytes of decoded chunks cached for reads of tiered data.
    pub read_cache_bytes: u64,
    /// How long an object that left a partition manifest (DeleteRecords, retention,
    /// compaction) stays in the bucket before garbage collection deletes it.
    pub gc_grace_ms: u64,
    /// Compaction merges a run of at least this many adjacent small chunks (under half of
    /// `tiering_chunk_bytes`) into one segment.
    pub compaction_min_chunks: u64,
    /// Largest segment object compaction writes.
    pub segment_bytes: u64,
    /// Entries per sealed page of a partition's manifest: once twice this many chunks and
    /// segments are open, the oldest this many move into a page object in the bucket, so
    /// snapshots and bootstrap stay small however long a partition's history.
    pub manifest_page_entries: u64,
    /// An idempotent producer that has not written to a partition for this long is
    /// forgotten there (Kafka's `producer.id.expiration.ms`), so producer state does not
    /// grow with every producer that ever wrote.
    pub producer_id_expiration_ms: u64,
    /// A topic with `archive.parquet.enable=true` gets a Parquet file once this many bytes
    /// of its records wait for the archive ...
    pub archive_file_bytes: u64,
    /// ... or once records have waited this long.
    pub archive_interval_ms: u64,
    pub raft_heartbeat_interval_ms: u64,
    pub raft_election_timeout_min_ms: u64,
    pub raft_election_timeout_max_ms: u64,
    /// A broker the metadata leader has not heard from for this long is fenced: clients
    /// are told its partitions have no leader, and it leaves their in-sync sets (Kafka's
    /// `broker.session.timeout.ms`).
    pub broker_session_timeout_ms: u64,
    /// A follower that has not caught up with its leader's commit of this long ago, or
    /// not been heard from for this long, leaves the partition's in-sync set (Kafka's
    /// `replica.lag.time.max.ms`).
    pub replica_lag_time_max_ms: u64,
    /// Log filter, e.g. `info` or `chronik=debug`; `RUST_LOG` wins when set.
    pub log: String,
    /// Bounds on a consumer's session timeout (`group.min/max.session.timeout.ms`).
    pub group_min_session_timeout_ms: u64,
    pub group_max_session_timeout_ms: u64,
    /// How long the first rebalance of an empty group waits for more members
    /// (`group.initial.rebalance.delay.ms`; Kafka's default is 3000).
    pub group_initial_rebalance_delay_ms: u64,
    /// A consumer group that has had no members for this long loses its committed
    /// offsets, and the coordinator forgets it (Kafka's `offsets.retention.minutes`, 7 days).
    pub offsets_retention_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: 1,
            kafka_addr: "127.0.0.1:9092".into(),
            advertised_addr: None,
            http_addr: "127.0.0.1:9644".into(),
            data_dir: PathBuf::from("./data"),
            bucket: None,
            raft_addr: None,
            peers: None,
            auto_create_topics: true,
            num_partitions: 1,
            message_max_bytes: 1_048_588,
            socket_request_max_bytes: 104_857_600,
            max_inflight_requests_per_connection: 64,
            fetch_max_wait_ms_cap: 30_000,
            wal_segment_bytes: 64 << 20,
            wal_fsync: "always".into(),
            wal_fsync_interval_ms: 5,
            snapshot_interval_ms: 1000,
            snapshots_kept: 3,
            lease_interval_ms: 5000,
            lease_timeout_ms: 15000,
            tiering_interval_ms: 1000,
            tiering_chunk_bytes: 8 << 20,
            max_untiered_bytes: 128 << 20,
            read_cache_bytes: 64 << 20,
            gc_grace_ms: 60_000,
            compaction_min_chunks: 8,
            segment_bytes: 64 << 20,
            manifest_page_entries: 512,
            producer_id_expiration_ms: 86_400_000,
            archive_file_bytes: 32 << 20,
            archive_interval_ms: 300_000,
            raft_heartbeat_interval_ms: 100,
            raft_election_timeout_min_ms: 300,
            raft_election_timeout_max_ms: 600,
            broker_session_timeout_ms: 9_000,
            replica_lag_time_max_ms: 30_000,
            log: "info,openraft=warn".into(),
            group_min_session_timeout_ms: 6_000,
            group_max_session_timeout_ms: 1_800_000,
            group_initial_rebalance_delay_ms: 300,
            offsets_retention_ms: 604_800_000,
        }
    }
}

impl Config {
    /// Merges the layers. `flags` holds only the flags given on the command line.
    pub fn load(config_file: Option<&Path>, flags: &impl Serialize) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = config_file {
            if !path.exists() {
                bail!("config file {} does not exist", path.display());
            }
            check_keys(path)?;
            figment = figment.merge(Toml::file(path));
        }
        figment = figment
            .merge(Env::prefixed("CHRONIK_").ignore(&["bin", "config"]))
            .merge(Serialized::defaults(flags));
        let config: Config = figment
            .extract()
            .context("read configuration (defaults, config file, CHRONIK_* environment, flags)")?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        parse_addr("kafka-addr", &self.kafka_addr)?;
        parse_addr("http-addr", &self.http_addr)?;
        self.advertised()?;
        self.fsync_policy()?;
        if self.num_partitions == 0 {
            bail!("num-partitions must be at least 1");
        }
        if self.message_max_bytes < 128 {
            bail!("message-max-bytes must be at least 128");
        }
        if self.raft_election_timeout_min_ms <= self.raft_heartbeat_interval_ms
            || self.raft_election_timeout_max_ms <= self.raft_election_timeout_min_ms
        {
            bail!(
                "raft timings must satisfy heartbeat < election-timeout-min < election-timeout-max"
            );
        }
        if self.broker_session_timeout_ms <= self.raft_heartbeat_interval_ms {
            bail!(
                "broker-session-timeout-ms ({}) must be longer than raft-heartbeat-interval-ms ({}): brokers are heard through the Raft heartbeats",
                self.broker_session_timeout_ms,
                self.raft_heartbeat_interval_ms
            );
        }
        if self.replica_lag_time_max_ms <= self.raft_heartbeat_interval_ms {
            bail!(
                "replica-lag-time-max-ms ({}) must be longer than raft-heartbeat-interval-ms ({})",
                self.replica_lag_time_max_ms,
                self.raft_heartbeat_interval_ms
            );
        }
        if self.group_min_session_timeout_ms > self.group_max_session_timeout_ms {
            bail!("group-min-session-timeout-ms must not exceed group-max-session-timeout-ms");
        }
        let ms_range = 1..=i64::MAX as u64;
        if !ms_range.contains(&self.offsets_retention_ms) {
            bail!("offsets-retention-ms must be between 1 and {}", i64::MAX);
        }
        if !ms_range.contains(&self.producer_id_expiration_ms) {
            bail!(
                "producer-id-expiration-ms must be between 1 and {}",
                i64::MAX
            );
        }
        let max_page = crate::tiering::MAX_PAGE_ENTRIES as u64;
        if !(2..=max_page).contains(&self.manifest_page_entries) {
            bail!(
                "manifest-page-entries must be between 2 and {max_page}, not {}",
                self.manifest_page_entries
            );
        }
        self.cluster()?;
        Ok(())
    }

    /// The peer list (empty for a single node) and this node's Raft listen address,
    /// checked for consistency: the node is in its own list.
    pub fn cluster(&self) -> anyhow::Result<(BTreeMap<u64, String>, Option<String>)> {
        let peers = match &self.peers {
            Some(spec) => chronik_metastore::network::parse_peers(spec)
                .map_err(|e| anyhow::anyhow!("--peers: {e}"))?,
            None => BTreeMap::new(),
        };
        if peers.is_empty() {
            if let Some(addr) = &self.raft_addr {
                parse_addr("raft-addr", addr)?;
            }
            return Ok((peers, self.raft_addr.clone()));
        }
        let Some(mine) = peers.get(&self.node_id) else {
            bail!(
                "--node-id {} is not in --peers ({}); list every node, this one included, as ID@HOST:PORT",
                self.node_id,
                peers.keys().map(|k| k.to_string()).collect::<Vec<_>>().join(",")
            );
        };
        // The listen address may differ from the address peers use (0.0.0.0, a proxy, a
        // NAT); a peer that reaches the wrong node is refused by the transport, which
        // checks the node id in every message.
        let raft_addr = self.raft_addr.clone().unwrap_or_else(|| mine.clone());
        parse_addr("raft-addr", &raft_addr)?;
        Ok((peers, Some(raft_addr)))
    }

    pub fn tier_config(&self) -> crate::tiering::TierConfig {
        crate::tiering::TierConfig {
            interval: std::time::Duration::from_millis(self.tiering_interval_ms.max(10)),
            chunk_bytes: self.tiering_chunk_bytes.max(1) as usize,
            max_untiered_bytes: self.max_untiered_bytes,
            cache_bytes: self.read_cache_bytes as usize,
            concurrency: 8,
            gc_grace_ms: self.gc_grace_ms,
            page_entries: self.manifest_page_entries.max(1) as usize,
            producer_id_expiration_ms: self.producer_id_expiration_ms.max(1),
            archive_file_bytes: self.archive_file_bytes.clamp(1, 1 << 30) as usize,
            archive_interval: Duration::from_millis(self.archive_interval_ms.max(10)),
            compaction: crate::tiering::compaction::CompactionPolicy {
                min_chunks: self.compaction_min_chunks.max(2) as usize,
                segment_bytes: self.segment_bytes,
                // Chunks cut at full size by a busy partition are big enough already.
                small_chunk_bytes: (self.tiering_chunk_bytes / 2).max(1),
            },
        }
    }

    pub fn fsync_policy(&self) -> anyhow::Result<FsyncPolicy> {
        match self.wal_fsync.as_str() {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            "interval" => Ok(FsyncPolicy::IntervalMs(self.wal_fsync_interval_ms.max(1))),
            other => bail!("wal-fsync must be always, interval or never, not {other:?}"),
        }
    }

    pub fn group_config(&self) -> crate::group::GroupConfig {
        crate::group::GroupConfig {
            min_session_timeout: Duration::from_millis(self.group_min_session_timeout_ms),
            max_session_timeout: Duration::from_millis(self.group_max_session_timeout_ms),
            initial_rebalance_delay: Duration::from_millis(self.group_initial_rebalance_delay_ms),
            offsets_retention: Duration::from_millis(self.offsets_retention_ms.max(1)),
        }
    }

    /// The (host, port) advertised to clients.
    pub fn advertised(&self) -> anyhow::Result<(String, u16)> {
        let addr = self.advertised_addr.as_deref().unwrap_or(&self.kafka_addr);
        let (host, port) = addr
            .rsplit_once(':')
            .with_context(|| format!("advertised-addr {addr:?} must be HOST:PORT"))?;
        let port: u16 = port
            .parse()
            .with_context(|| format!("advertised-addr {addr:?} has a bad port"))?;
        if host.is_empty() {
            bail!("advertised-addr {addr:?} has no host");
        }
        let unspecified = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified());
        if unspecified {
            // As Kafka refuses 0.0.0.0 in advertised.listeners: clients cannot dial it.
            let fix = if self.advertised_addr.is_some() {
                "give --advertised-addr the HOST:PORT clients dial"
            } else {
                "--kafka-addr listens on every interface, so also give --advertised-addr, \
                 the HOST:PORT clients dial"
            };
            bail!("advertised-addr {addr:?} is not an address clients can connect to: {fix}");
        }
        Ok((host.to_string(), port))
    }
}

/// Refuses a config file key that is not a setting: a misspelt key would otherwise be
/// ignored and its setting silently left at the default.
fn check_keys(path: &Path) -> anyhow::Result<()> {
    let keys: BTreeMap<String, figment::value::Value> =
        Figment::from(Toml::file(path))
            .extract()
            .with_context(|| format!("read config file {}", path.display()))?;
    let known = serde_json::to_value(Config::default())?;
    let known = known.as_object().context("settings")?;
    for key in keys.keys() {
        if known.contains_key(key) {
            continue;
        }
        let closest = known
            .keys()
            .min_by_key(|k| edit_distance(k, key))
            .filter(|k| edit_distance(k, key) <= 3);
        let hint = match closest {
            Some(k) => format!("did you mean {k:?}? "),
            None => String::new(),
        };
        bail!(
            "config file {}: unknown key {key:?}; {hint}every key is listed in infra/chronik.toml",
            path.display()
        );
    }
    Ok(())
}

/// Levenshtein distance, for suggesting the key a typo meant.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(above + 1)
                .min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Resolves a listen address (`IP:PORT` or `HOST:PORT`).
pub fn parse_addr(flag: &str, addr: &str) -> anyhow::Result<SocketAddr> {
    let well_formed = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !well_formed {
        bail!("--{flag} {addr:?} must be HOST:PORT, e.g. 127.0.0.1:9092");
    }
    match addr.to_socket_addrs() {
        Ok(mut found) => found.next().with_context(|| {
            format!("--{flag} {addr:?}: the host name has no address; check its spelling")
        }),
        Err(e) => {
            bail!("--{flag} {addr:?}: cannot resolve the host name ({e}); check its spelling")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_lists_every_key_at_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/chronik.toml");
        let text = std::fs::read_to_string(&path).expect("read infra/chronik.toml");
        let parsed: Config = Figment::from(Toml::string(&text)).extract().expect("parse");
        let as_json = |c: &Config| serde_json::to_value(c).expect("serialise");
        assert_eq!(as_json(&parsed), as_json(&Config::default()));
        // Every key that has a value by default is spelled out in the file.
        let defaults = as_json(&Config::default());
        for (key, value) in defaults.as_object().expect("object") {
            if !value.is_null() {
                assert!(
                    text.lines().any(|l| l.starts_with(&format!("{key} ="))),
                    "infra/chronik.toml does not list {key}"
                );
            }
        }
    }
}
