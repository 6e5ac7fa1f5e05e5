//! Loopback addresses for meshes started by tests and benchmarks.

use std::net::{SocketAddr, TcpListener, UdpSocket};

/// A port on `ip` free for both TCP (membership) and UDP (transfers).
pub fn free_port(ip: [u8; 4]) -> SocketAddr {
    loop {
        let t = TcpListener::bind(SocketAddr::from((ip, 0))).unwrap();
        let addr = t.local_addr().unwrap();
        if UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
}
