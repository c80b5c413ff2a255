//! [`DurableFs`]: a local-directory bucket whose writes survive a power cut.
//!
//! object_store's `LocalFileSystem` renames a staged file into place but never fsyncs it,
//! so after a crash of the machine (not just the process) an object the broker already
//! recorded in a manifest, and purged from its WAL, could be empty or missing. This wrapper
//! delegates everything to it and, after each successful put, flushes the object's data,
//! then its directory entry, before reporting success.
//!
//! Overwrite puts (every chunk and snapshot) are written here directly: the payload's
//! parts go to a staging file with direct I/O (see [`crate::direct_write`]), or with
//! vectored writes where the filesystem has no direct I/O, which is synced and renamed
//! into place. Other puts (create-only, conditional) go to `LocalFileSystem` and are
//! synced after it returns.
//!
//! A bucket object is written once and read rarely (reads go through the broker's own
//! chunk cache), so it is kept out of the page cache: written around it, or its pages
//! dropped after the sync. Caching it would only grow the page cache by every byte
//! ingested, evicting pages that matter, and cost a page allocation per 4 KiB written.

use std::fs::File;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;

use crate::direct_write::{DirectWriter, Unsupported};
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// A [`LocalFileSystem`] rooted at `root` whose puts are durable when they return.
#[derive(Debug)]
pub struct DurableFs {
    inner: LocalFileSystem,
    root: PathBuf,
    direct: Arc<Direct>,
}

/// Overwrite puts' direct I/O, switched off for good once the filesystem refuses it.
#[derive(Debug)]
struct Direct {
    writer: DirectWriter,
    enabled: AtomicBool,
}

impl DurableFs {
    pub fn new(root: &FsPath) -> Result<DurableFs> {
        Ok(DurableFs {
            inner: LocalFileSystem::new_with_prefix(root)?,
            root: root.to_path_buf(),
            direct: Arc::new(Direct {
                writer: DirectWriter::default(),
                enabled: AtomicBool::new(true),
            }),
        })
    }

    /// Writes overwrite puts through the page cache, as on a filesystem without direct
    /// I/O (for tests of that path).
    pub fn without_direct_io(self) -> DurableFs {
        self.direct.enabled.store(false, Ordering::Relaxed);
        self
    }
}

impl std::fmt::Display for DurableFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DurableFs({})", self.root.display())
    }
}

