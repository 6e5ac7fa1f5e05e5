//! The FUSE node against the real kernel: fixture images and a real root file system
//! mounted with `warren mount` (or in-process for counting), compared with their sources.
//! Needs root and /dev/fuse; without them these tests fail, they do not skip.

mod common;
use common::mountfs::{fs_manifest, is_mounted};
use common::*;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use warren::api::metrics::Metrics;
use warren::backend::localfs::LocalFs;
use warren::fetch::FetchOptions;
use warren::fs::{open_image, ImageMount, MountOptions};
use warren::store::{Store, StoreOptions};

/// `warren mount` running in the background; killed and unmounted on drop.
struct MountProcess {
    child: Child,
    mountpoint: PathBuf,
    _dir: tempfile::TempDir,
}

impl MountProcess {
    fn start(boot: &Path, blobs: &Path) -> MountProcess {
        let dir = tempfile::tempdir().unwrap();
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).unwrap();
        let child = spawn_mount(boot, blobs, &mountpoint, &dir.path().join("cache"));
        wait_mounted(&mountpoint);
        MountProcess {
            child,
            mountpoint,
            _dir: dir,
        }
    }
}

fn spawn_mount(boot: &Path, blobs: &Path, mountpoint: &Path, cache: &Path) -> Child {
    Command::new(warren_bin())
        .args(["mount", "-q", "-B"])
        .arg(boot)
        .arg("-D")
        .arg(blobs)
        .arg("--cache-dir")
        .arg(cache)
        .arg(mountpoint)
        // Not a pipe nobody reads: a chatty mount would block on a full pipe.
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting warren mount")
}

fn wait_mounted(mountpoint: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_mounted(mountpoint) {
        assert!(
            Instant::now() < deadline,
            "{} not mounted within 20 s",
            mountpoint.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for MountProcess {
    fn drop(&mut self) {
        child::stop_child(&mut self.child, Duration::from_secs(10));
        if is_mounted(&self.mountpoint) {
            child::detach(&self.mountpoint);
        }
    }
}

fn check_fixture(name: &str) {
    let (boot, blobs) = fixture_image(name);
    let m = MountProcess::start(&boot, &blobs);
    assert_manifests_equal(&fs_manifest(&m.mountpoint), &load_manifest());
    // Hard links share an inode number.
    let ino = |p: &str| std::fs::metadata(m.mountpoint.join(p)).unwrap().ino();
    assert_eq!(ino("files/small.txt"), ino("links/hardlink-a"));
    assert_eq!(ino("files/small.txt"), ino("links/hardlink-b"));
    assert_ne!(ino("files/small.txt"), ino("files/size-4095"));
}

#[test]
fn fixture_v6_zstd_blake3() {
    check_fixture("v6-zstd-blake3");
}

#[test]
fn fixture_v6_none_sha256() {
    check_fixture("v6-none-sha256");
}

#[test]
fn fixture_v6_lz4_64k() {
    check_fixture("v6-lz4-64k");
}

#[test]
fn fixture_v6_from_tar() {
    check_fixture("v6-from-tar");
}

#[test]
fn fixture_v6_blob_toc() {
    check_fixture("v6-blob-toc");
}

#[test]
fn fixture_v6_two_layers_shows_the_merged_view() {
    let (boot, blobs) = fixture_image("v6-two-layers");
    let m = MountProcess::start(&boot, &blobs);
    let got: Vec<(String, String)> = fs_manifest(&m.mountpoint)
        .into_iter()
        .map(|(k, v)| (k, v.sha_or_target))
        .collect();
    let want: Vec<(String, String)> = vec![
        ("etc".into(), String::new()),
        ("etc/changed".into(), sha256_hex(b"new\n")),
        ("etc/keep".into(), sha256_hex(b"base\n")),
        ("opaque".into(), String::new()),
        ("opaque/new".into(), sha256_hex(b"fresh\n")),
    ];
    assert_eq!(got, want);
}

/// An image mounted inside the test process, so its metrics can be read directly.
struct InProcess {
    mount: ImageMount,
    metrics: Arc<Metrics>,
    _dir: tempfile::TempDir,
}

fn mount_in_process(boot: &Path, blobs: &Path) -> InProcess {
    mount_in_process_with(
        boot,
        blobs,
        FetchOptions::default(),
        MountOptions::default(),
    )
}

fn mount_in_process_with(
    boot: &Path,
    blobs: &Path,
    fetch: FetchOptions,
    opts: MountOptions,
) -> InProcess {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let metrics = Metrics::new();
    let cache = Arc::new(Store::open(&dir.path().join("cache"), &StoreOptions::default()).unwrap());
    let chain = open_image(
        boot,
        Arc::new(LocalFs::new(blobs)),
        cache,
        fetch,
        metrics.clone(),
    )
    .unwrap();
    let mount = ImageMount::mount(&mnt, chain, &opts).unwrap();
    InProcess {
        mount,
        metrics,
        _dir: dir,
    }
}

fn origin_chunks(m: &Metrics) -> u64 {
    m.chunk_fetches.with_label_values(&["origin"]).get()
}

#[test]
fn concurrent_random_reads_are_right_and_each_chunk_is_fetched_once() {
    let (boot, blobs) = fixture_image("v6-lz4-64k");
    let one_byte_from_16_readers = |root: &Path| {
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| {
                    let f = std::fs::File::open(root.join("files/size-4097")).unwrap();
                    let mut b = [0u8; 1];
                    f.read_exact_at(&mut b, 4096).unwrap();
                });
            }
        })
    };
    // Without read amplification, the chunk holding that byte is the only one fetched,
    // once, however many readers want it at the same time.
    let no_amplify = FetchOptions {
        amplify_bytes: 0,
        ..FetchOptions::default()
    };
    let exact = mount_in_process_with(&boot, &blobs, no_amplify, MountOptions::default());
    one_byte_from_16_readers(exact.mount.mountpoint());
    assert_eq!(
        origin_chunks(&exact.metrics),
        1,
        "one chunk read by 16 readers must be fetched once"
    );
    drop(exact);

    // With it (the default), neighbours ride along, still in one origin request.
    let m = mount_in_process(&boot, &blobs);
    let root = m.mount.mountpoint().to_path_buf();
    one_byte_from_16_readers(&root);
    assert_eq!(
        m.metrics
            .origin_requests
            .with_label_values(&["localfs"])
            .get(),
        1
    );

    // 16 readers of random ranges across the big files get the right bytes.
    let work = tempfile::tempdir().unwrap();
    extract_tree(work.path());
    let files = [
        "files/text-compressible.txt",
        "files/random-1.5MiB.bin",
        "files/repeat-3x1MiB.bin",
        "files/zeros-2MiB",
        "files/one-chunk-plus-1.bin",
    ];
    std::thread::scope(|s| {
        for t in 0..16u64 {
            let (root, src) = (&root, work.path());
            s.spawn(move || {
                let mut seed = t * 7919 + 1;
                let mut next = || {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed
                };
                for _ in 0..40 {
                    let name = files[(next() % files.len() as u64) as usize];
                    let want_all = std::fs::read(src.join(name)).unwrap();
                    let off = next() % want_all.len() as u64;
                    let len = (next() % 300_000).min(want_all.len() as u64 - off) as usize;
                    let mut got = vec![0u8; len];
                    let f = std::fs::File::open(root.join(name)).unwrap();
                    f.read_exact_at(&mut got, off).unwrap();
                    assert!(
                        got == want_all[off as usize..off as usize + len],
                        "{name} at {off}+{len}"
                    );
                }
            });
        }
    });
}

