//! Latency samples and throughput figures.

use std::time::Duration;

use serde::Serialize;

/// Latency samples in microseconds; percentiles by sorting (runs are bounded).
#[derive(Default)]
pub struct Latencies {
    micros: Vec<u64>,
}

#[derive(Debug, Serialize, Clone, Copy)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latencies {
    pub fn record(&mut self, d: Duration) {
        self.micros.push(d.as_micros() as u64);
    }

    pub fn len(&self) -> usize {
        self.micros.len()
    }

    pub fn percentiles(&mut self) -> Percentiles {
        self.micros.sort_unstable();
        let at = |q: f64| -> f64 {
            if self.micros.is_empty() {
                return 0.0;
            }
            let i = ((self.micros.len() as f64 - 1.0) * q).round() as usize;
            self.micros[i] as f64 / 1000.0
        };
        Percentiles {
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: at(1.0),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Throughput {
    pub messages: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub msgs_per_sec: f64,
    pub mb_per_sec: f64,
}

impl Throughput {
    pub fn new(messages: u64, bytes: u64, elapsed: Duration) -> Self {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        Self {
            messages,
            bytes,
            seconds,
            msgs_per_sec: messages as f64 / seconds,
            mb_per_sec: bytes as f64 / seconds / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranks() {
        let mut l = Latencies::default();
        for i in 1..=1000 {
            l.record(Duration::from_micros(i * 1000));
        }
        let p = l.percentiles();
        assert_eq!(p.max_ms, 1000.0);
        assert!((p.p50_ms - 500.0).abs() <= 1.0);
        assert!((p.p99_ms - 990.0).abs() <= 1.0);
    }

    #[test]
    fn throughput_divides_by_time() {
        let t = Throughput::new(1000, 2_000_000, Duration::from_secs(2));
        assert_eq!(t.msgs_per_sec, 500.0);
        assert_eq!(t.mb_per_sec, 1.0);
    }
}
