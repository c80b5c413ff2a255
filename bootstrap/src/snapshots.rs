//! The node's [`SnapshotStore`]: every group snapshot is wrapped in the bucket snapshot
//! envelope (zstd, CRC, the cluster incarnation; see `chronik_tiering::snapshot`), written to
//! a local file (atomically: temp file, fsync, rename, fsync of the directory) and then
//! copied to the bucket under `snapshots/group-{group:020}/{last_log_index:020}.snap`,
//! keeping the newest few there.
//!
//! Loading prefers the local file (it is never older than the bucket's newest); a node
//! whose data directory is gone loads the newest snapshot in the bucket that is intact and
//! of its own incarnation, and falls back to older ones when the newest is not.
//!
//! A failed upload does not fail the snapshot: the local copy is durable, so the log can be
//! purged. The failed upload is kept and retried ([`NodeSnapshots::retry_pending_uploads`],
//! every snapshot interval) until it or a newer snapshot of the group reaches the bucket
//! (a snapshot loaded from the local file at start is uploaded again the same way):
//! a group that stops changing (the metadata group after a topic is created) takes no new
//! snapshot, so waiting for the next one would leave its bucket copy stale for good. While
//! the bucket is unreachable the disaster-recovery point ages; `snapshot_upload_failures`
//! counts it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;

use chronik_metastore::snapshot_store::{SnapshotStore, StoredSnapshot};
use chronik_metastore::state_machine::decode_snapshot;
use chronik_metastore::types::GroupId;
use chronik_tiering::snapshot::{decode_snapshot_named, wrap_snapshot, WrappedSnapshot};
use chronik_tiering::{layout, Bucket};

#[derive(Default, Debug)]
pub struct SnapshotStats {
    pub saved: AtomicU64,
    pub uploaded: AtomicU64,
    pub upload_failures: AtomicU64,
    pub last_upload_unix_ms: AtomicU64,
}

pub struct NodeSnapshots {
    dir: PathBuf,
    incarnation: String,
    store: Arc<dyn ObjectStore>,
    keep_in_bucket: usize,
    pub stats: Arc<SnapshotStats>,
    /// Per group, the newest snapshot not known to be in the bucket: its upload failed, or
    /// it was loaded from the local file at start (a crash may have cut its upload short).
    /// (last log index, wrapped bytes).
    pending_uploads: std::sync::Mutex<BTreeMap<GroupId, (u64, WrappedSnapshot)>>,
    /// Wakes the uploader when a snapshot is queued.
    upload_wanted: tokio::sync::Notify,
    written: LocalIndex,
    /// Which groups' snapshots this node uploads: in a cluster, only the group's leader
    /// does (every replica holds the same state); unset, every group's.
    upload_filter: std::sync::OnceLock<UploadFilter>,
}

/// Says whether this node should upload a group's snapshots now.
pub type UploadFilter = Arc<dyn Fn(GroupId) -> bool + Send + Sync>;

fn local_file(dir: &Path, group: GroupId) -> PathBuf {
    dir.join(format!("group-{group:020}.snap"))
}

/// The newest snapshot index written locally per group; held while a group's snapshot is
/// written, so two saves of one group (a snapshot built here and one installed by the
/// leader) never race on the same temporary file, and an older one never replaces a newer.
type LocalIndex = Arc<std::sync::Mutex<BTreeMap<GroupId, u64>>>;

fn write_atomically(dir: &Path, group: GroupId, data: &WrappedSnapshot) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let target = local_file(dir, group);
    let tmp = target.with_extension("snap.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    let parts: Vec<&[u8]> = data.parts().iter().map(|p| p.as_ref()).collect();
    chronik_tiering::durable_fs::write_all_vectored(&mut f, &parts)?;
    f.sync_all()?;
    // Read back only at start-up: its pages need not stay cached.
    chronik_tiering::drop_cached_pages(&f);
    std::fs::rename(&tmp, &target)?;
    std::fs::File::open(dir)?.sync_all()
}

