//! `consume`: read a topic (from the beginning for catch-up, or the tail) as fast as the
//! client can, and the end-to-end latency benchmark `e2e`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::client::{ensure_topic, payload, Target};
use crate::stats::{Latencies, Percentiles, Throughput};

#[derive(clap::Args, Clone, Debug)]
pub struct ConsumeArgs {
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// beginning or end.
    #[arg(long, default_value = "beginning")]
    pub from: String,
    /// Stop after this many messages; default: everything up to the high watermarks.
    #[arg(long)]
    pub count: Option<u64>,
    /// Give up when no message arrives for this long.
    #[arg(long, default_value_t = 10)]
    pub idle_timeout_s: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
pub struct ConsumeReport {
    pub topic: String,
    pub from: String,
    pub throughput: Throughput,
}

fn consumer(brokers: &str) -> anyhow::Result<BaseConsumer> {
    Target {
        brokers: brokers.to_string(),
    }
    .config()
    .set("group.id", "chronik-bench")
    .set("enable.auto.commit", "false")
    .set("fetch.max.bytes", "52428800")
    .set("queued.max.messages.kbytes", "262144")
    .create()
    .context("create consumer")
}

fn assign(c: &BaseConsumer, topic: &str, offset: Offset) -> anyhow::Result<Vec<(i32, i64)>> {
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .context("fetch metadata")?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        bail!("topic {topic} not found");
    };
    let mut tpl = TopicPartitionList::new();
    let mut highs = Vec::new();
    for p in t.partitions() {
        tpl.add_partition_offset(topic, p.id(), offset)?;
        let (_, high) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        highs.push((p.id(), high));
    }
    c.assign(&tpl).context("assign partitions")?;
    Ok(highs)
}

pub fn run(args: &ConsumeArgs) -> anyhow::Result<ConsumeReport> {
    let c = consumer(&args.brokers)?;
    let offset = match args.from.as_str() {
        "beginning" => Offset::Beginning,
        "end" => Offset::End,
        other => bail!("--from must be beginning or end, not {other}"),
    };
    let highs = assign(&c, &args.topic, offset)?;
    let want = args
        .count
        .unwrap_or_else(|| highs.iter().map(|(_, h)| *h as u64).sum());
    let (mut n, mut bytes) = (0u64, 0u64);
    let mut first: Option<Instant> = None;
    let mut last_msg = Instant::now();
    while n < want {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                n += 1;
                bytes += m.payload().map(|p| p.len()).unwrap_or(0) as u64;
                last_msg = Instant::now();
            }
            Some(Err(e)) => bail!("consume: {e}"),
            None if last_msg.elapsed() > Duration::from_secs(args.idle_timeout_s) => break,
            None => {}
        }
    }
    let elapsed = first.map(|f| f.elapsed()).unwrap_or_default();
    Ok(ConsumeReport {
        topic: args.topic.clone(),
        from: args.from.clone(),
        throughput: Throughput::new(n, bytes, elapsed),
    })
}

#[derive(clap::Args, Clone, Debug)]
pub struct E2eArgs {
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    #[arg(long, default_value = "e2e")]
    pub topic: String,
    /// Messages per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    #[arg(long, default_value_t = 1024)]
    pub msg_size: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
pub struct E2eReport {
    pub rate: u64,
    pub received: u64,
    pub latency: Percentiles,
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Produce at a fixed rate with a send timestamp in each value; a tailing consumer in the
/// same process measures produce → receipt.
pub fn e2e(args: &E2eArgs) -> anyhow::Result<E2eReport> {
    let target = Target {
        brokers: args.brokers.clone(),
    };
    ensure_topic(&target, &args.topic, 1)?;
    let c = consumer(&args.brokers)?;
    assign(&c, &args.topic, Offset::End)?;
    // Let the consumer resolve its start offset before the first message is sent.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(1) {
        c.poll(Duration::from_millis(50));
    }
    let producer: ThreadedProducer<DefaultProducerContext> = target
        .config()
        .set("acks", "all")
        .set("linger.ms", "0")
        .create()
        .context("create producer")?;
    let done = Arc::new(AtomicBool::new(false));
    let (rate, duration, size, topic) = (
        args.rate.max(1),
        args.duration_s,
        args.msg_size.max(8),
        args.topic.clone(),
    );
    let stop = done.clone();
    let sender = thread::spawn(move || -> anyhow::Result<u64> {
        let mut body = payload(size, 7);
        let t0 = Instant::now();
        let mut sent = 0u64;
        while t0.elapsed() < Duration::from_secs(duration) {
            let due = t0 + Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            body[..8].copy_from_slice(&now_nanos().to_be_bytes());
            producer
                .send(BaseRecord::<(), [u8]>::to(&topic).payload(&body[..]))
                .map_err(|(e, _)| e)?;
            sent += 1;
        }
        producer.flush(Duration::from_secs(30))?;
        stop.store(true, Ordering::Relaxed);
        Ok(sent)
    });
    let mut lat = Latencies::default();
    let mut idle_since: Option<Instant> = None;
    loop {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                idle_since = None;
                if let Some(p) = m.payload().filter(|p| p.len() >= 8) {
                    let mut ts = [0u8; 8];
                    ts.copy_from_slice(&p[..8]);
                    let sent_at = u64::from_be_bytes(ts);
                    lat.record(Duration::from_nanos(now_nanos().saturating_sub(sent_at)));
                }
            }
            Some(Err(e)) => bail!("consume: {e}"),
            None if done.load(Ordering::Relaxed) => {
                // Drain for a little while after the producer finished.
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(3) {
                    break;
                }
            }
            None => {}
        }
    }
    let sent = sender
        .join()
        .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
    let received = lat.len() as u64;
    if received < sent {
        bail!("{sent} sent but only {received} received");
    }
    Ok(E2eReport {
        rate: args.rate,
        received,
        latency: lat.percentiles(),
    })
}
