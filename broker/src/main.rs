//! The `chronik` binary.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde::Serialize;

use chronik_broker::admin;
use chronik_broker::config::Config;

#[derive(Parser)]
#[command(
    name = "chronik",
    version,
    about = "Chronik: a Kafka-compatible broker whose durable home for data is an object store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a node. With no flags: a single node on 127.0.0.1:9092, data in ./data,
    /// bucket in ./bucket. Every flag is also CHRONIK_<NAME> and a key in chronik.toml.
    Serve(Box<ServeArgs>),
    /// Topics of a running cluster: list, describe, create, delete.
    Topics {
        #[command(flatten)]
        target: admin::Target,
        #[command(subcommand)]
        command: admin::TopicsCommand,
    },
    /// Consumer groups of a running cluster: list, describe (members, offsets, lag).
    Groups {
        #[command(flatten)]
        target: admin::Target,
        #[command(subcommand)]
        command: admin::GroupsCommand,
    },
    /// Partitions of a running cluster: reassign, reassignments in progress.
    Partitions {
        #[command(flatten)]
        target: admin::Target,
        #[command(subcommand)]
        command: admin::PartitionsCommand,
    },
    /// The running cluster: status.
    Cluster {
        #[command(flatten)]
        target: admin::Target,
        #[command(subcommand)]
        command: admin::ClusterCommand,
    },
}

/// Only flags given on the command line are set, so they override lower layers and nothing else.
#[derive(clap::Args, Serialize)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<u64>,
    /// Kafka listener, HOST:PORT [default: 127.0.0.1:9092].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    kafka_addr: Option<String>,
    /// Address given to clients in metadata [default: the kafka address].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    advertised_addr: Option<String>,
    /// HTTP listener for /metrics and /health [default: 127.0.0.1:9644].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    http_addr: Option<String>,
    /// Local state: the WAL [default: ./data].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// Object store URL (file://DIR; s3://, gs://, az:// with tiering) [default: a `bucket`
    /// directory next to the data directory].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    bucket: Option<String>,
    /// Raft listener for multi-node clusters.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    raft_addr: Option<String>,
    /// Cluster members, ID@HOST:PORT,…
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    peers: Option<String>,
    /// Create topics on first use [default: true].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    auto_create_topics: Option<bool>,
    /// Partitions of auto-created topics [default: 1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    num_partitions: Option<u32>,
    /// Largest record batch accepted [default: 1048588].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    message_max_bytes: Option<u32>,
    /// Largest request accepted [default: 104857600].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    socket_request_max_bytes: Option<u32>,
    /// WAL fsync policy: always, interval, never [default: always].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    wal_fsync: Option<String>,
    /// With --wal-fsync interval: milliseconds between fsyncs [default: 5].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    wal_fsync_interval_ms: Option<u64>,
    /// How often partition leaders ship their untiered tail to the bucket [default: 1000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tiering_interval_ms: Option<u64>,
    /// Bytes of record batches per chunk object [default: 8388608].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tiering_chunk_bytes: Option<u64>,
    /// Untiered bytes past which produce waits, then fails retriably [default: 134217728].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_untiered_bytes: Option<u64>,
    /// Bytes of tiered data cached for reads [default: 67108864].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    read_cache_bytes: Option<u64>,
    /// Milliseconds an object that left a partition manifest stays in the bucket before
    /// garbage collection deletes it [default: 60000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    gc_grace_ms: Option<u64>,
    /// Compaction merges runs of at least this many adjacent chunks [default: 8].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    compaction_min_chunks: Option<u64>,
    /// Largest segment object compaction writes [default: 67108864].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    segment_bytes: Option<u64>,
    /// Entries per sealed page of a partition's manifest [default: 512].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    manifest_page_entries: Option<u64>,
    /// Milliseconds after which an idle idempotent producer is forgotten [default: 86400000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    producer_id_expiration_ms: Option<u64>,
    /// Bytes of a Parquet-archived topic's partition that wait before a file is written [default: 33554432].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    archive_file_bytes: Option<u64>,
    /// Milliseconds records wait at most before they are archived [default: 300000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    archive_interval_ms: Option<u64>,
    /// Milliseconds a consumer group without members keeps its committed offsets [default: 604800000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    offsets_retention_ms: Option<u64>,
    /// How often a Raft group with new entries is snapshotted and its WAL purged [default: 1000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot_interval_ms: Option<u64>,
    /// How often the node renews its lease on the bucket [default: 5000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_interval_ms: Option<u64>,
    /// Restore into an empty data dir only from a bucket whose lease is older than this [default: 15000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_timeout_ms: Option<u64>,
    /// Snapshots kept per group in the bucket [default: 3].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshots_kept: Option<usize>,
    /// Requests one connection may have in flight before the broker stops reading from it [default: 64].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_inflight_requests_per_connection: Option<usize>,
    /// Longest fetch wait honoured, whatever a client asks for, in ms [default: 30000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    fetch_max_wait_ms_cap: Option<u64>,
    /// Bytes per WAL segment file [default: 67108864].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    wal_segment_bytes: Option<u64>,
    /// Raft heartbeat interval, ms [default: 100].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    raft_heartbeat_interval_ms: Option<u64>,
    /// Shortest Raft election timeout, ms [default: 300].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    raft_election_timeout_min_ms: Option<u64>,
    /// Longest Raft election timeout, ms [default: 600].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    raft_election_timeout_max_ms: Option<u64>,
    /// Milliseconds without a word from a broker before it is fenced [default: 9000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    broker_session_timeout_ms: Option<u64>,
    /// Milliseconds a follower may lag before it leaves the in-sync set [default: 30000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    replica_lag_time_max_ms: Option<u64>,
    /// Shortest consumer session timeout accepted, ms [default: 6000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    group_min_session_timeout_ms: Option<u64>,
    /// Longest consumer session timeout accepted, ms [default: 1800000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    group_max_session_timeout_ms: Option<u64>,
    /// How long a new group's first rebalance waits for more members, ms [default: 300].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    group_initial_rebalance_delay_ms: Option<u64>,
    /// Log filter, e.g. info or chronik_broker=debug [default: info,openraft=warn].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<String>,
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // One line with the whole context chain; a backtrace helps nobody fix a config.
            eprintln!("chronik: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = Config::load(args.config.as_deref(), &args)?;
            init_tracing(&config.log);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("chronik")
                .build()?;
            runtime.block_on(chronik_broker::serve::run(config))
        }
        Command::Topics { target, command } => admin::topics(&target, &command),
        Command::Groups { target, command } => admin::groups(&target, &command),
        Command::Cluster { target, command } => admin::cluster(&target, &command),
        Command::Partitions { target, command } => admin::partitions(&target, &command),
    }
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: escape codes in a log file help nobody.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .init();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn every_setting_is_also_a_flag() {
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").expect("serve");
        let flags: Vec<String> = serve
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_string))
            .collect();
        let settings = serde_json::to_value(Config::default()).expect("settings");
        for key in settings.as_object().expect("object").keys() {
            let flag = key.replace('_', "-");
            assert!(
                flags.contains(&flag),
                "no --{flag} flag for the {key} setting"
            );
        }
    }
}
