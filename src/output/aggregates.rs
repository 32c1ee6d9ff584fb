//! `aggregates.parquet`: one row per metric and period, with its mergeable sketch (SPEC §9).

use crate::aggregate::period::Period;
use crate::aggregate::sketch::{UserSketch, WarehouseSketch};
use crate::aggregate::sketch::{
    BOUNDS_METHOD, HASH_NAME, HLL_SKETCH_FAMILY, HLL_SKETCH_HASH, HLL_SKETCH_TYPE, PRECISION_RANGE,
    SKETCH_FORMAT,
};
use crate::aggregate::{MetricRow, MetricTable, TableCell};
use crate::classify::known_metric;
use anyhow::Result;
use arrow_array::{ArrayRef, BinaryArray, Date32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use chrono::NaiveDate;
use parquet::arrow::arrow_writer::{compute_leaves, get_column_writers, ArrowColumnChunk};
use parquet::arrow::{add_encoded_arrow_schema_to_metadata, ArrowSchemaConverter};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::format::KeyValue;
use parquet::schema::types::ColumnPath;
use rayon::prelude::*;
use std::io::Write;
use std::ops::Range;
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
        // Null only for a cell whose users partly came from a state of regtally 0.3.
        Field::new("hll_sketch", DataType::Binary, true),
        // Last, so that a reader of the columns before them by position reads on unchanged.
        Field::new("unique_users_lower", DataType::Int64, false),
        Field::new("unique_users_upper", DataType::Int64, false),
    ])
}

/// The columns earlier releases wrote, which `report --from` still reads: regtally 0.4 had no
/// bounds, 0.3 and earlier no `hll_sketch` either.
fn earlier_schema(dropped: usize) -> Schema {
    let mut fields: Vec<Field> = schema().fields().iter().map(|f| (**f).clone()).collect();
    fields.truncate(fields.len() - dropped);
    Schema::new(fields)
}

fn days(date: NaiveDate) -> i32 {
    (date - NaiveDate::default()).num_days() as i32
}

/// A row group ends before the row that would take its sketches past this many bytes (both
/// sketch columns, before compression), and wherever the metric changes.
const ROW_GROUP_SKETCH_BYTES: usize = 4 << 20;

/// The two sketch columns: every value is distinct and opaque.
const SKETCH_COLUMNS: [&str; 2] = ["sketch", "hll_sketch"];

/// Writes the rows (already sorted) as one Parquet file: row groups of one metric each, of
/// at most [`ROW_GROUP_SKETCH_BYTES`] of sketches (one row at least).
///
/// The row groups let every core build, encode and compress: the two sketch columns are most
/// of the bytes and of the writing time, and a row group per metric left the largest metric's
/// `hll_sketch` chunk (7 MB on the 4M benchmark) to one core while the other had finished.
/// A reader of one metric still skips the others. Where the rows end up depends on the rows
/// alone, not on the number of threads.
///
/// The sketch columns are written without a dictionary (no two values are alike, and the
/// encoder hashed every byte to find that out) and without statistics (the least and greatest
/// of opaque bytes filter nothing, and the footer held them at full length).
pub fn write_aggregates<W: Write + Send>(
    rows: &mut [MetricRow],
    meta: &AggregatesMetadata,
    w: W,
) -> Result<()> {
    write_in_groups(rows, meta, w, ROW_GROUP_SKETCH_BYTES)
}

