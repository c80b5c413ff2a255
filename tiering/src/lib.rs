//! Everything that touches the bucket.
//!
//! Today this crate opens the bucket a node is configured with and checks that it is
//! usable; chunk upload, manifests, snapshots, compaction and the Parquet archive build on
//! [`Bucket`] (see the tiering issue).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::ObjectStore;
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum TieringError {
    #[error("bucket URL {url:?} is malformed: {reason}; use file:///ABS/DIR, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or az://CONTAINER/PREFIX")]
    BadUrl { url: String, reason: String },
    #[error("bucket scheme {scheme}:// is not available in this build yet; use file:///ABS/DIR")]
    UnsupportedScheme { scheme: String },
    #[error("bucket directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bucket {url} is not usable: {source}")]
    Store {
        url: String,
        #[source]
        source: object_store::Error,
    },
}

/// An opened bucket.
#[derive(Clone, Debug)]
pub struct Bucket {
    url: String,
    store: Arc<dyn ObjectStore>,
}

/// The default bucket: a `bucket` directory next to the data directory, so that wiping the
/// data directory never wipes the bucket.
pub fn default_bucket_url(data_dir: &Path) -> Result<String, TieringError> {
    let abs = std::path::absolute(data_dir).map_err(|source| TieringError::Dir {
        dir: data_dir.to_path_buf(),
        source,
    })?;
    let dir = abs
        .parent()
        .map(|p| p.join("bucket"))
        .unwrap_or_else(|| PathBuf::from("/bucket"));
    Ok(format!("file://{}", dir.display()))
}

impl Bucket {
    /// Opens a bucket by URL and checks that it can be listed.
    pub async fn open(url: &str) -> Result<Bucket, TieringError> {
        let parsed = Url::parse(url).map_err(|e| TieringError::BadUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let store: Arc<dyn ObjectStore> = match parsed.scheme() {
            "file" => {
                let dir = parsed.to_file_path().map_err(|_| TieringError::BadUrl {
                    url: url.to_string(),
                    reason: "a file:// URL needs an absolute path".into(),
                })?;
                std::fs::create_dir_all(&dir).map_err(|source| TieringError::Dir {
                    dir: dir.clone(),
                    source,
                })?;
                let fs = LocalFileSystem::new_with_prefix(&dir).map_err(|source| {
                    TieringError::Store {
                        url: url.to_string(),
                        source,
                    }
                })?;
                Arc::new(fs)
            }
            "s3" | "gs" | "az" | "abfs" => {
                return Err(TieringError::UnsupportedScheme {
                    scheme: parsed.scheme().to_string(),
                })
            }
            other => {
                return Err(TieringError::BadUrl {
                    url: url.to_string(),
                    reason: format!("unknown scheme {other:?}"),
                })
            }
        };
        store
            .list_with_delimiter(None)
            .await
            .map_err(|source| TieringError::Store {
                url: url.to_string(),
                source,
            })?;
        Ok(Bucket {
            url: url.to_string(),
            store,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_a_local_directory_and_refuses_bad_urls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}/b", dir.path().display());
        let bucket = Bucket::open(&url).await.expect("open");
        assert_eq!(bucket.url(), url);
        assert!(matches!(
            Bucket::open("not a url").await,
            Err(TieringError::BadUrl { .. })
        ));
        assert!(matches!(
            Bucket::open("ftp://x/y").await,
            Err(TieringError::BadUrl { .. })
        ));
        assert!(matches!(
            Bucket::open("s3://bucket/prefix").await,
            Err(TieringError::UnsupportedScheme { .. })
        ));
    }

    #[test]
    fn default_bucket_sits_next_to_the_data_dir() {
        let url = default_bucket_url(Path::new("/tmp/x/data")).expect("url");
        assert_eq!(url, "file:///tmp/x/bucket");
    }
}
