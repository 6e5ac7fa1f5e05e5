//! The OCI distribution API of one registry: manifests (get, put), blobs (ranged reads,
//! resumable streams, existence checks, chunked uploads). Every call is bounded: an attempt
//! gets at most [`RegistryOptions::timeout`], a call at most [`RegistryOptions::deadline`]
//! and [`RegistryOptions::retries`] retries, after which it fails with an error that says
//! what was tried. Content fetched by digest is checked against it.

use super::auth::{repo_scope, Credentials};
use super::status::check;
use super::stream::BlobStream;
use super::transport::{describe, ClientStats, Failure, Req, Transport};
use super::{sha256_digest, OciError, Reference};
use reqwest::blocking::Response;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, LOCATION};
use reqwest::{Method, StatusCode};
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

/// How to reach a registry and how long to try.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Speak plain HTTP (loopback and lab registries).
    pub plain_http: bool,
    /// Accept any TLS certificate (self-signed lab registries).
    pub insecure: bool,
    /// Explicit credentials; `None` looks in the environment and docker's config.
    pub credentials: Option<Credentials>,
    /// Longest wait of one attempt (connect to last byte for ranged reads; between two
    /// reads for streams).
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
    /// Longest a call may take, retries included.
    pub deadline: Duration,
    /// First pause between attempts; doubles up to 2 s.
    pub backoff: Duration,
    /// Upload chunk size (bytes per PATCH).
    pub chunk_bytes: usize,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            plain_http: false,
            insecure: false,
            credentials: None,
            timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(5),
            retries: 4,
            deadline: Duration::from_secs(60),
            backoff: Duration::from_millis(100),
            chunk_bytes: 8 << 20,
        }
    }
}

/// Media types a manifest GET accepts.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// Largest manifest or config read into memory.
const MAX_DOCUMENT: u64 = 16 << 20;

/// A manifest or index as the registry returned it.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub media_type: String,
    pub digest: String,
    pub bytes: Vec<u8>,
}

pub struct Client {
    t: Transport,
}

impl Client {
    /// A client of the registry at `host` (`host[:port]`).
    pub fn new(host: &str, opts: RegistryOptions) -> Result<Client, OciError> {
        Ok(Client {
            t: Transport::new(host, opts)?,
        })
    }

    pub fn for_reference(r: &Reference, opts: RegistryOptions) -> Result<Client, OciError> {
        Client::new(r.api_host(), opts)
    }

    pub fn host(&self) -> &str {
        &self.t.host
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.t.opts
    }

    pub fn stats(&self) -> ClientStats {
        self.t.stats()
    }

    /// `GET /v2/` : whether the registry answers and accepts our credentials.
    pub fn ping(&self) -> Result<(), OciError> {
        let op = format!("GET {}/v2/", self.t.host);
        self.t.retrying(&op, |budget| {
            let req = get("/v2/".into(), "");
            check(self.t.send(&req, Some(budget))?, &op).map(drop)
        })
    }

