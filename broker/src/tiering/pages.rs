//! Sealing the manifest's older entries into page objects, and reading pages back.
//!
//! See [`crate::partition::page`] for why. The leader seals on its upkeep clock, after
//! compaction (so a page holds merged segments, not the small chunks before them): once the
//! open manifest holds `2 × page_entries` entries, the oldest `page_entries` become one
//! page. Reads load a page on demand through a small cache of decoded pages.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use chronik_tiering::layout;

use super::compaction::plan_compaction;
use super::Tier;
use crate::errors::code;
use crate::partition::log::{entry_index, page_sealed_command, ChunkRef, PageRef};
use crate::partition::{page, Partition};

/// Decoded pages kept in memory (each up to `page_entries` entries, about 150 bytes each).
const CACHED_PAGES: usize = 32;
/// Largest `manifest_page_entries` accepted (the config refuses more).
pub const MAX_PAGE_ENTRIES: usize = 65_536;

/// The decoded pages read last, newest at the back.
#[derive(Default)]
pub struct PageCache {
    pages: VecDeque<(String, Arc<Vec<ChunkRef>>)>,
}

impl PageCache {
    fn get(&mut self, key: &str) -> Option<Arc<Vec<ChunkRef>>> {
        let i = self.pages.iter().position(|(k, _)| k == key)?;
        let hit = self.pages.remove(i)?;
        let entries = hit.1.clone();
        self.pages.push_back(hit);
        Some(entries)
    }

    fn insert(&mut self, key: String, entries: Arc<Vec<ChunkRef>>) {
        self.pages.retain(|(k, _)| *k != key);
        if self.pages.len() >= CACHED_PAGES {
            self.pages.pop_front();
        }
        self.pages.push_back((key, entries));
    }
}

impl Tier {
    /// The entries of a sealed manifest page, from the cache or the bucket.
    pub async fn page(&self, page: &PageRef) -> Result<Arc<Vec<ChunkRef>>, String> {
        if let Some(hit) = self.pages.lock().get(&page.key) {
            return Ok(hit);
        }
        self.stats
            .gets
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let bytes = self
            .bucket
            .get(&page.key)
            .await
            .map_err(|e| format!("read manifest page {}: {e}", page.key))?;
        let entries = Arc::new(page::decode(page, &bytes)?);
        self.pages.lock().insert(page.key.clone(), entries.clone());
        Ok(entries)
    }

    /// The tiered entry holding `offset` when a sealed page names it, with the entries
    /// around it (for read-ahead).
    pub async fn entry_in_page(
        &self,
        page: &PageRef,
        offset: i64,
    ) -> Result<(Option<ChunkRef>, ChunkRef, Option<ChunkRef>), String> {
        let entries = self.page(page).await?;
        let i = entry_index(&entries, offset)
            .ok_or_else(|| format!("manifest page {} does not name offset {offset}", page.key))?;
        let prev = i.checked_sub(1).and_then(|j| entries.get(j)).cloned();
        Ok((prev, entries[i].clone(), entries.get(i + 1).cloned()))
    }

    /// Seals the oldest `page_entries` open entries into a page once twice that many are
    /// open. A refused swap (the manifest changed meanwhile) deletes the page object,
    /// which nothing references.
    pub(super) async fn seal_page(&self, p: &Partition) -> Result<(), String> {
        let n = self.config.page_entries.clamp(1, MAX_PAGE_ENTRIES);
        let entries: Vec<ChunkRef> = {
            let log = p.log.read();
            let open = log.chunks();
            // Small chunks that compaction will still merge are left open until it has.
            if open.len() < 2 * n || plan_compaction(&open[..n], &self.config.compaction).is_some()
            {
                return Ok(());
            }
            open[..n].to_vec()
        };
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        let key =
            layout::manifest_page_key(p.topic_id, p.index, first.base_offset, last.last_offset);
        let object = page::encode(&entries);
        let Some(page_ref) = PageRef::new(key.clone(), &entries, object.len() as u64) else {
            return Ok(());
        };
        // Create-only: a page is never overwritten. The same bytes already there are an
        // earlier attempt of this seal (its commit lost in a crash or a leader change);
        // anything else is left alone, and these entries stay open.
        let object = Bytes::from(object);
        let created = self
            .bucket
            .put_if_absent(&key, object.clone())
            .await
            .map_err(|e| format!("upload {key}: {e}"))?;
        if !created {
            let there = self
                .bucket
                .get(&key)
                .await
                .map_err(|e| format!("read {key}: {e}"))?;
            if there != object {
                tracing::warn!(topic = %p.topic, partition = p.index, %key, "a different manifest page has this key; not sealing");
                return Ok(());
            }
        }
        let cmd = page_sealed_command(&page_ref, first.key.clone(), last.key.clone());
        let res = self
            .propose(p, cmd)
            .await
            .map_err(|e| format!("commit manifest page {key}: {e}"))?;
        if res.error != code::NONE {
            if created && !p.log.read().references(&key) {
                let _ = self.bucket.delete(&key).await;
            }
            tracing::info!(topic = %p.topic, partition = p.index, %key, "manifest page refused: the manifest changed");
            return Ok(());
        }
        self.pages.lock().insert(key.clone(), Arc::new(entries));
        tracing::debug!(topic = %p.topic, partition = p.index, %key, entries = n, "manifest page sealed");
        Ok(())
    }
}
