//! [`FailingStore`]: an [`ObjectStore`] wrapper that injects faults, for tests here and
//! for the broker's outage tests (in the spirit of SlateDB's `FailingObjectStore` and
//! Neon's `UnreliableWrapper`).
//!
//! Faults, checked in this order on every call (list streams included, at their start):
//! added latency; "unreachable" (every call fails until switched back); the next N calls
//! fail; each call fails with probability p from a seeded RNG. Injected errors are
//! `object_store::Error::Generic`, which [`crate::Bucket`] treats as transient.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug)]
struct Controls {
    latency_us: AtomicU64,
    unreachable: AtomicBool,
    fail_next: AtomicU64,
    /// (probability, rng)
    random: Mutex<(f64, StdRng)>,
    calls: AtomicU64,
    injected: AtomicU64,
}

impl Controls {
    async fn gate(&self, op: &'static str) -> object_store::Result<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let latency = self.latency_us.load(Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(Duration::from_micros(latency)).await;
        }
        let reason = if self.unreachable.load(Ordering::Relaxed) {
            Some("store unreachable")
        } else if self
            .fail_next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            Some("injected failure")
        } else {
            let mut random = self.random.lock();
            let p = random.0;
            (p > 0.0 && random.1.gen_bool(p.min(1.0))).then_some("injected random failure")
        };
        match reason {
            None => Ok(()),
            Some(reason) => {
                self.injected.fetch_add(1, Ordering::Relaxed);
                Err(object_store::Error::Generic {
                    store: "FailingStore",
                    source: format!("{reason} ({op})").into(),
                })
            }
        }
    }
}

/// A fault-injecting wrapper around another store. Clones share their controls, so a test
/// keeps one clone to steer while the bucket uses another.
#[derive(Clone, Debug)]
pub struct FailingStore {
    inner: Arc<dyn ObjectStore>,
    ctl: Arc<Controls>,
}

impl std::fmt::Display for FailingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FailingStore({})", self.inner)
    }
}

impl FailingStore {
    /// A wrapper that injects nothing until told to.
    pub fn new(inner: Arc<dyn ObjectStore>) -> FailingStore {
        FailingStore {
            inner,
            ctl: Arc::new(Controls {
                latency_us: AtomicU64::new(0),
                unreachable: AtomicBool::new(false),
                fail_next: AtomicU64::new(0),
                random: Mutex::new((0.0, StdRng::seed_from_u64(0))),
                calls: AtomicU64::new(0),
                injected: AtomicU64::new(0),
            }),
        }
    }

    /// This wrapper as a shared store, e.g. for [`crate::Bucket::from_store`].
    pub fn as_store(&self) -> Arc<dyn ObjectStore> {
        Arc::new(self.clone())
    }

    /// The next `n` calls fail.
    pub fn fail_next(&self, n: u64) {
        self.ctl.fail_next.store(n, Ordering::Relaxed);
    }

    /// Each call fails with probability `p` (0 turns it off), drawn from an RNG seeded with
    /// `seed` so a failing run can be replayed.
    pub fn set_failure_rate(&self, p: f64, seed: u64) {
        *self.ctl.random.lock() = (p.clamp(0.0, 1.0), StdRng::seed_from_u64(seed));
    }

    /// Every call first sleeps this long.
    pub fn set_latency(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.ctl.latency_us.store(us, Ordering::Relaxed);
    }

    /// While set, every call fails (an outage); clearing it ends the outage.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.ctl.unreachable.store(unreachable, Ordering::Relaxed);
    }

    /// Calls seen, failed or not.
    pub fn calls(&self) -> u64 {
        self.ctl.calls.load(Ordering::Relaxed)
    }

    /// Calls failed on purpose.
    pub fn injected_failures(&self) -> u64 {
        self.ctl.injected.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl ObjectStore for FailingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.ctl.gate("put").await?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.ctl.gate("put_multipart").await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.ctl.gate("get").await?;
        self.inner.get_opts(location, options).await
    }

    async fn get_range(&self, location: &Path, range: Range<u64>) -> object_store::Result<Bytes> {
        self.ctl.gate("get_range").await?;
        self.inner.get_range(location, range).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.ctl.gate("get_ranges").await?;
        self.inner.get_ranges(location, ranges).await
    }

    async fn head(&self, location: &Path) -> object_store::Result<ObjectMeta> {
        self.ctl.gate("head").await?;
        self.inner.head(location).await
    }

    async fn delete(&self, location: &Path) -> object_store::Result<()> {
        self.ctl.gate("delete").await?;
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let ctl = self.ctl.clone();
        let inner = self.inner.list(prefix);
        futures::stream::once(async move {
            match ctl.gate("list").await {
                Ok(()) => inner,
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
            }
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.ctl.gate("list").await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.ctl.gate("copy").await?;
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
        self.ctl.gate("copy").await?;
        self.inner.copy_if_not_exists(from, to).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn injects_the_configured_faults() {
        let fs = FailingStore::new(Arc::new(InMemory::new()));
        let store = fs.as_store();
        let p = Path::from("a");
        store
            .put(&p, PutPayload::from_static(b"x"))
            .await
            .expect("clean");
        fs.fail_next(2);
        assert!(store.head(&p).await.is_err());
        assert!(store.list(None).try_collect::<Vec<_>>().await.is_err());
        assert!(store.head(&p).await.is_ok());
        fs.set_unreachable(true);
        for _ in 0..5 {
            assert!(store.get(&p).await.is_err());
        }
        fs.set_unreachable(false);
        assert!(store.get(&p).await.is_ok());
        assert_eq!(fs.injected_failures(), 7);

        // A seeded failure rate replays the same pattern.
        let pattern = |seed| {
            let fs = fs.clone();
            let store = store.clone();
            let p = p.clone();
            async move {
                fs.set_failure_rate(0.5, seed);
                let mut out = Vec::new();
                for _ in 0..32 {
                    out.push(store.head(&p).await.is_ok());
                }
                fs.set_failure_rate(0.0, 0);
                out
            }
        };
        let a = pattern(9).await;
        assert_eq!(a, pattern(9).await);
        assert!(a.iter().any(|ok| *ok) && a.iter().any(|ok| !*ok));
    }

    #[tokio::test]
    async fn adds_latency() {
        let fs = FailingStore::new(Arc::new(InMemory::new()));
        fs.set_latency(Duration::from_millis(30));
        let start = std::time::Instant::now();
        let _ = fs.head(&Path::from("missing")).await;
        assert!(start.elapsed() >= Duration::from_millis(30));
    }
}
