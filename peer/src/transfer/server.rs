//! The serving side: answers members' requests from the node's store, and as an owner
//! fetches what it lacks from the origin, once however many members ask at the same time.

use super::ChunkProvider;
use crate::chunk::{ChunkId, ChunkWant};
use crate::health::ServeLimits;
use crate::holders::Holders;
use crate::stats::MeshStats;
use crate::wire::{self, ItemHeader, Outcome, Status};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

type Shared = Option<Arc<Vec<u8>>>;

/// State shared by every connection the server takes.
pub struct ServeContext {
    /// The node's chunks and origins.
    pub provider: Arc<dyn ChunkProvider>,
    /// Per-peer serving limits.
    pub limits: Arc<ServeLimits>,
    /// Where serving is counted.
    pub stats: Arc<MeshStats>,
    /// Owner fetches in progress, by chunk: later asks wait for the first one's result.
    owner_fetches: Mutex<HashMap<ChunkId, watch::Receiver<Option<Shared>>>>,
    /// Test hook: serve every chunk with one byte flipped (a lying member).
    corrupt: bool,
    /// Who got which chunk from here, for holder hints.
    holders: Holders,
}

impl ServeContext {
    /// The serving state: holder hints after `redirect_after` serves of a chunk; `corrupt`
    /// is the lying-member test hook.
    pub fn new(
        provider: Arc<dyn ChunkProvider>,
        limits: Arc<ServeLimits>,
        stats: Arc<MeshStats>,
        redirect_after: u32,
        corrupt: bool,
    ) -> Arc<Self> {
        Arc::new(ServeContext {
            provider,
            limits,
            stats,
            owner_fetches: Mutex::new(HashMap::new()),
            corrupt,
            holders: Holders::new(redirect_after),
        })
    }
}

/// Takes connections until the endpoint closes.
pub async fn serve(endpoint: quinn::Endpoint, ctx: Arc<ServeContext>) {
    while let Some(incoming) = endpoint.accept().await {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => serve_connection(conn, ctx).await,
                // Among these: machines without a cluster certificate.
                Err(e) => tracing::debug!(peer = %remote, error = %e, "peer handshake failed"),
            }
        });
    }
}

async fn serve_connection(conn: quinn::Connection, ctx: Arc<ServeContext>) {
    // Members send from the socket they listen on: this is the peer's member address.
    let remote = conn.remote_address();
    while let Ok((send, recv)) = conn.accept_bi().await {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_stream(&ctx, remote, send, recv).await {
                tracing::debug!(peer = %remote, error = %e, "serving a chunk request");
            }
        });
    }
}

