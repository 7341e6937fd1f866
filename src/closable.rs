//! Connections a server can close when its graceful stop runs out of time.
//!
//! tonic serves each connection in a task of its own and, on a graceful shutdown, waits for every stream of
//! every connection to finish: a long poll or a watch stream keeps its connection — and whatever its handler
//! holds, such as a store — alive after the server's own task is gone. Each accepted stream is wrapped in a
//! [`Closable`]; cancelling the [`Closer`] makes its reads and writes fail, which ends the connection's task and
//! drops its handlers.
//!
//! The accept side also bounds connections ([`incoming`]): at most `max_connections` at once, and a connection
//! that sends nothing within the handshake timeout is closed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::connection_limits::ConnectionLimits;

/// Closes every [`Closable`] made from it, at once.
#[derive(Debug)]
pub(crate) struct Closer(watch::Sender<bool>);

impl Closer {
    pub(crate) fn new() -> Closer {
        Closer(watch::channel(false).0)
    }

    /// Wraps a connection so that [`close_all`](Self::close_all) ends it.
    pub(crate) fn wrap<IO>(&self, io: IO) -> Closable<IO> {
        let mut closed = self.0.subscribe();
        Closable {
            io,
            closed: Box::pin(async move {
                let _ = closed.wait_for(|closed| *closed).await;
            }),
            is_closed: false,
            first_bytes_by: None,
            _slot: None,
        }
    }

    /// Wraps an accepted connection holding `slot`, to be closed if it sends nothing within `first_bytes`.
    fn wrap_accepted<IO>(&self, io: IO, slot: OwnedSemaphorePermit, first_bytes: Duration) -> Closable<IO> {
        Closable {
            first_bytes_by: Some(Box::pin(tokio::time::sleep(first_bytes))),
            _slot: Some(slot),
            ..self.wrap(io)
        }
    }

    /// Makes every wrapped connection's reads and writes fail from now on.
    pub(crate) fn close_all(&self) {
        self.0.send_replace(true);
    }
}

/// A connection that fails its reads and writes once its [`Closer`] closed it.
pub(crate) struct Closable<IO> {
    io: IO,
    closed: Pin<Box<dyn Future<Output = ()> + Send + Sync>>,
    is_closed: bool,
    /// Until the first bytes arrive: when a connection that never speaks is closed.
    first_bytes_by: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The connection's slot under the server's connection limit, freed when it closes.
    _slot: Option<OwnedSemaphorePermit>,
}

impl<IO> Closable<IO> {
    /// Whether the closer fired; registers the task to be woken when it does.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.is_closed && self.closed.as_mut().poll(cx).is_ready() {
            self.is_closed = true;
        }
        if self.is_closed {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the server stopped",
            ))
        } else {
            Ok(())
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Closable<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        let filled = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Some(deadline) = self.first_bytes_by.as_mut() {
            if read.is_ready() && buf.filled().len() > filled {
                self.first_bytes_by = None;
            } else if read.is_pending() && deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the connection sent nothing within the handshake timeout",
                )));
            }
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Closable<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connected for Closable<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

/// The connections `listener` accepts (no Nagle, TCP keepalive), each closable through the returned
/// [`Closer`], at most `limits.max_connections` at once: one more is closed as soon as it is accepted (its
/// client sees a reset and retries, rather than hanging in the backlog). A connection that sends nothing within
/// `limits.handshake_timeout` is closed. `what` names the server in logs.
pub(crate) fn incoming(
    listener: tokio::net::TcpListener,
    limits: &ConnectionLimits,
    what: &'static str,
) -> (
    impl futures::Stream<Item = io::Result<Closable<TcpStream>>>,
    std::sync::Arc<Closer>,
) {
    use futures::StreamExt;
    let closer = std::sync::Arc::new(Closer::new());
    let wrap = std::sync::Arc::clone(&closer);
    let slots = std::sync::Arc::new(Semaphore::new(limits.max_connections));
    let (max, first_bytes) = (limits.max_connections, limits.handshake_timeout);
    let refused = std::sync::Arc::new(AtomicU64::new(0));
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(limits.tcp_keepalive))
        .filter_map(move |accepted| {
            let accepted = match accepted {
                Err(e) => Some(Err(e)),
                Ok(stream) => match std::sync::Arc::clone(&slots).try_acquire_owned() {
                    Ok(slot) => Some(Ok(wrap.wrap_accepted(stream, slot, first_bytes))),
                    Err(_) => {
                        // Logged at the 1st, 2nd, 4th, 8th... refusal: a flood does not flood the log.
                        let n = refused.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_power_of_two() {
                            tracing::warn!(
                                server = what,
                                max_connections = max,
                                refused = n,
                                peer = ?stream.peer_addr().ok(),
                                "connection refused: the connection limit is reached"
                            );
                        }
                        None
                    }
                },
            };
            std::future::ready(accepted)
        });
    (incoming, closer)
}

/// How long [`stop_serving`] waits for closed connections to wind down before it aborts the server's task.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits up to `grace` for a server's task (already told to shut down) to end; then closes its connections and
/// waits [`CLOSE_WAIT`] more; then aborts it. When this returns, nothing of the server runs.
pub(crate) async fn stop_serving<T>(
    serve: &mut tokio::task::JoinHandle<T>,
    closer: &Closer,
    grace: std::time::Duration,
) -> Result<T, tokio::task::JoinError> {
    if let Ok(joined) = tokio::time::timeout(grace, &mut *serve).await {
        return joined;
    }
    // The server waits for its connections to close: close them.
    closer.close_all();
    match tokio::time::timeout(CLOSE_WAIT, &mut *serve).await {
        Ok(joined) => joined,
        Err(_) => {
            serve.abort();
            serve.await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_closed_connection_fails_the_read_it_was_waiting_in() {
        let (client, server) = tokio::io::duplex(64);
        let closer = Closer::new();
        let mut server = closer.wrap(server);
        let read = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            server.read(&mut buf).await
        });
        tokio::task::yield_now().await;
        closer.close_all();
        let err = read.await.unwrap().expect_err("the read fails");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        drop(client);
    }

    #[tokio::test]
    async fn an_open_connection_passes_data_through() {
        let (mut client, server) = tokio::io::duplex(64);
        let closer = Closer::new();
        let mut server = closer.wrap(server);
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        closer.close_all();
        assert!(server.write_all(b"pong").await.is_err());
    }
}
