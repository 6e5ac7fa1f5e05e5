//! `warren create` and `warren merge` against the fixture tree and nydus-image's output,
//! checked with warren's reader, the real `nydus-image check` and a real `nydusd` mount.

mod common;
use common::mountfs::{fs_manifest, Nydusd};
use common::*;
use std::ffi::OsStr;
use std::path::Path;
use warren::rafs::reader::read_bootstrap_file;

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Runs `warren create --json` and returns its report.
fn create(source: &Path, boot: &Path, blobs: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        os("create"),
        os("--json"),
        os("-B"),
        boot.as_os_str(),
        os("-D"),
        blobs.as_os_str(),
    ];
    args.extend(extra.iter().map(|s| os(s)));
    args.push(source.as_os_str());
    serde_json::from_slice(&warren_ok(&args).stdout).expect("create --json output")
}

fn nydus_check(boot: &Path, blobs: &Path) {
    let out = std::process::Command::new(tool("nydus-image"))
        .arg("check")
        .arg("-B")
        .arg(boot)
        .arg("-D")
        .arg(blobs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nydus-image check {} failed:\n{}",
        boot.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn fixture_events(name: &str) -> serde_json::Value {
    let text =
        std::fs::read_to_string(fixtures().join("images").join(name).join("create.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["trace"]["registered_events"].clone()
}

struct Variant {
    fixture: &'static str,
    flags: &'static [&'static str],
    /// nydus-image writes these blobs byte for byte like warren does.
    same_blob: bool,
}

const VARIANTS: &[Variant] = &[
    Variant {
        fixture: "v6-zstd-blake3",
        flags: &[],
        same_blob: true,
    },
    Variant {
        fixture: "v6-none-sha256",
        flags: &["--compressor", "none", "--digester", "sha256"],
        same_blob: true,
    },
    Variant {
        fixture: "v6-lz4-64k",
        flags: &["--compressor", "lz4_block", "--chunk-size", "0x10000"],
        same_blob: false,
    },
    Variant {
        fixture: "v6-blob-toc",
        flags: &["--features", "blob-toc"],
        same_blob: false,
    },
];

#[test]
fn create_from_tree_matches_manifest_and_nydus() {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    extract_tree(&tree);
    let manifest = load_manifest();
    for v in VARIANTS {
        let boot = work.path().join(format!("{}.boot", v.fixture));
        let blobs = work.path().join(format!("{}-blobs", v.fixture));
        let report = create(&tree, &boot, &blobs, v.flags);
        let image = read_bootstrap_file(&boot).unwrap().image;
        assert_manifests_equal(&image_manifest(&image, &blobs), &manifest);

        let ours = &report["trace"]["registered_events"];
        let theirs = fixture_events(v.fixture);
        for key in [
            "dedup_chunks",
            "dedup_uncompressed_size",
            "blob_uncompressed_size",
        ] {
            assert_eq!(ours[key], theirs[key], "{}: {key}", v.fixture);
        }
        if v.same_blob {
            let (_, fixture_blobs) = fixture_image(v.fixture);
            let theirs: Vec<_> = std::fs::read_dir(fixture_blobs)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(
                report["blobs"][0].as_str().unwrap(),
                theirs[0].to_str().unwrap(),
                "{}: blob bytes differ from nydus-image's",
                v.fixture
            );
        }
        nydus_check(&boot, &blobs);
        let out = warren_ok(&[
            os("check"),
            os("-B"),
            boot.as_os_str(),
            os("-D"),
            blobs.as_os_str(),
        ]);
        assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
    }
}

#[test]
fn nydusd_serves_what_warren_builds() {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    extract_tree(&tree);
    for v in VARIANTS {
        let boot = work.path().join(format!("{}.boot", v.fixture));
        let blobs = work.path().join(format!("{}-blobs", v.fixture));
        create(&tree, &boot, &blobs, v.flags);
        let mount = Nydusd::mount(&boot, &blobs);
        let got = fs_manifest(mount.path());
        assert_manifests_equal(&got, &load_manifest());
    }
}

#[test]
fn tar_and_directory_give_the_same_bytes_in_any_order() {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    extract_tree(&tree);
    let from_dir = create(
        &tree,
        &work.path().join("d.boot"),
        &work.path().join("blobs"),
        &[],
    );
    let from_tar = create(
        &fixtures().join("tree.tar"),
        &work.path().join("t.boot"),
        &work.path().join("blobs"),
        &[],
    );

    // The same entries, listed in reverse order and gzipped.
    let shuffled = work.path().join("shuffled.tar.gz");
    {
        let mut src = tar::Archive::new(std::fs::File::open(fixtures().join("tree.tar")).unwrap());
        type Pax = Vec<(String, Vec<u8>)>;
        let mut entries: Vec<(tar::Header, Vec<u8>, Pax)> = Vec::new();
        for e in src.entries().unwrap() {
            let mut e = e.unwrap();
            let pax: Vec<(String, Vec<u8>)> = e
                .pax_extensions()
                .unwrap()
                .map(|x| {
                    x.map(|x| x.unwrap())
                        .map(|x| (x.key().unwrap().to_string(), x.value_bytes().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            entries.push((e.header().clone(), data, pax));
        }
        // Hard links must follow their target, so keep the relative order of those two.
        entries.reverse();
        entries.sort_by_key(|(h, _, _)| h.entry_type() == tar::EntryType::Link);
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&shuffled).unwrap(),
            flate2::Compression::fast(),
        );
        let mut out = tar::Builder::new(gz);
        for (h, data, pax) in entries {
            if !pax.is_empty() {
                out.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                    .unwrap();
            }
            out.append(&h, data.as_slice()).unwrap();
        }
        out.into_inner().unwrap().finish().unwrap();
    }
    let from_shuffled = create(
        &shuffled,
        &work.path().join("s.boot"),
        &work.path().join("blobs"),
        &[],
    );
    assert_eq!(from_dir["blobs"], from_tar["blobs"]);
    assert_eq!(from_dir["blobs"], from_shuffled["blobs"]);
    let read = |p: &str| std::fs::read(work.path().join(p)).unwrap();
    assert!(
        read("d.boot") == read("t.boot"),
        "tar and directory builds differ"
    );
    assert!(
        read("d.boot") == read("s.boot"),
        "entry order changed the bootstrap"
    );
}

fn layer_view(boot: &Path, blobs: &Path) -> Vec<(String, String)> {
    let image = read_bootstrap_file(boot).unwrap().image;
    image_manifest(&image, blobs)
        .into_iter()
        .map(|(k, v)| (k, v.sha_or_target))
        .collect()
}

fn expected_layered() -> Vec<(String, String)> {
    vec![
        ("etc".into(), String::new()),
        ("etc/changed".into(), sha256_hex(b"new\n")),
        ("etc/keep".into(), sha256_hex(b"base\n")),
        ("opaque".into(), String::new()),
        ("opaque/new".into(), sha256_hex(b"fresh\n")),
    ]
}

#[test]
fn parent_bootstrap_and_merge_apply_whiteouts() {
    let work = tempfile::tempdir().unwrap();
    let w = |p: &str| work.path().join(p);
    let blobs = w("blobs");
    create(
        &fixtures().join("layer-lower.tar"),
        &w("lower.boot"),
        &blobs,
        &[],
    );
    create(
        &fixtures().join("layer-upper.tar"),
        &w("upper.boot"),
        &blobs,
        &["--parent-bootstrap", w("lower.boot").to_str().unwrap()],
    );
    assert_eq!(layer_view(&w("upper.boot"), &blobs), expected_layered());
    nydus_check(&w("upper.boot"), &blobs);

    // nydusify's way: each layer alone, then merge.
    create(
        &fixtures().join("layer-upper.tar"),
        &w("upper-alone.boot"),
        &blobs,
        &[],
    );
    warren_ok(&[
        os("merge"),
        os("-B"),
        w("merged.boot").as_os_str(),
        w("lower.boot").as_os_str(),
        w("upper-alone.boot").as_os_str(),
    ]);
    assert_eq!(layer_view(&w("merged.boot"), &blobs), expected_layered());
    nydus_check(&w("merged.boot"), &blobs);
    let mount = Nydusd::mount(&w("merged.boot"), &blobs);
    let got: Vec<(String, String)> = fs_manifest(mount.path())
        .into_iter()
        .map(|(k, v)| (k, v.sha_or_target))
        .collect();
    assert_eq!(got, expected_layered());
}

/// A tar with one entry of the given name and type.
fn one_entry_tar(path: &Path, name: &[u8], kind: tar::EntryType, link: Option<&[u8]>) {
    let mut h = tar::Header::new_gnu();
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name);
        if let Some(l) = link {
            gnu.linkname[..l.len()].copy_from_slice(l);
        }
    }
    h.set_entry_type(kind);
    h.set_size(if kind == tar::EntryType::Regular {
        3
    } else {
        0
    });
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    b.append(
        &h,
        if kind == tar::EntryType::Regular {
            &b"abc"[..]
        } else {
            &b""[..]
        },
    )
    .unwrap();
    b.finish().unwrap();
}

fn create_fails(source: &Path, extra: &[&str]) -> String {
    let work = tempfile::tempdir().unwrap();
    let mut args: Vec<std::ffi::OsString> = vec![
        "create".into(),
        "-B".into(),
        work.path().join("b").into_os_string(),
        "-D".into(),
        work.path().join("d").into_os_string(),
    ];
    args.extend(extra.iter().map(|s| s.into()));
    args.push(source.as_os_str().to_owned());
    let out = std::process::Command::new(warren_bin())
        .args(&args)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "create {} should fail",
        source.display()
    );
    assert!(
        !work.path().join("b").exists(),
        "a failed build left a bootstrap behind"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_input_is_refused_clearly() {
    let work = tempfile::tempdir().unwrap();
    let t = |n: &str| work.path().join(n);
    one_entry_tar(
        &t("dotdot.tar"),
        b"a/../../escape",
        tar::EntryType::Regular,
        None,
    );
    let refused = |name: &str, needle: &str| {
        let err = create_fails(&t(name), &[]);
        assert!(err.contains(needle), "{name}: {err}");
    };
    refused("dotdot.tar", "'..'");
    one_entry_tar(&t("abs.tar"), b"/etc/passwd", tar::EntryType::Regular, None);
    refused("abs.tar", "absolute");
    one_entry_tar(
        &t("link.tar"),
        b"hl",
        tar::EntryType::Link,
        Some(b"../outside"),
    );
    refused("link.tar", "hard link");
    one_entry_tar(
        &t("link2.tar"),
        b"hl",
        tar::EntryType::Link,
        Some(b"not-here"),
    );
    refused("link2.tar", "not in this layer");
    let err = create_fails(&fixtures().join("tree.tar"), &["--chunk-size", "0x3000"]);
    assert!(err.contains("power of two"), "{err}");

    // A tar.gz cut in the middle.
    let gz = t("cut.tar.gz");
    {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(
            &mut enc,
            &std::fs::read(fixtures().join("tree.tar")).unwrap(),
        )
        .unwrap();
        let bytes = enc.finish().unwrap();
        std::fs::write(&gz, &bytes[..bytes.len() / 2]).unwrap();
    }
    let err = create_fails(&gz, &[]);
    assert!(err.contains("cut.tar.gz"), "{err}");
}

#[test]
fn prefetch_list_from_stdin_leads_the_blob() {
    let work = tempfile::tempdir().unwrap();
    let boot = work.path().join("p.boot");
    let blobs = work.path().join("blobs");
    let mut child = std::process::Command::new(warren_bin())
        .args(["create", "-q", "--prefetch-policy", "fs", "-B"])
        .arg(&boot)
        .arg("-D")
        .arg(&blobs)
        .arg(fixtures().join("tree.tar"))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        b"/perms/suid\n/links\n/does/not/exist\n",
    )
    .unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    let out = warren_ok(&[os("inspect"), os("--json"), os("-B"), boot.as_os_str()]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["prefetch"],
        serde_json::json!(["/perms/suid", "/links"])
    );
    let suid = json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "/perms/suid")
        .unwrap();
    assert_eq!(
        suid["chunks"][0]["compressed_offset"], 0,
        "prefetched data comes first in the blob"
    );
    nydus_check(&boot, &blobs);
}

/// Layers made by `umoci insert` (ENVIRONMENT.md's recipe) name the root `/` and may end
/// without the last entry's padding: both build.
#[test]
fn umoci_layers_build() {
    let work = tempfile::tempdir().unwrap();
    let w = |p: &str| work.path().join(p);
    std::fs::create_dir_all(w("src/sub")).unwrap();
    std::fs::write(w("src/sub/a"), b"hello\n").unwrap();
    std::os::unix::fs::symlink("a", w("src/sub/l")).unwrap();
    let run = |args: &[&str]| {
        let st = std::process::Command::new("umoci")
            .args(args)
            .current_dir(work.path())
            .status()
            .expect("umoci (scripts/test.sh installs it)");
        assert!(st.success(), "umoci {args:?}");
    };
    run(&["init", "--layout", "L"]);
    run(&["new", "--image", "L:t"]);
    run(&["insert", "--image", "L:t", "src", "/"]);
    let layer = std::fs::read_dir(w("L/blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::read(p).unwrap().starts_with(&[0x1f, 0x8b]))
        .expect("a gzipped layer");
    create(&layer, &w("u.boot"), &w("blobs"), &[]);
    assert_eq!(
        layer_view(&w("u.boot"), &w("blobs")),
        vec![
            ("sub".into(), String::new()),
            ("sub/a".into(), sha256_hex(b"hello\n")),
            ("sub/l".into(), "a".into())
        ]
    );
}
