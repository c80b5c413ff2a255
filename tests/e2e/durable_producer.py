"""Producer process for the kill -9 durability test (run as a subprocess).

usage: durable_producer.py BOOTSTRAP TOPIC PARTITIONS OUTDIR

Produces key=sequence number (ascii), value=f"{seq}:{partition}" to partition seq % PARTITIONS
with an idempotent acks=all producer, as fast as the broker accepts, and appends one line
per delivery report to OUTDIR/acks.log ("seq partition offset") or OUTDIR/errors.log
("seq code name"). It stops producing when OUTDIR/stop exists (or after MAX_SECONDS or
MAX_MESSAGES), flushes, writes OUTDIR/done and exits 0; a fatal client error exits 3.
"""

import os
import sys
import time

from confluent_kafka import KafkaError, Producer

MAX_SECONDS = 240
MAX_MESSAGES = 2_000_000


def main() -> int:
    bootstrap, topic, partitions, outdir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    acks = open(os.path.join(outdir, "acks.log"), "a", buffering=1)
    errors = open(os.path.join(outdir, "errors.log"), "a", buffering=1)
    stop_file = os.path.join(outdir, "stop")
    fatal = []

    def on_error(err: KafkaError):
        errors.write(f"client-error {err.code()} {err.name()} fatal={err.fatal()} {err.str()}\n")
        if err.fatal():
            fatal.append(err)

    def on_delivery(err, msg):
        seq = msg.key().decode()
        if err is None:
            acks.write(f"{seq} {msg.partition()} {msg.offset()}\n")
        else:
            errors.write(f"{seq} {err.code()} {err.name()}\n")

    p = Producer({
        "bootstrap.servers": bootstrap,
        "broker.address.family": "v4",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": 120_000,
        "queue.buffering.max.messages": 20_000,
        "reconnect.backoff.ms": 50,
        "reconnect.backoff.max.ms": 500,
        "error_cb": on_error,
    })
    start = time.monotonic()
    seq = 0
    while (not os.path.exists(stop_file) and not fatal and seq < MAX_MESSAGES
           and time.monotonic() - start < MAX_SECONDS):
        try:
            p.produce(topic, key=str(seq).encode(), value=f"{seq}:{seq % partitions}".encode(),
                      partition=seq % partitions, on_delivery=on_delivery)
            seq += 1
        except BufferError:
            p.poll(0.05)
            continue
        if seq % 100 == 0:
            p.poll(0)
    remaining = p.flush(150)
    with open(os.path.join(outdir, "done"), "w") as f:
        f.write(f"produced={seq} undelivered={remaining} fatal={len(fatal)}\n")
    acks.close()
    errors.close()
    return 3 if fatal else 0


if __name__ == "__main__":
    sys.exit(main())
