//! Image shapes against the Debian `docker-registry`: several layers with whiteouts, an
//! index over two platforms (`--all-platforms`, `--platform`), and a registry serving HTTPS
//! with a self-signed certificate.

mod registry_support;
use registry_support::checks::*;
use registry_support::*;
use std::path::Path;
use warren::oci::manifest::*;

/// Writes `data` as a blob of the OCI layout; its digest and size.
fn put_blob(layout: &Path, data: &[u8]) -> (String, u64) {
    let hex = sha256_hex(data);
    std::fs::write(layout.join("blobs/sha256").join(&hex), data).unwrap();
    (format!("sha256:{hex}"), data.len() as u64)
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// A three-layer image (files, more files, a whiteout) as an index for linux/amd64 and
/// linux/arm64 (same layers, configs that differ in architecture), tagged `multi`. The
/// layers are GNU tars added with `umoci raw add-layer`.
fn multi_platform_layout(dir: &Path) -> std::path::PathBuf {
    let umoci = need("umoci");
    let (one, two, three) = (dir.join("one"), dir.join("two"), dir.join("three"));
    std::fs::create_dir_all(one.join("data/dir")).unwrap();
    std::fs::create_dir_all(two.join("data")).unwrap();
    std::fs::create_dir_all(three.join("data")).unwrap();
    std::fs::write(one.join("data/a"), b"first layer\n").unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(one.join("data/big"), &big).unwrap();
    std::fs::write(one.join("data/gone"), b"whited out later\n").unwrap();
    std::fs::write(one.join("data/dir/x"), b"x\n").unwrap();
    std::fs::write(two.join("data/c"), b"second layer\n").unwrap();
    std::fs::write(three.join("data/.wh.gone"), b"").unwrap();
    let layout = dir.join("layout");
    let image = format!("{}:img", layout.display());
    run(std::process::Command::new(&umoci)
        .args(["init", "--layout"])
        .arg(&layout));
    run(std::process::Command::new(&umoci).args(["new", "--image", &image]));
    for tree in [&one, &two, &three] {
        let tar = tree.with_extension("tar");
        run(std::process::Command::new("tar")
            .args(["--numeric-owner", "-C"])
            .arg(tree)
            .arg("-cf")
            .arg(&tar)
            .arg("data"));
        run(std::process::Command::new(&umoci)
            .args(["raw", "add-layer", "--image", &image])
            .arg(&tar));
    }
    run(std::process::Command::new(&umoci).args([
        "config",
        "--image",
        &image,
        "--config.cmd",
        "/bin/sh",
    ]));

    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "img")
        .unwrap()
        .clone();
    let blob = |d: &serde_json::Value| {
        let hex = d
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_string();
        std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()
    };
    let manifest: serde_json::Value = serde_json::from_slice(&blob(&entry["digest"])).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&blob(&manifest["config"]["digest"])).unwrap();
    config["architecture"] = "arm64".into();
    let (cd, cs) = put_blob(&layout, &serde_json::to_vec(&config).unwrap());
    let mut arm = manifest.clone();
    arm["config"]["digest"] = cd.into();
    arm["config"]["size"] = cs.into();
    let (ad, asz) = put_blob(&layout, &serde_json::to_vec(&arm).unwrap());
    let platform = |arch: &str| serde_json::json!({"os": "linux", "architecture": arch});
    let multi = serde_json::json!({
    "schemaVersion": 2, "mediaType": OCI_INDEX,
    "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": entry["digest"], "size": entry["size"], "platform": platform("amd64")},
        {"mediaType": OCI_MANIFEST, "digest": ad, "size": asz, "platform": platform("arm64")},
    ]});
    let (id, isz) = put_blob(&layout, &serde_json::to_vec(&multi).unwrap());
    let mut index = index;
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": OCI_INDEX, "digest": id, "size": isz,
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }));
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    layout
}

