//! One gRPC server bring-up for every arbor server (the tunnel service, the introspection server): bind (127.0.0.1
//! unless told otherwise), the tonic builder with the connection limits and TLS, gRPC health and reflection,
//! the api key interceptor, the bounded and closable incoming connections, the exit channel and the stop. Each
//! server adds only its own service and what runs beside it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::{Request, Status};

use super::{grpc_tls, warn_if_exposed, ApiKeys, Granted, SecurityError, TlsFiles};
use crate::closable::{self, Closer};
use crate::connection_limits::ConnectionLimits;

/// Why a gRPC server failed: tonic's transport error, kept whole (its `source()` chain is the transport
/// error's) and shared between whoever watches the server's exit and whoever stops it.
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub struct ServingFailed(Arc<tonic::transport::Error>);

impl ServingFailed {
    /// tonic's error.
    pub fn transport(&self) -> &tonic::transport::Error {
        &self.0
    }
}

/// A server's error type, as the shared bring-up reports its failures in it.
pub(crate) trait BringUpError: From<SecurityError> {
    /// The listen address could not be bound.
    fn bind(addr: SocketAddr, source: std::io::Error) -> Self;
    /// The reflection service could not be built from the descriptor sets.
    fn reflection(source: tonic_reflection::server::Error) -> Self;
}

/// A gRPC server bound to its address (TLS and limits set up), not serving yet: what a server needs before it
/// builds its own service (e.g. the Prometheus listener beside it) goes in between.
pub(crate) struct BoundGrpc {
    what: &'static str,
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    builder: tonic::transport::Server,
    limits: ConnectionLimits,
}

impl BoundGrpc {
    /// Binds `listen` and sets up the builder with `limits` and `tls`; warns when the address is beyond loopback
    /// without TLS. `what` names the server in logs.
    pub(crate) async fn bind<E: BringUpError>(
        what: &'static str,
        listen: SocketAddr,
        tls: Option<&TlsFiles>,
        limits: &ConnectionLimits,
    ) -> Result<BoundGrpc, E> {
        let bind = |source| E::bind(listen, source);
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(bind)?;
        let local_addr = listener.local_addr().map_err(bind)?;
        let builder = grpc_builder(tls, limits)?;
        warn_if_exposed(what, local_addr, tls.is_some());
        Ok(BoundGrpc {
            what,
            listener,
            local_addr,
            builder,
            limits: *limits,
        })
    }

    /// The bound address (with the real port when 0 was asked for).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves `service` (whose health name is `service_name`, reported SERVING) with gRPC health and
    /// reflection over arbor's descriptors, every call checked against `keys` when set; returns once serving.
    pub(crate) async fn serve<E: BringUpError>(
        self,
        service_name: &'static str,
        service: tonic::service::Routes,
        keys: Option<ApiKeys>,
    ) -> Result<GrpcServing, E> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status(service_name, tonic_health::ServingStatus::Serving)
            .await;
        let (reflection, reflection_alpha) =
            reflection(&[arbor_proto::FILE_DESCRIPTOR_SET]).map_err(E::reflection)?;
        let mut builder = self
            .builder
            .layer(tonic::service::InterceptorLayer::new(interceptor(keys)));
        let router = builder
            .add_routes(service)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_alpha);
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let (incoming, closer) = closable::incoming(self.listener, &self.limits, self.what);
        let (exit_tx, exit) = oneshot::channel();
        let serve = tokio::spawn(async move {
            let served = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = shutdown_rx.await;
                })
                .await
                .map_err(|e| ServingFailed(Arc::new(e)));
            let _ = exit_tx.send(served.clone());
            served
        });
        Ok(GrpcServing {
            local_addr: self.local_addr,
            shutdown: Some(shutdown),
            serve,
            closer,
            exit: Some(exit),
        })
    }
}

/// A gRPC server serving (see [`BoundGrpc::serve`]).
#[derive(Debug)]
pub(crate) struct GrpcServing {
    local_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    serve: JoinHandle<Result<(), ServingFailed>>,
    /// Ends the connections still open when the grace period is over.
    closer: Arc<Closer>,
    /// Resolves when the serve task ends, with its error if it failed.
    exit: Option<oneshot::Receiver<Result<(), ServingFailed>>>,
}

impl GrpcServing {
    /// The address it listens on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Resolves once when the server ends on its own (with why, if it failed); taken once.
    pub(crate) fn exited(&mut self) -> Option<oneshot::Receiver<Result<(), ServingFailed>>> {
        self.exit.take()
    }

    /// Stops accepting calls, lets calls in flight finish (up to `grace`), then closes the connections still
    /// open (long polls, streams) and waits for them ([`closable::stop_serving`]). When it returns, nothing of
    /// the server runs.
    ///
    /// # Errors
    /// [`ServingFailed`] if the server had failed.
    pub(crate) async fn stop(mut self, grace: Duration) -> Result<(), ServingFailed> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match closable::stop_serving(&mut self.serve, &self.closer, grace).await {
            Ok(served) => served,
            Err(_) => Ok(()),
        }
    }
}

/// An interceptor for [`Server::layer`](tonic::transport::Server::layer): every call needs one of `keys` when
/// set, and carries the roles it was granted in its extensions ([`Granted::ALL`] when no key is required).
#[allow(clippy::result_large_err)]
fn interceptor(
    keys: Option<ApiKeys>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static {
    move |mut request: Request<()>| match &keys {
        Some(keys) => keys.check(request),
        None => {
            request.extensions_mut().insert(Granted::ALL);
            Ok(request)
        }
    }
}

/// A tonic server builder with `limits`, serving TLS with `tls` when given (its handshake bounded by
/// `limits.handshake_timeout`).
///
/// # Errors
/// [`SecurityError::Tls`] naming the files when they cannot be read or tonic refuses them.
fn grpc_builder(
    tls: Option<&TlsFiles>,
    limits: &crate::connection_limits::ConnectionLimits,
) -> Result<tonic::transport::Server, SecurityError> {
    let builder = limits.grpc_builder();
    let Some(tls) = tls else {
        return Ok(builder);
    };
    builder
        .tls_config(grpc_tls(tls)?.timeout(limits.handshake_timeout))
        .map_err(|e| SecurityError::Tls {
            path: format!("{} / {}", tls.cert.display(), tls.key.display()),
            source: Box::new(e),
        })
}

/// The gRPC reflection services (v1 and v1alpha, as clients ask for either) over `descriptor_sets` and the
/// health service's.
fn reflection(
    descriptor_sets: &[&'static [u8]],
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let builder = || {
        descriptor_sets.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |b, set| b.register_encoded_file_descriptor_set(set),
        )
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}
