//! [`IntrospectionServer`]: the tonic server of `arbor.inspect.v1` with health, reflection, optional TLS and
//! tokens, and the optional Prometheus listener; started on its own or as the tree's supervised child.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbor_actors::supervisor::ChildSpec;
use arbor_proto::inspect::v1::inspect_service_server::InspectServiceServer;
use futures::future::BoxFuture;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::journal::Journal;
use super::options::IntrospectionOptions;
use super::prometheus::PrometheusServer;
use super::service::InspectGrpc;
use super::IntrospectionError;
use crate::closable::{self, Closer};
use crate::serving;
use crate::tree::TreeHandle;

/// Where a running introspection server listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntrospectionAddrs {
    /// The gRPC listener (`arbor inspect --addr`, `arbor top --addr`).
    pub grpc: SocketAddr,
    /// The Prometheus listener, when the exporter is on.
    pub prometheus: Option<SocketAddr>,
}

/// A running introspection server.
#[derive(Debug)]
pub struct RunningIntrospection {
    addrs: IntrospectionAddrs,
    closing: watch::Sender<bool>,
    shutdown: Option<oneshot::Sender<()>>,
    serve: JoinHandle<Result<(), tonic::transport::Error>>,
    prometheus: Option<PrometheusServer>,
    /// The journal's feeding task when this server owns its journal (started on its own).
    journal_task: Option<JoinHandle<()>>,
    /// Ends the connections (watches) still open when the grace period is over.
    closer: Arc<Closer>,
    exit: Option<oneshot::Receiver<Result<(), String>>>,
}

impl RunningIntrospection {
    /// The gRPC address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addrs.grpc
    }

    /// Both addresses.
    pub fn addrs(&self) -> IntrospectionAddrs {
        self.addrs
    }

    /// Ends the event watches (with UNAVAILABLE, so clients know to reconnect), stops accepting calls, lets
    /// calls in flight finish (up to `grace`), and closes the Prometheus listener.
    ///
    /// # Errors
    /// [`IntrospectionError::Transport`] if the server had failed.
    pub async fn stop(mut self, grace: Duration) -> Result<(), IntrospectionError> {
        let _ = self.closing.send(true);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(prometheus) = self.prometheus.take() {
            prometheus.stop();
        }
        if let Some(task) = self.journal_task.take() {
            task.abort();
        }
        match closable::stop_serving(&mut self.serve, &self.closer, grace).await {
            Ok(result) => result.map_err(IntrospectionError::Transport),
            Err(_) => Ok(()),
        }
    }
}

impl serving::Serving for RunningIntrospection {
    fn exited(&mut self) -> Option<oneshot::Receiver<Result<(), String>>> {
        self.exit.take()
    }

    fn stop(
        self,
        grace: Duration,
    ) -> BoxFuture<'static, Result<(), Box<dyn std::error::Error + Send + Sync>>> {
        Box::pin(async move { Ok(RunningIntrospection::stop(self, grace).await?) })
    }
}

/// Starts introspection servers.
#[derive(Debug, Clone, Copy)]
pub struct IntrospectionServer;

impl IntrospectionServer {
    /// Serves `tree` on its own (outside the tree's supervision): binds `options.listen` (and the Prometheus
    /// listener when configured), with health, reflection, and the configured TLS and tokens. Its journal
    /// (event replay, per-node history) starts now. Returns once listening.
    ///
    /// A tree started with [`TreeBuilder::introspection`](crate::tree::TreeBuilder::introspection) runs the
    /// server itself, as a supervised child; this is for trees started without it.
    ///
    /// # Errors
    /// [`IntrospectionError`]: the options, a file, the address, or the Prometheus recorder.
    pub async fn start(
        tree: &TreeHandle,
        options: IntrospectionOptions,
    ) -> Result<RunningIntrospection, IntrospectionError> {
        let (journal, task) = Journal::start(
            tree.subscribe_events(),
            options.replay_events,
            options.history_per_node,
        );
        let mut running = Self::serve(tree.clone(), journal, &options)
            .await
            .inspect_err(|_| task.abort())?;
        running.journal_task = Some(task);
        Ok(running)
    }

