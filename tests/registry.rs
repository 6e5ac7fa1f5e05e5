//! warren against the Debian `docker-registry` (distribution 2.8), open, with htpasswd
//! and with token auth: a real root file system pushed as an OCI image (umoci + skopeo),
//! `warren convert` into a Nydus image in the same registry, `warren mount --image` lazily
//! from it, every file compared with the source tree; the node mounting from a registry
//! with nydusd's config. Credentials must never show in logs (RUST_LOG=trace), errors or
//! metrics.

mod registry_support;
use registry_support::checks::*;
use registry_support::token::TokenServer;
use registry_support::*;
use std::time::Duration;
use warren::oci::manifest::*;

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
