//! The userspace terminator: TLS (rustls) and WebSocket handshake validation, then a relay
//! to the client's node. One single-threaded runtime per core, io_uring or epoll.

pub mod handler;
pub mod io;
pub mod move_off;
pub mod net;
pub mod record;
pub mod relay;
pub mod server;
pub mod tls;
pub mod upstream;
pub mod uring;

use std::{sync::Arc, time::Duration};

use crate::{
    config::{IoChoice, ListenerConfig, TerminatorConfig},
    handshake::Limits,
};

/// Errors setting up the terminator from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A certificate could not be loaded.
    #[error("listener `{listener}`: certificate for `{server_name}`")]
    Certificate {
        listener: String,
        server_name: String,
        #[source]
        source: Box<tls::CertError>,
    },
    /// The control plane has no ring for a listener it was configured with.
    #[error("listener `{0}` has no ring (internal)")]
    NoRing(String),
    /// Binding or starting workers failed.
    #[error("starting the terminator")]
    Start(#[source] std::io::Error),
}

/// The io mode asked for by config or flag; `None` = auto.
pub fn requested_mode(choice: IoChoice) -> Option<io::IoMode> {
    match choice {
        IoChoice::Auto => None,
        IoChoice::Uring => Some(io::IoMode::Uring),
        IoChoice::Epoll => Some(io::IoMode::Epoll),
    }
}

/// The terminator side of one `tls`/`ws` listener: certificates, limits and the upstream
/// table the control plane hands over (the terminator never reads the balancer).
pub fn listener_spec(
    l: &ListenerConfig,
    t: &TerminatorConfig,
    upstreams: upstream::UpstreamSet,
    observe: handler::Observe,
    events: Option<tokio::sync::mpsc::Sender<crate::health::ConnectEvent>>,
) -> Result<server::ListenerSpec, SetupError> {
    let tls = match &l.tls {
        Some(tls_conf) => {
            let sources: Vec<tls::CertSource> = tls_conf
                .certificates
                .iter()
                .map(|c| tls::CertSource {
                    server_name: c.server_name.clone(),
                    dir: c.dir.clone(),
                })
                .collect();
            let resolver = tls::SniResolver::load(&sources, tls_conf.default_certificate.clone())
                .map_err(|source| {
                let server_name = match &source {
                    tls::CertError::Read { path, .. }
                    | tls::CertError::Content { path, .. }
                    | tls::CertError::Key { path, .. } => sources
                        .iter()
                        .find(|s| path.starts_with(&s.dir))
                        .map(|s| s.server_name.clone())
                        .unwrap_or_default(),
                };
                SetupError::Certificate {
                    listener: l.name.clone(),
                    server_name,
                    source: Box::new(source),
                }
            })?;
            Some(tls::TlsAcceptor::new(resolver))
        }
        None => None,
    };
    let ctx = Arc::new(handler::ListenerCtx {
        name: l.name.clone(),
        observe,
        limits: Limits {
            max_head_bytes: t.max_head_bytes,
            allowed_paths: l.paths.clone(),
            allow_json_rpc_post: l.allow_json_rpc_post,
            ..Limits::default()
        },
        upstreams: {
            let table = upstream::UpstreamTable::new(upstreams);
            match events {
                Some(tx) => table.with_events(l.pool.clone(), tx),
                None => table,
            }
        },
        handshake_timeout: Duration::from_secs(t.handshake_timeout_secs),
        connect_timeout: Duration::from_millis(t.connect_timeout_ms),
        idle_timeout: Duration::from_secs(t.idle_timeout_secs),
    });
    Ok(server::ListenerSpec {
        addr: l.address,
        ctx,
        tls,
    })
}
