//! The events dataset (`run --events DIR`): every de-duplicated valid event, classified, as a
//! Hive-partitioned Parquet dataset `DIR/month=YYYY-MM/part-*.parquet`.
//!
//! Rows come from [`DatasetRows`], a month at a time and in input order; each month's files
//! are staged beside their final names and renamed with the run's other outputs.

use super::StagedOutputs;
use crate::dedup::rows::SpooledRows;
use crate::records::row::{EncodedRow, Month};
use crate::tally::DatasetRows;
use anyhow::{Context, Result};
use arrow_array::builder::{
    BooleanBuilder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::NaiveDate;
use parquet::arrow::arrow_writer::{
    compute_leaves, get_column_writers, ArrowColumnChunk, ArrowColumnWriter,
};
use parquet::arrow::{add_encoded_arrow_schema_to_metadata, ArrowSchemaConverter};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterPropertiesPtr};
use parquet::file::writer::SerializedFileWriter;
use parquet::format::KeyValue;
use parquet::schema::types::ColumnPath;
use rayon::prelude::*;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// Rows a Parquet file holds at most: a month of a busy registry is cut into several files.
pub const ROWS_PER_FILE: u64 = 1 << 23;
/// Rows of one record batch: what a month's column builders hold before they are encoded.
const ROWS_PER_BATCH: usize = 1 << 13;
/// Bytes of text that end a batch before its rows do: events of texts up to `--max-line-bytes`
/// long would otherwise fill 8,192 rows' builders with gigabytes. The benchmark's batches hold
/// about 1.5 MiB.
const BATCH_TEXT_BYTES: usize = 16 << 20;
/// What a row group's column writers may hold (`ArrowColumnWriter::memory_size`) before the
/// group ends short of its rows, for the same reason. The benchmark's groups stay well below it:
/// its datasets are the same bytes with and without the bound.
const GROUP_BYTES: usize = 64 << 20;
/// Rows of one row group, which the Parquet writer holds encoded until it is complete.
const ROWS_PER_GROUP: usize = 1 << 16;
/// What an error while writing the dataset says first.
const WRITE_FAILED: &str = "cannot write the events dataset";

/// The dataset's schema; a change here is a change of the warehouse contract.
pub fn schema() -> Schema {
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    Schema::new(vec![
        Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        text("id", false),
        text("action", false),
        text("class", true),
        text("repository", false),
        text("namespace", false),
        text("tag", true),
        text("digest", true),
        text("media_type", true),
        text("user", true),
        text("actor_name", true),
        text("actor_type", true),
        Field::new("counted", DataType::Boolean, false),
        text("file", false),
        Field::new("line", DataType::Int64, false),
        Field::new("index", DataType::Int64, true),
        // Last, so that the columns of files written before it keep their places.
        text("deploy_token", true),
    ])
}

/// A row as the dataset shows it.
#[derive(Debug)]
pub struct DatasetRow<'a> {
    pub row: EncodedRow<'a>,
    /// The tracked event, `manifest_delete`, or none.
    pub class: Option<&'static str>,
    pub counted: bool,
    pub file: &'a str,
    /// Line within the input.
    pub line: u64,
}

/// Fills `columns` until they are a full batch with rows of a month's temporary file that are
/// first deliveries, in input order, with what the run learned after reading them: whether a
/// deferred event was a first delivery, and whether a repository push created its repository.
/// Returns how many rows it added: none only at the file's end.
fn fill(rows: &DatasetRows, source: &mut SpooledRows, columns: &mut Columns) -> io::Result<usize> {
    let resolution = &rows.resolution;
    let first = |position| {
        resolution
            .deferred
            .as_ref()
            .is_none_or(|d| d.is_first(position))
    };
    let mut added = 0;
    while !columns.full() {
        let Some(spooled) = source.next_row(first)? else {
            break;
        };
        added += 1;
        let created =
            spooled.row.is_repository_push() && resolution.creates.contains(&spooled.row.id_key);
        let file = rows.files.get(spooled.input).map_or("", String::as_str);
        columns.push(&DatasetRow::of(
            spooled.row,
            created,
            file,
            spooled.line,
            (rows.since, rows.until),
        ));
    }
    Ok(added)
}

