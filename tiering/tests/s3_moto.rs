//! The bucket suite against a real S3-compatible server (moto), through `Bucket::open` and
//! the AWS environment, exactly as a broker configured with `--bucket s3://…` would.
//!
//! scripts/test starts moto and exports CHRONIK_TEST_S3_ENDPOINT (and CHRONIK_TEST_S3_BUCKET,
//! an existing bucket). Without it this test prints a skip line and passes, so
//! `cargo nextest run` works on its own.

use chronik_tiering::{chunk_read, layout, Bucket, BucketOptions, ChunkWriter, RetryPolicy};

/// Only this test lives in this binary, so setting the environment cannot race another
/// test's reads.
fn aws_env(endpoint: &str) {
    let defaults = [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ALLOW_HTTP", "true"),
    ];
    for (k, v) in defaults {
        if k == "AWS_ENDPOINT_URL" || std::env::var_os(k).is_none() {
            std::env::set_var(k, v);
        }
    }
}

fn v2_batch(base_offset: i64, records: i32, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&base_offset.to_be_bytes());
    b.extend_from_slice(&((49 + payload.len()) as i32).to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    b.push(2);
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&[0; 2]);
    b.extend_from_slice(&(records - 1).to_be_bytes());
    b.extend_from_slice(&[0; 8 + 8 + 8 + 2 + 4]);
    b.extend_from_slice(&records.to_be_bytes());
    b.extend_from_slice(payload);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_bucket_against_moto() {
    let Ok(endpoint) = std::env::var("CHRONIK_TEST_S3_ENDPOINT") else {
        println!("SKIP s3_bucket_against_moto: CHRONIK_TEST_S3_ENDPOINT is not set (scripts/test starts moto)");
        return;
    };
    let bucket_name =
        std::env::var("CHRONIK_TEST_S3_BUCKET").unwrap_or_else(|_| "chronik-test".into());
    aws_env(&endpoint);
    let run = uuid::Uuid::new_v4();
    let url = format!("s3://{bucket_name}/runs/{run}");
    let bucket = Bucket::open(&url).await.expect("open the moto bucket");
    assert_eq!(bucket.url(), url);

    chronik_tiering::testing::bucket_suite(&bucket, "suite").await;

    // A chunk goes up and comes back by range, under the URL's prefix.
    let topic = uuid::Uuid::new_v4();
    let mut w = ChunkWriter::new().with_frame_bytes(4096);
    for i in 0..30i64 {
        w.push_batch(i, i, 1000 + i, &v2_batch(i, 1, &[i as u8; 1000]))
            .expect("push");
    }
    let key = layout::chunk_key(topic, 0, 0, 29);
    bucket.put(&key, w.finish()).await.expect("put chunk");
    let index = chunk_read::fetch_index(&bucket, &key).await.expect("index");
    let got = chunk_read::read_batches(&bucket, None, &key, &index, 17, usize::MAX)
        .await
        .expect("read");
    assert_eq!(got.len(), 13);
    let listed = bucket
        .list(&layout::chunks_prefix(topic, 0))
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, key, "keys are relative to the URL prefix");
    bucket.delete(&key).await.expect("delete");

    let stats = bucket.stats();
    assert!(stats.puts > 0 && stats.gets > 0 && stats.bytes_up > 0 && stats.bytes_down > 0);
    assert_eq!(
        stats.errors, 1,
        "only the suite's deliberate get of a missing object"
    );

    // A bucket that does not exist is a clear error.
    let err = Bucket::open_with(
        &format!("s3://no-such-bucket-{run}/x"),
        BucketOptions {
            retry: RetryPolicy::no_retries(),
        },
    )
    .await
    .expect_err("missing bucket");
    let msg = err.to_string();
    assert!(
        msg.contains("no-such-bucket") && msg.contains("does not exist"),
        "{msg}"
    );

    // Clean up this run's objects.
    for (k, _) in bucket.list("").await.expect("list all") {
        bucket.delete(&k).await.expect("cleanup");
    }
    println!("s3 test ran against {endpoint}, prefix runs/{run}");
}
