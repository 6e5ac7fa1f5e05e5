//! The S3 origin against a real S3 server that checks SigV4 (`moto_server`, started by each
//! test on a loopback port): uploads, a kernel FUSE mount served from the bucket, ranged
//! reads, wrong keys, injected faults, the node's nydusd-shaped mount config, and logs
//! that never hold a credential. Needs root, /dev/fuse, python3 with moto and boto3; without
//! them these tests fail, they do not skip.

mod common;
mod s3_support;

use common::mountfs::fs_manifest;
use common::*;
use s3_support::{capture_logs, Fault, Moto, Proxy, BUCKET, PREFIX};
use sha2::{Digest, Sha256};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use warren::api::metrics::Metrics;
use warren::backend::s3::{S3Backend, S3Config, S3Error};
use warren::backend::{BlobBackend, BlobUpload};
use warren::fetch::cache::NoCache;
use warren::fetch::FetchOptions;
use warren::fs::{open_image, ImageMount, MountOptions};

const FIXTURE: &str = "v6-zstd-blake3";

/// The fixture image's one blob: id and file.
fn fixture_blob() -> (String, PathBuf) {
    let (_, blobs) = fixture_image(FIXTURE);
    let entry = std::fs::read_dir(&blobs)
        .unwrap()
        .next()
        .expect("a blob")
        .unwrap();
    (entry.file_name().into_string().unwrap(), entry.path())
}

/// Starts moto and puts the fixture blob into its bucket.
fn moto_with_fixture() -> (Moto, String, PathBuf) {
    let moto = Moto::start();
    let (id, path) = fixture_blob();
    let s3 = S3Backend::new(&moto.config(&moto.endpoint())).unwrap();
    BlobUpload::upload(&s3, &id, &path).unwrap();
    (moto, id, path)
}

/// The fixture image mounted over kernel FUSE with `cfg` as its origin and no chunk
/// store, so every read that misses memory goes to S3. Unmounts on drop.
struct S3Mount {
    mount: Option<ImageMount>,
    _dir: tempfile::TempDir,
}

