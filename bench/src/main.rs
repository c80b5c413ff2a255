//! `chronik-bench`: produce, consume and end-to-end latency benchmarks through librdkafka.

mod client;
mod consume;
mod produce;
mod stats;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chronik-bench",
    about = "Benchmark a Kafka-compatible broker with librdkafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Produce throughput and delivery latency.
    Produce(produce::ProduceArgs),
    /// Consume throughput (catch-up from the beginning, or the tail).
    Consume(consume::ConsumeArgs),
    /// End-to-end latency (produce → consumer receipt) at a fixed rate.
    E2e(consume::E2eArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Produce(a) => {
            let r = produce::run(&a)?;
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                let t = &r.throughput;
                let l = &r.latency;
                println!(
                    "produce {} partitions={} size={} acks={} producers={}: {:.1} MB/s, {:.0} msgs/s, {} msgs in {:.2}s, failed={}; latency ms p50={:.2} p99={:.2} p99.9={:.2} max={:.2}",
                    r.target, r.partitions, r.msg_size, r.acks, r.producers, t.mb_per_sec, t.msgs_per_sec, t.messages, t.seconds, r.failed, l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
                );
            }
        }
        Command::Consume(a) => {
            let r = consume::run(&a)?;
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                let t = &r.throughput;
                println!(
                    "consume {} from {}: {:.1} MB/s, {:.0} msgs/s, {} msgs in {:.2}s",
                    r.topic, r.from, t.mb_per_sec, t.msgs_per_sec, t.messages, t.seconds
                );
            }
        }
        Command::E2e(a) => {
            let r = consume::e2e(&a)?;
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                let l = &r.latency;
                println!(
                    "e2e rate={}/s received={}: latency ms p50={:.2} p99={:.2} p99.9={:.2} max={:.2}",
                    r.rate, r.received, l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
                );
            }
        }
    }
    Ok(())
}
