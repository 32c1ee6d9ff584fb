//! `regtally._native`: the library's task functions (`regtally::pipeline::distributed`) for
//! Python, record batches in and out as Arrow IPC streams (which pyarrow reads and writes
//! without touching a row). Nothing here decides anything a run computes: every rule is the
//! library's.

use anyhow::Context;
use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use clap::Parser;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use regtally::cli::{today, Cli, Command};
use regtally::cmd::flags::UsageError as FlagError;
use regtally::cmd::run::PlannedRun;
use regtally::pipeline::distributed::{
    known_repositories as read_known, split_cells, Buckets, CellTask, DatasetTask, FirstsTask,
    Gathered, InputTask, ManifestEntry, PartitionTask, TaskConfig, CELL_SCHEMA,
    DATASET_FILES_SCHEMA, DATASET_ROWS_SCHEMA, READ_SCHEMA, SKETCH_SCHEMA,
};
use std::path::Path;
use std::sync::Arc;

create_exception!(
    _native,
    UsageError,
    PyException,
    "A flag `regtally run` refuses (exit status 2)."
);

fn runtime(e: anyhow::Error) -> PyErr {
    PyRuntimeError::new_err(format!("{e:#}"))
}

/// The batches as one IPC stream.
fn to_ipc(schema: &arrow_schema::SchemaRef, batches: &[RecordBatch]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, schema)?;
    for b in batches {
        w.write(b)?;
    }
    w.finish()?;
    drop(w);
    Ok(out)
}

fn batch_bytes<'py>(py: Python<'py>, batch: &RecordBatch) -> PyResult<Bound<'py, PyBytes>> {
    let bytes = to_ipc(&batch.schema(), std::slice::from_ref(batch)).map_err(runtime)?;
    Ok(PyBytes::new(py, &bytes))
}

/// The batches of an IPC stream.
fn from_ipc(bytes: &[u8]) -> PyResult<Vec<RecordBatch>> {
    let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .map_err(|e| PyValueError::new_err(format!("not an Arrow IPC stream: {e}")))?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PyValueError::new_err(format!("not an Arrow IPC stream: {e}")))
}

fn config_of(json: &str) -> PyResult<TaskConfig> {
    serde_json::from_str(json).map_err(|e| PyValueError::new_err(format!("task config: {e}")))
}

/// An empty IPC stream of one of the schemas: `read`, `cell`, `sketch`, `dataset_rows` or
/// `dataset_files`.
#[pyfunction]
fn schema<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyBytes>> {
    let schema = match name {
        "read" => READ_SCHEMA.clone(),
        "cell" => CELL_SCHEMA.clone(),
        "sketch" => SKETCH_SCHEMA.clone(),
        "dataset_rows" => DATASET_ROWS_SCHEMA.clone(),
        "dataset_files" => DATASET_FILES_SCHEMA.clone(),
        _ => return Err(PyValueError::new_err(format!("no schema is called {name}"))),
    };
    let bytes = to_ipc(&schema, &[]).map_err(runtime)?;
    Ok(PyBytes::new(py, &bytes))
}

// Every class holds its state boxed: Python aligns an object to 16 bytes, and the tasks hold
// buffers aligned to cache lines (64), which PyO3 would place misaligned in the object itself.

/// A `regtally run` planned on the driver: flags checked, inputs found, then finished from
/// what the tasks gathered.
#[pyclass(unsendable)]
struct Job {
    planned: Option<Box<PlannedRun>>,
    gathered: Box<Gathered>,
}

#[pymethods]
impl Job {
    /// `argv`: the arguments of `regtally run` (inputs and flags). Raises `UsageError` for
    /// what `regtally run` would refuse with exit status 2.
    #[new]
    fn new(argv: Vec<String>) -> PyResult<Job> {
        let words = ["regtally".to_owned(), "run".to_owned()]
            .into_iter()
            .chain(argv);
        let cli = Cli::try_parse_from(words).map_err(|e| UsageError::new_err(e.to_string()))?;
        let Command::Run(args) = cli.command else {
            return Err(UsageError::new_err("not a run"));
        };
        let planned = PlannedRun::new(args, today()).map_err(|e| {
            if e.is::<FlagError>() {
                UsageError::new_err(format!("{e:#}"))
            } else {
                runtime(e)
            }
        })?;
        Ok(Job {
            planned: Some(Box::new(planned)),
            gathered: Box::default(),
        })
    }

