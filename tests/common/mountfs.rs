//! Mounted file systems in tests: a mount guard that always unmounts, and the manifest of
//! what a mounted tree shows (for comparing against `tree.manifest.tsv`).
#![allow(dead_code)]

use super::{sha256_hex, Entry};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A kernel mount on a temporary directory, unmounted when dropped (also when a test
/// fails half-way).
pub struct Mount {
    pub dir: tempfile::TempDir,
}

impl Mount {
    pub fn erofs(image: &Path) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "erofs", "-o", "ro,loop"])
            .arg(image)
            .arg(dir.path())
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mount -t erofs -o ro,loop {} failed (root and kernel erofs support are required): {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Mount { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Busy (a reader still open after a panic): detach lazily so the temp dir can go.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// The `user.x=value,...` column: every xattr of `path` (not following symlinks), by name.
pub fn xattrs(path: &Path) -> String {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 65536];
    // SAFETY: `c` is NUL-terminated and `names` is writable for its whole length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(
        n >= 0,
        "llistxattr {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    names.truncate(n as usize);
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = names
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|name| {
            let cname = CString::new(name).unwrap();
            let mut value = vec![0u8; 65536];
            // SAFETY: both strings are NUL-terminated and `value` is writable for its length.
            let n = unsafe {
                libc::lgetxattr(
                    c.as_ptr(),
                    cname.as_ptr(),
                    value.as_mut_ptr().cast(),
                    value.len(),
                )
            };
            assert!(
                n >= 0,
                "lgetxattr {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
            value.truncate(n as usize);
            (name.to_vec(), value)
        })
        .collect();
    super::xattr_column(&pairs)
}

/// One manifest line for what the kernel shows at `path`.
pub fn fs_entry(path: &Path) -> Entry {
    let md = std::fs::symlink_metadata(path).unwrap();
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_char_device() {
        "chr"
    } else if ft.is_block_device() {
        "blk"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "sock"
    } else {
        "unknown"
    };
    let (size, sha) = match kind {
        "dir" => (String::new(), String::new()),
        "file" => {
            let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(data.len() as u64, md.size(), "{}", path.display());
            (md.size().to_string(), sha256_hex(&data))
        }
        "symlink" => {
            let target = std::fs::read_link(path).unwrap();
            (
                md.size().to_string(),
                String::from_utf8_lossy(target.as_os_str().as_bytes()).into_owned(),
            )
        }
        _ => ("0".into(), String::new()),
    };
    let rdev = if matches!(kind, "chr" | "blk") {
        let dev = md.rdev() as libc::dev_t;
        #[allow(unused_unsafe)]
        // SAFETY: pure arithmetic on a device number (unsafe only in older libc releases).
        let (major, minor) = unsafe { (libc::major(dev), libc::minor(dev)) };
        format!("{major}:{minor}")
    } else {
        String::new()
    };
    Entry {
        kind: kind.into(),
        mode: format!("{:o}", md.mode() & 0o7777),
        uid: md.uid().to_string(),
        gid: md.gid().to_string(),
        size,
        mtime: md.mtime().to_string(),
        nlink: if kind == "dir" {
            String::new()
        } else {
            md.nlink().to_string()
        },
        sha_or_target: sha,
        rdev,
        xattrs: xattrs(path),
    }
}

/// Every entry below `root` (not the root itself), keyed by its path relative to `root`.
pub fn fs_manifest(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let child = rel.join(e.file_name());
            let entry = fs_entry(&root.join(&child));
            if entry.kind == "dir" {
                stack.push(child.clone());
            }
            out.insert(child.to_string_lossy().into_owned(), entry);
        }
    }
    out
}

/// The real `nydusd` serving an image over FUSE, stopped and unmounted when dropped.
pub struct Nydusd {
    child: std::process::Child,
    pub mount: tempfile::TempDir,
    _work: tempfile::TempDir,
}

impl Nydusd {
    pub fn mount(bootstrap: &Path, blob_dir: &Path) -> Nydusd {
        let bin = super::tool("nydusd");
        let work = tempfile::tempdir().unwrap();
        let cache = work.path().join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        let config = serde_json::json!({
            "device": {
                "backend": {"type": "localfs", "config": {"dir": blob_dir}},
                "cache": {"type": "blobcache", "config": {"work_dir": cache}}
            },
            "mode": "direct",
            "digest_validate": false,
            "enable_xattr": true
        });
        let cfg = work.path().join("config.json");
        std::fs::write(&cfg, config.to_string()).unwrap();
        let mount = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(work.path().join("nydusd.log")).unwrap();
        let child = Command::new(bin)
            .arg("--config")
            .arg(&cfg)
            .arg("--mountpoint")
            .arg(mount.path())
            .arg("--bootstrap")
            .arg(bootstrap)
            .args(["--rlimit-nofile", "0", "--log-level", "warn"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting nydusd");
        let mut d = Nydusd {
            child,
            mount,
            _work: work,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !is_mounted(d.mount.path()) {
            if let Ok(Some(status)) = d.child.try_wait() {
                let log =
                    std::fs::read_to_string(d._work.path().join("nydusd.log")).unwrap_or_default();
                panic!("nydusd exited with {status} before mounting:\n{log}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nydusd did not mount within 20 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        d
    }

    pub fn path(&self) -> &Path {
        self.mount.path()
    }
}

impl Drop for Nydusd {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mount.path()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.mount.path())
            .status();
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let p = path.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(&*p))
}