impl NodeSnapshots {
    pub fn new(dir: PathBuf, bucket: &Bucket, keep_in_bucket: usize, incarnation: String) -> Self {
        Self {
            dir,
            incarnation,
            store: bucket.store().clone(),
            keep_in_bucket: keep_in_bucket.max(1),
            stats: Arc::new(SnapshotStats::default()),
            pending_uploads: Default::default(),
            upload_wanted: tokio::sync::Notify::new(),
            upload_filter: std::sync::OnceLock::new(),
            written: Default::default(),
        }
    }

    pub fn set_upload_filter(&self, filter: UploadFilter) {
        let _ = self.upload_filter.set(filter);
    }

    fn uploads(&self, group: GroupId) -> bool {
        self.upload_filter.get().is_none_or(|f| f(group))
    }

    /// Uploads, and records the outcome: a failure is kept for a retry, a success drops
    /// any older pending retry of the group.
    async fn upload_or_keep(&self, group: GroupId, index: u64, wrapped: WrappedSnapshot) {
        let result = self.upload(group, index, wrapped.clone()).await;
        let mut pending = self
            .pending_uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                if pending.get(&group).is_some_and(|(i, _)| *i <= index) {
                    pending.remove(&group);
                }
                self.stats.uploaded.fetch_add(1, Ordering::Relaxed);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                self.stats.last_upload_unix_ms.store(now, Ordering::Relaxed);
            }
            Err(err) => {
                self.stats.upload_failures.fetch_add(1, Ordering::Relaxed);
                if pending.get(&group).is_none_or(|(i, _)| *i <= index) {
                    pending.insert(group, (index, wrapped));
                }
                tracing::warn!(group, %err, "snapshot upload failed; the local copy is durable, the upload is retried");
            }
        }
    }

    /// Waits until a snapshot is queued for upload, or `timeout` passes.
    pub async fn wait_for_uploads(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.upload_wanted.notified()).await;
    }

    /// Uploads what is queued and retries what failed (the newest snapshot of each group).
    pub async fn retry_pending_uploads(&self) {
        let pending: Vec<(GroupId, u64, WrappedSnapshot)> = self
            .pending_uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(g, (i, b))| (*g, *i, b.clone()))
            .collect();
        for (group, index, wrapped) in pending {
            self.upload_or_keep(group, index, wrapped).await;
        }
    }

    /// Unwraps a stored snapshot: intact, of this incarnation, and a state machine snapshot.
    fn unwrap(&self, key: &str, data: &[u8]) -> Result<StoredSnapshot, String> {
        let (_, _, incarnation, payload) =
            decode_snapshot_named(key, data).map_err(|e| e.to_string())?;
        if incarnation != self.incarnation {
            return Err(format!(
                "{key} belongs to cluster incarnation {incarnation}, not ours ({})",
                self.incarnation
            ));
        }
        let (meta, _) = decode_snapshot(&payload).map_err(|e| format!("{key}: {e}"))?;
        Ok(StoredSnapshot {
            last_log_index: meta.last_log_id.map(|l| l.index).unwrap_or(0),
            parts: vec![payload],
        })
    }

    async fn upload(
        &self,
        group: GroupId,
        index: u64,
        wrapped: WrappedSnapshot,
    ) -> Result<(), object_store::Error> {
        let key = ObjectPath::from(layout::snapshot_key(group, index));
        self.store.put(&key, wrapped.payload()).await?;
        let mut keys: Vec<ObjectPath> = self
            .store
            .list(Some(&ObjectPath::from(layout::snapshot_prefix(group))))
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
        let prefix = ObjectPath::from(layout::snapshot_prefix(group));
        let mut keys: Vec<ObjectPath> = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| format!("list {prefix}: {e}"))?;
        keys.sort();
        let found = keys.len();
        for key in keys.into_iter().rev() {
            let data = match self.store.get(&key).await {
                Ok(r) => r.bytes().await.map_err(|e| format!("read {key}: {e}"))?,
                Err(e) => return Err(format!("get {key}: {e}")),
            };
            match self.unwrap(key.as_ref(), &data) {
                Ok(snapshot) => {
                    tracing::info!(group, %key, "restoring group from bucket snapshot");
                    return Ok(Some(snapshot));
                }
                Err(err) => {
                    tracing::error!(group, %key, %err, "unusable snapshot in bucket; trying the previous one")
                }
            }
        }
        if found > 0 {
            // Starting empty would silently drop the group's data: refuse instead.
            return Err(format!(
                "none of the {found} snapshots of group {group} in the bucket is usable (see the errors above)"
            ));
        }
        Ok(None)
    }
}

