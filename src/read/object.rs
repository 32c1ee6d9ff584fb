//! Object storage: inputs, and small side files, at `s3://`, `gs://`, `az://` (`abfs://`) and
//! `http(s)://` URLs, listed and read through Apache Arrow's `object_store`.
//!
//! Credentials, region and endpoint come from the environment, as the clouds' own tools read
//! them (`AWS_*`, `GOOGLE_*`, `AZURE_*`), never from flags: a flag would put a secret in the
//! process list. An object is read as ranged GETs streamed as they arrive, a few in flight at
//! once, so that a large object keeps the parser busy without being held whole: what waits for
//! the reader is at most [`CHUNKS_QUEUED`] pieces of each of [`RANGES_AHEAD`] ranges.

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt, RetryConfig,
};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use url::Url;

/// The bytes of one ranged GET: an object up to this size is one request.
pub const RANGE_BYTES: u64 = 64 << 20;

/// How many ranges of one object are in flight at once.
pub const RANGES_AHEAD: usize = 3;

/// Attempts at one range before its error fails the input: `object_store` retries a request
/// that fails (throttling, a server error, a refused connection), and these attempts also
/// cover a body cut off while it streams (asked again from the byte it reached).
const RANGE_ATTEMPTS: u32 = 4;

/// Whether a command-line input names object storage rather than a local path.
pub fn is_url(arg: &str) -> bool {
    let Some((scheme, rest)) = arg.split_once("://") else {
        return false;
    };
    !rest.is_empty()
        && matches!(
            scheme.to_ascii_lowercase().as_str(),
            "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" | "azure" | "http" | "https"
        )
}

/// The runtime the object stores' requests run on: two threads, since they only wait on the
/// network while the parsers use the cores.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("regtally-objects")
            .enable_all()
            .build()
            .expect("a runtime of two threads")
    })
}

/// How requests are retried: throttling (`503 SlowDown`), server errors and broken
/// connections, five times with backoff from 100 ms, for 30 s at most.
fn retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: 5,
        retry_timeout: Duration::from_secs(30),
    }
}

/// An object's place: its store and its path there.
#[derive(Clone, Debug)]
struct Location {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    /// The URL of `path`'s store (scheme, bucket or host), for naming objects.
    base: Url,
}

impl Location {
    fn of(url: &str) -> Result<Location, String> {
        let parsed = Url::parse(url).map_err(|e| format!("{url}: not a URL: {e}"))?;
        if parsed.query().is_some() {
            // A pre-signed URL's query is its credentials, which must not be in a command line.
            return Err(format!(
                "{url}: a URL with a query (a pre-signed URL) is not read"
            ));
        }
        let mut base = parsed.clone();
        base.set_path("/");
        base.set_query(None);
        base.set_fragment(None);
        let path = ObjectPath::from_url_path(parsed.path())
            .map_err(|e| format!("{url}: not an object path: {e}"))?;
        Ok(Location {
            store: store(&base)?,
            path,
            base,
        })
    }

    /// The URL of the object at `path` in this location's store.
    fn url_of(&self, path: &ObjectPath) -> String {
        let mut url = self.base.clone();
        url.set_path(&format!("/{path}"));
        url.to_string()
    }
}

/// The store of a bucket (container, host), built once per run from the environment.
fn store(base: &Url) -> Result<Arc<dyn ObjectStore>, String> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    let key = base.to_string();
    let mut stores = STORES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(store) = stores.get(&key) {
        return Ok(store.clone());
    }
    let built: Arc<dyn ObjectStore> = match base.scheme() {
        "s3" | "s3a" => Arc::new(
            object_store::aws::AmazonS3Builder::from_env()
                .with_url(key.as_str())
                .with_retry(retry())
                .build()
                .map_err(|e| format!("{key}: {e}"))?,
        ),
        "gs" => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(key.as_str())
                .with_retry(retry())
                .build()
                .map_err(|e| format!("{key}: {e}"))?,
        ),
        "az" | "abfs" | "abfss" | "azure" => Arc::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(key.as_str())
                .with_retry(retry())
                .build()
                .map_err(|e| format!("{key}: {e}"))?,
        ),
        "http" | "https" => Arc::new(
            object_store::http::HttpBuilder::new()
                .with_url(key.as_str())
                .with_retry(retry())
                .with_client_options(
                    object_store::ClientOptions::new().with_allow_http(base.scheme() == "http"),
                )
                .build()
                .map_err(|e| format!("{key}: {e}"))?,
        ),
        other => return Err(format!("{key}: no object store for {other}://")),
    };
    stores.insert(key, built.clone());
    Ok(built)
}

