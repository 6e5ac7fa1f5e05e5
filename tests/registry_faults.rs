//! The registry origin under faults, through a fault-injecting proxy in front of the
//! Debian `docker-registry`: 5xx bursts, connection resets, bodies cut short, a slow
//! origin, a dead one, a hung one, a corrupted body. Reads must return the right bytes
//! after retries, or EIO once the budget is spent, never wrong bytes, and never hang past
//! the deadline. Conversion must survive broken layer downloads.

mod registry_support;
use registry_support::proxy::{Fault, FaultProxy};
use registry_support::*;
use std::time::{Duration, Instant};

/// A registry with the Debian image converted, and a proxy in front of it whose faults
/// hit the data blob only.
struct Setup {
    reg: Registry,
    proxy: FaultProxy,
    blob: String,
    report: serde_json::Value,
}

fn setup() -> Setup {
    let reg = Registry::start(Auth::Open);
    let src = format!("{}/debian:minbase", reg.addr);
    push_layout(&debian_layout(), "minbase", &src, None);
    let report = convert(&src, &format!("{}/debian:nydus", reg.addr), &[], &[]);
    let blob = report["images"][0]["blobs"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let proxy = FaultProxy::start(&reg.addr);
    proxy.target(&blob);
    Setup {
        reg,
        proxy,
        blob,
        report,
    }
}

/// Regular files of the source tree, larger first, skipping the first `skip`.
fn files(n: usize, skip: usize) -> Vec<String> {
    let out = run(std::process::Command::new("find")
        .arg(rootfs())
        .args(["-type", "f", "-size", "+64k", "-printf", "%s %P\n"]));
    let mut v: Vec<(u64, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (s, p) = l.split_once(' ')?;
            Some((s.parse().ok()?, p.to_string()))
        })
        .collect();
    v.sort_by(|a, b| b.cmp(a));
    v.into_iter().skip(skip).take(n).map(|(_, p)| p).collect()
}

fn same(m: &ImageMount, f: &str) {
    assert_eq!(
        sha256_file(&m.path(f)).unwrap_or_else(|e| panic!("{f}: {e}\n{}", m.stderr_text())),
        sha256_file(&rootfs().join(f)).unwrap(),
        "{f}"
    );
}

/// Reading `f` fails with EIO; returns how long it took.
fn eio(m: &ImageMount, f: &str) -> Duration {
    let t = Instant::now();
    let err = std::fs::read(m.path(f)).expect_err("a read from a dead origin succeeded");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{f}: {err}");
    eprintln!("EIO for {f} after {:?}", t.elapsed());
    t.elapsed()
}

fn mount(s: &Setup, budget: &[&str]) -> ImageMount {
    let image = format!("{}/debian:nydus", s.proxy.addr);
    ImageMount::start(&image, budget, &[("RUST_LOG", "warren=debug")])
}

const BUDGET: [&str; 6] = [
    "--registry-timeout",
    "1",
    "--registry-retries",
    "4",
    "--registry-deadline",
    "8",
];

#[test]
fn transient_faults_are_retried_and_reads_stay_right() {
    let s = setup();
    let m = mount(&s, &BUDGET);
    let faults = [
        Fault::Status(503),
        Fault::Status(500),
        Fault::Status(502),
        Fault::Reset,
        Fault::Truncate,
        Fault::Delay(Duration::from_millis(1500)),
        Fault::Status(429),
        Fault::Reset,
        Fault::Truncate,
    ];
    s.proxy.push(&faults);
    for f in files(12, 0) {
        same(&m, &f);
    }
    assert_eq!(s.proxy.pending(), 0, "not every fault was met");
    assert!(s.proxy.injected.load(std::sync::atomic::Ordering::Relaxed) >= faults.len());
    let log = m.stop();
    assert!(log.contains("retrying"), "no retry was logged:\n{log}");
}

