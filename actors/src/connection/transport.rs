//! The connector under each connection generation: dials the target's hosts in order, once, does TLS, and
//! reports what happens to the connection (a GOAWAY, the socket closing and why) so the actor sees it at once,
//! even with no RPC in flight.
//!
//! One connector serves one generation. tonic's `Channel` re-dials by itself on the next call after its
//! connection dies, one dial per call and without backoff (a connect storm against a refusing server). The
//! connector therefore dials only once: a stale channel's later calls fail fast with `Unavailable`, and the
//! connection actor, with its backoff, is the only place that dials again.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::codegen::http::Uri;

use super::frames::FrameReader;
use super::state::{CloseReason, GoAway};
use super::tls::TlsSettings;

/// What a generation's transport reports.
#[derive(Debug, Clone)]
pub(crate) enum TransportEvent {
    /// The server sent GOAWAY (possibly more than once: a graceful drain sends two).
    GoAway(GoAway),
    /// The connection is gone (reported once).
    Closed(CloseReason),
}

/// Called with the generation and what happened.
pub(crate) type TransportReporter = Arc<dyn Fn(u64, TransportEvent) + Send + Sync>;

/// Closes a generation's socket from outside ([`close`](super::ConnectionHandle::close)): reads and writes fail
/// from then on, so hyper tears the connection down and its calls fail at once.
#[derive(Default)]
pub(crate) struct KillSwitch {
    killed: AtomicBool,
    waker: AtomicWaker,
}

impl KillSwitch {
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    fn is_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }
}

/// A `tower::Service<Uri>` that dials `hosts` in order (TLS on top when configured) and wraps the stream in
/// [`ReportingStream`].
#[derive(Clone)]
pub(crate) struct DialOnceConnector {
    hosts: Arc<[(String, u16)]>,
    tls: Option<TlsSettings>,
    generation: u64,
    dialled: Arc<AtomicBool>,
    report: TransportReporter,
    kill: Arc<KillSwitch>,
}

impl DialOnceConnector {
    pub(crate) fn new(
        hosts: Arc<[(String, u16)]>,
        tls: Option<TlsSettings>,
        generation: u64,
        report: TransportReporter,
        kill: Arc<KillSwitch>,
    ) -> Self {
        DialOnceConnector {
            hosts,
            tls,
            generation,
            dialled: Arc::new(AtomicBool::new(false)),
            report,
            kill,
        }
    }
}

/// Dial `hosts` in order; the first that accepts wins. The error is the last host's.
pub(crate) async fn dial(hosts: &[(String, u16)]) -> io::Result<TcpStream> {
    let mut last_err = io::Error::new(io::ErrorKind::InvalidInput, "no host to dial");
    for (host, port) in hosts {
        let dial_host = host.trim_start_matches('[').trim_end_matches(']');
        match TcpStream::connect((dial_host, *port)).await {
            Ok(stream) => {
                // Small unary calls and health probes must not wait on Nagle.
                let _ = stream.set_nodelay(true);
                tracing::debug!(host = %host, port, "tcp connected");
                return Ok(stream);
            }
            Err(e) => {
                tracing::debug!(host = %host, port, error = %e, "tcp dial failed");
                last_err = e;
            }
        }
    }
    Err(last_err)
}

impl tower::Service<Uri> for DialOnceConnector {
    type Response = TokioIo<ReportingStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let first = !self.dialled.swap(true, Ordering::SeqCst);
        let this = self.clone();
        Box::pin(async move {
            if !first || this.kill.is_killed() {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    format!(
                        "connection generation {} is closed; the connection actor reconnects",
                        this.generation
                    ),
                ));
            }
            let tcp = dial(&this.hosts).await?;
            let io = match &this.tls {
                None => Io::Plain(tcp),
                Some(tls) => Io::Tls(Box::new(tls.handshake(tcp).await?)),
            };
            tracing::debug!(
                generation = this.generation,
                tls = this.tls.is_some(),
                "transport up"
            );
            Ok(TokioIo::new(ReportingStream {
                inner: io,
                generation: this.generation,
                closed: false,
                frames: FrameReader::default(),
                report: this.report,
                kill: this.kill,
            }))
        })
    }
}

/// Plain TCP or TLS over TCP.
pub(crate) enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// The connection's stream: reads the server's frames as they pass (GOAWAY), reports its close once (EOF, IO
/// error, or drop), and fails once its kill switch is thrown.
pub(crate) struct ReportingStream {
    inner: Io,
    generation: u64,
    closed: bool,
    frames: FrameReader,
    report: TransportReporter,
    kill: Arc<KillSwitch>,
}

impl ReportingStream {
    fn closed(&mut self, why: CloseReason) {
        if !self.closed {
            self.closed = true;
            (self.report)(self.generation, TransportEvent::Closed(why));
        }
    }

    fn killed(&mut self) -> io::Error {
        self.closed(CloseReason::Closed);
        io::Error::new(io::ErrorKind::ConnectionAborted, "connection closed by close()")
    }
}

impl Drop for ReportingStream {
    fn drop(&mut self) {
        self.closed(CloseReason::Dropped);
    }
}

impl AsyncRead for ReportingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.kill.waker.register(cx.waker());
        if this.kill.is_killed() {
            return Poll::Ready(Err(this.killed()));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &res {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let (generation, report) = (this.generation, &this.report);
                this.frames.feed(&buf.filled()[before..], &mut |g| {
                    report(generation, TransportEvent::GoAway(g));
                });
            }
            Poll::Ready(Ok(())) if buf.remaining() > 0 => this.closed(CloseReason::PeerClosed),
            Poll::Ready(Err(e)) => this.closed(CloseReason::from_io(e)),
            _ => {}
        }
        res
    }
}

impl AsyncWrite for ReportingStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.kill.is_killed() {
            return Poll::Ready(Err(self.killed()));
        }
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Err(e)) = &res {
            let why = CloseReason::from_io(e);
            self.closed(why);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.kill.is_killed() {
            return Poll::Ready(Err(self.killed()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
