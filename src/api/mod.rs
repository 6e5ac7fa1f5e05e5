//! What the node exposes: metrics (Prometheus text and JSON) and the HTTP API on its unix
//! socket.

pub mod metrics;
pub mod server;