impl<'a> DatasetRow<'a> {
    /// A first delivery's row: `created` says whether a repository push created its
    /// repository; `range` is `--since` and `--until`.
    pub fn of(
        row: EncodedRow<'a>,
        created: bool,
        file: &'a str,
        line: u64,
        range: (Option<NaiveDate>, Option<NaiveDate>),
    ) -> DatasetRow<'a> {
        let tracked = row.tracked(created);
        let date = row.time.date();
        let in_range = range.0.is_none_or(|s| date >= s) && range.1.is_none_or(|u| date < u);
        DatasetRow {
            class: row.class(tracked),
            counted: tracked.is_some()
                && (row.user.is_some() || row.deploy_token.is_some())
                && in_range,
            file,
            line,
            row,
        }
    }
}

/// The name of a month's folder.
pub fn month_folder(month: Month) -> String {
    format!("month={:04}-{:02}", month.0, month.1)
}

/// What was written.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DatasetReport {
    pub dir: String,
    pub files: u64,
    pub rows: u64,
}

/// Columns being filled.
struct Columns {
    time: TimestampMicrosecondBuilder,
    text: Vec<StringBuilder>,
    counted: BooleanBuilder,
    line: Int64Builder,
    index: Int64Builder,
    len: usize,
    /// Bytes of the texts pushed.
    text_bytes: usize,
}

impl Columns {
    fn new() -> Columns {
        Columns::with_text_bytes(&[0; 13])
    }

    /// Builders with room for a batch, and for `bytes` of each text column.
    fn with_text_bytes(bytes: &[usize; 13]) -> Columns {
        Columns {
            time: TimestampMicrosecondBuilder::with_capacity(ROWS_PER_BATCH).with_timezone("UTC"),
            text: (bytes.iter())
                .map(|&b| StringBuilder::with_capacity(ROWS_PER_BATCH, b))
                .collect(),
            counted: BooleanBuilder::with_capacity(ROWS_PER_BATCH),
            line: Int64Builder::with_capacity(ROWS_PER_BATCH),
            index: Int64Builder::with_capacity(ROWS_PER_BATCH),
            len: 0,
            text_bytes: 0,
        }
    }

    fn push(&mut self, r: &DatasetRow<'_>) {
        let e = &r.row;
        let micros = e
            .time
            .secs
            .saturating_mul(1_000_000)
            .saturating_add(i64::from(e.time.nanos / 1000));
        self.time.append_value(micros);
        let namespace = e.repository.split('/').next().unwrap_or(e.repository);
        let texts: [Option<&str>; 13] = [
            Some(e.id),
            Some(e.action),
            r.class,
            Some(e.repository),
            Some(namespace),
            e.tag,
            e.digest,
            e.media_type,
            e.user,
            e.actor_name,
            e.actor_type,
            Some(r.file),
            e.deploy_token,
        ];
        for (b, t) in self.text.iter_mut().zip(texts) {
            self.text_bytes += t.map_or(0, str::len);
            b.append_option(t);
        }
        self.counted.append_value(r.counted);
        self.line
            .append_value(i64::try_from(r.line).unwrap_or(i64::MAX));
        self.index.append_option(e.index.map(i64::from));
        self.len += 1;
    }

    /// Whether the batch is complete: its rows, or its bytes of text.
    fn full(&self) -> bool {
        self.len == ROWS_PER_BATCH || self.text_bytes >= BATCH_TEXT_BYTES
    }

    /// The rows pushed as a batch; the builders start again with the room this batch took (a
    /// finished builder starts empty, and growing every buffer again by doubling was a twentieth
    /// of the writing).
    fn batch(&mut self) -> Result<RecordBatch> {
        let bytes = std::array::from_fn(|i| self.text[i].values_slice().len());
        let mut done = std::mem::replace(self, Columns::with_text_bytes(&bytes));
        let mut text: Vec<ArrayRef> = (done.text.iter_mut())
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        let deploy_token = text.pop().expect("thirteen text columns");
        let file = text.pop().expect("thirteen text columns");
        let mut columns: Vec<ArrayRef> = vec![Arc::new(done.time.finish())];
        columns.extend(text);
        columns.push(Arc::new(done.counted.finish()));
        columns.push(file);
        columns.push(Arc::new(done.line.finish()));
        columns.push(Arc::new(done.index.finish()));
        columns.push(deploy_token);
        Ok(RecordBatch::try_new(Arc::new(schema()), columns)?)
    }
}

