//! The API versions Chronik advertises. Every range here is really implemented by a
//! handler; ApiVersions answers with exactly this table (intersected with what the codec
//! crate can encode).

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::VersionRange;

/// (api, (min, max)). Produce starts at v3 (magic v2 batches only) and Fetch at v4 (the
/// first version whose clients understand v2 batches). Fetch stops before v13, which
/// identifies topics by id only.
pub const SUPPORTED_APIS: &[(ApiKey, (i16, i16))] = &[
    (ApiKey::Produce, (3, 9)),
    (ApiKey::Fetch, (4, 12)),
    (ApiKey::ListOffsets, (1, 7)),
    (ApiKey::Metadata, (0, 12)),
    (ApiKey::ApiVersions, (0, 3)),
    (ApiKey::CreateTopics, (2, 7)),
    (ApiKey::DeleteTopics, (1, 6)),
    (ApiKey::InitProducerId, (0, 4)),
    (ApiKey::OffsetForLeaderEpoch, (2, 4)),
    (ApiKey::DescribeConfigs, (1, 4)),
    (ApiKey::AlterConfigs, (0, 2)),
    (ApiKey::CreatePartitions, (0, 3)),
    (ApiKey::DeleteRecords, (0, 2)),
    (ApiKey::IncrementalAlterConfigs, (0, 1)),
    (ApiKey::DescribeCluster, (0, 2)),
    (ApiKey::AlterPartitionReassignments, (0, 1)),
    (ApiKey::ListPartitionReassignments, (0, 0)),
    // Consumer groups (classic protocol). OffsetCommit/OffsetFetch stop before v10, which
    // identifies topics by id only.
    (ApiKey::FindCoordinator, (0, 6)),
    (ApiKey::JoinGroup, (0, 9)),
    (ApiKey::SyncGroup, (0, 5)),
    (ApiKey::Heartbeat, (0, 4)),
    (ApiKey::LeaveGroup, (0, 5)),
    (ApiKey::OffsetCommit, (2, 9)),
    (ApiKey::OffsetFetch, (1, 9)),
    (ApiKey::ListGroups, (0, 5)),
    (ApiKey::DescribeGroups, (0, 6)),
    (ApiKey::DeleteGroups, (0, 2)),
    (ApiKey::OffsetDelete, (0, 0)),
];

/// The supported range of one API, if any.
pub fn supported(api: ApiKey) -> Option<VersionRange> {
    SUPPORTED_APIS
        .iter()
        .find(|(k, _)| *k == api)
        .map(|(k, (min, max))| {
            VersionRange {
                min: *min,
                max: *max,
            }
            .intersect(&k.valid_versions())
        })
}

pub fn api_version_list() -> Vec<ApiVersion> {
    SUPPORTED_APIS
        .iter()
        .filter_map(|(k, _)| {
            let r = supported(*k)?;
            let mut v = ApiVersion::default();
            v.api_key = *k as i16;
            v.min_version = r.min;
            v.max_version = r.max;
            Some(v)
        })
        .collect()
}