/// [`write_aggregates`] with row groups of at most `group_bytes` of sketches.
fn write_in_groups<W: Write + Send>(
    rows: &mut [MetricRow],
    meta: &AggregatesMetadata,
    w: W,
    group_bytes: usize,
) -> Result<()> {
    let schema = Arc::new(schema());
    let sketches: Vec<(Vec<u8>, Option<Vec<u8>>)> = rows
        .par_iter_mut()
        .map(|r| {
            let hll = r.hll_sketch.as_ref().map(WarehouseSketch::to_bytes);
            (r.sketch.to_bytes(), hll)
        })
        .collect();
    // Every key has a value: Spark's Parquet reader (parquet-mr) fails on a key without one.
    // `--since` and `--until` are written only when given.
    let kv = |k: &str, v: String| KeyValue::new(k.to_owned(), Some(v));
    let mut props = WriterProperties::builder()
        // Level 1: the sketches are most of the bytes and compress well at any level; higher
        // levels cost more time than the few kilobytes they save.
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .set_key_value_metadata(Some(
            [
                kv("regtally.version", env!("CARGO_PKG_VERSION").to_owned()),
                kv("regtally.precision", meta.precision.to_string()),
                kv("regtally.hash", HASH_NAME.to_owned()),
                kv("regtally.sketch_format", SKETCH_FORMAT.to_owned()),
                kv("regtally.hll_sketch.family", HLL_SKETCH_FAMILY.to_owned()),
                kv("regtally.hll_sketch.type", HLL_SKETCH_TYPE.to_owned()),
                kv("regtally.hll_sketch.lg_k", meta.precision.to_string()),
                kv("regtally.hll_sketch.hash", HLL_SKETCH_HASH.to_owned()),
                kv("regtally.bounds", BOUNDS_METHOD.to_owned()),
            ]
            .into_iter()
            .chain(meta.since.map(|d| kv("regtally.since", d.to_string())))
            .chain(meta.until.map(|d| kv("regtally.until", d.to_string())))
            .collect(),
        ));
    for column in SKETCH_COLUMNS {
        props = props
            .set_column_dictionary_enabled(ColumnPath::from(column), false)
            .set_column_statistics_enabled(ColumnPath::from(column), EnabledStatistics::None);
    }
    let mut props = props.build();
    // What ArrowWriter does, but with every row group built, encoded and compressed on every
    // core.
    let parquet_schema = ArrowSchemaConverter::new().convert(&schema)?;
    add_encoded_arrow_schema_to_metadata(&schema, &mut props);
    let props = Arc::new(props);
    let groups = row_groups(rows, &sketches, group_bytes);
    let encoded = groups
        .par_iter()
        .map(|range| -> Result<Vec<ArrowColumnChunk>> {
            let columns = columns_of(&rows[range.clone()], &sketches[range.clone()]);
            // Checks that the columns fit the schema.
            RecordBatch::try_new(schema.clone(), columns.clone())?;
            let writers = get_column_writers(&parquet_schema, &props, &schema)?;
            writers
                .into_par_iter()
                .zip(columns)
                .zip(schema.fields().par_iter())
                .map(|((mut writer, column), field)| {
                    for leaf in compute_leaves(field, &column)? {
                        writer.write(&leaf)?;
                    }
                    Ok(writer.close()?)
                })
                .collect()
        })
        .collect::<Result<Vec<_>>>()?;
    let mut file = SerializedFileWriter::new(w, parquet_schema.root_schema_ptr(), props)?;
    // No rows, no row group, as ArrowWriter writes it.
    for chunks in encoded {
        let mut row_group = file.next_row_group()?;
        for chunk in chunks {
            chunk.append_to_row_group(&mut row_group)?;
        }
        row_group.close()?;
    }
    file.close()?;
    Ok(())
}

/// The row groups of these rows (sorted by metric), whose sketches' bytes are `sketches`: one
/// metric each, and no more than `group_bytes` of sketches unless one row alone has more.
fn row_groups(
    rows: &[MetricRow],
    sketches: &[(Vec<u8>, Option<Vec<u8>>)],
    group_bytes: usize,
) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (row, (sketch, hll))) in rows.iter().zip(sketches).enumerate() {
        let size = sketch.len() + hll.as_ref().map_or(0, Vec::len);
        if i > start && (row.metric != rows[start].metric || bytes + size > group_bytes) {
            groups.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < rows.len() {
        groups.push(start..rows.len());
    }
    groups
}

/// The columns of these rows, whose sketches' bytes are `sketches`.
fn columns_of(rows: &[MetricRow], sketches: &[(Vec<u8>, Option<Vec<u8>>)]) -> Vec<ArrayRef> {
    vec![
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
        Arc::new(BinaryArray::from_iter_values(sketches.iter().map(|s| &s.0))),
        Arc::new(BinaryArray::from_iter(
            sketches.iter().map(|s| s.1.as_ref()),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.bounds.lower),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.bounds.upper),
        )),
    ]
}

/// Why an aggregates file could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {why}")]
pub struct ReadAggregatesError {
    path: String,
    why: String,
}

/// Reads an `aggregates.parquet` back into a table of sketches (for `regtally report`).
pub fn read_aggregates(path: &std::path::Path) -> Result<MetricTable, ReadAggregatesError> {
    let name = path.display().to_string();
    match std::fs::File::open(path) {
        Ok(file) => read_aggregates_from(&name, file),
        Err(e) => Err(ReadAggregatesError {
            path: name,
            why: e.to_string(),
        }),
    }
}