#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("reading the request: {0}")]
    Read(#[from] quinn::ReadToEndError),
    #[error("writing the answer: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("bad request: {0}")]
    Wire(#[from] wire::WireError),
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
}

async fn serve_stream(
    ctx: &Arc<ServeContext>,
    remote: SocketAddr,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), ServeError> {
    let bytes = recv.read_to_end(wire::MAX_REQUEST).await?;
    let req = match wire::decode_request(&bytes) {
        Ok(r) => r,
        Err(e) => {
            send.write_all(&wire::encode_response_header(Status::BadRequest))
                .await?;
            send.finish()?;
            return Err(e.into());
        }
    };
    let Some(_slot) = ctx.limits.admit(remote.ip()) else {
        MeshStats::add(&ctx.stats.served_busy, 1);
        send.write_all(&wire::encode_response_header(Status::Busy))
            .await?;
        send.finish()?;
        return Ok(());
    };
    // Accept before looking anything up: the asker times its hedge on this.
    send.write_all(&wire::encode_response_header(Status::Accepted))
        .await?;
    let mut wants = Vec::new();
    for (i, want) in req.wants.iter().enumerate() {
        match ctx.holders.route(&want.id, remote, !req.no_redirect) {
            Some(holder) => {
                let addr = holder.to_string();
                let header = ItemHeader {
                    entry: i as u16,
                    outcome: Outcome::Holder,
                    len: addr.len() as u32,
                };
                send.write_all(&wire::encode_item_header(header)).await?;
                send.write_all(addr.as_bytes()).await?;
                MeshStats::add(&ctx.stats.redirects, 1);
            }
            None => wants.push((i, want.clone())),
        }
    }
    // What is in memory goes out without a trip through the blocking pool: on a loaded
    // machine every hand-off between threads waits for a time slice.
    let mut rest = Vec::new();
    for (i, want) in wants {
        match ctx.provider.in_memory(&want) {
            Some(data) => send_item(ctx, remote, &mut send, i, Some(&data)).await?,
            None => rest.push((i, want)),
        }
    }
    let wants = rest;
    if wants.is_empty() {
        send.finish()?;
        return Ok(());
    }
    let provider = ctx.provider.clone();
    let lookups: Vec<ChunkWant> = wants.iter().map(|(_, w)| w.clone()).collect();
    // Asked as a holder, this node may still be receiving the chunk: it answers once in.
    let as_holder = !req.as_owner;
    let held = tokio::task::spawn_blocking(move || {
        lookups
            .iter()
            .map(|w| match as_holder {
                true => provider.held_or_arriving(w),
                false => provider.held(w),
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let mut missing = Vec::new();
    for (k, (i, want)) in wants.into_iter().enumerate() {
        match held.get(k).cloned().flatten() {
            Some(data) => send_item(ctx, remote, &mut send, i, Some(&data)).await?,
            None => missing.push((i, want)),
        }
    }
    if req.as_owner && !missing.is_empty() {
        for (i, result) in owner_fetch(ctx, missing).await {
            send_item(ctx, remote, &mut send, i, result.as_deref()).await?;
        }
    } else {
        for (i, _) in missing {
            send_item(ctx, remote, &mut send, i, None).await?;
        }
    }
    send.finish()?;
    Ok(())
}

async fn send_item(
    ctx: &ServeContext,
    remote: SocketAddr,
    send: &mut quinn::SendStream,
    entry: usize,
    data: Option<&Vec<u8>>,
) -> Result<(), ServeError> {
    let ip = remote.ip();
    let (outcome, len) = match data {
        Some(d) => (Outcome::Data, d.len() as u32),
        None => (Outcome::Miss, 0),
    };
    let header = ItemHeader {
        entry: entry as u16,
        outcome,
        len,
    };
    if let Some(d) = data {
        let wait = ctx.limits.delay_for(ip, d.len() as u64);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
    send.write_all(&wire::encode_item_header(header)).await?;
    if let Some(d) = data {
        if ctx.corrupt && !d.is_empty() {
            let mut bad = d.clone();
            bad[0] ^= 0xff;
            send.write_all(&bad).await?;
        } else {
            send.write_all(d).await?;
        }
        MeshStats::add(&ctx.stats.served_chunks, 1);
        MeshStats::add(&ctx.stats.served_bytes, d.len() as u64);
    }
    Ok(())
}

/// Drops a finished (or abandoned) owner fetch from the in-flight map.
struct InFlightEntry<'a> {
    ctx: &'a ServeContext,
    id: ChunkId,
}

impl Drop for InFlightEntry<'_> {
    fn drop(&mut self) {
        let mut map = self
            .ctx
            .owner_fetches
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.remove(&self.id);
    }
}

/// Fetches `wants` as their owner; a chunk another ask is already fetching is waited for,
/// not fetched again.
async fn owner_fetch(
    ctx: &Arc<ServeContext>,
    wants: Vec<(usize, ChunkWant)>,
) -> Vec<(usize, Shared)> {
    let mut mine = Vec::new();
    let mut joined = Vec::new();
    {
        let mut map = ctx.owner_fetches.lock().unwrap_or_else(|p| p.into_inner());
        for (i, w) in wants {
            match map.get(&w.id) {
                Some(rx) => joined.push((i, rx.clone())),
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.insert(w.id, rx);
                    mine.push((i, w, tx));
                }
            }
        }
    }
    MeshStats::add(&ctx.stats.owner_dedup, joined.len() as u64);
    MeshStats::add(&ctx.stats.owner_fetches, mine.len() as u64);
    let mut out = Vec::new();
    if !mine.is_empty() {
        let _entries: Vec<InFlightEntry> = mine
            .iter()
            .map(|(_, w, _)| InFlightEntry { ctx, id: w.id })
            .collect();
        let provider = ctx.provider.clone();
        let list: Vec<ChunkWant> = mine.iter().map(|(_, w, _)| w.clone()).collect();
        let started = std::time::Instant::now();
        let results = tokio::task::spawn_blocking(move || provider.fetch_as_owner(&list))
            .await
            .unwrap_or_default();
        tracing::debug!(chunks = results.len(), took = ?started.elapsed(), "fetched as owner");
        for (k, (i, _, tx)) in mine.into_iter().enumerate() {
            let r = results.get(k).cloned().flatten();
            let _ = tx.send(Some(r.clone()));
            out.push((i, r));
        }
    }
    for (i, mut rx) in joined {
        let r = loop {
            if let Some(r) = rx.borrow_and_update().clone() {
                break r;
            }
            if rx.changed().await.is_err() {
                // The first asker went away before its fetch ended.
                break rx.borrow().clone().flatten();
            }
        };
        out.push((i, r));
    }
    out
}
