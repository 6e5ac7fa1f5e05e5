//! warren against the Debian `docker-registry` (distribution 2.8), open, with htpasswd
//! and with token auth: a real root file system pushed as an OCI image (umoci + skopeo),
//! `warren convert` into a Nydus image in the same registry, `warren mount --image` lazily
//! from it, every file compared with the source tree. Credentials must never show in
//! logs (RUST_LOG=trace), errors or metrics.

mod registry_support;
use registry_support::token::TokenServer;
use registry_support::*;
use std::path::Path;
use std::time::Duration;
use warren::oci::manifest::*;
use warren::oci::{Client, RegistryOptions};

fn plain_client(addr: &str, creds: Option<(&str, &str)>) -> Client {
    Client::new(
        addr,
        RegistryOptions {
            plain_http: true,
            credentials: creds.map(|(u, p)| warren::oci::auth::Credentials::new(u, p)),
            ..RegistryOptions::default()
        },
    )
    .unwrap()
}

/// The converted manifest has Nydus's media types and annotations, a config whose
/// diff_ids match the layers, and a bootstrap layer holding image/image.boot.
fn check_nydus_manifest(client: &Client, repo: &str, tag: &str) -> (String, u64) {
    let f = client.get_manifest(repo, tag).unwrap();
    assert_eq!(f.media_type, OCI_MANIFEST);
    let Document::Manifest(m) = Document::parse(&f).unwrap() else {
        panic!("not a manifest")
    };
    let layers = m.layers();
    assert!(layers.len() >= 2, "{layers:?}");
    let (boot, blobs) = layers.split_last().unwrap();
    for b in blobs {
        assert_eq!(b.media_type().to_string(), NYDUS_BLOB);
        assert_eq!(
            b.annotations()
                .as_ref()
                .unwrap()
                .get(ANNOTATION_NYDUS_BLOB)
                .map(String::as_str),
            Some("true")
        );
    }
    let ann = boot.annotations().as_ref().unwrap();
    assert_eq!(
        ann.get(ANNOTATION_NYDUS_BOOTSTRAP).map(String::as_str),
        Some("true")
    );
    assert_eq!(boot.media_type().to_string(), OCI_LAYER_TAR_GZIP);
    let config = client
        .get_blob(repo, m.config().digest().as_ref(), 1 << 20)
        .unwrap();
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(diff_ids.len(), layers.len());
    for (d, b) in diff_ids.iter().zip(blobs) {
        assert_eq!(
            d.as_str().unwrap(),
            b.digest().as_ref(),
            "a nydus blob is its own diff_id"
        );
    }
    assert_eq!(
        config["config"]["Cmd"],
        serde_json::json!(["/bin/sh"]),
        "config carried over"
    );
    let layer = client
        .get_blob(repo, boot.digest().as_ref(), 1 << 30)
        .unwrap();
    let bootstrap = warren::oci::pull::extract_bootstrap(&layer).unwrap();
    warren::rafs::reader::parse(&bootstrap).expect("the bootstrap parses");
    (blobs[0].digest().to_string(), blobs[0].size())
}

/// The largest regular files of the tree, as paths relative to it.
fn largest_files(root: &Path, n: usize) -> Vec<String> {
    let out = run(std::process::Command::new("find")
        .arg(root)
        .args(["-type", "f", "-printf", "%s %P\n"]));
    let mut files: Vec<(u64, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (s, p) = l.split_once(' ')?;
            Some((s.parse().ok()?, p.to_string()))
        })
        .collect();
    files.sort_by(|a, b| b.cmp(a));
    files.into_iter().take(n).map(|(_, p)| p).collect()
}

