//! The peer mesh ([`warren_peer`]) as a source of the fetch chain, between the store and
//! the origin, and the node's side of the mesh: what it serves to other members.
//!
//! A chunk is named on the mesh by the same digest the store keys it by; an owner asked
//! for a chunk it lacks finds its origin through the image that uses the chunk's blob
//! ([`BlobChains`]) and fetches it through that image's chain, so the chain's in-flight
//! table makes a local read and any number of members' asks one origin fetch.

use super::cache::{ChunkCache, ChunkKey, Lookup};
use super::inflight::ChunkResult;
use super::inflight::Slot;
use super::FetchChain;
use crate::api::metrics::ChunkSource;
use crate::rafs::image::{ChunkDigest, ChunkRef};
use crate::rafs::Digester;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use warren_peer::chunk::RouteKey;
use warren_peer::{ChunkId, ChunkProvider, ChunkWant, DigestAlgo, Mesh, OriginHint};

/// Where the chain asks for chunks it does not hold before it goes to the origin.
pub trait PeerSource: Send + Sync {
    /// Each chunk from the mesh, verified; `None` where the origin must be asked.
    fn fetch(&self, wants: &[ChunkWant]) -> Vec<Option<Arc<Vec<u8>>>>;
    /// For each key, whether this node is its first owner (it then goes to the origin
    /// itself).
    fn owns(&self, keys: &[RouteKey]) -> Vec<bool>;
    /// Size of the blob segments chunks are routed by; 0: by their digests.
    fn segment_bytes(&self) -> u64;
}

impl PeerSource for Mesh {
    fn fetch(&self, wants: &[ChunkWant]) -> Vec<Option<Arc<Vec<u8>>>> {
        Mesh::fetch(self, wants)
    }

    fn owns(&self, keys: &[RouteKey]) -> Vec<bool> {
        Mesh::owns(self, keys)
    }

    fn segment_bytes(&self) -> u64 {
        Mesh::segment_bytes(self)
    }
}

fn algo(d: Digester) -> DigestAlgo {
    match d {
        Digester::Blake3 => DigestAlgo::Blake3,
        Digester::Sha256 => DigestAlgo::Sha256,
    }
}

fn digester(a: DigestAlgo) -> Digester {
    match a {
        DigestAlgo::Blake3 => Digester::Blake3,
        DigestAlgo::Sha256 => Digester::Sha256,
    }
}

fn store_key(id: &ChunkId) -> ChunkKey {
    ChunkKey::new(digester(id.algo), ChunkDigest(id.digest))
}

/// Most origin requests one read (or one member's ask) makes at the same time.
const ORIGIN_REQUESTS_AT_ONCE: usize = 8;

type Owned = Vec<(ChunkRef, Arc<Slot>)>;
/// A claimed chunk and what the mesh gave for it.
type Answered = Vec<(ChunkRef, Arc<Slot>, Option<Arc<Vec<u8>>>)>;

impl FetchChain {
    /// Lets this chain ask the mesh for chunks (once, right after it is built).
    pub fn join_mesh(&self, peers: Arc<dyn PeerSource>) {
        let _ = self.peers.set(peers);
    }

    /// Where the mesh routes chunk `c`: its blob segment of `segment_bytes`, or its
    /// digest when segments are off (0).
    pub(super) fn route_key(&self, c: ChunkRef, segment_bytes: u64) -> RouteKey {
        let info = self.info(c);
        match info.compressed_offset.checked_div(segment_bytes) {
            Some(segment) => {
                let mut h = blake3::Hasher::new();
                h.update(self.image.blobs[c.blob as usize].blob_id.as_bytes());
                h.update(&segment.to_le_bytes());
                *h.finalize().as_bytes()
            }
            None => info.digest.0,
        }
    }

    fn want(&self, c: ChunkRef, segment_bytes: u64) -> ChunkWant {
        let info = self.info(c);
        ChunkWant {
            id: ChunkId {
                algo: algo(self.image.digester),
                digest: info.digest.0,
            },
            route: self.route_key(c, segment_bytes),
            size: info.uncompressed_size,
            origin: OriginHint {
                blob_id: self.image.blobs[c.blob as usize].blob_id.clone(),
                chunk_index: c.index,
            },
        }
    }

