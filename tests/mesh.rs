//! The peer mesh end to end: `warren node` processes on 127.0.0.N addresses, one Debian
//! `docker-registry` origin holding the Debian minbase image converted to Nydus, reads
//! through the real kernel FUSE. Needs root, /dev/fuse, docker-registry, skopeo, umoci.

mod mesh_support;
mod registry_support;
use mesh_support::*;
use registry_support::rootfs;
use std::collections::BTreeMap;
use std::time::Duration;

fn source_hashes() -> BTreeMap<String, String> {
    hash_tree(&rootfs()).unwrap()
}

fn start_nodes(n: u8, spec: impl Fn(NodeSpec) -> NodeSpec) -> Vec<MeshNode> {
    let seed = free_peer_addr(1);
    (1..=n)
        .map(|ip| {
            let listen = if ip == 1 { seed } else { free_peer_addr(ip) };
            MeshNode::start(&spec(NodeSpec::new(listen, seed)))
        })
        .collect()
}

/// Every node hashes its whole mount at the same time; each must match the source.
fn read_all_at_once(nodes: &[&MeshNode], want: &BTreeMap<String, String>) {
    std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|n| s.spawn(move || (n.mnt.clone(), hash_tree(&n.mnt))))
            .collect();
        for h in handles {
            let (mnt, got) = h.join().unwrap();
            let got = got.unwrap_or_else(|e| panic!("reading {}: {e}", mnt.display()));
            assert!(
                got == *want,
                "{} does not hash like the source tree",
                mnt.display()
            );
        }
    });
}

fn sum(nodes: &[&MeshNode], metric: &str, label: &str) -> u64 {
    nodes.iter().map(|n| n.metric(metric, label)).sum()
}

#[test]
fn five_nodes_read_one_image_and_the_origin_sends_it_about_once() {
    let cluster = Cluster::debian();
    let want = source_hashes();
    let nodes = start_nodes(5, |s| s);
    let all: Vec<&MeshNode> = nodes.iter().collect();
    wait_members(&all, 5);
    for n in &nodes {
        n.mount(&cluster);
    }
    read_all_at_once(&all, &want);

    let origin = sum(&all, "warren_chunk_fetch_bytes_total", "origin");
    let peer = sum(&all, "warren_chunk_fetch_bytes_total", "peer");
    let registry = cluster.registry_blob_bytes();
    eprintln!(
        "image chunk bytes {}, origin chunk bytes {origin} ({:.3}x), peer bytes {peer}, \
         registry blob bytes {registry} of {} ({:.3}x); owner fetches {}, owner dedup {}, hedges {}, holder hints {}",
        cluster.chunk_bytes,
        origin as f64 / cluster.chunk_bytes as f64,
        cluster.blob_bytes,
        registry as f64 / cluster.blob_bytes as f64,
        sum(&all, "warren_peer_owner_fetches_total", ""),
        sum(&all, "warren_peer_owner_dedup_total", ""),
        sum(&all, "warren_peer_hedges_total", ""),
        sum(&all, "warren_peer_redirects_total", ""),
    );
    assert!(
        origin as f64 <= 1.1 * cluster.chunk_bytes as f64,
        "origin sent {origin} chunk bytes for an image of {}",
        cluster.chunk_bytes
    );
    assert!(registry as f64 <= 1.1 * cluster.blob_bytes as f64);
    // Four of five nodes got most of the image from their peers.
    assert!(
        peer as f64 >= 3.0 * cluster.chunk_bytes as f64,
        "peer bytes {peer}"
    );
    assert_eq!(sum(&all, "warren_chunk_digest_failures_total", ""), 0);
    assert_eq!(sum(&all, "warren_peer_bad_chunks_total", ""), 0);
    // Each node's API lists a connection to every other member, and over loopback path
    // MTU discovery has taken its datagrams past Ethernet's 1,472 bytes.
    for n in &nodes {
        let peers = n.peers();
        let conns = peers["connections"]
            .as_array()
            .expect("no connections list");
        assert_eq!(conns.len(), 4, "{peers}");
        for c in conns {
            assert!(c["datagram_bytes"].as_u64().unwrap_or(0) > 1_472, "{peers}");
        }
    }
}