    pub fn get_manifest(&self, repo: &str, reference: &str) -> Result<Fetched, OciError> {
        let op = format!("GET manifest {}/{repo}:{reference}", self.t.host);
        let scope = repo_scope(repo, false);
        let fetched = self.t.retrying(&op, |budget| {
            let mut req = get(format!("/v2/{repo}/manifests/{reference}"), &scope);
            req.headers.push(("accept", MANIFEST_ACCEPT.into()));
            let resp = check(self.t.send(&req, Some(budget))?, &op)?;
            let media_type = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
                .unwrap_or_default();
            let bytes = read_all(resp, MAX_DOCUMENT, &op, budget, &self.t)?;
            Ok((media_type, bytes))
        })?;
        let (mut media_type, bytes) = fetched;
        let digest = sha256_digest(&bytes);
        if reference.starts_with("sha256:") && digest != reference {
            return Err(OciError::invalid(
                op,
                format!("the registry sent content with digest {digest}"),
            ));
        }
        if media_type.is_empty() || media_type == "application/json" {
            media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("mediaType")?.as_str().map(str::to_string))
                .unwrap_or_default();
        }
        Ok(Fetched {
            media_type,
            digest,
            bytes,
        })
    }

    /// Pushes a manifest (or index) under `reference` (a tag or its digest); returns its
    /// digest.
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<String, OciError> {
        let op = format!("PUT manifest {}/{repo}:{reference}", self.t.host);
        let scope = repo_scope(repo, true);
        self.t.retrying(&op, |budget| {
            let req = Req {
                method: Method::PUT,
                url: format!("/v2/{repo}/manifests/{reference}"),
                headers: vec![("content-type", media_type.to_string())],
                body: Some(bytes),
                scope: &scope,
            };
            check(self.t.send(&req, Some(budget))?, &op).map(drop)
        })?;
        Ok(sha256_digest(bytes))
    }

    /// A whole (small) blob, checked against its digest.
    pub fn get_blob(&self, repo: &str, digest: &str, max: u64) -> Result<Vec<u8>, OciError> {
        let op = format!("GET blob {}/{repo}@{digest}", self.t.host);
        let scope = repo_scope(repo, false);
        let bytes = self.t.retrying(&op, |budget| {
            let req = get(format!("/v2/{repo}/blobs/{digest}"), &scope);
            let resp = check(self.t.send(&req, Some(budget))?, &op)?;
            read_all(resp, max, &op, budget, &self.t)
        })?;
        let got = sha256_digest(&bytes);
        if got != digest {
            return Err(OciError::invalid(op, format!("content has digest {got}")));
        }
        Ok(bytes)
    }

    /// `len` bytes at `offset` of a blob, in one ranged GET per attempt. A short or
    /// mis-placed answer is retried like a reset; the result is exactly `len` bytes.
    pub fn read_blob_range(
        &self,
        repo: &str,
        digest: &str,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, OciError> {
        let mut out = Vec::with_capacity(len);
        self.read_blob_range_streamed(repo, digest, offset, len, &mut |piece| {
            out.extend_from_slice(piece)
        })?;
        Ok(out)
    }

    /// [`Client::read_blob_range`] handing the bytes to `sink` as they arrive, in order,
    /// each byte once: a retry asks only for what is still missing. On an error `sink`
    /// may have had part of the range.
    pub fn read_blob_range_streamed(
        &self,
        repo: &str,
        digest: &str,
        offset: u64,
        len: usize,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), OciError> {
        if len == 0 {
            return Ok(());
        }
        let op = format!(
            "GET blob {}/{repo}@{} bytes {offset}+{len}",
            self.t.host,
            short(digest)
        );
        let scope = repo_scope(repo, false);
        let end = offset + len as u64 - 1;
        let mut done = 0usize;
        self.t.retrying(&op, |budget| {
            let started = Instant::now();
            let from = offset + done as u64;
            let mut req = get(format!("/v2/{repo}/blobs/{digest}"), &scope);
            req.headers.push(("range", format!("bytes={from}-{end}")));
            let resp = check(self.t.send(&req, Some(budget))?, &op)?;
            let mut resp = match resp.status() {
                StatusCode::PARTIAL_CONTENT => {
                    let start = content_range_start(&resp);
                    if start != Some(from) {
                        return Err(Failure::Transient(format!(
                            "the answer starts at {start:?}, not {from}"
                        )));
                    }
                    resp
                }
                // The origin ignored the range: skip to it (correct, if wasteful).
                _ => {
                    let mut r = resp;
                    skip(&mut r, from, &op)?;
                    r
                }
            };
            let deadline = started + budget;
            read_streamed(&mut resp, len, &mut done, deadline, &self.t, sink)
        })
    }

    /// A blob as a stream that resumes with a ranged GET where a broken connection left
    /// off. `size` is the blob's size from its descriptor; the stream ends there.
    pub fn blob_stream<'a>(&'a self, repo: &str, digest: &str, size: u64) -> BlobStream<'a> {
        BlobStream::new(self, repo, digest, size)
    }

    pub(super) fn transport(&self) -> &Transport {
        &self.t
    }

    /// The blob's size if the repository has it.
    pub fn blob_exists(&self, repo: &str, digest: &str) -> Result<Option<u64>, OciError> {
        let op = format!("HEAD blob {}/{repo}@{}", self.t.host, short(digest));
        let scope = repo_scope(repo, true);
        self.t.retrying(&op, |budget| {
            let mut req = get(format!("/v2/{repo}/blobs/{digest}"), &scope);
            req.method = Method::HEAD;
            let resp = self.t.send(&req, Some(budget))?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let resp = check(resp, &op)?;
            Ok(Some(
                resp.headers()
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(0),
            ))
        })
    }

    /// Uploads a small blob in one request (POST, then PUT with the bytes).
    pub fn upload_bytes(&self, repo: &str, digest: &str, bytes: &[u8]) -> Result<(), OciError> {
        if self.blob_exists(repo, digest)?.is_some() {
            return Ok(());
        }
        let op = format!("upload blob {}/{repo}@{}", self.t.host, short(digest));
        let scope = repo_scope(repo, true);
        self.t.retrying(&op, |budget| {
            let location = self.start_upload(repo, &scope, &op, budget)?;
            let req = Req {
                method: Method::PUT,
                url: with_digest(&location, digest),
                headers: vec![("content-type", "application/octet-stream".into())],
                body: Some(bytes),
                scope: &scope,
            };
            check(self.t.send(&req, Some(budget))?, &op).map(drop)
        })
    }

    /// Uploads the blob file at `path` in chunks (POST, PATCH each chunk with its
    /// Content-Range, PUT with the digest), unless the repository has it already. A failed
    /// upload starts over, within the retry budget. `progress` gets the bytes sent.
    pub fn upload_file(
        &self,
        repo: &str,
        digest: &str,
        path: &Path,
        progress: &dyn Fn(u64),
    ) -> Result<(), OciError> {
        if self.blob_exists(repo, digest)?.is_some() {
            return Ok(());
        }
        let op = format!("upload blob {}/{repo}@{}", self.t.host, short(digest));
        let scope = repo_scope(repo, true);
        let chunk = self.t.opts.chunk_bytes.max(1 << 16);
        let mut buf = vec![0u8; chunk];
        self.t.retrying_long(&op, |budget| {
            let mut file = std::fs::File::open(path).map_err(|e| OciError::io(path, e))?;
            let mut location = self.start_upload(repo, &scope, &op, budget)?;
            let mut sent = 0u64;
            loop {
                let n = read_full(&mut file, &mut buf).map_err(|e| OciError::io(path, e))?;
                if n == 0 {
                    break;
                }
                let req = Req {
                    method: Method::PATCH,
                    url: location.clone(),
                    headers: vec![
                        ("content-type", "application/octet-stream".into()),
                        ("content-range", format!("{sent}-{}", sent + n as u64 - 1)),
                    ],
                    body: Some(&buf[..n]),
                    scope: &scope,
                };
                let resp = check(self.t.send(&req, Some(budget))?, &op)?;
                location = next_location(&resp, &location);
                sent += n as u64;
                progress(n as u64);
            }
            let req = Req {
                method: Method::PUT,
                url: with_digest(&location, digest),
                headers: vec![("content-length", "0".into())],
                body: None,
                scope: &scope,
            };
            check(self.t.send(&req, Some(budget))?, &op).map(drop)
        })
    }

    fn start_upload(
        &self,
        repo: &str,
        scope: &str,
        op: &str,
        budget: Duration,
    ) -> Result<String, Failure> {
        let req = Req {
            method: Method::POST,
            url: format!("/v2/{repo}/blobs/uploads/"),
            headers: vec![("content-length", "0".into())],
            body: None,
            scope,
        };
        let resp = check(self.t.send(&req, Some(budget))?, op)?;
        let base = format!("{}/v2/{repo}/blobs/uploads/", self.t.base);
        let loc = next_location(&resp, "");
        if loc.is_empty() {
            return Err(Failure::Fatal(OciError::invalid(
                op,
                "the registry started an upload without a Location",
            )));
        }
        Ok(absolute(&base, &loc))
    }
}

