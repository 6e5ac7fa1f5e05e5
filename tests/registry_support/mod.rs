//! Real registries for the tests: the Debian `docker-registry` (distribution 2.8) on a
//! free loopback port, open, with htpasswd, or with token auth (a small RS256 token
//! server, [`token`]); a fault-injecting proxy ([`proxy`]); OCI images made with umoci and
//! pushed with skopeo; `warren mount --image` in the background. Everything started here
//! stops in `Drop`. A missing tool is a failure, not a skip.
#![allow(dead_code)]

pub mod checks;
#[path = "../common/child.rs"]
pub mod child;
#[path = "../common/rootfs.rs"]
mod rootfs_tree;
pub use rootfs_tree::debian_rootfs as rootfs;
pub mod proxy;
pub mod token;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "warren-user";
pub const PASSWORD: &str = "s3cret-Pa55word-do-not-log";

/// A tool from the PATH; panics with what installs it.
pub fn need(tool: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(tool))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("{tool} is not installed (scripts/test.sh installs docker-registry, skopeo, umoci, apache2-utils, openssl)")
        })
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub enum Auth {
    Open,
    Htpasswd,
    Token(token::TokenConfig),
}

/// A `docker-registry` process with its own storage, killed on drop.
pub struct Registry {
    child: Child,
    pub addr: String,
    pub log: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Registry {
    pub fn start(auth: Auth) -> Registry {
        Registry::start_with(auth, false)
    }

    /// Serving HTTPS with a self-signed certificate for 127.0.0.1.
    pub fn start_tls(auth: Auth) -> Registry {
        Registry::start_with(auth, true)
    }

    fn start_with(auth: Auth, tls: bool) -> Registry {
        let bin = need("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let auth_yaml = match &auth {
            Auth::Open => String::new(),
            Auth::Htpasswd => {
                let out = run(Command::new(need("htpasswd")).args(["-Bbn", USER, PASSWORD]));
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, out.stdout).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: warren-test\n    path: {}\n",
                    file.display()
                )
            }
            Auth::Token(t) => format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                t.realm,
                t.service,
                t.issuer,
                t.cert_pem.display()
            ),
        };
        let tls_yaml = if tls {
            let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
            run(Command::new(need("openssl"))
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args([
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                ])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert));
            format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            )
        } else {
            String::new()
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{tls_yaml}{auth_yaml}",
            dir.path().join("data").display()
        );
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let log = dir.path().join("registry.log");
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&cfg)
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("starting docker-registry");
        let mut r = Registry {
            child,
            addr,
            log,
            dir,
        };
        r.wait_ready();
        r
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = http_status(&self.addr, "/v2/") {
                // A TLS listener answers a plain request with 400.
                if status == 200 || status == 401 || status == 400 {
                    return;
                }
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("docker-registry exited ({st}): {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "registry not up: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// (status, bytes written) of every GET of `digest` in the access log.
    pub fn blob_gets(&self, digest: &str) -> Vec<(u16, u64)> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains(digest))
            .filter_map(|l| {
                let rest = &l[l.find("HTTP/1.1\" ")? + 10..];
                let mut it = rest.split_whitespace();
                let status = it.next()?.parse().ok()?;
                let bytes = it.next()?.parse().unwrap_or(0);
                Some((status, bytes))
            })
            .collect()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of a plain `GET path` (None when nothing answers).
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}

