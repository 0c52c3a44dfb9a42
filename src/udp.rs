//! UDP sockets for quinn endpoints, with receive buffers sized for bursts.
//!
//! Linux gives a UDP socket about 208 KiB of receive buffer by default: some
//! 170 full-size QUIC packets. When an appliance restarts, every client
//! reconnects at once and their Initial packets (1200 bytes each, by QUIC's
//! rules) overflow that within a millisecond; the kernel drops the rest, and
//! each dropped handshake waits a full retransmission timeout (a second, then
//! two...). A few megabytes absorb such a storm. The kernel caps the request at
//! `net.core.rmem_max` (raise it with sysctl where it is lower), so this is
//! best effort.

use std::net::SocketAddr;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};

/// Receive and send buffer asked of the kernel for every endpoint socket.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// A bound UDP socket with large buffers.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // `[::]` serves IPv4 clients too, as a plain std bind would on Linux.
        let _ = socket.set_only_v6(false);
    }
    // Best effort: a smaller buffer still works, just drops more in a storm.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A quinn endpoint on [`bind`]'s socket; `server` makes it accept connections.
pub fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        bind(addr)?,
        Arc::new(quinn::TokioRuntime),
    )
}
