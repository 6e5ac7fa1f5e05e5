//! Blobs in an S3 bucket (AWS, or any server that speaks S3 and checks SigV4): ranged GETs
//! for the fetch chain, PUTs (multipart for large blobs) for `convert --backend s3`.
//!
//! Object key = `object_prefix` + blob id. Requests are signed with `aws-sigv4` (never by
//! hand: canonicalisation is where home-made signers go wrong) and sent with a blocking
//! `reqwest` client, because the fetch chain calls the backend from FUSE worker threads
//! that may block. Every request has a timeout and a bounded number of retries with
//! exponential backoff, so a dead origin becomes an error (EIO for the reader) in bounded
//! time, never a hang.

mod config;
mod error;
mod upload;

pub use config::{Addressing, CaSource, Resolved, S3Config};
pub use error::S3Error;

use super::BlobBackend;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::blocking::{Client, Response};
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::Method;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tracing::subscriber::NoSubscriber;

/// Characters S3 keeps as they are in a key's path: RFC 3986's unreserved set, and `/`.
const KEY_CHARS: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');
/// The same for query values, where `/` must be encoded too.
const QUERY_CHARS: &AsciiSet = &KEY_CHARS.add(b'/');
/// The longest pause between two attempts, whatever the backoff has grown to.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How much of an error body is read for its code and message.
const ERROR_BODY_LIMIT: u64 = 64 << 10;

/// An S3 bucket as a blob origin and upload destination.
pub struct S3Backend {
    s3: Resolved,
    client: Client,
    /// Set once a server has ignored a Range header, so the warning is logged once.
    warned_full_body: AtomicBool,
}

/// A request body, and how it enters the signature.
pub(crate) enum Payload<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// A file streamed from disk, with the sha256 (hex) of its bytes computed beforehand so
    /// that the server checks the upload end to end.
    File {
        path: &'a Path,
        len: u64,
        sha256: &'a str,
    },
}

/// One request, before it is signed.
pub(crate) struct Request<'a> {
    /// What the logs and errors call it (`GET`, `UploadPart`...).
    pub op: &'static str,
    pub method: Method,
    pub key: &'a str,
    pub query: &'a [(&'a str, &'a str)],
    pub headers: Vec<(&'static str, String)>,
    pub payload: Payload<'a>,
}

impl S3Backend {
    /// A backend for `cfg`, with the process environment filling what it leaves empty.
    pub fn new(cfg: &S3Config) -> Result<S3Backend, S3Error> {
        S3Backend::from_resolved(cfg.resolve()?)
    }

    pub fn from_resolved(s3: Resolved) -> Result<S3Backend, S3Error> {
        let client = match &s3.ca_file {
            None => build_client(&s3, None)?,
            Some((path, source)) => match build_client(&s3, Some(path)) {
                Err(e) if *source == CaSource::Env => {
                    tracing::warn!(bundle = %path.display(), error = %e,
                        "AWS_CA_BUNDLE unusable; using the built-in CA roots only");
                    build_client(&s3, None)?
                }
                other => other?,
            },
        };
        tracing::debug!(location = %location(&s3), endpoint = %s3.base, path_style = s3.path_style,
            signed = s3.credentials.is_some(), "S3 origin");
        Ok(S3Backend {
            s3,
            client,
            warned_full_body: AtomicBool::new(false),
        })
    }

    /// `s3://BUCKET/PREFIX`, for logs and the node's mount list.
    pub fn location(&self) -> String {
        location(&self.s3)
    }

    pub fn settings(&self) -> &Resolved {
        &self.s3
    }

    /// The object key of a blob. Blob ids are digests; anything empty or with control
    /// characters is refused before it becomes a request.
    pub fn key(&self, blob_id: &str) -> Result<String, S3Error> {
        if blob_id.is_empty() || blob_id.chars().any(|c| c.is_control()) {
            return Err(S3Error::Config(format!("bad blob id {blob_id:?}")));
        }
        Ok(format!("{}{blob_id}", self.s3.prefix))
    }