    /// The inputs in input order, each as the JSON a read task takes.
    fn manifest(&self) -> PyResult<Vec<String>> {
        let planned = self.planned()?;
        planned
            .config()
            .inputs
            .iter()
            .enumerate()
            .map(|(index, input)| {
                let entry = ManifestEntry {
                    index: index as u32,
                    input: input.clone(),
                };
                serde_json::to_string(&entry).map_err(|e| runtime(e.into()))
            })
            .collect()
    }

    /// The inputs' names in input order, as the events dataset's `file` column gives them.
    fn input_names(&self) -> PyResult<Vec<String>> {
        let planned = self.planned()?;
        Ok(planned
            .config()
            .inputs
            .iter()
            .map(|i| i.name().to_owned())
            .collect())
    }

    /// `--events` as an absolute path, or `None`.
    fn events_dir(&self) -> PyResult<Option<String>> {
        let dir = self.planned()?.events_dir().map_err(runtime)?;
        Ok(dir.map(|d| d.to_string_lossy().into_owned()))
    }

    /// What the names of the run's staged files end in.
    fn staged_suffix(&self) -> PyResult<String> {
        Ok(self.planned()?.staged_suffix())
    }

    /// What every task is told, as JSON.
    fn task_config(&self) -> PyResult<String> {
        let planned = self.planned()?;
        let config = TaskConfig::of(planned.config(), planned.today(), planned.memory_limit());
        serde_json::to_string(&config).map_err(|e| runtime(e.into()))
    }

    /// Read tasks' accounting and reject rows, sorted by (input, rec, pos).
    fn add_read_rows(&mut self, ipc: &[u8]) -> PyResult<()> {
        for b in from_ipc(ipc)? {
            self.gathered.add_read_rows(&b).map_err(runtime)?;
        }
        Ok(())
    }

    /// Partition tasks' repository and count rows.
    fn add_partition_rows(&mut self, ipc: &[u8]) -> PyResult<()> {
        for b in from_ipc(ipc)? {
            self.gathered.add_partition_rows(&b).map_err(runtime)?;
        }
        Ok(())
    }

    /// Takes what a dataset task staged (an IPC stream of `dataset_files` rows).
    fn add_dataset_files(&mut self, ipc: &[u8]) -> PyResult<()> {
        for b in from_ipc(ipc)? {
            self.gathered.add_dataset_files(&b).map_err(runtime)?;
        }
        Ok(())
    }

    /// Built cells.
    fn add_cells(&mut self, ipc: &[u8]) -> PyResult<()> {
        self.gathered.cells.extend(from_ipc(ipc)?);
        Ok(())
    }

    /// Gives the run up (the engine failed): removes what its tasks staged.
    fn discard(&mut self) {
        if let Some(planned) = self.planned.take() {
            planned.discard();
        }
    }

    /// Writes every output as `regtally run` does; whether the run was clean (exit status 0).
    fn finish(&mut self, py: Python<'_>) -> PyResult<bool> {
        let planned = self
            .planned
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("the job has finished"))?;
        let gathered = *std::mem::take(&mut self.gathered);
        py.allow_threads(move || {
            planned.finish(Box::new(move |cfg, _prior, _spill, rejects| {
                gathered.into_tally(cfg, rejects)
            }))
        })
        .map_err(runtime)
    }
}

impl Drop for Job {
    /// A job dropped unfinished (the Spark job failed) leaves no staged file behind.
    fn drop(&mut self) {
        if let Some(planned) = self.planned.take() {
            planned.discard();
        }
    }
}

impl Job {
    fn planned(&self) -> PyResult<&PlannedRun> {
        self.planned
            .as_deref()
            .ok_or_else(|| PyRuntimeError::new_err("the job has finished"))
    }
}

/// (bucket, IPC stream) pairs: a shuffle's rows, -1 for rows without a bucket (and -3 for a
/// partition's rows of the events dataset).
type Blobs<'py> = Vec<(i64, Bound<'py, PyBytes>)>;

/// Rows of one blob at most: Spark holds a row's value whole, more than once, on the JVM's heap,
/// and a partition's first deliveries or dataset rows in one value ran a 2 GB driver out of it.
const BLOB_ROWS: usize = 1 << 15;

/// `batch` as blobs of [`BLOB_ROWS`] rows at most, under `bucket`.
fn push_blobs<'py>(
    py: Python<'py>,
    bucket: i64,
    batch: &RecordBatch,
    blobs: &mut Blobs<'py>,
) -> PyResult<()> {
    let rows = batch.num_rows();
    let mut offset = 0;
    loop {
        let len = BLOB_ROWS.min(rows - offset);
        blobs.push((bucket, batch_bytes(py, &batch.slice(offset, len))?));
        offset += len;
        if offset >= rows {
            return Ok(());
        }
    }
}