fn properties(rows_per_group: usize) -> Result<WriterProperties> {
    let mut props = WriterProperties::builder();
    // Columns of (nearly) one value per row: a dictionary would only be built to be dropped.
    for column in ["time", "id", "digest", "line"] {
        props = props.set_column_dictionary_enabled(ColumnPath::from(column), false);
    }
    // Ids and digests are random and all distinct: a row group's least and greatest span nearly
    // every value, so no reader could skip a row group or page by them. Comparing every value
    // for them was a tenth of the writing of a month.
    for column in ["id", "digest"] {
        props =
            props.set_column_statistics_enabled(ColumnPath::from(column), EnabledStatistics::None);
    }
    Ok(props
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .set_max_row_group_size(rows_per_group)
        // Every key has a value (Spark's reader fails on a key without one).
        .set_key_value_metadata(Some(vec![KeyValue::new(
            "regtally.version".to_owned(),
            Some(env!("CARGO_PKG_VERSION").to_owned()),
        )]))
        .build())
}

/// A part file being written, each row group's columns encoded on all cores if asked. It
/// writes the bytes `ArrowWriter` writes for the same batches (unless a row group ends short of
/// its rows, for its bytes), which encodes the columns one after another: a month's rows come
/// to one task, and a nightly run's dataset is one month, so `regtally run` wrote it on one
/// core. An engine's task keeps to its one core.
struct PartWriter<W: Write + Send> {
    file: SerializedFileWriter<W>,
    schema: SchemaRef,
    props: WriterPropertiesPtr,
    all_cores: bool,
    /// What the group's column writers may hold before it ends short of its rows.
    group_bytes: usize,
    /// The columns of the row group being encoded, if one is begun.
    group: Option<Vec<ArrowColumnWriter>>,
    rows_in_group: usize,
}

impl<W: Write + Send> PartWriter<W> {
    fn new(
        out: W,
        props: WriterProperties,
        all_cores: bool,
        group_bytes: usize,
    ) -> Result<PartWriter<W>> {
        let schema = Arc::new(schema());
        let mut props = props;
        // What `ArrowWriter` adds, so that readers get the Arrow types back (the time zone).
        add_encoded_arrow_schema_to_metadata(&schema, &mut props);
        let parquet = ArrowSchemaConverter::new()
            .with_coerce_types(props.coerce_types())
            .convert(&schema)?;
        let props = Arc::new(props);
        Ok(PartWriter {
            file: SerializedFileWriter::new(out, parquet.root_schema_ptr(), props.clone())?,
            schema,
            props,
            all_cores,
            group_bytes,
            group: None,
            rows_in_group: 0,
        })
    }

    /// Encodes a batch, cut where a row group ends.
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let room = self.props.max_row_group_size() - self.rows_in_group;
        if batch.num_rows() > room {
            self.write(&batch.slice(0, room))?;
            return self.write(&batch.slice(room, batch.num_rows() - room));
        }
        let writers = match &mut self.group {
            Some(writers) => writers,
            none => none.insert(get_column_writers(
                self.file.schema_descr(),
                &self.props,
                &self.schema,
            )?),
        };
        let mut leaves = Vec::with_capacity(writers.len());
        for (field, column) in self.schema.fields().iter().zip(batch.columns()) {
            leaves.extend(compute_leaves(field, column)?);
        }
        let encode = |(w, leaf): (&mut ArrowColumnWriter, &_)| w.write(leaf);
        if self.all_cores {
            writers.par_iter_mut().zip(&leaves).try_for_each(encode)?;
        } else {
            writers.iter_mut().zip(&leaves).try_for_each(encode)?;
        }
        self.rows_in_group += batch.num_rows();
        let held: usize = writers.iter().map(ArrowColumnWriter::memory_size).sum();
        if self.rows_in_group == self.props.max_row_group_size() || held >= self.group_bytes {
            self.end_group()?;
        }
        Ok(())
    }

    /// Closes the row group being encoded (each column's last page and its dictionary are
    /// encoded as it closes) and appends it to the file.
    fn end_group(&mut self) -> Result<()> {
        let Some(writers) = self.group.take() else {
            return Ok(());
        };
        let chunks: parquet::errors::Result<Vec<ArrowColumnChunk>> = if self.all_cores {
            writers
                .into_par_iter()
                .map(ArrowColumnWriter::close)
                .collect()
        } else {
            writers.into_iter().map(ArrowColumnWriter::close).collect()
        };
        let mut group = self.file.next_row_group()?;
        for chunk in chunks? {
            chunk.append_to_row_group(&mut group)?;
        }
        group.close()?;
        self.rows_in_group = 0;
        Ok(())
    }

    /// Ends the file with its footer.
    fn finish(mut self) -> Result<W> {
        self.end_group()?;
        Ok(self.file.into_inner()?)
    }
}

