//! `chronik serve`: bring a node up and run it until SIGTERM or Ctrl-C.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use chronik_bootstrap::fencing::{claim_bucket, spawn_lease, FencingConfig};
use chronik_bootstrap::lock::DataDirLock;
use chronik_bootstrap::{Node, NodeConfig, RaftTimings};
use chronik_metastore::metadata::{BrokerInfo, MetadataCommand};
use chronik_metastore::wal::WalConfig;

use crate::broker::Broker;
use crate::config::{parse_addr, Config};
use crate::group::Coordinator;
use crate::metrics::Metrics;
use crate::partition::Registry;
use crate::tiering::Tier;

pub async fn run(config: Config) -> anyhow::Result<()> {
    config.advertised()?;
    // Bind first: a port in use is the most common start-up mistake; say so before anything else.
    let kafka_addr = parse_addr("kafka-addr", &config.kafka_addr)?;
    let kafka = TcpListener::bind(kafka_addr)
        .await
        .with_context(|| format!("bind --kafka-addr {kafka_addr} (is another broker running?)"))?;
    let http_addr = parse_addr("http-addr", &config.http_addr)?;
    let http = TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("bind --http-addr {http_addr} (is another broker running?)"))?;
    let raft = match config.cluster()?.1 {
        Some(addr) => {
            let raft_addr = parse_addr("raft-addr", &addr)?;
            Some(TcpListener::bind(raft_addr).await.with_context(|| {
                format!("bind --raft-addr {raft_addr} (is another broker running?)")
            })?)
        }
        None => None,
    };

    let broker = open_with(config, raft).await?;
    let (node, partitions) = (broker.node.clone(), broker.partitions.clone());
    let groups = broker.groups.clone();
    tracing::info!(
        node_id = broker.config.node_id,
        kafka = %kafka_addr,
        http = %http_addr,
        data_dir = %broker.config.data_dir.display(),
        partitions = partitions.count(),
        "chronik is serving"
    );
    let kafka_task = tokio::spawn(crate::server::serve(kafka, broker.clone()));
    let http_task = tokio::spawn(crate::http::serve(http, broker.clone()));

    shutdown_signal().await;
    tracing::info!("shutting down");
    kafka_task.abort();
    http_task.abort();
    // Tiering first: its step under way may still need the Raft groups to commit. With
    // the bucket down that step sits in retries, so it gets 5 s of its own.
    let tiering_stopped = tokio::time::timeout(Duration::from_secs(5), broker.tier.shutdown())
        .await
        .is_ok();
    if !tiering_stopped {
        tracing::warn!("the tiering step under way did not end within 5s; stopping without it");
    }
    let stop = async {
        partitions.shutdown().await;
        groups.shutdown().await;
        node.shutdown().await;
    };
    if tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .is_err()
    {
        tracing::warn!("raft groups did not stop within 10s; exiting anyway");
        return Ok(());
    }
    if !tiering_stopped {
        // Perhaps still writing to the bucket: the lease stays and expires on its own.
        return Ok(());
    }
    // Stopped cleanly: give the lease up, so that a node restoring from the bucket (say,
    // after this disk is replaced) need not wait for it to expire.
    let lease = broker.lease.lock().take();
    if let Some(lease) = lease {
        // Bounded: with the bucket down, its retries could hold the exit up.
        match tokio::time::timeout(Duration::from_secs(5), lease.release()).await {
            Ok(Ok(true)) => tracing::info!("released the bucket lease"),
            Ok(Ok(false)) => {
                tracing::warn!("the bucket lease was renewed by another node; left as it is")
            }
            Ok(Err(err)) => tracing::warn!(%err, "release the bucket lease; it expires on its own"),
            Err(_) => tracing::warn!("releasing the bucket lease timed out; it expires on its own"),
        }
    }
    Ok(())
}

/// Opens the node's local state and starts its partitions: everything of a broker but the
/// listeners. Tests use it to drive handlers directly.
pub async fn open(config: Config) -> anyhow::Result<Arc<Broker>> {
    open_with(config, None).await
}

