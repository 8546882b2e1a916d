//! Runtime-specific pieces: outgoing connections with a timeout.

use std::{io, net::SocketAddr, time::Duration};

use super::io::Io;

/// A runtime's way of opening a connection to a backend.
#[allow(async_fn_in_trait)]
pub trait Connector {
    type Stream: Io + 'static;
    async fn connect(&self, addr: SocketAddr, timeout: Duration) -> io::Result<Self::Stream>;
}

async fn tokio_connect(addr: SocketAddr, timeout: Duration) -> io::Result<tokio::net::TcpStream> {
    // A tokio future may be dropped safely (unlike an io_uring op), so a plain timeout works.
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// epoll: tokio's own streams.
pub struct EpollConnector;

impl Connector for EpollConnector {
    type Stream = tokio::net::TcpStream;
    async fn connect(&self, addr: SocketAddr, timeout: Duration) -> io::Result<Self::Stream> {
        tokio_connect(addr, timeout).await
    }
}

/// io_uring: connect through tokio (cancellable on timeout), then hand the socket to the
/// worker's ring for the data path.
pub struct UringConnector;

impl Connector for UringConnector {
    type Stream = super::uring::UringStream;
    async fn connect(&self, addr: SocketAddr, timeout: Duration) -> io::Result<Self::Stream> {
        let stream = tokio_connect(addr, timeout).await?.into_std()?;
        super::uring::UringStream::from_std(stream)
    }
}
