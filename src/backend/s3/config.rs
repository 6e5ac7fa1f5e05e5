//! Settings of the S3 origin: what a user writes ([`S3Config`], nydusd's field names so
//! existing nydusd backend configs work unchanged), and what the backend runs with
//! ([`Resolved`]) once the usual AWS environment variables and the defaults are filled in.

use super::S3Error;
use aws_credential_types::Credentials;
use serde::Deserialize;
use std::time::Duration;

/// Default URL scheme of the endpoint.
pub const DEFAULT_SCHEME: &str = "https";
/// Default region, as the AWS tools assume when none is given.
pub const DEFAULT_REGION: &str = "us-east-1";
/// Default timeout of one request, connect to last body byte, in seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;
/// Default connect timeout in seconds.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 5;
/// Default retries after a failed attempt (so 4 attempts in all).
pub const DEFAULT_RETRY_LIMIT: u32 = 3;
/// Default first backoff between attempts, in milliseconds; it doubles each retry.
pub const DEFAULT_RETRY_BACKOFF_MS: u64 = 200;
/// Blobs larger than this go up as a multipart upload.
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 64 << 20;
/// Default part size of multipart uploads.
pub const DEFAULT_PART_SIZE: u64 = 16 << 20;
/// S3's smallest allowed part (every part but the last).
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// S3's largest allowed part.
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// S3 allows at most this many parts in one upload.
pub const MAX_PARTS: u64 = 10_000;

/// How the bucket is named in request URLs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Addressing {
    /// Virtual-hosted for AWS endpoints (`*.amazonaws.com`) and bucket names without dots,
    /// path-style for everything else: S3-compatible servers (MinIO, Ceph, moto) usually have
    /// no wildcard DNS, and a dotted bucket breaks the TLS name check of a virtual host.
    #[default]
    Auto,
    /// `SCHEME://ENDPOINT/BUCKET/KEY`.
    Path,
    /// `SCHEME://BUCKET.ENDPOINT/KEY`.
    Virtual,
}

/// An S3 origin as a user configures it. Every field is optional in the file; empty
/// strings mean "not set" so that a nydusd config with `""` values means the same here.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// `host[:port]`, or a URL whose scheme then wins over `scheme`. Default:
    /// `AWS_ENDPOINT_URL_S3`, then `AWS_ENDPOINT_URL`, then `s3.REGION.amazonaws.com`.
    pub endpoint: String,
    /// `https` or `http`. Default: `https`.
    pub scheme: String,
    /// The bucket. Required.
    pub bucket_name: String,
    /// Prepended to the blob id to make the object key (e.g. `nydus/`). Default: none.
    pub object_prefix: String,
    /// Signing region. Default: `AWS_REGION`, then `AWS_DEFAULT_REGION`, then `us-east-1`.
    pub region: String,
    /// Access key id. Default: `AWS_ACCESS_KEY_ID`. Without any key, requests go unsigned
    /// (public buckets).
    pub access_key_id: String,
    /// Secret access key. Default: `AWS_SECRET_ACCESS_KEY`.
    pub access_key_secret: String,
    /// Session token of temporary credentials. Default: `AWS_SESSION_TOKEN` when the keys
    /// come from the environment too.
    pub session_token: String,
    /// `auto`, `path` or `virtual`. Default: `auto` (see [`Addressing::Auto`]).
    pub addressing: Addressing,
    /// Accept any TLS certificate (test servers with self-signed certificates only).
    pub skip_verify: bool,
    /// A PEM file of CA certificates trusted beside the built-in roots (a private CA).
    /// Default: `AWS_CA_BUNDLE` (a bad bundle from there is skipped with a warning; a bad
    /// `ca_file` is an error).
    pub ca_file: Option<std::path::PathBuf>,
    /// Timeout of one attempt, connect to last body byte, in seconds. Default: 30.
    pub timeout: u64,
    /// Connect timeout in seconds. Default: 5.
    pub connect_timeout: u64,
    /// Retries after a failed attempt (5xx, 429, resets, timeouts, short bodies).
    /// Default: 3.
    pub retry_limit: Option<u32>,
    /// First pause before a retry in milliseconds, doubled each time (capped at 5 s),
    /// with jitter. Default: 200.
    pub retry_backoff_ms: u64,
    /// Uploads larger than this many bytes use multipart upload. Default: 64 MiB.
    pub multipart_threshold: u64,
    /// Part size of multipart uploads, 5 MiB to 5 GiB. Default: 16 MiB.
    pub part_size: u64,
    /// nydusd's HTTP proxy settings: accepted so nydusd configs parse, not used.
    pub proxy: Option<serde_json::Value>,
    /// nydusd's registry mirrors: accepted so nydusd configs parse, not used.
    pub mirrors: Option<serde_json::Value>,
}