/// Batches by bucket, as [`Blobs`].
fn bucket_blobs<'py>(
    py: Python<'py>,
    held: Vec<(Option<u32>, RecordBatch)>,
) -> PyResult<Blobs<'py>> {
    let mut blobs = Vec::with_capacity(held.len());
    for (bucket, batch) in held {
        push_blobs(py, bucket.map_or(-1, i64::from), &batch, &mut blobs)?;
    }
    Ok(blobs)
}

/// A read task: one input of the manifest, its events by the bucket of their id.
#[pyclass(unsendable)]
struct InputReader {
    task: Box<InputTask>,
    buckets: Box<Buckets>,
}

#[pymethods]
impl InputReader {
    /// `buckets`: how many buckets of ids the events are shuffled into.
    #[new]
    fn new(config: &str, entry: &str, buckets: u32) -> PyResult<InputReader> {
        let entry: ManifestEntry = serde_json::from_str(entry)
            .map_err(|e| PyValueError::new_err(format!("manifest entry: {e}")))?;
        Ok(InputReader {
            task: Box::new(InputTask::new(&config_of(config)?, entry)),
            buckets: Box::new(Buckets::new("id", buckets)),
        })
    }

    /// The next rows for the id shuffle: (bucket of the id, IPC stream) pairs, a few large
    /// batches at a time, and the input's accounting and rejects under bucket -1; `None` once
    /// all were given.
    fn next_blobs<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Blobs<'py>>> {
        let (task, held) = (&mut self.task, &mut self.buckets);
        let held = py
            .allow_threads(|| -> anyhow::Result<_> {
                while let Some(batch) = task.next_batch()? {
                    if held.add(&batch)? {
                        return held.take();
                    }
                }
                held.take()
            })
            .map_err(runtime)?;
        if held.is_empty() {
            return Ok(None);
        }
        bucket_blobs(py, held).map(Some)
    }
}

/// The rows of `--known-repositories` (a path or URL the task can read).
#[pyfunction]
fn known_repositories<'py>(py: Python<'py>, source: &str) -> PyResult<Bound<'py, PyBytes>> {
    let batch = read_known(Path::new(source))
        .with_context(|| "known repositories".to_owned())
        .map_err(runtime)?;
    batch_bytes(py, &batch)
}

/// The rows of an IPC stream split by the bucket of `column` among `buckets`.
#[pyfunction]
fn split<'py>(py: Python<'py>, ipc: &[u8], column: &str, buckets: u32) -> PyResult<Blobs<'py>> {
    let column = match column {
        "id" => "id",
        "repository" => "repository",
        _ => return Err(PyValueError::new_err(format!("cannot split by {column}"))),
    };
    let mut held = Buckets::new(column, buckets);
    for b in from_ipc(ipc)? {
        held.add(&b).map_err(runtime)?;
    }
    bucket_blobs(py, held.take().map_err(runtime)?)
}

/// A first-delivery task: the events of some id buckets in, the first delivery of each id out,
/// split by the bucket of its repository.
#[pyclass(unsendable)]
struct FirstsFinder {
    task: Option<Box<FirstsTask>>,
}

#[pymethods]
impl FirstsFinder {
    #[new]
    fn new() -> FirstsFinder {
        FirstsFinder {
            task: Some(Box::default()),
        }
    }

    fn add(&mut self, ipc: &[u8]) -> PyResult<()> {
        let task = self
            .task
            .as_deref_mut()
            .ok_or_else(|| PyRuntimeError::new_err("the first deliveries were given"))?;
        for b in from_ipc(ipc)? {
            task.add(b).map_err(runtime)?;
        }
        Ok(())
    }

    fn finish<'py>(&mut self, py: Python<'py>, buckets: u32) -> PyResult<Blobs<'py>> {
        let task = self
            .task
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("the first deliveries were given"))?;
        let held = py.allow_threads(|| task.finish(buckets)).map_err(runtime)?;
        bucket_blobs(py, held)
    }
}

/// A partition task: its rows added batch by batch, its cells, repositories and counts out.
#[pyclass(unsendable)]
struct PartitionFolder {
    task: Option<Box<PartitionTask>>,
}

#[pymethods]
impl PartitionFolder {
    /// `temp`: where the ledger may spill (the executor's temporary folder).
    #[new]
    fn new(config: &str, temp: &str) -> PyResult<PartitionFolder> {
        let task = PartitionTask::new(&config_of(config)?, Path::new(temp)).map_err(runtime)?;
        Ok(PartitionFolder {
            task: Some(Box::new(task)),
        })
    }