#[test]
fn layered_multi_platform_images_convert_per_platform_with_whiteouts() {
    let reg = Registry::start(Auth::Open);
    let dir = tempfile::tempdir().unwrap();
    let layout = multi_platform_layout(dir.path());
    let src = format!("{}/multi:1", reg.addr);
    push_layout(&layout, "multi", &src, None);
    let client = plain_client(&reg.addr, None);

    // Every platform: an index of Nydus manifests.
    let all = convert(
        &src,
        &format!("{}/multi:nydus", reg.addr),
        &["--all-platforms"],
        &[],
    );
    assert_eq!(all["media_type"], OCI_INDEX);
    let images = all["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    let img = &images[0];
    assert_eq!(img["layers"].as_array().unwrap().len(), 3);
    assert!(
        img["layers"][2]["blob_id"].is_null(),
        "a whiteout-only layer has no blob"
    );
    assert_eq!(img["blobs"].as_array().unwrap().len(), 2);
    let f = client.get_manifest("multi", "nydus").unwrap();
    let Document::Index(index) = Document::parse(&f).unwrap() else {
        panic!("not an index")
    };
    let mut archs = Vec::new();
    for d in index.manifests() {
        archs.push(d.platform().as_ref().unwrap().architecture().to_string());
        check_nydus_manifest(&client, "multi", d.digest().as_ref());
    }
    assert_eq!(archs, ["amd64", "arm64"]);

    // One platform (the host's by default): a manifest.
    let one = convert(&src, &format!("{}/multi:host", reg.addr), &[], &[]);
    assert_eq!(one["media_type"], OCI_MANIFEST);
    assert_eq!(one["images"][0]["platform"], "linux/amd64");
    let out = warren(
        &[
            "convert",
            "--plain-http",
            "--platform",
            "linux/s390x",
            "--source",
            &src,
            "--target",
            &format!("{}/multi:x", reg.addr),
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("linux/amd64, linux/arm64"), "{err}");

    // The arm64 image mounted: the layers stacked, the whiteout applied.
    let m = ImageMount::start(
        &format!("{}/multi:nydus", reg.addr),
        &["--platform", "linux/arm64"],
        &[],
    );
    let one_dir = dir.path().join("one");
    for (path, want) in [
        ("data/a", std::fs::read(one_dir.join("data/a")).unwrap()),
        ("data/big", std::fs::read(one_dir.join("data/big")).unwrap()),
        ("data/dir/x", b"x\n".to_vec()),
        ("data/c", b"second layer\n".to_vec()),
    ] {
        assert_eq!(std::fs::read(m.path(path)).unwrap(), want, "{path}");
    }
    assert!(
        !m.path("data/gone").exists(),
        "the whiteout was not applied"
    );
    assert!(!m.path("data/.wh.gone").exists());
}

/// HTTPS with a self-signed certificate: refused unless --insecure, then convert and mount
/// work as over HTTP.
#[test]
fn https_registry_with_a_self_signed_certificate() {
    let reg = Registry::start_tls(Auth::Open);
    let src = format!("{}/debian:minbase", reg.addr);
    let dst = format!("{}/debian:nydus", reg.addr);
    push_layout(&debian_layout(), "minbase", &src, None);
    let refused = warren(&["convert", "--source", &src, "--target", &dst], &[]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let plain = warren(
        &[
            "convert",
            "--plain-http",
            "--registry-retries",
            "0",
            "--source",
            &src,
            "--target",
            &dst,
        ],
        &[],
    );
    assert!(
        !plain.status.success(),
        "plain HTTP to an HTTPS registry succeeded"
    );
    let out = warren_ok(
        &[
            "convert",
            "--insecure",
            "--json",
            "--source",
            &src,
            "--target",
            &dst,
        ],
        &[],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["images"][0]["blobs"].as_array().unwrap().len(), 1);
    let m = ImageMount::start_args(&dst, &["--insecure"], &[]);
    let root = rootfs();
    for f in largest_files(&root, 3) {
        assert_eq!(
            sha256_file(&m.path(&f)).unwrap(),
            sha256_file(&root.join(&f)).unwrap(),
            "{f}"
        );
    }
}
