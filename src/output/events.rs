//! The events dataset (`run --events DIR`): every de-duplicated valid event, classified, as a
//! Hive-partitioned Parquet dataset `DIR/month=YYYY-MM/part-*.parquet`.
//!
//! Rows come from [`DatasetRows`], a month at a time and in input order; each month's files
//! are staged beside their final names and renamed with the run's other outputs.

use super::StagedOutputs;
use crate::dedup::rows::each_spooled_row;
use crate::records::row::{EncodedRow, Month};
use crate::tally::DatasetRows;
use anyhow::{Context, Result};
use arrow_array::builder::{
    BooleanBuilder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use chrono::NaiveDate;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::format::KeyValue;
use parquet::schema::types::ColumnPath;
use rayon::prelude::*;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Rows a Parquet file holds at most: a month of a busy registry is cut into several files.
pub const ROWS_PER_FILE: u64 = 1 << 23;
/// Rows of one record batch: what a month's column builders hold before they are encoded.
const ROWS_PER_BATCH: usize = 1 << 13;
/// Rows of one row group, which the Parquet writer holds encoded until it is complete.
const ROWS_PER_GROUP: usize = 1 << 16;

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

/// Calls `each` with every row of a month's temporary file that is a first delivery, in input
/// order, with what the run learned after reading it: whether a deferred event was a first
/// delivery, and whether a repository push created its repository.
pub fn each_row(
    rows: &DatasetRows,
    path: &Path,
    mut each: impl FnMut(&DatasetRow<'_>) -> io::Result<()>,
) -> io::Result<()> {
    let resolution = &rows.resolution;
    each_spooled_row(path, |spooled| {
        if let Some(d) = &resolution.deferred {
            if !d.is_first(spooled.position) {
                return Ok(());
            }
        }
        let created =
            spooled.row.is_repository_push() && resolution.creates.contains(&spooled.row.id_key);
        let file = rows.files.get(spooled.input).map_or("", String::as_str);
        each(&DatasetRow::of(
            spooled.row,
            created,
            file,
            spooled.line,
            (rows.since, rows.until),
        ))
    })
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
}

impl Columns {
    fn new() -> Columns {
        Columns {
            time: TimestampMicrosecondBuilder::with_capacity(ROWS_PER_BATCH).with_timezone("UTC"),
            text: (0..13).map(|_| StringBuilder::new()).collect(),
            counted: BooleanBuilder::with_capacity(ROWS_PER_BATCH),
            line: Int64Builder::with_capacity(ROWS_PER_BATCH),
            index: Int64Builder::with_capacity(ROWS_PER_BATCH),
            len: 0,
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
            b.append_option(t);
        }
        self.counted.append_value(r.counted);
        self.line
            .append_value(i64::try_from(r.line).unwrap_or(i64::MAX));
        self.index.append_option(e.index.map(i64::from));
        self.len += 1;
    }

    fn batch(&mut self) -> Result<RecordBatch> {
        let mut text: Vec<ArrayRef> = self
            .text
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        let deploy_token = text.pop().expect("thirteen text columns");
        let file = text.pop().expect("thirteen text columns");
        let mut columns: Vec<ArrayRef> = vec![Arc::new(self.time.finish())];
        columns.extend(text);
        columns.push(Arc::new(self.counted.finish()));
        columns.push(file);
        columns.push(Arc::new(self.line.finish()));
        columns.push(Arc::new(self.index.finish()));
        columns.push(deploy_token);
        self.len = 0;
        Ok(RecordBatch::try_new(Arc::new(schema()), columns)?)
    }
}

fn properties() -> Result<WriterProperties> {
    let mut props = WriterProperties::builder();
    // Columns of (nearly) one value per row: a dictionary would only be built to be dropped.
    for column in ["time", "id", "digest", "line"] {
        props = props.set_column_dictionary_enabled(ColumnPath::from(column), false);
    }
    Ok(props
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .set_max_row_group_size(ROWS_PER_GROUP)
        // Every key has a value (Spark's reader fails on a key without one).
        .set_key_value_metadata(Some(vec![KeyValue::new(
            "regtally.version".to_owned(),
            Some(env!("CARGO_PKG_VERSION").to_owned()),
        )]))
        .build())
}

/// One month's parts being written, staged in the [`StagedOutputs`] each call is given.
struct MonthWriter {
    folder: PathBuf,
    prefix: String,
    part: u32,
    writer: Option<ArrowWriter<super::StagedFile>>,
    rows_in_part: u64,
    columns: Columns,
    /// Each part's final path and rows, once it is closed.
    written: Vec<(PathBuf, u64)>,
    rows: u64,
}

impl MonthWriter {
    /// Parts named `<prefix><n>.parquet` in `dir`'s folder of `month` (created if missing).
    fn new(dir: &Path, month: Month, prefix: &str) -> Result<MonthWriter> {
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
        })
    }

    fn push(&mut self, staged: &mut StagedOutputs, row: &DatasetRow<'_>) -> Result<()> {
        if self.writer.is_none() {
            let path = self
                .folder
                .join(format!("{}{:05}.parquet", self.prefix, self.part));
            self.part += 1;
            let file = staged.open(&path)?;
            self.writer = Some(ArrowWriter::try_new(
                file,
                Arc::new(schema()),
                Some(properties()?),
            )?);
        }
        self.columns.push(row);
        self.rows_in_part += 1;
        self.rows += 1;
        if self.columns.len == ROWS_PER_BATCH || self.rows_in_part == ROWS_PER_FILE {
            self.flush()?;
        }
        if self.rows_in_part == ROWS_PER_FILE {
            self.close_part(staged)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.columns.len > 0 {
            let batch = self.columns.batch()?;
            if let Some(w) = &mut self.writer {
                w.write(&batch)?;
            }
        }
        Ok(())
    }

    fn close_part(&mut self, staged: &mut StagedOutputs) -> Result<()> {
        self.flush()?;
        if let Some(w) = self.writer.take() {
            let file = w.into_inner()?;
            staged.close(file)?;
            let path = self
                .folder
                .join(format!("{}{:05}.parquet", self.prefix, self.part - 1));
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
            self.month = Some((month, MonthWriter::new(&self.dir, month, &self.prefix)?));
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

/// Stages the dataset's files in `dir`, named `<prefix><n>.parquet` in each month's folder,
/// a month per core at a time. With `replace`, the parts already in `dir` that this run does
/// not rewrite are removed when the outputs are committed.
pub fn stage_dataset(
    rows: &DatasetRows,
    dir: &Path,
    prefix: &str,
    replace: bool,
    staged: &mut StagedOutputs,
) -> Result<DatasetReport> {
    let suffix = staged.suffix().to_owned();
    let months: Vec<(StagedOutputs, Vec<PathBuf>, u64)> = rows
        .months
        .par_iter()
        .map(|(month, spooled)| {
            let mut own = StagedOutputs::new(suffix.clone());
            let mut w = MonthWriter::new(dir, *month, prefix)?;
            let mut failed = None;
            each_row(rows, spooled, |row| {
                w.push(&mut own, row).map_err(|e| {
                    failed = Some(e);
                    io::Error::other("events dataset")
                })
            })
            .map_err(|e| failed.take().unwrap_or_else(|| e.into()))
            .context("cannot write the events dataset")?;
            w.close_part(&mut own)?;
            let written = w.written.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
            Ok((own, written, w.rows))
        })
        .collect::<Result<_>>()?;
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
