//! A cluster for the mesh tests: one Debian `docker-registry` holding the Debian minbase
//! image converted to Nydus, and `warren node` processes with a `[peer]` section, each on
//! its own loopback address (127.0.0.N), mounting that image from the registry through
//! the node API. Everything started here stops in `Drop`.
#![allow(dead_code)]

use super::registry_support::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SECRET: &str = "mesh-test-cluster-secret-0123456789";

/// The registry, the converted image and its bootstrap.
pub struct Cluster {
    pub registry: Registry,
    pub bootstrap: PathBuf,
    /// Uncompressed bytes of the image's distinct chunks: what one full read needs.
    pub chunk_bytes: u64,
    /// Compressed bytes of the image's data blobs.
    pub blob_bytes: u64,
    pub blob_digests: Vec<String>,
    pub work: tempfile::TempDir,
}

impl Cluster {
    /// The Debian minbase image, pushed as OCI and converted to Nydus in the registry.
    pub fn debian() -> Cluster {
        let registry = Registry::start(Auth::Open);
        let src = format!("{}/debian:minbase", registry.addr);
        let dst = format!("{}/debian:nydus", registry.addr);
        push_layout(&debian_layout(), "minbase", &src, None);
        convert(&src, &dst, &[], &[]);
        let work = tempfile::tempdir().unwrap();
        let client = checks::plain_client(&registry.addr, None);
        let pulled = warren::oci::pull::pull_bootstrap(
            &client,
            &dst.parse().unwrap(),
            &warren::oci::manifest::PlatformSpec::host(),
            work.path(),
        )
        .unwrap();
        let image = warren::rafs::reader::read_bootstrap_file(&pulled.path)
            .unwrap()
            .image;
        let mut seen = std::collections::HashSet::new();
        let mut chunk_bytes = 0;
        for blob in &image.blobs {
            for c in blob.chunks.iter().filter(|c| !c.is_hole()) {
                if seen.insert(c.digest) {
                    chunk_bytes += c.uncompressed_size as u64;
                }
            }
        }
        Cluster {
            bootstrap: pulled.path,
            chunk_bytes,
            blob_bytes: image.blobs.iter().map(|b| b.compressed_size).sum(),
            blob_digests: image.blobs.iter().map(|b| b.blob_id.clone()).collect(),
            registry,
            work,
        }
    }

    /// Compressed bytes the registry sent for the image's data blobs (its access log).
    pub fn registry_blob_bytes(&self) -> u64 {
        self.blob_digests
            .iter()
            .flat_map(|d| self.registry.blob_gets(d))
            .map(|(_, bytes)| bytes)
            .sum()
    }

    /// The nydusd config of a mount from this registry.
    pub fn mount_body(&self) -> String {
        let config = serde_json::json!({
            "device": {"backend": {"type": "registry", "config": {
                "scheme": "http", "host": self.registry.addr, "repo": "debian",
                "timeout": 10, "connect_timeout": 5, "retry_limit": 2}}},
            "mode": "direct", "digest_validate": false,
        });
        serde_json::json!({
            "source": self.bootstrap, "fs_type": "rafs", "config": config.to_string(),
        })
        .to_string()
    }
}

