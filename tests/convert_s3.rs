//! `warren convert --backend s3`: data blobs go to an S3 bucket (moto_server checking
//! SigV4), only the bootstrap layer and manifest to the registry; `warren mount --image
//! --s3-config` then reads the bootstrap from the registry and the data from S3, lazily.

mod registry_support;
#[allow(dead_code)]
mod s3_support;
use registry_support::*;
use s3_support::Moto;

#[test]
fn convert_to_s3_then_mount_from_registry_and_s3() {
    let reg = Registry::start(Auth::Open);
    let moto = Moto::start();
    let cfg = moto.config(&moto.endpoint());
    let work = tempfile::tempdir().unwrap();
    let s3_file = work.path().join("s3.json");
    let json = serde_json::json!({
        "endpoint": cfg.endpoint, "bucket_name": cfg.bucket_name, "object_prefix": cfg.object_prefix,
        "region": cfg.region, "access_key_id": cfg.access_key_id, "access_key_secret": cfg.access_key_secret,
        "addressing": "path",
    });
    std::fs::write(&s3_file, json.to_string()).unwrap();
    let s3 = s3_file.to_str().unwrap();

    let src = format!("{}/debian:minbase", reg.addr);
    let dst = format!("{}/debian:nydus-s3", reg.addr);
    push_layout(&debian_layout(), "minbase", &src, None);
    let env = [("AWS_CA_BUNDLE", "")];
    let report = convert(&src, &dst, &["--backend", "s3", "--s3-config", s3], &env);
    assert!(
        report["images"][0]["layers"]
            .as_array()
            .is_some_and(|l| !l.is_empty()),
        "{report}"
    );
    assert!(
        moto.requests("PUT").iter().any(|r| r.contains("warren")),
        "no blob PUT to S3:\n{}",
        moto.log()
    );

    let m = ImageMount::start(&dst, &["--s3-config", s3], &env);
    let diff = std::process::Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(rootfs())
        .arg(&m.mountpoint)
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "diff -r: {}",
        String::from_utf8_lossy(&diff.stdout)
            .lines()
            .take(10)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        moto.requests("GET").len() > 1,
        "data should come from S3:\n{}",
        moto.log()
    );
}
