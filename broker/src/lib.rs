//! The Chronik broker: Kafka listener and request handlers, the partition state machine,
//! and the `chronik` command line.

pub mod admin;
pub mod broker;
pub mod config;
pub mod errors;
pub mod group;
mod handlers;
pub mod http;
pub mod metrics;
pub mod partition;
pub mod protocol;
pub mod serve;
pub mod server;
pub mod tiering;
pub mod topic_config;
