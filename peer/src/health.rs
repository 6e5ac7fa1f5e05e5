//! What a node remembers about its peers' behaviour: who lied (served bytes that did not
//! match their digest) and who failed to answer, so requests go elsewhere for a while;
//! and, on the serving side, how much each peer may take.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Peers to skip, and until when.
#[derive(Debug)]
pub struct PeerHealth {
    bad_for: Duration,
    down_for: Duration,
    shunned: Mutex<HashMap<SocketAddr, (Instant, Mark)>>,
}

/// Why a peer is skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// It served a chunk that failed verification.
    Bad,
    /// It did not answer in time or the connection failed.
    Down,
}

impl PeerHealth {
    /// Skips liars for `bad_for` and silent peers for `down_for`.
    pub fn new(bad_for: Duration, down_for: Duration) -> Self {
        PeerHealth {
            bad_for,
            down_for,
            shunned: Mutex::new(HashMap::new()),
        }
    }

    /// Skips `peer` for the time its mark calls for.
    pub fn mark(&self, peer: SocketAddr, mark: Mark) {
        let until = Instant::now()
            + match mark {
                Mark::Bad => self.bad_for,
                Mark::Down => self.down_for,
            };
        let mut map = self.shunned.lock().unwrap_or_else(|p| p.into_inner());
        // A liar stays marked bad even if it later also times out.
        let keep_bad = matches!(map.get(&peer), Some((t, Mark::Bad)) if *t > until);
        if !keep_bad {
            map.insert(peer, (until, mark));
        }
    }

    /// Whether `peer` should be asked now.
    pub fn usable(&self, peer: SocketAddr) -> bool {
        let mut map = self.shunned.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&peer) {
            Some((until, _)) if *until > Instant::now() => false,
            Some(_) => {
                map.remove(&peer);
                true
            }
            None => true,
        }
    }

    /// The peers marked bad right now.
    pub fn bad_peers(&self) -> Vec<SocketAddr> {
        let now = Instant::now();
        let map = self.shunned.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|(_, (until, mark))| *mark == Mark::Bad && *until > now)
            .map(|(a, _)| *a)
            .collect()
    }
}

/// Per-peer limits of the serving side: requests at once and bytes per second. Keyed by
/// the peer's IP address, so reconnecting does not reset them.
#[derive(Debug)]
pub struct ServeLimits {
    bytes_per_sec: u64,
    concurrency: usize,
    peers: Mutex<HashMap<IpAddr, PeerBudget>>,
}

#[derive(Debug)]
struct PeerBudget {
    active: usize,
    tokens: f64,
    refilled: Instant,
}

/// One request's slot in its peer's concurrency budget; freed on drop.
pub struct ServeSlot {
    limits: Arc<ServeLimits>,
    peer: IpAddr,
}

impl Drop for ServeSlot {
    fn drop(&mut self) {
        let mut peers = self.limits.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = peers.get_mut(&self.peer) {
            b.active = b.active.saturating_sub(1);
        }
    }
}

impl ServeLimits {
    /// Limits of `bytes_per_sec` (0: none) and `concurrency` requests per peer.
    pub fn new(bytes_per_sec: u64, concurrency: usize) -> Arc<Self> {
        Arc::new(ServeLimits {
            bytes_per_sec,
            concurrency: concurrency.max(1),
            peers: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more request from `peer`, unless it has too many in progress.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<ServeSlot> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let b = peers.entry(peer).or_insert_with(|| PeerBudget {
            active: 0,
            tokens: self.bytes_per_sec as f64,
            refilled: Instant::now(),
        });
        if b.active >= self.concurrency {
            return None;
        }
        b.active += 1;
        Some(ServeSlot {
            limits: self.clone(),
            peer,
        })
    }

    /// How long to wait before sending `bytes` more to `peer` (token bucket, one second
    /// of burst); the bytes are counted as sent.
    pub fn delay_for(&self, peer: IpAddr, bytes: u64) -> Duration {
        if self.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        let rate = self.bytes_per_sec as f64;
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(b) = peers.get_mut(&peer) else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.refilled).as_secs_f64() * rate).min(rate);
        b.refilled = now;
        b.tokens -= bytes as f64;
        if b.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.tokens / rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_expire_and_liars_stay_bad() {
        let h = PeerHealth::new(Duration::from_secs(60), Duration::from_millis(1));
        let p: SocketAddr = "127.0.0.9:1".parse().unwrap();
        h.mark(p, Mark::Down);
        std::thread::sleep(Duration::from_millis(5));
        assert!(h.usable(p));
        h.mark(p, Mark::Bad);
        h.mark(p, Mark::Down);
        assert!(!h.usable(p));
        assert_eq!(h.bad_peers(), vec![p]);
    }

    #[test]
    fn limits_bound_concurrency_and_rate() {
        let l = ServeLimits::new(1000, 2);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let a = l.admit(ip).unwrap();
        let _b = l.admit(ip).unwrap();
        assert!(l.admit(ip).is_none());
        drop(a);
        assert!(l.admit(ip).is_some());
        assert_eq!(l.delay_for(ip, 500), Duration::ZERO);
        let d = l.delay_for(ip, 1500);
        assert!(
            d > Duration::from_millis(900) && d <= Duration::from_secs(1),
            "{d:?}"
        );
    }
}
