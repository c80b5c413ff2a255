//! Request handlers, one file per family of Kafka APIs. Each is a method on
//! [`crate::broker::Broker`] taking the decoded request and returning the response.

mod cluster;
mod configs;
mod fetch;
mod offsets;
mod produce;
mod producer_id;
mod reassign;
mod records;
pub(crate) mod topics;

use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;

/// The operations a client may perform, as the bitfields that Metadata, DescribeCluster and
/// DescribeGroups return when asked (KIP-430). Chronik has no authorizer, so, as Kafka
/// without one, every operation a resource supports is allowed.
pub(crate) mod operations {
    // Kafka's AclOperation codes.
    const READ: u8 = 3;
    const WRITE: u8 = 4;
    const CREATE: u8 = 5;
    const DELETE: u8 = 6;
    const ALTER: u8 = 7;
    const DESCRIBE: u8 = 8;
    const CLUSTER_ACTION: u8 = 9;
    const DESCRIBE_CONFIGS: u8 = 10;
    const ALTER_CONFIGS: u8 = 11;
    const IDEMPOTENT_WRITE: u8 = 12;

    const fn bits(ops: &[u8]) -> i32 {
        let mut field = 0;
        let mut i = 0;
        while i < ops.len() {
            field |= 1 << ops[i];
            i += 1;
        }
        field
    }

    pub(crate) const TOPIC: i32 = bits(&[
        READ,
        WRITE,
        CREATE,
        DESCRIBE,
        DELETE,
        ALTER,
        DESCRIBE_CONFIGS,
        ALTER_CONFIGS,
    ]);
    pub(crate) const GROUP: i32 = bits(&[READ, DESCRIBE, DELETE]);
    pub(crate) const CLUSTER: i32 = bits(&[
        CREATE,
        CLUSTER_ACTION,
        DESCRIBE_CONFIGS,
        ALTER_CONFIGS,
        IDEMPOTENT_WRITE,
        ALTER,
        DESCRIBE,
    ]);
}

/// The items that occur more than once. Kafka refuses every entry of a topic, partition
/// or resource that a request names twice with INVALID_REQUEST, instead of doing the
/// work twice or letting the last entry win.
pub(crate) fn repeated<T: Eq + std::hash::Hash>(
    items: impl IntoIterator<Item = T>,
) -> std::collections::HashSet<T> {
    let mut seen = std::collections::HashSet::new();
    let mut twice = std::collections::HashSet::new();
    for item in items {
        if let Some(item) = seen.replace(item) {
            twice.insert(item);
        }
    }
    twice
}

/// The error for an entry that [`repeated`] found, `what` being "topic", "partition", ...
pub(crate) fn named_twice(what: &str) -> (i16, String) {
    (
        crate::errors::code::INVALID_REQUEST,
        format!("the request names this {what} more than once"),
    )
}

pub(crate) fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

pub(crate) fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}
