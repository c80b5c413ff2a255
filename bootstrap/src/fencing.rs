//! Bucket ownership, so that two clusters pointed at one bucket never silently overwrite
//! each other.
//!
//! - The **incarnation** (`cluster/incarnation.json`, written create-only) names the
//!   cluster that owns the bucket. A data directory remembers the incarnation it belongs to
//!   (`incarnation.json` in the data dir); a node whose data dir names another incarnation
//!   than the bucket refuses to start.
//! - Every node renews its own **lease** (`cluster/leases/node-<id>.json`) every
//!   `lease_interval`. A node with an empty data directory adopts the bucket's incarnation:
//!   - at once when another node of the cluster holds a fresh lease (it joins a live
//!     cluster; the Raft transport then refuses it if its peers are of another cluster);
//!   - when its own node id's lease is fresh, only after watching it: renewed means a node
//!     with this id is alive (a duplicate id: refuse), expiry means it is gone (e.g. this
//!     very node before its disk was wiped);
//!   - otherwise at once (disaster recovery: the cluster is gone, restore from the bucket).
//! - Every snapshot written to the bucket carries the incarnation; restore ignores
//!   snapshots of another incarnation.
//! - A node that sees its lease rewritten by another incarnation stops (fail-stop) rather
//!   than keep publishing into a bucket it no longer owns.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use chronik_metastore::types::NodeId;
use chronik_tiering::{Bucket, Incarnation};

use crate::BootstrapError;

/// Where node `node`'s lease lives in the bucket.
pub fn lease_key(node: NodeId) -> String {
    format!("{LEASES_PREFIX}node-{node}.json")
}

pub const LEASES_PREFIX: &str = "cluster/leases/";
const LOCAL_FILE: &str = "incarnation.json";

#[derive(Clone, Debug)]
pub struct FencingConfig {
    pub lease_interval: Duration,
    pub lease_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub incarnation: String,
    pub node_id: NodeId,
    pub heartbeat_unix_ms: u64,
}

/// The heartbeat of a lease given up on a clean stop ([`LeaseTask::release`]).
const RELEASED: u64 = 0;

impl Lease {
    /// Whether the node gave this lease up on a clean stop.
    fn released(&self) -> bool {
        self.heartbeat_unix_ms == RELEASED
    }

    /// Whether this lease belongs to `owner`'s incarnation and was renewed within `timeout`.
    fn is_live_in(&self, owner: &Incarnation, now_ms: u64, timeout: Duration) -> bool {
        self.incarnation == owner.incarnation
            && now_ms.saturating_sub(self.heartbeat_unix_ms) < timeout.as_millis() as u64
    }
}

pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What start-up decides about the bucket, given what the data dir and the bucket hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// A new cluster: write this incarnation to the bucket.
    New,
    /// The data dir and the bucket agree.
    Resume,
    /// The data dir is empty and the bucket's owner is gone: adopt it and restore.
    Adopt,
    /// The data dir is empty and other nodes of the bucket's cluster are alive: adopt the
    /// incarnation and join them.
    Join,
    /// The data dir is empty and this node id's own lease is fresh: watch it until it is
    /// renewed (a live node has this id: refuse) or expires (adopt).
    Watch(Lease),
    Refuse(String),
}

