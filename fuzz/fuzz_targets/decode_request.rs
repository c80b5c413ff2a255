//! Fuzzes the request decode path a client's bytes take: frame preamble, header, body
//! (kafka-protocol codecs), and the produce batch validation behind it.
//!
//! Run: `cargo +nightly fuzz run decode_request` from the repository root.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = chronik_broker::protocol::preamble(data);
    if let Ok(req) = chronik_broker::protocol::decode_request(Bytes::copy_from_slice(data)) {
        if let kafka_protocol::messages::RequestKind::Produce(p) = req.body {
            for t in p.topic_data {
                for part in t.partition_data {
                    if let Some(records) = part.records {
                        let _ = chronik_broker::partition::batch::validate_produce(&records, 1 << 20);
                    }
                }
            }
        }
    }
    let _ = chronik_broker::partition::batch::validate_produce(data, 1 << 20);
});