/// Flushes `file`'s data and its directory entry, then drops its cached pages.
fn make_durable(file: &FsPath) -> std::io::Result<()> {
    let f = File::open(file)?;
    f.sync_data()?;
    drop_cached_pages(&f);
    if let Some(dir) = file.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Advises the kernel that `f`'s (clean, just synced) pages will not be read soon.
pub fn drop_cached_pages(f: &File) {
    // Only advice: a failure changes nothing but the page cache's contents.
    let _ = rustix::fs::fadvise(f, 0, None, rustix::fs::Advice::DontNeed);
}

/// Writes `payload` to `file` as a put with overwrite: into a staging file next to it
/// (`NAME#DIGITS`, which listings skip, as object_store's own staging files), synced, then
/// renamed over the target, whose directory is synced in turn.
fn overwrite(file: &FsPath, payload: &PutPayload, direct: &Direct) -> std::io::Result<()> {
    let dir = file
        .parent()
        .ok_or_else(|| std::io::Error::other("object path has no parent"))?;
    create_dirs_durably(dir)?;
    let mut staged = file.as_os_str().to_owned();
    staged.push(format!("#{}", rand::random::<u64>()));
    let staged = PathBuf::from(staged);
    let result = (|| {
        let parts: Vec<&[u8]> = payload.iter().map(|b| b.as_ref()).collect();
        let written = if direct.enabled.load(Ordering::Relaxed) {
            match direct.writer.write_new(&staged, &parts)? {
                Ok(f) => Some(f),
                Err(Unsupported) => {
                    tracing::info!(
                        dir = %dir.display(),
                        "the bucket's filesystem has no direct I/O; writing through the page cache"
                    );
                    direct.enabled.store(false, Ordering::Relaxed);
                    None
                }
            }
        } else {
            None
        };
        let f = match written {
            Some(f) => f,
            None => {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&staged)?;
                write_all_vectored(&mut f, &parts)?;
                f
            }
        };
        f.sync_data()?;
        drop_cached_pages(&f);
        std::fs::rename(&staged, file)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    result
}

/// Creates `dir` and its missing parents, syncing the directory that gained each new
/// entry, so a new directory (a new partition's first chunk) survives a power cut too.
fn create_dirs_durably(dir: &FsPath) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut d = dir;
    while !d.exists() {
        missing.push(d);
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    for created in missing {
        if let Some(parent) = created.parent() {
            File::open(parent)?.sync_all()?;
        }
    }
    Ok(())
}

/// Writes every buffer of `bufs`, in order, retrying short writes.
pub fn write_all_vectored(f: &mut File, bufs: &[&[u8]]) -> std::io::Result<()> {
    use std::io::{IoSlice, Write};
    let mut slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
    let mut rest = &mut slices[..];
    // Empty buffers are skipped up front so that a zero-length write means no progress.
    IoSlice::advance_slices(&mut rest, 0);
    while !rest.is_empty() {
        match f.write_vectored(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Runs blocking file work off the async workers.
async fn blocking(f: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| object_store::Error::Generic {
            store: "DurableFs",
            source: Box::new(e),
        })?
}

fn sync_error(path: PathBuf, source: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "DurableFs",
        source: format!("fsync {}: {source}", path.display()).into(),
    }
}

#[async_trait]
impl ObjectStore for DurableFs {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        if matches!(opts.mode, PutMode::Overwrite) && opts.attributes.is_empty() {
            // The common case (chunks, snapshots) is written here, with vectored writes
            // of the payload's parts (a chunk is many shared slices, not one buffer).
            let file = self.inner.path_to_filesystem(location)?;
            let direct = Arc::clone(&self.direct);
            blocking(move || overwrite(&file, &payload, &direct).map_err(|e| sync_error(file, e)))
                .await?;
            let meta = self.inner.head(location).await?;
            return Ok(PutResult {
                e_tag: meta.e_tag,
                version: None,
            });
        }
        let result = self.inner.put_opts(location, payload, opts).await?;
        let file = self.inner.path_to_filesystem(location)?;
        blocking(move || make_durable(&file).map_err(|e| sync_error(file, e))).await?;
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        // Not used by Chronik (objects are written whole); delegated as is.
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_range(&self, location: &Path, range: Range<u64>) -> Result<Bytes> {
        self.inner.get_range(location, range).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    async fn head(&self, location: &Path) -> Result<ObjectMeta> {
        self.inner.head(location).await
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_then_read_back_and_list_direct() {
        let dir = tempfile::tempdir().expect("tempdir");
        put_then_read_back_and_list(&dir, DurableFs::new(dir.path()).expect("open")).await;
    }

    #[tokio::test]
    async fn put_then_read_back_and_list_buffered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DurableFs::new(dir.path())
            .expect("open")
            .without_direct_io();
        put_then_read_back_and_list(&dir, store).await;
    }

    async fn put_then_read_back_and_list(dir: &tempfile::TempDir, store: DurableFs) {
        let key = Path::from("a/b/object");
        store
            .put(&key, PutPayload::from_static(b"hello"))
            .await
            .expect("store call");
        assert_eq!(
            std::fs::read(dir.path().join("a/b/object")).expect("read back"),
            b"hello"
        );
        let got = store
            .get(&key)
            .await
            .expect("store call")
            .bytes()
            .await
            .expect("store call");
        assert_eq!(&got[..], b"hello");
        assert_eq!(
            store.get_range(&key, 1..3).await.expect("store call"),
            &b"el"[..]
        );
        let listed: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(store.list(None))
            .await
            .expect("store call");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].location, key);
        // Create-only puts keep their semantics.
        let again = store
            .put_opts(
                &key,
                PutPayload::from_static(b"x"),
                PutOptions::from(object_store::PutMode::Create),
            )
            .await;
        assert!(matches!(
            again,
            Err(object_store::Error::AlreadyExists { .. })
        ));
        // A payload of several parts is written whole, with no staging file left over.
        let parts = Path::from("a/parts");
        let payload: PutPayload = vec![
            Bytes::from_static(b"ab"),
            Bytes::new(),
            Bytes::from_static(b"cd"),
        ]
        .into_iter()
        .collect();
        let put = store.put(&parts, payload).await.expect("store call");
        let meta = store.head(&parts).await.expect("store call");
        assert_eq!(
            put.e_tag, meta.e_tag,
            "the put answers the etag a head reads"
        );
        assert_eq!(
            std::fs::read(dir.path().join("a/parts")).expect("read back"),
            b"abcd"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path().join("a"))
            .expect("list dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        store.delete(&key).await.expect("store call");
        assert!(store.head(&key).await.is_err());
    }
}
