//! What moving chunk bytes between two members costs on this machine: 64 MiB of 1 MiB
//! chunks fetched by one in-process member from another over the mesh's QUIC transfer,
//! against the same bytes copied over a loopback TCP connection (the cheapest way to move
//! them between two sockets). Prints wall time and this process's CPU time for each, and
//! the ratios; then the same for many small fetches, where the cost per request shows.
//! `cargo bench -p warren-peer --bench transfer`
//!
//! Why: a rollout's start on one machine moves every node's startup set between nodes,
//! so the CPU per byte of the transfer bounds how fast N nodes can start together.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use warren_peer::{ChunkId, ChunkProvider, ChunkWant, DigestAlgo, Mesh, MeshConfig, OriginHint};

#[path = "../tests/support/loopback.rs"]
mod loopback;
use loopback::free_port;

/// One way of moving chunks: their size, how many, and how many one `Mesh::fetch` asks.
struct Load {
    chunk: usize,
    chunks: usize,
    per_fetch: usize,
}

/// Bulk: 64 MiB of 1 MiB chunks, four per fetch as a read's window would ask them.
const BULK: Load = Load {
    chunk: 1 << 20,
    chunks: 64,
    per_fetch: 4,
};
/// Requests: 1,000 fetches of one 16 KiB chunk each, where the cost per request (streams,
/// small packets, acknowledgements, thread wake-ups) is what shows.
const REQUESTS: Load = Load {
    chunk: 16 << 10,
    chunks: 1000,
    per_fetch: 1,
};

/// A member that holds every chunk in memory.
struct Holder(Mutex<HashMap<ChunkId, Arc<Vec<u8>>>>);

impl ChunkProvider for Holder {
    fn held(&self, want: &ChunkWant) -> Option<Arc<Vec<u8>>> {
        self.0.lock().unwrap().get(&want.id).cloned()
    }
    fn fetch_as_owner(&self, wants: &[ChunkWant]) -> Vec<Option<Arc<Vec<u8>>>> {
        wants.iter().map(|w| self.held(w)).collect()
    }
}

/// User plus system CPU time of this process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Runs `f`, returning its wall time and the process CPU time it took.
fn measure(f: impl FnOnce()) -> (Duration, Duration) {
    let (t0, c0) = (Instant::now(), cpu_time());
    f();
    (t0.elapsed(), cpu_time() - c0)
}

fn chunks(load: &Load) -> Vec<(ChunkWant, Arc<Vec<u8>>)> {
    (0..load.chunks)
        .map(|i| {
            let data: Vec<u8> = (0..load.chunk)
                .map(|b| (b * 31 + i * 7 + b / 4096) as u8)
                .collect();
            let id = ChunkId {
                algo: DigestAlgo::Blake3,
                digest: *blake3::hash(&data).as_bytes(),
            };
            let want = ChunkWant {
                id,
                route: id.digest,
                size: data.len() as u32,
                origin: OriginHint {
                    blob_id: "bench".into(),
                    chunk_index: i as u32,
                },
            };
            (want, Arc::new(data))
        })
        .collect()
}

fn over_quic(set: &[(ChunkWant, Arc<Vec<u8>>)], per_fetch: usize) -> (Duration, Duration) {
    let seed = free_port([127, 0, 0, 1]);
    let config = |listen| MeshConfig {
        listen,
        seeds: vec![seed.to_string()],
        cluster_secret: Some("transfer-bench-cluster-secret".into()),
        heartbeat_ms: 200,
        // Measured here is the transfer, not the budget before a node would go to the origin.
        hedge_ms: 10_000,
        replication: 1,
        ..MeshConfig::default()
    };
    let held = set.iter().map(|(w, d)| (w.id, d.clone())).collect();
    let holder = Mesh::start(&config(seed), "holder", Arc::new(Holder(Mutex::new(held)))).unwrap();
    let empty = Arc::new(Holder(Mutex::new(HashMap::new())));
    let asker = Mesh::start(&config(free_port([127, 0, 0, 2])), "asker", empty).unwrap();
    let t0 = Instant::now();
    while asker.members().len() < 2 || holder.members().len() < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the two members never met"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Routed so that the holder owns every chunk: the asker never takes one on itself.
    let wants: Vec<ChunkWant> = set
        .iter()
        .map(|(w, _)| {
            let mut w = w.clone();
            let mut salt = 0u32;
            while asker.owns(&[w.route])[0] {
                salt += 1;
                let mut h = blake3::Hasher::new();
                h.update(&w.id.digest).update(&salt.to_le_bytes());
                w.route = *h.finalize().as_bytes();
            }
            w
        })
        .collect();
    // One warm-up round: connections open, congestion windows grown.
    asker.fetch(&wants[..per_fetch]);
    measure(|| {
        for batch in wants.chunks(per_fetch) {
            let got = asker.fetch(batch);
            assert!(got.iter().all(|g| g.is_some()), "a chunk did not come");
        }
    })
}

fn over_tcp(set: &[(ChunkWant, Arc<Vec<u8>>)]) -> (Duration, Duration) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            let (mut conn, _) = listener.accept().unwrap();
            let mut ask = [0u8; 4];
            while conn.read_exact(&mut ask).is_ok() {
                let i = u32::from_le_bytes(ask) as usize;
                conn.write_all(&set[i].1).unwrap();
            }
        });
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.set_nodelay(true).unwrap();
        let mut buf = vec![0u8; set[0].1.len()];
        let run = measure(|| {
            for (i, (want, _)) in set.iter().enumerate() {
                conn.write_all(&(i as u32).to_le_bytes()).unwrap();
                conn.read_exact(&mut buf).unwrap();
                assert!(want.id.matches(&buf));
            }
        });
        drop(conn);
        run
    })
}

fn run(load: &Load) {
    let set = chunks(load);
    let mib = (load.chunk * load.chunks) as f64 / (1 << 20) as f64;
    let (tcp_wall, tcp_cpu) = over_tcp(&set);
    let (quic_wall, quic_cpu) = over_quic(&set, load.per_fetch);
    // The mesh asks `per_fetch` chunks per fetch; the TCP baseline one per request.
    let report = |name: &str, wall: Duration, cpu: Duration, requests: usize| {
        println!(
            "  {name:<13} {:>7.1} ms wall {:>7.1} ms CPU  {:>7.0} MiB/s  {:>7.0} MiB per CPU-second  {:>5.0} µs CPU per request",
            wall.as_secs_f64() * 1e3,
            cpu.as_secs_f64() * 1e3,
            mib / wall.as_secs_f64(),
            mib / cpu.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / requests as f64,
        )
    };
    println!(
        "{mib:.0} MiB in {} chunks of {} bytes, {} per fetch, both ends in this process:",
        load.chunks, load.chunk, load.per_fetch
    );
    report(
        "mesh (QUIC)",
        quic_wall,
        quic_cpu,
        load.chunks.div_ceil(load.per_fetch),
    );
    report("loopback TCP", tcp_wall, tcp_cpu, load.chunks);
    println!(
        "  mesh/TCP: {:.2}x the wall time, {:.2}x the CPU",
        quic_wall.as_secs_f64() / tcp_wall.as_secs_f64(),
        quic_cpu.as_secs_f64() / tcp_cpu.as_secs_f64()
    );
}

/// `bulk` or `requests` as an argument runs only that one.
fn main() {
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|a| a == name);
    if wanted("bulk") {
        run(&BULK);
    }
    if wanted("requests") {
        run(&REQUESTS);
    }
}
