//! Per-method request size: only Append carries data, so only Append may be as large as the decode limit.
//!
//! tonic's decode limit is one figure for the whole service, sized for Append batches (16 MiB by default). Any
//! other request fits in far less — a Heartbeat reports each channel once, a CreateTunnel lists each channel
//! once — yet at 16 MiB a Heartbeat decodes into millions of reports, which costs seconds of a runtime thread
//! before validation can refuse it. [`RequestCap`] counts a request's body as it arrives and fails it once it
//! exceeds its method's cap ([`Limits::max_request_bytes`] for Append,
//! [`Limits::max_control_request_bytes`] for the others): `RESOURCE_EXHAUSTED` with kind FATAL, before any of
//! it is decoded.

use std::pin::Pin;
use std::task::{Context, Poll};

use arbor_proto::tunnel::error::{ErrorKind, KIND_METADATA_KEY};
use bytes::Bytes;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::Status;

use super::config::Limits;

/// The gRPC frame header before each message: a compression flag and a 4-byte length.
const FRAME_HEADER_BYTES: usize = 5;

/// A gRPC service whose requests are cut at their method's size cap (see the [module](self)).
#[derive(Debug, Clone)]
pub struct RequestCap<S> {
    inner: S,
    append_bytes: usize,
    control_bytes: usize,
}

impl<S> RequestCap<S> {
    /// Wraps `inner`, with the caps of `limits`.
    pub fn new(inner: S, limits: &Limits) -> Self {
        RequestCap {
            inner,
            append_bytes: limits.max_request_bytes(),
            control_bytes: limits.max_control_request_bytes(),
        }
    }

    /// The largest message a request to `path` may carry.
    fn cap(&self, path: &str) -> usize {
        if path.ends_with("/Append") {
            self.append_bytes
        } else {
            self.control_bytes
        }
    }
}

impl<S: NamedService> NamedService for RequestCap<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tonic::codegen::Service<http::Request<B>> for RequestCap<S>
where
    S: tonic::codegen::Service<http::Request<CappedBody<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let cap = self.cap(request.uri().path());
        self.inner.call(request.map(|body| CappedBody {
            inner: body,
            cap,
            remaining: cap + FRAME_HEADER_BYTES,
        }))
    }
}

/// A request body that fails once more than its cap (plus the frame header) has arrived.
#[derive(Debug)]
pub struct CappedBody<B> {
    inner: B,
    cap: usize,
    remaining: usize,
}

/// The status of a request above its cap: the same request never succeeds.
fn too_large(cap: usize) -> Status {
    let mut status = Status::resource_exhausted(format!(
        "the request message is larger than this method's limit of {cap} bytes"
    ));
    status.metadata_mut().insert(
        KIND_METADATA_KEY,
        tonic::metadata::MetadataValue::from_static(ErrorKind::Fatal.name()),
    );
    status
}

impl<B> http_body::Body for CappedBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(Status::from_error(e.into())))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            match self.remaining.checked_sub(data.len()) {
                Some(remaining) => self.remaining = remaining,
                None => return Poll::Ready(Some(Err(too_large(self.cap)))),
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
