//! Holder hints: the members an owner sends a chunk to hold it soon (they verify and
//! store what they get, and a holder asked for a chunk it is still receiving answers once
//! it has it). Once an owner has taken `redirect_after` askers of a chunk, it points later
//! ones at those first askers in turn instead of sending the bytes again: a chunk a whole
//! fleet wants at once spreads as a two-level tree rather than pinning one owner (a
//! 20-node start had one owner send 38 MB while the others sent almost nothing).

use crate::chunk::ChunkId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

/// Chunks tracked at most; past this the table starts afresh (hints are only hints).
const MAX_TRACKED: usize = 1 << 16;
/// Holders remembered per chunk (the latest ones).
const MAX_HOLDERS: usize = 8;

/// Who gets which chunk from this node.
#[derive(Debug)]
pub struct Holders {
    redirect_after: u32,
    served: Mutex<HashMap<ChunkId, Served>>,
}

#[derive(Debug, Default)]
struct Served {
    times: u32,
    holders: Vec<SocketAddr>,
    next: usize,
}

impl Holders {
    /// Redirects once a chunk was served `redirect_after` times; 0 never redirects.
    pub fn new(redirect_after: u32) -> Self {
        Holders {
            redirect_after,
            served: Mutex::new(HashMap::new()),
        }
    }

    /// Where `asker` gets the chunk: `None` from this node (the asker then counts as a
    /// holder), or the holder to ask instead once enough askers were taken and
    /// `may_redirect` (the asker did not come back from a holder that failed it).
    pub fn route(&self, id: &ChunkId, asker: SocketAddr, may_redirect: bool) -> Option<SocketAddr> {
        if self.redirect_after == 0 {
            return None;
        }
        let mut map = self.served.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(id) {
            map.clear();
        }
        let s = map.entry(*id).or_default();
        if may_redirect && s.times >= self.redirect_after {
            let others: Vec<SocketAddr> =
                s.holders.iter().copied().filter(|h| *h != asker).collect();
            if !others.is_empty() {
                s.next = s.next.wrapping_add(1);
                return Some(others[s.next % others.len()]);
            }
        }
        s.times = s.times.saturating_add(1);
        // The first askers are kept: they are the likeliest to hold it by now.
        if !s.holders.contains(&asker) && s.holders.len() < MAX_HOLDERS {
            s.holders.push(asker);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::DigestAlgo;

    #[test]
    fn redirects_in_turn_after_enough_askers_never_to_the_asker() {
        let h = Holders::new(2);
        let id = ChunkId {
            algo: DigestAlgo::Blake3,
            digest: [7; 32],
        };
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:1".parse().unwrap();
        let c: SocketAddr = "127.0.0.3:1".parse().unwrap();
        assert_eq!(h.route(&id, a, true), None);
        assert_eq!(h.route(&id, b, true), None);
        let picks: Vec<_> = (0..4).filter_map(|_| h.route(&id, c, true)).collect();
        assert!(picks.contains(&a) && picks.contains(&b));
        assert_eq!(h.route(&id, a, true), Some(b));
        // Back from a holder that failed it: served here, whatever the count.
        assert_eq!(h.route(&id, c, false), None);
        assert_eq!(Holders::new(0).route(&id, c, true), None);
    }
}