/// An object listed as an input.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListedObject {
    pub url: String,
    pub size: u64,
    pub etag: Option<String>,
    pub version: Option<String>,
}

impl ListedObject {
    /// What tells this version of the object from another under the same URL and size: its
    /// version id where the store keeps versions, else its ETag.
    pub fn stamp(&self) -> Option<String> {
        match (&self.version, &self.etag) {
            (Some(version), _) => Some(format!("version {version}")),
            (None, Some(etag)) => Some(format!("etag {etag}")),
            (None, None) => None,
        }
    }

    fn of(location: &Location, meta: ObjectMeta) -> ListedObject {
        ListedObject {
            url: location.url_of(&meta.location),
            size: meta.size,
            etag: meta.e_tag,
            version: meta.version,
        }
    }
}

/// What a failed request says to a user: the cause first, then the store's own words.
fn cause(e: &object_store::Error) -> String {
    let text = e.to_string();
    // S3 and its kin answer with an error code in XML; the store passes it on in its message.
    let code = text
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| code);
    let plain = match (e, code) {
        (object_store::Error::NotFound { .. }, _) | (_, Some("NoSuchKey")) => "no such object",
        (_, Some("NoSuchBucket")) => "no such bucket",
        (object_store::Error::PermissionDenied { .. }, _) | (_, Some("AccessDenied")) => {
            "access denied"
        }
        (object_store::Error::Unauthenticated { .. }, _)
        | (_, Some("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken")) => {
            "the credentials were refused"
        }
        _ if text.contains("169.254.169.254") => {
            "no credentials: none in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, \
             AWS_WEB_IDENTITY_TOKEN_FILE) and none from an instance"
        }
        _ => return text,
    };
    match code {
        Some(code) => format!("{plain} ({code})"),
        None => format!("{plain} ({text})"),
    }
}

