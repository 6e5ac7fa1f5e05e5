//! What the S3 tests run against: a real `moto_server` with SigV4 enforced, a TCP proxy
//! in front of it that counts bytes and injects faults, and a capture of every log line
//! (trace level) so that tests can check what a credential leak would look like.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use warren::backend::s3::{Addressing, S3Config};

pub const BUCKET: &str = "warren-blobs";
pub const PREFIX: &str = "nydus/";
pub const REGION: &str = "us-east-1";

/// Creates an IAM user with an inline `s3:*` policy and an access key (the server's
/// first three requests, which it lets through unsigned), then the bucket with that key.
const SETUP: &str = r#"
import boto3, json, sys
ep, bucket, region, ca = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
verify = ca or None
iam = boto3.client("iam", endpoint_url=ep, region_name=region, verify=verify,
                   aws_access_key_id="setup", aws_secret_access_key="setup")
iam.create_user(UserName="warren")
iam.put_user_policy(UserName="warren", PolicyName="s3-all", PolicyDocument=json.dumps(
    {"Version": "2012-10-17",
     "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
key = iam.create_access_key(UserName="warren")["AccessKey"]
s3 = boto3.client("s3", endpoint_url=ep, region_name=region, verify=verify,
                  aws_access_key_id=key["AccessKeyId"],
                  aws_secret_access_key=key["SecretAccessKey"])
s3.create_bucket(Bucket=bucket)
print(key["AccessKeyId"])
print(key["SecretAccessKey"])
"#;

/// A `moto_server` on a free loopback port that checks SigV4. Killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
    /// With TLS: the CA that signed the server's certificate.
    pub ca: Option<PathBuf>,
    pub key_id: String,
    pub secret: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Moto {
    pub fn start() -> Moto {
        Moto::start_with(false)
    }

    /// Over https, with a certificate for 127.0.0.1 from a CA made for the test.
    pub fn start_tls() -> Moto {
        Moto::start_with(true)
    }

    fn start_with(tls: bool) -> Moto {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("moto.log");
        let out = std::fs::File::create(&log).unwrap();
        let port = free_port();
        let mut cmd = Command::new("moto_server");
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let ca = tls.then(|| {
            let (ca, cert, key) = make_ca_and_cert(dir.path());
            cmd.arg("-c").arg(cert).arg("-k").arg(key);
            ca
        });
        let child = cmd
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
            // This machine's CA bundle variable breaks Python's AWS clients.
            .env_remove("AWS_CA_BUNDLE")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("starting moto_server (scripts/test.sh installs it: pip install 'moto[server]' boto3)");
        let mut moto = Moto {
            child,
            port,
            ca,
            key_id: String::new(),
            secret: String::new(),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(st)) = moto.child.try_wait() {
                panic!("moto_server exited ({st}):\n{}", moto.log());
            }
            assert!(
                Instant::now() < deadline,
                "moto_server not up in 30 s:\n{}",
                moto.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = Command::new("python3")
            .args(["-c", SETUP, &moto.endpoint(), BUCKET, REGION])
            .arg(moto.ca.clone().unwrap_or_default())
            .env_remove("AWS_CA_BUNDLE")
            .stderr(Stdio::inherit())
            .output()
            .expect("running python3 for the IAM setup");
        assert!(out.status.success(), "IAM setup failed:\n{}", moto.log());
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        moto.key_id = lines.next().expect("access key id").to_string();
        moto.secret = lines.next().expect("secret").to_string();
        moto
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// A config for this server's bucket, with its key, sent to `endpoint` (the server,
    /// or a proxy in front of it). Short backoff: tests wait for nothing.
    pub fn config(&self, endpoint: &str) -> S3Config {
        S3Config {
            endpoint: endpoint.into(),
            bucket_name: BUCKET.into(),
            object_prefix: PREFIX.into(),
            region: REGION.into(),
            access_key_id: self.key_id.clone(),
            access_key_secret: self.secret.clone(),
            addressing: Addressing::Path,
            retry_backoff_ms: 10,
            ..S3Config::default()
        }
    }

    /// The server's request log (one line per request: method, path and query, status).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Request lines of the log that contain `needle`.
    pub fn requests(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(String::from)
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with the openssl tool:
/// `(ca.pem, server.pem, server.key)` in `dir`.
fn make_ca_and_cert(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    const SCRIPT: &str = "set -e
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=warren test CA' \
    -keyout ca.key -out ca.pem
openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr
printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' \
    > server.ext
openssl x509 -req -days 2 -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
    -extfile server.ext -out server.pem";
    let out = Command::new("sh")
        .args(["-c", SCRIPT])
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "making the test certificates: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What the proxy does to the next new connection.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Reads the request, then resets the connection.
    Reset,
    /// Answers with this status and an S3 XML error, without asking the server.
    Status(u16),
    /// Passes the response head and this many body bytes, then closes.
    CutBody(usize),
    /// Reads the request and says nothing for this long.
    Stall(Duration),
}

/// A TCP proxy to the server that counts the bytes it sends back, and serves the queued
/// faults to new connections in order (then passes everything through).
pub struct Proxy {
    pub addr: SocketAddr,
    down: Arc<AtomicU64>,
    conns: Arc<AtomicU64>,
    faults: Arc<Mutex<VecDeque<Fault>>>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            down: Arc::default(),
            conns: Arc::default(),
            faults: Arc::default(),
        };
        let (down, conns, faults) = (
            proxy.down.clone(),
            proxy.conns.clone(),
            proxy.faults.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                conns.fetch_add(1, Ordering::SeqCst);
                let fault = faults.lock().unwrap().pop_front();
                let down = down.clone();
                std::thread::spawn(move || serve(client, upstream, fault, &down));
            }
        });
        proxy
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Bytes sent from the server to the client so far.
    pub fn bytes_down(&self) -> u64 {
        self.down.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> u64 {
        self.conns.load(Ordering::SeqCst)
    }

    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.faults.lock().unwrap().extend(faults);
    }
}

fn serve(mut client: TcpStream, upstream: SocketAddr, fault: Option<Fault>, down: &AtomicU64) {
    match fault {
        None => pipe(client, upstream, down, None),
        Some(Fault::CutBody(n)) => pipe(client, upstream, down, Some(n)),
        Some(Fault::Reset) => {
            read_head(&mut client);
            // SO_LINGER 0: close sends RST, as a crashed peer or middlebox would.
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            unsafe {
                libc::setsockopt(
                    client.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    &linger as *const libc::linger as *const libc::c_void,
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
        }
        Some(Fault::Status(status)) => {
            read_head(&mut client);
            let code = if status == 503 {
                "SlowDown"
            } else {
                "InternalError"
            };
            let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>");
            let _ = write!(
                client,
                "HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
        Some(Fault::Stall(d)) => {
            read_head(&mut client);
            std::thread::sleep(d);
        }
    }
}

/// Reads up to the end of a request head (requests with bodies are not faulted here).
fn read_head(client: &mut TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}

/// Both directions, until either side closes; with `cut`, the server's answer stops
/// after its head and that many body bytes.
fn pipe(client: TcpStream, upstream: SocketAddr, down: &AtomicU64, cut: Option<usize>) {
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let (mut s_read, mut c_write) = (server, client);
    let mut head = Vec::new();
    let mut head_done = cut.is_none();
    let mut body_sent = 0usize;
    let mut buf = [0u8; 16384];
    loop {
        let n = match s_read.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let (mut out, mut rest) = (Vec::new(), &buf[..n]);
        if !head_done {
            let before = head.len();
            head.extend_from_slice(rest);
            let split = match head.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(p) => {
                    head_done = true;
                    p + 4 - before
                }
                None => rest.len(),
            };
            out.extend_from_slice(&rest[..split]);
            rest = &rest[split..];
        }
        let limit = cut.unwrap_or(usize::MAX);
        let take = rest.len().min(limit - body_sent);
        out.extend_from_slice(&rest[..take]);
        body_sent += take;
        if c_write.write_all(&out).is_err() {
            break;
        }
        down.fetch_add(out.len() as u64, Ordering::SeqCst);
        if head_done && body_sent >= limit {
            break;
        }
    }
    let _ = c_write.shutdown(Shutdown::Both);
    let _ = s_read.shutdown(Shutdown::Both);
}

/// Every log line of this test process, at trace level, including the `log` records of
/// the HTTP stack. Installed once per process.
pub fn capture_logs() -> LogBuf {
    static BUF: OnceLock<LogBuf> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = LogBuf::default();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(buf.clone())
            .init();
        buf
    })
    .clone()
}

#[derive(Clone, Default)]
pub struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl LogBuf {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Fails if any of `secrets` is anywhere in the logs so far.
    pub fn assert_free_of(&self, secrets: &[&str]) {
        let text = self.text();
        if let Some(path) = std::env::var_os("WARREN_TEST_LOG_DUMP") {
            std::fs::write(path, &text).unwrap();
        }
        assert!(
            text.len() > 1000,
            "the log capture saw almost nothing:\n{text}"
        );
        for s in secrets {
            assert!(!s.is_empty());
            if let Some(at) = text.find(s) {
                let line = text[..at].rfind('\n').map_or(0, |p| p + 1);
                panic!(
                    "a credential is in the logs: {}",
                    &text[line..(at + s.len())]
                );
            }
        }
    }
}

impl Write for LogBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> LogBuf {
        self.clone()
    }
}