/// Secrets never reach a log through `{:?}`: keys print as set or unset only.
impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |s: &str| {
            if s.is_empty() {
                "<unset>"
            } else {
                "<redacted>"
            }
        };
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("scheme", &self.scheme)
            .field("bucket_name", &self.bucket_name)
            .field("object_prefix", &self.object_prefix)
            .field("region", &self.region)
            .field("access_key_id", &set(&self.access_key_id))
            .field("access_key_secret", &set(&self.access_key_secret))
            .field("session_token", &set(&self.session_token))
            .field("addressing", &self.addressing)
            .field("skip_verify", &self.skip_verify)
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry_limit", &self.retry_limit)
            .field("retry_backoff_ms", &self.retry_backoff_ms)
            .field("multipart_threshold", &self.multipart_threshold)
            .field("part_size", &self.part_size)
            .finish_non_exhaustive()
    }
}

/// Everything the backend needs, with defaults and environment applied and checked.
#[derive(Clone)]
pub struct Resolved {
    /// `scheme://host[:port]` with no path.
    pub base: reqwest::Url,
    pub path_style: bool,
    pub bucket: String,
    pub prefix: String,
    pub region: String,
    /// `None`: unsigned requests. (`Credentials` redacts its secrets in `Debug`.)
    pub credentials: Option<Credentials>,
    pub skip_verify: bool,
    /// Extra CA certificates (PEM), and whether they came from the environment.
    pub ca_file: Option<(std::path::PathBuf, CaSource)>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub retry_limit: u32,
    pub retry_backoff: Duration,
    pub multipart_threshold: u64,
    pub part_size: u64,
}

/// Where the extra CA bundle was named: a bad one from the environment (set for other
/// tools, perhaps) must not stop warren, a bad one in warren's own config must.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaSource {
    Config,
    Env,
}

/// Like [`S3Config`]'s: whether there are keys, never the keys (not even the key id,
/// which `Credentials`' own `Debug` shows).
impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("base", &self.base.as_str())
            .field("path_style", &self.path_style)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("signed", &self.credentials.is_some())
            .field("skip_verify", &self.skip_verify)
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry_limit", &self.retry_limit)
            .field("retry_backoff", &self.retry_backoff)
            .field("multipart_threshold", &self.multipart_threshold)
            .field("part_size", &self.part_size)
            .finish()
    }
}

