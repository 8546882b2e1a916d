//! Free TCP ports on loopback, for servers the test does not bind itself (a proxy started
//! from a configuration file or a `Config`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};

/// A port free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    free_ports_on::<1>(Ipv4Addr::LOCALHOST.into())[0]
}

/// `N` distinct ports free on `ip` (all held until all are picked, so none repeats).
pub fn free_ports_on<const N: usize>(ip: IpAddr) -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind(SocketAddr::new(ip, 0)).expect("bind a free port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("bound address").port())
}