/// One month's parts being written, staged in the [`StagedOutputs`] each call is given.
struct MonthWriter {
    folder: PathBuf,
    prefix: String,
    part: u32,
    /// The part being written, and its final path.
    writer: Option<(PartWriter<super::StagedFile>, PathBuf)>,
    rows_in_part: u64,
    columns: Columns,
    /// Each part's final path and rows, once it is closed.
    written: Vec<(PathBuf, u64)>,
    rows: u64,
    /// Whether the parts' columns are encoded on all cores (see [`PartWriter`]).
    all_cores: bool,
}

impl MonthWriter {
    /// Parts named `<prefix><n>.parquet` in `dir`'s folder of `month` (created if missing).
    fn new(dir: &Path, month: Month, prefix: &str, all_cores: bool) -> Result<MonthWriter> {
        let folder = dir.join(month_folder(month));
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("cannot create {}", folder.display()))?;
        Ok(MonthWriter {
            folder,
            prefix: prefix.to_owned(),
            part: 0,
            writer: None,
            rows_in_part: 0,
            columns: Columns::new(),
            written: Vec::new(),
            rows: 0,
            all_cores,
        })
    }

    /// Writes a row: what an engine's task does, its rows coming one at a time.
    fn push(&mut self, staged: &mut StagedOutputs, row: &DatasetRow<'_>) -> Result<()> {
        self.columns.push(row);
        if self.columns.full() {
            let batch = self.columns.batch()?;
            self.write_batch(staged, batch)?;
        }
        Ok(())
    }

    /// Writes the month's next rows, beginning a part where the last one is full.
    fn write_batch(&mut self, staged: &mut StagedOutputs, batch: RecordBatch) -> Result<()> {
        let room = usize::try_from(ROWS_PER_FILE - self.rows_in_part).unwrap_or(usize::MAX);
        if batch.num_rows() > room {
            self.write_batch(staged, batch.slice(0, room))?;
            return self.write_batch(staged, batch.slice(room, batch.num_rows() - room));
        }
        let (writer, _) = match &mut self.writer {
            Some(writer) => writer,
            none => {
                let path = self
                    .folder
                    .join(format!("{}{:05}.parquet", self.prefix, self.part));
                self.part += 1;
                let props = properties(ROWS_PER_GROUP)?;
                let file = staged.open(&path)?;
                let writer = PartWriter::new(file, props, self.all_cores, GROUP_BYTES)?;
                none.insert((writer, path))
            }
        };
        writer.write(&batch)?;
        self.rows_in_part += batch.num_rows() as u64;
        self.rows += batch.num_rows() as u64;
        if self.rows_in_part == ROWS_PER_FILE {
            self.close_part(staged)?;
        }
        Ok(())
    }

    /// Ends the part being written, with the rows [`MonthWriter::push`] holds.
    fn close_part(&mut self, staged: &mut StagedOutputs) -> Result<()> {
        if self.columns.len > 0 {
            let batch = self.columns.batch()?;
            self.write_batch(staged, batch)?;
        }
        if let Some((w, path)) = self.writer.take() {
            staged.close(w.finish()?)?;
            self.written.push((path, self.rows_in_part));
        }
        self.rows_in_part = 0;
        Ok(())
    }
}

