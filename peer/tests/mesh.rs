//! Several meshes in one process on 127.0.0.x addresses, each over a provider that keeps
//! chunks in memory and counts its origin fetches. (The node-level tests run real
//! `warren node` processes; these pin down the mesh's own rules quickly.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use warren_peer::{ChunkId, ChunkProvider, ChunkWant, DigestAlgo, Mesh, MeshConfig, OriginHint};

mod support;
use support::loopback::free_port;

struct Origin {
    chunks: HashMap<ChunkId, Arc<Vec<u8>>>,
    fetches: AtomicU64,
}

struct MemoryNode {
    origin: Arc<Origin>,
    held: Mutex<HashMap<ChunkId, Arc<Vec<u8>>>>,
}

impl MemoryNode {
    /// Like the node's fetch chain: a chunk read here and asked for by others at the
    /// same time is fetched once (the held map's lock stands in for its in-flight table).
    fn fetch_origin(&self, id: &ChunkId) -> Option<Arc<Vec<u8>>> {
        let mut held = self.held.lock().unwrap();
        if let Some(d) = held.get(id) {
            return Some(d.clone());
        }
        let data = self.origin.chunks.get(id)?.clone();
        self.origin.fetches.fetch_add(1, Ordering::SeqCst);
        held.insert(*id, data.clone());
        Some(data)
    }
}

impl ChunkProvider for MemoryNode {
    fn held(&self, want: &ChunkWant) -> Option<Arc<Vec<u8>>> {
        self.held.lock().unwrap().get(&want.id).cloned()
    }
    fn fetch_as_owner(&self, wants: &[ChunkWant]) -> Vec<Option<Arc<Vec<u8>>>> {
        wants
            .iter()
            .map(|w| self.held(w).or_else(|| self.fetch_origin(&w.id)))
            .collect()
    }
}

fn config(listen: SocketAddr, seed: SocketAddr, secret: &str) -> MeshConfig {
    MeshConfig {
        listen,
        seeds: vec![seed.to_string()],
        cluster_secret: Some(secret.to_string()),
        heartbeat_ms: 200,
        member_timeout_ms: 1500,
        resolve_interval_ms: 300,
        hedge_ms: 500,
        ..MeshConfig::default()
    }
}

fn origin(n: u32) -> Arc<Origin> {
    origin_of(n, 4096)
}

/// `n` chunks of about `size` bytes each.
fn origin_of(n: u32, size: u32) -> Arc<Origin> {
    let chunks = (0..n)
        .map(|i| {
            let data: Vec<u8> = (0..size + i)
                .map(|b| (b * 7 + i + b / 4096) as u8)
                .collect();
            let id = ChunkId {
                algo: DigestAlgo::Blake3,
                digest: *blake3::hash(&data).as_bytes(),
            };
            (id, Arc::new(data))
        })
        .collect();
    Arc::new(Origin {
        chunks,
        fetches: AtomicU64::new(0),
    })
}

fn wants(origin: &Origin) -> Vec<ChunkWant> {
    let mut ids: Vec<_> = origin.chunks.iter().collect();
    ids.sort_by_key(|(id, _)| **id);
    ids.into_iter()
        .enumerate()
        .map(|(i, (id, data))| ChunkWant {
            id: *id,
            route: id.digest,
            size: data.len() as u32,
            origin: OriginHint {
                blob_id: "blob".into(),
                chunk_index: i as u32,
            },
        })
        .collect()
}

