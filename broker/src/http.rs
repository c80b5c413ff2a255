//! The HTTP endpoint for `/metrics` (Prometheus text) and `/health`.
//!
//! It answers single GET requests on a connection and closes it; bodies are small and
//! scrapers reconnect, so a full HTTP stack would buy nothing here.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::broker::Broker;
use crate::metrics::Gauges;

pub async fn serve(listener: TcpListener, broker: Arc<Broker>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let broker = broker.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &broker)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, broker: &Broker) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    // Read until the end of the request head (or the buffer is full).
    while len < buf.len() {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let (status, content_type, body) = match path {
        "/health" => match broker.health() {
            Ok(()) => ("200 OK", "text/plain", "ok\n".to_string()),
            Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
        },
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4",
            broker.metrics.render(&broker.gauges())
                + &broker.groups.render_metrics(&broker.partitions)
                + &broker.tier.render_metrics(&broker.node.snapshots.stats)
                + &crate::tiering::render_group_progress(broker),
        ),
        _ => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics or /health\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

impl Broker {
    pub fn gauges(&self) -> Gauges {
        let w = self.node.wal.stats();
        Gauges {
            partitions: self.partitions.count(),
            wal_bytes: w.bytes_on_disk,
            wal_segments: w.segments,
            wal_appends: w.appends,
            wal_fsyncs: w.fsyncs,
            wal_fsync_micros_total: w.fsync_micros_total,
            wal_fsync_micros_max: w.fsync_micros_max,
            wal_writes: w.writes,
            wal_write_micros_total: w.write_micros_total,
        }
    }

    /// Healthy when the metadata group has a leader.
    pub fn health(&self) -> Result<(), String> {
        let leader = {
            let m = self.node.metadata_raft.metrics();
            let m = m.borrow();
            match m.current_leader {
                None => return Err("metadata group has no leader".into()),
                Some(l) => (m.state != openraft::ServerState::Leader).then_some(l),
            }
        };
        // A follower keeps the last leader it saw: one cut off from it would look healthy.
        if let Some(leader) = leader {
            let session = Duration::from_millis(self.config.broker_session_timeout_ms);
            let silent = self.node.transport.heard_since(leader);
            if silent.is_none_or(|ago| ago >= session) {
                return Err(format!(
                    "the metadata leader, node {leader}, has not been heard from for {}: this node is cut off from the cluster's controller",
                    silent.map_or("ever".to_string(), |ago| format!("{ago:?}"))
                ));
            }
        }
        // A group whose Raft core stopped (a storage error) no longer replicates: the node
        // must not look healthy.
        for p in self.partitions.all() {
            if let Err(e) = &p.raft.metrics().borrow().running_state {
                return Err(format!(
                    "raft group of {}-{} stopped: {e}",
                    p.topic, p.index
                ));
            }
        }
        Ok(())
    }
}
