//! A server run under a supervisor: an actor that starts the server when the child starts, stops it gracefully
//! when the child stops, and fails — for its supervisor to restart it — when the server ends on its own.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use arbor_actors::supervisor::{ChildSpec, Shutdown};
use futures::future::BoxFuture;
use ractor::{ActorProcessingErr, ActorRef};

use super::grpc::{GrpcServing, ServingFailed};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A gRPC server that runs until stopped, as [`serve_child_spec`] runs it under a supervisor.
pub(crate) trait Serving: Send + Sync + 'static {
    /// Why a stop failed.
    type StopError: std::error::Error + Send + Sync + 'static;
    /// Its gRPC server (whose exit the actor watches).
    fn grpc(&mut self) -> &mut GrpcServing;
    /// Stops it gracefully within `grace`.
    fn stop(self, grace: Duration) -> impl std::future::Future<Output = Result<(), Self::StopError>> + Send;
}

/// How a supervised server starts (at each incarnation).
pub(crate) type StartServer<S> = Arc<dyn Fn() -> BoxFuture<'static, Result<S, BoxError>> + Send + Sync>;

/// Why a supervised server's child failed: its server ended without being asked to. The supervisor's events
/// and logs show it with its cause.
#[derive(Debug, thiserror::Error)]
pub enum ServerExited {
    /// The server stopped serving without an error.
    #[error("{what} exited: the server stopped on its own")]
    OnItsOwn {
        /// Which server (`tunnel server`, `introspection server`).
        what: &'static str,
    },
    /// The server failed.
    #[error("{what} exited")]
    Failed {
        /// Which server.
        what: &'static str,
        /// The transport's error.
        #[source]
        cause: ServingFailed,
    },
}

/// A supervisor child running a server: started (bound and listening) when the child starts, stopped gracefully
/// when it stops, and failing — for its supervisor to restart it — when the server ends on its own.
pub(crate) fn serve_child_spec<S: Serving>(
    id: impl Into<String>,
    what: &'static str,
    start: StartServer<S>,
) -> ChildSpec {
    ChildSpec::new(id, move |sup| {
        let start = Arc::clone(&start);
        async move {
            let (actor, _) =
                ractor::Actor::spawn_linked(None, ServeActor::<S>(PhantomData), (what, start), sup).await?;
            Ok(actor.get_cell())
        }
    })
    .shutdown(Shutdown::Timeout(Duration::from_secs(10)))
}

/// Runs a [`Serving`] as an actor, so a supervisor starts, stops and restarts it in tree order.
struct ServeActor<S>(PhantomData<fn() -> S>);

impl<S: Serving> ractor::Actor for ServeActor<S> {
    /// The server ended on its own: a failure the supervisor should see.
    type Msg = ServerExited;
    type State = Option<S>;
    type Arguments = (&'static str, StartServer<S>);

    async fn pre_start(
        &self,
        myself: ActorRef<ServerExited>,
        (what, start): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut server = start().await?;
        if let Some(exited) = server.grpc().exited() {
            tokio::spawn(async move {
                if let Ok(served) = exited.await {
                    // After a stop this reaches an actor that is gone, which is fine.
                    let _ = myself.send_message(match served {
                        Ok(()) => ServerExited::OnItsOwn { what },
                        Err(cause) => ServerExited::Failed { what, cause },
                    });
                }
            });
        }
        Ok(Some(server))
    }

    async fn handle(
        &self,
        _myself: ActorRef<ServerExited>,
        exited: ServerExited,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        Err(exited.into())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ServerExited>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(server) = state.take() {
            server.stop(Duration::from_secs(5)).await?;
        }
        Ok(())
    }
}