    pub(crate) async fn serve(
        tree: TreeHandle,
        journal: Arc<Journal>,
        options: &IntrospectionOptions,
    ) -> Result<RunningIntrospection, IntrospectionError> {
        options.validate().map_err(|e| {
            let e = e.within("introspection");
            IntrospectionError::InvalidOptions {
                field: e.field,
                reason: e.reason,
            }
        })?;
        let tokens = options.accepted_tokens()?;
        let bind = |source| IntrospectionError::Bind {
            what: "introspection",
            addr: options.listen,
            source,
        };
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(bind)?;
        let local_addr = listener.local_addr().map_err(bind)?;
        let builder = serving::grpc_builder(options.tls.as_ref(), &options.connections)?;
        serving::warn_if_exposed("introspection server", local_addr, options.tls.is_some());
        let prometheus = match &options.prometheus {
            Some(prometheus) => {
                let tls = options.tls.as_ref().map(serving::http1_tls).transpose()?;
                Some(
                    PrometheusServer::start(
                        tree.clone(),
                        prometheus.listen,
                        tls,
                        tokens.clone(),
                        options.connections,
                    )
                    .await?,
                )
            }
            None => None,
        };

        let (closing, closing_rx) = watch::channel(false);
        let grpc = InspectGrpc::new(tree.clone(), journal, closing_rx);
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<InspectServiceServer<InspectGrpc>>().await;
        let (reflection, reflection_alpha) = serving::reflection(&[arbor_proto::FILE_DESCRIPTOR_SET])
            .map_err(IntrospectionError::Reflection)?;
        let router = builder
            .layer(tonic::service::InterceptorLayer::new(serving::interceptor(
                tokens.clone(),
            )))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(InspectServiceServer::new(grpc));
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let (incoming, closer) = closable::incoming(listener, &options.connections, "introspection server");
        let (exit_tx, exit_rx) = oneshot::channel();
        let serve = tokio::spawn(async move {
            let result = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = shutdown_rx.await;
                })
                .await;
            let _ = exit_tx.send(result.as_ref().map(|_| ()).map_err(|e| format!("{e}")));
            result
        });
        let addrs = IntrospectionAddrs {
            grpc: local_addr,
            prometheus: prometheus.as_ref().map(PrometheusServer::local_addr),
        };
        tracing::info!(
            tree = %tree.name(),
            addr = %local_addr,
            prometheus = ?addrs.prometheus,
            tls = options.tls.is_some(),
            token = tokens.is_some(),
            "introspection server listening"
        );
        Ok(RunningIntrospection {
            addrs,
            closing,
            shutdown: Some(shutdown_tx),
            serve,
            prometheus,
            journal_task: None,
            closer,
            exit: Some(exit_rx),
        })
    }

    /// The tree's child running the server over `journal` (which outlives the child's restarts); `addrs` is set
    /// at every start and cleared at every stop.
    pub(crate) fn child_spec(
        tree: TreeHandle,
        journal: Arc<Journal>,
        options: IntrospectionOptions,
        addrs: Arc<Mutex<Option<IntrospectionAddrs>>>,
    ) -> ChildSpec {
        let start: serving::StartServer<Published> = Arc::new(move || {
            let (tree, journal, options, addrs) = (
                tree.clone(),
                Arc::clone(&journal),
                options.clone(),
                Arc::clone(&addrs),
            );
            Box::pin(async move {
                let server = IntrospectionServer::serve(tree, journal, &options).await?;
                *addrs.lock().unwrap_or_else(|p| p.into_inner()) = Some(server.addrs());
                Ok(Published { server, addrs })
            })
        });
        serving::serve_child_spec(super::CHILD_ID, "introspection server", start)
    }
}

/// A server whose addresses the tree publishes while it runs.
struct Published {
    server: RunningIntrospection,
    addrs: Arc<Mutex<Option<IntrospectionAddrs>>>,
}

impl serving::Serving for Published {
    fn exited(&mut self) -> Option<oneshot::Receiver<Result<(), String>>> {
        self.server.exited()
    }

    fn stop(
        self,
        grace: Duration,
    ) -> BoxFuture<'static, Result<(), Box<dyn std::error::Error + Send + Sync>>> {
        *self.addrs.lock().unwrap_or_else(|p| p.into_inner()) = None;
        serving::Serving::stop(self.server, grace)
    }
}