/// [`read_aggregates`] from any Parquet source; `name` names it in errors. Every byte is
/// untrusted: a damaged or hostile file is an error, never a panic.
pub fn read_aggregates_from<R: parquet::file::reader::ChunkReader + 'static>(
    name: &str,
    source: R,
) -> Result<MetricTable, ReadAggregatesError> {
    // The parquet crate (55) still indexes out of bounds on some damaged files (found by
    // tests/fuzz.rs): its panics are this file's error, not the end of regtally.
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        read_unguarded(name, source)
    }));
    std::panic::set_hook(quiet);
    result.unwrap_or_else(|_| {
        Err(ReadAggregatesError {
            path: name.to_owned(),
            why: "damaged Parquet file (the Parquet reader could not decode it)".into(),
        })
    })
}

fn read_unguarded<R: parquet::file::reader::ChunkReader + 'static>(
    name: &str,
    source: R,
) -> Result<MetricTable, ReadAggregatesError> {
    use arrow_array::Array;
    let fail = |why: String| ReadAggregatesError {
        path: name.to_owned(),
        why,
    };
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(source)
        .map_err(|e| fail(format!("not a Parquet file: {e}")))?;
    let kv: std::collections::HashMap<String, Option<String>> = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .map(|k| (k.key.clone(), k.value.clone()))
                .collect()
        })
        .unwrap_or_default();
    let precision: u8 = kv
        .get("regtally.precision")
        .cloned()
        .flatten()
        .and_then(|p| p.parse().ok())
        .filter(|p| PRECISION_RANGE.contains(p))
        .ok_or_else(|| {
            fail("not written by regtally (no valid regtally.precision metadata)".into())
        })?;
    if kv.get("regtally.hash").cloned().flatten().as_deref() != Some(HASH_NAME) {
        return Err(fail(format!("identity hash is not {HASH_NAME}")));
    }
    let fields = builder.schema().fields();
    if ![schema(), earlier_schema(2), earlier_schema(3)]
        .iter()
        .any(|s| fields == s.fields())
    {
        return Err(fail("columns are not those regtally writes".into()));
    }
    let reader = builder.build().map_err(|e| fail(e.to_string()))?;
    let mut table = MetricTable::new(precision);
    for batch in reader {
        let b = batch.map_err(|e| fail(e.to_string()))?;
        let col = |i: usize| b.column(i).as_any();
        let (Some(names), Some(kinds), Some(starts), Some(events), Some(sketches)) = (
            col(0).downcast_ref::<StringArray>(),
            col(1).downcast_ref::<StringArray>(),
            col(3).downcast_ref::<Date32Array>(),
            col(6).downcast_ref::<Int64Array>(),
            col(7).downcast_ref::<BinaryArray>(),
        ) else {
            return Err(fail("columns are not those regtally writes".into()));
        };
        let hll_sketches = (b.num_columns() > 8)
            .then(|| col(8).downcast_ref::<BinaryArray>())
            .flatten();
        for i in 0..b.num_rows() {
            let metric = known_metric(names.value(i))
                .ok_or_else(|| fail(format!("unknown event_name {:?}", names.value(i))))?;
            let start = NaiveDate::default()
                .checked_add_signed(chrono::TimeDelta::days(i64::from(starts.value(i))))
                .ok_or_else(|| fail(format!("period_start {} is out of range", starts.value(i))))?;
            let period = Period::of_kind(kinds.value(i), start)
                .ok_or_else(|| fail(format!("unknown period_kind {:?}", kinds.value(i))))?;
            let n = events.value(i);
            if events.is_null(i) || n == 0 {
                continue;
            }
            if n < 0 || sketches.is_null(i) {
                return Err(fail(format!("row {i}: events or sketch is invalid")));
            }
            let sketch = UserSketch::from_bytes(sketches.value(i))
                .map_err(|e| fail(format!("row {i}: sketch: {e}")))?;
            let hll_sketch = match hll_sketches {
                Some(h) if !h.is_null(i) => Some(
                    WarehouseSketch::from_bytes(h.value(i))
                        .map_err(|e| fail(format!("row {i}: hll_sketch: {e}")))?,
                ),
                _ => None,
            };
            let cell = TableCell {
                sketch,
                hll_sketch,
                events: n as u64,
            };
            table
                .add_cell(metric, period, cell)
                .map_err(|e| fail(format!("row {i}: {e}")))?;
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Aggregate;
    use crate::classify::TrackedEvent;
    use crate::test_support::{d, u};

    fn write_to(
        dir: &std::path::Path,
        rows: &mut [MetricRow],
        precision: u8,
    ) -> std::path::PathBuf {
        let path = dir.join("aggregates.parquet");
        let meta = AggregatesMetadata {
            precision,
            since: None,
            until: None,
        };
        write_aggregates(rows, &meta, std::fs::File::create(&path).unwrap()).unwrap();
        path
    }

    #[test]
    fn aggregates_read_back_into_the_same_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut agg = Aggregate::default();
        agg.add(TrackedEvent::PushTag, d(2021, 1, 4), u(1));
        agg.add(TrackedEvent::DeleteTag, d(2021, 2, 1), u(2));
        let mut rows = agg.into_table(12).into_rows();
        let path = write_to(dir.path(), &mut rows, 12);
        let mut back = read_aggregates(&path).unwrap().into_rows();
        assert_eq!(back.len(), rows.len());
        for (a, b) in rows.iter_mut().zip(back.iter_mut()) {
            assert_eq!(
                (a.metric, a.period, a.unique_users, a.events),
                (b.metric, b.period, b.unique_users, b.events)
            );
            assert!(a.sketch.to_bytes() == b.sketch.to_bytes());
        }
    }

    /// Row groups end where the metric changes and before a row that would take the group's
    /// sketches past the limit; a row over the limit alone is a group of its own. Written so,
    /// the file reads back into the same rows.
    #[test]
    fn row_groups_hold_one_metric_and_at_most_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut agg = Aggregate::default();
        for day in 1..=9 {
            // A few users on most days, many (dense sketches) on the 5th.
            let users = if day == 5 { 3000 } else { day * 3 };
            for i in 0..users {
                agg.add(TrackedEvent::PushTag, d(2021, 3, day), u(i));
            }
            agg.add(TrackedEvent::DeleteTag, d(2021, 3, day), u(day));
        }
        let mut rows = agg.into_table(12).into_rows();
        let sketches: Vec<(Vec<u8>, Option<Vec<u8>>)> = rows
            .iter_mut()
            .map(|r| {
                (
                    r.sketch.to_bytes(),
                    r.hll_sketch.as_ref().map(|h| h.to_bytes()),
                )
            })
            .collect();
        let size = |i: usize| sketches[i].0.len() + sketches[i].1.as_ref().map_or(0, Vec::len);
        let limit = 2000;
        assert!(
            (0..rows.len()).any(|i| size(i) > limit),
            "a row over the limit"
        );
        let groups = row_groups(&rows, &sketches, limit);
        assert_eq!(groups.first().map(|g| g.start), Some(0));
        assert_eq!(groups.last().map(|g| g.end), Some(rows.len()));
        for (g, next) in groups.iter().zip(groups.iter().skip(1)) {
            assert_eq!(g.end, next.start);
            let bytes: usize = g.clone().map(size).sum();
            // Cut early only by a new metric or by the next row not fitting.
            assert!(
                rows[next.start].metric != rows[g.start].metric || bytes + size(next.start) > limit,
                "{g:?}"
            );
        }
        for g in &groups {
            assert!(
                g.clone().all(|i| rows[i].metric == rows[g.start].metric),
                "{g:?}"
            );
            let bytes: usize = g.clone().map(size).sum();
            assert!(bytes <= limit || g.len() == 1, "{g:?}: {bytes} bytes");
        }
        let metrics = rows
            .iter()
            .map(|r| r.metric)
            .collect::<std::collections::HashSet<_>>();
        assert!(groups.len() > metrics.len() + 2, "{} groups", groups.len());

        let path = dir.path().join("aggregates.parquet");
        let meta = AggregatesMetadata {
            precision: 12,
            since: None,
            until: None,
        };
        let file = std::fs::File::create(&path).unwrap();
        write_in_groups(&mut rows, &meta, file, limit).unwrap();
        let reader =
            parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&path).unwrap())
                .unwrap();
        use parquet::file::reader::FileReader;
        let written: Vec<i64> = reader
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows())
            .collect();
        let wanted: Vec<i64> = groups.iter().map(|g| g.len() as i64).collect();
        assert_eq!(written, wanted);
        let mut back = read_aggregates(&path).unwrap().into_rows();
        assert_eq!(back.len(), rows.len());
        for ((a, b), (sketch, hll)) in rows.iter().zip(back.iter_mut()).zip(&sketches) {
            assert_eq!(
                (a.metric, a.period, a.unique_users, a.events),
                (b.metric, b.period, b.unique_users, b.events)
            );
            assert!(&b.sketch.to_bytes() == sketch);
            assert!(b.hll_sketch.as_ref().map(WarehouseSketch::to_bytes) == *hll);
        }
    }

    #[test]
    fn a_precision_out_of_range_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_to(dir.path(), &mut [], 99);
        let err = read_aggregates(&path).unwrap_err();
        assert!(err.to_string().contains("regtally.precision"), "{err}");
    }
}
