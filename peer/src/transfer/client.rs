//! The asking side: a connection pool over one QUIC endpoint, and one request at a time
//! per call, with the hedge and deadline of [`crate::config::MeshConfig`]. Every chunk is
//! checked against its digest before it leaves this module.

use super::Answer;
use crate::chunk::ChunkWant;
use crate::health::{Mark, PeerHealth};
use crate::stats::MeshStats;
use crate::trust::PEER_NAME;
use crate::wire::{self, Outcome, Request, Status};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::timeout;

/// Asks peers for chunks.
pub struct Client {
    endpoint: quinn::Endpoint,
    /// Open connections by peer; never held across an await.
    connections: Mutex<HashMap<SocketAddr, quinn::Connection>>,
    /// Connects in progress, so a burst of asks to a new peer makes one handshake.
    connecting: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
    pub(crate) health: Arc<PeerHealth>,
    stats: Arc<MeshStats>,
    connect_timeout: Duration,
    hedge: Duration,
    /// Moving average of how long peers take to accept, in microseconds.
    accept_average_us: AtomicU64,
    deadline: Duration,
}

impl Client {
    /// A client over `endpoint` that gives an owner `hedge` to accept and `deadline` to answer.
    pub fn new(
        endpoint: quinn::Endpoint,
        health: Arc<PeerHealth>,
        stats: Arc<MeshStats>,
        hedge: Duration,
        deadline: Duration,
    ) -> Self {
        Client {
            endpoint,
            connections: Mutex::new(HashMap::new()),
            connecting: Mutex::new(HashMap::new()),
            health,
            stats,
            connect_timeout: (hedge * 10).clamp(Duration::from_millis(250), Duration::from_secs(2)),
            hedge,
            accept_average_us: AtomicU64::new(0),
            deadline,
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, quinn::Connection>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The open connection to `peer`, if there is one.
    fn open_connection(&self, peer: SocketAddr) -> Option<quinn::Connection> {
        self.table()
            .get(&peer)
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    async fn connection(&self, peer: SocketAddr) -> Option<quinn::Connection> {
        let gate = {
            let mut c = self.connecting.lock().unwrap_or_else(|p| p.into_inner());
            c.entry(peer).or_default().clone()
        };
        let _one = gate.lock().await;
        if let Some(conn) = self.open_connection(peer) {
            return Some(conn);
        }
        let connecting = match self.endpoint.connect(peer, PEER_NAME) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "cannot connect");
                return None;
            }
        };
        match timeout(self.connect_timeout, connecting).await {
            Ok(Ok(conn)) => {
                self.table().insert(peer, conn.clone());
                Some(conn)
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "connecting to peer failed");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "connecting to peer timed out");
                None
            }
        }
    }

    /// The configured hedge, or four times the usual accept time when the cluster is
    /// slower than that (an overloaded machine): hedging then only cuts off outliers,
    /// instead of sending every request on to a second owner and the origin.
    fn hedge_budget(&self) -> Duration {
        let usual = Duration::from_micros(self.accept_average_us.load(Ordering::Relaxed));
        self.hedge.max(usual * 4).min(self.deadline)
    }

    fn note_accept(&self, took: Duration) {
        let sample = took.as_micros().min(u64::MAX as u128) as u64;
        let _ = self
            .accept_average_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
                Some(if avg == 0 {
                    sample
                } else {
                    avg - avg / 8 + sample / 8
                })
            });
    }

    fn failed(&self, peer: SocketAddr, n: usize, why: &str) -> Vec<Answer> {
        tracing::debug!(%peer, why, "peer request failed");
        MeshStats::add(&self.stats.peer_errors, 1);
        self.health.mark(peer, Mark::Down);
        vec![Answer::Failed; n]
    }

    /// Asks `peer` for `wants`; `as_owner` asks it to fetch what it lacks from the origin,
    /// `no_redirect` to answer with bytes rather than point at a holder.
    pub async fn ask(
        &self,
        peer: SocketAddr,
        as_owner: bool,
        no_redirect: bool,
        wants: &[ChunkWant],
    ) -> Vec<Answer> {
        let n = wants.len();
        let Ok(request) = wire::encode_request(&Request {
            as_owner,
            no_redirect,
            wants: wants.to_vec(),
        }) else {
            return vec![Answer::Failed; n];
        };
        MeshStats::add(&self.stats.requests, 1);
        let started = std::time::Instant::now();
        let Some(conn) = self.connection(peer).await else {
            return self.failed(peer, n, "no connection");
        };
        let opened = async {
            let (mut send, mut recv) = conn.open_bi().await.ok()?;
            send.write_all(&request).await.ok()?;
            send.finish().ok()?;
            let mut header = [0u8; 2];
            recv.read_exact(&mut header).await.ok()?;
            Some((recv, header))
        };
        let (mut recv, header) = match timeout(self.hedge_budget(), opened).await {
            Ok(Some(x)) => x,
            Ok(None) => return self.failed(peer, n, "stream failed"),
            Err(_) => {
                // Slow is not down (a busy machine accepts late): this request goes on to
                // the next owner, the next one still asks this peer first.
                MeshStats::add(&self.stats.hedges, 1);
                tracing::debug!(%peer, "not accepted within the hedge budget");
                return vec![Answer::Failed; n];
            }
        };
        match wire::decode_response_header(header) {
            Ok(Status::Accepted) => {}
            Ok(Status::Busy) => {
                MeshStats::add(&self.stats.peer_errors, 1);
                return vec![Answer::Failed; n];
            }
            Ok(Status::BadRequest) | Err(_) => return self.failed(peer, n, "request refused"),
        }
        let accepted = started.elapsed();
        self.note_accept(accepted);
        let mut answers: Vec<Option<Answer>> = vec![None; n];
        let read_all = self.read_items(peer, &mut recv, wants, &mut answers);
        if timeout(self.deadline, read_all).await.is_err() {
            let _ = recv.stop(0u32.into());
            self.failed(peer, 0, "answer not complete before the deadline");
        }
        tracing::debug!(%peer, chunks = n, ?accepted, took = ?started.elapsed(), "asked a peer");
        answers
            .into_iter()
            .map(|a| a.unwrap_or(Answer::Failed))
            .collect()
    }

    async fn read_items(
        &self,
        peer: SocketAddr,
        recv: &mut quinn::RecvStream,
        wants: &[ChunkWant],
        answers: &mut [Option<Answer>],
    ) {
        loop {
            let mut h = [0u8; wire::ITEM_HEADER];
            if recv.read_exact(&mut h).await.is_err() {
                return; // end of the answer (or a broken stream: the rest count as failed)
            }
            let header = match wire::decode_item_header(h) {
                Ok(h)
                    if (h.entry as usize) < wants.len() && answers[h.entry as usize].is_none() =>
                {
                    h
                }
                _ => {
                    self.failed(peer, 0, "malformed answer");
                    return;
                }
            };
            let want = &wants[header.entry as usize];
            let answer = match header.outcome {
                Outcome::Miss => {
                    MeshStats::add(&self.stats.peer_misses, 1);
                    Answer::Miss
                }
                Outcome::Failed => Answer::Miss,
                Outcome::Holder => {
                    let mut addr = vec![0u8; header.len as usize];
                    if recv.read_exact(&mut addr).await.is_err() {
                        return;
                    }
                    match std::str::from_utf8(&addr).ok().and_then(|a| a.parse().ok()) {
                        Some(holder) if holder != peer => Answer::Holder(holder),
                        _ => {
                            self.failed(peer, 0, "malformed holder address");
                            return;
                        }
                    }
                }
                Outcome::Data => {
                    if header.len != want.size {
                        self.lied(peer, want, "wrong length");
                        return;
                    }
                    let mut data = vec![0u8; header.len as usize];
                    if recv.read_exact(&mut data).await.is_err() {
                        return;
                    }
                    if !want.id.matches(&data) {
                        self.lied(peer, want, "digest mismatch");
                        return;
                    }
                    MeshStats::add(&self.stats.received_chunks, 1);
                    MeshStats::add(&self.stats.received_bytes, data.len() as u64);
                    Answer::Data(Arc::new(data))
                }
            };
            answers[header.entry as usize] = Some(answer);
        }
    }

    fn lied(&self, peer: SocketAddr, want: &ChunkWant, why: &str) {
        MeshStats::add(&self.stats.bad_chunks, 1);
        self.health.mark(peer, Mark::Bad);
        tracing::error!(%peer, chunk = %want.id, why, "peer served a bad chunk; shunning it");
    }

    /// Opens connections to those of `peers` this node has none to, all at once, and
    /// forgets closed ones: a member's first ask then costs no handshake, which under a
    /// rollout's load (every node meeting every other at the same moment) added a TLS
    /// handshake per peer to the first reads.
    pub async fn keep_connected(&self, peers: &[SocketAddr]) {
        let open: Vec<SocketAddr> = {
            let mut conns = self.table();
            conns.retain(|_, c| c.close_reason().is_none());
            conns.keys().copied().collect()
        };
        let missing = peers
            .iter()
            .filter(|p| !open.contains(p) && self.health.usable(**p));
        futures::future::join_all(missing.map(|p| self.connection(*p))).await;
    }

    /// The open connections and the datagram size each has reached (path MTU discovery).
    pub fn datagram_sizes(&self) -> Vec<(SocketAddr, u16)> {
        let mut sizes: Vec<_> = self
            .table()
            .iter()
            .filter(|(_, c)| c.close_reason().is_none())
            .map(|(peer, c)| (*peer, c.stats().path.current_mtu))
            .collect();
        sizes.sort();
        sizes
    }

    /// Closes every connection (the node is leaving).
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"node stopping");
    }
}
