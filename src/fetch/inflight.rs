//! At most one fetch of a chunk at a time: the first reader that misses a chunk fetches it,
//! later readers of the same digest wait for that result instead of asking the origin too.

use crate::rafs::image::ChunkDigest;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

pub type ChunkResult = Result<Arc<Vec<u8>>, String>;

#[derive(Default)]
pub struct Slot {
    state: Mutex<SlotState>,
    ready: Condvar,
}

#[derive(Default)]
struct SlotState {
    result: Option<ChunkResult>,
    /// The claim's owner is waiting on other members for this chunk.
    asking_peers: bool,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn wait(&self) -> ChunkResult {
        let mut s = self.lock();
        loop {
            if let Some(r) = &s.result {
                return r.clone();
            }
            s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits for the result unless (or until) the claim's owner is asking other members:
    /// then `None`. An owner serving members uses this, so two nodes each waiting on the
    /// other's answer can never hold each other up.
    pub fn wait_unless_asking_peers(&self) -> Option<ChunkResult> {
        let mut s = self.lock();
        loop {
            if let Some(r) = &s.result {
                return Some(r.clone());
            }
            if s.asking_peers {
                return None;
            }
            s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub fn set_asking_peers(&self, asking: bool) {
        self.lock().asking_peers = asking;
        self.ready.notify_all();
    }
}

/// What a caller got for one digest: the job of fetching it, or a fetch to wait for.
pub enum Claim {
    Owner(Arc<Slot>),
    Waiter(Arc<Slot>),
}

#[derive(Default)]
pub struct InFlight {
    slots: Mutex<HashMap<ChunkDigest, Arc<Slot>>>,
}

impl InFlight {
    pub fn claim(&self, digest: ChunkDigest) -> Claim {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        match slots.get(&digest) {
            Some(s) => Claim::Waiter(s.clone()),
            None => {
                let s = Arc::new(Slot::default());
                slots.insert(digest, s.clone());
                Claim::Owner(s)
            }
        }
    }

    /// The fetch of this chunk in progress, if any.
    pub fn get(&self, digest: &ChunkDigest) -> Option<Arc<Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()
    }

    /// Whether someone is fetching this chunk right now.
    pub fn contains(&self, digest: &ChunkDigest) -> bool {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(digest)
    }

    /// Publishes the owner's result to every waiter and forgets the digest.
    pub fn finish(&self, digest: &ChunkDigest, slot: &Slot, result: ChunkResult) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(digest);
        slot.lock().result = Some(result);
        slot.ready.notify_all();
    }
}