#[test]
fn open_registry_convert_then_lazy_mount_matches_the_source_tree() {
    let reg = Registry::start(Auth::Open);
    let layout = debian_layout();
    let src = format!("{}/debian:minbase", reg.addr);
    let dst = format!("{}/debian:nydus", reg.addr);
    push_layout(&layout, "minbase", &src, None);
    let report = convert(&src, &dst, &[], &[]);
    let img = &report["images"][0];
    assert_eq!(img["layers"].as_array().unwrap().len(), 1);
    assert!(
        img["layers"][0]["entries"].as_u64().unwrap() > 5000,
        "{report}"
    );
    let client = plain_client(&reg.addr, None);
    let (blob, blob_size) = check_nydus_manifest(&client, "debian", "nydus");
    assert_eq!(
        report["digest"],
        client.get_manifest("debian", "nydus").unwrap().digest
    );

    // Lazy: mounting reads the bootstrap layer, not the data blob.
    let m = ImageMount::start(&dst, &[], &[]);
    assert!(
        reg.blob_gets(&blob).is_empty(),
        "the data blob was read at mount"
    );
    // A partial read: ranged GETs, a small part of the blob.
    let root = rootfs();
    let file = "usr/bin/bash";
    assert_eq!(
        sha256_file(&m.path(file)).unwrap(),
        sha256_file(&root.join(file)).unwrap()
    );
    let gets = reg.blob_gets(&blob);
    assert!(!gets.is_empty(), "no blob GET in the access log");
    assert!(gets.iter().all(|(s, _)| *s == 206), "{gets:?}");
    let read: u64 = gets.iter().map(|(_, b)| b).sum();
    assert!(
        read * 10 < blob_size,
        "reading one file fetched {read} of the blob's {blob_size} bytes"
    );

    // The whole tree, then a program run from it.
    assert_same_tree(&root, &m.mountpoint);
    assert!(reg.blob_gets(&blob).iter().all(|(s, _)| *s == 206));
    let out = run(std::process::Command::new("chroot")
        .arg(&m.mountpoint)
        .args(["/bin/sh", "-c", "echo ran-from-registry"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ran-from-registry"));
    drop(m);

    // Conversion is reproducible: the same source gives the same manifest.
    let again = convert(&src, &format!("{}/debian:again", reg.addr), &[], &[]);
    assert_eq!(again["digest"], report["digest"]);
    // A Nydus image does not convert again.
    let out = warren(
        &[
            "convert",
            "--plain-http",
            "--source",
            &dst,
            "--target",
            &format!("{}/x:y", reg.addr),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Nydus image already"));
}

/// No output may hold the password, its base64 form, or any token.
fn assert_no_secrets(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(
            !text.contains(s.as_str()),
            "{what} shows a secret ({} bytes of output)",
            text.len()
        );
    }
}

fn secrets() -> Vec<String> {
    use base64::Engine;
    vec![
        PASSWORD.to_string(),
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}")),
    ]
}

#[test]
fn htpasswd_registry_takes_credentials_and_never_shows_them() {
    let reg = Registry::start(Auth::Htpasswd);
    let layout = debian_layout();
    let src = format!("{}/debian:minbase", reg.addr);
    let dst = format!("{}/debian:nydus", reg.addr);
    push_layout(&layout, "minbase", &src, Some((USER, PASSWORD)));
    let creds = format!("{USER}:{PASSWORD}");
    let trace = [("RUST_LOG", "trace")];

    // No credentials, wrong ones: clear errors that do not echo them.
    let out = warren(
        &[
            "convert",
            "--plain-http",
            "--source",
            &src,
            "--target",
            &dst,
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("user name and password"), "{err}");
    let out = warren(
        &[
            "convert",
            "--plain-http",
            "--creds",
            &format!("{USER}:wrong-{PASSWORD}"),
            "--source",
            &src,
            "--target",
            &dst,
        ],
        &trace,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused"),
        "{}",
        err.lines().last().unwrap_or("")
    );
    assert_no_secrets("a failed convert", &err, &secrets());

    // --creds, traced.
    let out = warren_ok(
        &[
            "convert",
            "--plain-http",
            "--json",
            "--creds",
            &creds,
            "--source",
            &src,
            "--target",
            &dst,
        ],
        &trace,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TRACE"), "RUST_LOG=trace gave no trace output");
    assert_no_secrets(
        "convert --json stdout",
        &String::from_utf8_lossy(&out.stdout),
        &secrets(),
    );
    assert_no_secrets("convert stderr", &err, &secrets());
    check_nydus_manifest(
        &plain_client(&reg.addr, Some((USER, PASSWORD))),
        "debian",
        "nydus",
    );

    // Credentials from the environment; metrics and logs checked too.
    let port = free_port().to_string();
    let metrics_addr = format!("127.0.0.1:{port}");
    let m = ImageMount::start(
        &dst,
        &["--metrics-addr", &metrics_addr],
        &[
            ("RUST_LOG", "trace"),
            ("WARREN_REGISTRY_USERNAME", USER),
            ("WARREN_REGISTRY_PASSWORD", PASSWORD),
        ],
    );
    let root = rootfs();
    for f in largest_files(&root, 5) {
        assert_eq!(
            sha256_file(&m.path(&f)).unwrap(),
            sha256_file(&root.join(&f)).unwrap(),
            "{f}"
        );
    }
    let metrics =
        run(std::process::Command::new("curl")
            .args(["-sf", &format!("http://{metrics_addr}/metrics")]));
    let metrics = String::from_utf8_lossy(&metrics.stdout).into_owned();
    assert!(
        metrics.contains("warren_origin_requests_total"),
        "{metrics}"
    );
    assert_no_secrets("metrics", &metrics, &secrets());
    let err = m.stop();
    assert!(err.contains("TRACE"));
    assert_no_secrets("mount stderr", &err, &secrets());

    // Credentials from docker's config file.
    let docker = tempfile::tempdir().unwrap();
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(&creds);
    std::fs::write(
        docker.path().join("config.json"),
        format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, reg.addr),
    )
    .unwrap();
    let m = ImageMount::start(
        &dst,
        &[],
        &[("DOCKER_CONFIG", docker.path().to_str().unwrap())],
    );
    assert_eq!(
        sha256_file(&m.path("usr/bin/bash")).unwrap(),
        sha256_file(&root.join("usr/bin/bash")).unwrap()
    );
}

#[test]
fn token_auth_registry_refreshes_expiring_tokens_and_never_shows_them() {
    // Tokens announce 2 s of life: the client renews them while it reads.
    let tokens = TokenServer::start(USER, PASSWORD, 2);
    let reg = Registry::start(Auth::Token(tokens.config.clone()));
    let layout = debian_layout();
    let src = format!("{}/debian:minbase", reg.addr);
    let dst = format!("{}/debian:nydus", reg.addr);
    push_layout(&layout, "minbase", &src, Some((USER, PASSWORD)));
    let creds = format!("{USER}:{PASSWORD}");

    let out = warren(
        &[
            "convert",
            "--plain-http",
            "--creds",
            &format!("{USER}:nope"),
            "--source",
            &src,
            "--target",
            &dst,
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("token server") && err.contains("401"), "{err}");

    let before = tokens.issued.lock().unwrap().len();
    let out = warren_ok(
        &[
            "convert",
            "--plain-http",
            "--json",
            "--creds",
            &creds,
            "--source",
            &src,
            "--target",
            &dst,
        ],
        &[("RUST_LOG", "trace")],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["source_registry"]["token_fetches"].as_u64().unwrap() >= 1,
        "{report}"
    );
    let issued = tokens.issued.lock().unwrap().clone();
    assert!(issued.len() > before);
    let mut all = secrets();
    all.extend(issued);
    assert_no_secrets(
        "convert stderr",
        &String::from_utf8_lossy(&out.stderr),
        &all,
    );
    check_nydus_manifest(
        &plain_client(&reg.addr, Some((USER, PASSWORD))),
        "debian",
        "nydus",
    );

    let m = ImageMount::start(&dst, &["--creds", &creds], &[("RUST_LOG", "trace")]);
    let root = rootfs();
    let files = largest_files(&root, 6);
    let (first, rest) = files.split_at(3);
    for f in first {
        assert_eq!(
            sha256_file(&m.path(f)).unwrap(),
            sha256_file(&root.join(f)).unwrap(),
            "{f}"
        );
    }
    let requests = tokens.requests.load(std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(2500));
    for f in rest {
        assert_eq!(
            sha256_file(&m.path(f)).unwrap(),
            sha256_file(&root.join(f)).unwrap(),
            "{f}"
        );
    }
    assert!(
        tokens.requests.load(std::sync::atomic::Ordering::Relaxed) > requests,
        "no token was fetched again after the old one expired"
    );
    let err = m.stop();
    let mut all = secrets();
    all.extend(tokens.issued.lock().unwrap().clone());
    assert_no_secrets("mount stderr", &err, &all);
}

/// nydus-snapshotter's way: it fetches the bootstrap itself and hands the node a nydusd
/// config whose backend is the registry (with nydusd's `auth` field).
#[test]
fn node_mounts_from_a_registry_given_a_nydusd_config() {
    use base64::Engine;
    let reg = Registry::start(Auth::Htpasswd);
    let src = format!("{}/debian:minbase", reg.addr);
    let dst = format!("{}/debian:nydus", reg.addr);
    push_layout(&debian_layout(), "minbase", &src, Some((USER, PASSWORD)));
    let creds = format!("{USER}:{PASSWORD}");
    convert(&src, &dst, &["--creds", &creds], &[]);

    let node = Node::start();
    let client = plain_client(&reg.addr, Some((USER, PASSWORD)));
    let reference: warren::oci::Reference = dst.parse().unwrap();
    let pulled = warren::oci::pull::pull_bootstrap(
        &client,
        &reference,
        &PlatformSpec::host(),
        node.work.path(),
    )
    .unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(&creds);
    let config = serde_json::json!({
        "device": {
            "backend": {"type": "registry", "config": {
                "scheme": "http", "host": reg.addr, "repo": "debian", "auth": auth,
                "timeout": 5, "connect_timeout": 5, "retry_limit": 2}},
            "cache": {"type": "blobcache", "config": {"work_dir": "/nonexistent"}}},
        "mode": "direct", "digest_validate": false, "enable_xattr": true,
    });
    let mnt = node.work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let body = serde_json::json!({
        "source": pulled.path, "fs_type": "rafs", "config": config.to_string(),
    });
    let (status, resp) = node.api(
        "POST",
        &format!("/api/v1/mount?mountpoint={}", mnt.display()),
        Some(&body.to_string()),
    );
    assert_eq!(status, 204, "{resp}\n{}", node.log_text());
    let (status, mounts) = node.api("GET", "/api/v1/mounts", None);
    assert_eq!(status, 200);
    assert!(
        mounts.contains(&format!("http://{}/debian", reg.addr)),
        "{mounts}"
    );
    assert!(!mounts.contains(&auth) && !mounts.contains(PASSWORD));
    assert_same_tree(&rootfs(), &mnt);
    let (status, resp) = node.api(
        "DELETE",
        &format!("/api/v1/mount?mountpoint={}", mnt.display()),
        None,
    );
    assert_eq!(status, 204, "{resp}");
    // Mounted again, then the node stops with the registry mount up: a clean exit.
    let (status, resp) = node.api(
        "POST",
        &format!("/api/v1/mount?mountpoint={}", mnt.display()),
        Some(&body.to_string()),
    );
    assert_eq!(status, 204, "{resp}");
    let f = "usr/bin/bash";
    assert_eq!(
        sha256_file(&mnt.join(f)).unwrap(),
        sha256_file(&rootfs().join(f)).unwrap()
    );
    let mut node = node;
    let st = node.terminate().expect("the node did not stop within 15 s");
    assert!(st.success(), "node exit {st}: {}", node.log_text());
    assert!(!is_mounted(&mnt));
    assert!(!node.log_text().contains("panicked"), "{}", node.log_text());
    assert_no_secrets("node log", &node.log_text(), &secrets());
}

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
