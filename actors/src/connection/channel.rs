//! [`ConnectionChannel`]: a channel that follows its connection across reconnects, for any tonic client.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::codegen::StdError;
use tonic::transport::Channel;
use tower::{Service, ServiceExt};

use super::actor::{ConnectionMsg, Shared};
use super::error::ConnectionError;
use super::state::ConnectivityState;

/// A channel bound to a connection rather than to one of its transports: every call goes to the connection's
/// current transport, so a client built once keeps working across reconnects, server restarts and GOAWAYs.
/// Cheap to clone. Get it from [`ConnectionHandle::channel`](super::ConnectionHandle::channel) or
/// [`ConnectionLease::channel`](super::ConnectionLease::channel) and hand it to any tonic-generated client:
///
/// ```no_run
/// # use std::time::Duration;
/// # use arbor_actors::connection::{ConnectionConfig, ConnectionHandle};
/// use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let conn = ConnectionHandle::start(ConnectionConfig::parse("grpc://db:50051")?).await?;
/// let mut client = HealthClient::new(conn.channel());
/// let reply = client.check(conn.request(HealthCheckRequest::default())).await?;
/// # Ok(()) }
/// ```
///
/// Per call:
/// - READY: the call goes out on the current transport at once.
/// - IDLE: the connection is asked to connect, and the call waits as while CONNECTING.
/// - CONNECTING: the call waits for READY, at most until its deadline (`grpc-timeout`, set by
///   `Request::set_timeout` or [`ConnectionHandle::request`](super::ConnectionHandle::request); without one,
///   the connection's `call_timeout`), then fails with `Unavailable`.
/// - TRANSIENT_FAILURE: the call waits for the next attempt if it is due before the deadline, and otherwise
///   fails at once with `Unavailable`: the connection is down past the caller's deadline.
/// - closed ([`close`](super::ConnectionHandle::close)) or SHUTDOWN: fails at once with `Unavailable`.
///
/// Every `Unavailable` produced here carries the [`ConnectionError`] as its source (`Status::source`), which
/// names the state and why the connection is not READY. The connection's auth (api key, bearer token, OAuth2
/// with background refresh) is added once the connection is READY, within the call's deadline: a call never
/// fails `Unauthenticated` only because it was made while the connection or its token was still coming. A call that fails at the transport level
/// makes the connection run a health check at once, as
/// [`report_failure`](super::ConnectionHandle::report_failure) does.
#[derive(Clone)]
pub struct ConnectionChannel {
    inner: Follow,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ConnectionChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionChannel")
            .field("target", &self.shared.config.target.to_string())
            .finish_non_exhaustive()
    }
}

impl ConnectionChannel {
    pub(crate) fn new(shared: Arc<Shared>) -> ConnectionChannel {
        ConnectionChannel {
            inner: Follow {
                shared: shared.clone(),
            },
            shared,
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl Service<http::Request<Body>> for ConnectionChannel {
    type Response = http::Response<Body>;
    type Error = StdError;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let call = self.inner.call(req);
        Box::pin(async move { Ok(call.await?.map(Body::new)) })
    }
}

/// Waits for the connection, authenticates, and sends the call on the current transport.
#[derive(Clone)]
pub(crate) struct Follow {
    shared: Arc<Shared>,
}

impl Service<http::Request<Body>> for Follow {
    type Response = http::Response<Body>;
    type Error = StdError;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is per call: which transport serves it is decided when it is made.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let started = Instant::now();
            let caller_deadline = grpc_timeout(req.headers());
            let budget = caller_deadline.unwrap_or(shared.config.call_timeout);
            let deadline = started + budget;
            let (mut channel, generation) = transport_within(&shared, budget)
                .await
                .map_err(|e| Box::new(e.to_status()) as StdError)?;
            let ready = match tokio::time::timeout_at(deadline, channel.ready()).await {
                Ok(ready) => ready.map(|_| ()),
                Err(_) => return Err(deadline_passed(budget)),
            };
            // Authenticate only now: a token fetched while the connection was still CONNECTING (the first one
            // is fetched before READY) is then there, and a refresh in progress is waited for.
            shared
                .interceptor
                .authorize(req.headers_mut(), deadline)
                .await
                .map_err(|status| Box::new(status) as StdError)?;
            if caller_deadline.is_some() {
                // tonic starts a fresh timer from the header it sends: what goes on the wire must be what is
                // left of the caller's deadline, or a call that waited for READY gets its deadline twice.
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(deadline_passed(budget));
                }
                req.headers_mut()
                    .insert("grpc-timeout", encode_grpc_timeout(left));
            }
            let result = match ready {
                Ok(()) => channel.call(req).await,
                Err(e) => Err(e),
            };
            result.map_err(|e| {
                // The service fails only below gRPC (the transport): let the connection check itself now.
                if let Some(actor) = shared.actor() {
                    let _ = actor.cast(ConnectionMsg::CheckNow { generation });
                }
                Box::new(e) as StdError
            })
        })
    }
}

