//! The supervisor actor: one behaviour for static and dynamic supervisors, as OTP's `supervisor.erl` is one
//! module for every strategy.
//!
//! # States
//!
//! The supervisor itself is *running* until it decides to exit (`exiting` is set: intensity reached, or a
//! significant child's exit under `auto_shutdown`) or is asked to stop; from then on no child is restarted,
//! and `post_stop` stops every child (static: one at a time in reverse start order; dynamic: all at once,
//! each within its own shutdown) before the actor finishes with the [`SupervisorExit`] it recorded.
//!
//! A child (see [`ChildState`]) is `Running(cell)`; on its exit, depending on its restart type and exit
//! reason, it becomes `Restarting { due }`, `Terminated` (spec kept), or is forgotten (temporary children, and
//! every child of a dynamic supervisor that is not restarted). `Restarting` children are started by
//! `continue_restarts`, in start order, once due; a one_for_one child with no backoff delay is started again
//! at once, without waiting as `Restarting`. A failed restart counts against the intensity and is
//! retried through the mailbox, so the supervisor keeps answering meanwhile; under one_for_all a failed
//! group restart stops the members already restarted and restarts the whole group again, as OTP does.
//!
//! Exits are recognised by actor id only: a child the supervisor stops itself leaves the actor index first,
//! so its late exit event, and monitor events from actors that are not children, are ignored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::SupervisionEvent;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{error, info};

use super::children::{ChildCounts, ChildInfo, ChildState, Children};
use super::dynamic::DynamicShared;
use super::error::SupervisorError;
use super::events::{EventSink, SupervisorEvent};
use super::exit::{Exit, ExitCell, Orphan, SupervisorExit};
use super::intensity::RestartIntensity;
use super::slot::ChildHandle;
use super::spec::{AutoShutdown, ChildKind, ChildSpec, IntensityScope, Strategy};

/// Messages a supervisor handles; users go through the handles instead.
pub(crate) enum SupervisorMsg {
    StartChild(ChildSpec, RpcReplyPort<Result<ChildHandle, SupervisorError>>),
    TerminateChild(ChildSelector, RpcReplyPort<Result<(), SupervisorError>>),
    RestartChild(String, RpcReplyPort<Result<ChildHandle, SupervisorError>>),
    DeleteChild(String, RpcReplyPort<Result<(), SupervisorError>>),
    /// The stable handle of a child, with its kind.
    Child(
        String,
        RpcReplyPort<Result<(ChildHandle, ChildKind), SupervisorError>>,
    ),
    Describe(RpcReplyPort<Description>),
    CountChildren(RpcReplyPort<ChildCounts>),
    /// What handles need of this incarnation.
    Info(RpcReplyPort<IncarnationInfo>),
    /// Start the children that are due for a restart (sent to itself after a failed restart or a backoff).
    ContinueRestarts,
    /// Dynamic supervisors' children, started on callers' tasks, are pending adoption (see `dynamic.rs`).
    Adopt,
}

/// How a request names a child: by id (static supervisors) or by actor (dynamic ones).
pub(crate) enum ChildSelector {
    Id(String),
    Actor(ActorId),
}

/// What a supervisor tells about itself, for `which_children` and snapshots.
pub(crate) struct Description {
    pub(crate) kind: ChildKind,
    pub(crate) uptime: Duration,
    pub(crate) children: Vec<ChildInfo>,
}

/// What a handle needs of one supervisor incarnation.
pub(crate) struct IncarnationInfo {
    pub(crate) dynamic: Option<Arc<DynamicShared>>,
    pub(crate) exit: ExitCell,
}

#[derive(Clone)]
pub(crate) enum Mode {
    Static,
    Dynamic(Arc<DynamicShared>),
}

pub(crate) struct SupervisorArgs {
    pub(crate) mode: Mode,
    pub(crate) strategy: Strategy,
    pub(crate) max_restarts: u32,
    pub(crate) period: Duration,
    pub(crate) intensity_scope: IntensityScope,
    pub(crate) auto_shutdown: AutoShutdown,
    pub(crate) children: Vec<ChildSpec>,
    pub(crate) exit: ExitCell,
    pub(crate) events: Option<EventSink>,
}

