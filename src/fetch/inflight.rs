//! At most one fetch of a chunk at a time: the first reader that misses a chunk fetches it,
//! later readers of the same digest wait for that result instead of asking the origin too.

use crate::rafs::image::ChunkDigest;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

pub type ChunkResult = Result<Arc<Vec<u8>>, String>;

#[derive(Default)]
pub struct Slot {
    result: Mutex<Option<ChunkResult>>,
    ready: Condvar,
}

impl Slot {
    pub fn wait(&self) -> ChunkResult {
        let mut r = self.result.lock().unwrap_or_else(|p| p.into_inner());
        while r.is_none() {
            r = self.ready.wait(r).unwrap_or_else(|p| p.into_inner());
        }
        r.clone().expect("set above")
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

    /// Publishes the owner's result to every waiter and forgets the digest.
    pub fn finish(&self, digest: &ChunkDigest, slot: &Slot, result: ChunkResult) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(digest);
        *slot.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
        slot.ready.notify_all();
    }
}