/// An OCI layout holding the Debian rootfs as one tar.gz layer (tag `minbase`), made once
/// and kept under /var/tmp (a lock serialises concurrent tests; a finished layout is
/// renamed into place). The layer is a GNU tar of the tree added with `umoci raw
/// add-layer`.
pub fn debian_layout() -> PathBuf {
    let root = rootfs();
    let key = {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(root.to_string_lossy().as_bytes())[..8])
    };
    let base = PathBuf::from("/var/tmp/warren-test-cache");
    std::fs::create_dir_all(&base).unwrap();
    let layout = base.join(format!("debian-oci-{key}"));
    let lock = std::fs::File::create(base.join(format!("debian-oci-{key}.lock"))).unwrap();
    // SAFETY: flock on a file we own; released when `lock` closes.
    unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    if layout.join("index.json").exists() {
        return layout;
    }
    let tmp = base.join(format!("debian-oci-{key}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    let umoci = need("umoci");
    let tar = tmp.with_extension("tar");
    run(Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-C"])
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    let image = format!("{}:minbase", tmp.display());
    run(Command::new(&umoci).args(["init", "--layout"]).arg(&tmp));
    run(Command::new(&umoci).args(["new", "--image", &image]));
    run(Command::new(&umoci)
        .args(["raw", "add-layer", "--image", &image])
        .arg(&tar));
    run(Command::new(&umoci).args(["config", "--image", &image, "--config.cmd", "/bin/sh"]));
    let _ = std::fs::remove_file(&tar);
    std::fs::rename(&tmp, &layout).unwrap();
    layout
}

/// `skopeo copy` of an OCI layout's tag into the registry (with `--all` for indexes).
pub fn push_layout(layout: &Path, tag: &str, dest: &str, creds: Option<(&str, &str)>) {
    let mut cmd = Command::new(need("skopeo"));
    cmd.args(["copy", "--all", "--dest-tls-verify=false"]);
    if let Some((u, p)) = creds {
        cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
    }
    cmd.arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"));
    run(&mut cmd);
}

pub fn warren_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_warren"))
}

/// `warren ARGS` with extra environment; returns the output whatever the status.
pub fn warren(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(warren_bin());
    cmd.args(args);
    cmd.env("DOCKER_CONFIG", "/nonexistent-warren-test")
        .env_remove("WARREN_REGISTRY_USERNAME")
        .env_remove("WARREN_REGISTRY_PASSWORD")
        .env_remove("IMAGE_PULL_AUTH");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running warren")
}

pub fn warren_ok(args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = warren(args, env);
    assert!(
        out.status.success(),
        "warren {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `warren convert ... --json`, parsed.
pub fn convert(
    source: &str,
    target: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> serde_json::Value {
    let mut args = vec![
        "convert",
        "--plain-http",
        "--json",
        "--source",
        source,
        "--target",
        target,
    ];
    args.extend_from_slice(extra);
    let out = warren_ok(&args, env);
    serde_json::from_slice(&out.stdout).expect("convert --json prints JSON")
}

/// `warren mount --image` running in the background; stopped and unmounted on drop.
pub struct ImageMount {
    child: Child,
    pub mountpoint: PathBuf,
    pub stderr: PathBuf,
    pub dir: tempfile::TempDir,
}

impl ImageMount {
    pub fn start(image: &str, extra: &[&str], env: &[(&str, &str)]) -> ImageMount {
        let mut args = vec!["--plain-http"];
        args.extend_from_slice(extra);
        ImageMount::start_args(image, &args, env)
    }

    /// Without `--plain-http`: `extra` says how to reach the registry.
    pub fn start_args(image: &str, extra: &[&str], env: &[(&str, &str)]) -> ImageMount {
        let dir = tempfile::tempdir().unwrap();
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).unwrap();
        let stderr = dir.path().join("mount.stderr");
        let mut cmd = Command::new(warren_bin());
        cmd.args(["mount", "--cache-dir", "none", "--image", image])
            .args(extra)
            .arg(&mountpoint)
            .env("DOCKER_CONFIG", "/nonexistent-warren-test")
            .env_remove("WARREN_REGISTRY_USERNAME")
            .env_remove("WARREN_REGISTRY_PASSWORD")
            .env_remove("IMAGE_PULL_AUTH")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("starting warren mount");
        let mut m = ImageMount {
            child,
            mountpoint,
            stderr,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(&m.mountpoint) {
            if let Ok(Some(st)) = m.child.try_wait() {
                panic!("warren mount exited ({st}): {}", m.stderr_text());
            }
            assert!(
                Instant::now() < deadline,
                "not mounted in 30 s: {}",
                m.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.mountpoint.join(p.trim_start_matches('/'))
    }

    /// Stops the mount and returns its stderr.
    pub fn stop(mut self) -> String {
        self.terminate();
        self.stderr_text()
    }

    fn terminate(&mut self) {
        child::stop_child(&mut self.child, Duration::from_secs(10));
        if is_mounted(&self.mountpoint) {
            child::detach(&self.mountpoint);
        }
    }
}

impl Drop for ImageMount {
    fn drop(&mut self) {
        self.terminate();
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let target = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(&*target.to_string_lossy()))
}

/// `diff -r --no-dereference a b` must find nothing.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let out = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "diff -r {} {} found differences:\n{}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn sha256_file(p: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let data = std::fs::read(p)?;
    Ok(hex::encode(sha2::Sha256::digest(&data)))
}

/// A `warren node` with its API on a unix socket; stopped on drop (mounts detached).
pub struct Node {
    child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub work: tempfile::TempDir,
}

impl Node {
    pub fn start() -> Node {
        let work = tempfile::tempdir().unwrap();
        let data = work.path().join("data");
        let blobs = work.path().join("blobs");
        std::fs::create_dir_all(&blobs).unwrap();
        let config = work.path().join("node.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\ncache_dir = {:?}\nblob_dir = {:?}\nmetrics_addr = \"127.0.0.1:0\"\n",
                data,
                work.path().join("cache"),
                blobs
            ),
        )
        .unwrap();
        let log = work.path().join("node.log");
        let child = Command::new(warren_bin())
            .args(["node", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting warren node");
        let mut node = Node {
            child,
            socket: data.join("api.sock"),
            log,
            work,
        };
        wait_for_api(&mut node.child, &node.socket, &node.log);
        node
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One request on the API socket: status and body.
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        api_request(&self.socket, method, path, body)
    }
}

/// Waits until a starting `warren node` answers on its API socket; panics with its log
/// if it exits or takes over 30 s.
pub fn wait_for_api(child: &mut Child, socket: &Path, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("warren node exited ({st}): {}", log_text());
        }
        if std::os::unix::net::UnixStream::connect(socket).is_ok()
            && api_request(socket, "GET", "/api/v1/daemon", None).0 == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "node not up: {}", log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP/1.1 request on a node's API socket: status and body.
pub fn api_request(socket: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

impl Node {
    /// SIGTERM; the exit status (SIGKILL after 15 s).
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        child::stop_child(&mut self.child, Duration::from_secs(15))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.terminate();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let work = self.work.path().to_string_lossy().into_owned();
        for m in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
            if m.starts_with(&work) {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
    }
}