#[test]
fn a_node_killed_while_serving_leaves_the_others_reading_right() {
    let cluster = Cluster::debian();
    let want = source_hashes();
    let mut nodes = start_nodes(4, |s| s);
    wait_members(&nodes.iter().collect::<Vec<_>>(), 4);
    for n in &nodes {
        n.mount(&cluster);
    }
    let (victim, rest) = nodes.split_first_mut().unwrap();
    let readers: Vec<&MeshNode> = rest.iter().collect();
    std::thread::scope(|s| {
        let reading = s.spawn(|| read_all_at_once(&readers, &want));
        // Kill the node once it has served something to the readers.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while victim.metric("warren_peer_served_chunks_total", "") < 20 {
            assert!(
                std::time::Instant::now() < deadline,
                "the victim served nothing"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        victim.kill();
        reading.join().unwrap();
    });
    wait_members(&readers, 3);
    assert_eq!(sum(&readers, "warren_chunk_digest_failures_total", ""), 0);
}

#[test]
fn a_lying_node_is_shunned_and_nothing_wrong_is_served_or_stored() {
    let cluster = Cluster::debian();
    let want = source_hashes();
    let nodes = start_nodes(3, |mut s| {
        if s.listen.ip().to_string().ends_with(".3") {
            s.env.push(("WARREN_PEER_FAULT_CORRUPT".into(), "1".into()));
        }
        s
    });
    let all: Vec<&MeshNode> = nodes.iter().collect();
    wait_members(&all, 3);
    for n in &nodes {
        n.mount(&cluster);
    }
    let liar = &nodes[2];
    let honest = [&nodes[0], &nodes[1]];
    // The liar reads first, so it holds everything it will be asked for.
    read_all_at_once(&[liar], &want);
    read_all_at_once(&honest, &want);
    let liar_addr = liar.peer_addr.to_string();
    for n in honest {
        let peers = n.peers();
        let bad: Vec<String> = serde_json::from_value(peers["bad_peers"].clone()).unwrap();
        assert_eq!(bad, vec![liar_addr.clone()], "{peers}");
        assert!(n.metric("warren_peer_bad_chunks_total", "") >= 1);
    }
    // What the honest nodes stored is right: read again from their stores.
    drop_page_cache();
    read_all_at_once(&honest, &want);
    assert_eq!(sum(&honest, "warren_store_verify_failures_total", ""), 0);
}

#[test]
fn a_node_with_the_wrong_secret_can_neither_fetch_nor_serve() {
    let cluster = Cluster::debian();
    let want = source_hashes();
    let nodes = start_nodes(3, |mut s| {
        if s.listen.ip().to_string().ends_with(".3") {
            s.secret = "not-the-cluster-secret-at-all-000".into();
        }
        s
    });
    let members: Vec<&MeshNode> = nodes[..2].iter().collect();
    let stranger = &nodes[2];
    wait_members(&members, 2);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(stranger.member_count(), 1, "{}", stranger.peers());
    for n in &nodes {
        n.mount(&cluster);
    }
    read_all_at_once(&[&nodes[0], &nodes[1], stranger], &want);
    assert_eq!(stranger.metric("warren_chunk_fetch_bytes_total", "peer"), 0);
    assert_eq!(stranger.metric("warren_peer_served_chunks_total", ""), 0);
    assert_eq!(stranger.metric("warren_peer_requests_total", ""), 0);
    assert_eq!(members.iter().map(|n| n.member_count()).max(), Some(2));
}

#[test]
fn members_join_and_leave_during_a_read_loop_without_errors() {
    let cluster = Cluster::debian();
    let want = source_hashes();
    // No stores: every pass goes back to the mesh and the origin.
    let mut nodes = start_nodes(2, |mut s| {
        s.store = false;
        s
    });
    wait_members(&nodes.iter().collect::<Vec<_>>(), 2);
    for n in &nodes {
        n.mount(&cluster);
    }
    let seed = nodes[0].peer_addr;
    for round in 0..3u8 {
        // A newcomer joins, is used, and leaves again while the loop reads.
        let mut spec = NodeSpec::new(free_peer_addr(3 + round), seed);
        spec.store = false;
        let newcomer = MeshNode::start(&spec);
        newcomer.mount(&cluster);
        wait_members(&[&nodes[0], &nodes[1], &newcomer], 3);
        drop_page_cache();
        std::thread::scope(|s| {
            let reading = s.spawn(|| read_all_at_once(&[&nodes[0], &nodes[1]], &want));
            std::thread::sleep(Duration::from_millis(300 + 200 * round as u64));
            let mut newcomer = newcomer;
            if round % 2 == 0 {
                newcomer.kill();
            }
            drop(newcomer);
            reading.join().unwrap();
        });
    }
    let peer = nodes[0].metric("warren_chunk_fetch_bytes_total", "peer")
        + nodes[1].metric("warren_chunk_fetch_bytes_total", "peer");
    assert!(peer > 0, "the mesh was never used");
    nodes.clear();
}
