//! `aggregates.parquet`: one row per metric and period, with its mergeable sketch (SPEC §9).

use crate::aggregate::MetricRow;
use crate::sketch::{HASH_NAME, SKETCH_FORMAT};
use anyhow::Result;
use arrow_array::{ArrayRef, BinaryArray, Date32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use chrono::NaiveDate;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::format::KeyValue;
use rayon::prelude::*;
use std::io::Write;
use std::sync::Arc;

/// What the key-value metadata records about the run.
pub struct AggregatesMetadata {
    pub precision: u8,
    pub since: Option<NaiveDate>,
    pub until: Option<NaiveDate>,
}

/// The table's schema; a change here is a change of the warehouse contract.
pub fn schema() -> Schema {
    Schema::new(vec![
        Field::new("event_name", DataType::Utf8, false),
        Field::new("period_kind", DataType::Utf8, false),
        Field::new("period", DataType::Utf8, false),
        Field::new("period_start", DataType::Date32, false),
        Field::new("period_end", DataType::Date32, false),
        Field::new("unique_users", DataType::Int64, false),
        Field::new("events", DataType::Int64, false),
        Field::new("sketch", DataType::Binary, false),
    ])
}

fn days(date: NaiveDate) -> i32 {
    (date - NaiveDate::default()).num_days() as i32
}

/// Writes the rows (already sorted) as one Parquet file.
pub fn write_aggregates<W: Write + Send>(
    rows: &mut [MetricRow],
    meta: &AggregatesMetadata,
    w: W,
) -> Result<()> {
    let schema = Arc::new(schema());
    // Serializing a few hundred dense sketches is most of the writing time: use every core.
    let sketches: Vec<Vec<u8>> = rows.par_iter_mut().map(|r| r.sketch.to_bytes()).collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.metric))),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.period.kind.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.period.to_string()),
        )),
        Arc::new(Date32Array::from_iter_values(
            rows.iter().map(|r| days(r.period.start)),
        )),
        Arc::new(Date32Array::from_iter_values(
            rows.iter()
                .map(|r| days(r.period.end().unwrap_or(r.period.start))),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.unique_users),
        )),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.events))),
        Arc::new(BinaryArray::from_iter_values(sketches.iter())),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    let kv = |k: &str, v: Option<String>| KeyValue::new(k.to_owned(), v);
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_key_value_metadata(Some(vec![
            kv(
                "regtally.version",
                Some(env!("CARGO_PKG_VERSION").to_owned()),
            ),
            kv("regtally.precision", Some(meta.precision.to_string())),
            kv("regtally.hash", Some(HASH_NAME.to_owned())),
            kv("regtally.sketch_format", Some(SKETCH_FORMAT.to_owned())),
            kv("regtally.since", meta.since.map(|d| d.to_string())),
            kv("regtally.until", meta.until.map(|d| d.to_string())),
        ]))
        .build();
    let mut writer = ArrowWriter::try_new(w, schema, Some(props))?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(())
}