    /// Fetches the claimed chunks: the ones this node owns from the origin, the others
    /// from their owners at the same time, and what the mesh could not give from the
    /// origin after all. Each chunk's waiters are released as soon as it is ready.
    pub(super) fn fetch_claimed(
        &self,
        owned: Owned,
        ask_peers: bool,
        found: &mut HashMap<ChunkDigest, ChunkResult>,
    ) {
        let peers = self.peers.get().filter(|_| ask_peers && !owned.is_empty());
        let Some(peers) = peers else {
            return self.fetch_from_origin(owned, found);
        };
        let segment = peers.segment_bytes();
        let all: Vec<ChunkWant> = owned.iter().map(|(c, _)| self.want(*c, segment)).collect();
        let keys: Vec<RouteKey> = all.iter().map(|w| w.route).collect();
        let (mut theirs, mut wants, mut mine) = (Vec::new(), Vec::new(), Vec::new());
        for ((claim, want), here) in owned.into_iter().zip(all).zip(peers.owns(&keys)) {
            if here {
                mine.push(claim);
            } else {
                theirs.push(claim);
                wants.push(want);
            }
        }
        let from_peers = if mine.is_empty() {
            self.ask_peers(peers.as_ref(), theirs, &wants)
        } else {
            std::thread::scope(|s| {
                let asked = s.spawn(|| self.ask_peers(peers.as_ref(), theirs, &wants));
                self.fetch_from_origin(mine, found);
                asked.join().unwrap_or_default()
            })
        };
        let mut rest = Vec::new();
        for (c, slot, data) in from_peers {
            let info = self.info(c);
            match data {
                Some(data) => {
                    self.metrics
                        .record_fetch(ChunkSource::Peer, data.len() as u64);
                    self.hot_put(info.digest, &data);
                    self.cache.put(&self.key(info.digest), &data);
                    self.inflight.finish(&info.digest, &slot, Ok(data.clone()));
                    found.insert(info.digest, Ok(data));
                }
                None => {
                    slot.set_asking_peers(false);
                    rest.push((c, slot));
                }
            }
        }
        self.fetch_from_origin(rest, found);
    }

    /// Asks the mesh for `theirs` (`wants` describes them, in the same order).
    fn ask_peers(&self, peers: &dyn PeerSource, theirs: Owned, wants: &[ChunkWant]) -> Answered {
        if theirs.is_empty() {
            return Vec::new();
        }
        for (_, slot) in &theirs {
            slot.set_asking_peers(true);
        }
        let got = peers.fetch(wants);
        theirs
            .into_iter()
            .zip(got.into_iter().chain(std::iter::repeat(None)))
            .map(|((c, slot), data)| {
                let size = self.info(c).uncompressed_size as usize;
                (c, slot, data.filter(|d| d.len() == size))
            })
            .collect()
    }

    /// One origin request per run of adjacent chunks, several at a time: with the mesh a
    /// node's share of a read window is scattered (its peers own the chunks between), and
    /// one request after another would add their latencies up.
    fn fetch_from_origin(&self, owned: Owned, found: &mut HashMap<ChunkDigest, ChunkResult>) {
        let runs = self.runs(owned);
        if runs.len() <= 1 {
            for (c, result) in runs.into_iter().flat_map(|run| self.fetch_run(run)) {
                found.insert(self.info(c).digest, result);
            }
            return;
        }
        let queue = Mutex::new(runs.into_iter());
        let next = || queue.lock().unwrap_or_else(|p| p.into_inner()).next();
        let workers = ORIGIN_REQUESTS_AT_ONCE.min(queue.lock().map_or(1, |q| q.len()));
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    s.spawn(|| {
                        let mut done = Vec::new();
                        while let Some(run) = next() {
                            done.extend(self.fetch_run(run));
                        }
                        done
                    })
                })
                .collect();
            for h in handles {
                for (c, result) in h.join().unwrap_or_default() {
                    found.insert(self.info(c).digest, result);
                }
            }
        });
    }
}

/// The node's mounted images by blob id: where an owner finds the origin of a chunk a
/// member asks for.
#[derive(Default)]
pub struct BlobChains {
    chains: Mutex<HashMap<String, Vec<Weak<FetchChain>>>>,
}

