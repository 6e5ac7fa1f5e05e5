//! The node's configuration file (TOML). Every field has a default, so an empty file (or
//! none at all) is a working configuration; unknown fields are errors, not silently ignored.
//! Relative paths in the file are taken from the directory that holds the file.
//!
//! The README's "Configuration" section lists every field; keep the two in step.

use crate::fetch::FetchOptions;
use crate::fs::MountOptions;
use crate::store::StoreOptions;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};

/// Default address of the Prometheus endpoint (`GET /metrics`).
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";
/// The API socket's file name under the data directory, by default.
pub const DEFAULT_API_SOCKET_NAME: &str = "api.sock";
/// The chunk cache's directory name under the data directory, by default.
pub const DEFAULT_CACHE_DIR_NAME: &str = "cache";
/// The default origin directory's name under the data directory.
pub const DEFAULT_BLOB_DIR_NAME: &str = "blobs";
/// Default number of FUSE worker threads per mount.
pub const DEFAULT_FUSE_THREADS: usize = crate::fs::session::DEFAULT_FUSE_THREADS;

/// The whole file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Where the node keeps its state. Default: `/var/lib/warren` for root, else
    /// `$XDG_STATE_HOME/warren` (or `~/.local/state/warren`).
    pub data_dir: Option<PathBuf>,
    /// The HTTP API's unix socket (created mode 0600). Default: `<data_dir>/api.sock`.
    pub api_socket: Option<PathBuf>,
    /// TCP address of the Prometheus text endpoint `GET /metrics`. Port 0 picks a free port
    /// (reported by `GET /api/v1/daemon`). Default: `127.0.0.1:9464`.
    pub metrics_addr: SocketAddr,
    /// The chunk store's directory, shared by every mount; `none` turns the store off.
    /// Default: `<data_dir>/cache`.
    pub cache_dir: Option<PathBuf>,
    /// The origin directory (blob files named by blob id) for mounts that do not name one.
    /// Default: `<data_dir>/blobs`.
    pub blob_dir: Option<PathBuf>,
    /// FUSE worker threads per mount. Default: 4.
    pub fuse_threads: usize,
    /// Put chunks read ahead for a scan into the kernel's page cache, so the scan's next
    /// files are read without a FUSE request. Default: true.
    pub push_read_ahead: bool,
    /// A name for this node, reported as `id` by `GET /api/v1/daemon`. Default: none.
    pub id: Option<String>,
    /// `[fetch]`: the fetch chain's settings ([`FetchOptions`], each field documented
    /// there): `amplify_bytes` (largest merged origin request, default 1 MiB), `verify`
    /// (check every chunk's digest, default true), and the rest of that struct.
    pub fetch: FetchOptions,
    /// Prefetch defaults for every mount.
    pub prefetch: PrefetchConfig,
    /// `[store]`: the chunk store's quota, eviction marks, data file size, compression,
    /// sync and verification ([`StoreOptions`], each field documented there).
    pub store: StoreOptions,
    /// Images to mount when the node starts.
    pub mounts: Vec<MountConfig>,
    /// `[peer]`: the peer mesh ([`warren_peer::MeshConfig`], each field documented
    /// there). The node joins a cluster only when this section is present.
    pub peer: Option<warren_peer::MeshConfig>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: None,
            api_socket: None,
            metrics_addr: DEFAULT_METRICS_ADDR.parse().expect("default address"),
            cache_dir: None,
            blob_dir: None,
            fuse_threads: DEFAULT_FUSE_THREADS,
            push_read_ahead: true,
            id: None,
            fetch: FetchOptions::default(),
            prefetch: PrefetchConfig::default(),
            store: StoreOptions::default(),
            mounts: Vec::new(),
            peer: None,
        }
    }
}

/// `[prefetch]`: what each mount loads in the background before it is read.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PrefetchConfig {
    /// Prefetch the files in the image's own prefetch table. Default: true.
    pub table: bool,
    /// Paths (absolute in the image) to prefetch in every image, after the table.
    /// Default: none.
    pub files: Vec<String>,
    /// Then prefetch every file of the image. Default: false.
    pub all: bool,
    /// Prefetch bandwidth cap per mount, bytes per second; 0 is no cap. Default: 0.
    pub bandwidth: u64,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        let m = MountOptions::default();
        PrefetchConfig {
            table: m.prefetch_table,
            files: m.prefetch_files,
            all: m.prefetch_all,
            bandwidth: m.prefetch_bandwidth,
        }
    }
}

