//! Topic configuration keys Chronik understands: their defaults and validation. Only keys
//! whose meaning Chronik implements (or stores for a feature that reads them) are accepted;
//! anything else is INVALID_CONFIG, so nobody believes a setting took effect when it did not.

use std::collections::BTreeMap;

pub const MAX_MESSAGE_BYTES: &str = "max.message.bytes";

#[derive(Clone, Copy)]
enum Kind {
    Long { min: i64 },
    OneOf(&'static [&'static str]),
}

struct Key {
    name: &'static str,
    default: &'static str,
    kind: Kind,
    /// Kafka's type for DescribeConfigs: 2 STRING, 3 INT, 5 LONG, 7 LIST.
    wire_type: i8,
    doc: &'static str,
}

const BOOLEAN: i8 = 1;
const STRING: i8 = 2;
const INT: i8 = 3;
const LONG: i8 = 5;
const LIST: i8 = 7;

pub const ARCHIVE_PARQUET: &str = "archive.parquet.enable";

const KEYS: &[Key] = &[
    Key {
        name: ARCHIVE_PARQUET,
        default: "false",
        kind: Kind::OneOf(&["true", "false"]),
        wire_type: BOOLEAN,
        doc: "Chronik: also write the topic's records as Parquet files in the bucket, under archive/topic=NAME/partition=N/, for DuckDB, Spark, pandas and DataFusion.",
    },
    Key {
        name: "cleanup.policy",
        default: "delete",
        kind: Kind::OneOf(&["delete"]),
        wire_type: LIST,
        doc: "How old segments are removed. Only \"delete\" (by retention.ms and retention.bytes) is supported; compaction is not.",
    },
    Key {
        name: "compression.type",
        default: "producer",
        kind: Kind::OneOf(&["producer"]),
        wire_type: STRING,
        doc: "Batches are stored as the producer compressed them (\"producer\").",
    },
    Key {
        name: MAX_MESSAGE_BYTES,
        default: "",
        kind: Kind::Long { min: 0 },
        wire_type: INT,
        doc: "The largest record batch the topic accepts, in bytes. Defaults to the broker's message.max.bytes.",
    },
    Key {
        name: "message.timestamp.type",
        default: "CreateTime",
        kind: Kind::OneOf(&["CreateTime"]),
        wire_type: STRING,
        doc: "Records keep the producer's timestamps (CreateTime).",
    },
    Key {
        name: "min.insync.replicas",
        default: "1",
        kind: Kind::Long { min: 1 },
        wire_type: INT,
        doc: "Stored for compatibility: an acks=all write is acknowledged once a majority of the partition's replicas (its Raft group) have it.",
    },
    Key {
        name: "retention.bytes",
        default: "-1",
        kind: Kind::Long { min: -1 },
        wire_type: LONG,
        doc: "The most bytes a partition keeps before its oldest data is deleted; -1 is no limit.",
    },
    Key {
        name: "retention.ms",
        default: "604800000",
        kind: Kind::Long { min: -1 },
        wire_type: LONG,
        doc: "How long data is kept before it is deleted, in milliseconds; -1 is forever.",
    },
    Key {
        name: "segment.bytes",
        default: "1073741824",
        kind: Kind::Long { min: 14 },
        wire_type: INT,
        doc: "Stored for compatibility: the broker's tiering settings decide the size of the objects data is kept in.",
    },
    Key {
        name: "segment.ms",
        default: "604800000",
        kind: Kind::Long { min: 1 },
        wire_type: LONG,
        doc: "Stored for compatibility: data is shipped to the bucket at least every tiering_interval_ms (a broker setting).",
    },
];

/// Whether the topic asks for the Parquet archive.
pub fn archive_enabled(overrides: &BTreeMap<String, String>) -> bool {
    overrides.get(ARCHIVE_PARQUET).is_some_and(|v| v == "true")
}

/// Checks one key/value; the error is the message returned to the client.
pub fn validate(name: &str, value: &str) -> Result<(), String> {
    let Some(key) = KEYS.iter().find(|k| k.name == name) else {
        return Err(format!("unknown or unsupported topic config {name:?}"));
    };
    match key.kind {
        Kind::Long { min } => match value.trim().parse::<i64>() {
            Ok(v) if v >= min => Ok(()),
            _ => Err(format!("{name} must be an integer >= {min}, not {value:?}")),
        },
        Kind::OneOf(allowed) => {
            if allowed.contains(&value) {
                Ok(())
            } else {
                Err(format!(
                    "{name}={value:?} is not supported (supported: {})",
                    allowed.join(", ")
                ))
            }
        }
    }
}

/// One key of a topic's configuration as it is in effect.
pub struct Effective {
    pub name: &'static str,
    pub value: String,
    /// The value when the topic does not set it.
    pub default: String,
    /// Whether the topic sets it.
    pub overridden: bool,
    /// Kafka's config type code (DescribeConfigs v3+).
    pub wire_type: i8,
    pub doc: &'static str,
}

/// Every known key with its effective value.
pub fn effective(overrides: &BTreeMap<String, String>, message_max_bytes: u32) -> Vec<Effective> {
    KEYS.iter()
        .map(|k| {
            let default = if k.name == MAX_MESSAGE_BYTES {
                message_max_bytes.to_string()
            } else {
                k.default.to_string()
            };
            let value = overrides.get(k.name).cloned();
            Effective {
                name: k.name,
                overridden: value.is_some(),
                value: value.unwrap_or_else(|| default.clone()),
                default,
                wire_type: k.wire_type,
                doc: k.doc,
            }
        })
        .collect()
}

/// The topic's effective max.message.bytes.
pub fn max_message_bytes(overrides: &BTreeMap<String, String>, broker_default: u32) -> usize {
    overrides
        .get(MAX_MESSAGE_BYTES)
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(broker_default as usize)
}

/// Kafka's topic name rules.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("topic name {name:?} is not allowed"));
    }
    if name.len() > 249 {
        return Err(format!(
            "topic name is {} characters; the limit is 249",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("topic name {name:?} has {c:?}; only ASCII letters, digits, '.', '_' and '-' are allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_x-y").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("bad name!").is_err());
        assert!(validate_topic_name(&"a".repeat(250)).is_err());
    }

    #[test]
    fn configs_are_checked() {
        assert!(validate("retention.ms", "1000").is_ok());
        assert!(validate("retention.ms", "soon").is_err());
        assert!(validate("cleanup.policy", "compact").is_err());
        assert!(validate("no.such.key", "1").is_err());
        let eff = effective(&[("retention.ms".to_string(), "5".to_string())].into(), 100);
        let get = |name: &str| eff.iter().find(|e| e.name == name).expect(name);
        let retention = get("retention.ms");
        assert_eq!(
            (retention.value.as_str(), retention.overridden),
            ("5", true)
        );
        assert_eq!(retention.default, "604800000");
        let max = get(MAX_MESSAGE_BYTES);
        assert_eq!((max.value.as_str(), max.overridden), ("100", false));
        assert!(eff.iter().all(|e| !e.doc.is_empty() && e.wire_type > 0));
    }
}