impl SnapshotStore for NodeSnapshots {
    fn save(&self, group: GroupId, snapshot: StoredSnapshot) -> BoxFuture<'_, Result<(), String>> {
        async move {
            let index = snapshot.last_log_index;
            let wrapped = self.write_local(group, index, snapshot.parts).await?;
            self.stats.saved.fetch_add(1, Ordering::Relaxed);
            // The local copy makes the snapshot durable, which is all the log purge needs;
            // the bucket copy is uploaded in the background, so a slow bucket never stalls
            // the group's state machine (openraft applies and snapshots on one task).
            if self.uploads(group) {
                let mut pending = self
                    .pending_uploads
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if pending.get(&group).is_none_or(|(i, _)| *i <= index) {
                    pending.insert(group, (index, wrapped));
                }
            }
            self.upload_wanted.notify_one();
            Ok(())
        }
        .boxed()
    }

    fn load(&self, group: GroupId) -> BoxFuture<'_, Result<Option<StoredSnapshot>, String>> {
        async move {
            match self.load_local(group).await? {
                Some(snapshot) => Ok(Some(snapshot)),
                None => self.load_from_bucket(group).await,
            }
        }
        .boxed()
    }
}

impl NodeSnapshots {
    /// Keeps a snapshot restored from the bucket as the group's local snapshot, so that a
    /// restart (which trusts only local state once the WAL has entries) finds it.
    pub async fn keep_local(
        &self,
        group: GroupId,
        snapshot: &StoredSnapshot,
    ) -> Result<(), String> {
        self.write_local(group, snapshot.last_log_index, snapshot.parts.clone())
            .await
            .map(|_| ())
    }

    /// Wraps and writes a snapshot as the group's local file, unless a newer one is there
    /// already; returns the wrapped bytes (what the bucket gets too).
    async fn write_local(
        &self,
        group: GroupId,
        index: u64,
        data: Vec<Bytes>,
    ) -> Result<WrappedSnapshot, String> {
        let (dir, incarnation, written) = (
            self.dir.clone(),
            self.incarnation.clone(),
            self.written.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let wrapped = wrap_snapshot(group, index, &incarnation, data);
            let mut newest = written.lock().unwrap_or_else(|e| e.into_inner());
            if newest.get(&group).is_some_and(|i| *i > index) {
                return Ok(wrapped);
            }
            write_atomically(&dir, group, &wrapped)?;
            newest.insert(group, index);
            Ok::<_, std::io::Error>(wrapped)
        })
        .await
        .map_err(|e| format!("snapshot write task: {e}"))?
        .map_err(|e| {
            format!(
                "write snapshot of group {group} in {}: {e}",
                self.dir.display()
            )
        })
    }

    /// The group's snapshot in the data directory, if there is a usable one.
    pub async fn load_local(&self, group: GroupId) -> Result<Option<StoredSnapshot>, String> {
        let path = local_file(&self.dir, group);
        let shown = path.display().to_string();
        let local = tokio::task::spawn_blocking(move || match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("read {}: {e}", path.display())),
        })
        .await
        .map_err(|e| format!("snapshot read task: {e}"))??;
        let Some(data) = local else {
            return Ok(None);
        };
        match self.unwrap(&shown, &data) {
            Ok(snapshot) => {
                self.written
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(group, snapshot.last_log_index);
                // The node may have died before this snapshot reached the bucket.
                self.pending_uploads
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(group)
                    .or_insert((snapshot.last_log_index, Bytes::from(data).into()));
                Ok(Some(snapshot))
            }
            Err(err) => {
                tracing::error!(group, %err, "local snapshot is unusable");
                Ok(None)
            }
        }
    }
}
