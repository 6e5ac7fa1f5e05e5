//! What can go wrong talking to S3, typed so that the retry loop can tell a passing fault
//! (5xx, throttling, a reset, a body cut short) from a final one (bad keys, no such object),
//! and so that the reader's EIO comes with a log line that says which.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// The settings are unusable; nothing was sent.
    #[error("S3 config: {0}")]
    Config(String),
    /// The server answered with an error status. `code` and `message` come from S3's XML
    /// error body (`SignatureDoesNotMatch`, `NoSuchKey`, `SlowDown`...) when it has one.
    #[error("{op} {target}: HTTP {status}{}{}", code.as_ref().map(|c| format!(" {c}")).unwrap_or_default(), message.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    Status {
        op: &'static str,
        target: String,
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
    /// No answer: connect failure, timeout, reset, or the body broke off.
    #[error("{op} {target}: {detail}")]
    Transport {
        op: &'static str,
        target: String,
        detail: String,
        timeout: bool,
    },
    /// The body ended before the bytes asked for.
    #[error("{op} {target}: short body, {got} of {expected} bytes")]
    ShortRead {
        op: &'static str,
        target: String,
        expected: u64,
        got: u64,
    },
    /// The server's answer makes no sense (e.g. no upload id where one must be).
    #[error("{op} {target}: {detail}")]
    Protocol {
        op: &'static str,
        target: String,
        detail: String,
    },
    /// The request could not be signed.
    #[error("signing {op} {target}: {detail}")]
    Sign {
        op: &'static str,
        target: String,
        detail: String,
    },
    /// A local file (the blob being uploaded).
    #[error("{path}: {source}")]
    File { path: String, source: io::Error },
    /// The last error after every attempt of the budget failed.
    #[error("{last} (gave up after {attempts} attempts)")]
    GaveUp { attempts: u32, last: Box<S3Error> },
}

impl S3Error {
    /// Worth another attempt: the same request may well succeed in a moment.
    pub fn is_transient(&self) -> bool {
        match self {
            S3Error::Status { status, code, .. } => {
                *status >= 500
                    || *status == 429
                    || matches!(
                        code.as_deref(),
                        Some("RequestTimeout" | "SlowDown" | "InternalError")
                    )
            }
            S3Error::Transport { .. } | S3Error::ShortRead { .. } => true,
            _ => false,
        }
    }

    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            S3Error::Status { status, .. } => Some(*status),
            S3Error::GaveUp { last, .. } => last.status(),
            _ => None,
        }
    }

    /// S3's error code (`SignatureDoesNotMatch`, `NoSuchKey`...), if the server gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            S3Error::Status { code, .. } => code.as_deref(),
            S3Error::GaveUp { last, .. } => last.code(),
            _ => None,
        }
    }

    fn io_kind(&self) -> io::ErrorKind {
        match self {
            S3Error::Config(_) => io::ErrorKind::InvalidInput,
            S3Error::Status { status: 404, .. } => io::ErrorKind::NotFound,
            S3Error::Status {
                status: 401 | 403, ..
            } => io::ErrorKind::PermissionDenied,
            S3Error::Status { status: 416, .. } | S3Error::ShortRead { .. } => {
                io::ErrorKind::UnexpectedEof
            }
            S3Error::Transport { timeout: true, .. } => io::ErrorKind::TimedOut,
            S3Error::File { source, .. } => source.kind(),
            S3Error::GaveUp { last, .. } => last.io_kind(),
            _ => io::ErrorKind::Other,
        }
    }
}

impl From<S3Error> for io::Error {
    fn from(e: S3Error) -> io::Error {
        io::Error::new(e.io_kind(), e)
    }
}

/// A reqwest error with its causes ("error sending request ...: connection refused"):
/// reqwest's own `Display` stops at the outermost layer, which rarely says what happened.
/// Its URL has no secrets (requests are signed in headers, never in the query).
pub fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// The text of the first `<tag>...</tag>` in an S3 XML document, entities decoded. S3's
/// answers are small and flat; only a handful of their elements matter here.
pub fn xml_text(doc: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = doc.find(&open)? + open.len();
    let end = start + doc[start..].find(&close)?;
    Some(xml_unescape(&doc[start..end]))
}

fn xml_unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_fields() {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match the signature you provided.</Message><StringToSign>x</StringToSign></Error>"#;
        assert_eq!(
            xml_text(body, "Code").as_deref(),
            Some("SignatureDoesNotMatch")
        );
        assert!(xml_text(body, "Message")
            .unwrap()
            .starts_with("The request"));
        assert_eq!(xml_text(body, "UploadId"), None);
        assert_eq!(
            xml_text("<ETag>&quot;abc&quot;</ETag>", "ETag").as_deref(),
            Some("\"abc\"")
        );
        assert_eq!(xml_escape("\"a&b\""), "&quot;a&amp;b&quot;");
    }

    #[test]
    fn transient_or_final() {
        let status = |status, code: Option<&str>| S3Error::Status {
            op: "GET",
            target: "s3://b/k".into(),
            status,
            code: code.map(String::from),
            message: None,
        };
        assert!(status(503, Some("SlowDown")).is_transient());
        assert!(status(500, None).is_transient());
        assert!(status(400, Some("RequestTimeout")).is_transient());
        assert!(!status(403, Some("SignatureDoesNotMatch")).is_transient());
        assert!(!status(404, Some("NoSuchKey")).is_transient());
        let e = status(403, Some("SignatureDoesNotMatch"));
        assert_eq!(
            e.to_string(),
            "GET s3://b/k: HTTP 403 SignatureDoesNotMatch"
        );
        let io: io::Error = S3Error::GaveUp {
            attempts: 4,
            last: Box::new(status(404, Some("NoSuchKey"))),
        }
        .into();
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
        assert!(io.to_string().contains("gave up after 4 attempts"));
    }
}
