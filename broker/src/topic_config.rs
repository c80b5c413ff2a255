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
}

const KEYS: &[Key] = &[
    Key {
        name: "cleanup.policy",
        default: "delete",
        kind: Kind::OneOf(&["delete"]),
    },
    Key {
        name: "compression.type",
        default: "producer",
        kind: Kind::OneOf(&["producer"]),
    },
    Key {
        name: MAX_MESSAGE_BYTES,
        default: "",
        kind: Kind::Long { min: 0 },
    },
    Key {
        name: "message.timestamp.type",
        default: "CreateTime",
        kind: Kind::OneOf(&["CreateTime"]),
    },
    Key {
        name: "min.insync.replicas",
        default: "1",
        kind: Kind::Long { min: 1 },
    },
    Key {
        name: "retention.bytes",
        default: "-1",
        kind: Kind::Long { min: -1 },
    },
    Key {
        name: "retention.ms",
        default: "604800000",
        kind: Kind::Long { min: -1 },
    },
    Key {
        name: "segment.bytes",
        default: "1073741824",
        kind: Kind::Long { min: 14 },
    },
    Key {
        name: "segment.ms",
        default: "604800000",
        kind: Kind::Long { min: 1 },
    },
];

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

/// Every known key with its effective value and whether it is the default.
pub fn effective(
    overrides: &BTreeMap<String, String>,
    message_max_bytes: u32,
) -> Vec<(&'static str, String, bool)> {
    KEYS.iter()
        .map(|k| match overrides.get(k.name) {
            Some(v) => (k.name, v.clone(), false),
            None if k.name == MAX_MESSAGE_BYTES => (k.name, message_max_bytes.to_string(), true),
            None => (k.name, k.default.to_string(), true),
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
        assert!(eff.contains(&("retention.ms", "5".to_string(), false)));
        assert!(eff.contains(&(MAX_MESSAGE_BYTES, "100".to_string(), true)));
    }
}
