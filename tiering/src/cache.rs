//! The local read cache: decompressed chunk frames (or whole objects) kept in memory,
//! bounded in bytes, evicted least-recently-used first.
//!
//! Entries are keyed by (object key, frame index); objects are immutable, so an entry never
//! goes stale (a deleted object's entries simply age out, or [`ReadCache::invalidate`]
//! drops them). Concurrent [`ReadCache::get_or_load`] calls for the same entry share one
//! load: a cold partition read by many consumers costs one GET per frame.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::TieringError;

/// The frame number to use for an entry that holds a whole object.
pub const WHOLE_OBJECT: u32 = u32::MAX;

type CacheKey = (String, u32);

/// Counters of a [`ReadCache`]. `hits` includes `coalesced` (callers that waited for
/// another caller's load of the same entry instead of loading it themselves).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub coalesced: u64,
    pub evictions: u64,
    pub entries: u64,
    pub bytes: u64,
    pub max_bytes: u64,
}

#[derive(Default)]
struct State {
    map: HashMap<CacheKey, (Bytes, u64)>,
    lru: BTreeMap<u64, CacheKey>,
    bytes: u64,
    tick: u64,
}

struct Inner {
    max_bytes: u64,
    state: Mutex<State>,
    inflight: Mutex<HashMap<CacheKey, Arc<tokio::sync::Mutex<()>>>>,
    hits: AtomicU64,
    misses: AtomicU64,
    coalesced: AtomicU64,
    evictions: AtomicU64,
}

/// A byte-bounded in-memory LRU cache of object frames. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct ReadCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache")
            .field("stats", &self.stats())
            .finish()
    }
}

/// Removes the in-flight marker when the loading caller finishes or is cancelled.
struct InflightGuard<'a> {
    cache: &'a Inner,
    key: CacheKey,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        let mut inflight = self.cache.inflight.lock();
        if inflight
            .get(&self.key)
            .is_some_and(|l| Arc::ptr_eq(l, &self.lock))
        {
            inflight.remove(&self.key);
        }
    }
}

impl ReadCache {
    /// A cache holding at most `max_bytes` of entry data.
    pub fn new(max_bytes: u64) -> ReadCache {
        ReadCache {
            inner: Arc::new(Inner {
                max_bytes,
                state: Mutex::new(State::default()),
                inflight: Mutex::new(HashMap::new()),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                coalesced: AtomicU64::new(0),
                evictions: AtomicU64::new(0),
            }),
        }
    }

    /// The cached entry, if any (marks it recently used; counts nothing).
    pub fn get(&self, key: &str, frame: u32) -> Option<Bytes> {
        let mut st = self.inner.state.lock();
        let k = (key.to_string(), frame);
        let tick = st.tick + 1;
        let (value, old_tick) = match st.map.get_mut(&k) {
            Some((v, t)) => {
                let old = *t;
                *t = tick;
                (v.clone(), old)
            }
            None => return None,
        };
        st.tick = tick;
        st.lru.remove(&old_tick);
        st.lru.insert(tick, k);
        Some(value)
    }