/// The objects a URL names: every object under a prefix (a bucket's, a folder's), skipping
/// those with a hidden part (a name starting with `.`) below the prefix, or the one object at
/// it. A URL that names none is an error.
pub fn list(url: &str) -> Result<Vec<ListedObject>, String> {
    let location = Location::of(url)?;
    let store = location.store.clone();
    let prefix = location.path.clone();
    let listed: Result<Vec<ObjectMeta>, object_store::Error> =
        if matches!(location.base.scheme(), "http" | "https") {
            // A web server lists nothing: the URL is one object.
            runtime()
                .block_on(store.head(&prefix))
                .map(|meta| vec![meta])
        } else {
            runtime().block_on(async {
                let under = if prefix.parts_count() == 0 {
                    None
                } else {
                    Some(&prefix)
                };
                let mut found: Vec<ObjectMeta> = store.list(under).try_collect().await?;
                if found.is_empty() && prefix.parts_count() > 0 {
                    // Not a prefix: perhaps the key of one object.
                    match store.head(&prefix).await {
                        Ok(meta) => found.push(meta),
                        Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(found)
            })
        };
    let listed = listed.map_err(|e| format!("{url}: {}", cause(&e)))?;
    let mut objects: Vec<ListedObject> = listed
        .into_iter()
        .filter(|meta| {
            meta.location
                .prefix_match(&prefix)
                .is_none_or(|mut below| !below.any(|part| part.as_ref().starts_with('.')))
        })
        .map(|meta| ListedObject::of(&location, meta))
        .collect();
    if objects.is_empty() {
        return Err(format!("{url}: no object there"));
    }
    objects.sort_by(|a, b| a.url.cmp(&b.url));
    Ok(objects)
}

/// The whole of a small object (`--known-repositories`, `--user-ids`).
pub fn read_whole(url: &str) -> Result<Vec<u8>, String> {
    let location = Location::of(url)?;
    runtime()
        .block_on(async {
            let got = location.store.get(&location.path).await?;
            got.bytes().await
        })
        .map(|b| b.to_vec())
        .map_err(|e| format!("{url}: {}", cause(&e)))
}

/// Files up to this size are written in one PUT; larger ones in parts of this size.
const PART_BYTES: usize = 32 << 20;

/// Writes the local file `from` as the object at `url`: in one PUT, or in parts for a large
/// file (the object appears whole when the last part is in).
pub fn put_file(url: &str, from: &std::path::Path) -> Result<(), String> {
    let location = Location::of(url)?;
    let failed = |e: &dyn std::fmt::Display| format!("cannot write {url}: {e}");
    let mut file = std::fs::File::open(from).map_err(|e| failed(&e))?;
    let size = file.metadata().map_err(|e| failed(&e))?.len();
    runtime()
        .block_on(async {
            if size <= PART_BYTES as u64 {
                let mut bytes = Vec::with_capacity(size as usize);
                file.read_to_end(&mut bytes)
                    .map_err(|e| object_store::Error::Generic {
                        store: "local file",
                        source: Box::new(e),
                    })?;
                location
                    .store
                    .put(&location.path, object_store::PutPayload::from(bytes))
                    .await?;
                return Ok(());
            }
            let upload = location.store.put_multipart(&location.path).await?;
            let mut parts = object_store::WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file
                    .read(&mut buf)
                    .map_err(|e| object_store::Error::Generic {
                        store: "local file",
                        source: Box::new(e),
                    })?;
                if n == 0 {
                    break;
                }
                parts.wait_for_capacity(4).await?;
                parts.write(&buf[..n]);
            }
            parts.finish().await.map(|_| ())
        })
        .map_err(|e| failed(&cause(&e)))
}

/// The URLs of the objects under a prefix; none is not an error.
pub fn list_under(url: &str) -> Result<Vec<String>, String> {
    let location = Location::of(url)?;
    let prefix = location.path.clone();
    let listed: Result<Vec<ObjectMeta>, object_store::Error> =
        runtime().block_on(location.store.list(Some(&prefix)).try_collect());
    let listed = listed.map_err(|e| format!("{url}: {}", cause(&e)))?;
    Ok(listed
        .into_iter()
        .map(|meta| location.url_of(&meta.location))
        .collect())
}

/// Deletes the object at `url`.
pub fn delete(url: &str) -> Result<(), String> {
    let location = Location::of(url)?;
    runtime()
        .block_on(location.store.delete(&location.path))
        .map_err(|e| format!("cannot remove {url}: {}", cause(&e)))
}

/// Checks, before any log is read, that objects can be written under the prefix `url`: a probe
/// object is written there and removed.
pub fn check_writable(url: &str) -> Result<(), String> {
    let probe = format!(
        "{}/.regtally-probe-{}",
        url.trim_end_matches('/'),
        std::process::id()
    );
    let location = Location::of(&probe)?;
    runtime()
        .block_on(async {
            location
                .store
                .put(&location.path, object_store::PutPayload::from_static(b""))
                .await?;
            location.store.delete(&location.path).await
        })
        .map_err(|e| format!("{url} is not writable: {}", cause(&e)))
}

/// An object's bytes as a stream: ranges of [`RANGE_BYTES`], [`RANGES_AHEAD`] of them in flight,
/// each streamed as it arrives into a queue of at most [`CHUNKS_QUEUED`] pieces, so that a large
/// object is fetched on several connections at once while what waits for the reader stays
/// small. Every range is asked for the ETag (or version) the object was listed with, so an
/// object rewritten while it is read fails the read rather than mixing two versions.
pub struct ObjectReader {
    location: Location,
    url: String,
    size: u64,
    etag: Option<String>,
    version: Option<String>,
    /// Where the next range to ask for starts.
    next: u64,
    in_flight: VecDeque<Range>,
    current: bytes::Bytes,
}

/// A range being fetched: its pieces as they arrive, and how many bytes the reader took.
struct Range {
    start: u64,
    end: u64,
    taken: u64,
    pieces: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, String>>,
    task: tokio::task::JoinHandle<()>,
}

/// Pieces of a range that may wait for the reader (a piece is what a socket read gave, tens
/// of KiB).
const CHUNKS_QUEUED: usize = 16;

impl ObjectReader {
    /// A reader of `object`, as listed.
    pub fn open(object: &ListedObject) -> io::Result<ObjectReader> {
        let location = Location::of(&object.url).map_err(io::Error::other)?;
        let mut reader = ObjectReader {
            location,
            url: object.url.clone(),
            size: object.size,
            etag: object.etag.clone(),
            version: object.version.clone(),
            next: 0,
            in_flight: VecDeque::new(),
            current: bytes::Bytes::new(),
        };
        reader.ask();
        Ok(reader)
    }

    /// Asks for ranges until [`RANGES_AHEAD`] are in flight or the object is all asked for.
    fn ask(&mut self) {
        while self.in_flight.len() < RANGES_AHEAD && self.next < self.size {
            let (start, end) = (self.next, (self.next + RANGE_BYTES).min(self.size));
            self.next = end;
            let (tx, pieces) = tokio::sync::mpsc::channel(CHUNKS_QUEUED);
            let store = self.location.store.clone();
            let path = self.location.path.clone();
            let (etag, version) = (self.etag.clone(), self.version.clone());
            let task = runtime().spawn(async move {
                let fetched = fetch(&*store, &path, start..end, etag, version, &tx).await;
                if let Err(why) = fetched {
                    let _ = tx.send(Err(why)).await;
                }
            });
            self.in_flight.push_back(Range {
                start,
                end,
                taken: 0,
                pieces,
                task,
            });
        }
    }

    /// The next piece of the object, or `None` at its end.
    fn next_piece(&mut self) -> io::Result<Option<bytes::Bytes>> {
        loop {
            let Some(range) = self.in_flight.front_mut() else {
                return Ok(None);
            };
            match range.pieces.blocking_recv() {
                Some(Ok(piece)) => {
                    range.taken += piece.len() as u64;
                    return Ok(Some(piece));
                }
                Some(Err(why)) => {
                    let at = range.start + range.taken;
                    return Err(io::Error::other(format!(
                        "{} at byte {at}: {why}",
                        self.url
                    )));
                }
                None if range.taken == range.end - range.start => {
                    self.in_flight.pop_front();
                    self.ask();
                }
                None => {
                    let at = range.start + range.taken;
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{} at byte {at}: the object ended early", self.url),
                    ));
                }
            }
        }
    }
}

