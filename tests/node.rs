//! `warren node` as a separate process against the real kernel FUSE: its config file, its
//! HTTP API on the unix socket (spoken here by hand over `UnixStream`), its Prometheus
//! endpoint, and its life cycle. Needs root and /dev/fuse; without them these tests fail.

mod common;
use common::mountfs::{fs_manifest, is_mounted};
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// One HTTP/1.1 exchange on `stream`: the status and the body.
fn http<S: Read + Write>(
    mut stream: S,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    (status, body.to_string())
}

fn api_at(socket: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let stream = UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()));
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let (status, body) = http(stream, method, path, body);
    let value = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {body}"))
    };
    (status, value)
}

fn get_metrics_text(addr: &str) -> String {
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (status, body) = http(stream, "GET", "/metrics", None);
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the sample `name_and_labels` in Prometheus text.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// `promtool check metrics` must accept the text.
fn promtool_accepts(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is not installed: scripts/test.sh installs Debian's prometheus package");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sigterm(child: &Child) {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every mount point below `dir`, by the kernel's mount table.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// A work directory; whatever is still mounted below it is detached on drop.
struct Work(tempfile::TempDir);

impl Work {
    fn new() -> Work {
        Work(tempfile::tempdir().unwrap())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    fn mkdir(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        for m in mounts_under(self.0.path()).iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

/// A running `warren node`; stopped (SIGTERM, then SIGKILL) on drop, its mounts detached
/// by the work directory's guard.
struct NodeProc {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl NodeProc {
    fn spawn(work: &Work, config: Option<&str>, args: &[&str]) -> (Child, PathBuf) {
        let log = work.path("node.log");
        let mut cmd = Command::new(warren_bin());
        cmd.arg("node");
        if let Some(text) = config {
            let file = work.path("node.toml");
            std::fs::write(&file, text).unwrap();
            cmd.arg("--config").arg(file);
        }
        let child = cmd
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting warren node");
        (child, log)
    }

    /// Starts a node and waits until its API answers.
    fn start(work: &Work, config: Option<&str>, args: &[&str], socket: PathBuf) -> NodeProc {
        let (child, log) = Self::spawn(work, config, args);
        let mut node = NodeProc { child, socket, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = node.child.try_wait().unwrap() {
                panic!(
                    "warren node exited with {status} before serving:\n{}",
                    node.log()
                );
            }
            if UnixStream::connect(&node.socket).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "warren node did not answer on {} within 30 s:\n{}",
                node.socket.display(),
                node.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The socket accepts from the start; the node answers once the configured mounts
        // are up.
        let (status, info) = node.api("GET", "/api/v1/daemon", None);
        assert_eq!(status, 200, "{info}");
        node
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        api_at(&self.socket, method, path, body)
    }

    /// POSTs a mount and expects 204.
    fn mount(&self, mountpoint: &Path, body: Value) {
        let (status, resp) = self.api(
            "POST",
            &format!("/api/v1/mount?mountpoint={}", mountpoint.display()),
            Some(&body.to_string()),
        );
        assert_eq!(status, 204, "mounting at {}: {resp}", mountpoint.display());
        assert!(
            is_mounted(mountpoint),
            "{} not mounted",
            mountpoint.display()
        );
    }

    fn metrics_addr(&self) -> String {
        let (status, info) = self.api("GET", "/api/v1/daemon", None);
        assert_eq!(status, 200);
        info["metrics_addr"].as_str().unwrap().to_string()
    }

    /// SIGTERM, and the exit status (within 30 s).
    fn terminate(&mut self) -> ExitStatus {
        sigterm(&self.child);
        wait_exit(&mut self.child, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("warren node ignored SIGTERM for 30 s:\n{}", self.log()))
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            sigterm(&self.child);
            if wait_exit(&mut self.child, Duration::from_secs(10)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Runs `warren node` that is expected to fail at start: its stderr.
fn node_fails(work: &Work, config: Option<&str>, args: &[&str]) -> String {
    let (mut child, log) = NodeProc::spawn(work, config, args);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    if status.is_none() {
        sigterm(&child);
        let _ = wait_exit(&mut child, Duration::from_secs(10));
        let _ = child.kill();
        let _ = child.wait();
        panic!("warren node kept running, expected a failure:\n{text}");
    }
    let status = status.unwrap();
    assert!(
        !status.success(),
        "warren node exited 0, expected a failure:\n{text}"
    );
    text
}

/// A fixture image's bootstrap and blob directory, as the node reports them (resolved).
fn real_fixture(name: &str) -> (PathBuf, PathBuf) {
    let (boot, blobs) = fixture_image(name);
    (
        std::fs::canonicalize(boot).unwrap(),
        std::fs::canonicalize(blobs).unwrap(),
    )
}

/// A config for a node living in `work`, with a fresh cache and a free metrics port.
fn base_config(work: &Work, blob_dir: &Path) -> String {
    format!(
        "data_dir = {:?}\ncache_dir = {:?}\nblob_dir = {:?}\nmetrics_addr = \"127.0.0.1:0\"\n",
        work.path("data"),
        work.path("cache"),
        blob_dir
    )
}

#[test]
fn api_mounts_two_images_serves_metrics_and_unmounts() {
    let work = Work::new();
    let (boot, blobs) = real_fixture("v6-zstd-blake3");
    let (boot2, blobs2) = real_fixture("v6-lz4-64k");
    let mut node = NodeProc::start(
        &work,
        Some(&format!(
            "{}id = \"test-node\"\n",
            base_config(&work, &blobs)
        )),
        &[],
        work.path("data/api.sock"),
    );

    let md = std::fs::symlink_metadata(&node.socket).unwrap();
    assert!(md.file_type().is_socket());
    assert_eq!(md.permissions().mode() & 0o777, 0o600, "API socket mode");

    let (status, info) = node.api("GET", "/api/v1/daemon", None);
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["state"], "RUNNING");
    assert_eq!(info["id"], "test-node");
    assert_eq!(info["version"]["package_ver"], env!("CARGO_PKG_VERSION"));
    assert!(info["uptime_secs"].is_u64());
    assert_eq!(info["mounts"], json!([]));

    // Warren's own config form, and the node's default blob_dir.
    let mnt1 = work.mkdir("mnt1");
    node.mount(&mnt1, json!({"source": boot, "fs_type": "rafs"}));
    // nydusd's shape: the config as a JSON string with a localfs backend, as
    // nydus-snapshotter sends it.
    let mnt2 = work.mkdir("mnt2");
    let nydusd_config = json!({
        "device": {"backend": {"type": "localfs", "config": {"dir": blobs2}},
                   "cache": {"type": "blobcache", "config": {"work_dir": "/nonexistent"}}},
        "mode": "direct", "digest_validate": true
    });
    node.mount(
        &mnt2,
        json!({"source": boot2, "fs_type": "rafs", "config": nydusd_config.to_string(),
               "prefetch_files": ["/files"]}),
    );

    let want = load_manifest();
    assert_manifests_equal(&fs_manifest(&mnt1), &want);
    assert_manifests_equal(&fs_manifest(&mnt2), &want);

    let (status, mounts) = node.api("GET", "/api/v1/mounts", None);
    assert_eq!(status, 200, "{mounts}");
    let mounts = mounts.as_array().unwrap();
    assert_eq!(mounts.len(), 2, "{mounts:?}");
    for (m, (mp, b, d)) in mounts
        .iter()
        .zip([(&mnt1, &boot, &blobs), (&mnt2, &boot2, &blobs2)])
    {
        assert_eq!(m["mountpoint"], json!(mp));
        assert_eq!(m["bootstrap"], json!(b));
        assert_eq!(m["blob_dir"], json!(d));
        assert_eq!(m["fs_type"], "rafs");
        assert!(m["stats"]["inodes"].as_u64().unwrap() > 0, "{m}");
        assert!(m["stats"]["files"].as_u64().unwrap() > 0, "{m}");
        assert_eq!(m["stats"]["blobs"], 1);
        assert!(m["stats"]["chunks"].as_u64().unwrap() > 0);
    }
    let (_, info) = node.api("GET", "/api/v1/daemon", None);
    assert_eq!(info["mounts"].as_array().unwrap().len(), 2);

    // Metrics, as JSON on the socket and as Prometheus text on the TCP port.
    let (status, m) = node.api("GET", "/api/v1/metrics", None);
    assert_eq!(status, 200, "{m}");
    assert!(
        m["warren_chunk_fetch_bytes_total"]["origin"]
            .as_f64()
            .unwrap()
            > 0.0,
        "{m}"
    );
    assert!(
        m["warren_fuse_ops_total"]["read"].as_f64().unwrap() > 0.0,
        "{m}"
    );
    assert!(
        m["warren_fuse_ops_total"].as_object().unwrap().len() > 3,
        "{m}"
    );
    assert_eq!(m["warren_mounts"], 2.0);
    let text = get_metrics_text(&node.metrics_addr());
    let origin = sample(&text, "warren_chunk_fetch_bytes_total{source=\"origin\"}");
    assert!(origin.is_some_and(|v| v > 0.0), "{text}");
    assert!(sample(&text, "warren_fuse_ops_total{op=\"read\"}").is_some_and(|v| v > 0.0));
    assert!(text.contains("# TYPE warren_fuse_op_seconds histogram"));
    promtool_accepts(&text);

    // DELETE unmounts just that one.
    let (status, body) = node.api(
        "DELETE",
        &format!("/api/v1/mount?mountpoint={}", mnt1.display()),
        None,
    );
    assert_eq!(status, 204, "{body}");
    assert!(!is_mounted(&mnt1));
    assert!(is_mounted(&mnt2));
    let (status, body) = node.api(
        "DELETE",
        &format!("/api/v1/mount?mountpoint={}", mnt1.display()),
        None,
    );
    assert_eq!(status, 404, "{body}");
    assert!(body["message"].as_str().unwrap().contains("mnt1"), "{body}");
    let (_, mounts) = node.api("GET", "/api/v1/mounts", None);
    assert_eq!(mounts.as_array().unwrap().len(), 1);

    // SIGTERM: the rest is unmounted, the socket removed, exit 0.
    let status = node.terminate();
    assert!(status.success(), "exit {status}:\n{}", node.log());
    assert!(!is_mounted(&mnt2));
    assert!(!node.socket.exists(), "socket left behind");
}

#[test]
fn config_mounts_at_start_and_sigterm_unmounts_them() {
    let work = Work::new();
    let (boot, blobs) = real_fixture("v6-zstd-blake3");
    let (boot2, blobs2) = real_fixture("v6-none-sha256");
    let mnt1 = work.mkdir("a");
    let mnt2 = work.mkdir("b");
    // Relative paths are taken from the config file's directory.
    let config = format!(
        "{}fuse_threads = 2\n[prefetch]\nall = true\n\n[[mounts]]\nbootstrap = {:?}\nmountpoint = \"a\"\n\n\
         [[mounts]]\nbootstrap = {:?}\nmountpoint = \"./b\"\nblob_dir = {:?}\nprefetch_files = [\"/files\"]\n",
        base_config(&work, &blobs),
        boot,
        boot2,
        blobs2
    );
    let mut node = NodeProc::start(&work, Some(&config), &[], work.path("data/api.sock"));
    assert!(is_mounted(&mnt1) && is_mounted(&mnt2), "{}", node.log());
    let (_, mounts) = node.api("GET", "/api/v1/mounts", None);
    let mounts = mounts.as_array().unwrap();
    assert_eq!(mounts[0]["mountpoint"], json!(mnt1));
    assert_eq!(mounts[1]["blob_dir"], json!(blobs2));
    assert_eq!(mounts[0]["fuse_threads"], 2);
    let want = load_manifest();
    assert_manifests_equal(&fs_manifest(&mnt2), &want);

    let status = node.terminate();
    assert!(status.success(), "exit {status}:\n{}", node.log());
    assert!(!is_mounted(&mnt1) && !is_mounted(&mnt2));
    assert!(!node.socket.exists());
}

#[test]
fn runs_without_config_and_flags_override() {
    let work = Work::new();
    let data = work.path("state");
    // No config: embedded defaults under --data-dir.
    let mut node = NodeProc::start(
        &work,
        None,
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        data.join("api.sock"),
    );
    let (status, info) = node.api("GET", "/api/v1/daemon", None);
    assert_eq!(status, 200);
    assert_eq!(info["data_dir"], json!(data));
    assert!(data.join("cache").is_dir());
    assert!(node.terminate().success());

    // Flags win over the file.
    let (boot, blobs) = real_fixture("v6-zstd-blake3");
    let sock = work.path("other.sock");
    let config = format!(
        "data_dir = {:?}\nmetrics_addr = \"127.0.0.1:1\"\n\
         api_socket = \"/nonexistent/api.sock\"\nblob_dir = \"/nonexistent\"\n",
        work.path("data")
    );
    let node = NodeProc::start(
        &work,
        Some(&config),
        &[
            "--api-socket",
            sock.to_str().unwrap(),
            "--metrics-addr",
            "127.0.0.1:0",
            "--blob-dir",
            blobs.to_str().unwrap(),
        ],
        sock.clone(),
    );
    let mnt = work.mkdir("mnt");
    node.mount(&mnt, json!({"source": boot}));
    assert_ne!(node.metrics_addr(), "127.0.0.1:1");
    let (_, mounts) = node.api("GET", "/api/v1/mounts", None);
    assert_eq!(mounts[0]["blob_dir"], json!(blobs));
}

#[test]
fn bad_config_fails_naming_file_and_field() {
    let work = Work::new();
    let cases = [
        (
            "fuse_threads = 4\nfuse_treads = 2\n",
            "`fuse_treads`",
            "line 2",
        ),
        ("metrics_addr = \"localhost\"\n", "`metrics_addr`", "line 1"),
        ("[fetch]\nverify = \"yes\"\n", "`fetch.verify`", "line 2"),
        ("fuse_threads = 0\n", "`fuse_threads`", "at least 1"),
        (
            "[[mounts]]\nbootstrap = \"/x\"\nmountpoint = \"/y\"\ncolour = 1\n",
            "`colour`",
            "line 4",
        ),
        (
            "[[mounts]]\nmountpoint = \"/y\"\n",
            "`bootstrap`",
            "missing",
        ),
        ("data_dir = [\n", "invalid array", "line 2"),
    ];
    for (config, field, detail) in cases {
        let err = node_fails(&work, Some(config), &[]);
        assert!(
            err.contains("node.toml") && err.contains(field) && err.contains(detail),
            "config {config:?}: the error should name the file, {field} and {detail}:\n{err}"
        );
    }
    let err = node_fails(&work, None, &["--config", "/nonexistent/node.toml"]);
    assert!(err.contains("/nonexistent/node.toml"), "{err}");
}

#[test]
fn config_mount_failure_names_the_mount() {
    let work = Work::new();
    let (boot, blobs) = fixture_image("v6-zstd-blake3");
    let good = work.mkdir("good");
    let config = format!(
        "{}[[mounts]]\nbootstrap = {:?}\nmountpoint = {:?}\n\n[[mounts]]\nbootstrap = \"/nonexistent/image.boot\"\nmountpoint = {:?}\n",
        base_config(&work, &blobs),
        boot,
        good,
        work.mkdir("bad"),
    );
    let err = node_fails(&work, Some(&config), &[]);
    assert!(
        err.contains("mounts[1]") && err.contains("/nonexistent/image.boot"),
        "{err}"
    );
    assert!(!is_mounted(&good), "the first mount was left behind");
    assert!(!work.path("data/api.sock").exists(), "socket left behind");
}

#[test]
fn bad_mount_requests_get_clear_errors() {
    let work = Work::new();
    let (boot, blobs) = fixture_image("v6-zstd-blake3");
    let node = NodeProc::start(
        &work,
        Some(&base_config(&work, &blobs)),
        &[],
        work.path("data/api.sock"),
    );
    let mnt = work.mkdir("mnt");
    let post = |mp: &str, body: &str| {
        node.api(
            "POST",
            &format!("/api/v1/mount?mountpoint={mp}"),
            Some(body),
        )
    };
    let expect = |(status, body): (u16, Value), want: u16, words: &[&str]| {
        assert_eq!(status, want, "{body}");
        let msg = body["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no message: {body}"));
        assert!(body["code"].is_string(), "{body}");
        for w in words {
            assert!(msg.contains(w), "{msg:?} should mention {w:?}");
        }
    };
    let m = mnt.to_str().unwrap();
    let source = |p: &str| json!({ "source": p }).to_string();

    expect(
        post(m, &source("/nonexistent/image.boot")),
        404,
        &["bootstrap", "/nonexistent/image.boot"],
    );
    expect(
        post(m, &source("image.boot")),
        400,
        &["bootstrap", "absolute"],
    );
    expect(
        post("relative/mnt", &source(boot.to_str().unwrap())),
        400,
        &["mount point", "relative/mnt"],
    );
    expect(
        post(
            &work.path("missing").display().to_string(),
            &source(boot.to_str().unwrap()),
        ),
        404,
        &["mount point", "missing"],
    );
    expect(post(m, "{\"source\": "), 400, &["JSON"]);
    expect(post(m, "{}"), 400, &["source"]);
    expect(
        node.api(
            "POST",
            "/api/v1/mount",
            Some(&source(boot.to_str().unwrap())),
        ),
        400,
        &["mountpoint"],
    );
    expect(
        post(
            m,
            &json!({"source": boot, "fs_type": "passthrough_fs"}).to_string(),
        ),
        400,
        &["passthrough_fs"],
    );
    expect(
        post(m, &json!({"source": boot, "config": {"device": {"backend": {"type": "registry", "config": {}}}}}).to_string()),
        400,
        &["registry"],
    );
    expect(
        post(
            m,
            &json!({"source": boot, "config": {"blob_dir": "/nonexistent/blobs"}}).to_string(),
        ),
        404,
        &["/nonexistent/blobs"],
    );
    expect(
        post(
            m,
            &json!({"source": boot, "config": {"blob_dri": "/x"}}).to_string(),
        ),
        400,
        &["blob_dri"],
    );
    // Not a RAFS bootstrap.
    let junk = work.path("junk.boot");
    std::fs::write(&junk, vec![7u8; 8192]).unwrap();
    expect(
        post(m, &source(junk.to_str().unwrap())),
        400,
        &["junk.boot"],
    );
    assert!(!is_mounted(&mnt));

    // Busy: mounted by this node, or by anyone else.
    node.mount(&mnt, json!({"source": boot}));
    expect(
        post(m, &source(boot.to_str().unwrap())),
        409,
        &["already mounted", m],
    );
    let busy = work.mkdir("busy");
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&busy)
        .status()
        .unwrap();
    assert!(st.success(), "mounting a tmpfs on {}", busy.display());
    expect(
        post(busy.to_str().unwrap(), &source(boot.to_str().unwrap())),
        409,
        &["already mounted there"],
    );
    // The node did not take it over: DELETE says it is not ours.
    expect(
        node.api(
            "DELETE",
            &format!("/api/v1/mount?mountpoint={}", busy.display()),
            None,
        ),
        404,
        &["by this node"],
    );

    expect(
        node.api("GET", "/api/v1/nothing", None),
        404,
        &["/api/v1/nothing"],
    );
    expect(node.api("PUT", "/api/v1/daemon", None), 405, &["PUT"]);
    // After all that, the good mount still serves.
    assert_manifests_equal(&fs_manifest(&mnt), &load_manifest());
}

#[test]
fn second_node_on_a_live_socket_is_refused_stale_socket_is_replaced() {
    let work = Work::new();
    let (_, blobs) = fixture_image("v6-zstd-blake3");
    let config = base_config(&work, &blobs);
    let sock = work.path("data/api.sock");
    let node = NodeProc::start(&work, Some(&config), &[], sock.clone());
    let other = Work::new();
    let err = node_fails(&other, Some(&config), &[]);
    assert!(
        err.contains("another node") && err.contains("api.sock"),
        "{err}"
    );
    // The first node still answers.
    assert_eq!(node.api("GET", "/api/v1/daemon", None).0, 200);
    drop(node);

    // A socket file nobody listens on (a node killed with SIGKILL) is replaced.
    let _ = std::fs::remove_file(&sock);
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let node = NodeProc::start(&work, Some(&config), &[], sock.clone());
    assert_eq!(node.api("GET", "/api/v1/daemon", None).0, 200);
}

#[test]
fn mount_command_serves_prometheus_metrics() {
    let work = Work::new();
    let (boot, blobs) = fixture_image("v6-zstd-blake3");
    let mnt = work.mkdir("mnt");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(warren_bin())
        .args(["mount", "-q", "-B"])
        .arg(&boot)
        .arg("-D")
        .arg(&blobs)
        .arg("--cache-dir")
        .arg(work.path("cache"))
        .args(["--metrics-addr", &addr])
        .arg(&mnt)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Stop<'a>(&'a mut Child);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            sigterm(self.0);
            if wait_exit(self.0, Duration::from_secs(10)).is_none() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
    let guard = Stop(&mut child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !is_mounted(&mnt) {
        assert!(Instant::now() < deadline, "warren mount did not mount");
        assert!(
            matches!(guard.0.try_wait(), Ok(None)),
            "warren mount exited"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::read_dir(mnt.join("files")).unwrap().for_each(|e| {
        let _ = std::fs::read(e.unwrap().path());
    });
    let text = get_metrics_text(&addr);
    assert!(
        sample(&text, "warren_chunk_fetch_bytes_total{source=\"origin\"}").is_some_and(|v| v > 0.0),
        "{text}"
    );
    assert!(sample(&text, "warren_fuse_ops_total{op=\"read\"}").is_some_and(|v| v > 0.0));
    promtool_accepts(&text);
    drop(guard);
    assert!(child.wait().unwrap().success());
    assert!(!is_mounted(&mnt));
}
