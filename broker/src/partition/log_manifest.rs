//! The manifest side of [`PartitionLog`]: where tiered offsets live (open entries, or
//! sealed pages in the bucket), and the lookups over them for reads, ListOffsets and
//! retention.

use super::{ChunkRef, PageRef, PartitionLog, ReadPlan};

/// A unit of the manifest: a sealed page, or an entry of the open part.
#[derive(Clone, Copy, Debug)]
pub enum Unit<'a> {
    Page(&'a PageRef),
    Chunk(&'a ChunkRef),
}

impl Unit<'_> {
    pub fn last_offset(&self) -> i64 {
        match self {
            Unit::Page(p) => p.last_offset,
            Unit::Chunk(c) => c.last_offset,
        }
    }

    pub fn max_timestamp(&self) -> i64 {
        match self {
            Unit::Page(p) => p.max_timestamp,
            Unit::Chunk(c) => c.max_timestamp,
        }
    }

    /// Bytes of data it stands for in the bucket.
    pub fn bytes(&self) -> u64 {
        match self {
            Unit::Page(p) => p.bytes,
            Unit::Chunk(c) => c.size,
        }
    }

    fn plan(&self) -> ReadPlan {
        match self {
            Unit::Page(p) => ReadPlan::Page((*p).clone()),
            Unit::Chunk(c) => ReadPlan::Chunk((*c).clone()),
        }
    }
}

/// Sealed pages read from the bucket, to be looked at entry by entry.
pub type OpenPages<'a> = &'a [(&'a PageRef, &'a [ChunkRef])];

/// The entry of `entries` (in offset order) holding `offset`.
pub fn find_entry(entries: &[ChunkRef], offset: i64) -> Option<&ChunkRef> {
    entry_index(entries, offset).map(|i| &entries[i])
}

/// The position in `entries` (in offset order) of the entry holding `offset`.
pub fn entry_index(entries: &[ChunkRef], offset: i64) -> Option<usize> {
    let i = entries.partition_point(|c| c.last_offset < offset);
    entries
        .get(i)
        .is_some_and(|c| c.base_offset <= offset)
        .then_some(i)
}

impl PartitionLog {
    /// The open manifest entry holding `offset`, if there is one.
    pub fn chunk_for(&self, offset: i64) -> Option<&ChunkRef> {
        find_entry(&self.chunks, offset)
    }

    /// The sealed page naming the entry that holds `offset`, if there is one.
    pub fn page_for(&self, offset: i64) -> Option<&PageRef> {
        let i = self.pages.partition_point(|p| p.last_offset < offset);
        self.pages.get(i).filter(|p| p.base_offset <= offset)
    }

    /// The open part of the manifest (entries after the last sealed page).
    pub fn chunks(&self) -> &[ChunkRef] {
        &self.chunks
    }

    /// The manifest's sealed pages.
    pub fn pages(&self) -> &[PageRef] {
        &self.pages
    }

    /// The first page that still holds live data, when it also names entries below the log
    /// start: its summary (largest timestamp, bytes) counts those too, so lookups by
    /// timestamp and retention look inside it instead (see [`OpenPages`]).
    pub fn straddling_page(&self) -> Option<&PageRef> {
        self.first_live_page()
            .filter(|p| p.base_offset < self.log_start_offset)
    }

    /// The first page that still holds live data (retention's next cut may fall inside it).
    pub fn first_live_page(&self) -> Option<&PageRef> {
        self.pages
            .iter()
            .find(|p| p.last_offset >= self.log_start_offset)
    }

    /// The manifest from the log start on, oldest first: pages as whole units, except the
    /// `open` ones, which stand for their entries.
    pub fn units<'a>(&'a self, open: OpenPages<'a>) -> impl Iterator<Item = Unit<'a>> + 'a {
        let start = self.log_start_offset;
        self.pages
            .iter()
            .flat_map(move |p| match open.iter().find(|(o, _)| o.key == p.key) {
                Some((_, entries)) => {
                    Box::new(entries.iter().map(Unit::Chunk)) as Box<dyn Iterator<Item = _>>
                }
                None => Box::new(std::iter::once(Unit::Page(p))),
            })
            .chain(self.chunks.iter().map(Unit::Chunk))
            .filter(move |u| u.last_offset() >= start)
    }

    /// Whether `key` is an object the manifest names directly (a page or an open entry).
    pub fn references(&self, key: &str) -> bool {
        self.chunks.iter().any(|c| c.key == key) || self.pages.iter().any(|p| p.key == key)
    }

    /// The first manifest unit or tail batch whose max timestamp is at or after
    /// `timestamp`. A [`ReadPlan::Page`] answer means: load that page and ask again with it
    /// open (pass the [`straddling_page`](Self::straddling_page) open from the start).
    pub fn find_timestamp(&self, timestamp: i64, open: OpenPages<'_>) -> Option<ReadPlan> {
        if let Some(u) = self.units(open).find(|u| u.max_timestamp() >= timestamp) {
            return Some(u.plan());
        }
        self.batch_for_timestamp(timestamp)
            .map(|b| ReadPlan::Tail(vec![b]))
    }

    /// Where the largest timestamp lives (the first such, as Kafka picks), and its value.
    /// A [`ReadPlan::Page`] answer means: load that page and ask again with it open.
    pub fn max_timestamp_plan(&self, open: OpenPages<'_>) -> Option<(ReadPlan, i64)> {
        let mut best: Option<(ReadPlan, i64)> = None;
        let better =
            |best: &Option<(ReadPlan, i64)>, ts: i64| best.as_ref().is_none_or(|(_, b)| ts > *b);
        for u in self.units(open) {
            if better(&best, u.max_timestamp()) {
                best = Some((u.plan(), u.max_timestamp()));
            }
        }
        for b in &self.batches {
            if better(&best, b.max_timestamp) {
                best = Some((ReadPlan::Tail(vec![b.clone()]), b.max_timestamp));
            }
        }
        best
    }

    /// About how many bytes the log holds from `offset` on: the tiered objects that end at
    /// or after it (their stored size) and the tail. Unknown (u64::MAX) when `offset` lies
    /// in a sealed manifest page: at least a page's worth of history.
    pub fn bytes_from(&self, offset: i64) -> u64 {
        if self.chunks.first().is_some_and(|c| offset < c.base_offset)
            || (self.chunks.is_empty()
                && self.pages.last().is_some_and(|p| offset <= p.last_offset))
        {
            return u64::MAX;
        }
        let tiered: u64 = self
            .chunks
            .iter()
            .filter(|c| c.last_offset >= offset)
            .map(|c| c.size)
            .sum();
        let tail: u64 = self
            .batches
            .iter()
            .filter(|b| b.last_offset >= offset)
            .map(|b| b.bytes as u64)
            .sum();
        tiered + tail
    }
}
