//! Downloads against a real HTTP server on 127.0.0.1, serving shards this test writes from the demo corpus,
//! with faults on demand.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use autoresearch_harness::shards::{shard_name, write_shard, Shard, VAL_SHARD};
use autoresearch_prepare::download::{download_shards, shard_indices, DownloadOptions};
use autoresearch_prepare::split_documents;
use indicatif::ProgressBar;

#[derive(Clone, Copy)]
enum Fault {
    None,
    /// Answer 503 to the first n requests.
    FailFirst(usize),
    /// Send the headers and half of each body, then close, on the first n requests.
    CutFirst(usize),
    /// Ignore Range headers and always send the whole file (as `python3 -m http.server` does).
    NoRanges,
}

/// A static file server over `root` with HTTP/1.1 GET and byte ranges, one thread per connection.
struct Server {
    url: String,
    requests: Arc<AtomicUsize>,
    body_bytes: Arc<AtomicUsize>,
}

impl Server {
    fn start(root: PathBuf, fault: Fault) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (requests, body_bytes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (count, sent) = (requests.clone(), body_bytes.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (root, count, sent) = (root.clone(), count.clone(), sent.clone());
                std::thread::spawn(move || serve(stream, &root, fault, &count, &sent));
            }
        });
        Server { url, requests, body_bytes }
    }
}

fn serve(mut stream: TcpStream, root: &Path, fault: Fault, count: &AtomicUsize, sent: &AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut range_start = None;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                range_start = v.trim().trim_end_matches('-').parse::<usize>().ok();
            }
        }
        let n = count.fetch_add(1, Ordering::SeqCst);
        let path = request_line.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/');
        let respond = |stream: &mut TcpStream, status: &str, headers: &str, body: &[u8]| {
            let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n{headers}\r\n", body.len());
            stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(body))
        };
        if let Fault::FailFirst(k) = fault {
            if n < k {
                let _ = respond(&mut stream, "503 Service Unavailable", "", b"busy");
                continue;
            }
        }
        let Ok(data) = std::fs::read(root.join(path)) else {
            let _ = respond(&mut stream, "404 Not Found", "", b"no such file");
            continue;
        };
        let start = match fault {
            Fault::NoRanges => 0,
            _ => range_start.unwrap_or(0).min(data.len()),
        };
        let body = &data[start..];
        sent.fetch_add(body.len(), Ordering::SeqCst);
        if let Fault::CutFirst(k) = fault {
            if n < k {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body[..body.len() / 2]);
                return; // the connection drops mid-file
            }
        }
        let result = if start > 0 {
            let range = format!("Content-Range: bytes {start}-{}/{}\r\n", data.len() - 1, data.len());
            respond(&mut stream, "206 Partial Content", &range, body)
        } else {
            respond(&mut stream, "200 OK", "", body)
        };
        if result.is_err() {
            return;
        }
    }
}

fn options(url: &str) -> DownloadOptions {
    DownloadOptions { base_url: url.to_string(), workers: 3, attempts: 5, backoff: Duration::from_millis(1) }
}

/// Training shards served by the test servers (plus the validation shard).
const TRAIN_SHARDS: usize = 2;

/// A folder of shards in the climbmix layout, written once from the demo corpus: documents dealt in turn to
/// the training shards and the validation shard.
fn reference_data() -> PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/demo/tinyshakespeare.txt"))
                .unwrap();
        let docs = split_documents(&text);
        let index = |k: usize| if k < TRAIN_SHARDS { k } else { VAL_SHARD };
        for k in 0..=TRAIN_SHARDS {
            let part: Vec<String> = docs.iter().skip(k).step_by(TRAIN_SHARDS + 1).cloned().collect();
            write_shard(&dir.path().join(shard_name(index(k))), &part).unwrap();
        }
        dir
    })
    .path()
    .to_path_buf()
}

/// What `--num-shards TRAIN_SHARDS` fetches.
fn num_train_shards() -> i64 {
    TRAIN_SHARDS as i64
}

fn assert_same_files(dir: &Path, indices: &[usize]) {
    for &i in indices {
        let name = shard_name(i);
        let ours = std::fs::read(dir.join(&name)).unwrap();
        assert_eq!(ours, std::fs::read(reference_data().join(&name)).unwrap(), "{name}");
        Shard::open(&dir.join(&name)).unwrap();
        assert!(!dir.join(format!("{name}.tmp")).exists());
    }
}

#[test]
fn full_download_then_skip() {
    let server = Server::start(reference_data(), Fault::None);
    let dir = tempfile::tempdir().unwrap();
    let indices = shard_indices(num_train_shards()).unwrap();
    download_shards(dir.path(), &indices, &options(&server.url), &ProgressBar::hidden()).unwrap();
    assert_same_files(dir.path(), &indices);
    let before = server.requests.load(Ordering::SeqCst);
    download_shards(dir.path(), &indices, &options(&server.url), &ProgressBar::hidden()).unwrap();
    assert_eq!(server.requests.load(Ordering::SeqCst), before, "files already there are not fetched again");
}

