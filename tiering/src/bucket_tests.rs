use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::memory::InMemory;

use super::*;
use crate::testing::bucket_suite;
use crate::FailingStore;

fn fast_policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        total_budget: Duration::from_secs(10),
        attempt_timeout: Duration::from_secs(5),
    }
}

fn failing_bucket(policy: RetryPolicy) -> (Bucket, FailingStore) {
    let fs = FailingStore::new(Arc::new(InMemory::new()));
    let bucket = Bucket::from_store("mem://test", fs.as_store()).with_retry_policy(policy);
    (bucket, fs)
}

#[tokio::test]
async fn in_memory_passes_the_suite() {
    let bucket = Bucket::from_store("mem://", Arc::new(InMemory::new()));
    bucket_suite(&bucket, "suite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_directory_passes_the_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bucket = Bucket::open(&format!("file://{}/b", dir.path().display()))
        .await
        .expect("open");
    bucket_suite(&bucket, "suite").await;
}

#[tokio::test]
async fn opens_a_local_directory_and_refuses_bad_urls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}/b", dir.path().display());
    let bucket = Bucket::open(&url).await.expect("open");
    assert_eq!(bucket.url(), url);
    // A bare absolute path means the same directory.
    let bare = format!("{}/b", dir.path().display());
    assert_eq!(Bucket::open(&bare).await.expect("open").url(), url);
    assert!(matches!(
        Bucket::open("not a url").await,
        Err(TieringError::BadUrl { .. })
    ));
    assert!(matches!(
        Bucket::open("ftp://x/y").await,
        Err(TieringError::BadUrl { .. })
    ));
    assert!(matches!(
        Bucket::open("abfs://x/y").await,
        Err(TieringError::UnsupportedScheme { .. })
    ));
    assert!(matches!(
        Bucket::open("s3:///prefix").await,
        Err(TieringError::BadUrl { .. })
    ));
}

#[tokio::test]
async fn an_unreachable_s3_endpoint_is_a_clear_error() {
    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    // Build the store explicitly rather than from the process environment, which tests
    // must not mutate.
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name("b")
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("k")
        .with_secret_access_key("s")
        .with_retry(client_retry())
        .build()
        .expect("build");
    let store: Arc<dyn ObjectStore> = Arc::new(s3);
    let err = store.list(None).try_next().await.expect_err("refused");
    let err = open_error("s3://b/p", "s3", err);
    let msg = err.to_string();
    assert!(
        msg.contains("s3://b/p") && msg.contains("cannot be reached"),
        "{msg}"
    );
    assert!(msg.contains("AWS_ENDPOINT_URL"), "{msg}");
    let missing = open_error(
        "s3://b/p",
        "s3",
        object_store::Error::NotFound {
            path: String::new(),
            source: "NoSuchBucket".into(),
        },
    );
    assert!(missing.to_string().contains("does not exist"), "{missing}");
    let denied = open_error(
        "s3://b/p",
        "s3",
        object_store::Error::PermissionDenied {
            path: String::new(),
            source: "AccessDenied".into(),
        },
    );
    assert!(denied.to_string().contains("AWS_ACCESS_KEY_ID"), "{denied}");
}

#[tokio::test]
async fn retries_transient_failures_and_counts_them() {
    let (bucket, fs) = failing_bucket(fast_policy(5));
    fs.fail_next(3);
    bucket
        .put("k", Bytes::from_static(b"abc"))
        .await
        .expect("put after retries");
    fs.fail_next(2);
    assert_eq!(bucket.get("k").await.expect("get").as_ref(), b"abc");
    let s = bucket.stats();
    assert_eq!((s.puts, s.gets, s.retries, s.errors), (1, 1, 5, 0));
    assert_eq!((s.bytes_up, s.bytes_down), (3, 3));
}

