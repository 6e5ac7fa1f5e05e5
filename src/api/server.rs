//! Generic HTTP plumbing for the node's endpoints: serve a handler over a unix or TCP
//! listener with hyper 1 on tokio, parsed requests in, JSON or text responses out, and the
//! API socket's life cycle (owner-only, stale files removed, a live node left alone).
//!
//! Routes live with their state (see `crate::node`); this module knows nothing of them.

use crate::api::metrics::Metrics;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

/// Largest request body the server reads (mount requests are a few hundred bytes).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Content type of the Prometheus text exposition format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A request, read whole: method, path, decoded query parameters and body.
#[derive(Debug)]
pub struct ApiRequest {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Bytes,
}

impl ApiRequest {
    /// The first value of query parameter `key`.
    pub fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON of type `T`; a 400 naming the problem when it is not.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.body.is_empty() {
            return Err(ApiError::bad_request("the request has no JSON body"));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
    }
}

/// A response: status, content type and body.
#[derive(Debug)]
pub struct ApiResponse {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Bytes,
}

impl ApiResponse {
    pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> ApiResponse {
        let mut body = serde_json::to_vec(value).unwrap_or_default();
        body.push(b'\n');
        ApiResponse {
            status,
            content_type: "application/json",
            body: body.into(),
        }
    }

    pub fn ok_json<T: Serialize + ?Sized>(value: &T) -> ApiResponse {
        Self::json(StatusCode::OK, value)
    }

    pub fn text(status: StatusCode, content_type: &'static str, text: String) -> ApiResponse {
        ApiResponse {
            status,
            content_type,
            body: text.into(),
        }
    }

    /// 204, no body (what nydusd answers to a successful mount or unmount).
    pub fn no_content() -> ApiResponse {
        ApiResponse {
            status: StatusCode::NO_CONTENT,
            content_type: "application/json",
            body: Bytes::new(),
        }
    }
}

/// A failed request: the status and a JSON body `{"code": ..., "message": ...}` (nydusd's
/// error shape). The message says what was wrong, naming the thing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "ALREADY_EXISTS", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", message)
    }

    pub fn method_not_allowed(req: &ApiRequest) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            format!("{} is not allowed on {}", req.method, req.path),
        )
    }

    pub fn no_route(req: &ApiRequest) -> Self {
        Self::not_found(format!("no such endpoint: {} {}", req.method, req.path))
    }

    pub fn into_response(self) -> ApiResponse {
        ApiResponse::json(
            self.status,
            &serde_json::json!({"code": self.code, "message": self.message}),
        )
    }
}

impl From<ApiError> for ApiResponse {
    fn from(e: ApiError) -> Self {
        e.into_response()
    }
}

/// What serves requests: any `Fn(ApiRequest) -> impl Future<Output = ApiResponse>`.
pub trait Handler: Clone + Send + Sync + 'static {
    fn call(&self, req: ApiRequest) -> impl Future<Output = ApiResponse> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(ApiRequest) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ApiResponse> + Send,
{
    fn call(&self, req: ApiRequest) -> impl Future<Output = ApiResponse> + Send {
        self(req)
    }
}

/// A listener the server can accept connections from.
pub trait Listener: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Listener for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<Self::Stream> {
        tokio::net::UnixListener::accept(self).await.map(|(s, _)| s)
    }
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<Self::Stream> {
        tokio::net::TcpListener::accept(self).await.map(|(s, _)| s)
    }
}

/// Serves `handler` on `listener` until `shutdown` turns true (or its sender is dropped).
/// Connections in progress are closed once the current request is answered.
pub async fn serve<L: Listener, H: Handler>(
    listener: L,
    handler: H,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        let stream = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => continue,
        };
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(handler, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "HTTP connection ended with an error");
                    }
                }
                _ = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

/// Returns once `stop` turns true or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn respond<H: Handler>(
    handler: H,
    req: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let resp = match read_request(req).await {
        Ok(req) => handler.call(req).await,
        Err(e) => e.into_response(),
    };
    hyper::Response::builder()
        .status(resp.status)
        .header(hyper::header::CONTENT_TYPE, resp.content_type)
        .body(Full::new(resp.body))
        .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
}

async fn read_request(req: hyper::Request<Incoming>) -> Result<ApiRequest, ApiError> {
    let (parts, body) = req.into_parts();
    let body = Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "PAYLOAD_TOO_LARGE",
                    format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
                )
            } else {
                ApiError::bad_request(format!("reading the request body: {e}"))
            }
        })?
        .to_bytes();
    Ok(ApiRequest {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(parse_query).unwrap_or_default(),
        body,
    })
}