impl S3Config {
    /// Reads a config file: JSON (a bare S3 config, or a whole nydusd config whose backend
    /// is `s3`) or, for any other extension, TOML holding a bare S3 config.
    pub fn from_file(path: &std::path::Path) -> Result<S3Config, S3Error> {
        let bad = |detail: String| S3Error::Config(format!("{}: {detail}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        if path.extension().is_some_and(|e| e == "json") {
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            if let Some(c) = S3Config::from_nydusd(&v).map_err(|e| bad(e.to_string()))? {
                return Ok(c);
            }
            serde_json::from_value(v).map_err(|e| bad(e.to_string()))
        } else {
            toml::from_str(&text).map_err(|e| bad(e.to_string()))
        }
    }

    /// The S3 settings of a nydusd config: `device.backend` as `{"type": "s3", "config":
    /// {...}}` (config v1) or `backend` as `{"type": "s3", "s3": {...}}` (config v2).
    /// `Ok(None)` when the config's backend is not S3 (or it has none).
    pub fn from_nydusd(config: &serde_json::Value) -> Result<Option<S3Config>, S3Error> {
        let (backend, inner) = match config.get("device") {
            Some(d) => (d.get("backend"), "config"),
            None => (config.get("backend"), "s3"),
        };
        let Some(backend) = backend else {
            return Ok(None);
        };
        if backend.get("type").and_then(|t| t.as_str()) != Some("s3") {
            return Ok(None);
        }
        let Some(body) = backend.get(inner) else {
            return Err(S3Error::Config(format!(
                "the s3 backend has no `{inner}` object"
            )));
        };
        serde_json::from_value(body.clone())
            .map(Some)
            .map_err(|e| S3Error::Config(format!("the s3 backend's `{inner}`: {e}")))
    }

    /// Applies the process environment and the defaults, and checks the result.
    pub fn resolve(&self) -> Result<Resolved, S3Error> {
        self.resolve_with(&|name| std::env::var(name).ok())
    }

    /// [`Self::resolve`] with the environment given as a lookup (tests pass their own).
    pub fn resolve_with(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Resolved, S3Error> {
        let env = |name: &str| env(name).filter(|v| !v.is_empty());
        let bad = |m: String| Err(S3Error::Config(m));
        if self.bucket_name.is_empty() {
            return bad("`bucket_name` is required".into());
        }
        if self.bucket_name.contains('/') {
            return bad(format!("`bucket_name` {:?} contains '/'", self.bucket_name));
        }
        let region = non_empty(&self.region)
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| DEFAULT_REGION.to_string());
        let scheme = non_empty(&self.scheme).unwrap_or_else(|| DEFAULT_SCHEME.to_string());
        if scheme != "http" && scheme != "https" {
            return bad(format!("`scheme` must be http or https, not {scheme:?}"));
        }
        let endpoint = non_empty(&self.endpoint)
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .unwrap_or_else(|| format!("s3.{region}.amazonaws.com"));
        let base = parse_endpoint(&endpoint, &scheme)?;
        let host = base.host_str().unwrap_or_default().to_string();
        let path_style = match self.addressing {
            Addressing::Path => true,
            Addressing::Virtual => false,
            Addressing::Auto => !host.ends_with("amazonaws.com") || self.bucket_name.contains('.'),
        };
        let credentials = self.credentials(&env)?;
        let part_size = if self.part_size == 0 {
            DEFAULT_PART_SIZE
        } else {
            self.part_size
        };
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&part_size) {
            return bad(format!(
                "`part_size` {part_size} is outside S3's limits ({MIN_PART_SIZE} to {MAX_PART_SIZE})"
            ));
        }
        let or = |v: u64, d: u64| if v == 0 { d } else { v };
        Ok(Resolved {
            base,
            path_style,
            bucket: self.bucket_name.clone(),
            prefix: self.object_prefix.clone(),
            region,
            credentials,
            skip_verify: self.skip_verify,
            ca_file: match &self.ca_file {
                Some(p) if !p.as_os_str().is_empty() => Some((p.clone(), CaSource::Config)),
                _ => env("AWS_CA_BUNDLE").map(|p| (p.into(), CaSource::Env)),
            },
            timeout: Duration::from_secs(or(self.timeout, DEFAULT_TIMEOUT_SECS)),
            connect_timeout: Duration::from_secs(or(
                self.connect_timeout,
                DEFAULT_CONNECT_TIMEOUT_SECS,
            )),
            retry_limit: self.retry_limit.unwrap_or(DEFAULT_RETRY_LIMIT).min(20),
            retry_backoff: Duration::from_millis(or(
                self.retry_backoff_ms,
                DEFAULT_RETRY_BACKOFF_MS,
            )),
            multipart_threshold: or(self.multipart_threshold, DEFAULT_MULTIPART_THRESHOLD),
            part_size,
        })
    }