#[tokio::test]
async fn gives_up_after_the_budget_with_a_clear_error() {
    let (bucket, fs) = failing_bucket(fast_policy(4));
    fs.set_unreachable(true);
    let err = bucket
        .put("topics/x", Bytes::from_static(b"abc"))
        .await
        .expect_err("outage");
    let msg = err.to_string();
    assert!(
        msg.contains("topics/x") && msg.contains("4 attempt"),
        "{msg}"
    );
    assert_eq!(fs.calls(), 4);
    assert_eq!(bucket.stats().errors, 1);

    // A time budget stops retries too.
    let slow = RetryPolicy {
        max_attempts: 1000,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(20),
        total_budget: Duration::from_millis(200),
        attempt_timeout: Duration::from_secs(1),
    };
    let (bucket, fs) = failing_bucket(slow);
    fs.set_unreachable(true);
    let start = std::time::Instant::now();
    assert!(bucket.get("k").await.is_err());
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(fs.calls() < 1000);

    // The outage ends: the same bucket works again.
    fs.set_unreachable(false);
    bucket
        .put("k", Bytes::from_static(b"x"))
        .await
        .expect("put");
}

#[tokio::test]
async fn a_hung_attempt_times_out_and_is_retried() {
    let policy = RetryPolicy {
        attempt_timeout: Duration::from_millis(50),
        ..fast_policy(3)
    };
    let (bucket, fs) = failing_bucket(policy);
    fs.set_latency(Duration::from_secs(60));
    let start = std::time::Instant::now();
    let err = bucket.head("k").await.expect_err("hangs");
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn never_retries_answers() {
    let (bucket, fs) = failing_bucket(fast_policy(5));
    let err = bucket.get("missing").await.expect_err("missing");
    assert!(err.is_not_found());
    assert_eq!(fs.calls(), 1);
    assert!(bucket
        .put_if_absent("k", Bytes::from_static(b"a"))
        .await
        .expect("create"));
    let before = fs.calls();
    assert!(!bucket
        .put_if_absent("k", Bytes::from_static(b"b"))
        .await
        .expect("exists"));
    assert_eq!(
        fs.calls(),
        before + 1,
        "a failed precondition is not retried"
    );
    assert_eq!(bucket.stats().retries, 0);
    assert_eq!(bucket.stats().errors, 1, "only the missing get is an error");
}

#[tokio::test]
async fn a_create_whose_answer_was_lost_is_recognised() {
    // The first attempt writes but its answer is lost (simulated: write through the inner
    // store, then fail the next call so the bucket retries into "already exists").
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let fs = FailingStore::new(inner.clone());
    let bucket = Bucket::from_store("mem://", fs.as_store()).with_retry_policy(fast_policy(3));
    let ours = Bytes::from_static(b"ours");
    inner
        .put(&ObjectPath::from("k"), PutPayload::from_bytes(ours.clone()))
        .await
        .expect("seed");
    fs.fail_next(1);
    assert!(
        bucket.put_if_absent("k", ours).await.expect("create"),
        "our own bytes"
    );
    fs.fail_next(1);
    assert!(!bucket
        .put_if_absent("k", Bytes::from_static(b"theirs"))
        .await
        .expect("create"));
}

#[tokio::test]
async fn bad_keys_are_refused_before_any_call() {
    let (bucket, fs) = failing_bucket(fast_policy(1));
    for key in ["", "a//b", "../x", "a/./b"] {
        assert!(
            matches!(
                bucket.put(key, Bytes::new()).await,
                Err(TieringError::BadKey { .. })
            ),
            "{key:?}"
        );
    }
    assert_eq!(fs.calls(), 0);
}

#[tokio::test]
async fn prefixed_store_scopes_keys() {
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let scoped: Arc<dyn ObjectStore> = Arc::new(PrefixStore::new(inner.clone(), "cluster-a"));
    let bucket = Bucket::from_store("mem://cluster-a", scoped);
    bucket
        .put("x/y", Bytes::from_static(b"1"))
        .await
        .expect("put");
    assert_eq!(
        bucket.list("").await.expect("list"),
        vec![("x/y".to_string(), 1)]
    );
    assert!(inner.head(&ObjectPath::from("cluster-a/x/y")).await.is_ok());
}

#[test]
fn default_bucket_sits_next_to_the_data_dir() {
    let url = default_bucket_url(Path::new("/tmp/x/data")).expect("url");
    assert_eq!(url, "file:///tmp/x/bucket");
}