/// A free port on `ip` for both TCP (membership) and UDP (transfers).
pub fn free_peer_addr(ip: u8) -> SocketAddr {
    loop {
        let t = TcpListener::bind(SocketAddr::from(([127, 0, 0, ip], 0))).unwrap();
        let addr = t.local_addr().unwrap();
        if UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
}

/// How to start one node.
#[derive(Clone)]
pub struct NodeSpec {
    /// The node's peer address (127.0.0.N:port, [`free_peer_addr`]).
    pub listen: SocketAddr,
    pub seed: SocketAddr,
    pub secret: String,
    /// Keep a chunk store (else every read goes to the mesh or the origin again).
    pub store: bool,
    pub env: Vec<(String, String)>,
    pub extra_peer_toml: String,
}

impl NodeSpec {
    pub fn new(listen: SocketAddr, seed: SocketAddr) -> NodeSpec {
        NodeSpec {
            listen,
            seed,
            secret: SECRET.into(),
            store: true,
            env: Vec::new(),
            extra_peer_toml: String::new(),
        }
    }
}

/// A `warren node` in the mesh; stopped (and its mount detached) on drop.
pub struct MeshNode {
    child: Option<Child>,
    pub peer_addr: SocketAddr,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub mnt: PathBuf,
    pub work: tempfile::TempDir,
}

impl MeshNode {
    pub fn start(spec: &NodeSpec) -> MeshNode {
        let peer_addr = spec.listen;
        let work = tempfile::tempdir().unwrap();
        let data = work.path().join("data");
        let secret = work.path().join("secret");
        std::fs::write(&secret, format!("{}\n", spec.secret)).unwrap();
        let cache = if spec.store {
            format!("{:?}", work.path().join("cache"))
        } else {
            "\"none\"".into()
        };
        let config = format!(
            "data_dir = {data:?}\ncache_dir = {cache}\nmetrics_addr = \"127.0.0.1:0\"\nid = \"node-{ip}\"\n\
             [peer]\nlisten = \"{peer_addr}\"\nseeds = [\"{seed}\"]\ncluster_secret_file = {secret:?}\n\
             heartbeat_ms = 250\nmember_timeout_ms = 2000\nresolve_interval_ms = 500\n{extra}",
            ip = spec.listen.ip(),
            seed = spec.seed,
            extra = spec.extra_peer_toml,
        );
        let config_file = work.path().join("node.toml");
        std::fs::write(&config_file, config).unwrap();
        // WARREN_TEST_LOG_DIR keeps the nodes' logs after the test, for a look at a failure.
        let log = match std::env::var_os("WARREN_TEST_LOG_DIR") {
            Some(dir) => PathBuf::from(dir).join(format!("node-{}.log", spec.listen)),
            None => work.path().join("node.log"),
        };
        let mut cmd = Command::new(warren_bin());
        cmd.args(["node", "--config"])
            .arg(&config_file)
            .env(
                "RUST_LOG",
                std::env::var("WARREN_TEST_LOG")
                    .unwrap_or_else(|_| "warren=info,warren_peer=info".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("starting warren node");
        wait_for_api(&mut child, &data.join("api.sock"), &log);
        let mnt = work.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        MeshNode {
            child: Some(child),
            peer_addr,
            socket: data.join("api.sock"),
            log,
            mnt,
            work,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One request on the API socket: status and body.
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        api_request(&self.socket, method, path, body)
    }

    pub fn mount(&self, cluster: &Cluster) {
        let (status, body) = self.api(
            "POST",
            &format!("/api/v1/mount?mountpoint={}", self.mnt.display()),
            Some(&cluster.mount_body()),
        );
        assert_eq!(status, 204, "{body}\n{}", self.log_text());
    }

    pub fn peers(&self) -> Value {
        let (status, body) = self.api("GET", "/api/v1/peers", None);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn member_count(&self) -> usize {
        self.peers()["members"].as_array().map_or(0, |a| a.len())
    }

    /// A counter from `GET /api/v1/metrics`, by label value ("" for none).
    pub fn metric(&self, name: &str, label: &str) -> u64 {
        let (_, body) = self.api("GET", "/api/v1/metrics", None);
        let v: Value = serde_json::from_str(&body).unwrap();
        let m = &v[name];
        let x = if label.is_empty() { m } else { &m[label] };
        x.as_f64().unwrap_or(0.0) as u64
    }

    /// SIGKILL, then a lazy unmount of its mount point.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        child::detach(&self.mnt);
    }
}

impl Drop for MeshNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            child::stop_child(&mut c, Duration::from_secs(10));
        }
        child::detach(&self.mnt);
    }
}

/// Waits until every node sees `n` members.
pub fn wait_members(nodes: &[&MeshNode], n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let counts: Vec<usize> = nodes.iter().map(|m| m.member_count()).collect();
        if counts.iter().all(|&c| c == n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "members seen: {counts:?}, want {n}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// sha256 of every regular file under `root` (relative path -> hex), or the first error.
pub fn hash_tree(root: &Path) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for e in entries {
            let e = e.map_err(|e| format!("{}: {e}", dir.display()))?;
            let p = e.path();
            let ft = e.file_type().map_err(|e| format!("{}: {e}", p.display()))?;
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let h = sha256_file(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, h);
            }
        }
    }
    Ok(out)
}

/// Drops the kernel's page cache, so the next reads reach the FUSE nodes again.
pub fn drop_page_cache() {
    std::fs::write("/proc/sys/vm/drop_caches", "3").expect("dropping the page cache (root)");
}
