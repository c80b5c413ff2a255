//! A conformance suite every [`Bucket`] backend must pass (in-memory, local directory, S3
//! via moto; the broker may run it against its own wrappers). It asserts, so it panics on
//! failure like any test helper; `scope` is a key prefix of its own so runs do not collide.

use bytes::Bytes;

use crate::{Bucket, TieringError};

/// Runs every check of the suite under `scope/`.
pub async fn bucket_suite(bucket: &Bucket, scope: &str) {
    basic_objects(bucket, scope).await;
    listing(bucket, scope).await;
    create_only(bucket, scope).await;
    match_etag(bucket, scope).await;
    racing_creates(bucket, scope, 8).await;
    racing_updates(bucket, scope, 8).await;
}

/// put, get, get_range, head, delete; a missing object's error names its key.
pub async fn basic_objects(bucket: &Bucket, scope: &str) {
    let key = format!("{scope}/basic/obj");
    let data = Bytes::from((0..=255u8).cycle().take(10_000).collect::<Vec<u8>>());
    bucket.put(&key, data.clone()).await.expect("put");
    assert_eq!(bucket.get(&key).await.expect("get"), data);
    assert_eq!(
        bucket.get_range(&key, 100..356).await.expect("range"),
        data.slice(100..356)
    );
    assert!(bucket
        .get_range(&key, 5..5)
        .await
        .expect("empty")
        .is_empty());
    let (size, etag) = bucket.head(&key).await.expect("head").expect("exists");
    assert_eq!(size, 10_000);
    assert!(!etag.is_empty());
    bucket
        .put(&key, Bytes::from_static(b"v2"))
        .await
        .expect("overwrite");
    assert_eq!(bucket.get(&key).await.expect("get v2").as_ref(), b"v2");
    bucket.delete(&key).await.expect("delete");
    bucket
        .delete(&key)
        .await
        .expect("deleting a missing object succeeds");
    assert_eq!(bucket.head(&key).await.expect("head"), None);
    let err = bucket.get(&key).await.expect_err("gone");
    assert!(matches!(err, TieringError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains(&key), "{err}");
}

/// list returns whole-segment prefix matches, sorted, with sizes.
pub async fn listing(bucket: &Bucket, scope: &str) {
    let base = format!("{scope}/list");
    for (k, n) in [("b/2", 2), ("a/1", 1), ("a/3", 3), ("ab/4", 4)] {
        bucket
            .put(&format!("{base}/{k}"), Bytes::from(vec![0u8; n]))
            .await
            .expect("put");
    }
    let got = bucket.list(&format!("{base}/a/")).await.expect("list");
    assert_eq!(
        got,
        vec![(format!("{base}/a/1"), 1), (format!("{base}/a/3"), 3)]
    );
    let got = bucket.list(&format!("{base}/a")).await.expect("list");
    assert_eq!(
        got.len(),
        2,
        "a prefix is whole segments: a does not match ab"
    );
    assert_eq!(bucket.list(&base).await.expect("all").len(), 4);
    // Keys after an offset (a key or a key prefix), with their write time.
    let after = bucket
        .list_after(&format!("{base}/a/"), &format!("{base}/a/1"))
        .await
        .expect("list after");
    assert_eq!(
        after
            .iter()
            .map(|o| (o.key.as_str(), o.size))
            .collect::<Vec<_>>(),
        vec![(format!("{base}/a/3").as_str(), 3)]
    );
    assert!(after[0].modified_ms > 1_600_000_000_000, "{after:?}");
    let from_prefix = bucket
        .list_after(&format!("{base}/a"), &format!("{base}/a/0"))
        .await
        .expect("list after a prefix");
    assert_eq!(from_prefix.len(), 2);
    assert!(bucket
        .list(&format!("{base}/none"))
        .await
        .expect("empty")
        .is_empty());
    for (k, _) in bucket.list(&base).await.expect("list") {
        bucket.delete(&k).await.expect("delete");
    }
}

/// put_if_absent creates once and never overwrites.
pub async fn create_only(bucket: &Bucket, scope: &str) {
    let key = format!("{scope}/create/obj");
    assert!(bucket
        .put_if_absent(&key, Bytes::from_static(b"first"))
        .await
        .expect("create"));
    assert!(!bucket
        .put_if_absent(&key, Bytes::from_static(b"second"))
        .await
        .expect("exists"));
    assert_eq!(bucket.get(&key).await.expect("get").as_ref(), b"first");
}

/// put_if_match: create with None, update with the current etag, refuse a stale one.
pub async fn match_etag(bucket: &Bucket, scope: &str) {
    let key = format!("{scope}/match/obj");
    let e1 = bucket
        .put_if_match(&key, Bytes::from_static(b"v1"), None)
        .await
        .expect("create")
        .expect("created");
    assert_eq!(
        bucket
            .put_if_match(&key, Bytes::from_static(b"again"), None)
            .await
            .expect("create again"),
        None
    );
    let e2 = bucket
        .put_if_match(&key, Bytes::from_static(b"v2"), Some(e1.clone()))
        .await
        .expect("update")
        .expect("matched");
    assert_ne!(e1, e2);
    assert_eq!(
        bucket
            .put_if_match(&key, Bytes::from_static(b"stale"), Some(e1))
            .await
            .expect("stale"),
        None
    );
    assert_eq!(bucket.get(&key).await.expect("get").as_ref(), b"v2");
    let (_, head_etag) = bucket.head(&key).await.expect("head").expect("exists");
    assert_eq!(head_etag, e2, "put returns the etag head reports");
    assert_eq!(
        bucket
            .put_if_match(
                &format!("{scope}/match/missing"),
                Bytes::from_static(b"x"),
                Some(e2)
            )
            .await
            .expect("missing"),
        None,
        "matching against a missing object fails the precondition"
    );
}

/// `writers` concurrent create-only puts of one key: exactly one wins, and the object
/// holds the winner's bytes.
pub async fn racing_creates(bucket: &Bucket, scope: &str, writers: usize) {
    let key = format!("{scope}/race/create");
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let bucket = bucket.clone();
            let key = key.clone();
            tokio::spawn(async move {
                let data = Bytes::from(format!("writer {w}"));
                (w, bucket.put_if_absent(&key, data).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        let (w, created) = t.await.expect("join");
        if created.expect("put_if_absent") {
            winners.push(w);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one creator wins: {winners:?}");
    let got = bucket.get(&key).await.expect("get");
    assert_eq!(got, Bytes::from(format!("writer {}", winners[0])));
}

/// `writers` concurrent match-etag puts from the same etag: exactly one wins.
pub async fn racing_updates(bucket: &Bucket, scope: &str, writers: usize) {
    let key = format!("{scope}/race/update");
    let etag = bucket
        .put_if_match(&key, Bytes::from_static(b"base"), None)
        .await
        .expect("create")
        .expect("created");
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let bucket = bucket.clone();
            let key = key.clone();
            let etag = etag.clone();
            tokio::spawn(async move {
                let data = Bytes::from(format!("update {w}"));
                (w, bucket.put_if_match(&key, data, Some(etag)).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        let (w, r) = t.await.expect("join");
        if r.expect("put_if_match").is_some() {
            winners.push(w);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one updater wins: {winners:?}");
    let got = bucket.get(&key).await.expect("get");
    assert_eq!(got, Bytes::from(format!("update {}", winners[0])));
}
