//! `autoresearch prepare` as a user runs it.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use autoresearch_golden::Reference;

fn autoresearch(cache: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_autoresearch"));
    cmd.env("AUTORESEARCH_CACHE", cache).env_remove("AUTORESEARCH_BASE_URL");
    cmd
}

fn failure_message(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure; stdout: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `python3 -m http.server`: a plain static file server that is none of our code.
struct StaticServer(Child, u16);

impl StaticServer {
    fn start(root: &Path) -> StaticServer {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory"])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 for a static file server");
        // Wait until it accepts connections.
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::yield_now();
        }
        StaticServer(child, port)
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn download_and_tokenizer_from_a_static_server_equal_the_reference() {
    let r = Reference::load().unwrap();
    let server = StaticServer::start(&r.path("data"));
    let cache = tempfile::tempdir().unwrap();
    let shards = r.usize(&["documents", "train_shards"]);
    let out = autoresearch(cache.path())
        .args(["prepare", "--base-url", &format!("http://127.0.0.1:{}", server.1), "--num-shards", &shards.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let vocab = 8192; // the h100 profile's
    for file in ["ranks.tiktoken", "token_bytes.json"] {
        let ours = std::fs::read(cache.path().join("h100/tokenizer").join(file)).unwrap();
        let theirs = std::fs::read(r.path(&format!("tokenizer-{vocab}/{file}"))).unwrap();
        if file == "ranks.tiktoken" {
            assert!(ours == theirs, "{file} differs from the reference");
        } else {
            let parse = |b: &[u8]| serde_json::from_slice::<Vec<u32>>(b).unwrap();
            assert_eq!(parse(&ours), parse(&theirs), "{file}");
        }
    }
}

#[test]
fn non_utf8_text_is_refused_by_name_and_nothing_is_written() {
    let cache = tempfile::tempdir().unwrap();
    let bad = cache.path().join("latin1.txt");
    std::fs::write(&bad, b"caf\xe9 au lait\n\nsecond document\n").unwrap();
    let out = autoresearch(cache.path()).args(["prepare", "--profile", "small", "--text"]).arg(&bad).output().unwrap();
    let msg = failure_message(&out);
    assert!(msg.contains("latin1.txt is not UTF-8") && msg.contains("offset 3"), "{msg}");
    assert!(!cache.path().join("small").exists());
}

#[test]
fn a_full_disk_fails_with_the_file_and_leaves_no_final_file() {
    let cache = tempfile::tempdir().unwrap();
    // A 64 KiB file-size limit stands in for a full disk: the first shard write fails.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -f 64 && exec '{}' prepare --profile small", env!("CARGO_BIN_EXE_autoresearch")))
        .env("AUTORESEARCH_CACHE", cache.path())
        .output()
        .unwrap();
    let msg = failure_message(&out);
    assert!(msg.contains("writing") && msg.contains(".parquet"), "{msg}");
    let data: PathBuf = cache.path().join("small/data");
    assert!(!data.exists(), "no data folder under its final name");
    assert!(!cache.path().join("small/prepared.json").exists());
}

#[test]
fn unknown_profiles_and_empty_folders_are_named() {
    let cache = tempfile::tempdir().unwrap();
    let msg = failure_message(&autoresearch(cache.path()).args(["prepare", "--profile", "tpu"]).output().unwrap());
    assert!(msg.contains("unknown profile \"tpu\""), "{msg}");
    let empty = cache.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = autoresearch(cache.path()).args(["prepare", "--parquet"]).arg(&empty).output().unwrap();
    let msg = failure_message(&out);
    assert!(msg.contains("no training shards") && msg.contains("empty"), "{msg}");
    let out = autoresearch(cache.path()).args(["prepare", "--text"]).arg(&empty).output().unwrap();
    assert!(failure_message(&out).contains("no .txt files in"));
}