/// Fetches `range` of the object at `path` into `tx`, piece by piece. A connection that breaks
/// mid-body is asked again from the byte it reached, [`RANGE_ATTEMPTS`] times; an object gone
/// or rewritten, or access refused, is final.
async fn fetch(
    store: &dyn ObjectStore,
    path: &ObjectPath,
    range: std::ops::Range<u64>,
    if_match: Option<String>,
    version: Option<String>,
    tx: &tokio::sync::mpsc::Sender<Result<bytes::Bytes, String>>,
) -> Result<(), String> {
    use futures::StreamExt;
    let (mut at, mut attempt) = (range.start, 0);
    while at < range.end {
        attempt += 1;
        let options = GetOptions {
            range: Some(GetRange::Bounded(at..range.end)),
            if_match: if_match.clone(),
            version: version.clone(),
            ..GetOptions::default()
        };
        let failed = match store.get_opts(path, options).await {
            Ok(got) => {
                let mut body = got.into_stream();
                loop {
                    match body.next().await {
                        Some(Ok(piece)) => {
                            if piece.len() as u64 > range.end - at {
                                return Err("more bytes than were asked for".to_owned());
                            }
                            at += piece.len() as u64;
                            if tx.send(Ok(piece)).await.is_err() {
                                // The reader is gone.
                                return Ok(());
                            }
                        }
                        Some(Err(e)) => break e,
                        None if at < range.end => {
                            return Err("the object ended early".to_owned());
                        }
                        None => return Ok(()),
                    }
                }
            }
            Err(e) => e,
        };
        let why = match &failed {
            object_store::Error::NotFound { .. } => "deleted since it was listed".to_owned(),
            object_store::Error::Precondition { .. } => "rewritten since it was listed".to_owned(),
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => return Err(cause(&failed)),
            _ if attempt < RANGE_ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                continue;
            }
            _ => cause(&failed),
        };
        return Err(why);
    }
    Ok(())
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.next_piece()? {
                Some(piece) => self.current = piece,
                None => return Ok(0),
            }
        }
        let n = self.current.len().min(buf.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

impl Drop for ObjectReader {
    fn drop(&mut self) {
        for range in self.in_flight.drain(..) {
            range.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_from_paths() {
        for url in [
            "s3://bucket/logs",
            "S3://bucket",
            "gs://b/p",
            "az://container/p",
            "abfs://c@account.dfs.core.windows.net/p",
            "https://example.com/a.log.gz",
        ] {
            assert!(is_url(url), "{url}");
        }
        for path in [
            "logs",
            "/srv/logs",
            "./s3://x",
            "file.log",
            "s3://",
            "-",
            "ftp://x/y",
        ] {
            assert!(!is_url(path), "{path}");
        }
    }

    /// An object's URL is its store's and its key, escaped as a URL escapes it, and reads back
    /// as the same key.
    #[test]
    fn object_urls_round_trip() {
        let location = Location::of("s3://bucket/a b/c%2Bd.log").unwrap();
        assert_eq!(location.path.as_ref(), "a b/c+d.log");
        let url = location.url_of(&location.path);
        assert_eq!(url, "s3://bucket/a%20b/c+d.log");
        assert_eq!(Location::of(&url).unwrap().path, location.path);
        assert!(Location::of("https://host/x.log?X-Amz-Signature=1")
            .unwrap_err()
            .contains("pre-signed"));
    }
}
