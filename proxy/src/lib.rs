//! The proxy: configuration, control plane, kernel data-plane loader (and, later, the
//! TLS/WebSocket terminator).

pub mod admin;
pub mod balancer;
pub mod chain;
pub mod cli;
pub mod config;
pub mod ebpf;
pub mod handshake;
pub mod health;
pub mod logging;
pub mod maglev;
pub mod notify;
pub mod observe;
pub mod plane;
pub mod run;
pub mod terminator;
pub mod upgrade;
pub mod websocket;