    /// Keys from the config, else from the environment, else none (unsigned requests).
    /// Half a key pair is an error rather than a silent fallback to anonymous access.
    fn credentials(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Credentials>, S3Error> {
        let (id, secret, token) =
            if !self.access_key_id.is_empty() || !self.access_key_secret.is_empty() {
                (
                    non_empty(&self.access_key_id),
                    non_empty(&self.access_key_secret),
                    non_empty(&self.session_token),
                )
            } else {
                (
                    env("AWS_ACCESS_KEY_ID"),
                    env("AWS_SECRET_ACCESS_KEY"),
                    non_empty(&self.session_token).or_else(|| env("AWS_SESSION_TOKEN")),
                )
            };
        match (id, secret) {
            (Some(id), Some(secret)) => Ok(Some(Credentials::new(
                id, secret, token, None, "warren",
            ))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(S3Error::Config(
                "an access key id is set but no secret (`access_key_secret` or AWS_SECRET_ACCESS_KEY)".into(),
            )),
            (None, Some(_)) => Err(S3Error::Config(
                "a secret is set but no access key id (`access_key_id` or AWS_ACCESS_KEY_ID)".into(),
            )),
        }
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// `host[:port]` or `scheme://host[:port][/]` -> the base URL. A path, query or user info
/// in the endpoint is refused: the first would be silently dropped, the last is a secret
/// that would end up in error messages.
fn parse_endpoint(endpoint: &str, scheme: &str) -> Result<reqwest::Url, S3Error> {
    let text = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("{scheme}://{endpoint}")
    };
    let bad = |why: &str| S3Error::Config(format!("`endpoint` {endpoint:?}: {why}"));
    let url = reqwest::Url::parse(&text).map_err(|e| bad(&e.to_string()))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(bad("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(|h| h.is_empty()) {
        return Err(bad("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(S3Error::Config(
            "`endpoint` must not carry user info; use access_key_id/access_key_secret".into(),
        ));
    }
    if url.path() != "/" || url.query().is_some() {
        return Err(bad(
            "an endpoint is scheme://host[:port] only, no path or query",
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    fn cfg(bucket: &str) -> S3Config {
        S3Config {
            bucket_name: bucket.into(),
            ..S3Config::default()
        }
    }

    #[test]
    fn defaults_are_aws_virtual_hosted_and_anonymous() {
        let r = cfg("b").resolve_with(&env_of(&[])).unwrap();
        assert_eq!(r.base.as_str(), "https://s3.us-east-1.amazonaws.com/");
        assert!(!r.path_style);
        assert!(r.credentials.is_none());
        assert_eq!(r.timeout, Duration::from_secs(DEFAULT_TIMEOUT_SECS));
        assert_eq!(r.retry_limit, DEFAULT_RETRY_LIMIT);
        assert_eq!(r.part_size, DEFAULT_PART_SIZE);
        // a dotted bucket cannot be a virtual host under TLS
        assert!(cfg("a.b").resolve_with(&env_of(&[])).unwrap().path_style);
    }

    #[test]
    fn environment_fills_what_the_config_leaves_empty() {
        let env = env_of(&[
            ("AWS_REGION", "eu-west-3"),
            ("AWS_DEFAULT_REGION", "ignored"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "SECRET"),
            ("AWS_SESSION_TOKEN", "TOKEN"),
        ]);
        let r = cfg("b").resolve_with(&env).unwrap();
        assert_eq!(r.region, "eu-west-3");
        assert_eq!(r.base.as_str(), "http://127.0.0.1:9000/");
        assert!(r.path_style, "custom endpoints are path-style");
        let c = r.credentials.unwrap();
        assert_eq!(c.access_key_id(), "AKID");
        assert_eq!(c.secret_access_key(), "SECRET");
        assert_eq!(c.session_token(), Some("TOKEN"));

        // explicit settings win, and config keys never mix with an env session token
        let mut c = cfg("b");
        c.region = "ap-south-1".into();
        c.endpoint = "minio:9000".into();
        c.scheme = "http".into();
        c.access_key_id = "A".into();
        c.access_key_secret = "S".into();
        let r = c.resolve_with(&env).unwrap();
        assert_eq!(r.region, "ap-south-1");
        assert_eq!(r.base.as_str(), "http://minio:9000/");
        let creds = r.credentials.unwrap();
        assert_eq!(creds.access_key_id(), "A");
        assert_eq!(creds.session_token(), None);
    }

    #[test]
    fn bad_settings_are_named() {
        let err = |c: S3Config| c.resolve_with(&env_of(&[])).unwrap_err().to_string();
        assert!(err(S3Config::default()).contains("bucket_name"));
        let mut c = cfg("b");
        c.access_key_id = "A".into();
        assert!(err(c).contains("no secret"));
        let mut c = cfg("b");
        c.endpoint = "http://u:p@host".into();
        let e = err(c);
        assert!(e.contains("user info") && !e.contains("u:p"), "{e}");
        let mut c = cfg("b");
        c.endpoint = "host/path".into();
        assert!(err(c).contains("no path"));
        let mut c = cfg("b");
        c.scheme = "ftp".into();
        assert!(err(c).contains("scheme"));
        let mut c = cfg("b");
        c.part_size = 1 << 20;
        assert!(err(c).contains("part_size"));
    }

    #[test]
    fn nydusd_configs_v1_and_v2() {
        let v1 = json!({"device": {"backend": {"type": "s3", "config": {
            "endpoint": "127.0.0.1:9000", "scheme": "http", "bucket_name": "b",
            "object_prefix": "p/", "region": "r", "access_key_id": "A",
            "access_key_secret": "S", "timeout": 5, "connect_timeout": 1,
            "retry_limit": 0, "proxy": {"url": ""}, "mirrors": []}},
            "cache": {"type": "blobcache"}}, "mode": "direct"});
        let c = S3Config::from_nydusd(&v1).unwrap().unwrap();
        assert_eq!(c.bucket_name, "b");
        assert_eq!(c.object_prefix, "p/");
        assert_eq!(c.retry_limit, Some(0));
        let v2 = json!({"version": 2, "backend": {"type": "s3", "s3": {"bucket_name": "c"}}});
        assert_eq!(
            S3Config::from_nydusd(&v2).unwrap().unwrap().bucket_name,
            "c"
        );
        let local = json!({"device": {"backend": {"type": "localfs", "config": {"dir": "/b"}}}});
        assert!(S3Config::from_nydusd(&local).unwrap().is_none());
        let typo = json!({"device": {"backend": {"type": "s3", "config": {"buckt": "b"}}}});
        let e = S3Config::from_nydusd(&typo).unwrap_err().to_string();
        assert!(e.contains("buckt"), "{e}");
    }

    #[test]
    fn debug_never_shows_keys() {
        let mut c = cfg("b");
        c.access_key_id = "AKIDVISIBLE".into();
        c.access_key_secret = "SECRETVISIBLE".into();
        c.session_token = "TOKENVISIBLE".into();
        let text = format!("{c:?}");
        assert!(!text.contains("VISIBLE"), "{text}");
        let r = c.resolve_with(&env_of(&[])).unwrap();
        let text = format!("{r:?}");
        assert!(
            !text.contains("VISIBLE") && text.contains("signed: true"),
            "{text}"
        );
    }
}
