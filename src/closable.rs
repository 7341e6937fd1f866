//! Connections a server can close when its graceful stop runs out of time.
//!
//! tonic serves each connection in a task of its own and, on a graceful shutdown, waits for every stream of
//! every connection to finish: a long poll or a watch stream keeps its connection — and whatever its handler
//! holds, such as a store — alive after the server's own task is gone. Each accepted stream is wrapped in a
//! [`Closable`]; cancelling the [`Closer`] makes its reads and writes fail, which ends the connection's task and
//! drops its handlers.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tonic::transport::server::{Connected, TcpConnectInfo};

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
        Pin::new(&mut self.io).poll_read(cx, buf)
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

/// The connections `listener` accepts (no Nagle), each closable through the returned [`Closer`].
pub(crate) fn incoming(
    listener: tokio::net::TcpListener,
) -> (
    impl futures::Stream<Item = io::Result<Closable<TcpStream>>>,
    std::sync::Arc<Closer>,
) {
    use futures::StreamExt;
    let closer = std::sync::Arc::new(Closer::new());
    let wrap = std::sync::Arc::clone(&closer);
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map(move |accepted| accepted.map(|stream| wrap.wrap(stream)));
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
