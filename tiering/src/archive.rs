//! The Parquet archive: a topic's records as Parquet files that DuckDB, pyarrow, pandas,
//! Spark and DataFusion read as they are, without a Kafka consumer in between.
//!
//! ```text
//! archive/topic={name}/partition={partition}/{base_offset:020}-{topic_id}.parquet
//! ```
//!
//! The path is Hive-style, so `topic` and `partition` come from the path (DuckDB's
//! `hive_partitioning`, Spark, pyarrow datasets) and are not columns of the files. A file
//! holds consecutive offsets from `base_offset`; the file name sorts by offset. The topic
//! id tells a deleted topic's files from those of a topic later created under its name.
//!
//! One row per record (control records are left out), columns:
//!
//! | column | type | |
//! |---|---|---|
//! | `offset` | int64 | |
//! | `timestamp` | timestamp(ms, UTC) | |
//! | `timestamp_type` | string | `CreateTime` or `LogAppendTime` |
//! | `key`, `value` | binary, nullable | null when the record has none |
//! | `headers` | list of struct(`key` string, `value` binary nullable) | in record order |
//! | `producer_id`, `producer_epoch`, `sequence` | int64, int16, int32 | -1 when not idempotent |
//! | `leader_epoch` | int32 | |
//!
//! The files are zstd-compressed, with statistics, so readers skip row groups by offset
//! and timestamp.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, Int16Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, ListArray, RecordBatch, StructArray};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{KeyValue, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use uuid::Uuid;

/// `archive/topic={name}/partition={partition}/`.
pub fn archive_prefix(topic: &str, partition: i32) -> String {
    format!("archive/topic={topic}/partition={partition}/")
}

/// The key of the archive file that starts at `base_offset`.
pub fn archive_key(topic: &str, topic_id: Uuid, partition: i32, base_offset: i64) -> String {
    format!(
        "{}{base_offset:020}-{}.parquet",
        archive_prefix(topic, partition),
        topic_id.as_hyphenated()
    )
}

/// One record, as the archive stores it.
pub struct ArchiveRecord<'a> {
    pub offset: i64,
    pub timestamp: i64,
    pub log_append_time: bool,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub sequence: i32,
    pub leader_epoch: i32,
}

const BASE_OFFSET_KEY: &str = "chronik.base_offset";
const LAST_OFFSET_KEY: &str = "chronik.last_offset";

/// The offsets an archive file holds, from its footer.
pub fn archived_range(file: &Bytes) -> Result<(i64, i64), String> {
    let meta = ParquetMetaDataReader::new()
        .parse_and_finish(file)
        .map_err(|e| format!("not an archive file: {e}"))?;
    let kv = meta.file_metadata().key_value_metadata();
    let get = |key: &str| -> Result<i64, String> {
        kv.into_iter()
            .flatten()
            .find(|e| e.key == key)
            .and_then(|e| e.value.as_deref())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("archive file without {key}"))
    };
    Ok((get(BASE_OFFSET_KEY)?, get(LAST_OFFSET_KEY)?))
}

/// Rows buffered before they are handed to the Parquet writer as one Arrow batch.
const BATCH_ROWS: usize = 8192;
/// Rows per Parquet row group, at most ...
const ROW_GROUP_ROWS: usize = 128 * 1024;
/// ... and bytes.
const ROW_GROUP_BYTES: usize = 8 << 20;

fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ])
}

fn header_item() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Struct(header_fields()), false))
}

/// The archive's Arrow schema.
pub fn archive_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("offset", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("timestamp_type", DataType::Utf8, false),
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new("headers", DataType::List(header_item()), false),
        Field::new("producer_id", DataType::Int64, false),
        Field::new("producer_epoch", DataType::Int16, false),
        Field::new("sequence", DataType::Int32, false),
        Field::new("leader_epoch", DataType::Int32, false),
    ]))
}

/// Builds one archive file in memory.
pub struct ArchiveWriter {
    schema: SchemaRef,
    writer: ArrowWriter<Vec<u8>>,
    rows: Rows,
    written: usize,
}

#[derive(Default)]
struct Rows {
    offset: Int64Builder,
    timestamp: TimestampMillisecondBuilder,
    timestamp_type: StringBuilder,
    key: BinaryBuilder,
    value: BinaryBuilder,
    header_keys: StringBuilder,
    header_values: BinaryBuilder,
    header_counts: Vec<usize>,
    producer_id: Int64Builder,
    producer_epoch: Int16Builder,
    sequence: Int32Builder,
    leader_epoch: Int32Builder,
}

impl Rows {
    fn len(&self) -> usize {
        self.header_counts.len()
    }

    fn push(&mut self, r: &ArchiveRecord<'_>) {
        self.offset.append_value(r.offset);
        self.timestamp.append_value(r.timestamp);
        self.timestamp_type.append_value(if r.log_append_time {
            "LogAppendTime"
        } else {
            "CreateTime"
        });
        self.key.append_option(r.key);
        self.value.append_option(r.value);
        for (k, v) in &r.headers {
            self.header_keys.append_value(k);
            self.header_values.append_option(*v);
        }
        self.header_counts.push(r.headers.len());
        self.producer_id.append_value(r.producer_id);
        self.producer_epoch.append_value(r.producer_epoch);
        self.sequence.append_value(r.sequence);
        self.leader_epoch.append_value(r.leader_epoch);
    }