/// The start-up decision, a pure function (tested without a bucket). `lease` is this node
/// id's lease; `others` the other nodes' leases.
pub fn decide(
    local: Option<&Incarnation>,
    bucket: Option<&Incarnation>,
    lease: Option<&Lease>,
    others: &[Lease],
    now_ms: u64,
    lease_timeout: Duration,
) -> Claim {
    let fresh = |l: &Lease| bucket.is_some_and(|b| l.is_live_in(b, now_ms, lease_timeout));
    match (local, bucket) {
        (None, None) => Claim::New,
        (Some(l), Some(b)) if l.incarnation == b.incarnation => Claim::Resume,
        (Some(l), Some(b)) => Claim::Refuse(format!(
            "the data directory belongs to cluster {} (incarnation {}) but the bucket is owned by cluster {} (incarnation {}); point this node at its own bucket, or wipe the data directory to restore from this bucket",
            l.cluster_id, l.incarnation, b.cluster_id, b.incarnation
        )),
        // The data dir's chunks, segments and snapshots are in the bucket it was started
        // with. Serving on this one would put new data where the rest of the cluster and
        // every later restore never look: acknowledged writes would be lost.
        (Some(l), None) => Claim::Refuse(format!(
            "the data directory belongs to cluster {} (incarnation {}), but this bucket has no Chronik cluster in it: check --bucket, since this node's data is in the bucket it was started with. If that bucket is lost for good, so is the history it held: move the data directory aside to start a new cluster here",
            l.cluster_id, l.incarnation
        )),
        (None, Some(b)) => match lease.filter(|l| fresh(l)) {
            Some(l) => Claim::Watch(l.clone()),
            None if others.iter().any(fresh) => Claim::Join,
            // This id's owner gave its lease up on a clean stop: nobody writes any more.
            None if lease.is_some_and(Lease::released) => Claim::Adopt,
            // Created moments ago by a peer starting with us: a new cluster is forming.
            None if now_ms.saturating_sub(b.created_unix_ms)
                < lease_timeout.as_millis() as u64 =>
            {
                Claim::Join
            }
            None => Claim::Adopt,
        },
    }
}

fn local_path(data_dir: &Path) -> PathBuf {
    data_dir.join(LOCAL_FILE)
}

