//! `produce`: maximum (or rate-limited) produce throughput and delivery latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use serde::Serialize;

use crate::client::{ensure_topic, Payloads, Target};
use crate::stats::{Latencies, Percentiles, Throughput};

#[derive(clap::Args, Clone, Debug)]
pub struct ProduceArgs {
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Use librdkafka's in-memory mock cluster instead of a broker (the ceiling).
    #[arg(long)]
    pub mock: bool,
    #[arg(long, default_value = "bench")]
    pub topic: String,
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    #[arg(long, default_value_t = 1024)]
    pub msg_size: usize,
    /// Messages to send in total (across producers); or use --duration-s.
    #[arg(long)]
    pub count: Option<u64>,
    #[arg(long)]
    pub duration_s: Option<u64>,
    /// 0, 1 or all.
    #[arg(long, default_value = "all")]
    pub acks: String,
    /// none, gzip, snappy, lz4, zstd (librdkafka's bundled build here has zstd only if linked).
    #[arg(long, default_value = "none")]
    pub compression: String,
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Total messages per second; unlimited when absent.
    #[arg(long)]
    pub rate: Option<u64>,
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    #[arg(long)]
    pub json: bool,
    /// Print the client's per-broker round-trip figures (from librdkafka statistics)
    /// to stderr every second: where a request's time goes, as the client sees it.
    #[arg(long)]
    pub client_stats: bool,
    /// Extra librdkafka producer property, `name=value` (repeatable), like
    /// rdkafka_performance's -X. Applied last, so it overrides the settings above.
    #[arg(short = 'X', long = "property", value_name = "NAME=VALUE")]
    pub properties: Vec<String>,
}

#[derive(Default)]
struct Deliveries {
    ok: AtomicU64,
    failed: AtomicU64,
    latencies: Mutex<Latencies>,
}

struct Ctx(Arc<Deliveries>);

impl ClientContext for Ctx {
    /// librdkafka's own log lines (warnings, or what `-X debug=...` asks for) go to stderr.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, line: &str) {
        eprintln!("librdkafka {level:?} {fac}: {line}");
    }

    fn stats(&self, s: rdkafka::Statistics) {
        for b in s.brokers.values().filter(|b| b.nodeid >= 0) {
            let window = |w: &Option<rdkafka::statistics::Window>| {
                w.as_ref()
                    .map_or("-".to_string(), |w| format!("{}/{}", w.avg, w.p99))
            };
            eprintln!(
                "client {}: rtt avg/p99 us {}  queued in client {}  waiting in outbuf {}  in flight {}  requests sent {}",
                b.name,
                window(&b.rtt),
                window(&b.int_latency),
                window(&b.outbuf_latency),
                b.waitresp_cnt,
                b.tx,
            );
        }
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = Box<Instant>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Instant>) {
        match result {
            Ok(_) => {
                self.0.ok.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut l) = self.0.latencies.lock() {
                    l.record(sent.elapsed());
                }
            }
            Err(_) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[derive(Serialize)]
pub struct ProduceReport {
    pub target: String,
    pub partitions: i32,
    pub msg_size: usize,
    pub acks: String,
    pub producers: usize,
    pub failed: u64,
    pub throughput: Throughput,
    pub latency: Percentiles,
}

pub fn run(args: &ProduceArgs) -> anyhow::Result<ProduceReport> {
    if args.count.is_none() && args.duration_s.is_none() {
        bail!("give --count or --duration-s");
    }
    // The mock cluster stores nothing durable: the practical ceiling of the client. It
    // gets a topic of the same shape as the broker's, because the client's pipelining is
    // per partition (an idempotent producer keeps one request in flight per partition).
    let mock = if args.mock {
        let mock = MockCluster::new(1).context("start librdkafka's mock cluster")?;
        mock.create_topic(&args.topic, args.partitions, 1)
            .context("create the mock cluster's topic")?;
        Some(mock)
    } else {
        None
    };
    let target = Target {
        brokers: mock
            .as_ref()
            .map_or_else(|| args.brokers.clone(), MockCluster::bootstrap_servers),
    };
    if mock.is_none() {
        ensure_topic(&target, &args.topic, args.partitions)?;
    }
    let deliveries = Arc::new(Deliveries::default());
    let deadline = args
        .duration_s
        .map(|s| Instant::now() + Duration::from_secs(s));
    let per_producer = args.count.map(|c| c.div_ceil(args.producers as u64));
    let rate = args
        .rate
        .map(|r| (r as f64 / args.producers as f64).max(1.0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for id in 0..args.producers {
        let mut config = target.config();
        config
            .set("acks", &args.acks)
            .set("compression.type", &args.compression)
            .set("linger.ms", args.linger_ms.to_string())
            .set("queue.buffering.max.kbytes", "262144")
            .set(
                "statistics.interval.ms",
                if args.client_stats { "1000" } else { "0" },
            )
            .set(
                "enable.idempotence",
                if args.acks == "all" { "true" } else { "false" },
            );
        for p in &args.properties {
            let Some((name, value)) = p.split_once('=') else {
                bail!("-X {p:?}: expected NAME=VALUE, e.g. -X linger.ms=10");
            };
            config.set(name, value);
            if name == "debug" {
                config.set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
            }
        }
        let producer: ThreadedProducer<Ctx> = config
            .create_with_context(Ctx(deliveries.clone()))
            .context("create producer")?;
        let topic = args.topic.clone();
        let mut bodies = Payloads::new(args.msg_size, id as u64 + 1);
        handles.push(thread::spawn(move || -> anyhow::Result<u64> {
            let mut sent = 0u64;
            let t0 = Instant::now();
            loop {
                if per_producer.is_some_and(|n| sent >= n)
                    || deadline.is_some_and(|d| Instant::now() >= d)
                {
                    break;
                }
                if let Some(r) = rate {
                    let due = t0 + Duration::from_secs_f64(sent as f64 / r);
                    let now = Instant::now();
                    if due > now {
                        thread::sleep(due - now);
                    }
                }
                let mut record = BaseRecord::<(), [u8], Box<Instant>>::with_opaque_to(
                    &topic,
                    Box::new(Instant::now()),
                )
                .payload(bodies.next());
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                            record = r;
                            producer.poll(Duration::from_millis(5));
                        }
                        Err((e, _)) => return Err(e.into()),
                    }
                }
                sent += 1;
            }
            producer
                .flush(Duration::from_secs(120))
                .context("flush producer")?;
            Ok(sent)
        }));
    }
    let mut sent = 0;
    for h in handles {
        sent += h
            .join()
            .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
    }
    let elapsed = started.elapsed();
    let ok = deliveries.ok.load(Ordering::Relaxed);
    let failed = deliveries.failed.load(Ordering::Relaxed);
    let latency = deliveries
        .latencies
        .lock()
        .map_err(|_| anyhow::anyhow!("latency lock poisoned"))?
        .percentiles();
    if ok + failed != sent {
        bail!("{sent} sent but {ok} acked and {failed} failed");
    }
    Ok(ProduceReport {
        target: if args.mock {
            "librdkafka-mock".into()
        } else {
            args.brokers.clone()
        },
        partitions: args.partitions,
        msg_size: args.msg_size,
        acks: args.acks.clone(),
        producers: args.producers,
        failed,
        throughput: Throughput::new(ok, ok * args.msg_size as u64, elapsed),
        latency,
    })
}