/// `[[mounts]]`: one image mounted at start.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MountConfig {
    /// The image's bootstrap file. Required.
    pub bootstrap: PathBuf,
    /// Where to mount it (an existing empty directory). Required.
    pub mountpoint: PathBuf,
    /// The image's origin directory. Default: the node's `blob_dir`.
    #[serde(default)]
    pub blob_dir: Option<PathBuf>,
    /// Paths to prefetch in this image, after `prefetch.files`. Default: none.
    #[serde(default)]
    pub prefetch_files: Vec<String>,
}

/// Command-line settings that override the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub api_socket: Option<PathBuf>,
    pub metrics_addr: Option<SocketAddr>,
    pub blob_dir: Option<PathBuf>,
}

/// The configuration with every default filled in and every path absolute.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    pub data_dir: PathBuf,
    pub api_socket: PathBuf,
    pub metrics_addr: SocketAddr,
    /// `None`: no cache.
    pub cache_dir: Option<PathBuf>,
    pub blob_dir: PathBuf,
    pub id: Option<String>,
    pub fetch: FetchOptions,
    pub store: StoreOptions,
    /// Mount options every mount starts from (FUSE threads, prefetch defaults).
    pub mount_defaults: MountOptions,
    pub mounts: Vec<MountConfig>,
    pub peer: Option<warren_peer::MeshConfig>,
}

/// A configuration problem, naming the file, the field and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("config {file}: {detail}")]
pub struct ConfigError {
    pub file: String,
    pub detail: String,
}

impl NodeConfig {
    /// Reads and checks a config file. Relative paths in it are resolved against the file's
    /// directory.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let err = |detail: String| ConfigError {
            file: path.display().to_string(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut config = Self::parse(&text).map_err(&err)?;
        let base = absolute(path.parent().unwrap_or(Path::new(".")));
        config.rebase(&base);
        config.validate().map_err(err)?;
        Ok(config)
    }

    /// Parses TOML text; the error names the field and its line and column.
    pub fn parse(text: &str) -> Result<NodeConfig, String> {
        toml::from_str(text).map_err(|e| describe_toml_error(text, &e))
    }

    fn rebase(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && p.as_os_str() != "none" {
                *p = normalize(&base.join(&*p));
            }
        };
        for p in [
            &mut self.data_dir,
            &mut self.api_socket,
            &mut self.cache_dir,
            &mut self.blob_dir,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        if let Some(f) = self
            .peer
            .as_mut()
            .and_then(|p| p.cluster_secret_file.as_mut())
        {
            fix(f);
        }
        for m in &mut self.mounts {
            fix(&mut m.bootstrap);
            fix(&mut m.mountpoint);
            if let Some(b) = &mut m.blob_dir {
                fix(b);
            }
        }
    }

