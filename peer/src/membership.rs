//! Who is in the cluster right now.
//!
//! Built on libp2p: TCP inside a private network keyed by the cluster secret
//! ([`crate::trust`]), noise and yamux on top, and three behaviours:
//! - **gossipsub** carries each member's heartbeat (its name and transfer address) to every
//!   other member. Heartbeats are not signed: only holders of the cluster secret get past
//!   the private network and noise names every connection's peer, while checking a
//!   signature on every relayed copy cost a tenth of a 20-node fleet's CPU (measured).
//!   Gossip rather than Kademlia because
//!   rendezvous routing needs the *whole* live member list on every node, which is what a
//!   heartbeat topic gives; a DHT answers "who is near this key" and would add lookups to
//!   every routing decision. Gossip also relays: a node connected only to a seed still
//!   hears everyone.
//! - **identify** checks that both sides speak the same protocol version and tells each
//!   the address the other sees it at (logged, for diagnosing NAT and advertise mistakes).
//!   Members learned through gossip are dialed directly at the address their heartbeat
//!   gives, so the mesh does not hang on its seeds.
//! - **ping** keeps connections honest; a failed ping closes the connection.
//!
//! A member not heard from for `member_timeout_ms` drops out; a new one counts from its
//! first heartbeat (one `heartbeat_ms` after it connects).

use crate::config::MeshConfig;
use futures::StreamExt;
use libp2p::core::transport::upgrade::Version;
use libp2p::core::Transport;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{gossipsub, identify, identity, noise, ping, pnet, tcp, yamux, Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// A live member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Member {
    /// Routing key: the advertised transfer address as text, stable across restarts.
    pub key: String,
    /// Where the member takes chunk requests (QUIC).
    pub quic: SocketAddr,
    /// The member's node name (for people; not used for routing).
    pub node: String,
}

impl Member {
    /// The member that takes chunk requests at `quic`.
    pub fn new(quic: SocketAddr, node: String) -> Self {
        Member {
            key: quic.to_string(),
            quic,
            node,
        }
    }
}

/// What a heartbeat says.
#[derive(Debug, Serialize, Deserialize)]
struct Heartbeat {
    v: u32,
    node: String,
    quic: SocketAddr,
}

/// The live member list, shared between the swarm task and the routing side.
#[derive(Debug)]
pub struct MemberTable {
    me: Member,
    timeout: Duration,
    others: RwLock<HashMap<PeerId, (Member, Instant)>>,
}

impl MemberTable {
    /// A table that holds only `me` so far; others count as gone after `timeout`.
    pub fn new(me: Member, timeout: Duration) -> Arc<Self> {
        Arc::new(MemberTable {
            me,
            timeout,
            others: RwLock::new(HashMap::new()),
        })
    }

    /// This node as a member.
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// Every live member, this node included, sorted by key.
    pub fn live(&self) -> Vec<Member> {
        let now = Instant::now();
        let others = self.others.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Member> = others
            .values()
            .filter(|(_, seen)| now.duration_since(*seen) < self.timeout)
            .map(|(m, _)| m.clone())
            .collect();
        out.push(self.me.clone());
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.dedup_by(|a, b| a.key == b.key);
        out
    }

    fn heard(&self, peer: PeerId, member: Member) -> bool {
        let mut others = self.others.write().unwrap_or_else(|p| p.into_inner());
        // Another libp2p identity with the same address is that node restarted.
        others.retain(|id, (m, _)| *id == peer || m.key != member.key);
        others.insert(peer, (member, Instant::now())).is_none()
    }

    fn expire(&self) -> Vec<Member> {
        let now = Instant::now();
        let mut others = self.others.write().unwrap_or_else(|p| p.into_inner());
        let mut gone = Vec::new();
        others.retain(|_, (m, seen)| {
            let live = now.duration_since(*seen) < self.timeout;
            if !live {
                gone.push(m.clone());
            }
            live
        });
        gone
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    gossipsub: gossipsub::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// Why the membership layer could not start.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// libp2p refused its configuration.
    #[error("setting up libp2p: {0}")]
    Setup(String),
    /// The TCP listener could not be set up.
    #[error("listening for members on {addr}: {detail}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// What libp2p said.
        detail: String,
    },
}

const TOPIC: &str = "warren/members/1";

fn tcp_multiaddr(a: SocketAddr) -> Multiaddr {
    let mut m = Multiaddr::from(a.ip());
    m.push(libp2p::multiaddr::Protocol::Tcp(a.port()));
    m
}