#[test]
fn a_dead_or_hung_origin_gives_eio_within_the_deadline_then_recovers() {
    let s = setup();
    let budget = [
        "--registry-timeout",
        "1",
        "--registry-retries",
        "3",
        "--registry-deadline",
        "4",
    ];
    let m = mount(&s, &budget);
    let fs = files(4, 0);
    // Dead: every blob request answers 503.
    s.proxy.standing(Some(Fault::Status(503)));
    let took = eio(&m, &fs[0]);
    assert!(took < Duration::from_secs(12), "EIO after {took:?}");
    // Hung: the origin accepts and never answers; each attempt times out.
    s.proxy.standing(Some(Fault::Hang));
    let took = eio(&m, &fs[1]);
    assert!(took < Duration::from_secs(12), "EIO after {took:?}");
    // Slow but alive beyond the per-attempt timeout: still an error, not a hang.
    s.proxy.standing(Some(Fault::Delay(Duration::from_secs(3))));
    let took = eio(&m, &fs[2]);
    assert!(took < Duration::from_secs(12), "EIO after {took:?}");
    // Back to health: the same files read right (nothing was poisoned).
    s.proxy.standing(None);
    for f in &fs {
        same(&m, f);
    }
}

#[test]
fn a_corrupted_body_is_never_served() {
    let s = setup();
    let m = mount(&s, &BUDGET);
    let f = &files(1, 3)[0];
    s.proxy.standing(Some(Fault::Corrupt));
    let err = std::fs::read(m.path(f)).expect_err("corrupt bytes were served");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    s.proxy.standing(None);
    same(&m, f);
    let log = m.stop();
    assert!(log.contains("failed verification"), "{log}");
}

#[test]
fn convert_survives_broken_layer_downloads_and_gives_the_same_image() {
    let s = setup();
    // Faults on the source layer now: its download breaks, resumes by range, and the
    // result is the image converted without faults.
    let layer = s.report["images"][0]["layers"][0]["source_digest"]
        .as_str()
        .unwrap()
        .to_string();
    s.proxy.target(&layer);
    s.proxy.push(&[
        Fault::Truncate,
        Fault::Status(503),
        Fault::Reset,
        Fault::Truncate,
        Fault::Delay(Duration::from_millis(500)),
    ]);
    let report = convert(
        &format!("{}/debian:minbase", s.proxy.addr),
        &format!("{}/debian:again", s.proxy.addr),
        &["--registry-timeout", "5"],
        &[],
    );
    assert_eq!(s.proxy.pending(), 0);
    assert_eq!(report["digest"], s.report["digest"]);
    assert!(
        report["source_registry"]["retries"].as_u64().unwrap() >= 4,
        "{report}"
    );
    assert_eq!(
        s.blob,
        report["images"][0]["blobs"][0]["digest"].as_str().unwrap()
    );
    // A layer that is corrupted in transit is refused, not converted.
    s.proxy.standing(Some(Fault::Corrupt));
    let out = warren(
        &[
            "convert",
            "--plain-http",
            "--source",
            &format!("{}/debian:minbase", s.proxy.addr),
            "--target",
            &format!("{}/debian:bad", s.proxy.addr),
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("digest") || err.contains("layer"), "{err}");
}

#[test]
fn redirects_to_another_host_keep_the_range() {
    let s = setup();
    // Blob reads are sent on to "object storage" (here the registry itself, on another
    // port than the proxy's): each must arrive there as a ranged GET.
    s.proxy.standing(Some(Fault::Redirect(s.reg.addr.clone())));
    let m = mount(&s, &BUDGET);
    for f in files(3, 0) {
        same(&m, &f);
    }
    let log = strip_ansi(&m.stop());
    assert!(
        log.contains("status=307"),
        "no redirect was followed:\n{log}"
    );
    let gets = s.reg.blob_gets(&s.blob);
    assert!(!gets.is_empty());
    assert!(gets.iter().all(|(st, _)| *st == 206), "{gets:?}");
}

/// The log without terminal colour codes.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