    /// `s3://bucket/key`: how errors name an object.
    pub(crate) fn target(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.s3.bucket)
    }

    /// The request URL of `key` (path-style or virtual-hosted) with `query`.
    pub(crate) fn url(&self, key: &str, query: &[(&str, &str)]) -> reqwest::Url {
        let key = utf8_percent_encode(key, KEY_CHARS);
        let mut url = self.s3.base.clone();
        if self.s3.path_style {
            let bucket = utf8_percent_encode(&self.s3.bucket, QUERY_CHARS);
            url.set_path(&format!("/{bucket}/{key}"));
        } else {
            let host = format!("{}.{}", self.s3.bucket, url.host_str().unwrap_or_default());
            // The bucket name was checked to have no '/'; a name that is no valid host
            // part fails at send time with the URL in the message.
            let _ = url.set_host(Some(&host));
            url.set_path(&format!("/{key}"));
        }
        if !query.is_empty() {
            let q: Vec<String> = query
                .iter()
                .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, QUERY_CHARS)))
                .collect();
            url.set_query(Some(&q.join("&")));
        }
        url
    }

    /// Signs and sends one attempt of `req`. The result is whatever the server said;
    /// statuses are the caller's to judge.
    pub(crate) fn send(&self, req: &Request) -> Result<Response, S3Error> {
        let url = self.url(req.key, req.query);
        let target = self.target(req.key);
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        let mut headers: Vec<(String, String)> = vec![("host".into(), host)];
        headers.extend(req.headers.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let body = match &req.payload {
            Payload::Empty => SignableBody::Bytes(&[]),
            Payload::Bytes(b) => SignableBody::Bytes(b),
            Payload::File { sha256, .. } => SignableBody::Precomputed(sha256.to_string()),
        };
        self.sign(req, &url, &target, &mut headers, body)?;

        let mut rb = self.client.request(req.method.clone(), url);
        for (name, value) in &headers {
            let bad = |e: String| S3Error::Sign {
                op: req.op,
                target: target.clone(),
                detail: format!("header {name}: {e}"),
            };
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(e.to_string()))?;
            let mut value = HeaderValue::from_str(value).map_err(|e| bad(e.to_string()))?;
            // Whatever logs requests must not print the signature or the session token.
            value.set_sensitive(matches!(
                name.as_str(),
                "authorization" | "x-amz-security-token"
            ));
            rb = rb.header(name, value);
        }
        rb = match &req.payload {
            Payload::Empty => rb,
            Payload::Bytes(b) => rb.body(b.to_vec()),
            Payload::File { path, len, .. } => {
                let f = std::fs::File::open(path).map_err(|e| S3Error::File {
                    path: path.display().to_string(),
                    source: e,
                })?;
                rb.body(reqwest::blocking::Body::sized(f, *len))
            }
        };
        let started = Instant::now();
        let result = rb.send();
        match &result {
            Ok(r) => tracing::debug!(op = req.op, target = %target, status = r.status().as_u16(),
                ms = started.elapsed().as_millis() as u64, "S3 request"),
            Err(e) => tracing::debug!(op = req.op, target = %target, error = %error::describe(e),
                ms = started.elapsed().as_millis() as u64, "S3 request failed"),
        }
        result.map_err(|e| S3Error::Transport {
            op: req.op,
            target,
            timeout: e.is_timeout(),
            detail: error::describe(&e),
        })
    }

    /// Adds SigV4 headers (`authorization`, `x-amz-date`, `x-amz-content-sha256`, and the
    /// session token if any); without credentials the request goes unsigned.
    fn sign(
        &self,
        req: &Request,
        url: &reqwest::Url,
        target: &str,
        headers: &mut Vec<(String, String)>,
        body: SignableBody,
    ) -> Result<(), S3Error> {
        let Some(creds) = &self.s3.credentials else {
            return Ok(());
        };
        let fail = |detail: String| S3Error::Sign {
            op: req.op,
            target: target.to_string(),
            detail,
        };
        let mut settings = SigningSettings::default();
        // S3 wants the path as sent (no double encoding, no dot-segment removal) and the
        // payload hash in its own header.
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let identity = creds.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.s3.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| fail(e.to_string()))?
            .into();
        let signable = SignableRequest::new(
            req.method.as_str(),
            url.as_str(),
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            body,
        )
        .map_err(|e| fail(e.to_string()))?;
        // aws-sigv4 traces its parameters, access key id included: run it with no
        // subscriber so that no log level ever shows a credential.
        let signed =
            tracing::subscriber::with_default(NoSubscriber::default(), || sign(signable, &params));
        let (instructions, _) = signed.map_err(|e| fail(e.to_string()))?.into_parts();
        headers.extend(
            instructions
                .headers()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        Ok(())
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retry budget is spent;
    /// sleeps with exponential backoff and jitter between attempts.
    pub(crate) fn with_retries<T>(
        &self,
        op: &'static str,
        target: &str,
        mut attempt: impl FnMut() -> Result<T, S3Error>,
    ) -> Result<T, S3Error> {
        let mut delay = self.s3.retry_backoff;
        let attempts = self.s3.retry_limit + 1;
        for n in 1..=attempts {
            match attempt() {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && n < attempts => {
                    let pause = jitter(delay);
                    tracing::warn!(op, target, attempt = n, of = attempts, error = %e,
                        retry_in_ms = pause.as_millis() as u64, "S3 request failed; retrying");
                    std::thread::sleep(pause);
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
                Err(e) if n > 1 => {
                    return Err(S3Error::GaveUp {
                        attempts: n,
                        last: Box::new(e),
                    })
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// The error for a response with a failing status, with S3's code and message from
    /// its XML body. Other parts of the body (S3 echoes the string to sign and the key
    /// id for signature errors) are left out on purpose.
    pub(crate) fn status_error(&self, op: &'static str, target: &str, resp: Response) -> S3Error {
        let status = resp.status().as_u16();
        let mut body = String::new();
        let _ = resp.take(ERROR_BODY_LIMIT).read_to_string(&mut body);
        error_from_body(op, target, status, &body)
    }

    /// One attempt of a ranged GET.
    fn get_once(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>, S3Error> {
        let target = self.target(key);
        let end = offset + len as u64 - 1;
        let resp = self.send(&Request {
            op: "GET",
            method: Method::GET,
            key,
            query: &[],
            headers: vec![("range", format!("bytes={offset}-{end}"))],
            payload: Payload::Empty,
        })?;
        let (skip, whole) = match resp.status().as_u16() {
            206 => {
                let range = resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !range.starts_with(&format!("bytes {offset}-")) {
                    return Err(S3Error::Protocol {
                        op: "GET",
                        target,
                        detail: format!("asked for bytes {offset}-{end}, got range {range:?}"),
                    });
                }
                (0, false)
            }
            200 => {
                if !self.warned_full_body.swap(true, Ordering::Relaxed) {
                    tracing::warn!(target = %target, "the S3 server ignores Range: reads download from the blob's start");
                }
                (offset, true)
            }
            _ => return Err(self.status_error("GET", &target, resp)),
        };
        let want = skip + len as u64;
        let mut buf = Vec::with_capacity(want.min(64 << 20) as usize);
        resp.take(want + 1)
            .read_to_end(&mut buf)
            .map_err(|e| S3Error::Transport {
                op: "GET",
                target: target.clone(),
                timeout: is_timeout(&e),
                detail: format!("reading the body: {e}"),
            })?;
        if (buf.len() as u64) < want {
            return Err(S3Error::ShortRead {
                op: "GET",
                target,
                expected: len as u64,
                got: (buf.len() as u64).saturating_sub(skip),
            });
        }
        if buf.len() as u64 > want && !whole {
            return Err(S3Error::Protocol {
                op: "GET",
                target,
                detail: format!("more than the {len} bytes asked for"),
            });
        }
        buf.truncate(want as usize);
        buf.drain(..skip as usize);
        Ok(buf)
    }

    /// `len` bytes of blob `blob_id` at `offset`, retried within the budget.
    pub fn get_range(&self, blob_id: &str, offset: u64, len: usize) -> Result<Vec<u8>, S3Error> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let key = self.key(blob_id)?;
        self.with_retries("GET", &self.target(&key), || {
            self.get_once(&key, offset, len)
        })
    }
}

impl BlobBackend for S3Backend {
    fn read_range(&self, blob_id: &str, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        Ok(self.get_range(blob_id, offset, len)?)
    }

    fn kind(&self) -> &'static str {
        "s3"
    }
}

/// The HTTP client for `s3`, trusting the CA certificates in `ca_file` beside the
/// built-in roots.
fn build_client(s3: &Resolved, ca_file: Option<&Path>) -> Result<Client, S3Error> {
    let mut builder = Client::builder();
    if let Some(path) = ca_file {
        let bad = |e: String| S3Error::Config(format!("CA bundle {}: {e}", path.display()));
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(error::describe(&e)))?;
        if certs.is_empty() {
            return Err(bad("no certificates in it".into()));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .timeout(s3.timeout)
        .connect_timeout(s3.connect_timeout)
        .danger_accept_invalid_certs(s3.skip_verify)
        // A redirect (wrong region) would carry a signature for the wrong host: report it
        // instead, with S3's message naming the right endpoint.
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_keepalive(Duration::from_secs(30))
        .build()
        .map_err(|e| S3Error::Config(format!("HTTP client: {}", error::describe(&e))))
}

fn location(s3: &Resolved) -> String {
    format!("s3://{}/{}", s3.bucket, s3.prefix)
}

/// The error for `status` with S3's XML error `body`.
fn error_from_body(op: &'static str, target: &str, status: u16, body: &str) -> S3Error {
    S3Error::Status {
        op,
        target: target.to_string(),
        status,
        code: error::xml_text(body, "Code"),
        message: error::xml_text(body, "Message"),
    }
}

/// `delay` plus up to half of it again, so that readers that failed together do not
/// retry together. The clock's nanoseconds are random enough for that.
fn jitter(delay: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    let half = (delay.as_millis() as u64 / 2).max(1);
    delay + Duration::from_millis(nanos % half)
}

/// Whether an error from reading a body is reqwest's timeout.
fn is_timeout(e: &std::io::Error) -> bool {
    if e.kind() == std::io::ErrorKind::TimedOut {
        return true;
    }
    let mut source = e.get_ref().map(|s| s as &(dyn std::error::Error + 'static));
    while let Some(s) = source {
        if s.downcast_ref::<reqwest::Error>()
            .is_some_and(|r| r.is_timeout())
        {
            return true;
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod tests;
