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
            inner: Mutex::new(Inner::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }

    pub async fn get_or_load<F>(&self, key: &str, load: F) -> Result<Arc<Vec<StoredBatch>>, String>
    where
        F: Future<Output = Result<Vec<StoredBatch>, String>>,
    {
        let slot = {
            let mut inner = self.inner.lock();
            inner.clock += 1;
            let now = inner.clock;
            let entry = inner
                .entries
                .entry(key.to_string())
                .or_insert_with(|| Entry {
                    slot: Arc::new(OnceCell::new()),
                    bytes: 0,
                    last_used: now,
                });
            entry.last_used = now;
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
}