/// The current transport, waiting for READY at most `budget` as [`ConnectionChannel`] documents.
pub(crate) async fn transport_within(
    shared: &Shared,
    budget: Duration,
) -> Result<(Channel, u64), ConnectionError> {
    if let Some(ready) = shared.ready_transport() {
        return Ok(ready);
    }
    let started = Instant::now();
    let deadline = started + budget;
    let mut rx = shared.tx.subscribe();
    loop {
        {
            let snap = rx.borrow_and_update();
            if snap.closed {
                return Err(shared.closed_error());
            }
            match snap.state {
                ConnectivityState::Ready => {
                    if let Some(ch) = &snap.channel {
                        return Ok((ch.clone(), snap.generation));
                    }
                }
                ConnectivityState::Shutdown => return Err(shared.not_ready(&snap)),
                ConnectivityState::Idle => shared.send(ConnectionMsg::Connect { reopen: false }),
                ConnectivityState::TransientFailure
                    if snap.next_attempt_at.is_none_or(|at| at >= deadline) =>
                {
                    return Err(shared.not_ready(&snap));
                }
                ConnectivityState::TransientFailure | ConnectivityState::Connecting => {}
            }
        }
        if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
            let snap = rx.borrow();
            return Err(ConnectionError::Timeout {
                target: shared.config.target.to_string(),
                state: snap.state,
                waited: deadline.saturating_duration_since(started),
                reason: snap.close_reason.clone(),
            });
        }
    }
}

/// The status of a call whose deadline passed before it could be sent.
fn deadline_passed(budget: Duration) -> StdError {
    Box::new(tonic::Status::deadline_exceeded(format!(
        "deadline of {} passed while waiting for the connection",
        humantime::format_duration(budget)
    )))
}

/// `d` as a `grpc-timeout` value: the most precise unit that fits gRPC's 8 digits, as tonic writes it.
fn encode_grpc_timeout(d: Duration) -> http::HeaderValue {
    const MAX: u128 = 99_999_999;
    let (value, unit) = [
        (d.as_nanos(), 'n'),
        (d.as_micros(), 'u'),
        (d.as_millis(), 'm'),
        (u128::from(d.as_secs()), 'S'),
        (u128::from(d.as_secs() / 60), 'M'),
    ]
    .into_iter()
    .find(|(value, _)| *value <= MAX)
    .unwrap_or((u128::from(d.as_secs() / 3600).min(MAX), 'H'));
    http::HeaderValue::from_str(&format!("{value}{unit}")).expect("digits and a unit letter")
}

/// The `grpc-timeout` header (gRPC over HTTP/2: at most 8 digits and a unit), as tonic writes it.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let parse = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&h)
        };
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(parse("123456789S"), None);
        assert_eq!(parse("5x"), None);
        assert_eq!(parse("S"), None);
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn grpc_timeout_encoding_round_trips_within_its_unit() {
        let round_trip = |d: Duration| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", encode_grpc_timeout(d));
            grpc_timeout(&h).unwrap()
        };
        assert_eq!(round_trip(Duration::from_nanos(1)), Duration::from_nanos(1));
        assert_eq!(round_trip(Duration::from_millis(499)), Duration::from_millis(499));
        assert_eq!(round_trip(Duration::from_secs(30)), Duration::from_secs(30));
        // Past 8 digits of a unit, the next coarser unit: never longer than asked.
        assert_eq!(
            round_trip(Duration::from_secs(100_000_000)),
            Duration::from_secs(100_000_000 / 60 * 60)
        );
        assert!(round_trip(Duration::from_secs(u64::MAX / 2)) <= Duration::from_secs(u64::MAX / 2));
    }
}
