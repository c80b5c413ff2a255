//! The one table from internal errors to Kafka error codes.

use chronik_bootstrap::BootstrapError;
use chronik_metastore::metadata::MetadataError;

use crate::partition::batch::BatchError;

/// Kafka error codes used by Chronik (see the Kafka protocol guide's error table).
pub mod code {
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const NONE: i16 = 0;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const NOT_CONTROLLER: i16 = 41;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const RECORD_LIST_TOO_LARGE: i16 = 18;
    pub const NOT_ENOUGH_REPLICAS: i16 = 19;
    pub const INVALID_REQUIRED_ACKS: i16 = 21;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
    pub const NO_REASSIGNMENT_IN_PROGRESS: i16 = 85;
    pub const INVALID_REQUEST: i16 = 42;
    pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
    pub const POLICY_VIOLATION: i16 = 44;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const INVALID_CONFIG: i16 = 40;
    pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
    pub const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
    pub const FENCED_LEADER_EPOCH: i16 = 74;
    pub const INVALID_RECORD: i16 = 87;
    pub const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
    pub const UNKNOWN_TOPIC_ID: i16 = 100;
    pub const MISMATCHED_ENDPOINT_TYPE: i16 = 114;
    // Consumer groups.
    pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const FENCED_INSTANCE_ID: i16 = 82;
    pub const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
}

pub fn batch_error_code(e: &BatchError) -> i16 {
    match e {
        BatchError::Crc | BatchError::Truncated(_) => code::CORRUPT_MESSAGE,
        // Kafka: "Produce requests with version 3 and above are only allowed to contain
        // record batches with magic version 2" is an InvalidRecordException.
        BatchError::UnsupportedMagic(_) => code::INVALID_RECORD,
        BatchError::TooLarge { .. } => code::MESSAGE_TOO_LARGE,
        BatchError::Invalid(_) | BatchError::NotOneBatch => code::INVALID_RECORD,
        BatchError::Transactional => code::INVALID_RECORD,
    }
}

pub fn metadata_error_code(e: &MetadataError) -> i16 {
    match e {
        MetadataError::TopicExists(_) => code::TOPIC_ALREADY_EXISTS,
        MetadataError::UnknownTopic(_) | MetadataError::UnknownPartition(..) => {
            code::UNKNOWN_TOPIC_OR_PARTITION
        }
        MetadataError::InvalidReplicas(_) => code::INVALID_REPLICA_ASSIGNMENT,
        MetadataError::Malformed(_) => code::INVALID_REQUEST,
    }
}

pub fn bootstrap_error_code(e: &BootstrapError) -> i16 {
    match e {
        BootstrapError::Metadata(m) => metadata_error_code(m),
        BootstrapError::Propose(_) | BootstrapError::NoLeader(_) => code::NOT_CONTROLLER,
        _ => code::UNKNOWN_SERVER_ERROR,
    }
}