/// The dataset's files of whole months whose rows come one month after another, each in input
/// order: what one task of an engine writes (`pipeline::distributed::DatasetTask`). The files
/// are the ones [`stage_dataset`] writes for the same rows, byte for byte.
pub struct DatasetWriter {
    dir: PathBuf,
    prefix: String,
    staged: StagedOutputs,
    month: Option<(Month, MonthWriter)>,
    written: Vec<(PathBuf, u64)>,
}

impl DatasetWriter {
    /// Stages files in `dir` under names ending in `suffix`, which [`DatasetWriter::finish`]
    /// hands over for the run to rename.
    pub fn new(dir: &Path, prefix: &str, suffix: &str) -> DatasetWriter {
        DatasetWriter {
            dir: dir.to_path_buf(),
            prefix: prefix.to_owned(),
            staged: StagedOutputs::new(suffix),
            month: None,
            written: Vec::new(),
        }
    }

    /// Writes a row of `month`: a month's rows must come together.
    pub fn push(&mut self, month: Month, row: &DatasetRow<'_>) -> Result<()> {
        if self.month.as_ref().is_none_or(|(m, _)| *m != month) {
            self.end_month()?;
            self.month = Some((
                month,
                MonthWriter::new(&self.dir, month, &self.prefix, false)?,
            ));
        }
        if let Some((_, w)) = &mut self.month {
            w.push(&mut self.staged, row)?;
        }
        Ok(())
    }

    fn end_month(&mut self) -> Result<()> {
        if let Some((_, mut w)) = self.month.take() {
            w.close_part(&mut self.staged)?;
            self.written.append(&mut w.written);
        }
        Ok(())
    }

    /// The staged files, each (staged path, final path, rows), synced and left for the run to
    /// rename.
    pub fn finish(mut self) -> Result<Vec<(PathBuf, PathBuf, u64)>> {
        self.end_month()?;
        // The staged files are those written, in the same order.
        let DatasetWriter {
            staged, written, ..
        } = self;
        Ok(staged
            .release()
            .into_iter()
            .zip(written)
            .map(|((temp, fin), (_, rows))| (temp, fin, rows))
            .collect())
    }
}

/// The files of each of `dir`'s month folders, with the folder.
fn month_files(dir: &Path) -> Vec<(PathBuf, Vec<std::fs::DirEntry>)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|month| month.file_name().to_string_lossy().starts_with("month="))
        .map(|month| {
            let files = std::fs::read_dir(month.path())
                .into_iter()
                .flatten()
                .flatten()
                .collect();
            (month.path(), files)
        })
        .collect()
}

/// Removes the files staged in `dir`'s month folders under names ending in `suffix` (a run's):
/// what an engine's tasks staged for a run that renamed them not, or not all.
pub fn remove_staged_parts(dir: &Path, suffix: &str) {
    for (folder, files) in month_files(dir) {
        for file in files {
            if file.file_name().to_string_lossy().ends_with(suffix) {
                let _ = std::fs::remove_file(file.path());
            }
        }
        // A month folder the run made and left empty goes too.
        let _ = std::fs::remove_dir(folder);
    }
}

/// The part files of the dataset in `dir`, as a run left them.
pub fn existing_parts(dir: &Path) -> Vec<PathBuf> {
    let mut parts: Vec<PathBuf> = month_files(dir)
        .into_iter()
        .flat_map(|(_, files)| files)
        .filter(|file| {
            let name = file.file_name().to_string_lossy().into_owned();
            name.starts_with("part-") && name.ends_with(".parquet")
        })
        .map(|file| file.path())
        .collect();
    parts.sort();
    parts
}

/// A month's staged files, their final paths and its rows.
type MonthParts = (StagedOutputs, Vec<PathBuf>, u64);

