//! The cluster incarnation record, `cluster/incarnation.json`: written once (create-only)
//! by the first cluster to use a bucket. Objects that publish state carry its incarnation
//! id, so a second cluster pointed at the same bucket is detected instead of silently
//! overwriting the first one's state.

use serde::{Deserialize, Serialize};

use crate::layout::INCARNATION_KEY;
use crate::{Bucket, TieringError};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incarnation {
    pub cluster_id: String,
    /// A random UUID, new for every cluster that claims a bucket.
    pub incarnation: String,
    pub created_unix_ms: u64,
}

impl Incarnation {
    /// A fresh incarnation for `cluster_id`.
    pub fn new(cluster_id: &str) -> Incarnation {
        let created_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Incarnation {
            cluster_id: cluster_id.to_string(),
            incarnation: uuid::Uuid::new_v4().to_string(),
            created_unix_ms,
        }
    }

    pub fn to_json(&self) -> bytes::Bytes {
        // Serializing a struct of strings and integers cannot fail.
        bytes::Bytes::from(serde_json::to_vec_pretty(self).unwrap_or_default())
    }

    pub fn from_json(data: &[u8]) -> Result<Incarnation, TieringError> {
        serde_json::from_slice(data).map_err(|e| TieringError::Corrupt {
            key: INCARNATION_KEY.to_string(),
            reason: e.to_string(),
        })
    }

    /// Reads the bucket's incarnation, if one was ever written.
    pub async fn load(bucket: &Bucket) -> Result<Option<Incarnation>, TieringError> {
        match bucket.get(INCARNATION_KEY).await {
            Ok(data) => Ok(Some(Incarnation::from_json(&data)?)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Claims the bucket with `self` unless another incarnation already has; returns the
    /// bucket's incarnation either way (compare it with `self` to know who won).
    pub async fn claim(&self, bucket: &Bucket) -> Result<Incarnation, TieringError> {
        if bucket
            .put_if_absent(INCARNATION_KEY, self.to_json())
            .await?
        {
            return Ok(self.clone());
        }
        Incarnation::load(bucket)
            .await?
            .ok_or_else(|| TieringError::NotFound {
                key: INCARNATION_KEY.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn first_claim_wins() {
        let bucket = Bucket::from_store("mem://", Arc::new(object_store::memory::InMemory::new()));
        assert_eq!(Incarnation::load(&bucket).await.expect("load"), None);
        let a = Incarnation::new("c1");
        let b = Incarnation::new("c1");
        assert_ne!(a.incarnation, b.incarnation);
        assert_eq!(a.claim(&bucket).await.expect("claim a"), a);
        assert_eq!(b.claim(&bucket).await.expect("claim b"), a);
        bucket
            .put(INCARNATION_KEY, bytes::Bytes::from_static(b"{"))
            .await
            .expect("put");
        let err = Incarnation::load(&bucket).await.expect_err("corrupt");
        assert!(err.to_string().contains(INCARNATION_KEY));
    }
}