/// `a=1&b=%2Ftmp` -> [("a", "1"), ("b", "/tmp")] (`+` is a space, as in forms).
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'+' {
            out.push(b' ');
        } else if b == b'%' && i + 2 < bytes.len() {
            match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b),
            }
        } else {
            out.push(b);
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Binds the API socket at `path`, readable and writable by its owner only. A socket file
/// left by a node that is gone is removed; if a node still answers on it, this fails.
pub fn bind_api_socket(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::io::{Error, ErrorKind};
    match std::fs::symlink_metadata(path) {
        Ok(md) => {
            use std::os::unix::fs::FileTypeExt;
            if !md.file_type().is_socket() {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(Error::new(
                        ErrorKind::AddrInUse,
                        format!("another node is listening on {}", path.display()),
                    ))
                }
                Err(_) => std::fs::remove_file(path).map_err(|e| {
                    Error::new(
                        e.kind(),
                        format!("removing stale socket {}: {e}", path.display()),
                    )
                })?,
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::new(e.kind(), format!("creating {}: {e}", parent.display())))?;
    }
    // The socket is created with the process umask; bind it in a private (0700) directory
    // beside its place, make it owner-only, then rename it into place: nobody else can
    // connect in between, and the process-wide umask stays untouched.
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let private = tempfile::Builder::new()
        .prefix(".s")
        .rand_bytes(6)
        .tempdir_in(parent)
        .map_err(|e| {
            Error::new(
                e.kind(),
                format!("creating a directory in {}: {e}", parent.display()),
            )
        })?;
    let tmp = private.path().join("s");
    let listener = std::os::unix::net::UnixListener::bind(&tmp)
        .map_err(|e| Error::new(e.kind(), format!("binding {}: {e}", path.display())))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        Error::new(
            e.kind(),
            format!("moving the socket to {}: {e}", path.display()),
        )
    })?;
    Ok(listener)
}

/// Binds a TCP listener, with the address in the error.
pub fn bind_tcp(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding metrics address {addr}: {e}")))
}

/// The metrics endpoint: `GET /metrics` answers Prometheus text.
pub fn metrics_handler(metrics: Arc<Metrics>) -> impl Handler {
    move |req: ApiRequest| {
        let metrics = metrics.clone();
        async move {
            match (req.method.clone(), req.path.as_str()) {
                (Method::GET, "/metrics") => {
                    ApiResponse::text(StatusCode::OK, PROMETHEUS_TEXT, metrics.render_text())
                }
                (_, "/metrics") => ApiError::method_not_allowed(&req).into_response(),
                _ => ApiError::no_route(&req).into_response(),
            }
        }
    }
}

/// A server on its own thread and single-threaded runtime, for commands that are not
/// otherwise async (`warren mount --metrics-addr`). Stops when dropped.
pub struct BackgroundServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackgroundServer {
    /// Serves Prometheus text for `metrics` at `http://ADDR/metrics`.
    pub fn metrics(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<BackgroundServer> {
        let std_listener = bind_tcp(addr)?;
        let addr = std_listener.local_addr()?;
        std_listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("warren-metrics".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(std_listener) {
                        Ok(l) => serve(l, metrics_handler(metrics), stopped).await,
                        Err(e) => tracing::error!(error = %e, "metrics listener"),
                    }
                })
            })?;
        Ok(BackgroundServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address bound (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Removes a file when dropped (the API socket on the way out).
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_percent_decoded() {
        let q = parse_query("mountpoint=%2Fmnt%2Fa%20b&x=1+2&flag&bad=%zz%4");
        assert_eq!(
            q,
            vec![
                ("mountpoint".into(), "/mnt/a b".into()),
                ("x".into(), "1 2".into()),
                ("flag".into(), String::new()),
                ("bad".into(), "%zz%4".into()),
            ]
        );
    }

    #[test]
    fn api_socket_is_owner_only_and_a_live_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/api.sock");
        let live = bind_api_socket(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let e = bind_api_socket(&path).unwrap_err();
        assert!(e.to_string().contains("another node"), "{e}");
        drop(live);
        // Nobody listens any more: the stale file is replaced.
        bind_api_socket(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"x").unwrap();
        assert!(bind_api_socket(&path)
            .unwrap_err()
            .to_string()
            .contains("not a socket"));
    }
}
