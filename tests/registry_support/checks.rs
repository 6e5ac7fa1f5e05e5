//! Checks shared by the registry tests: what a converted image must look like, and that
//! no output shows a secret.

use super::{run, PASSWORD, USER};
use std::path::Path;
use warren::oci::manifest::*;
use warren::oci::{Client, RegistryOptions};

pub fn plain_client(addr: &str, creds: Option<(&str, &str)>) -> Client {
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
pub fn check_nydus_manifest(client: &Client, repo: &str, tag: &str) -> (String, u64) {
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
pub fn largest_files(root: &Path, n: usize) -> Vec<String> {
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

/// No output may hold the password, its base64 form, or any token.
pub fn assert_no_secrets(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(
            !text.contains(s.as_str()),
            "{what} shows a secret ({} bytes of output)",
            text.len()
        );
    }
}

pub fn secrets() -> Vec<String> {
    use base64::Engine;
    vec![
        PASSWORD.to_string(),
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}")),
    ]
}
