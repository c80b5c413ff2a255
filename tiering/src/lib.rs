//! Everything that touches the bucket: opening it by URL ([`Bucket`]), the object layout
//! ([`layout`], documented in docs/BUCKET_LAYOUT.md), the chunk and snapshot formats
//! ([`chunk`], [`snapshot`]), the local read cache ([`cache`]) and a failing store for
//! fault tests ([`failing`]).

pub mod archive;
pub mod bucket;
pub mod cache;
pub mod chunk;
pub mod chunk_read;
pub mod chunk_write;
mod direct_write;
pub mod durable_fs;
pub mod error;
pub mod failing;
pub mod incarnation;
pub mod layout;
pub mod retry;
pub mod snapshot;
pub mod testing;

pub use bucket::{default_bucket_url, Bucket, BucketOptions, BucketStats, ListedObject};
pub use cache::{CacheStats, ReadCache};
pub use chunk::{ChunkHeader, ChunkIndex, ChunkReader, ChunkWriter, FrameEntry};
pub use durable_fs::{drop_cached_pages, DurableFs};
pub use error::TieringError;
pub use failing::FailingStore;
pub use incarnation::Incarnation;
pub use layout::ObjectKey;
pub use retry::RetryPolicy;
pub use snapshot::{decode_snapshot, encode_snapshot, wrap_snapshot, WrappedSnapshot};
