//! Background prefetch: the image's prefetch table, a runtime list of paths, or every
//! file, fetched through the chain with an optional bandwidth cap. It waits whenever
//! on-demand reads are in progress, so a container's own reads always go first.

use super::FetchChain;
use crate::rafs::image::{ChunkRef, InodeId};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Default)]
pub struct PrefetchPlan {
    /// Files and directories (everything below them) to fetch first.
    pub inodes: Vec<InodeId>,
    /// Then every other file of the image.
    pub all: bool,
    /// Bytes per second; `None` for no cap.
    pub bandwidth: Option<u64>,
}

/// The chunks a plan covers, each digest once, in plan order.
pub fn plan_chunks(chain: &FetchChain, plan: &PrefetchPlan) -> Vec<ChunkRef> {
    let image = chain.image();
    let mut order: Vec<InodeId> = Vec::new();
    let mut stack: Vec<InodeId> = plan.inodes.iter().rev().copied().collect();
    while let Some(id) = stack.pop() {
        order.push(id);
        stack.extend(image.inodes[id].children().iter().rev().map(|c| c.inode));
    }
    if plan.all {
        order.extend(0..image.inodes.len());
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for id in order {
        for &c in image.inodes[id].chunks() {
            if let Some(info) = image.chunk(c) {
                if seen.insert(info.digest) {
                    out.push(c);
                }
            }
        }
    }
    out
}

/// Runs a plan on a background thread until it is done or `stop` is set.
pub fn spawn(
    chain: Arc<FetchChain>,
    plan: PrefetchPlan,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("warren-prefetch".into())
        .spawn(move || run(&chain, &plan, &stop))
        .expect("spawning the prefetch thread")
}

fn run(chain: &FetchChain, plan: &PrefetchPlan, stop: &AtomicBool) {
    let chunks = plan_chunks(chain, plan);
    let metrics = chain.metrics().clone();
    metrics.prefetch_chunks_total.add(chunks.len() as i64);
    let started = Instant::now();
    let mut bytes = 0u64;
    for batch in chunks.chunks(16) {
        while chain.busy_with_reads() && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        for data in chain.fetch_many(batch).into_iter().flatten() {
            bytes += data.len() as u64;
            metrics.prefetch_bytes.inc_by(data.len() as u64);
            metrics.prefetch_chunks_done.inc();
        }
        if let Some(rate) = plan.bandwidth.filter(|&r| r > 0) {
            let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
}