    fn add(&mut self, ipc: &[u8]) -> PyResult<()> {
        let task = self.task()?;
        for b in from_ipc(ipc)? {
            task.add(&b).map_err(runtime)?;
        }
        Ok(())
    }

    /// The partition's rows, split for the cells' shuffle: each cell's rows under the bucket of
    /// its (metric, period) among `buckets`, the repositories and counts under -1, and with
    /// `--events` its rows of the dataset under -3.
    fn finish_blobs<'py>(&mut self, py: Python<'py>, buckets: u32) -> PyResult<Blobs<'py>> {
        let task = self
            .task
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("the partition has finished"))?;
        let (held, dataset) = py
            .allow_threads(|| -> anyhow::Result<_> {
                let (cells, dataset) = task.finish()?;
                Ok((split_cells(&cells, buckets)?, dataset))
            })
            .map_err(runtime)?;
        let mut blobs = bucket_blobs(py, held)?;
        if let Some(rows) = dataset {
            push_blobs(py, -3, &rows, &mut blobs)?;
        }
        Ok(blobs)
    }
}

impl PartitionFolder {
    fn task(&mut self) -> PyResult<&mut PartitionTask> {
        self.task
            .as_deref_mut()
            .ok_or_else(|| PyRuntimeError::new_err("the partition has finished"))
    }
}

/// A cell task: rows sorted by (metric, period kind, start) in, each cell's sketches out.
#[pyclass(unsendable)]
struct CellBuilder {
    task: Option<Box<CellTask>>,
}

#[pymethods]
impl CellBuilder {
    #[new]
    fn new(config: &str) -> PyResult<CellBuilder> {
        Ok(CellBuilder {
            task: Some(Box::new(CellTask::new(&config_of(config)?))),
        })
    }

    /// Adds rows; the cells they completed, if any.
    fn add<'py>(&mut self, py: Python<'py>, ipc: &[u8]) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let task = self
            .task
            .as_mut()
            .ok_or_else(|| PyRuntimeError::new_err("the cells have finished"))?;
        let mut built = Vec::new();
        for b in from_ipc(ipc)? {
            built.extend(task.add(&b).map_err(runtime)?);
        }
        if built.is_empty() {
            return Ok(None);
        }
        let bytes = to_ipc(&Arc::clone(&SKETCH_SCHEMA), &built).map_err(runtime)?;
        Ok(Some(PyBytes::new(py, &bytes)))
    }

    /// The last cell, if any.
    fn finish<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let task = self
            .task
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("the cells have finished"))?;
        task.finish()
            .map_err(runtime)?
            .map(|b| batch_bytes(py, &b))
            .transpose()
    }
}

/// A dataset task: rows sorted by (month, input, pos), each month's all here, in; the files it
/// staged out.
#[pyclass(unsendable)]
struct DatasetWriter {
    task: Option<Box<DatasetTask>>,
}

#[pymethods]
impl DatasetWriter {
    /// `names`: the inputs' names in input order; `dir`: `--events` as every task sees it;
    /// `suffix`: what this task's staged names end in, its own.
    #[new]
    fn new(config: &str, names: Vec<String>, dir: &str, suffix: &str) -> PyResult<DatasetWriter> {
        let task = DatasetTask::new(&config_of(config)?, names, Path::new(dir), suffix);
        Ok(DatasetWriter {
            task: Some(Box::new(task)),
        })
    }

    fn add(&mut self, py: Python<'_>, ipc: &[u8]) -> PyResult<()> {
        let task = self
            .task
            .as_deref_mut()
            .ok_or_else(|| PyRuntimeError::new_err("the dataset task has finished"))?;
        let batches = from_ipc(ipc)?;
        py.allow_threads(|| batches.iter().try_for_each(|b| task.add(b)))
            .map_err(runtime)
    }

    /// The staged files: an IPC stream of `dataset_files` rows.
    fn finish<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let task = self
            .task
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("the dataset task has finished"))?;
        let batch = py.allow_threads(|| task.finish()).map_err(runtime)?;
        batch_bytes(py, &batch)
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("UsageError", m.py().get_type::<UsageError>())?;
    m.add_function(wrap_pyfunction!(schema, m)?)?;
    m.add_function(wrap_pyfunction!(known_repositories, m)?)?;
    m.add_function(wrap_pyfunction!(split, m)?)?;
    m.add_class::<Job>()?;
    m.add_class::<InputReader>()?;
    m.add_class::<FirstsFinder>()?;
    m.add_class::<PartitionFolder>()?;
    m.add_class::<CellBuilder>()?;
    m.add_class::<DatasetWriter>()?;
    Ok(())
}