pub(super) fn get(url: String, scope: &str) -> Req<'_> {
    Req {
        method: Method::GET,
        url,
        headers: Vec::new(),
        body: None,
        scope,
    }
}

/// The first 12 hex digits of a digest, for messages.
pub fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

pub(super) fn content_range_start(resp: &Response) -> Option<u64> {
    let v = resp.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    let range = v.trim().strip_prefix("bytes")?.trim();
    range.split('-').next()?.trim().parse().ok()
}

/// Reads `len` bytes of a body before `deadline`; fewer is a transient failure.
fn read_exact(
    resp: &mut Response,
    len: usize,
    deadline: Instant,
    t: &Transport,
) -> Result<Vec<u8>, Failure> {
    let mut out = vec![0u8; len];
    let mut got = 0;
    while got < len {
        if Instant::now() > deadline {
            return Err(Failure::Transient(format!(
                "timed out after {got} of {len} bytes"
            )));
        }
        match resp.read(&mut out[got..]) {
            Ok(0) => {
                return Err(Failure::Transient(format!(
                    "short read: the body ended after {got} of {len} bytes"
                )))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(Failure::Transient(format!(
                    "reading the body after {got} of {len} bytes: {}",
                    io_detail(&e)
                )))
            }
        }
    }
    t.counters
        .bytes_in
        .fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
    Ok(out)
}