fn wait_members(meshes: &[&Mesh], n: usize) {
    let start = Instant::now();
    while meshes.iter().any(|m| m.members().len() != n) {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "members: {:?}",
            meshes.iter().map(|m| m.members().len()).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start(ip: u8, seed: SocketAddr, secret: &str, origin: &Arc<Origin>) -> (Mesh, Arc<MemoryNode>) {
    start_tuned(ip, seed, secret, origin, |_| {})
}

/// A mesh on 127.0.0.`ip` (the seed itself when `ip` is 1), its config adjusted by `tune`.
fn start_tuned(
    ip: u8,
    seed: SocketAddr,
    secret: &str,
    origin: &Arc<Origin>,
    tune: impl Fn(&mut MeshConfig),
) -> (Mesh, Arc<MemoryNode>) {
    let listen = if ip == 1 {
        seed
    } else {
        free_port([127, 0, 0, ip])
    };
    let node = Arc::new(MemoryNode {
        origin: origin.clone(),
        held: Mutex::new(HashMap::new()),
    });
    let mut cfg = config(listen, seed, secret);
    tune(&mut cfg);
    let mesh = Mesh::start(&cfg, &format!("n{ip}"), node.clone()).unwrap();
    (mesh, node)
}

#[test]
fn three_members_fetch_each_chunk_from_the_origin_once() {
    let origin = origin(120);
    let seed = free_port([127, 0, 0, 1]);
    let secret = "three-member-test-secret";
    let nodes: Vec<_> = (1..=3).map(|ip| start(ip, seed, secret, &origin)).collect();
    wait_members(&nodes.iter().map(|(m, _)| m).collect::<Vec<_>>(), 3);
    let wants = wants(&origin);
    std::thread::scope(|s| {
        for (mesh, node) in &nodes {
            let wants = &wants;
            s.spawn(move || {
                for (w, got) in wants.iter().zip(mesh.fetch(wants)) {
                    let data = got.or_else(|| node.fetch_origin(&w.id)).unwrap();
                    assert!(w.id.matches(&data));
                }
            });
        }
    });
    assert_eq!(origin.fetches.load(Ordering::SeqCst), 120);
    let received: u64 = nodes.iter().map(|(m, _)| m.stats().received_chunks).sum();
    assert_eq!(received, 240);
}

/// Members whose datagram ceilings differ (a jumbo-frame host and one held to 1,200 bytes)
/// still move large chunks both ways: each sends what the other accepts. Between two
/// members with the default ceiling, path MTU discovery finds loopback's room.
#[test]
fn members_with_different_datagram_ceilings_move_large_chunks() {
    let origin = origin_of(8, 700 << 10);
    let seed = free_port([127, 0, 0, 1]);
    let secret = "datagram-ceiling-test-secret";
    let (a, _) = start_tuned(1, seed, secret, &origin, |c| c.max_datagram_bytes = 6_550);
    let (b, _) = start_tuned(2, seed, secret, &origin, |c| c.max_datagram_bytes = 1_200);
    let (c, _) = start(3, seed, secret, &origin);
    wait_members(&[&a, &b, &c], 3);
    let (a_at, b_at, c_at) = (a.me().quic, b.me().quic, c.me().quic);
    let start = Instant::now();
    loop {
        let size = |mesh: &Mesh, peer| {
            mesh.connections()
                .into_iter()
                .find(|(p, _)| *p == peer)
                .map_or(0, |(_, size)| size)
        };
        let (a_c, c_a) = (size(&a, c_at), size(&c, a_at));
        // b takes at most 1,472 bytes (what any endpoint accepts) and sends at most 1,200.
        assert!(size(&a, b_at) <= 1_472 && size(&b, a_at) <= 1_200);
        if a_c > 6_000 && c_a > 6_000 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "datagrams between default members stayed at {a_c} and {c_a} bytes"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let wants = wants(&origin);
    for mesh in [&a, &b, &c] {
        // Chunks this member owns are its own to fetch from the origin; the rest come over.
        let theirs: Vec<ChunkWant> = wants
            .iter()
            .filter(|w| !mesh.owns(&[w.route])[0])
            .cloned()
            .collect();
        assert!(!theirs.is_empty());
        for (w, got) in theirs.iter().zip(mesh.fetch(&theirs)) {
            assert!(w.id.matches(&got.expect("a chunk did not come")));
        }
    }
}

#[test]
fn a_stranger_cannot_join_or_fetch() {
    let origin = origin(10);
    let seed = free_port([127, 0, 0, 1]);
    let (a, _) = start(1, seed, "the-right-cluster-secret", &origin);
    let (b, _) = start(2, seed, "the-right-cluster-secret", &origin);
    let (stranger, _) = start(3, seed, "a-wrong-cluster-secret!!", &origin);
    wait_members(&[&a, &b], 2);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(stranger.members().len(), 1);
    assert_eq!(a.members().len(), 2);
    assert!(stranger.fetch(&wants(&origin)).iter().all(|r| r.is_none()));
}

#[test]
fn a_lying_member_is_shunned() {
    let origin = origin(40);
    let seed = free_port([127, 0, 0, 1]);
    let secret = "lying-member-test-secret";
    let (honest, _) = start(1, seed, secret, &origin);
    std::env::set_var(warren_peer::mesh::FAULT_CORRUPT_ENV, "1");
    let (liar, liar_node) = start(2, seed, secret, &origin);
    std::env::remove_var(warren_peer::mesh::FAULT_CORRUPT_ENV);
    wait_members(&[&honest, &liar], 2);
    let wants = wants(&origin);
    for w in &wants {
        liar_node.fetch_origin(&w.id);
    }
    let got = honest.fetch(&wants);
    assert!(got
        .iter()
        .flatten()
        .all(|d| wants.iter().any(|w| w.id.matches(d))));
    assert!(honest.stats().bad_chunks >= 1);
    assert_eq!(honest.bad_peers(), vec![liar.me().quic]);
    // Shunned: the next fetch does not even ask it.
    let before = honest.stats().requests;
    assert!(honest.fetch(&wants).iter().all(|r| r.is_none()));
    assert_eq!(honest.stats().requests, before);
}

#[test]
fn owners_point_later_askers_at_holders() {
    let origin = origin(60);
    let seed = free_port([127, 0, 0, 1]);
    let secret = "holder-hint-test-secret";
    let nodes: Vec<_> = (1..=4)
        .map(|ip| start_tuned(ip, seed, secret, &origin, |c| c.redirect_after = 1))
        .collect();
    wait_members(&nodes.iter().map(|(m, _)| m).collect::<Vec<_>>(), 4);
    let wants = wants(&origin);
    // One after the other: by the time the later ones ask, earlier ones hold the chunks.
    for (mesh, node) in &nodes {
        for (w, got) in wants.iter().zip(mesh.fetch(&wants)) {
            let data = got.or_else(|| node.fetch_origin(&w.id)).unwrap();
            assert!(w.id.matches(&data));
        }
    }
    let stats: Vec<_> = nodes.iter().map(|(m, _)| m.stats()).collect();
    let redirects: u64 = stats.iter().map(|s| s.redirects).sum();
    assert!(redirects > 0, "{stats:?}");
    assert_eq!(origin.fetches.load(Ordering::SeqCst), 60);
    // Every chunk received was sent by an owner or a holder (and verified on arrival).
    let served: u64 = stats.iter().map(|s| s.served_chunks).sum();
    let received: u64 = stats.iter().map(|s| s.received_chunks).sum();
    assert_eq!(served, received);
}