#[test]
fn a_corrupt_chunk_gives_eio_for_its_files_only() {
    let (boot, fixture_blobs) = fixture_image("v6-zstd-blake3");
    let work = tempfile::tempdir().unwrap();
    let blobs = work.path().join("blobs");
    std::fs::create_dir(&blobs).unwrap();
    let image = warren::rafs::reader::read_bootstrap_file(&boot)
        .unwrap()
        .image;
    let blob_id = image.blobs[0].blob_id.clone();
    std::fs::copy(fixture_blobs.join(&blob_id), blobs.join(&blob_id)).unwrap();
    // Flip a byte inside the (compressed) first chunk of text-compressible.txt.
    let id = image.lookup(b"files/text-compressible.txt").unwrap();
    let c = image.chunk(image.inodes[id].chunks()[0]).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(blobs.join(&blob_id))
        .unwrap();
    let mut b = [0u8; 1];
    let at = c.compressed_offset + c.compressed_size as u64 / 2;
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x5a], at).unwrap();

    let m = mount_in_process(&boot, &blobs);
    let root = m.mount.mountpoint();
    let err = std::fs::read(root.join("files/text-compressible.txt")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(m.metrics.digest_failures.get() >= 1);
    let ok = std::fs::read(root.join("files/random-1.5MiB.bin")).unwrap();
    assert_eq!(
        sha256_hex(&ok),
        load_manifest()["files/random-1.5MiB.bin"].sha_or_target
    );
}

