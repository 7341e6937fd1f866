//! Every status the tunnel service answers carries its error kind, including those the framework makes.
//!
//! The service's own errors go through [`ServiceError`](super::error::ServiceError) and carry `arbor-error-kind`.
//! tonic refuses some requests before the service sees them, with statuses that would mislead a client that
//! classifies by code: a request above the decode limit (or an answer above the encode limit) is `OUT_OF_RANGE`
//! — "checkpoint out of range" in the protocol, after which a client would reset its position for a request that
//! can never succeed — and a message that does not decode is `INTERNAL`. [`KindedStatus`] wraps the service and
//! rewrites every status without a kind, whether it comes in the headers (a trailers-only answer, how tonic
//! refuses a request it cannot decode) or in the trailers (an answer it cannot encode, mid-stream):
//!
//! | framework code | sent as              | kind  |
//! |----------------|----------------------|-------|
//! | `OUT_OF_RANGE` (message too large)      | `RESOURCE_EXHAUSTED` | FATAL |
//! | `INTERNAL` (message does not decode)    | `INVALID_ARGUMENT`   | FATAL |
//! | any other                               | unchanged            | the code's kind |
//!
//! An oversized request is `RESOURCE_EXHAUSTED` as in gRPC, but FATAL rather than the code's RETRYABLE: the same
//! request is refused every time.

use std::pin::Pin;
use std::task::{Context, Poll};

use arbor_proto::tunnel::error::{ErrorKind, KIND_METADATA_KEY};
use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tonic::server::NamedService;
use tonic::Code;

const GRPC_STATUS: &str = "grpc-status";

/// Gives `headers` (a trailers-only answer's headers, or an answer's trailers) the error kind of the status they
/// carry, rewriting the framework's codes as the [module](self) documents. Headers without a failed status, or
/// whose status already has a kind (the service's own errors), are left as they are.
pub(crate) fn add_kind(headers: &mut HeaderMap) {
    let Some(code) = headers.get(GRPC_STATUS).map(|v| Code::from_bytes(v.as_bytes())) else {
        return;
    };
    if code == Code::Ok || headers.contains_key(KIND_METADATA_KEY) {
        return;
    }
    let (code, kind) = match code {
        Code::OutOfRange => (Code::ResourceExhausted, ErrorKind::Fatal),
        Code::Internal => (Code::InvalidArgument, ErrorKind::Fatal),
        other => (other, ErrorKind::from_code(other)),
    };
    headers.insert(GRPC_STATUS, HeaderValue::from(code as i32));
    headers.insert(KIND_METADATA_KEY, HeaderValue::from_static(kind.name()));
}

/// A gRPC service whose answers all carry an error kind (see the [module](self)).
#[derive(Debug, Clone)]
pub struct KindedStatus<S> {
    inner: S,
}

impl<S> KindedStatus<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        KindedStatus { inner }
    }
}

impl<S: NamedService> NamedService for KindedStatus<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, ReqBody> tonic::codegen::Service<http::Request<ReqBody>> for KindedStatus<S>
where
    S: tonic::codegen::Service<http::Request<ReqBody>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            add_kind(response.headers_mut());
            Ok(response.map(|body| tonic::body::Body::new(KindedTrailers(body))))
        })
    }
}

/// A response body whose trailers get [`add_kind`].
struct KindedTrailers(tonic::body::Body);

impl http_body::Body for KindedTrailers {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        Pin::new(&mut self.0).poll_frame(cx).map(|frame| {
            frame.map(|frame| {
                frame.map(|frame| match frame.into_trailers() {
                    Ok(mut trailers) => {
                        add_kind(&mut trailers);
                        http_body::Frame::trailers(trailers)
                    }
                    Err(data) => data,
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.0)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(code: Code, kind: Option<&'static str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(GRPC_STATUS, HeaderValue::from(code as i32));
        if let Some(kind) = kind {
            headers.insert(KIND_METADATA_KEY, HeaderValue::from_static(kind));
        }
        headers
    }

    fn code_and_kind(headers: &HeaderMap) -> (Code, Option<&str>) {
        (
            Code::from_bytes(headers[GRPC_STATUS].as_bytes()),
            headers.get(KIND_METADATA_KEY).map(|v| v.to_str().unwrap()),
        )
    }

    #[test]
    fn framework_size_and_decode_errors_are_fatal_with_their_own_codes() {
        let mut too_large = headers(Code::OutOfRange, None);
        add_kind(&mut too_large);
        assert_eq!(
            code_and_kind(&too_large),
            (Code::ResourceExhausted, Some("ERROR_KIND_FATAL"))
        );
        let mut malformed = headers(Code::Internal, None);
        add_kind(&mut malformed);
        assert_eq!(
            code_and_kind(&malformed),
            (Code::InvalidArgument, Some("ERROR_KIND_FATAL"))
        );
    }

    #[test]
    fn other_framework_codes_get_the_kind_of_their_code() {
        for (code, kind) in [
            (Code::Unimplemented, "ERROR_KIND_FATAL"),
            (Code::Cancelled, "ERROR_KIND_RETRYABLE"),
            (Code::Unavailable, "ERROR_KIND_RETRYABLE"),
        ] {
            let mut h = headers(code, None);
            add_kind(&mut h);
            assert_eq!(code_and_kind(&h), (code, Some(kind)), "{code:?}");
        }
    }

    /// A body that is only trailers, as a response whose status comes at its end.
    struct Trailers(Option<HeaderMap>);

    impl http_body::Body for Trailers {
        type Data = bytes::Bytes;
        type Error = tonic::Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
            Poll::Ready(self.0.take().map(|t| Ok(http_body::Frame::trailers(t))))
        }
    }

    #[tokio::test]
    async fn a_status_in_the_trailers_gets_its_kind_too() {
        use http_body::Body as _;
        // An answer too large to send: tonic ends the body with OUT_OF_RANGE in the trailers.
        let mut body = KindedTrailers(tonic::body::Body::new(Trailers(Some(headers(
            Code::OutOfRange,
            None,
        )))));
        let frame = futures::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
            .await
            .expect("a frame")
            .expect("no error");
        let trailers = frame.into_trailers().expect("trailers");
        assert_eq!(
            code_and_kind(&trailers),
            (Code::ResourceExhausted, Some("ERROR_KIND_FATAL"))
        );
    }

    #[test]
    fn the_services_own_statuses_and_successes_are_left_alone() {
        let mut own = headers(Code::OutOfRange, Some("ERROR_KIND_CHECKPOINT_OUT_OF_RANGE"));
        add_kind(&mut own);
        assert_eq!(
            code_and_kind(&own),
            (Code::OutOfRange, Some("ERROR_KIND_CHECKPOINT_OUT_OF_RANGE"))
        );
        let mut ok = headers(Code::Ok, None);
        add_kind(&mut ok);
        assert_eq!(code_and_kind(&ok), (Code::Ok, None));
        let mut none = HeaderMap::new();
        add_kind(&mut none);
        assert!(none.is_empty());
    }
}
