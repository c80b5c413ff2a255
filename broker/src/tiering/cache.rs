//! A size-bounded cache of decoded chunks for reads of tiered offsets, least recently used
//! first out. Concurrent reads of the same chunk share one load.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::OnceCell;

use super::StoredBatch;

type Slot = Arc<OnceCell<Arc<Vec<StoredBatch>>>>;

/// `last_used` of a chunk a reader has moved past: evicted first.
const DEMOTED: u64 = 0;
/// `last_used` of a chunk loaded ahead and not read yet: evicted next.
const PRELOADED: u64 = 1;

struct Entry {
    slot: Slot,
    bytes: usize,
    last_used: u64,
}

pub struct ChunkCache {
    max_bytes: usize,
    inner: Mutex<Inner>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    bytes: usize,
    clock: u64,
}

impl ChunkCache {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            inner: Mutex::new(Inner {
                // Reads count from above DEMOTED and PRELOADED.
                clock: PRELOADED,
                ..Inner::default()
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }

    /// Whether `bytes` more fit without evicting anything but chunks readers have moved
    /// past ([`ChunkCache::demote`]).
    pub fn has_room(&self, bytes: usize) -> bool {
        let inner = self.inner.lock();
        let kept: usize = inner
            .entries
            .values()
            .filter(|e| e.last_used != DEMOTED)
            .map(|e| e.bytes)
            .sum();
        kept + bytes <= self.max_bytes
    }

    /// Marks `key` as the first to evict: a sequential reader has moved past it.
    pub fn demote(&self, key: &str) {
        if let Some(e) = self.inner.lock().entries.get_mut(key) {
            e.last_used = DEMOTED;
        }
    }

    pub async fn get_or_load<F>(&self, key: &str, load: F) -> Result<Arc<Vec<StoredBatch>>, String>
    where
        F: Future<Output = Result<Vec<StoredBatch>, String>>,
    {
        self.load(key, load, true).await
    }

    /// Loads `key` ahead of a read (read-ahead). The entry counts as unused, so it goes
    /// before any chunk a consumer is reading, until a read uses it.
    pub async fn preload<F>(&self, key: &str, load: F) -> Result<Arc<Vec<StoredBatch>>, String>
    where
        F: Future<Output = Result<Vec<StoredBatch>, String>>,
    {
        self.load(key, load, false).await
    }

    async fn load<F>(&self, key: &str, load: F, used: bool) -> Result<Arc<Vec<StoredBatch>>, String>
    where
        F: Future<Output = Result<Vec<StoredBatch>, String>>,
    {
        let slot = {
            let mut inner = self.inner.lock();
            inner.clock += 1;
            let now = if used { inner.clock } else { PRELOADED };
            let entry = inner
                .entries
                .entry(key.to_string())
                .or_insert_with(|| Entry {
                    slot: Arc::new(OnceCell::new()),
                    bytes: 0,
                    last_used: now,
                });
            if used {
                entry.last_used = now;
            }
            entry.slot.clone()
        };
        if let Some(v) = slot.get() {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(v.clone());
        }
        let result = slot
            .get_or_try_init(|| async {
                self.misses.fetch_add(1, Ordering::Relaxed);
                load.await.map(Arc::new)
            })
            .await
            .cloned();
        match &result {
            Ok(batches) => {
                let size: usize = batches.iter().map(|b| b.data.len()).sum();
                let mut inner = self.inner.lock();
                if let Some(e) = inner.entries.get_mut(key) {
                    if e.bytes == 0 {
                        e.bytes = size;
                        inner.bytes += size;
                    }
                }
                evict(&mut inner, self.max_bytes);
            }
            Err(_) => {
                // Do not cache failures: the next read tries the bucket again.
                self.inner.lock().entries.remove(key);
            }
        }
        result
    }
}

fn evict(inner: &mut Inner, max_bytes: usize) {
    while inner.bytes > max_bytes && inner.entries.len() > 1 {
        let Some(oldest) = inner
            .entries
            .iter()
            .filter(|(_, e)| e.bytes > 0)
            .min_by_key(|(_, e)| e.last_used)
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        if let Some(e) = inner.entries.remove(&oldest) {
            inner.bytes -= e.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn batch(n: usize) -> Vec<StoredBatch> {
        vec![StoredBatch {
            base_offset: 0,
            last_offset: 0,
            data: Bytes::from(vec![0u8; n]),
        }]
    }

    #[tokio::test]
    async fn loads_once_and_evicts_least_recently_used() {
        let cache = ChunkCache::new(250);
        cache
            .get_or_load("a", async { Ok(batch(100)) })
            .await
            .expect("a");
        cache
            .get_or_load("b", async { Ok(batch(100)) })
            .await
            .expect("b");
        cache
            .get_or_load("a", async { Err("must be cached".into()) })
            .await
            .expect("hit");
        cache
            .get_or_load("c", async { Ok(batch(100)) })
            .await
            .expect("c");
        assert!(cache.bytes() <= 250);
        // b was least recently used and is gone; a is still there.
        assert!(cache
            .get_or_load("b", async { Err("evicted".into()) })
            .await
            .is_err());
        cache
            .get_or_load("a", async { Err("must be cached".into()) })
            .await
            .expect("a kept");
        assert_eq!(cache.misses.load(Ordering::Relaxed), 4);
    }

    /// A chunk loaded ahead goes before any chunk being read, and a chunk a reader moved
    /// past goes first of all and does not count against the room for loading ahead.
    #[tokio::test]
    async fn read_ahead_and_read_past_chunks_are_evicted_first() {
        let cache = ChunkCache::new(300);
        let cached = |key: &'static str| {
            let cache = &cache;
            async move {
                cache
                    .get_or_load(key, async { Err("not cached".into()) })
                    .await
                    .is_ok()
            }
        };
        cache
            .get_or_load("a", async { Ok(batch(100)) })
            .await
            .expect("a");
        cache
            .preload("ahead", async { Ok(batch(100)) })
            .await
            .expect("ahead");
        cache
            .get_or_load("b", async { Ok(batch(100)) })
            .await
            .expect("b");
        assert!(!cache.has_room(100), "the cache is full");
        // Loading c must evict one: the chunk loaded ahead, though a was used earlier.
        cache
            .get_or_load("c", async { Ok(batch(100)) })
            .await
            .expect("c");
        assert!(cached("a").await && cached("b").await && cached("c").await);
        assert!(!cached("ahead").await);
        // A chunk a reader moved past is room for loading ahead, and goes first.
        cache.demote("a");
        assert!(cache.has_room(100));
        cache
            .get_or_load("d", async { Ok(batch(100)) })
            .await
            .expect("d");
        assert!(!cached("a").await);
        assert!(cached("b").await && cached("c").await && cached("d").await);
    }
}
