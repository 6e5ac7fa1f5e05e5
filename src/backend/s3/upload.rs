//! Putting blobs into the bucket (`convert --backend s3`): a HEAD first, so a blob that is
//! already there is not sent again (blob ids are content digests, so same key and same
//! size means same bytes); one PUT for small blobs; a multipart upload for large ones, so
//! that a fault costs one part, not the whole blob, and no request is larger than a part.

use super::error::{xml_escape, xml_text};
use super::{Payload, Request, S3Backend, S3Error};
use crate::backend::BlobUpload;
use reqwest::Method;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

impl S3Backend {
    /// The size of the object at `key`, or `None` if there is none.
    pub fn head(&self, key: &str) -> Result<Option<u64>, S3Error> {
        let target = self.target(key);
        self.with_retries("HEAD", &target, || {
            let resp = self.send(&Request {
                op: "HEAD",
                method: Method::HEAD,
                key,
                query: &[],
                headers: Vec::new(),
                payload: Payload::Empty,
            })?;
            match resp.status().as_u16() {
                // The header, not `content_length()`: a HEAD answer has no body, so the
                // client reports its (empty) body's length.
                200 => resp
                    .headers()
                    .get(reqwest::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .map(Some)
                    .ok_or_else(|| S3Error::Protocol {
                        op: "HEAD",
                        target: target.clone(),
                        detail: "no Content-Length".into(),
                    }),
                404 => Ok(None),
                _ => Err(self.explain_head(key, self.status_error("HEAD", &target, resp))),
            }
        })
    }

    /// A HEAD answer has no body, so a refused HEAD says only "403". A one-byte GET of the
    /// same object gets S3's reason (`SignatureDoesNotMatch`, `InvalidAccessKeyId`...),
    /// which is what a user needs to fix the keys. Only on this error path.
    fn explain_head(&self, key: &str, head: S3Error) -> S3Error {
        if !matches!(head.status(), Some(401 | 403)) {
            return head;
        }
        match self.get_once(key, 0, 1) {
            Err(e @ S3Error::Status { code: Some(_), .. }) => e,
            _ => head,
        }
    }

    /// Uploads the file at `path` as blob `blob_id`. Returns whether bytes were sent
    /// (`false`: the bucket already had an object of that size under that key).
    pub fn put_blob(&self, blob_id: &str, path: &Path) -> Result<bool, S3Error> {
        let key = self.key(blob_id)?;
        let file_err = |e: std::io::Error| S3Error::File {
            path: path.display().to_string(),
            source: e,
        };
        let len = std::fs::metadata(path).map_err(file_err)?.len();
        match self.head(&key)? {
            Some(size) if size == len => {
                tracing::info!(target = %self.target(&key), bytes = len, "blob already in the bucket; not uploading");
                return Ok(false);
            }
            Some(size) => {
                tracing::warn!(target = %self.target(&key), have = size, new = len, "object of another size under this key; replacing it")
            }
            None => {}
        }
        if len > self.settings().multipart_threshold {
            self.put_multipart(&key, path, len)?;
        } else {
            self.put_single(&key, path, len)?;
        }
        tracing::info!(target = %self.target(&key), bytes = len, "blob uploaded");
        Ok(true)
    }

    /// One PUT, the body streamed from the file, its sha256 in the signature.
    fn put_single(&self, key: &str, path: &Path, len: u64) -> Result<(), S3Error> {
        let sha256 = file_sha256(path)?;
        let target = self.target(key);
        self.with_retries("PUT", &target, || {
            let resp = self.send(&Request {
                op: "PUT",
                method: Method::PUT,
                key,
                query: &[],
                headers: vec![("content-type", "application/octet-stream".into())],
                payload: Payload::File {
                    path,
                    len,
                    sha256: &sha256,
                },
            })?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(self.status_error("PUT", &target, resp))
            }
        })
    }

    /// CreateMultipartUpload, the parts in order, CompleteMultipartUpload; an upload that
    /// fails is aborted so the bucket does not keep (and bill) its parts.
    fn put_multipart(&self, key: &str, path: &Path, len: u64) -> Result<(), S3Error> {
        let target = self.target(key);
        let part_size = self.settings().part_size;
        let parts = len.div_ceil(part_size);
        if parts > super::config::MAX_PARTS {
            return Err(S3Error::Config(format!(
                "{target}: {len} bytes need {parts} parts of {part_size} bytes; S3 allows {}: raise `part_size`",
                super::config::MAX_PARTS
            )));
        }
        let upload_id = self.with_retries("CreateMultipartUpload", &target, || {
            let resp = self.send(&Request {
                op: "CreateMultipartUpload",
                method: Method::POST,
                key,
                query: &[("uploads", "")],
                headers: vec![("content-type", "application/octet-stream".into())],
                payload: Payload::Empty,
            })?;
            let body = self.success_body("CreateMultipartUpload", &target, resp)?;
            xml_text(&body, "UploadId").ok_or_else(|| S3Error::Protocol {
                op: "CreateMultipartUpload",
                target: target.clone(),
                detail: "no UploadId in the answer".into(),
            })
        })?;
        tracing::debug!(target = %target, parts, part_size, "multipart upload started");
        let result = self.send_parts(key, path, len, &upload_id);
        if result.is_err() {
            self.abort(key, &upload_id);
        }
        result
    }