/// See [`Incarnation::arguments_dropped`](super::exit::Incarnation::arguments_dropped).
impl Drop for SupervisorArgs {
    fn drop(&mut self) {
        self.exit.arguments_dropped();
    }
}

impl SupervisorArgs {
    /// Every check OTP makes at `init`, before anything is started: the flags, then each spec in order, then
    /// duplicate ids. The first fault is the error.
    pub(crate) fn validate(&self) -> Result<(), SupervisorError> {
        if self.period.is_zero() {
            return Err(SupervisorError::InvalidOptions {
                field: "period",
                reason: "must be greater than zero".into(),
            });
        }
        let mut seen = std::collections::HashSet::new();
        for spec in &self.children {
            spec.check(Some(self.auto_shutdown))?;
            if !seen.insert(&spec.id) {
                return Err(SupervisorError::DuplicateChild {
                    id: spec.id.to_string(),
                });
            }
        }
        Ok(())
    }
}

pub(crate) struct SupervisorActor;

pub(crate) struct SupervisorState {
    pub(super) mode: Mode,
    pub(super) strategy: Strategy,
    pub(super) auto_shutdown: AutoShutdown,
    pub(super) intensity: RestartIntensity,
    /// Whether each child has its own intensity (a dynamic supervisor's default), copied from `intensity`.
    pub(super) intensity_scope: IntensityScope,
    pub(super) children: Children,
    pub(super) started_at: Instant,
    /// Exits of actors not known yet, kept while dynamic starts are in flight (see `dynamic.rs`).
    pub(super) early_exits: HashMap<ActorId, Exit>,
    /// Set once the supervisor has decided to exit on its own: nothing is restarted from then on.
    pub(super) exiting: Option<SupervisorExit>,
    /// Children being stopped right now (no longer `Running` in the table): orphans too if this supervisor
    /// is killed meanwhile.
    pub(super) stopping: Vec<Orphan>,
    pub(super) exit: ExitCell,
    pub(super) events: Option<EventSink>,
}

impl SupervisorState {
    fn new(args: &SupervisorArgs) -> Self {
        args.exit.set_built();
        SupervisorState {
            mode: args.mode.clone(),
            strategy: args.strategy,
            auto_shutdown: args.auto_shutdown,
            intensity: RestartIntensity::new(args.max_restarts, args.period),
            intensity_scope: args.intensity_scope,
            children: Children::new(matches!(args.mode, Mode::Dynamic(_))),
            started_at: Instant::now(),
            early_exits: HashMap::new(),
            exiting: None,
            stopping: Vec::new(),
            exit: Arc::clone(&args.exit),
            events: args.events.clone(),
        }
    }

    /// Starts a new child and appends it; on failure nothing is kept (as OTP's `start_child`).
    pub(super) fn describe(&self) -> Description {
        let kind = match self.mode {
            Mode::Static => ChildKind::Supervisor,
            Mode::Dynamic(_) => ChildKind::DynamicSupervisor,
        };
        Description {
            kind,
            uptime: self.started_at.elapsed(),
            children: self.children.infos(),
        }
    }

    /// Publishes an event, built only when someone set a sink.
    pub(super) fn publish(&self, event: impl FnOnce(Arc<str>) -> SupervisorEvent) {
        if let Some(events) = &self.events {
            events.send(event(events.label_arc()));
        }
    }
}

