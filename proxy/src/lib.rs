//! The proxy: configuration, control plane, kernel data-plane loader (and, later, the
//! TLS/WebSocket terminator).

pub mod balancer;
pub mod config;
pub mod ebpf;
pub mod maglev;
