//! Who owns a chunk: rendezvous (highest random weight) hashing over the live members.
//! Every node computes the same owner list from the same member list, with no
//! coordination, and a member joining or leaving moves only the chunks it owns or will
//! own (about 1/N of them).

use crate::chunk::RouteKey;
use crate::membership::Member;

/// Finds the members to ask for a chunk. Standalone clusters use [`RendezvousRouter`]; a
/// Dragonfly scheduler can stand behind the same trait.
pub trait Router: Send + Sync {
    /// The chunk's owners among `members`, best first, at most `replication` of them.
    fn owners(&self, key: &RouteKey, members: &[Member], replication: usize) -> Vec<Member>;
}

/// Rendezvous hashing keyed by each member's advertised address, which stays the same
/// across restarts, so a restarted node owns what it owned before.
#[derive(Clone, Copy, Debug, Default)]
pub struct RendezvousRouter;

/// The weight of `member` for `key`.
pub fn weight(member_key: &str, key: &RouteKey) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(key);
    h.update(member_key.as_bytes());
    let out = h.finalize();
    let mut w = [0u8; 8];
    w.copy_from_slice(&out.as_bytes()[..8]);
    u64::from_le_bytes(w)
}

impl Router for RendezvousRouter {
    fn owners(&self, key: &RouteKey, members: &[Member], replication: usize) -> Vec<Member> {
        let mut scored: Vec<(u64, &Member)> =
            members.iter().map(|m| (weight(&m.key, key), m)).collect();
        scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.key.cmp(&b.1.key)));
        scored
            .into_iter()
            .take(replication)
            .map(|(_, m)| m.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(i: u8) -> Member {
        let addr = std::net::SocketAddr::from(([127, 0, 0, i], 7170));
        Member {
            key: addr.to_string(),
            quic: addr,
            node: format!("n{i}"),
        }
    }

    fn chunk(i: u32) -> RouteKey {
        *blake3::hash(&i.to_le_bytes()).as_bytes()
    }

    #[test]
    fn owners_spread_evenly_and_move_little() {
        let five: Vec<Member> = (1..=5).map(member).collect();
        let four: Vec<Member> = (1..=4).map(member).collect();
        let mut per_member = [0usize; 5];
        let mut moved = 0;
        for i in 0..5000 {
            let c = chunk(i);
            let owners = RendezvousRouter.owners(&c, &five, 2);
            assert_eq!(owners.len(), 2);
            assert_ne!(owners[0].key, owners[1].key);
            let first: usize = owners[0].node[1..].parse().unwrap();
            per_member[first - 1] += 1;
            let after = RendezvousRouter.owners(&c, &four, 1);
            if after[0].key != owners[0].key {
                moved += 1;
                // Only chunks owned by the member that left move.
                assert_eq!(owners[0].node, "n5");
            }
        }
        for n in per_member {
            assert!((800..1200).contains(&n), "{per_member:?}");
        }
        assert!(moved > 800 && moved < 1200, "{moved}");
    }
}
