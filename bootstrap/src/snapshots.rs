//! The node's [`SnapshotStore`]: every group snapshot is written to a local file (atomically:
//! temp file, fsync, rename, fsync of the directory) and then copied to the bucket under
//! `snapshots/group-{group:020}/{last_log_index:020}.snap`, keeping the newest few there.
//!
//! Loading prefers the local file (it is never older than the bucket's newest); a node
//! whose data directory is gone loads the newest snapshot in the bucket that decodes, and
//! falls back to older ones when the newest is corrupt.
//!
//! A failed upload does not fail the snapshot: the local copy is durable, so the log can be
//! purged, and the next snapshot is uploaded again. While the bucket is unreachable the
//! disaster-recovery point therefore ages; `snapshot_upload_failures` counts it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};

use chronik_metastore::snapshot_store::{SnapshotStore, StoredSnapshot};
use chronik_metastore::state_machine::decode_snapshot;
use chronik_metastore::types::GroupId;
use chronik_tiering::Bucket;

#[derive(Default, Debug)]
pub struct SnapshotStats {
    pub saved: AtomicU64,
    pub uploaded: AtomicU64,
    pub upload_failures: AtomicU64,
    pub last_upload_unix_ms: AtomicU64,
}

pub struct NodeSnapshots {
    dir: PathBuf,
    store: Arc<dyn ObjectStore>,
    keep_in_bucket: usize,
    pub stats: Arc<SnapshotStats>,
}

fn group_prefix(group: GroupId) -> String {
    format!("snapshots/group-{group:020}/")
}

fn local_file(dir: &Path, group: GroupId) -> PathBuf {
    dir.join(format!("group-{group:020}.snap"))
}

fn write_atomically(dir: &Path, group: GroupId, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let target = local_file(dir, group);
    let tmp = target.with_extension("snap.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &target)?;
    std::fs::File::open(dir)?.sync_all()
}

impl NodeSnapshots {
    pub fn new(dir: PathBuf, bucket: &Bucket, keep_in_bucket: usize) -> Self {
        Self {
            dir,
            store: bucket.store().clone(),
            keep_in_bucket: keep_in_bucket.max(1),
            stats: Arc::new(SnapshotStats::default()),
        }
    }

    async fn upload(
        &self,
        group: GroupId,
        snapshot: &StoredSnapshot,
    ) -> Result<(), object_store::Error> {
        let key = ObjectPath::from(format!(
            "{}{:020}.snap",
            group_prefix(group),
            snapshot.last_log_index
        ));
        self.store
            .put(&key, PutPayload::from(snapshot.data.clone()))
            .await?;
        let mut keys: Vec<ObjectPath> = self
            .store
            .list(Some(&ObjectPath::from(group_prefix(group))))
            .map_ok(|m| m.location)
            .try_collect()
            .await?;
        keys.sort();
        let excess = keys.len().saturating_sub(self.keep_in_bucket);
        for old in keys.into_iter().take(excess) {
            self.store.delete(&old).await?;
        }
        Ok(())
    }

    async fn load_from_bucket(&self, group: GroupId) -> Result<Option<StoredSnapshot>, String> {
        let prefix = ObjectPath::from(group_prefix(group));
        let mut keys: Vec<ObjectPath> = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| format!("list {prefix}: {e}"))?;
        keys.sort();
        for key in keys.into_iter().rev() {
            let data = match self.store.get(&key).await {
                Ok(r) => r.bytes().await.map_err(|e| format!("read {key}: {e}"))?,
                Err(e) => return Err(format!("get {key}: {e}")),
            };
            match decode_snapshot(&data) {
                Ok((meta, _)) => {
                    tracing::info!(group, %key, "restoring group from bucket snapshot");
                    return Ok(Some(StoredSnapshot {
                        last_log_index: meta.last_log_id.map(|l| l.index).unwrap_or(0),
                        data,
                    }));
                }
                Err(err) => {
                    tracing::error!(group, %key, %err, "corrupt snapshot in bucket; trying the previous one")
                }
            }
        }
        Ok(None)
    }
}

impl SnapshotStore for NodeSnapshots {
    fn save(&self, group: GroupId, snapshot: StoredSnapshot) -> BoxFuture<'_, Result<(), String>> {
        async move {
            let dir = self.dir.clone();
            let data = snapshot.data.clone();
            tokio::task::spawn_blocking(move || write_atomically(&dir, group, &data))
                .await
                .map_err(|e| format!("snapshot write task: {e}"))?
                .map_err(|e| format!("write snapshot of group {group} in {}: {e}", self.dir.display()))?;
            self.stats.saved.fetch_add(1, Ordering::Relaxed);
            match self.upload(group, &snapshot).await {
                Ok(()) => {
                    self.stats.uploaded.fetch_add(1, Ordering::Relaxed);
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0);
                    self.stats.last_upload_unix_ms.store(now, Ordering::Relaxed);
                }
                Err(err) => {
                    self.stats.upload_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(group, %err, "snapshot upload failed; the local copy is durable, the next snapshot retries");
                }
            }
            Ok(())
        }
        .boxed()
    }

    fn load(&self, group: GroupId) -> BoxFuture<'_, Result<Option<StoredSnapshot>, String>> {
        async move {
            let path = local_file(&self.dir, group);
            let local = tokio::task::spawn_blocking(move || match std::fs::read(&path) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("read {}: {e}", path.display())),
            })
            .await
            .map_err(|e| format!("snapshot read task: {e}"))??;
            if let Some(data) = local {
                match decode_snapshot(&data) {
                    Ok((meta, _)) => {
                        return Ok(Some(StoredSnapshot {
                            last_log_index: meta.last_log_id.map(|l| l.index).unwrap_or(0),
                            data: Bytes::from(data),
                        }))
                    }
                    Err(err) => {
                        tracing::error!(group, %err, "local snapshot is corrupt; trying the bucket")
                    }
                }
            }
            self.load_from_bucket(group).await
        }
        .boxed()
    }
}
