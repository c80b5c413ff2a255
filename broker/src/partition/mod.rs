//! Partitions: the Kafka meaning of a partition's Raft group, and the registry of the
//! partition groups this node runs.

pub mod batch;
mod isr;
pub mod log;
pub mod page;
pub mod producers;
mod registry;

pub use registry::{Partition, Registry};
