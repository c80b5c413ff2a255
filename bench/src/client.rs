//! Client set-up shared by the benchmarks: configs, topic creation.

use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

/// Where the benchmark connects: a broker list (a real broker, or the bootstrap address
/// of librdkafka's in-memory mock cluster).
#[derive(Clone, Debug)]
pub struct Target {
    pub brokers: String,
}

impl Target {
    pub fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c
    }
}

/// Creates the topic (an existing one is fine).
pub fn ensure_topic(target: &Target, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        target.config().create().context("create admin client")?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results =
        futures::executor::block_on(admin.create_topics([&new], &opts)).context("create topic")?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => bail!("create topic {t}: {code}"),
        }
    }
    Ok(())
}

/// A pool of deterministic, incompressible bytes; messages are windows of it at varying
/// offsets, so no two messages (or chunks) repeat each other the way one fixed payload would.
pub struct Payloads {
    pool: Vec<u8>,
    size: usize,
    next: usize,
}

impl Payloads {
    pub fn new(size: usize, seed: u64) -> Payloads {
        Payloads {
            pool: payload((size * 2).max(64 << 20), seed),
            size,
            next: 0,
        }
    }

    pub fn next(&mut self) -> &[u8] {
        let span = self.pool.len() - self.size;
        // A stride coprime with typical sizes walks the pool without short cycles.
        self.next = (self.next + 7919 * 64 + 13) % span.max(1);
        &self.pool[self.next..self.next + self.size]
    }
}

/// Deterministic, poorly compressible payload bytes.
pub fn payload(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
