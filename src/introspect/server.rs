//! [`IntrospectionServer`]: the tonic server of `arbor.inspect.v1` with health, reflection, optional TLS and
//! tokens, and the optional Prometheus listener; started on its own or as the tree's supervised child.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbor_actors::supervisor::ChildSpec;
use arbor_proto::inspect::v1::inspect_service_server::InspectServiceServer;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::server::NamedService;
use tonic::service::Routes;

use super::journal::Journal;
use super::options::IntrospectionOptions;
use super::prometheus::PrometheusServer;
use super::service::InspectGrpc;
use super::IntrospectionError;
use crate::serving::{self, BoundGrpc, BringUpError, GrpcServing};
use crate::tree::TreeHandle;

/// Where a running introspection server listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntrospectionAddrs {
    /// The gRPC listener (`arbor inspect --addr`, `arbor top --addr`).
    pub grpc: SocketAddr,
    /// The Prometheus listener, when the exporter is on.
    pub prometheus: Option<SocketAddr>,
}

impl BringUpError for IntrospectionError {
    fn bind(addr: SocketAddr, source: std::io::Error) -> Self {
        IntrospectionError::Bind {
            what: "introspection",
            addr,
            source,
        }
    }

    fn reflection(source: tonic_reflection::server::Error) -> Self {
        IntrospectionError::Reflection(source)
    }
}

/// A running introspection server.
#[derive(Debug)]
pub struct RunningIntrospection {
    addrs: IntrospectionAddrs,
    closing: watch::Sender<bool>,
    grpc: GrpcServing,
    prometheus: Option<PrometheusServer>,
    /// The journal's feeding task when this server owns its journal (started on its own).
    journal_task: Option<JoinHandle<()>>,
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
        if let Some(prometheus) = self.prometheus.take() {
            prometheus.stop();
        }
        if let Some(task) = self.journal_task.take() {
            task.abort();
        }
        self.grpc.stop(grace).await.map_err(IntrospectionError::Transport)
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
        let what = "introspection server";
        let bound: BoundGrpc = BoundGrpc::bind::<IntrospectionError>(
            what,
            options.listen,
            options.tls.as_ref(),
            &options.connections,
        )
        .await?;
        let local_addr = bound.local_addr();
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
        let inspect = InspectServiceServer::new(InspectGrpc::new(tree.clone(), journal, closing_rx));
        let name = InspectServiceServer::<InspectGrpc>::NAME;
        let grpc = (bound.serve::<IntrospectionError>(name, Routes::new(inspect), tokens.clone())).await?;
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
            grpc,
            prometheus,
            journal_task: None,
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
    type StopError = IntrospectionError;

    fn grpc(&mut self) -> &mut GrpcServing {
        &mut self.server.grpc
    }

    /// Unpublishes the addresses first: a tree asked for them while the server stops is told none.
    async fn stop(self, grace: Duration) -> Result<(), IntrospectionError> {
        *self.addrs.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.server.stop(grace).await
    }
}