/// Reads a body until `*done` reaches `len`, handing each piece to `sink` as it comes
/// and counting it in `*done`; fewer bytes before `deadline` is a transient failure.
fn read_streamed(
    resp: &mut Response,
    len: usize,
    done: &mut usize,
    deadline: Instant,
    t: &Transport,
    sink: &mut dyn FnMut(&[u8]),
) -> Result<(), Failure> {
    let mut buf = vec![0u8; (len - *done).min(STREAM_PIECE)];
    while *done < len {
        if Instant::now() > deadline {
            return Err(Failure::Transient(format!(
                "timed out after {} of {len} bytes",
                *done
            )));
        }
        let want = (len - *done).min(buf.len());
        match resp.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(Failure::Transient(format!(
                    "short read: the body ended after {} of {len} bytes",
                    *done
                )))
            }
            Ok(n) => {
                sink(&buf[..n]);
                *done += n;
                t.counters
                    .bytes_in
                    .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(Failure::Transient(format!(
                    "reading the body after {} of {len} bytes: {}",
                    *done,
                    io_detail(&e)
                )))
            }
        }
    }
    Ok(())
}

/// The most a streamed read hands over at once: small enough that a chunk's reader is
/// let go soon after its last byte arrives.
const STREAM_PIECE: usize = 64 << 10;

/// A whole body of at most `max` bytes, checked against Content-Length.
fn read_all(
    mut resp: Response,
    max: u64,
    op: &str,
    budget: Duration,
    t: &Transport,
) -> Result<Vec<u8>, Failure> {
    let started = Instant::now();
    let declared = resp.content_length();
    if let Some(n) = declared {
        if n > max {
            return Err(Failure::Fatal(OciError::invalid(
                op,
                format!("{n} bytes is more than the {max} allowed"),
            )));
        }
        return read_exact(&mut resp, n as usize, started + budget, t);
    }
    let mut out = Vec::new();
    (&mut resp)
        .take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| Failure::Transient(format!("reading the body: {}", io_detail(&e))))?;
    if out.len() as u64 > max {
        return Err(Failure::Fatal(OciError::invalid(
            op,
            format!("more than the {max} bytes allowed"),
        )));
    }
    Ok(out)
}

/// Discards `n` bytes of a body.
pub(super) fn skip(resp: &mut Response, n: u64, op: &str) -> Result<(), Failure> {
    let copied = std::io::copy(&mut resp.take(n), &mut std::io::sink())
        .map_err(|e| Failure::Transient(format!("{op}: {}", io_detail(&e))))?;
    if copied < n {
        return Err(Failure::Transient(format!(
            "short read: the body ended before offset {n}"
        )));
    }
    Ok(())
}

/// An I/O error from a reqwest body, described without a URL.
pub(super) fn io_detail(e: &std::io::Error) -> String {
    if let Some(r) = e.get_ref().and_then(|i| i.downcast_ref::<reqwest::Error>()) {
        return describe(r);
    }
    let t = e.to_string();
    if t.contains("://") {
        format!("{:?}", e.kind())
    } else {
        t
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn next_location(resp: &Response, fallback: &str) -> String {
    resp.headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|l| absolute(resp.url().as_str(), l))
        .unwrap_or_else(|| fallback.to_string())
}

fn absolute(base: &str, loc: &str) -> String {
    match reqwest::Url::parse(base).and_then(|b| b.join(loc)) {
        Ok(u) => u.to_string(),
        Err(_) => loc.to_string(),
    }
}

fn with_digest(location: &str, digest: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}