    /// The buffered rows as one Arrow batch; the builders start over.
    fn take(&mut self, schema: &SchemaRef) -> Result<RecordBatch, String> {
        let headers = StructArray::try_new(
            header_fields(),
            vec![
                Arc::new(self.header_keys.finish()) as ArrayRef,
                Arc::new(self.header_values.finish()),
            ],
            None,
        )
        .map_err(|e| format!("archive headers: {e}"))?;
        let counts = std::mem::take(&mut self.header_counts);
        let headers = ListArray::try_new(
            header_item(),
            OffsetBuffer::from_lengths(counts),
            Arc::new(headers),
            None,
        )
        .map_err(|e| format!("archive headers: {e}"))?;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.offset.finish()),
            Arc::new(self.timestamp.finish().with_timezone("UTC")),
            Arc::new(self.timestamp_type.finish()),
            Arc::new(self.key.finish()),
            Arc::new(self.value.finish()),
            Arc::new(headers),
            Arc::new(self.producer_id.finish()),
            Arc::new(self.producer_epoch.finish()),
            Arc::new(self.sequence.finish()),
            Arc::new(self.leader_epoch.finish()),
        ];
        RecordBatch::try_new(schema.clone(), columns).map_err(|e| format!("archive rows: {e}"))
    }
}

impl ArchiveWriter {
    /// A file for `topic`'s `partition`; the names go into the file's key-value metadata.
    pub fn new(topic: &str, topic_id: Uuid, partition: i32) -> Result<Self, String> {
        let schema = archive_schema();
        let metadata = [
            ("chronik.topic", topic.to_string()),
            ("chronik.topic_id", topic_id.as_hyphenated().to_string()),
            ("chronik.partition", partition.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| KeyValue::new(k.to_string(), v))
        .collect();
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(1).map_err(|e| e.to_string())?,
            ))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            // Row groups are flushed into the file as they fill: the writer holds one
            // encoded row group at a time, not the whole file twice.
            .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
            // Keys and values are the producers' bytes, mostly unique: a dictionary costs
            // memory and time and is dropped by the writer anyway.
            .set_column_dictionary_enabled(ColumnPath::from("key"), false)
            .set_column_dictionary_enabled(ColumnPath::from("value"), false)
            .set_key_value_metadata(Some(metadata))
            .build();
        let writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props))
            .map_err(|e| format!("start archive file: {e}"))?;
        Ok(Self {
            schema,
            writer,
            rows: Rows::default(),
            written: 0,
        })
    }

    pub fn push(&mut self, record: &ArchiveRecord<'_>) -> Result<(), String> {
        self.rows.push(record);
        if self.rows.len() >= BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), String> {
        if self.rows.len() == 0 {
            return Ok(());
        }
        self.written += self.rows.len();
        let batch = self.rows.take(&self.schema)?;
        self.writer
            .write(&batch)
            .map_err(|e| format!("write archive rows: {e}"))
    }

    /// Rows pushed so far.
    pub fn rows(&self) -> usize {
        self.written + self.rows.len()
    }

    /// The finished file, recorded as holding `base_offset..=last_offset` (which may
    /// reach past the rows' offsets: control records are not rows).
    pub fn finish(mut self, base_offset: i64, last_offset: i64) -> Result<Bytes, String> {
        self.flush()?;
        for (key, value) in [
            (BASE_OFFSET_KEY, base_offset),
            (LAST_OFFSET_KEY, last_offset),
        ] {
            self.writer
                .append_key_value_metadata(KeyValue::new(key.to_string(), value.to_string()));
        }
        let bytes = self
            .writer
            .into_inner()
            .map_err(|e| format!("finish archive file: {e}"))?;
        Ok(Bytes::from(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int64Type, TimestampMillisecondType};
    use arrow_array::Array;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    #[test]
    fn records_round_trip_through_a_parquet_file() {
        let id = Uuid::new_v4();
        let mut w = ArchiveWriter::new("orders", id, 3).expect("writer");
        let n = BATCH_ROWS + 10;
        for i in 0..n as i64 {
            let value = format!("v{i}");
            w.push(&ArchiveRecord {
                offset: 100 + i,
                timestamp: 1_700_000_000_000 + i,
                log_append_time: false,
                key: (i % 2 == 0).then_some(b"k".as_slice()),
                value: Some(value.as_bytes()),
                headers: if i == 1 {
                    vec![("h1", Some(b"x".as_slice())), ("h2", None)]
                } else {
                    vec![]
                },
                producer_id: 7,
                producer_epoch: 0,
                sequence: i as i32,
                leader_epoch: 2,
            })
            .expect("push");
        }
        let file = w.finish(100, 100 + n as i64).expect("finish");
        assert_eq!(archived_range(&file).expect("range"), (100, 100 + n as i64));
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("open")
            .build()
            .expect("reader");
        let batches: Vec<RecordBatch> = reader.map(|b| b.expect("batch")).collect();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), n);
        let b = &batches[0];
        assert_eq!(b.schema().fields(), archive_schema().fields());
        let offsets = b.column(0).as_primitive::<Int64Type>();
        assert_eq!(offsets.value(0), 100);
        let ts = b.column(1).as_primitive::<TimestampMillisecondType>();
        assert_eq!(ts.value(1), 1_700_000_000_001);
        let keys = b.column(3).as_binary::<i32>();
        assert!(keys.is_valid(0) && keys.is_null(1));
        let headers = b.column(5).as_list::<i32>();
        assert_eq!(headers.value_length(0), 0);
        assert_eq!(headers.value_length(1), 2);
        let h1 = headers.value(1);
        let h1 = h1.as_struct();
        assert_eq!(h1.column(0).as_string::<i32>().value(1), "h2");
        assert!(h1.column(1).as_binary::<i32>().is_null(1));
    }

    #[test]
    fn keys_are_hive_style_and_sort_by_offset() {
        let id = Uuid::nil();
        let a = archive_key("t.1", id, 0, 9);
        let b = archive_key("t.1", id, 0, 10);
        assert!(a.starts_with("archive/topic=t.1/partition=0/"));
        assert!(a < b);
    }
}
