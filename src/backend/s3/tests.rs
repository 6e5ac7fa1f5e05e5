//! Unit tests of the backend that need no server: URLs, CA bundles, the retry loop.

use super::*;

fn backend(endpoint: &str, addressing: Addressing, prefix: &str) -> S3Backend {
    let cfg = S3Config {
        endpoint: endpoint.into(),
        bucket_name: "bkt".into(),
        object_prefix: prefix.into(),
        addressing,
        ..S3Config::default()
    };
    S3Backend::from_resolved(cfg.resolve_with(&|_| None).unwrap()).unwrap()
}

#[test]
fn urls_path_style_and_virtual_hosted() {
    let b = backend("http://127.0.0.1:9000", Addressing::Auto, "nydus/");
    let key = b.key("abc").unwrap();
    assert_eq!(key, "nydus/abc");
    assert_eq!(
        b.url(&key, &[]).as_str(),
        "http://127.0.0.1:9000/bkt/nydus/abc"
    );
    assert_eq!(
        b.url("a b+c", &[("partNumber", "1"), ("uploadId", "x/y+z=")])
            .as_str(),
        "http://127.0.0.1:9000/bkt/a%20b%2Bc?partNumber=1&uploadId=x%2Fy%2Bz%3D"
    );
    let v = backend("", Addressing::Auto, "");
    assert_eq!(
        v.url("k", &[]).as_str(),
        "https://bkt.s3.us-east-1.amazonaws.com/k"
    );
    let v = backend("https://s3.example:8443", Addressing::Virtual, "");
    assert_eq!(v.url("k", &[]).as_str(), "https://bkt.s3.example:8443/k");
    assert_eq!(v.location(), "s3://bkt/");
    assert!(v.key("").is_err() && v.key("a\nb").is_err());
}

#[test]
fn ca_bundles_from_config_fail_loudly_from_env_softly() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let mut cfg = S3Config {
        bucket_name: "b".into(),
        ca_file: Some(junk.clone()),
        ..S3Config::default()
    };
    let e = S3Backend::from_resolved(cfg.resolve_with(&|_| None).unwrap())
        .err()
        .unwrap();
    assert!(e.to_string().contains("no certificates"), "{e}");
    cfg.ca_file = None;
    let env_junk = junk.display().to_string();
    let r = cfg
        .resolve_with(&|n| (n == "AWS_CA_BUNDLE").then(|| env_junk.clone()))
        .unwrap();
    assert_eq!(r.ca_file.as_ref().unwrap().1, CaSource::Env);
    S3Backend::from_resolved(r).unwrap();
    let system = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if system.exists() {
        cfg.ca_file = Some(system.into());
        S3Backend::from_resolved(cfg.resolve_with(&|_| None).unwrap()).unwrap();
    }
}

#[test]
fn retries_only_transient_errors_and_says_so() {
    let mut cfg = S3Config {
        endpoint: "http://127.0.0.1:1".into(),
        bucket_name: "b".into(),
        retry_backoff_ms: 1,
        ..S3Config::default()
    };
    cfg.retry_limit = Some(2);
    let b = S3Backend::new(&cfg).unwrap();
    let mut calls = 0;
    let e = b
        .with_retries("GET", "s3://b/k", || -> Result<(), S3Error> {
            calls += 1;
            Err(error_from_body(
                "GET",
                "s3://b/k",
                503,
                "<Code>SlowDown</Code>",
            ))
        })
        .unwrap_err();
    assert_eq!(calls, 3);
    assert!(e.to_string().contains("gave up after 3 attempts"), "{e}");
    let mut calls = 0;
    let e = b
        .with_retries("GET", "s3://b/k", || -> Result<(), S3Error> {
            calls += 1;
            Err(error_from_body(
                "GET",
                "s3://b/k",
                403,
                "<Code>AccessDenied</Code>",
            ))
        })
        .unwrap_err();
    assert_eq!(calls, 1);
    assert_eq!(e.code(), Some("AccessDenied"));
    // nothing listens on port 1: a transport error, retried, then an error, not a hang
    let t = Instant::now();
    let e = b.get_range("blob", 0, 10).unwrap_err();
    assert!(matches!(e, S3Error::GaveUp { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10));
}
