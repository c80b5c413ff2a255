"""Producer process for the kill -9 durability test (run as a subprocess).

usage: durable_producer.py BOOTSTRAP TOPIC PARTITIONS OUTDIR

Produces key=sequence number (ascii), value=f"{seq}:{partition}" to partition seq % PARTITIONS
with an idempotent acks=all producer, as fast as the broker accepts, and appends one line
per delivery report to OUTDIR/acks.log ("seq partition offset") or OUTDIR/errors.log
("seq code name"). It stops producing when OUTDIR/stop exists (or after MAX_SECONDS or
MAX_MESSAGES), flushes, writes OUTDIR/done and exits 0; a fatal client error exits 3.
"""

import sys
import time

from confluent_kafka import Producer

from helpers import IDEMPOTENT_PRODUCER_CONF, AckLog

MAX_SECONDS = 240
MAX_MESSAGES = 2_000_000


def main() -> int:
    bootstrap, topic, partitions, outdir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    log = AckLog(outdir)
    p = Producer({
        **IDEMPOTENT_PRODUCER_CONF,
        "bootstrap.servers": bootstrap,
        "queue.buffering.max.messages": 20_000,
        "error_cb": log.on_error,
    })
    start = time.monotonic()
    seq = 0
    while (not log.stop_requested() and not log.fatal and seq < MAX_MESSAGES
           and time.monotonic() - start < MAX_SECONDS):
        try:
            p.produce(topic, key=str(seq).encode(), value=f"{seq}:{seq % partitions}".encode(),
                      partition=seq % partitions, on_delivery=log.on_delivery)
            seq += 1
        except BufferError:
            p.poll(0.05)
            continue
        if seq % 100 == 0:
            p.poll(0)
    return log.finish(seq, p.flush(150))


if __name__ == "__main__":
    sys.exit(main())