    /// Checks what the types alone do not.
    pub fn validate(&self) -> Result<(), String> {
        if self.fuse_threads == 0 {
            return Err("field `fuse_threads`: must be at least 1".into());
        }
        if self.fetch.amplify_bytes == 0 {
            return Err("field `fetch.amplify_bytes`: must be at least 1".into());
        }
        self.store.validate()?;
        if let Some(p) = &self.peer {
            if p.cluster_secret.is_none() && p.cluster_secret_file.is_none() {
                return Err(
                    "section `[peer]`: set `cluster_secret_file` (or `cluster_secret`): \
                            members prove they belong to the cluster with it"
                        .into(),
                );
            }
            if p.replication == 0 || p.max_batch == 0 || p.serve_concurrency == 0 {
                return Err("section `[peer]`: `replication`, `max_batch` and \
                            `serve_concurrency` must be at least 1"
                    .into());
            }
        }
        for (field, files) in std::iter::once(("prefetch.files".to_string(), &self.prefetch.files))
            .chain(
                self.mounts
                    .iter()
                    .enumerate()
                    .map(|(i, m)| (format!("mounts[{i}].prefetch_files"), &m.prefetch_files)),
            )
        {
            if let Some(f) = files.iter().find(|f| !f.starts_with('/')) {
                return Err(format!(
                    "field `{field}`: {f:?} is not an absolute path in the image"
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, m) in self.mounts.iter().enumerate() {
            if !seen.insert(normalize(&m.mountpoint)) {
                return Err(format!(
                    "field `mounts[{i}].mountpoint`: {} is used by an earlier mount",
                    m.mountpoint.display()
                ));
            }
        }
        Ok(())
    }

    /// Fills in the defaults and applies command-line overrides. Paths given on the command
    /// line are taken from the current directory.
    pub fn resolve(self, over: Overrides) -> NodeSettings {
        let data_dir = over
            .data_dir
            .map(|p| absolute(&p))
            .or(self.data_dir)
            .unwrap_or_else(crate::cli::mount::default_data_dir);
        let api_socket = over
            .api_socket
            .map(|p| absolute(&p))
            .or(self.api_socket)
            .unwrap_or_else(|| data_dir.join(DEFAULT_API_SOCKET_NAME));
        let cache_dir = match self.cache_dir {
            Some(p) if p.as_os_str() == "none" => None,
            Some(p) => Some(p),
            None => Some(data_dir.join(DEFAULT_CACHE_DIR_NAME)),
        };
        let blob_dir = over
            .blob_dir
            .map(|p| absolute(&p))
            .or(self.blob_dir)
            .unwrap_or_else(|| data_dir.join(DEFAULT_BLOB_DIR_NAME));
        NodeSettings {
            api_socket,
            metrics_addr: over.metrics_addr.unwrap_or(self.metrics_addr),
            cache_dir,
            blob_dir,
            id: self.id,
            fetch: self.fetch,
            store: self.store,
            mount_defaults: MountOptions {
                fuse_threads: self.fuse_threads,
                push_read_ahead: self.push_read_ahead,
                prefetch_table: self.prefetch.table,
                prefetch_files: self.prefetch.files,
                prefetch_all: self.prefetch.all,
                prefetch_bandwidth: self.prefetch.bandwidth,
            },
            mounts: self.mounts,
            peer: self.peer,
            data_dir,
        }
    }
}

impl NodeSettings {
    /// The settings as a config file that gives them all explicitly.
    pub fn to_config(&self) -> NodeConfig {
        let m = &self.mount_defaults;
        NodeConfig {
            data_dir: Some(self.data_dir.clone()),
            api_socket: Some(self.api_socket.clone()),
            metrics_addr: self.metrics_addr,
            cache_dir: Some(self.cache_dir.clone().unwrap_or_else(|| "none".into())),
            blob_dir: Some(self.blob_dir.clone()),
            fuse_threads: m.fuse_threads,
            push_read_ahead: m.push_read_ahead,
            id: self.id.clone(),
            fetch: self.fetch.clone(),
            store: self.store.clone(),
            prefetch: PrefetchConfig {
                table: m.prefetch_table,
                files: m.prefetch_files.clone(),
                all: m.prefetch_all,
                bandwidth: m.prefetch_bandwidth,
            },
            mounts: self.mounts.clone(),
            peer: self.peer.clone(),
        }
    }

    /// [`Self::to_config`] as TOML text.
    pub fn to_config_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(&self.to_config())
    }
}

/// `path` made absolute against the current directory, without touching the file system
/// (a mount point may be a hung FUSE mount).
pub fn absolute(path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path)
    };
    normalize(&joined)
}

/// Drops `.` components, repeated and trailing slashes, lexically. `..` stays: with symbolic
/// links about, only the file system can resolve it.
pub fn normalize(path: &Path) -> PathBuf {
    let out: PathBuf = path
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect();
    if out.as_os_str().is_empty() {
        return PathBuf::from(".");
    }
    out
}