    /// Caches an entry, evicting least-recently-used ones to stay within the bound. An
    /// entry larger than the whole cache is not kept.
    pub fn insert(&self, key: &str, frame: u32, value: Bytes) {
        let size = value.len() as u64;
        if size > self.inner.max_bytes {
            return;
        }
        let mut st = self.inner.state.lock();
        let k = (key.to_string(), frame);
        if let Some((old, t)) = st.map.remove(&k) {
            st.bytes -= old.len() as u64;
            st.lru.remove(&t);
        }
        while st.bytes + size > self.inner.max_bytes {
            let Some((_, victim)) = st.lru.pop_first() else {
                break;
            };
            if let Some((v, _)) = st.map.remove(&victim) {
                st.bytes -= v.len() as u64;
                self.inner.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        st.tick += 1;
        let tick = st.tick;
        st.lru.insert(tick, k.clone());
        st.map.insert(k, (value, tick));
        st.bytes += size;
    }

    /// Drops every cached frame of `key` (after the object is deleted or replaced).
    pub fn invalidate(&self, key: &str) {
        let mut st = self.inner.state.lock();
        let victims: Vec<CacheKey> = st.map.keys().filter(|(k, _)| k == key).cloned().collect();
        for k in victims {
            if let Some((v, t)) = st.map.remove(&k) {
                st.bytes -= v.len() as u64;
                st.lru.remove(&t);
            }
        }
    }

    /// The cached entry, or the result of `loader`, which is then cached. Concurrent calls
    /// for the same entry wait for one load instead of each loading; if that load fails,
    /// the next waiter loads itself. Errors are not cached.
    pub async fn get_or_load<F, Fut>(
        &self,
        key: &str,
        frame: u32,
        loader: F,
    ) -> Result<Bytes, TieringError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, TieringError>>,
    {
        if let Some(v) = self.get(key, frame) {
            self.inner.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(v);
        }
        let k = (key.to_string(), frame);
        let lock = self
            .inner
            .inflight
            .lock()
            .entry(k.clone())
            .or_default()
            .clone();
        let guard = InflightGuard {
            cache: &self.inner,
            key: k,
            lock: lock.clone(),
        };
        let _loading = lock.lock().await;
        if let Some(v) = self.get(key, frame) {
            self.inner.hits.fetch_add(1, Ordering::Relaxed);
            self.inner.coalesced.fetch_add(1, Ordering::Relaxed);
            return Ok(v);
        }
        self.inner.misses.fetch_add(1, Ordering::Relaxed);
        let value = loader().await?;
        self.insert(key, frame, value.clone());
        drop(guard);
        Ok(value)
    }

    pub fn stats(&self) -> CacheStats {
        let (entries, bytes) = {
            let st = self.inner.state.lock();
            (st.map.len() as u64, st.bytes)
        };
        CacheStats {
            hits: self.inner.hits.load(Ordering::Relaxed),
            misses: self.inner.misses.load(Ordering::Relaxed),
            coalesced: self.inner.coalesced.load(Ordering::Relaxed),
            evictions: self.inner.evictions.load(Ordering::Relaxed),
            entries,
            bytes,
            max_bytes: self.inner.max_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn val(n: usize) -> Bytes {
        Bytes::from(vec![7u8; n])
    }

    #[test]
    fn evicts_least_recently_used_within_the_byte_bound() {
        let c = ReadCache::new(100);
        c.insert("a", 0, val(40));
        c.insert("b", 0, val(40));
        assert!(c.get("a", 0).is_some()); // a is now newer than b
        c.insert("c", 0, val(40));
        assert!(c.get("b", 0).is_none(), "b was least recently used");
        assert!(c.get("a", 0).is_some() && c.get("c", 0).is_some());
        let s = c.stats();
        assert_eq!((s.entries, s.bytes, s.evictions), (2, 80, 1));
        c.insert("huge", 0, val(101));
        assert!(
            c.get("huge", 0).is_none(),
            "larger than the cache: not kept"
        );
        c.insert("a", 0, val(10));
        assert_eq!(c.stats().bytes, 50, "replacing an entry frees its old size");
        c.insert("a", 1, val(10));
        c.invalidate("a");
        assert_eq!(c.stats().entries, 1);
        assert_eq!(c.stats().bytes, 40);
    }

    #[tokio::test]
    async fn counts_hits_and_misses_and_does_not_cache_errors() {
        let c = ReadCache::new(1000);
        let v = c
            .get_or_load("k", 0, || async { Ok(val(5)) })
            .await
            .expect("load");
        assert_eq!(v.len(), 5);
        let again = c
            .get_or_load("k", 0, || async { panic!("must not load a cached entry") })
            .await
            .expect("hit");
        assert_eq!(again, v);
        let err = c
            .get_or_load("e", 0, || async {
                Err(TieringError::NotFound { key: "e".into() })
            })
            .await;
        assert!(err.is_err());
        let ok = c.get_or_load("e", 0, || async { Ok(val(1)) }).await;
        assert!(ok.is_ok(), "errors are not cached");
        let s = c.stats();
        assert_eq!((s.hits, s.misses), (1, 3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn coalesces_concurrent_loads() {
        let c = ReadCache::new(1 << 20);
        let loads = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let c = c.clone();
            let loads = loads.clone();
            tasks.push(tokio::spawn(async move {
                c.get_or_load("obj", 3, || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(val(100))
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.expect("join").expect("load").len(), 100);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        let s = c.stats();
        assert_eq!((s.misses, s.hits), (1, 15));
        assert!(s.coalesced >= 1);
        assert!(
            c.inner.inflight.lock().is_empty(),
            "in-flight markers are removed"
        );
    }

    #[tokio::test]
    async fn a_cancelled_load_does_not_wedge_the_entry() {
        let c = ReadCache::new(1000);
        let slow = c.get_or_load("k", 0, || async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(val(1))
        });
        assert!(tokio::time::timeout(Duration::from_millis(20), slow)
            .await
            .is_err());
        let v = tokio::time::timeout(
            Duration::from_secs(5),
            c.get_or_load("k", 0, || async { Ok(val(2)) }),
        )
        .await
        .expect("not wedged")
        .expect("load");
        assert_eq!(v.len(), 2);
    }
}