/// Stages a month's files (see [`stage_dataset`]), its columns encoded on all cores.
fn write_month(
    rows: &DatasetRows,
    dir: &Path,
    prefix: &str,
    suffix: &str,
    month: Month,
    spooled: &Path,
) -> Result<MonthParts> {
    let mut own = StagedOutputs::new(suffix.to_owned());
    let mut w = MonthWriter::new(dir, month, prefix, true)?;
    let mut source = SpooledRows::open(spooled).context(WRITE_FAILED)?;
    let mut building = Columns::new();
    let mut ready: Option<RecordBatch> = None;
    // The next batch is read back while the last one is encoded: reading the rows and filling
    // the columns is a third of the work, and would leave a core idle.
    loop {
        let (wrote, read) = rayon::join(
            || ready.take().map_or(Ok(()), |b| w.write_batch(&mut own, b)),
            || fill(rows, &mut source, &mut building),
        );
        wrote.context(WRITE_FAILED)?;
        if read.context(WRITE_FAILED)? == 0 {
            break;
        }
        ready = Some(building.batch()?);
    }
    w.close_part(&mut own)?;
    let written = w.written.iter().map(|(p, _)| p.clone()).collect();
    Ok((own, written, w.rows))
}

/// Stages the dataset's files in `dir`, named `<prefix><n>.parquet` in each month's folder:
/// at most a month per core at a time, every core helping with each. With `replace`, the parts already in `dir` that this run does
/// not rewrite are removed when the outputs are committed.
pub fn stage_dataset(
    rows: &DatasetRows,
    dir: &Path,
    prefix: &str,
    replace: bool,
    staged: &mut StagedOutputs,
) -> Result<DatasetReport> {
    let suffix = staged.suffix().to_owned();
    // One lane per core takes the next month until none is left, each month's columns encoded
    // on all cores. A lane waiting for help may help another lane, so no more months than lanes
    // are open (and in memory) at once; handed to the pool one by one instead, a core waiting
    // inside one month could begin the next, and so on over every month of the run.
    let next = AtomicUsize::new(0);
    let lanes = rayon::current_num_threads().clamp(1, rows.months.len().max(1));
    let mut done: Vec<(usize, Result<MonthParts>)> = (0..lanes)
        .into_par_iter()
        .flat_map_iter(|_| {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Relaxed);
                let Some((month, spooled)) = rows.months.get(i) else {
                    return done;
                };
                let parts = write_month(rows, dir, prefix, &suffix, *month, spooled);
                if parts.is_err() {
                    // No lane begins another month: the run fails with the first error.
                    next.store(rows.months.len(), Relaxed);
                }
                done.push((i, parts));
            }
        })
        .collect();
    done.sort_by_key(|(i, _)| *i);
    let months = (done.into_iter().map(|(_, parts)| parts)).collect::<Result<Vec<_>>>()?;
    let mut report = DatasetReport {
        dir: dir.display().to_string(),
        ..DatasetReport::default()
    };
    let mut written = Vec::new();
    // In month order, whichever core wrote them: the renames go in a fixed order.
    for (own, files, n) in months {
        staged.absorb(own);
        report.rows += n;
        report.files += files.len() as u64;
        written.extend(files);
    }
    if replace {
        for old in existing_parts(dir) {
            if !written.contains(&old) {
                staged.remove_on_commit(old);
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::EventKind;
    use crate::timestamp::Timestamp;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ArrowWriter;

    /// Rows `from..from + n`, with repeats for the dictionaries, nulls, and a digest each.
    fn batch(from: usize, n: usize) -> RecordBatch {
        let mut columns = Columns::new();
        for i in from..from + n {
            let (id, repository) = (format!("id-{i}"), format!("g{}/r{}", i % 7, i % 131));
            let (tag, user) = (format!("v{}", i % 17), format!("user{}", i % 23));
            let digest = format!(
                "sha256:{:064x}",
                (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            );
            let row = EncodedRow {
                time: Timestamp {
                    secs: 1_673_000_000 + i as i64,
                    nanos: (i as u32).wrapping_mul(7919) % 1_000_000_000,
                },
                id_key: i as u128,
                line: i as u64,
                index: (i % 3 == 0).then_some(i as u32 % 5),
                kind: [EventKind::PushTag, EventKind::RepositoryPush][i % 2].code(),
                id: &id,
                action: ["push", "delete"][i % 2],
                repository: &repository,
                tag: (i % 5 != 0).then_some(tag.as_str()),
                digest: Some(&digest),
                media_type: Some("m"),
                user: (i % 2 == 0).then_some(user.as_str()),
                deploy_token: (i % 2 == 1).then_some("token"),
                actor_name: Some(&user),
                actor_type: None,
            };
            columns.push(&DatasetRow::of(
                row,
                i % 3 == 0,
                "f.log",
                i as u64,
                (None, None),
            ));
        }
        columns.batch().unwrap()
    }

    /// A part's columns encoded on all cores are the bytes `ArrowWriter` writes column after
    /// column, with batches that end inside a row group and batches that cross one.
    #[test]
    fn parts_are_the_bytes_arrow_writer_writes() {
        let batches: Vec<RecordBatch> = [(0, 700), (700, 700), (1400, 1), (1401, 2500)]
            .into_iter()
            .map(|(from, n)| batch(from, n))
            .collect();
        let mut expected = Vec::new();
        let mut w = ArrowWriter::try_new(
            &mut expected,
            Arc::new(schema()),
            Some(properties(1000).unwrap()),
        )
        .unwrap();
        for b in &batches {
            w.write(b).unwrap();
        }
        w.close().unwrap();
        assert!(expected.len() > 50_000, "{}", expected.len());
        for all_cores in [true, false] {
            let props = properties(1000).unwrap();
            let mut part = PartWriter::new(Vec::new(), props, all_cores, GROUP_BYTES).unwrap();
            for b in &batches {
                part.write(b).unwrap();
            }
            let written = part.finish().unwrap();
            assert!(written == expected, "all cores {all_cores}: bytes differ");
        }
        // Four row groups, the last one short.
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(expected));
        let metadata = reader.unwrap().metadata().clone();
        let groups: Vec<i64> = metadata.row_groups().iter().map(|g| g.num_rows()).collect();
        assert_eq!(groups, [1000, 1000, 1000, 901]);
        // Statistics on every column but the random ones.
        let without_statistics: Vec<String> = (metadata.row_group(0).columns().iter())
            .filter(|c| c.statistics().is_none())
            .map(|c| c.column_path().string())
            .collect();
        assert_eq!(without_statistics, ["id", "digest"]);
    }

    /// Row groups end short of their rows once their writers hold `group_bytes`, and every row
    /// still reads back as written.
    #[test]
    fn row_groups_end_at_their_bytes_too() {
        let batches: Vec<RecordBatch> = (0..6).map(|k| batch(k * 500, 500)).collect();
        let props = properties(1000).unwrap();
        let mut part = PartWriter::new(Vec::new(), props, true, 50_000).unwrap();
        for b in &batches {
            part.write(b).unwrap();
        }
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(part.finish().unwrap()))
                .unwrap();
        let groups: Vec<i64> = (reader.metadata().row_groups().iter())
            .map(|g| g.num_rows())
            .collect();
        assert!(
            groups.len() > 3 && groups.iter().all(|&n| n < 1000),
            "{groups:?}"
        );
        let read: Vec<RecordBatch> = reader.build().unwrap().map(Result::unwrap).collect();
        let all = |b: &[RecordBatch]| arrow_select::concat::concat_batches(&b[0].schema(), b);
        assert!(all(&read).unwrap() == all(&batches).unwrap());
    }

    /// A batch ends at 8,192 rows, or sooner at 16 MiB of text.
    #[test]
    fn batches_end_at_their_text_bytes_too() {
        let digest = "d".repeat(1 << 20);
        let mut columns = Columns::new();
        let mut rows = 0;
        while !columns.full() {
            let time = Timestamp { secs: 0, nanos: 0 };
            let row = EncodedRow {
                digest: Some(&digest),
                ..EncodedRow::bare("i", time, EventKind::PushTag)
            };
            columns.push(&DatasetRow::of(row, false, "f", 1, (None, None)));
            rows += 1;
        }
        assert_eq!(rows, 16);
        assert_eq!(columns.batch().unwrap().num_rows(), 16);
        assert!(!columns.full());
    }
}
