//! The TCP connector under each connection generation: dials the target's hosts in order, once, and reports
//! when the socket closes so loss is seen at once even with no RPC in flight.
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

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::codegen::http::Uri;

/// Called once per generation when its socket closes (EOF, IO error, or drop), with the generation.
pub(crate) type CloseReporter = Arc<dyn Fn(u64, String) + Send + Sync>;

/// A `tower::Service<Uri>` that dials `hosts` in order and wraps the stream in [`ReportingStream`].
#[derive(Clone)]
pub(crate) struct DialOnceConnector {
    hosts: Arc<[(String, u16)]>,
    generation: u64,
    dialled: Arc<AtomicBool>,
    report: CloseReporter,
}

impl DialOnceConnector {
    pub(crate) fn new(hosts: Arc<[(String, u16)]>, generation: u64, report: CloseReporter) -> Self {
        DialOnceConnector {
            hosts,
            generation,
            dialled: Arc::new(AtomicBool::new(false)),
            report,
        }
    }
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
        let hosts = self.hosts.clone();
        let generation = self.generation;
        let report = self.report.clone();
        Box::pin(async move {
            if !first {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    format!("connection generation {generation} is closed; the connection actor reconnects"),
                ));
            }
            let mut last_err = io::Error::new(io::ErrorKind::InvalidInput, "no host to dial");
            for (host, port) in hosts.iter() {
                let dial_host = host.trim_start_matches('[').trim_end_matches(']');
                match TcpStream::connect((dial_host, *port)).await {
                    Ok(stream) => {
                        // Small unary calls and health probes must not wait on Nagle.
                        let _ = stream.set_nodelay(true);
                        tracing::debug!(generation, host = %host, port, "tcp connected");
                        return Ok(TokioIo::new(ReportingStream::new(stream, generation, report)));
                    }
                    Err(e) => {
                        tracing::debug!(generation, host = %host, port, error = %e, "tcp dial failed");
                        last_err = e;
                    }
                }
            }
            Err(last_err)
        })
    }
}

/// A TCP stream that reports its close once: on EOF, on an IO error, or when dropped.
pub(crate) struct ReportingStream {
    inner: TcpStream,
    generation: u64,
    reported: bool,
    report: CloseReporter,
}

impl ReportingStream {
    fn new(inner: TcpStream, generation: u64, report: CloseReporter) -> Self {
        ReportingStream {
            inner,
            generation,
            reported: false,
            report,
        }
    }

    fn report(&mut self, why: String) {
        if !self.reported {
            self.reported = true;
            (self.report)(self.generation, why);
        }
    }
}

impl Drop for ReportingStream {
    fn drop(&mut self) {
        self.report("transport closed".to_string());
    }
}

impl AsyncRead for ReportingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &res {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                self.report("peer closed the connection (EOF)".to_string())
            }
            Poll::Ready(Err(e)) => {
                let why = format!("read error: {e}");
                self.report(why)
            }
            _ => {}
        }
        res
    }
}

impl AsyncWrite for ReportingStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Err(e)) = &res {
            let why = format!("write error: {e}");
            self.report(why);
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
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
