//! Reading a whole blob front to back (a layer being converted) over a connection that may
//! break: each break resumes with a ranged GET from the byte where it stopped, so a reset
//! near the end of a large layer costs a retry, not the whole download.

use super::auth::repo_scope;
use super::client::{content_range_start, get, io_detail, short, skip, Client};
use super::status::check;
use super::transport::Failure;
use reqwest::blocking::Response;
use reqwest::StatusCode;
use std::io::Read;

/// A blob read front to back, resuming after breaks (see [`Client::blob_stream`]).
pub struct BlobStream<'a> {
    client: &'a Client,
    repo: String,
    digest: String,
    size: u64,
    pos: u64,
    resp: Option<Response>,
    /// Breaks since the last byte that arrived.
    stalls: u32,
}

impl<'a> BlobStream<'a> {
    pub(super) fn new(client: &'a Client, repo: &str, digest: &str, size: u64) -> Self {
        BlobStream {
            client,
            repo: repo.to_string(),
            digest: digest.to_string(),
            size,
            pos: 0,
            resp: None,
            stalls: 0,
        }
    }

    fn open(&mut self) -> std::io::Result<Response> {
        let t = self.client.transport();
        let op = format!(
            "GET blob {}/{}@{} from byte {}",
            t.host,
            self.repo,
            short(&self.digest),
            self.pos
        );
        let scope = repo_scope(&self.repo, false);
        let (pos, size) = (self.pos, self.size);
        let url = format!("/v2/{}/blobs/{}", self.repo, self.digest);
        t.retrying(&op, |_| {
            let mut req = get(url.clone(), &scope);
            req.headers
                .push(("range", format!("bytes={pos}-{}", size - 1)));
            let mut resp = check(t.send(&req, None)?, &op)?;
            if resp.status() == StatusCode::PARTIAL_CONTENT {
                if content_range_start(&resp) != Some(pos) {
                    return Err(Failure::Transient("the answer starts elsewhere".into()));
                }
            } else {
                skip(&mut resp, pos, &op)?;
            }
            Ok(resp)
        })
        .map_err(std::io::Error::from)
    }

    fn broke(&mut self, why: String) -> std::io::Result<()> {
        self.resp = None;
        self.stalls += 1;
        let t = self.client.transport();
        if self.stalls > t.opts.retries {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "GET blob {}/{}@{}: {why} at byte {} of {} ({} breaks without progress)",
                    t.host,
                    self.repo,
                    short(&self.digest),
                    self.pos,
                    self.size,
                    self.stalls
                ),
            ));
        }
        t.counters
            .retries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(repo = %self.repo, pos = self.pos, error = %why, "blob stream broke; resuming");
        std::thread::sleep(t.opts.backoff * self.stalls);
        Ok(())
    }
}

impl Read for BlobStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.pos >= self.size || buf.is_empty() {
                return Ok(0);
            }
            if self.resp.is_none() {
                self.resp = Some(self.open()?);
            }
            let want = buf.len().min((self.size - self.pos) as usize);
            let r = self.resp.as_mut().map(|r| r.read(&mut buf[..want]));
            match r {
                Some(Ok(0)) => self.broke("the body ended early".into())?,
                Some(Ok(n)) => {
                    self.pos += n as u64;
                    self.stalls = 0;
                    self.client
                        .transport()
                        .counters
                        .bytes_in
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    return Ok(n);
                }
                Some(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Some(Err(e)) => self.broke(io_detail(&e))?,
                None => unreachable!("opened above"),
            }
        }
    }
}
