//! Holder hints: the members an owner has sent a chunk to hold it now (they verify and
//! store what they get). Once an owner has served a chunk `redirect_after` times, it points
//! later askers at those holders in turn instead of sending the bytes again, so a chunk
//! that a whole fleet wants at once does not pin one owner's uplink.

use crate::chunk::ChunkId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

/// Chunks tracked at most; past this the table starts afresh (hints are only hints).
const MAX_TRACKED: usize = 1 << 16;
/// Holders remembered per chunk (the latest ones).
const MAX_HOLDERS: usize = 8;

/// Who got which chunk from this node.
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

    /// A member to send `asker` to instead of serving the chunk again, if it is time.
    pub fn redirect(&self, id: &ChunkId, asker: SocketAddr) -> Option<SocketAddr> {
        if self.redirect_after == 0 {
            return None;
        }
        let mut map = self.served.lock().unwrap_or_else(|p| p.into_inner());
        let s = map.get_mut(id)?;
        if s.times < self.redirect_after {
            return None;
        }
        let others: Vec<SocketAddr> = s.holders.iter().copied().filter(|h| *h != asker).collect();
        if others.is_empty() {
            return None;
        }
        s.next = s.next.wrapping_add(1);
        Some(others[s.next % others.len()])
    }

    /// Records that `to` got the chunk from this node.
    pub fn served(&self, id: ChunkId, to: SocketAddr) {
        let mut map = self.served.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(&id) {
            map.clear();
        }
        let s = map.entry(id).or_default();
        s.times = s.times.saturating_add(1);
        if !s.holders.contains(&to) {
            if s.holders.len() == MAX_HOLDERS {
                s.holders.remove(0);
            }
            s.holders.push(to);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::DigestAlgo;

    #[test]
    fn redirects_in_turn_after_enough_serves_never_to_the_asker() {
        let h = Holders::new(2);
        let id = ChunkId {
            algo: DigestAlgo::Blake3,
            digest: [7; 32],
        };
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:1".parse().unwrap();
        let c: SocketAddr = "127.0.0.3:1".parse().unwrap();
        h.served(id, a);
        assert_eq!(h.redirect(&id, c), None);
        h.served(id, b);
        let picks: Vec<_> = (0..4).filter_map(|_| h.redirect(&id, c)).collect();
        assert!(picks.contains(&a) && picks.contains(&b));
        assert_eq!(h.redirect(&id, a), Some(b));
        assert_eq!(Holders::new(0).redirect(&id, c), None);
    }
}
