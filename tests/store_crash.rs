//! The chunk store under `warren mount` processes (root and /dev/fuse needed): SIGKILL in
//! the middle of writing chunks, round after round, and a store on a full 2 MiB tmpfs.

mod common;
mod store_support;

use common::mountfs::is_mounted;
use common::*;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store_support::*;
use warren::store::{Store, StoreOptions};

/// A tree of incompressible files: enough chunks that a prefetch of all of it keeps the
/// store writing for a while.
fn random_tree(dir: &Path, files: usize, size: usize) {
    std::fs::create_dir_all(dir.join("d")).unwrap();
    for i in 0..files {
        std::fs::write(
            dir.join(format!("d/f{i:03}.bin")),
            noise(1000 + i as u64, size),
        )
        .unwrap();
    }
    std::fs::write(dir.join("small.txt"), b"small\n").unwrap();
}

struct Mounted {
    child: Child,
    mountpoint: PathBuf,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn spawn_mount(img: &Built, mnt: &Path, store: &Path, extra: &[&str]) -> Mounted {
    let mut child = Command::new(warren_bin())
        .arg("mount")
        .arg("-B")
        .arg(&img.boot)
        .arg("-D")
        .arg(&img.blobs)
        .arg("--cache-dir")
        .arg(store)
        .args(extra)
        .arg(mnt)
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting warren mount");
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let (pipe, lines) = (child.stderr.take().unwrap(), stderr.clone());
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_mounted(mnt) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "warren mount exited ({status}): {:?}",
                stderr.lock().unwrap()
            );
        }
        assert!(Instant::now() < deadline, "not mounted within 20 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    Mounted {
        child,
        mountpoint: mnt.to_path_buf(),
        stderr,
    }
}

impl Mounted {
    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        // The dead daemon's mount is detached; its readers get ENOTCONN.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mountpoint)
            .status();
        assert!(!self.stderr().contains("panicked"), "{}", self.stderr());
    }

    fn stop(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "warren mount: {status}: {}",
            self.stderr()
        );
        assert!(!self.stderr().contains("panicked"), "{}", self.stderr());
    }
}

#[test]
fn sigkill_while_writing_chunks_never_leaves_a_bad_store() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("tree");
    random_tree(&src, 24, 2 << 20);
    let img = build(&src, &work.path().join("img"));
    let want = file_hashes(&src);
    let names: Vec<&String> = want.keys().collect();
    let store = work.path().join("store");
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // A quota of a third of the image: prefetch keeps writing, evicting and punching.
    let quota = (16u64 << 20).to_string();
    let args = ["--prefetch-all", "--cache-quota", &quota];
    let mut repaired_rounds = 0;
    for round in 0..24u64 {
        let m = spawn_mount(&img, &mnt, &store, &args);
        // A few files read and checked while prefetch writes in the background.
        for k in 0..3 {
            let name = names[((round * 7 + k * 5) as usize) % names.len()];
            let data = std::fs::read(mnt.join(name)).unwrap();
            assert_eq!(&sha256_hex(&data), &want[name], "round {round}: {name}");
        }
        std::thread::sleep(Duration::from_millis(round * 37 % 200));
        m.kill9();
        // The store opens after every kill; what it repaired shows the kill hit a write.
        let s = Store::open(
            &store,
            &StoreOptions {
                quota_bytes: Some(16 << 20),
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("round {round}: the store does not open: {e}"));
        if s.repair_report() != &Default::default() {
            repaired_rounds += 1;
        }
        let report = s.verify(false).unwrap();
        assert!(report.bad.is_empty(), "round {round}: {:?}", report.bad);
    }
    // After all that, every file reads right, from the store or the origin.
    let m = spawn_mount(&img, &mnt, &store, &["--cache-quota", &quota]);
    assert_eq!(file_hashes(&mnt), want);
    m.stop();
    let (ok, out, err) = warren(&[
        "store".as_ref(),
        "verify".as_ref(),
        "--store-dir".as_ref(),
        store.as_os_str(),
    ]);
    assert!(ok, "{out}{err}");
    eprintln!("{repaired_rounds} of 24 kills left something to repair");
    assert!(
        repaired_rounds > 0,
        "no kill landed during a write: the test proves nothing"
    );
}

/// The value of a Prometheus sample by exact name.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in {text}"))
}

fn get_metrics(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n").unwrap().1.to_string()
}

#[test]
fn a_store_on_a_full_disk_fails_writes_and_reads_go_on() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("tree");
    extract_tree(&src);
    let img = build(&src, &work.path().join("img"));
    let want = file_hashes(&src);
    let disk = Tmpfs::new("2m");
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // A quota far above the disk, so the disk fills before eviction would start.
    let args = [
        "--cache-quota",
        "1073741824",
        "--metrics-addr",
        "127.0.0.1:0",
    ];
    let m = spawn_mount(&img, &mnt, disk.path(), &args);
    let addr = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let err = m.stderr();
            if let Some(rest) = err.split("metrics at http://").nth(1) {
                break rest.split('/').next().unwrap().to_string();
            }
            assert!(Instant::now() < deadline, "no metrics address in {err}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for round in 0..2 {
        seen = file_hashes(&mnt);
        assert_eq!(seen, want, "round {round}");
    }
    // The store writes behind the reads: its failures may be counted a moment later.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = get_metrics(&addr);
        if sample(&text, "warren_store_write_failures_total") >= 1.0 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        sample(&text, "warren_store_write_failures_total") >= 1.0,
        "{text}"
    );
    assert!(sample(&text, "warren_chunk_fetch_bytes_total{source=\"origin\"}") > 0.0);
    assert!(sample(&text, "warren_store_bytes") < (2u64 << 20) as f64);
    assert_eq!(seen.len(), want.len());
    m.stop();
    // What did fit is a good store.
    let (ok, out, err) = warren(&[
        "store".as_ref(),
        "verify".as_ref(),
        "--store-dir".as_ref(),
        disk.path().as_os_str(),
    ]);
    assert!(ok, "{out}{err}");
}