/// Starts the membership task on the current tokio runtime. It runs until `shutdown`
/// fires.
pub async fn start(
    cfg: &MeshConfig,
    psk: [u8; 32],
    table: Arc<MemberTable>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), MembershipError> {
    let setup = |e: &dyn std::fmt::Display| MembershipError::Setup(e.to_string());
    let key = identity::Keypair::generate_ed25519();
    let psk = pnet::PreSharedKey::new(psk);
    let heartbeat = Duration::from_millis(cfg.heartbeat_ms.max(50));
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|key| {
            let noise = noise::Config::new(key)?;
            Ok(
                tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                    .and_then(move |socket, _| pnet::PnetConfig::new(psk).handshake(socket))
                    .upgrade(Version::V1Lazy)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default())
                    .timeout(Duration::from_secs(10)),
            )
        })
        .map_err(|e| setup(&e))?
        .with_behaviour(|key| {
            let config = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(heartbeat.min(Duration::from_secs(1)))
                // Every member dials every other and publishing floods to all of them, so
                // the relay mesh only covers gaps: a smaller one cuts the copies of each
                // heartbeat a node receives (and decodes) from about 6 to 3.
                .mesh_n(3)
                .mesh_n_low(2)
                .mesh_n_high(6)
                .mesh_outbound_min(1)
                .gossip_lazy(3)
                .validation_mode(gossipsub::ValidationMode::Permissive)
                .build()
                .map_err(|e| e.to_string())?;
            let gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Author(key.public().to_peer_id()),
                config,
            )?;
            Ok(Behaviour {
                gossipsub,
                identify: identify::Behaviour::new(identify::Config::new(
                    "/warren/1.0.0".into(),
                    key.public(),
                )),
                ping: ping::Behaviour::new(
                    ping::Config::new()
                        .with_interval(Duration::from_secs(5))
                        .with_timeout(Duration::from_secs(3)),
                ),
            })
        })
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let topic = gossipsub::IdentTopic::new(TOPIC);
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&topic)
        .map_err(|e| setup(&e))?;
    swarm
        .listen_on(tcp_multiaddr(cfg.listen))
        .map_err(|e| MembershipError::Listen {
            addr: cfg.listen,
            detail: e.to_string(),
        })?;
    let task = MembershipTask {
        swarm,
        topic,
        table,
        seeds: cfg.seeds.clone(),
        me_tcp: cfg.advertised(),
        heartbeat,
        resolve: Duration::from_millis(cfg.resolve_interval_ms.max(100)),
        known: HashMap::new(),
    };
    tokio::spawn(task.run(shutdown));
    Ok(())
}

struct MembershipTask {
    swarm: libp2p::Swarm<Behaviour>,
    topic: gossipsub::IdentTopic,
    table: Arc<MemberTable>,
    seeds: Vec<String>,
    me_tcp: SocketAddr,
    heartbeat: Duration,
    resolve: Duration,
    /// Members' membership addresses, learned from heartbeats: dialed when not connected.
    known: HashMap<PeerId, SocketAddr>,
}

impl MembershipTask {
    async fn run(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut beat = tokio::time::interval(self.heartbeat);
        let mut resolve = tokio::time::interval(self.resolve);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = beat.tick() => {
                    self.publish();
                    for gone in self.table.expire() {
                        tracing::info!(member = %gone.key, node = %gone.node, "member left");
                    }
                }
                _ = resolve.tick() => self.dial_seeds().await,
                event = self.swarm.select_next_some() => self.on_event(event),
            }
        }
    }

    fn publish(&mut self) {
        let me = self.table.me();
        let beat = Heartbeat {
            v: 1,
            node: me.node.clone(),
            quic: me.quic,
        };
        let Ok(bytes) = serde_json::to_vec(&beat) else {
            return;
        };
        // With no peer yet there is nobody to tell: not an error.
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.topic.clone(), bytes)
        {
            tracing::trace!(error = %e, "heartbeat not sent");
        }
    }

    async fn dial_seeds(&mut self) {
        let mut targets: Vec<SocketAddr> = self.known.values().copied().collect();
        for seed in &self.seeds {
            match tokio::net::lookup_host(seed.as_str()).await {
                Ok(addrs) => targets.extend(addrs),
                Err(e) => tracing::debug!(seed = %seed, error = %e, "seed does not resolve"),
            }
        }
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        let connected_addrs: Vec<SocketAddr> = connected
            .iter()
            .filter_map(|p| self.known.get(p).copied())
            .collect();
        for addr in targets {
            if addr == self.me_tcp || connected_addrs.contains(&addr) {
                continue;
            }
            if connected.len() >= 32 && !self.seeds.is_empty() {
                // Enough direct links: gossip relays the rest.
                break;
            }
            // A fresh source port: reusing the listen port binds the wildcard address, which
            // fails when any local socket holds that port (another process's listener).
            let dial = DialOpts::unknown_peer_id()
                .address(tcp_multiaddr(addr))
                .allocate_new_port()
                .build();
            if let Err(e) = self.swarm.dial(dial) {
                tracing::debug!(%addr, error = %e, "dial failed");
            }
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                message,
                ..
            })) => {
                let Some(source) = message.source else { return };
                let Ok(beat) = serde_json::from_slice::<Heartbeat>(&message.data) else {
                    tracing::debug!(peer = %source, "unreadable heartbeat");
                    return;
                };
                if beat.v != 1 || beat.quic == self.table.me().quic {
                    return;
                }
                self.known.insert(source, beat.quic);
                let member = Member::new(beat.quic, beat.node);
                if self.table.heard(source, member.clone()) {
                    tracing::info!(member = %member.key, node = %member.node, "member joined");
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(e),
            })) => {
                tracing::debug!(%peer, error = %e, "ping failed; closing the connection");
                self.swarm.close_connection(connection);
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                tracing::debug!(peer = %peer_id, "connected");
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                tracing::debug!(error = %error, "connection to a member failed");
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                // Among these: machines without the cluster secret (pnet handshake fails).
                tracing::debug!(error = %error, "incoming connection refused");
            }
            _ => {}
        }
    }
}