/// "field `fetch.verify` (line 5, column 10): invalid type: ..." from a toml error: the
/// field is the key on the line the error points at, under its table header.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end().replace('\n', "; ");
    let message = message.as_str();
    let Some(span) = e.span() else {
        return message.to_string();
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_no = text[..start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    let at = format!("line {line_no}, column {column}");
    match field_at(&text[..line_start], line) {
        // serde's messages for unknown and missing fields already name the field.
        Some(field) if !message.contains(&format!("`{field}`")) || field.contains('.') => {
            format!("field `{field}` ({at}): {message}")
        }
        _ => format!("{at}: {message}"),
    }
}

/// The dotted name of the key on `line`, or of the table that `line` opens, given the text
/// before it. `mounts[1].bootstrap` for a key in the second `[[mounts]]`.
fn field_at(before: &str, line: &str) -> Option<String> {
    let mut table = String::new();
    let mut arrays: std::collections::HashMap<String, usize> = Default::default();
    let mut header = |l: &str, table: &mut String| {
        let l = l.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            let n = arrays.entry(name.clone()).or_insert(0);
            *table = format!("{name}[{n}]");
            *n += 1;
            true
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            *table = name.trim().to_string();
            true
        } else {
            false
        }
    };
    for l in before.lines() {
        header(l, &mut table);
    }
    let mut here = table.clone();
    if header(line, &mut here) {
        return Some(here);
    }
    let key = line.split('=').next()?.trim().trim_matches('"');
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !line.contains('=') || !bare {
        return None;
    }
    Some(if table.is_empty() {
        key.to_string()
    } else {
        format!("{table}.{key}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let json = |c: &NodeConfig| serde_json::to_value(c).unwrap();
        assert_eq!(
            json(&NodeConfig::parse("").unwrap()),
            json(&NodeConfig::default())
        );
    }

    #[test]
    fn full_file_parses() {
        let c = NodeConfig::parse(
            r#"
data_dir = "/srv/warren"
metrics_addr = "127.0.0.1:0"
cache_dir = "none"
fuse_threads = 8
id = "node-a"
[fetch]
amplify_bytes = 4096
verify = false
[prefetch]
table = false
files = ["/etc"]
all = true
bandwidth = 1000
[store]
quota_bytes = 1073741824
quota_free_percent = 40
high_water_percent = 90
low_water_percent = 70
data_file_bytes = 16777216
compression = "lz4"
sync = false
verify_on_read = false
[[mounts]]
bootstrap = "/i/a.boot"
mountpoint = "/mnt/a"
[[mounts]]
bootstrap = "/i/b.boot"
mountpoint = "/mnt/b"
blob_dir = "/blobs"
prefetch_files = ["/bin/sh"]
"#,
        )
        .unwrap();
        assert_eq!(c.mounts.len(), 2);
        let s = c.resolve(Overrides::default());
        assert_eq!(s.api_socket, PathBuf::from("/srv/warren/api.sock"));
        assert_eq!(s.cache_dir, None);
        assert_eq!(s.blob_dir, PathBuf::from("/srv/warren/blobs"));
        assert_eq!(s.mount_defaults.fuse_threads, 8);
        assert!(s.mount_defaults.prefetch_all);
        assert!(!s.fetch.verify);
        assert_eq!(s.store.quota_bytes, Some(1 << 30));
        assert_eq!(s.store.compression, crate::store::StoreCompression::Lz4);
        assert!(!s.store.sync && !s.store.verify_on_read);
    }

    #[test]
    fn store_limits_are_checked() {
        let bad = |text: &str| NodeConfig::parse(text).unwrap().validate().unwrap_err();
        let e = bad("[store]\nlow_water_percent = 96\n");
        assert!(e.contains("`store.low_water_percent`"), "{e}");
        let e = bad("[store]\nhigh_water_percent = 101\n");
        assert!(e.contains("`store.high_water_percent`"), "{e}");
        let e = bad("[store]\nquota_bytes = 0\n");
        assert!(e.contains("`store.quota_bytes`"), "{e}");
        let e = bad("[store]\ndata_file_bytes = 4096\n");
        assert!(e.contains("`store.data_file_bytes`"), "{e}");
        let e = NodeConfig::parse("[store]\ncompression = \"gzip\"\n").unwrap_err();
        assert!(e.contains("`store.compression`"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let e = NodeConfig::parse("fuse_threads = 2\nbogus = 1\n").unwrap_err();
        assert!(e.contains("`bogus`") && e.contains("line 2"), "{e}");
        let e = NodeConfig::parse("[fetch]\nverify = \"yes\"\n").unwrap_err();
        assert!(e.contains("`fetch.verify`") && e.contains("line 2"), "{e}");
        let e = NodeConfig::parse("metrics_addr = \"nowhere\"\n").unwrap_err();
        assert!(e.contains("`metrics_addr`"), "{e}");
        let e = NodeConfig::parse(
            "[[mounts]]\nbootstrap = \"/a\"\nmountpoint = \"/m\"\n[[mounts]]\nmountpoint = 3\n",
        )
        .unwrap_err();
        assert!(e.contains("`mounts[1].mountpoint`"), "{e}");
        let e = NodeConfig::parse("[[mounts]]\nmountpoint = \"/m\"\n").unwrap_err();
        assert!(e.contains("bootstrap"), "{e}");
    }

    #[test]
    fn overrides_win() {
        let s = NodeConfig::default().resolve(Overrides {
            data_dir: Some("/d".into()),
            metrics_addr: Some("127.0.0.1:1".parse().unwrap()),
            ..Overrides::default()
        });
        assert_eq!(s.api_socket, PathBuf::from("/d/api.sock"));
        assert_eq!(s.cache_dir, Some(PathBuf::from("/d/cache")));
        assert_eq!(s.metrics_addr.port(), 1);
    }

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(
            normalize(Path::new("/a/./b/../c//")),
            PathBuf::from("/a/b/../c")
        );
    }
}