    fn send_parts(&self, key: &str, path: &Path, len: u64, upload_id: &str) -> Result<(), S3Error> {
        let target = self.target(key);
        let part_size = self.settings().part_size;
        let file = File::open(path).map_err(|e| S3Error::File {
            path: path.display().to_string(),
            source: e,
        })?;
        let mut etags = Vec::new();
        let mut buf = Vec::new();
        let mut offset = 0u64;
        while offset < len {
            let n = part_size.min(len - offset);
            buf.resize(n as usize, 0);
            file.read_exact_at(&mut buf, offset)
                .map_err(|e| S3Error::File {
                    path: path.display().to_string(),
                    source: e,
                })?;
            let number = (etags.len() + 1).to_string();
            let etag = self.with_retries("UploadPart", &target, || {
                let resp = self.send(&Request {
                    op: "UploadPart",
                    method: Method::PUT,
                    key,
                    query: &[("partNumber", &number), ("uploadId", upload_id)],
                    headers: Vec::new(),
                    payload: Payload::Bytes(&buf),
                })?;
                if !resp.status().is_success() {
                    return Err(self.status_error("UploadPart", &target, resp));
                }
                resp.headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .ok_or_else(|| S3Error::Protocol {
                        op: "UploadPart",
                        target: target.clone(),
                        detail: format!("no ETag for part {number}"),
                    })
            })?;
            etags.push(etag);
            offset += n;
        }
        let mut doc = String::from("<CompleteMultipartUpload>");
        for (i, etag) in etags.iter().enumerate() {
            doc.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
                i + 1,
                xml_escape(etag)
            ));
        }
        doc.push_str("</CompleteMultipartUpload>");
        let completed = self.with_retries("CompleteMultipartUpload", &target, || {
            let resp = self.send(&Request {
                op: "CompleteMultipartUpload",
                method: Method::POST,
                key,
                query: &[("uploadId", upload_id)],
                headers: vec![("content-type", "application/xml".into())],
                payload: Payload::Bytes(doc.as_bytes()),
            })?;
            self.success_body("CompleteMultipartUpload", &target, resp)
                .map(drop)
        });
        match completed {
            // A retried Complete whose first try went through gets NoSuchUpload: the object
            // being there in full is what counts.
            Err(e) if self.head(key).ok().flatten() == Some(len) => {
                tracing::debug!(target = %target, error = %e, "complete failed but the object is whole");
                Ok(())
            }
            other => other,
        }
    }

    /// Best effort: a failed abort leaves parts that a bucket lifecycle rule cleans up.
    fn abort(&self, key: &str, upload_id: &str) {
        let target = self.target(key);
        let result = self.send(&Request {
            op: "AbortMultipartUpload",
            method: Method::DELETE,
            key,
            query: &[("uploadId", upload_id)],
            headers: Vec::new(),
            payload: Payload::Empty,
        });
        match result {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                tracing::warn!(target = %target, status = r.status().as_u16(), "aborting the multipart upload failed")
            }
            Err(e) => {
                tracing::warn!(target = %target, error = %e, "aborting the multipart upload failed")
            }
        }
    }

    /// The body of a 2xx answer. S3 may answer 200 and still put an `<Error>` in the body
    /// (CompleteMultipartUpload does): that is an error too.
    fn success_body(
        &self,
        op: &'static str,
        target: &str,
        resp: reqwest::blocking::Response,
    ) -> Result<String, S3Error> {
        let status = resp.status().as_u16();
        if !resp.status().is_success() {
            return Err(self.status_error(op, target, resp));
        }
        let body = resp.text().map_err(|e| S3Error::Transport {
            op,
            target: target.to_string(),
            timeout: e.is_timeout(),
            detail: super::error::describe(&e),
        })?;
        if body.contains("<Error>") {
            return Err(super::error_from_body(op, target, status, &body));
        }
        Ok(body)
    }
}

impl BlobUpload for S3Backend {
    fn upload(&self, blob_id: &str, path: &Path) -> std::io::Result<()> {
        self.put_blob(blob_id, path).map(drop).map_err(Into::into)
    }

    fn kind(&self) -> &'static str {
        "s3"
    }
}

/// The sha256 (hex) of a file, streamed.
fn file_sha256(path: &Path) -> Result<String, S3Error> {
    let err = |e| S3Error::File {
        path: path.display().to_string(),
        source: e,
    };
    let mut f = File::open(path).map_err(err)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