fn read_local(data_dir: &Path) -> Result<Option<Incarnation>, BootstrapError> {
    match std::fs::read(local_path(data_dir)) {
        Ok(data) => Incarnation::from_json(&data).map(Some).map_err(|e| {
            BootstrapError::Fenced(format!("{}: {e}", local_path(data_dir).display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(BootstrapError::Fenced(format!(
            "read {}: {e}",
            local_path(data_dir).display()
        ))),
    }
}

fn write_local(data_dir: &Path, inc: &Incarnation) -> Result<(), BootstrapError> {
    use std::io::Write;
    let path = local_path(data_dir);
    let tmp = path.with_extension("json.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&inc.to_json())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(data_dir)?.sync_all()
    };
    write().map_err(|e| BootstrapError::Fenced(format!("write {}: {e}", path.display())))
}

async fn read_lease(bucket: &Bucket, node: NodeId) -> Result<Option<Lease>, BootstrapError> {
    let key = lease_key(node);
    match bucket.get(&key).await {
        Ok(data) => Ok(serde_json::from_slice(&data).ok()),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(BootstrapError::Fenced(format!("read {key}: {e}"))),
    }
}

/// Every other node's lease.
async fn read_other_leases(bucket: &Bucket, node: NodeId) -> Result<Vec<Lease>, BootstrapError> {
    let listed = bucket
        .list(LEASES_PREFIX)
        .await
        .map_err(|e| BootstrapError::Fenced(format!("list {LEASES_PREFIX}: {e}")))?;
    let mut leases = Vec::new();
    for (key, _) in listed {
        if key == lease_key(node) {
            continue;
        }
        match bucket.get(&key).await {
            Ok(data) => leases.extend(serde_json::from_slice::<Lease>(&data).ok()),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(BootstrapError::Fenced(format!("read {key}: {e}"))),
        }
    }
    Ok(leases)
}

async fn write_lease(bucket: &Bucket, lease: &Lease) -> Result<(), BootstrapError> {
    let key = lease_key(lease.node_id);
    let data = Bytes::from(serde_json::to_vec(lease).unwrap_or_default());
    bucket
        .put(&key, data)
        .await
        .map_err(|e| BootstrapError::Fenced(format!("write {key}: {e}")))
}

/// Decides whether this node may use `bucket`, records the outcome in the data dir, and
/// renews the lease once. Returns the incarnation this node belongs to. `clustered` nodes
/// (started with other peers) that lose the race to create a new cluster's incarnation
/// adopt the winner's: their peers started at the same moment.
pub async fn claim_bucket(
    bucket: &Bucket,
    data_dir: &Path,
    node_id: NodeId,
    clustered: bool,
    config: &FencingConfig,
) -> Result<Incarnation, BootstrapError> {
    let local = read_local(data_dir)?;
    let in_bucket = Incarnation::load(bucket)
        .await
        .map_err(|e| BootstrapError::Fenced(format!("read the bucket's incarnation: {e}")))?;
    let lease = read_lease(bucket, node_id).await?;
    let others = read_other_leases(bucket, node_id).await?;
    let mut decision = decide(
        local.as_ref(),
        in_bucket.as_ref(),
        lease.as_ref(),
        &others,
        now_unix_ms(),
        config.lease_timeout,
    );
    if let Claim::Watch(seen) = &decision {
        decision = watch_lease(bucket, seen.clone(), in_bucket.as_ref(), config).await?;
        let now = now_unix_ms();
        if decision == Claim::Adopt
            && read_other_leases(bucket, node_id).await?.iter().any(|l| {
                in_bucket
                    .as_ref()
                    .is_some_and(|b| l.is_live_in(b, now, config.lease_timeout))
            })
        {
            decision = Claim::Join;
        }
    }
    if decision == Claim::Join && !clustered {
        // Joining needs the cluster's addresses; without them the node would wait for a
        // metadata leader it cannot reach.
        let now = now_unix_ms();
        let live: Vec<String> = read_other_leases(bucket, node_id)
            .await?
            .iter()
            .filter(|l| {
                in_bucket
                    .as_ref()
                    .is_some_and(|b| l.is_live_in(b, now, config.lease_timeout))
            })
            .map(|l| l.node_id.to_string())
            .collect();
        let owner = if live.is_empty() {
            "a cluster that another node created moments ago".to_string()
        } else {
            format!(
                "a live cluster (nodes {} renew leases in it)",
                live.join(", ")
            )
        };
        return Err(BootstrapError::Fenced(format!(
            "the bucket belongs to {owner}. To add this node to that cluster, start it with \
             --peers listing every node as ID@HOST:PORT, this one included; to run a \
             cluster of its own, give it another --bucket"
        )));
    }
    let ours = match decision {
        Claim::Refuse(why) => return Err(BootstrapError::Fenced(why)),
        Claim::Watch(_) => {
            return Err(BootstrapError::Fenced(
                "lease watch did not conclude".into(),
            ))
        }
        Claim::Resume => local.clone(),
        Claim::Adopt | Claim::Join => in_bucket.clone(),
        Claim::New => {
            let wanted = local
                .clone()
                .unwrap_or_else(|| Incarnation::new(&uuid::Uuid::new_v4().simple().to_string()));
            let won = wanted
                .claim(bucket)
                .await
                .map_err(|e| BootstrapError::Fenced(format!("claim the bucket: {e}")))?;
            if won.incarnation != wanted.incarnation && !clustered {
                return Err(BootstrapError::Fenced(format!(
                    "another cluster (incarnation {}) claimed the bucket at the same time; retry to restore from it",
                    won.incarnation
                )));
            }
            Some(won)
        }
    };
    let ours = ours.ok_or_else(|| BootstrapError::Fenced("no incarnation to adopt".into()))?;
    if decision == Claim::Join {
        tracing::info!(cluster = %ours.cluster_id, incarnation = %ours.incarnation, "joining the live cluster that owns the bucket");
    }
    if decision == Claim::Adopt {
        tracing::warn!(cluster = %ours.cluster_id, incarnation = %ours.incarnation, "adopting the bucket of a cluster whose lease expired: restoring from it");
    }
    if local.as_ref() != Some(&ours) {
        write_local(data_dir, &ours)?;
    }
    write_lease(
        bucket,
        &Lease {
            incarnation: ours.incarnation.clone(),
            node_id,
            heartbeat_unix_ms: now_unix_ms(),
        },
    )
    .await?;
    Ok(ours)
}

/// Watches a fresh lease: renewed → the owner lives (refuse); expired → adopt.
async fn watch_lease(
    bucket: &Bucket,
    seen: Lease,
    owner: Option<&Incarnation>,
    config: &FencingConfig,
) -> Result<Claim, BootstrapError> {
    let timeout_ms = config.lease_timeout.as_millis() as u64;
    tracing::warn!(
        owner_node = seen.node_id,
        incarnation = %seen.incarnation,
        "a node with this id renewed its lease in the bucket recently; waiting up to {:.1}s to see whether it is alive (then this node is refused) or gone (then it takes its place)",
        config.lease_timeout.as_secs_f64()
    );
    loop {
        let age = now_unix_ms().saturating_sub(seen.heartbeat_unix_ms);
        if age >= timeout_ms {
            return Ok(Claim::Adopt);
        }
        let step = (timeout_ms - age).min(config.lease_interval.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(step.max(10))).await;
        let now = read_lease(bucket, seen.node_id).await?;
        if now.as_ref().is_some_and(Lease::released) {
            // Its owner stopped cleanly while we watched.
            return Ok(Claim::Adopt);
        }
        if let Some(l) = now.filter(|l| l != &seen) {
            let (cluster, incarnation) = owner
                .map(|o| (o.cluster_id.as_str(), o.incarnation.as_str()))
                .unwrap_or(("?", l.incarnation.as_str()));
            return Ok(Claim::Refuse(format!(
                "the bucket is owned by live cluster {cluster} (incarnation {incarnation}), whose node {} keeps renewing its lease: stop that node (its lease then expires after {:.1}s) before restoring from this bucket, use another bucket, or, to add this node to that cluster, give it an unused --node-id and --peers listing every node as ID@HOST:PORT",
                l.node_id,
                config.lease_timeout.as_secs_f64()
            )));
        }
    }
}

/// Renews this node's lease every `interval` until [`LeaseTask::release`]. A lease that
/// another cluster took over stops the process, so that the two never write over each
/// other.
pub fn spawn_lease(
    bucket: Bucket,
    incarnation: String,
    node_id: NodeId,
    interval: Duration,
) -> LeaseTask {
    let (stop, mut stopped) = oneshot::channel::<oneshot::Sender<Result<bool, BootstrapError>>>();
    tokio::spawn(async move {
        // The heartbeat this node wrote last: claim_bucket's, then each renewal's.
        let mut last_written = match read_lease(&bucket, node_id).await {
            Ok(Some(l)) if l.incarnation == incarnation => Some(l.heartbeat_unix_ms),
            _ => None,
        };
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            // Stopping is only seen between renewals, so a renewal under way lands before
            // the release and never after it.
            tokio::select! {
                _ = tick.tick() => {}
                reply = &mut stopped => {
                    if let Ok(reply) = reply {
                        let released = release(&bucket, &incarnation, node_id, last_written).await;
                        let _ = reply.send(released);
                    }
                    return;
                }
            }
            match read_lease(&bucket, node_id).await {
                Ok(Some(l)) if l.incarnation != incarnation => {
                    tracing::error!(ours = %incarnation, theirs = %l.incarnation, node = l.node_id, "another cluster took over the bucket's lease; stopping so that the two never write over each other");
                    std::process::exit(3);
                }
                Err(err) => {
                    tracing::warn!(%err, "read the bucket lease; retrying next interval");
                    continue;
                }
                _ => {}
            }
            let lease = Lease {
                incarnation: incarnation.clone(),
                node_id,
                heartbeat_unix_ms: now_unix_ms(),
            };
            match write_lease(&bucket, &lease).await {
                Ok(()) => last_written = Some(lease.heartbeat_unix_ms),
                Err(err) => tracing::warn!(%err, "renew the bucket lease; retrying next interval"),
            }
        }
    });
    LeaseTask { stop }
}

/// Marks this node's lease released, if it is still the one this node wrote last: a
/// lease another cluster, or a replacement node with this id, wrote since is theirs.
async fn release(
    bucket: &Bucket,
    incarnation: &str,
    node_id: NodeId,
    last_written: Option<u64>,
) -> Result<bool, BootstrapError> {
    let current = read_lease(bucket, node_id).await?;
    let ours = current
        .is_some_and(|l| l.incarnation == incarnation && Some(l.heartbeat_unix_ms) == last_written);
    if !ours {
        return Ok(false);
    }
    write_lease(
        bucket,
        &Lease {
            incarnation: incarnation.to_string(),
            node_id,
            heartbeat_unix_ms: RELEASED,
        },
    )
    .await?;
    Ok(true)
}

/// The lease renewal of a running node.
pub struct LeaseTask {
    stop: oneshot::Sender<oneshot::Sender<Result<bool, BootstrapError>>>,
}

impl LeaseTask {
    /// Stops renewing and marks the lease released, so that a node restoring from the
    /// bucket need not wait out the lease timeout after a clean stop. Only for a node that
    /// has stopped writing to the bucket. True if released; false if the lease was no
    /// longer this node's to give up.
    pub async fn release(self) -> Result<bool, BootstrapError> {
        let (reply, answer) = oneshot::channel();
        self.stop
            .send(reply)
            .map_err(|_| BootstrapError::Fenced("the lease task has ended".into()))?;
        answer
            .await
            .map_err(|_| BootstrapError::Fenced("the lease task has ended".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inc(id: &str) -> Incarnation {
        Incarnation {
            cluster_id: "c".into(),
            incarnation: id.into(),
            created_unix_ms: 0,
        }
    }

    fn lease(id: &str, at: u64) -> Lease {
        Lease {
            incarnation: id.into(),
            node_id: 1,
            heartbeat_unix_ms: at,
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(15);

    #[test]
    fn fresh_and_resumed_clusters_proceed() {
        assert_eq!(decide(None, None, None, &[], 0, TIMEOUT), Claim::New);
        assert_eq!(
            decide(Some(&inc("a")), Some(&inc("a")), None, &[], 0, TIMEOUT),
            Claim::Resume
        );
    }

    #[test]
    fn a_data_dir_on_an_empty_bucket_is_refused() {
        // A wrong --bucket: the node's data is elsewhere, and what it wrote here would be
        // lost to the rest of the cluster.
        assert!(matches!(
            decide(Some(&inc("a")), None, None, &[], 0, TIMEOUT),
            Claim::Refuse(why) if why.contains("check --bucket")
        ));
    }

    #[test]
    fn a_foreign_data_dir_is_refused() {
        assert!(matches!(
            decide(Some(&inc("a")), Some(&inc("b")), None, &[], 0, TIMEOUT),
            Claim::Refuse(_)
        ));
    }

    #[test]
    fn an_empty_node_adopts_only_a_bucket_whose_lease_expired() {
        let now = 100_000;
        let live = lease("b", now - 1_000);
        assert_eq!(
            decide(None, Some(&inc("b")), Some(&live), &[], now, TIMEOUT),
            Claim::Watch(live.clone())
        );
        let stale = lease("b", now - 20_000);
        assert_eq!(
            decide(None, Some(&inc("b")), Some(&stale), &[], now, TIMEOUT),
            Claim::Adopt
        );
        assert_eq!(
            decide(None, Some(&inc("b")), None, &[], now, TIMEOUT),
            Claim::Adopt
        );
        // A lease of another incarnation says nothing about the bucket's owner.
        assert_eq!(
            decide(
                None,
                Some(&inc("b")),
                Some(&lease("x", now)),
                &[],
                now,
                TIMEOUT
            ),
            Claim::Adopt
        );
    }

    #[test]
    fn an_empty_node_joins_a_live_cluster_and_watches_its_own_id() {
        let now = 100_000;
        let mut other = lease("b", now - 1_000);
        other.node_id = 2;
        assert_eq!(
            decide(None, Some(&inc("b")), None, &[other.clone()], now, TIMEOUT),
            Claim::Join
        );
        // Its own id's fresh lease wins: a duplicate id or its own former self.
        let own = lease("b", now - 1_000);
        assert_eq!(
            decide(
                None,
                Some(&inc("b")),
                Some(&own),
                &[other.clone()],
                now,
                TIMEOUT
            ),
            Claim::Watch(own)
        );
        // Stale leases of others: the cluster is gone, restore.
        other.heartbeat_unix_ms = now - 60_000;
        assert_eq!(
            decide(None, Some(&inc("b")), None, &[other], now, TIMEOUT),
            Claim::Adopt
        );
    }

    #[test]
    fn a_released_lease_is_adopted_at_once_even_in_a_young_cluster() {
        // The bucket was created moments ago (inside the lease timeout), which alone reads
        // as a cluster forming; a lease given up on a clean stop says its owner is gone.
        let now = 100_000;
        let mut young = inc("b");
        young.created_unix_ms = now - 1_000;
        assert_eq!(
            decide(None, Some(&young), None, &[], now, TIMEOUT),
            Claim::Join
        );
        let released = lease("b", RELEASED);
        assert_eq!(
            decide(None, Some(&young), Some(&released), &[], now, TIMEOUT),
            Claim::Adopt
        );
        // Other live nodes still mean joining them.
        let mut other = lease("b", now - 1_000);
        other.node_id = 2;
        assert_eq!(
            decide(None, Some(&young), Some(&released), &[other], now, TIMEOUT),
            Claim::Join
        );
    }
    fn memory_bucket() -> Bucket {
        Bucket::from_store(
            "mem://",
            std::sync::Arc::new(object_store::memory::InMemory::new()),
        )
    }

    #[tokio::test]
    async fn a_watcher_adopts_when_the_owner_releases_its_lease() {
        let bucket = memory_bucket();
        let fresh = lease("b", now_unix_ms());
        write_lease(&bucket, &fresh).await.expect("write");
        let config = FencingConfig {
            lease_interval: Duration::from_millis(20),
            lease_timeout: Duration::from_secs(30),
        };
        let watcher = {
            let bucket = bucket.clone();
            tokio::spawn(async move { watch_lease(&bucket, fresh, None, &config).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        write_lease(&bucket, &lease("b", RELEASED))
            .await
            .expect("release");
        let claim = tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .expect("the watcher decided before the lease timeout")
            .expect("join")
            .expect("watch");
        assert_eq!(claim, Claim::Adopt);
    }

    #[tokio::test]
    async fn release_gives_up_only_the_lease_this_node_wrote_last() {
        let bucket = memory_bucket();
        write_lease(&bucket, &lease("b", now_unix_ms()))
            .await
            .expect("write");
        let task = spawn_lease(bucket.clone(), "b".into(), 1, Duration::from_secs(60));
        assert!(task.release().await.expect("release"));
        let now = read_lease(&bucket, 1).await.expect("read").expect("lease");
        assert!(now.released());

        // A replacement with this id renewed since: its lease is left alone.
        write_lease(&bucket, &lease("b", now_unix_ms()))
            .await
            .expect("write");
        let task = spawn_lease(bucket.clone(), "b".into(), 1, Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let theirs = lease("b", now_unix_ms() + 1);
        write_lease(&bucket, &theirs).await.expect("write");
        assert!(!task.release().await.expect("release"));
        assert_eq!(read_lease(&bucket, 1).await.expect("read"), Some(theirs));
    }
}