/// [`open`], serving the Raft transport on `raft_listener`.
pub async fn open_with(
    config: Config,
    raft_listener: Option<TcpListener>,
) -> anyhow::Result<Arc<Broker>> {
    let advertised = config.advertised()?;
    let (peers, raft_addr) = config.cluster()?;
    // What other nodes dial: this node's --peers entry (the listen address may be 0.0.0.0).
    let reachable_at = peers.get(&config.node_id).cloned().or(raft_addr.clone());
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("create --data-dir {}", config.data_dir.display()))?;
    let data_dir_lock = DataDirLock::acquire(&config.data_dir)?;
    let bucket_url = match &config.bucket {
        Some(url) => url.clone(),
        None => chronik_tiering::default_bucket_url(&config.data_dir)?,
    };
    let bucket = chronik_tiering::Bucket::open(&bucket_url)
        .await
        .with_context(|| format!("open --bucket {bucket_url}"))?;
    tracing::info!(bucket = %bucket.url(), "bucket opened");
    let fencing = FencingConfig {
        lease_interval: Duration::from_millis(config.lease_interval_ms.max(10)),
        lease_timeout: Duration::from_millis(config.lease_timeout_ms),
    };
    let clustered = peers.len() > 1;
    let incarnation = claim_bucket(
        &bucket,
        &config.data_dir,
        config.node_id,
        clustered,
        &fencing,
    )
    .await
    .context("claim the bucket")?;
    let lease = spawn_lease(
        bucket.clone(),
        incarnation.incarnation.clone(),
        config.node_id,
        fencing.lease_interval,
    );

    let node = Node::start(
        NodeConfig {
            node_id: config.node_id,
            wal: WalConfig {
                segment_bytes: config.wal_segment_bytes,
                fsync: config.fsync_policy()?,
                ..WalConfig::new(config.data_dir.join("wal"))
            },
            raft: RaftTimings {
                heartbeat_interval_ms: config.raft_heartbeat_interval_ms,
                election_timeout_min_ms: config.raft_election_timeout_min_ms,
                election_timeout_max_ms: config.raft_election_timeout_max_ms,
            },
            snapshot_dir: config.data_dir.join("snapshots"),
            bucket: bucket.clone(),
            snapshot_interval_ms: config.snapshot_interval_ms,
            snapshots_kept: config.snapshots_kept,
            incarnation: incarnation.incarnation.clone(),
            peers,
            raft_addr,
        },
        raft_listener,
    )
    .await
    .context("start node")?;

    let meta = node.cluster();
    if meta.cluster_id.is_none() {
        let cluster_id = incarnation.cluster_id.clone();
        node.propose_metadata(&MetadataCommand::InitCluster { cluster_id })
            .await
            .context("initialise cluster id")?;
    }
    let me = BrokerInfo {
        node_id: config.node_id,
        host: advertised.0.clone(),
        port: advertised.1,
        raft_addr: reachable_at,
    };
    if meta.brokers.get(&config.node_id) != Some(&me) {
        node.propose_metadata(&MetadataCommand::RegisterBroker(me))
            .await
            .context("register broker")?;
    }

    let tier = Tier::new(bucket.clone(), config.tier_config());
    node.spawn_liveness(Duration::from_millis(config.broker_session_timeout_ms));
    let replica_lag = Duration::from_millis(config.replica_lag_time_max_ms);
    let partitions = Registry::new(node.clone(), tier.clone(), replica_lag);
    partitions
        .reconcile(&node.cluster())
        .await
        .context("start partitions")?;
    partitions.spawn_reconciler();
    tier.spawn(partitions.clone(), config.node_id);
    let groups = Coordinator::start(&node, config.group_config())
        .await
        .context("start the group coordinator")?;

    let broker = Arc::new(Broker {
        config,
        node,
        partitions,
        metrics: Arc::new(Metrics::default()),
        groups,
        tier,
        advertised,
        _data_dir_lock: data_dir_lock,
        lease: parking_lot::Mutex::new(Some(lease)),
    });
    Ok(broker)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
