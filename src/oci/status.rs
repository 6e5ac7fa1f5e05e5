//! Judging a registry's answer: success, a transient failure worth another attempt, or a
//! final error carrying the registry's own code and message.

use super::transport::Failure;
use super::OciError;
use reqwest::blocking::Response;
use reqwest::StatusCode;

/// The error code and message of a registry's JSON error body, if it has one.
pub(crate) fn error_detail(body: &[u8]) -> String {
    let v: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        // A plain-text answer (a proxy's, or "Client sent an HTTP request to an HTTPS
        // server."): its first line, if it is short and printable.
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let line = text.lines().next().unwrap_or("").trim();
            let printable = line.chars().all(|c| !c.is_control());
            return if printable && line.len() <= 200 && !line.starts_with('<') {
                line.to_string()
            } else {
                String::new()
            };
        }
    };
    v.get("errors")
        .and_then(|e| e.as_array())
        .and_then(|a| a.first())
        .map(|e| {
            let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
            let msg = e.get("message").and_then(|c| c.as_str()).unwrap_or("");
            format!("{code}: {msg}")
                .trim_matches([' ', ':'])
                .to_string()
        })
        .unwrap_or_default()
}

/// Judges a response: success passes, 5xx/429/408 are transient, the rest are final.
pub(crate) fn check(resp: Response, op: &str) -> Result<Response, Failure> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let transient = status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT;
    let body = read_small(resp);
    let detail = error_detail(&body);
    if transient {
        return Err(Failure::Transient(format!("{status}")));
    }
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return Err(Failure::Fatal(OciError::Auth {
            op: op.to_string(),
            detail: format!(
                "{status}{}",
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({detail})")
                }
            ),
        }));
    }
    Err(Failure::Fatal(OciError::Status {
        op: op.to_string(),
        status: status.as_u16(),
        detail,
    }))
}

/// At most 64 KiB of an error body.
fn read_small(resp: Response) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    let _ = resp.take(64 << 10).read_to_end(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_details() {
        let json =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(error_detail(json), "MANIFEST_UNKNOWN: manifest unknown");
        assert_eq!(
            error_detail(b"Client sent an HTTP request to an HTTPS server.\n"),
            "Client sent an HTTP request to an HTTPS server."
        );
        assert_eq!(error_detail(b"<html><body>bad gateway</body></html>"), "");
        assert_eq!(error_detail(&[0xff, 0x01, 0x02]), "");
    }
}
