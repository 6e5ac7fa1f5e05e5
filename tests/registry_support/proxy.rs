//! A fault-injecting HTTP proxy between warren and the registry. One request per client
//! connection (it answers `Connection: close`). Requests that match the target (blob GETs
//! by default) take the next planned fault, or the standing one: an error status, a
//! connection reset, a body cut short, a delay, a hang, a corrupted byte.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    Pass,
    /// Answer with this status and an empty body.
    Status(u16),
    /// Close the connection with a TCP reset before answering.
    Reset,
    /// Send the head and half the body, then close (FIN, no reset).
    Truncate,
    /// Wait, then pass.
    Delay(Duration),
    /// Never answer (until the proxy stops).
    Hang,
    /// Pass with one body byte flipped.
    Corrupt,
    /// Answer `307 Temporary Redirect` to the same path on this `host:port`.
    Redirect(String),
}

#[derive(Default)]
struct Plan {
    queue: VecDeque<Fault>,
    standing: Option<Fault>,
    /// Requests whose path contains this are subject to faults (default `/blobs/`).
    target: Option<String>,
}

pub struct FaultProxy {
    pub addr: String,
    plan: Arc<Mutex<Plan>>,
    /// Matching requests seen, and faults injected.
    pub seen: Arc<AtomicUsize>,
    pub injected: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: String,
    plan: Arc<Mutex<Plan>>,
    seen: Arc<AtomicUsize>,
    injected: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            plan: Arc::new(Mutex::new(Plan::default())),
            seen: Arc::new(AtomicUsize::new(0)),
            injected: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        });
        let s = shared.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = handle(conn, &s);
                });
            }
        });
        FaultProxy {
            addr,
            plan: shared.plan.clone(),
            seen: shared.seen.clone(),
            injected: shared.injected.clone(),
            stop: shared.stop.clone(),
            thread: Some(thread),
        }
    }

    /// The next matching requests get these faults, in order.
    pub fn push(&self, faults: &[Fault]) {
        self.plan
            .lock()
            .unwrap()
            .queue
            .extend(faults.iter().cloned());
    }

    /// Every matching request gets this fault (after the queue), until cleared.
    pub fn standing(&self, fault: Option<Fault>) {
        self.plan.lock().unwrap().standing = fault;
    }

    /// Only requests whose path contains `s` are subject to faults.
    pub fn target(&self, s: &str) {
        self.plan.lock().unwrap().target = Some(s.to_string());
    }

    pub fn pending(&self) -> usize {
        self.plan.lock().unwrap().queue.len()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads an HTTP head (through the blank line); returns it and any bytes read past it.
fn read_head(s: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Ok(Some((String::from_utf8_lossy(&buf).into_owned(), rest)));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// The head with `Connection: close` in place of any Connection header.
fn closing(head: &str) -> String {
    let mut out: Vec<&str> = head
        .trim_end()
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    out.push("Connection: close");
    format!("{}\r\n\r\n", out.join("\r\n"))
}

fn reset(conn: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized struct.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&conn),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
    drop(conn);
}

fn handle(mut client: TcpStream, s: &Shared) -> std::io::Result<()> {
    let Some((head, mut body)) = read_head(&mut client)? else {
        return Ok(());
    };
    let mut words = head.split_whitespace();
    let (method, path) = (
        words.next().unwrap_or("").to_string(),
        words.next().unwrap_or("").to_string(),
    );
    let len: usize = header(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while body.len() < len {
        let mut chunk = vec![0u8; (len - body.len()).min(1 << 20)];
        let n = client.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let fault = {
        let mut plan = s.plan.lock().unwrap();
        let target = plan
            .target
            .clone()
            .unwrap_or_else(|| "/blobs/sha256:".into());
        if method == "GET" && path.contains(&target) {
            s.seen.fetch_add(1, Ordering::Relaxed);
            plan.queue
                .pop_front()
                .or_else(|| plan.standing.clone())
                .unwrap_or(Fault::Pass)
        } else {
            Fault::Pass
        }
    };
    if fault != Fault::Pass {
        s.injected.fetch_add(1, Ordering::Relaxed);
    }
    match &fault {
        Fault::Status(code) => {
            write!(
                client,
                "HTTP/1.1 {code} Injected\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            return Ok(());
        }
        Fault::Reset => {
            reset(client);
            return Ok(());
        }
        Fault::Redirect(to) => {
            write!(
                client,
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{to}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            return Ok(());
        }
        Fault::Delay(d) => std::thread::sleep(*d),
        Fault::Hang => {
            let until = Instant::now() + Duration::from_secs(120);
            while !s.stop.load(Ordering::Relaxed) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50));
            }
            return Ok(());
        }
        _ => {}
    }
    let mut up = TcpStream::connect(&s.upstream)?;
    up.write_all(closing(&head).as_bytes())?;
    up.write_all(&body)?;
    let Some((rhead, mut rest)) = read_head(&mut up)? else {
        return Ok(());
    };
    client.write_all(closing(&rhead).as_bytes())?;
    let status: u16 = rhead
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let no_body = method == "HEAD" || status == 204 || status == 304;
    let declared: Option<u64> = header(&rhead, "content-length").and_then(|v| v.parse().ok());
    let limit = match (&fault, declared) {
        (_, _) if no_body => 0,
        (Fault::Truncate, Some(n)) => n / 2,
        (_, Some(n)) => n,
        (_, None) => u64::MAX,
    };
    let mut sent = 0u64;
    let mut flipped = false;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        if sent >= limit {
            break;
        }
        let data: Vec<u8> = if !rest.is_empty() {
            std::mem::take(&mut rest)
        } else {
            let n = up.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            chunk[..n].to_vec()
        };
        let mut data = data;
        let take = (limit - sent).min(data.len() as u64) as usize;
        data.truncate(take);
        if fault == Fault::Corrupt && !flipped && !data.is_empty() {
            let i = data.len() / 2;
            data[i] ^= 0x5a;
            flipped = true;
        }
        client.write_all(&data)?;
        sent += take as u64;
    }
    // A cut body ends with a clean close before Content-Length is reached.
    let _ = client.shutdown(Shutdown::Write);
    Ok(())
}
