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

pub(crate) fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

pub(crate) fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}