#[test]
fn a_server_that_fails_twice_then_works() {
    let server = Server::start(reference_data(), Fault::FailFirst(2));
    let dir = tempfile::tempdir().unwrap();
    let indices = shard_indices(num_train_shards()).unwrap();
    download_shards(dir.path(), &indices, &options(&server.url), &ProgressBar::hidden()).unwrap();
    assert_same_files(dir.path(), &indices);
}

#[test]
fn a_server_that_keeps_failing_gives_up_with_the_url() {
    let server = Server::start(reference_data(), Fault::FailFirst(usize::MAX));
    let dir = tempfile::tempdir().unwrap();
    let err = download_shards(dir.path(), &[0], &options(&server.url), &ProgressBar::hidden()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("shard_00000.parquet") && msg.contains("503") && msg.contains("5 attempts"), "{msg}");
    assert_eq!(server.requests.load(Ordering::SeqCst), 5);
    assert!(!dir.path().join(shard_name(0)).exists());
}

#[test]
fn not_found_fails_at_once_and_names_the_file() {
    let server = Server::start(reference_data(), Fault::None);
    let dir = tempfile::tempdir().unwrap();
    let err = download_shards(dir.path(), &[3], &options(&server.url), &ProgressBar::hidden()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("shard_00003.parquet") && msg.contains("404"), "{msg}");
    assert_eq!(server.requests.load(Ordering::SeqCst), 1, "a 404 is not retried");
    assert!(!dir.path().join(shard_name(3)).exists());
}

#[test]
fn no_server_fails_with_the_url() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: bind, note the port, close.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let opts = DownloadOptions { attempts: 2, ..options(&format!("http://127.0.0.1:{port}")) };
    let msg = format!("{:#}", download_shards(dir.path(), &[0], &opts, &ProgressBar::hidden()).unwrap_err());
    assert!(msg.contains(&format!("127.0.0.1:{port}/shard_00000.parquet")), "{msg}");
}

#[test]
fn a_cut_connection_resumes_and_completes() {
    let indices = shard_indices(num_train_shards()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // One attempt per run: the first run is cut mid-file and leaves only partial .tmp files.
    let cut = Server::start(reference_data(), Fault::CutFirst(usize::MAX));
    let once = DownloadOptions { attempts: 1, ..options(&cut.url) };
    assert!(download_shards(dir.path(), &indices, &once, &ProgressBar::hidden()).is_err());
    for &i in &indices {
        assert!(!dir.path().join(shard_name(i)).exists(), "no partial file under a final name");
        let partial = std::fs::metadata(dir.path().join(format!("{}.tmp", shard_name(i)))).unwrap().len();
        assert!(partial > 0);
    }
    // The rerun asks for the rest only and completes.
    let server = Server::start(reference_data(), Fault::None);
    download_shards(dir.path(), &indices, &options(&server.url), &ProgressBar::hidden()).unwrap();
    assert_same_files(dir.path(), &indices);
    let total: usize =
        indices.iter().map(|&i| std::fs::metadata(reference_data().join(shard_name(i))).unwrap().len() as usize).sum();
    let sent = server.body_bytes.load(Ordering::SeqCst);
    assert!(sent <= total / 2 + indices.len(), "resumed: {sent} of {total} bytes sent again");
}

#[test]
fn a_server_without_ranges_restarts_partial_files() {
    let indices = [0];
    let dir = tempfile::tempdir().unwrap();
    let name = shard_name(0);
    let full = std::fs::read(reference_data().join(&name)).unwrap();
    std::fs::write(dir.path().join(format!("{name}.tmp")), &full[..1000]).unwrap();
    let server = Server::start(reference_data(), Fault::NoRanges);
    download_shards(dir.path(), &indices, &options(&server.url), &ProgressBar::hidden()).unwrap();
    assert_same_files(dir.path(), &indices);
}

#[test]
fn a_file_that_is_not_parquet_never_gets_the_final_name() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join(shard_name(0)), b"<html>this is not parquet</html>").unwrap();
    let server = Server::start(root.path().to_path_buf(), Fault::None);
    let dir = tempfile::tempdir().unwrap();
    let opts = DownloadOptions { attempts: 2, ..options(&server.url) };
    let msg = format!("{:#}", download_shards(dir.path(), &[0], &opts, &ProgressBar::hidden()).unwrap_err());
    assert!(msg.contains("parquet"), "{msg}");
    assert!(!dir.path().join(shard_name(0)).exists());
    assert!(!dir.path().join(format!("{}.tmp", shard_name(0))).exists());
}

#[test]
fn shard_counts_are_checked() {
    assert_eq!(shard_indices(2).unwrap(), vec![0, 1, 6542]);
    assert_eq!(shard_indices(-1).unwrap().len(), 6543);
    assert!(shard_indices(0).is_err());
    assert!(shard_indices(6543).is_err());
    assert!(shard_indices(-2).is_err());
}