impl Actor for SupervisorActor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        mut args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Checked by the handles before spawning too; here for anyone who builds the arguments otherwise.
        args.validate()?;
        let mut state = SupervisorState::new(&args);
        for spec in std::mem::take(&mut args.children) {
            if let Err(err) = state.add_child(spec, &myself.get_cell()).await {
                error!(error = %err, cause = ?std::error::Error::source(&err), "child failed to start: stopping the children already started");
                state.stop_all(Vec::new()).await;
                return Err(Box::new(err));
            }
        }
        info!(children = state.children.len(), "supervisor started");
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let pending = match &state.mode {
            Mode::Dynamic(shared) => shared.close().await,
            Mode::Static => Vec::new(),
        };
        state.stop_all(pending).await;
        let exit = state.exiting.take().unwrap_or(SupervisorExit::Shutdown);
        info!(%exit, "supervisor stopped");
        state.publish(|supervisor| SupervisorEvent::Stopped {
            supervisor,
            exit: exit.clone(),
        });
        state.exit.set_exit(exit);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Children handed over since are adopted before anything else, so that every request sees them.
        state.adopt(&myself).await;
        match msg {
            // The requests that start or stop children are boxed: held inline, their futures would make the
            // future of every message (an `Adopt` per burst of dynamic starts) that much larger to move.
            SupervisorMsg::StartChild(spec, reply) => {
                let result = Box::pin(state.add_child(spec, &myself.get_cell())).await;
                let _ = reply.send(result);
            }
            SupervisorMsg::TerminateChild(which, reply) => {
                let _ = reply.send(Box::pin(state.terminate_child(which)).await);
            }
            SupervisorMsg::RestartChild(id, reply) => {
                let _ = reply.send(Box::pin(state.restart_child(&id, &myself.get_cell())).await);
            }
            SupervisorMsg::DeleteChild(id, reply) => {
                let _ = reply.send(state.delete_child(&id));
            }
            SupervisorMsg::Child(id, reply) => {
                let _ = reply.send(state.child(&id));
            }
            SupervisorMsg::Describe(reply) => {
                let _ = reply.send(state.describe());
            }
            SupervisorMsg::CountChildren(reply) => {
                let _ = reply.send(state.children.counts());
            }
            SupervisorMsg::Info(reply) => {
                let dynamic = match &state.mode {
                    Mode::Dynamic(shared) => Some(Arc::clone(shared)),
                    Mode::Static => None,
                };
                let _ = reply.send(IncarnationInfo {
                    dynamic,
                    exit: Arc::clone(&state.exit),
                });
            }
            SupervisorMsg::ContinueRestarts => {
                Box::pin(state.continue_restarts(&myself, std::time::Instant::now())).await
            }
            // Adopted above: the message only wakes the supervisor.
            SupervisorMsg::Adopt => {}
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, child_state, reason) => {
                // A child handed over but not adopted yet may be the one whose exit this is: adopt it first.
                state.adopt(&myself).await;
                // A killed child supervisor's state comes back here; dropping it now records the children it
                // left running (see `start_one`).
                drop(child_state);
                state
                    .on_child_exit(&myself, cell.get_id(), Exit::from_reason(reason))
                    .await
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                state.adopt(&myself).await;
                state
                    .on_child_exit(&myself, cell.get_id(), Exit::Abnormal(err.to_string()))
                    .await
            }
            // The default handler would stop the supervisor here; starts and group changes mean nothing to it.
            // Nor do they adopt: every child a dynamic supervisor starts sends its `ActorStarted` here, and
            // adopting at each would take the hand-over lock against the very starts that sent them, once per
            // start (adoption runs before every message and exit, which is all it must precede).
            _ => {}
        }
        Ok(())
    }
}

/// A supervisor that dies without its `post_stop` (killed, or failed) cannot stop its children; ractor kills
/// them without waiting. Dropping its state records them, so that its parent can wait for them before it
/// restarts the supervisor (after a graceful stop the list is empty: `post_stop` stopped them all).
impl Drop for SupervisorState {
    fn drop(&mut self) {
        // Running children, and child supervisors that are down but may have left children of their own.
        let mut orphans: Vec<Orphan> = self
            .children
            .iter()
            .filter_map(|(_, child)| {
                let cell = match &child.state {
                    ChildState::Running(cell) => Some(cell.clone()),
                    _ => None,
                };
                // The latest incarnation spawned, even one whose start this supervisor's death cut short.
                let incarnation = child.slot.latest_incarnation();
                (cell.is_some() || incarnation.is_some()).then_some(Orphan { cell, incarnation })
            })
            .collect();
        if let Mode::Dynamic(shared) = &self.mode {
            orphans.extend(shared.take_pending().into_iter().map(|p| Orphan {
                cell: Some(p.cell),
                incarnation: p.slot.latest_incarnation(),
            }));
        }
        orphans.append(&mut self.stopping);
        self.exit.set_orphans(orphans);
    }
}
