//! [`Bucket`]: the one handle through which Chronik touches object storage.
//!
//! It owns URL parsing (`file://`, `s3://`, `gs://`, `az://`), the reachability check at
//! start-up, retries with backoff on transient errors ([`RetryPolicy`]), conditional puts
//! (create-only and match-etag, the basis of fencing) and call/byte counters.
//!
//! Keys are relative to the URL's prefix and are plain `/`-separated paths (see
//! `docs/BUCKET_LAYOUT.md` and [`crate::layout`]). Every error names the key it concerns.
//!
//! Retries and conditional puts: a create or match-etag put whose response was lost may
//! have succeeded before the retry that then reports "precondition failed". When that
//! happens after more than one attempt, the bucket reads the object back and reports
//! success if it holds exactly the bytes this call wrote.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig, UpdateVersion};
use url::Url;

use crate::retry::{self, RetryPolicy};
use crate::TieringError;

/// Options for [`Bucket::open_with`].
#[derive(Clone, Debug, Default)]
pub struct BucketOptions {
    pub retry: RetryPolicy,
}

/// Counters of a bucket's remote calls, as returned by [`Bucket::stats`]. Calls are counted
/// once however many attempts they took; `retries` counts the extra attempts, `errors` the
/// calls that returned an error (a missing object or a failed precondition is an answer,
/// not an error).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketStats {
    pub puts: u64,
    pub gets: u64,
    pub heads: u64,
    pub lists: u64,
    pub deletes: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub errors: u64,
    pub retries: u64,
}

