//! The proxy: control plane, kernel data-plane loader, and (later) the TLS/WebSocket terminator.

pub mod ebpf;
pub mod maglev;
