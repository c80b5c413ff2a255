//! [`DurableFs`]: a local-directory bucket whose writes survive a power cut.
//!
//! object_store's `LocalFileSystem` renames a staged file into place but never fsyncs it,
//! so after a crash of the machine (not just the process) an object the broker already
//! recorded in a manifest, and purged from its WAL, could be empty or missing. This wrapper
//! delegates everything to it and, after each successful put, flushes the object's data,
//! then its directory entry, before reporting success.
//!
//! It then drops the object's pages from the page cache. A bucket object is written once
//! and read rarely (reads go through the broker's own chunk cache), so keeping it cached
//! only grows the page cache by every byte ingested, which evicts pages that matter and
//! costs a page allocation per 4 KiB written; dropped pages are reused by the next write.

use std::fs::File;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// A [`LocalFileSystem`] rooted at `root` whose puts are durable when they return.
#[derive(Debug)]
pub struct DurableFs {
    inner: LocalFileSystem,
    root: PathBuf,
}

impl DurableFs {
    pub fn new(root: &FsPath) -> Result<DurableFs> {
        Ok(DurableFs {
            inner: LocalFileSystem::new_with_prefix(root)?,
            root: root.to_path_buf(),
        })
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
        let result = self.inner.put_opts(location, payload, opts).await?;
        let file = self.inner.path_to_filesystem(location)?;
        tokio::task::spawn_blocking(move || make_durable(&file).map_err(|e| sync_error(file, e)))
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "DurableFs",
                source: Box::new(e),
            })??;
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
    async fn put_then_read_back_and_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = DurableFs::new(dir.path()).unwrap();
        let key = Path::from("a/b/object");
        store
            .put(&key, PutPayload::from_static(b"hello"))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("a/b/object")).unwrap(),
            b"hello"
        );
        let got = store.get(&key).await.unwrap().bytes().await.unwrap();
        assert_eq!(&got[..], b"hello");
        assert_eq!(store.get_range(&key, 1..3).await.unwrap(), &b"el"[..]);
        let listed: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(store.list(None))
            .await
            .unwrap();
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
        store.delete(&key).await.unwrap();
        assert!(store.head(&key).await.is_err());
    }
}