#[test]
fn sigkill_leaves_no_hung_reader_and_a_restart_mounts_again() {
    let (boot, blobs) = fixture_image("v6-zstd-blake3");
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let cache = dir.path().join("cache");
    let mut child = spawn_mount(&boot, &blobs, &mnt, &cache);
    wait_mounted(&mnt);
    let mut f = std::fs::File::open(mnt.join("files/text-compressible.txt")).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // A reader after the kill gets an error quickly instead of hanging.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = tx.send(f.read_to_end(&mut buf).map(|_| ()));
    });
    let result = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("reader hung after SIGKILL");
    assert!(result.is_err(), "read after the node died should fail");
    assert!(
        std::fs::read_dir(&mnt).is_err(),
        "the dead mount should answer with an error"
    );
    let st = Command::new("umount").arg("-l").arg(&mnt).status().unwrap();
    assert!(st.success(), "umount -l recovers the mount point");

    let m = MountProcess {
        child: spawn_mount(&boot, &blobs, &mnt, &cache),
        mountpoint: mnt.clone(),
        _dir: dir,
    };
    wait_mounted(&m.mountpoint);
    let data = std::fs::read(m.mountpoint.join("files/text-compressible.txt")).unwrap();
    assert_eq!(
        sha256_hex(&data),
        load_manifest()["files/text-compressible.txt"].sha_or_target
    );
}

fn mount_error(args: &[std::ffi::OsString]) -> String {
    let out = Command::new(warren_bin())
        .arg("mount")
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "warren mount {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn mount_errors_are_clear() {
    let (boot, blobs) = fixture_image("v6-zstd-blake3");
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let cache = dir.path().join("cache");
    let args = |boot: &Path, mnt: &Path| -> Vec<std::ffi::OsString> {
        vec![
            "-B".into(),
            boot.into(),
            "-D".into(),
            blobs.clone().into(),
            "--cache-dir".into(),
            cache.clone().into(),
            mnt.into(),
        ]
    };

    let missing = dir.path().join("nope.boot");
    let err = mount_error(&args(&missing, &mnt));
    assert!(err.contains("nope.boot"), "{err}");

    let err = mount_error(&args(&boot, &dir.path().join("no-such-dir")));
    assert!(err.contains("no-such-dir"), "{err}");

    let _first = MountProcess {
        child: spawn_mount(&boot, &blobs, &mnt, &cache),
        mountpoint: mnt.clone(),
        _dir: tempfile::tempdir().unwrap(),
    };
    wait_mounted(&mnt);
    let err = mount_error(&args(&boot, &mnt));
    assert!(err.contains("busy"), "{err}");

    // Not root: mounting needs privileges the user does not have.
    let mnt2 = dir.path().join("mnt2");
    std::fs::create_dir(&mnt2).unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(warren_bin())
        .args(["mount", "-B"])
        .arg(&boot)
        .arg("-D")
        .arg(&blobs)
        .arg("--cache-dir")
        .arg(dir.path().join("cache-nobody"))
        .arg(&mnt2)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("FUSE") || err.contains("fuse"), "{err}");
    assert!(!is_mounted(&mnt2));
}

/// A real root file system: built, mounted, compared with its source, and run from.
#[test]
fn debian_minbase_mounts_and_runs() {
    let rootfs = rootfs::debian_rootfs();
    let work = tempfile::tempdir().unwrap();
    let (boot, blobs) = create_image(&rootfs, work.path());
    let m = MountProcess::start(&boot, &blobs);
    let diff = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(&rootfs)
        .arg(&m.mountpoint)
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "diff -r found differences:\n{}",
        String::from_utf8_lossy(&diff.stdout)
            .lines()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let out = Command::new("chroot")
        .arg(&m.mountpoint)
        .args(["/bin/sh", "-c", "ls / && /usr/bin/dpkg-query -W coreutils"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chroot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("usr") && stdout.contains("coreutils"),
        "{stdout}"
    );
}

#[test]
fn prefetch_all_fetches_everything_in_the_background() {
    let (boot, blobs) = fixture_image("v6-zstd-blake3");
    // A bandwidth cap of 64 MiB/s still lets the 6.6 MB image finish well within the wait.
    let opts = MountOptions {
        prefetch_all: true,
        prefetch_bandwidth: 64 << 20,
        ..MountOptions::default()
    };
    let m = mount_in_process_with(&boot, &blobs, FetchOptions::default(), opts);
    let (mount, metrics) = (&m.mount, &m.metrics);
    let unique = mount.chain().image().blobs[0].chunks.len() as i64;
    let deadline = Instant::now() + Duration::from_secs(20);
    while (metrics.prefetch_chunks_done.get() as i64) < unique {
        assert!(
            Instant::now() < deadline,
            "prefetch did not finish: {} of {unique}",
            metrics.prefetch_chunks_done.get()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(metrics.prefetch_chunks_total.get(), unique);
    // Everything is local now: reading the whole tree makes no origin request.
    let requests = metrics
        .origin_requests
        .with_label_values(&["localfs"])
        .get();
    assert_manifests_equal(&fs_manifest(mount.mountpoint()), &load_manifest());
    assert_eq!(
        metrics
            .origin_requests
            .with_label_values(&["localfs"])
            .get(),
        requests
    );
}