#[derive(Debug, Default)]
struct Counters {
    puts: AtomicU64,
    gets: AtomicU64,
    heads: AtomicU64,
    lists: AtomicU64,
    deletes: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    errors: AtomicU64,
    retries: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// An opened bucket. Cheap to clone; clones share counters.
#[derive(Clone, Debug)]
pub struct Bucket {
    url: String,
    store: Arc<dyn ObjectStore>,
    retry: RetryPolicy,
    counters: Arc<Counters>,
    /// Set once the store has answered a match-etag put with "not implemented" (the local
    /// filesystem store); such puts are then emulated under `update_lock`.
    emulate_update: Arc<AtomicBool>,
    update_lock: Arc<tokio::sync::Mutex<()>>,
}

/// One object of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    /// When the object was last written, Unix milliseconds.
    pub modified_ms: i64,
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

/// object_store's own HTTP retries are switched off: [`RetryPolicy`] is the one budget.
/// (Client options such as AWS_ALLOW_HTTP come from the environment and are left alone;
/// object_store's defaults already bound connect and request time.)
fn client_retry() -> RetryConfig {
    RetryConfig {
        max_retries: 0,
        retry_timeout: Duration::from_secs(1),
        ..RetryConfig::default()
    }
}

/// The bucket (or container) name and key prefix of a cloud URL.
fn cloud_parts(url: &str, parsed: &Url) -> Result<(String, String), TieringError> {
    let name = parsed.host_str().unwrap_or_default().to_string();
    if name.is_empty() {
        return Err(TieringError::BadUrl {
            url: url.to_string(),
            reason: "the URL names no bucket (expected SCHEME://BUCKET/PREFIX)".into(),
        });
    }
    let prefix = parsed.path().trim_matches('/').to_string();
    Ok((name, prefix))
}

fn build_store(url: &str, parsed: &Url) -> Result<Arc<dyn ObjectStore>, TieringError> {
    let scheme = parsed.scheme();
    let open_err = |source: object_store::Error| TieringError::Open {
        url: url.to_string(),
        problem: format!("cannot configure the {scheme} client: {source}"),
        fix: "check the URL and the cloud environment variables".into(),
        source: Some(Box::new(source)),
    };
    let (inner, prefix): (Arc<dyn ObjectStore>, String) = match scheme {
        "file" => {
            let dir = parsed.to_file_path().map_err(|_| TieringError::BadUrl {
                url: url.to_string(),
                reason: "a file:// URL needs an absolute path".into(),
            })?;
            std::fs::create_dir_all(&dir).map_err(|source| TieringError::Dir {
                dir: dir.clone(),
                source,
            })?;
            let fs = crate::DurableFs::new(&dir).map_err(open_err)?;
            return Ok(Arc::new(fs));
        }
        "s3" => {
            let (name, prefix) = cloud_parts(url, parsed)?;
            let s3 = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(name)
                .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
                .with_retry(client_retry())
                .build()
                .map_err(open_err)?;
            (Arc::new(s3), prefix)
        }
        "gs" => {
            let (name, prefix) = cloud_parts(url, parsed)?;
            let gcs = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(name)
                .with_retry(client_retry())
                .build()
                .map_err(open_err)?;
            (Arc::new(gcs), prefix)
        }
        "az" | "azure" => {
            let (name, prefix) = cloud_parts(url, parsed)?;
            let az = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_container_name(name)
                .with_retry(client_retry())
                .build()
                .map_err(open_err)?;
            (Arc::new(az), prefix)
        }
        "abfs" | "abfss" | "adl" | "s3a" | "gcs" => {
            return Err(TieringError::UnsupportedScheme {
                scheme: scheme.to_string(),
            })
        }
        other => {
            return Err(TieringError::BadUrl {
                url: url.to_string(),
                reason: format!("unknown scheme {other:?}"),
            })
        }
    };
    if prefix.is_empty() {
        Ok(inner)
    } else {
        Ok(Arc::new(PrefixStore::new(inner, prefix.as_str())))
    }
}

/// Turns a failed reachability check into an error that says what to fix.
fn open_error(url: &str, scheme: &str, err: object_store::Error) -> TieringError {
    use object_store::Error as E;
    let env_hint = match scheme {
        "s3" => "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and, for an S3-compatible store, AWS_ENDPOINT_URL (plus AWS_ALLOW_HTTP=true for http://)",
        "gs" => "GOOGLE_SERVICE_ACCOUNT (or GOOGLE_APPLICATION_CREDENTIALS)",
        "az" | "azure" => "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY",
        _ => "the bucket directory's permissions",
    };
    let no_static_creds = scheme == "s3"
        && std::env::var_os("AWS_ACCESS_KEY_ID").is_none()
        && std::env::var_os("AWS_WEB_IDENTITY_TOKEN_FILE").is_none()
        && std::env::var_os("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_none()
        && std::env::var_os("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_none();
    let (problem, fix) = match &err {
        E::NotFound { .. } => (
            "the bucket does not exist".to_string(),
            "create it, or fix the bucket name in the URL".to_string(),
        ),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => (
            "the credentials were rejected".to_string(),
            format!(
                "set {env_hint} to credentials that may list, read, write and delete in the bucket"
            ),
        ),
        _ if no_static_creds => (
            format!("the bucket cannot be reached and no AWS_ACCESS_KEY_ID is set ({err})"),
            format!("set {env_hint}, or run with an instance role"),
        ),
        _ => (
            format!("the endpoint cannot be reached ({err})"),
            format!("check the network and {env_hint}"),
        ),
    };
    TieringError::Open {
        url: url.to_string(),
        problem,
        fix,
        source: Some(Box::new(err)),
    }
}

fn parse_key(key: &str) -> Result<ObjectPath, TieringError> {
    if key.is_empty() || key.starts_with('/') || key.ends_with('/') {
        return Err(TieringError::BadKey {
            key: key.to_string(),
            reason: "an object key is a non-empty relative path".into(),
        });
    }
    ObjectPath::parse(key).map_err(|e| TieringError::BadKey {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

impl Bucket {
    /// Opens a bucket by URL with default options and checks that it can be listed.
    pub async fn open(url: &str) -> Result<Bucket, TieringError> {
        Bucket::open_with(url, BucketOptions::default()).await
    }

    /// Opens a bucket by URL and checks, with one cheap LIST (retried per the policy), that
    /// it exists and the credentials work. The error names the URL and what to fix.
    pub async fn open_with(url: &str, options: BucketOptions) -> Result<Bucket, TieringError> {
        // A bare absolute path is a local directory, as file://PATH.
        let file_url;
        let url = if url.starts_with('/') {
            file_url = format!("file://{url}");
            file_url.as_str()
        } else {
            url
        };
        let parsed = Url::parse(url).map_err(|e| TieringError::BadUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let store = build_store(url, &parsed)?;
        let bucket = Bucket::from_store(url, store).with_retry_policy(options.retry);
        let store = bucket.store.clone();
        let outcome = retry::run(
            &bucket.retry,
            || {
                let store = store.clone();
                async move {
                    // Listing a single page is enough: it proves bucket, endpoint and
                    // credentials.
                    let mut stream = store.list(None);
                    stream.try_next().await.map(|_| ())
                }
            },
            |_, _| bump(&bucket.counters.retries, 1),
        )
        .await;
        bump(&bucket.counters.lists, 1);
        outcome
            .result
            .map_err(|err| open_error(url, parsed.scheme(), err))?;
        Ok(bucket)
    }

    /// Wraps an already built store (tests, a [`crate::FailingStore`], a custom client).
    /// No reachability check is made.
    pub fn from_store(url: &str, store: Arc<dyn ObjectStore>) -> Bucket {
        Bucket {
            url: url.to_string(),
            store,
            retry: RetryPolicy::default(),
            counters: Arc::new(Counters::default()),
            emulate_update: Arc::new(AtomicBool::new(false)),
            update_lock: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The same bucket with another retry policy (counters stay shared).
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Bucket {
        self.retry = retry;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The underlying store, already scoped to the URL's prefix. Calls made on it directly
    /// are neither retried nor counted.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    pub fn stats(&self) -> BucketStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BucketStats {
            puts: get(&c.puts),
            gets: get(&c.gets),
            heads: get(&c.heads),
            lists: get(&c.lists),
            deletes: get(&c.deletes),
            bytes_up: get(&c.bytes_up),
            bytes_down: get(&c.bytes_down),
            errors: get(&c.errors),
            retries: get(&c.retries),
        }
    }

    /// Runs one remote call under the retry policy.
    async fn call<T, F, Fut>(&self, op: &'static str, key: &str, f: F) -> retry::Outcome<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, object_store::Error>>,
    {
        retry::run(&self.retry, f, |attempt, err| {
            bump(&self.counters.retries, 1);
            tracing::debug!(op, key, attempt, %err, "retrying bucket call");
        })
        .await
    }

    fn fail<T>(&self, op: &'static str, key: &str, outcome: retry::Outcome<T>) -> TieringError {
        bump(&self.counters.errors, 1);
        match outcome.result {
            Err(object_store::Error::NotFound { .. }) => TieringError::NotFound {
                key: key.to_string(),
            },
            Err(source) => TieringError::Remote {
                op,
                key: key.to_string(),
                attempts: outcome.attempts,
                elapsed: outcome.elapsed,
                source: Box::new(source),
            },
            Ok(_) => TieringError::Invalid {
                what: op.to_string(),
                reason: "internal: fail() called on success".into(),
            },
        }
    }

    async fn put_mode(
        &self,
        op: &'static str,
        key: &str,
        path: &ObjectPath,
        data: &Bytes,
        mode: PutMode,
    ) -> retry::Outcome<object_store::PutResult> {
        self.put_payload(op, key, path, PutPayload::from_bytes(data.clone()), mode)
            .await
    }

    async fn put_payload(
        &self,
        op: &'static str,
        key: &str,
        path: &ObjectPath,
        payload: PutPayload,
        mode: PutMode,
    ) -> retry::Outcome<object_store::PutResult> {
        bump(&self.counters.puts, 1);
        let outcome = self
            .call(op, key, || {
                let opts = PutOptions {
                    mode: mode.clone(),
                    ..PutOptions::default()
                };
                self.store.put_opts(path, payload.clone(), opts)
            })
            .await;
        if outcome.result.is_ok() {
            bump(&self.counters.bytes_up, payload.content_length() as u64);
        }
        outcome
    }

    /// Writes (or overwrites) an object made of `parts`, in order, without joining them.
    pub async fn put_parts(&self, key: &str, parts: Vec<Bytes>) -> Result<(), TieringError> {
        let path = parse_key(key)?;
        let payload: PutPayload = parts.into_iter().collect();
        let outcome = self
            .put_payload("put", key, &path, payload, PutMode::Overwrite)
            .await;
        match outcome.result {
            Ok(_) => Ok(()),
            Err(_) => Err(self.fail("put", key, outcome)),
        }
    }

    /// Writes (or overwrites) an object.
    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), TieringError> {
        let path = parse_key(key)?;
        let outcome = self
            .put_mode("put", key, &path, &data, PutMode::Overwrite)
            .await;
        match outcome.result {
            Ok(_) => Ok(()),
            Err(_) => Err(self.fail("put", key, outcome)),
        }
    }

    /// Creates an object only if no object has the key. Returns whether this call created
    /// it (`false`: someone else's object is there, and is left untouched).
    pub async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool, TieringError> {
        let path = parse_key(key)?;
        let outcome = self
            .put_mode("put_if_absent", key, &path, &data, PutMode::Create)
            .await;
        match &outcome.result {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {
                if outcome.attempts > 1 {
                    // An earlier attempt may have created it before its answer was lost.
                    Ok(self.holds(key, &data).await?.is_some())
                } else {
                    Ok(false)
                }
            }
            Err(_) => Err(self.fail("put_if_absent", key, outcome)),
        }
    }

    /// Writes an object only if its current etag is `etag` (`None`: only if it does not
    /// exist). Returns the new etag, or `None` when the precondition failed (someone else
    /// wrote it since `etag` was read) and nothing was written.
    pub async fn put_if_match(
        &self,
        key: &str,
        data: Bytes,
        etag: Option<String>,
    ) -> Result<Option<String>, TieringError> {
        let path = parse_key(key)?;
        if self.emulate_update.load(Ordering::Relaxed) {
            return self.put_if_match_emulated(key, data, etag).await;
        }
        let mode = match &etag {
            None => PutMode::Create,
            Some(e) => PutMode::Update(UpdateVersion {
                e_tag: Some(e.clone()),
                version: None,
            }),
        };
        let outcome = self.put_mode("put_if_match", key, &path, &data, mode).await;
        match &outcome.result {
            Ok(r) => match &r.e_tag {
                Some(e) => Ok(Some(e.clone())),
                None => Ok(self.head(key).await?.map(|(_, e)| e)),
            },
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::NotFound { .. }) => {
                if outcome.attempts > 1 {
                    Ok(self.holds(key, &data).await?)
                } else {
                    Ok(None)
                }
            }
            Err(object_store::Error::NotImplemented) if etag.is_some() => {
                tracing::debug!(url = %self.url, "store has no conditional update; emulating it in-process");
                self.emulate_update.store(true, Ordering::Relaxed);
                self.put_if_match_emulated(key, data, etag).await
            }
            Err(_) => Err(self.fail("put_if_match", key, outcome)),
        }
    }

    /// Match-etag put for stores without one (the local filesystem): atomic only among the
    /// users of this process's bucket handle (and its clones), which is what a local
    /// directory bucket can offer.
    async fn put_if_match_emulated(
        &self,
        key: &str,
        data: Bytes,
        etag: Option<String>,
    ) -> Result<Option<String>, TieringError> {
        let path = parse_key(key)?;
        let _guard = self.update_lock.lock().await;
        let current = self.head(key).await?.map(|(_, e)| e);
        if current != etag {
            return Ok(None);
        }
        let mode = if etag.is_none() {
            PutMode::Create
        } else {
            PutMode::Overwrite
        };
        let outcome = self.put_mode("put_if_match", key, &path, &data, mode).await;
        match &outcome.result {
            Ok(r) => match &r.e_tag {
                Some(e) => Ok(Some(e.clone())),
                None => Ok(self.head(key).await?.map(|(_, e)| e)),
            },
            Err(object_store::Error::AlreadyExists { .. }) => Ok(None),
            Err(_) => Err(self.fail("put_if_match", key, outcome)),
        }
    }

    /// If the object holds exactly `data`, its etag.
    async fn holds(&self, key: &str, data: &Bytes) -> Result<Option<String>, TieringError> {
        let Some((_, etag)) = self.head(key).await? else {
            return Ok(None);
        };
        match self.get(key).await {
            Ok(existing) if existing == *data => Ok(Some(etag)),
            Ok(_) => Ok(None),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads a whole object. A missing object is [`TieringError::NotFound`].
    pub async fn get(&self, key: &str) -> Result<Bytes, TieringError> {
        let path = parse_key(key)?;
        bump(&self.counters.gets, 1);
        let outcome = self
            .call("get", key, || async {
                self.store.get(&path).await?.bytes().await
            })
            .await;
        match outcome.result {
            Ok(b) => {
                bump(&self.counters.bytes_down, b.len() as u64);
                Ok(b)
            }
            Err(_) => Err(self.fail("get", key, outcome)),
        }
    }

    /// Reads bytes `range` of an object (the range must lie within the object).
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, TieringError> {
        let path = parse_key(key)?;
        if range.start > range.end {
            return Err(TieringError::Invalid {
                what: format!("get_range {key}"),
                reason: format!("range {range:?} is reversed"),
            });
        }
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        bump(&self.counters.gets, 1);
        let outcome = self
            .call("get_range", key, || {
                self.store.get_range(&path, range.clone())
            })
            .await;
        match outcome.result {
            Ok(b) => {
                bump(&self.counters.bytes_down, b.len() as u64);
                Ok(b)
            }
            Err(_) => Err(self.fail("get_range", key, outcome)),
        }
    }

    /// Size and etag of an object, or `None` if there is none.
    pub async fn head(&self, key: &str) -> Result<Option<(u64, String)>, TieringError> {
        let path = parse_key(key)?;
        bump(&self.counters.heads, 1);
        let outcome = self.call("head", key, || self.store.head(&path)).await;
        match outcome.result {
            Ok(meta) => Ok(Some((meta.size, meta.e_tag.unwrap_or_default()))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(_) => Err(self.fail("head", key, outcome)),
        }
    }

    /// Every object under `prefix` (whole path segments: `topics/a` does not match
    /// `topics/ab/...`; `""` lists everything), as (key, size), sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, TieringError> {
        let trimmed = prefix.trim_end_matches('/');
        let path = if trimmed.is_empty() {
            None
        } else {
            Some(parse_key(trimmed)?)
        };
        bump(&self.counters.lists, 1);
        let outcome = self
            .call("list", prefix, || {
                self.store
                    .list(path.as_ref())
                    .map_ok(|m| (m.location.to_string(), m.size))
                    .try_collect::<Vec<_>>()
            })
            .await;
        match outcome.result {
            Ok(mut v) => {
                v.sort();
                Ok(v)
            }
            Err(_) => Err(self.fail("list", prefix, outcome)),
        }
    }

    /// The objects under `prefix` whose keys sort after `after` (a key or a key prefix;
    /// whole path segments for `prefix`, as [`Bucket::list`]), sorted by key.
    pub async fn list_after(
        &self,
        prefix: &str,
        after: &str,
    ) -> Result<Vec<ListedObject>, TieringError> {
        let path = parse_key(prefix.trim_end_matches('/'))?;
        let offset = parse_key(after)?;
        bump(&self.counters.lists, 1);
        let outcome = self
            .call("list", prefix, || {
                self.store
                    .list_with_offset(Some(&path), &offset)
                    .map_ok(|m| ListedObject {
                        key: m.location.to_string(),
                        size: m.size,
                        modified_ms: m.last_modified.timestamp_millis(),
                    })
                    .try_collect::<Vec<_>>()
            })
            .await;
        match outcome.result {
            Ok(mut v) => {
                v.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(v)
            }
            Err(_) => Err(self.fail("list", prefix, outcome)),
        }
    }

    /// Deletes an object; deleting a missing object succeeds.
    pub async fn delete(&self, key: &str) -> Result<(), TieringError> {
        let path = parse_key(key)?;
        bump(&self.counters.deletes, 1);
        let outcome = self.call("delete", key, || self.store.delete(&path)).await;
        match outcome.result {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(_) => Err(self.fail("delete", key, outcome)),
        }
    }
}

#[cfg(test)]
#[path = "bucket_tests.rs"]
mod tests;