impl BlobChains {
    pub fn register(&self, chain: &Arc<FetchChain>) {
        let mut map = self.chains.lock().unwrap_or_else(|p| p.into_inner());
        for blob in &chain.image().blobs {
            let list = map.entry(blob.blob_id.clone()).or_default();
            list.retain(|w| w.strong_count() > 0);
            list.push(Arc::downgrade(chain));
        }
    }

    fn find(&self, blob_id: &str) -> Option<Arc<FetchChain>> {
        let map = self.chains.lock().unwrap_or_else(|p| p.into_inner());
        map.get(blob_id)?.iter().find_map(Weak::upgrade)
    }
}

/// What this node lends the mesh: the chunks in its store, and as an owner, the origins
/// of the images it has mounted.
pub struct NodeChunks {
    pub cache: Arc<dyn ChunkCache>,
    pub chains: Arc<BlobChains>,
}

impl NodeChunks {
    /// The chain of a mounted image with the wanted chunk's blob, same digest algorithm.
    fn chain_of(&self, want: &ChunkWant) -> Option<Arc<FetchChain>> {
        self.chains
            .find(&want.origin.blob_id)
            .filter(|c| algo(c.image().digester) == want.id.algo)
    }
}

impl ChunkProvider for NodeChunks {
    fn in_memory(&self, want: &ChunkWant) -> Option<Arc<Vec<u8>>> {
        let digest = ChunkDigest(want.id.digest);
        self.chain_of(want)
            .and_then(|c| c.hot().get(&digest))
            .filter(|d| d.len() == want.size as usize)
    }

    fn held(&self, want: &ChunkWant) -> Option<Arc<Vec<u8>>> {
        // Memory first: a chunk just fetched may not have reached the store yet (its
        // writer runs behind reads), and a member sent here as to a holder asks right away.
        if let Some(d) = self.in_memory(want) {
            return Some(d);
        }
        match self.cache.get(&store_key(&want.id)) {
            Lookup::Hit(d) if d.len() == want.size as usize => Some(Arc::new(d)),
            _ => None,
        }
    }

    fn held_or_arriving(&self, want: &ChunkWant) -> Option<Arc<Vec<u8>>> {
        if let Some(data) = self.held(want) {
            return Some(data);
        }
        // No cycle of waits: an owner points askers only at members it serves itself.
        let slot = self
            .chain_of(want)?
            .inflight
            .get(&ChunkDigest(want.id.digest))?;
        slot.wait().ok().filter(|d| d.len() == want.size as usize)
    }

    fn fetch_as_owner(&self, wants: &[ChunkWant]) -> Vec<Option<Arc<Vec<u8>>>> {
        let mut out = vec![None; wants.len()];
        let mut by_blob: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, w) in wants.iter().enumerate() {
            by_blob.entry(&w.origin.blob_id).or_default().push(i);
        }
        for (blob_id, idx) in by_blob {
            let Some(chain) = self.chains.find(blob_id) else {
                tracing::debug!(
                    blob = blob_id,
                    "asked as owner for a blob no mounted image uses"
                );
                continue;
            };
            let Some(blob) = chain
                .image()
                .blobs
                .iter()
                .position(|b| b.blob_id == blob_id)
            else {
                continue;
            };
            // Only chunks the image records under the same index and digest: a member's
            // word on where a chunk lives is never trusted blindly.
            let known: Vec<(usize, ChunkRef)> = idx
                .into_iter()
                .filter_map(|i| {
                    let w = &wants[i];
                    let c = ChunkRef {
                        blob: blob as u32,
                        index: w.origin.chunk_index,
                    };
                    let info = chain.image().blobs[blob].chunks.get(c.index as usize)?;
                    let same = info.digest.0 == w.id.digest
                        && algo(chain.image().digester) == w.id.algo
                        && info.uncompressed_size == w.size
                        && !info.is_hole();
                    same.then_some((i, c))
                })
                .collect();
            let refs: Vec<ChunkRef> = known.iter().map(|(_, c)| *c).collect();
            for ((i, _), result) in known.iter().zip(chain.fetch_for_peers(&refs)) {
                out[*i] = result.ok();
            }
        }
        out
    }
}