impl S3Mount {
    fn new(cfg: &S3Config, fetch: FetchOptions) -> S3Mount {
        let (boot, _) = fixture_image(FIXTURE);
        let backend = Arc::new(S3Backend::new(cfg).unwrap());
        let chain = open_image(&boot, backend, Arc::new(NoCache), fetch, Metrics::new()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let opts = MountOptions {
            prefetch_table: false,
            ..MountOptions::default()
        };
        let mount = ImageMount::mount(&mnt, chain, &opts).unwrap();
        S3Mount {
            mount: Some(mount),
            _dir: dir,
        }
    }

    fn path(&self) -> &Path {
        self.mount.as_ref().unwrap().mountpoint()
    }
}

impl Drop for S3Mount {
    fn drop(&mut self) {
        drop(self.mount.take()); // unmount before the directory goes
    }
}

fn sha256_file(path: &Path) -> String {
    sha256_hex(&std::fs::read(path).unwrap())
}

#[test]
fn upload_then_mount_from_s3_matches_the_manifest() {
    let logs = capture_logs();
    let (moto, id, path) = moto_with_fixture();
    let cfg = moto.config(&moto.endpoint());
    let s3 = S3Backend::new(&cfg).unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    let key = format!("{PREFIX}{id}");
    assert_eq!(s3.key(&id).unwrap(), key);
    assert_eq!(s3.head(&key).unwrap(), Some(len));
    assert!(
        !s3.put_blob(&id, &path).unwrap(),
        "a blob already in the bucket is not sent again"
    );
    let puts = moto.requests(&format!("\"PUT /{BUCKET}/{key} "));
    assert_eq!(puts.len(), 1, "one PUT for two uploads: {puts:?}");
    assert_eq!(s3.head(&format!("{PREFIX}missing")).unwrap(), None);

    let m = S3Mount::new(&cfg, FetchOptions::default());
    assert_manifests_equal(&fs_manifest(m.path()), &load_manifest());
    let gets = moto.requests(&format!("\"GET /{BUCKET}/{key} "));
    assert!(
        !gets.is_empty() && gets.iter().all(|l| l.contains("\" 206 ")),
        "reads are ranged GETs answered 206: {gets:?}"
    );
    logs.assert_free_of(&[&moto.secret, &moto.key_id]);
}

#[test]
fn partial_reads_fetch_ranges_not_the_whole_blob() {
    let logs = capture_logs();
    let (moto, id, path) = moto_with_fixture();
    let blob_len = std::fs::metadata(&path).unwrap().len();
    let proxy = Proxy::start(moto.addr());
    let cfg = moto.config(&proxy.endpoint());

    // The backend itself: a few bytes in the middle cost a few bytes.
    let s3 = S3Backend::new(&cfg).unwrap();
    let mut want = vec![0u8; 4096];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact_at(&mut want, 1 << 20)
        .unwrap();
    assert_eq!(s3.read_range(&id, 1 << 20, 4096).unwrap(), want);
    assert!(s3.read_range(&id, 0, 0).unwrap().is_empty());
    let direct = proxy.bytes_down();
    assert!(direct < 8192, "4 KiB read moved {direct} bytes");

    // Through FUSE: one small file costs its chunk (plus read amplification), not the blob.
    let fetch = FetchOptions {
        amplify_bytes: 64 << 10,
        ..FetchOptions::default()
    };
    let m = S3Mount::new(&cfg, fetch);
    let before = proxy.bytes_down();
    let got = sha256_file(&m.path().join("files/small.txt"));
    assert_eq!(got, load_manifest()["files/small.txt"].sha_or_target);
    let moved = proxy.bytes_down() - before;
    assert!(
        moved < 128 << 10 && moved * 10 < blob_len,
        "reading a 13-byte file moved {moved} of the blob's {blob_len} bytes"
    );
    let ranged = moto.requests("\" 206 ");
    assert!(ranged.len() >= 2, "{ranged:?}");
    logs.assert_free_of(&[&moto.secret, &moto.key_id]);
}

#[test]
fn wrong_secret_fails_with_signature_error_and_eio() {
    let logs = capture_logs();
    let (moto, id, _) = moto_with_fixture();
    let wrong = "wrongSECRETwrongSECRETwrongSECRET0123456";
    let mut cfg = moto.config(&moto.endpoint());
    cfg.access_key_secret = wrong.into();

    // The server checks signatures: the right key id with a wrong secret is refused.
    let s3 = S3Backend::new(&cfg).unwrap();
    let t = Instant::now();
    let e = s3.get_range(&id, 0, 100).unwrap_err();
    assert_eq!(e.code(), Some("SignatureDoesNotMatch"), "{e}");
    assert_eq!(e.status(), Some(403));
    assert!(!matches!(e, S3Error::GaveUp { .. }), "not retried: {e}");
    assert!(t.elapsed() < Duration::from_secs(5));
    let text = e.to_string();
    assert!(
        text.contains("SignatureDoesNotMatch") && text.contains(&id),
        "{text}"
    );
    assert!(
        !text.contains(wrong) && !text.contains(&moto.secret),
        "{text}"
    );
    let io = s3.read_range(&id, 0, 100).unwrap_err();
    assert_eq!(io.kind(), ErrorKind::PermissionDenied);
    let e = s3
        .put_blob("0123abcd", &fixture_blob().1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("SignatureDoesNotMatch"), "{e}");

    // Through FUSE the reader gets EIO, and the log says why.
    let m = S3Mount::new(&cfg, FetchOptions::default());
    let err = std::fs::read(m.path().join("files/small.txt")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let text = logs.text();
    assert!(
        text.lines()
            .any(|l| l.contains("read failed") && l.contains("SignatureDoesNotMatch")),
        "no log line names the signature error:\n{}",
        text.lines()
            .filter(|l| l.contains("read failed") || l.contains("Signature"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    logs.assert_free_of(&[wrong, &moto.secret, &moto.key_id]);
}

#[test]
fn multipart_upload_of_a_large_blob() {
    let logs = capture_logs();
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    // 12 MiB and a bit of pseudo-random bytes: three parts of 5 MiB (the last one short).
    let mut x = 0x9e3779b97f4a7c15u64;
    let data: Vec<u8> = (0..(12 << 20) + 123)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let id = hex::encode(Sha256::digest(&data));
    let path = dir.path().join(&id);
    std::fs::write(&path, &data).unwrap();
    let mut cfg = moto.config(&moto.endpoint());
    cfg.multipart_threshold = 5 << 20;
    cfg.part_size = 5 << 20;
    let s3 = S3Backend::new(&cfg).unwrap();
    assert!(s3.put_blob(&id, &path).unwrap());

    let key = format!("/{BUCKET}/{PREFIX}{id}");
    assert_eq!(moto.requests(&format!("POST {key}?uploads")).len(), 1);
    assert_eq!(moto.requests("partNumber=").len(), 3, "{}", moto.log());
    assert_eq!(moto.requests(&format!("POST {key}?uploadId=")).len(), 1);
    assert_eq!(
        s3.head(&format!("{PREFIX}{id}")).unwrap(),
        Some(data.len() as u64)
    );
    for (offset, len) in [(0usize, 1usize), ((5 << 20) - 10, 20), (data.len() - 7, 7)] {
        assert_eq!(
            s3.read_range(&id, offset as u64, len).unwrap(),
            &data[offset..offset + len],
            "{len} bytes at {offset}"
        );
    }
    // past the end: an error, not a hang or a short buffer
    let e = s3.read_range(&id, data.len() as u64, 10).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnexpectedEof, "{e}");
    logs.assert_free_of(&[&moto.secret, &moto.key_id]);
}

#[test]
fn faults_are_retried_then_fail_in_bounded_time() {
    let logs = capture_logs();
    let (moto, id, path) = moto_with_fixture();
    let mut want = vec![0u8; 100_000];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact_at(&mut want, 4096)
        .unwrap();
    let proxy = Proxy::start(moto.addr());
    let mut cfg = moto.config(&proxy.endpoint());

    // A 503, a reset, a body cut short: each attempt fails, the fourth gets the bytes.
    proxy.push_faults([Fault::Status(503), Fault::Reset, Fault::CutBody(1000)]);
    let s3 = S3Backend::new(&cfg).unwrap();
    assert_eq!(s3.read_range(&id, 4096, want.len()).unwrap(), want);
    assert_eq!(proxy.connections(), 4);
    let text = logs.text();
    assert!(
        text.contains("SlowDown") && text.contains("retrying"),
        "retries are logged"
    );

    // 500s to every attempt of three retries: an error naming the fault and the attempts.
    cfg.retry_limit = Some(3);
    proxy.push_faults(std::iter::repeat_n(Fault::Status(500), 4));
    let e = S3Backend::new(&cfg)
        .unwrap()
        .get_range(&id, 0, 10)
        .unwrap_err();
    assert!(matches!(&e, S3Error::GaveUp { attempts: 4, .. }), "{e}");
    assert_eq!(e.code(), Some("InternalError"));
    assert!(e.to_string().contains("gave up after 4 attempts"), "{e}");

    // A server that never answers: two attempts of one second each, then TimedOut.
    cfg.timeout = 1;
    cfg.retry_limit = Some(1);
    proxy.push_faults([
        Fault::Stall(Duration::from_secs(30)),
        Fault::Stall(Duration::from_secs(30)),
    ]);
    let t = Instant::now();
    let e = S3Backend::new(&cfg)
        .unwrap()
        .read_range(&id, 0, 10)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());

    // A missing blob is final at once: one request, NotFound.
    let before = proxy.connections();
    let e = S3Backend::new(&cfg)
        .unwrap()
        .read_range("not-there", 0, 10)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("NoSuchKey"), "{e}");
    assert_eq!(proxy.connections(), before + 1);
    logs.assert_free_of(&[&moto.secret, &moto.key_id]);
}

#[test]
fn node_mounts_with_a_nydusd_s3_backend_config() {
    use warren::node::api::{mount_request, MountBody};
    use warren::node::config::{NodeConfig, Overrides};
    use warren::node::Node;

    let logs = capture_logs();
    let (moto, _, _) = moto_with_fixture();
    let work = tempfile::tempdir().unwrap();
    let settings = NodeConfig::default().resolve(Overrides {
        data_dir: Some(work.path().join("data")),
        ..Overrides::default()
    });
    let node = Node::new(
        settings,
        "127.0.0.1:0".parse().unwrap(),
        Metrics::new(),
        Arc::new(NoCache),
    );
    let (boot, _) = fixture_image(FIXTURE);
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // nydusd's own config shape, as nydus-snapshotter sends it
    let config = serde_json::json!({
        "device": {
            "backend": {"type": "s3", "config": {
                "endpoint": format!("127.0.0.1:{}", moto.port), "scheme": "http",
                "bucket_name": BUCKET, "object_prefix": PREFIX, "region": "us-east-1",
                "access_key_id": moto.key_id, "access_key_secret": moto.secret}},
            "cache": {"type": "blobcache", "config": {"work_dir": "/tmp"}}},
        "mode": "direct", "digest_validate": false, "enable_xattr": true,
    });
    let body: MountBody = serde_json::from_value(serde_json::json!({
        "source": boot, "fs_type": "rafs", "config": config.to_string()
    }))
    .unwrap();
    let req = mount_request(&node, mnt.clone(), body).unwrap();
    let info = node.mount(req).unwrap();
    assert_eq!(info.origin, format!("s3://{BUCKET}/{PREFIX}"));
    assert!(info.blob_dir.is_none());
    let listed = serde_json::to_value(node.mounts()).unwrap();
    assert_eq!(listed[0]["origin"], serde_json::json!(info.origin));
    let listed = listed.to_string();
    assert!(!listed.contains(&moto.secret) && !listed.contains(&moto.key_id));
    assert_manifests_equal(&fs_manifest(&mnt), &load_manifest());
    node.unmount(&mnt).unwrap();

    // A broken S3 config is a 400 that names the field, before anything is mounted.
    let bad = serde_json::json!({"device": {"backend": {"type": "s3", "config": {"bucket": "x"}}}});
    let body: MountBody =
        serde_json::from_value(serde_json::json!({"source": boot, "config": bad})).unwrap();
    let e = mount_request(&node, mnt.clone(), body).unwrap_err();
    assert_eq!(e.status.as_u16(), 400);
    assert!(e.message.contains("bucket"), "{}", e.message);
    logs.assert_free_of(&[&moto.secret, &moto.key_id]);
}

#[test]
fn https_with_a_private_ca() {
    let logs = capture_logs();
    let moto = Moto::start_tls();
    let (id, path) = fixture_blob();
    let mut want = vec![0u8; 1000];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact_at(&mut want, 5000)
        .unwrap();
    let mut cfg = moto.config(&moto.endpoint());
    cfg.ca_file = moto.ca.clone();
    let s3 = S3Backend::new(&cfg).unwrap();
    BlobUpload::upload(&s3, &id, &path).unwrap();
    assert_eq!(s3.read_range(&id, 5000, 1000).unwrap(), want);

    // Without that CA the server's certificate is refused...
    cfg.ca_file = None;
    cfg.retry_limit = Some(0);
    let e = S3Backend::new(&cfg)
        .unwrap()
        .get_range(&id, 5000, 1000)
        .unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
    // ...unless verification is off.
    cfg.skip_verify = true;
    let s3 = S3Backend::new(&cfg).unwrap();
    assert_eq!(s3.read_range(&id, 5000, 1000).unwrap(), want);
    logs.assert_free_of(&[&moto.secret, &moto.key_id]);
}
