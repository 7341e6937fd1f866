//! The supervisor actor: one behaviour for static and dynamic supervisors, as OTP's `supervisor.erl` is one
//! module for every strategy.
//!
//! States of a child (see [`ChildState`]): `Running(cell)` → on exit, depending on its restart type and exit
//! reason, `Restarting { due }` or `Terminated` (or forgotten, for temporary children). `Restarting` children
//! are started by [`SupervisorActor::continue_restarts`], in start order, once due; a failed restart counts
//! against the intensity and is retried through the mailbox, so the supervisor keeps answering meanwhile.
//!
//! Exits are recognised by actor id only: a child the supervisor stops itself leaves the actor index first,
//! so its late exit event, and monitor events from actors that are not children, are ignored.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{debug, error, info, warn};

use super::children::{Child, ChildCounts, ChildInfo, ChildState, Children};
use super::dynamic::DynamicShared;
use super::error::SupervisorError;
use super::intensity::RestartIntensity;
use super::spec::{AutoShutdown, ChildKind, ChildSpec, Restart, Shutdown, Strategy};

/// Messages a supervisor handles; users go through the handles instead.
pub(crate) enum SupervisorMsg {
    StartChild(ChildSpec, RpcReplyPort<Result<ActorCell, SupervisorError>>),
    TerminateChild(ChildRef, RpcReplyPort<Result<(), SupervisorError>>),
    RestartChild(String, RpcReplyPort<Result<ActorCell, SupervisorError>>),
    DeleteChild(String, RpcReplyPort<Result<(), SupervisorError>>),
    Describe(RpcReplyPort<Description>),
    CountChildren(RpcReplyPort<ChildCounts>),
    /// Start the children that are due for a restart (sent to itself after a failed restart or a backoff).
    ContinueRestarts,
    /// A dynamic supervisor's child, started on the caller's task, joins (see `dynamic.rs`).
    Adopt(ChildSpec, ActorCell),
    /// The counters a dynamic supervisor shares with its handles.
    DynamicShared(RpcReplyPort<Option<Arc<DynamicShared>>>),
}

/// How a request names a child: by id (static supervisors) or by actor (dynamic ones).
pub(crate) enum ChildRef {
    Id(String),
    Actor(ActorId),
}

/// What a supervisor tells about itself, for `which_children` and snapshots.
pub(crate) struct Description {
    pub(crate) kind: ChildKind,
    pub(crate) uptime: Duration,
    pub(crate) children: Vec<ChildInfo>,
}

#[derive(Debug, Clone)]
pub(crate) enum Mode {
    Static,
    Dynamic(Arc<DynamicShared>),
}

pub(crate) struct SupervisorArgs {
    pub(crate) mode: Mode,
    pub(crate) strategy: Strategy,
    pub(crate) max_restarts: u32,
    pub(crate) period: Duration,
    pub(crate) auto_shutdown: AutoShutdown,
    pub(crate) children: Vec<ChildSpec>,
}

pub(crate) struct SupervisorActor;

pub(crate) struct SupervisorState {
    mode: Mode,
    strategy: Strategy,
    auto_shutdown: AutoShutdown,
    intensity: RestartIntensity,
    children: Children,
    started_at: Instant,
    /// Exits of actors not known yet, kept while dynamic starts are in flight (see `dynamic.rs`).
    early_exits: HashMap<ActorId, Exit>,
}

/// Why a child exited, reduced to what the restart decision needs.
#[derive(Debug)]
enum Exit {
    Normal,
    Abnormal(String),
}

impl Exit {
    fn from_reason(reason: Option<String>) -> Exit {
        match reason {
            None => Exit::Normal,
            Some(r) if r == "normal" || r == "shutdown" || r.starts_with("shutdown:") => Exit::Normal,
            Some(r) => Exit::Abnormal(r),
        }
    }
}

pub(crate) fn validate(spec: &ChildSpec) -> Result<(), SupervisorError> {
    if spec.id.is_empty() {
        return Err(SupervisorError::InvalidSpec {
            id: spec.id.to_string(),
            reason: "the id is empty".into(),
        });
    }
    if spec.significant && spec.restart == Restart::Permanent {
        return Err(SupervisorError::InvalidSpec {
            id: spec.id.to_string(),
            reason: "a permanent child cannot be significant".into(),
        });
    }
    if let Some(b) = &spec.backoff {
        if b.min > b.max || !(0.0..=1.0).contains(&b.random_factor) {
            return Err(SupervisorError::InvalidSpec {
                id: spec.id.to_string(),
                reason: format!(
                    "backoff needs min <= max and random_factor in 0..=1 (got min {:?}, max {:?}, random_factor {})",
                    b.min, b.max, b.random_factor
                ),
            });
        }
    }
    Ok(())
}

/// Runs a start closure, turning a panic into an error so a bad child cannot take its supervisor down.
pub(crate) async fn start_one(spec: &ChildSpec, supervisor: ActorCell) -> Result<ActorCell, SupervisorError> {
    match AssertUnwindSafe((spec.start)(supervisor)).catch_unwind().await {
        Ok(Ok(cell)) => Ok(cell),
        Ok(Err(err)) => Err(SupervisorError::StartFailed {
            id: spec.id.to_string(),
            cause: err.to_string(),
        }),
        Err(panic) => {
            let cause = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            Err(SupervisorError::StartFailed {
                id: spec.id.to_string(),
                cause: format!("panicked: {cause}"),
            })
        }
    }
}

/// How long a kill is waited for. A kill takes effect at the child's next `.await`; a child stuck in blocking
/// code never gets there, and the supervisor must not hang with it.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Stops one child as its shutdown says: ask, wait up to the timeout, then kill.
pub(crate) async fn terminate_cell(cell: &ActorCell, shutdown: Shutdown) {
    let reason = Some("shutdown".to_string());
    let stopped = match shutdown {
        Shutdown::BrutalKill => false,
        Shutdown::Infinity => {
            let _ = cell.stop_and_wait(reason, None).await;
            true
        }
        Shutdown::Timeout(timeout) => match cell.stop_and_wait(reason, Some(timeout)).await {
            Err(ractor::RactorErr::Timeout) => {
                warn!(child = %cell.get_id(), ?timeout, "child did not stop in time, killing it");
                false
            }
            _ => true,
        },
    };
    if !stopped {
        if let Err(ractor::RactorErr::Timeout) = cell.kill_and_wait(Some(KILL_WAIT)).await {
            error!(child = %cell.get_id(), wait = ?KILL_WAIT, "child did not die when killed (blocking code?); going on without it");
        }
    }
}

impl SupervisorState {
    fn new(args: &SupervisorArgs) -> Self {
        SupervisorState {
            mode: args.mode.clone(),
            strategy: args.strategy,
            auto_shutdown: args.auto_shutdown,
            intensity: RestartIntensity::new(args.max_restarts, args.period),
            children: Children::new(matches!(args.mode, Mode::Dynamic(_))),
            started_at: Instant::now(),
            early_exits: HashMap::new(),
        }
    }

    /// Starts a new child and appends it; on failure nothing is kept (as OTP's `start_child`).
    async fn add_child(&mut self, spec: ChildSpec, myself: &ActorCell) -> Result<ActorCell, SupervisorError> {
        validate(&spec)?;
        if self.children.contains_id(&spec.id) {
            return Err(SupervisorError::DuplicateChild {
                id: spec.id.to_string(),
            });
        }
        let cell = start_one(&spec, myself.clone()).await?;
        let order = self.children.push(Child::new(spec, cell.clone()));
        debug!(child = %self.children.id_of(order), actor = %cell.get_id(), "child started");
        Ok(cell)
    }

    /// Stops a running child; its exit event, arriving later, no longer matches any child.
    async fn stop_child(&mut self, order: u64, next: ChildState) {
        let shutdown = match self.children.get(order) {
            Some(child) => child.spec.shutdown,
            None => return,
        };
        if let Some(cell) = self.children.set_state(order, next) {
            terminate_cell(&cell, shutdown).await;
        }
    }

    /// Stops every running child in reverse start order.
    pub(crate) async fn stop_all(&mut self) {
        for order in self.children.running_from_reversed(0) {
            self.stop_child(order, ChildState::Terminated).await;
        }
    }

    /// Removes a child for good, giving its place back to the dynamic supervisor's `max_children`.
    fn forget(&mut self, order: u64) {
        if self.children.remove(order).is_some() {
            if let Mode::Dynamic(shared) = &self.mode {
                shared.release();
            }
        }
    }

    /// Takes over a dynamic child that a caller started; handles its exit if that overtook the hand-over.
    async fn adopt(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        spec: ChildSpec,
        cell: ActorCell,
    ) -> Result<(), ActorProcessingErr> {
        let Mode::Dynamic(shared) = &self.mode else {
            return Ok(());
        };
        shared.adopted();
        let in_flight = shared.starts_in_flight();
        let actor = cell.get_id();
        let order = self.children.push(Child::new(spec, cell));
        debug!(child = %self.children.id_of(order), %actor, "child started");
        let early = self.early_exits.remove(&actor);
        if !in_flight {
            self.early_exits.clear();
        }
        match early {
            Some(exit) => self.on_child_exit(myself, actor, exit).await,
            None => Ok(()),
        }
    }

    fn describe(&self) -> Description {
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

    fn intensity_exceeded(&self, child: &str) -> SupervisorError {
        SupervisorError::IntensityExceeded {
            max_restarts: self.intensity.max_restarts(),
            period: self.intensity.period(),
            child: child.to_string(),
        }
    }

    /// A child exited. Decide, per its restart type and the strategy, what to restart.
    async fn on_child_exit(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        actor: ActorId,
        exit: Exit,
    ) -> Result<(), ActorProcessingErr> {
        let Some(order) = self.children.order_of_actor(&actor) else {
            match &self.mode {
                Mode::Dynamic(shared) if shared.starts_in_flight() => {
                    self.early_exits.insert(actor, exit);
                }
                _ => debug!(%actor, "ignoring exit of an actor that is not a current child"),
            }
            return Ok(());
        };
        self.children.set_state(order, ChildState::Terminated);
        let child = self.children.get(order).expect("indexed child exists");
        let (restart, significant) = (child.spec.restart, child.spec.significant);
        let uptime = child.started_at.map(|at| at.elapsed());
        let id = self.children.id_of(order);
        let restart_it = match restart {
            Restart::Permanent => true,
            Restart::Transient => matches!(exit, Exit::Abnormal(_)),
            Restart::Temporary => false,
        };
        match &exit {
            Exit::Normal => info!(child = %id, %actor, restart = restart_it, "child exited normally"),
            Exit::Abnormal(reason) => {
                warn!(child = %id, %actor, %reason, restart = restart_it, "child exited abnormally")
            }
        }

        if !restart_it {
            if restart == Restart::Temporary || matches!(self.mode, Mode::Dynamic(_)) {
                self.forget(order);
            }
            if significant && self.should_auto_shutdown() {
                info!(child = %id, "significant child exited: supervisor shuts down");
                self.stop_all().await;
                myself.stop(Some("shutdown".into()));
            }
            return Ok(());
        }

        if !self.intensity.record(Instant::now()) {
            let err = self.intensity_exceeded(&id);
            error!(child = %id, error = %err, "restart intensity exceeded: stopping all children");
            self.stop_all().await;
            return Err(Box::new(err));
        }

        // Siblings the strategy restarts too are stopped in reverse start order first, and each is waited
        // for: restarting before they have exited would race them for names and resources.
        let from = match self.strategy {
            Strategy::OneForOne => None,
            Strategy::OneForAll => Some(0),
            Strategy::RestForOne => Some(order + 1),
        };
        if let Some(from) = from {
            for sibling in self.children.running_from_reversed(from) {
                let temporary =
                    self.children.get(sibling).map(|c| c.spec.restart) == Some(Restart::Temporary);
                let next = if temporary {
                    ChildState::Terminated
                } else {
                    ChildState::Restarting { due: Instant::now() }
                };
                self.stop_child(sibling, next).await;
                if temporary {
                    self.forget(sibling);
                } else if let Some(c) = self.children.get_mut(sibling) {
                    c.restart_count += 1;
                }
            }
        }

        let child = self.children.get_mut(order).expect("indexed child exists");
        child.restart_count += 1;
        let due = match child.spec.backoff.as_deref() {
            Some(backoff) => {
                if uptime.is_some_and(|up| up >= backoff.reset_after) {
                    child.backoff_step = 0;
                }
                let delay = backoff.delay(child.backoff_step);
                child.backoff_step = child.backoff_step.saturating_add(1);
                info!(child = %id, ?delay, "restart delayed by backoff");
                Instant::now() + delay
            }
            None => Instant::now(),
        };
        self.children.set_state(order, ChildState::Restarting { due });
        self.continue_restarts(myself).await
    }

    fn should_auto_shutdown(&self) -> bool {
        match self.auto_shutdown {
            AutoShutdown::Never => false,
            AutoShutdown::AnySignificant => true,
            AutoShutdown::AllSignificant => !self
                .children
                .iter()
                .any(|(_, c)| c.spec.significant && c.is_alive()),
        }
    }

    /// Starts the children that wait for a restart, in start order. For one_for_all and rest_for_one the first
    /// child that is not due yet, or fails to start, holds back those after it (they depend on it).
    async fn continue_restarts(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        let ordered = !matches!(self.strategy, Strategy::OneForOne);
        let waiting = self.children.restarting();
        let mut next_due: Option<Instant> = None;
        for (order, due) in waiting {
            if due > now {
                next_due = Some(next_due.map_or(due, |d| d.min(due)));
                if ordered {
                    break;
                }
                continue;
            }
            let spec = self
                .children
                .get(order)
                .expect("listed child exists")
                .spec
                .clone();
            match start_one(&spec, myself.get_cell()).await {
                Ok(cell) => {
                    info!(
                        child = %self.children.id_of(order),
                        actor = %cell.get_id(),
                        restarts = self.children.get(order).map_or(0, |c| c.restart_count),
                        "child restarted"
                    );
                    self.children.set_state(order, ChildState::Running(cell));
                }
                Err(err) => {
                    let id = self.children.id_of(order);
                    warn!(child = %id, error = %err, "restart failed; retrying");
                    if !self.intensity.record(Instant::now()) {
                        let err = self.intensity_exceeded(&id);
                        error!(child = %id, error = %err, "restart intensity exceeded: stopping all children");
                        self.stop_all().await;
                        return Err(Box::new(err));
                    }
                    if let Some(c) = self.children.get_mut(order) {
                        c.restart_count += 1;
                    }
                    // Through the mailbox, so calls queued meanwhile are answered between attempts.
                    let _ = myself.cast(SupervisorMsg::ContinueRestarts);
                    return Ok(());
                }
            }
        }
        if let Some(due) = next_due {
            myself.send_after(due.saturating_duration_since(now), || {
                SupervisorMsg::ContinueRestarts
            });
        }
        Ok(())
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
        let mut state = SupervisorState::new(&args);
        for spec in std::mem::take(&mut args.children) {
            if let Err(err) = state.add_child(spec, &myself.get_cell()).await {
                error!(error = %err, "child failed to start: stopping the children already started");
                state.stop_all().await;
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
        state.stop_all().await;
        info!("supervisor stopped");
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::StartChild(spec, reply) => {
                let result = state.add_child(spec, &myself.get_cell()).await;
                let _ = reply.send(result);
            }
            SupervisorMsg::TerminateChild(which, reply) => {
                let _ = reply.send(state.terminate_child(which).await);
            }
            SupervisorMsg::RestartChild(id, reply) => {
                let _ = reply.send(state.restart_child(&id, &myself.get_cell()).await);
            }
            SupervisorMsg::DeleteChild(id, reply) => {
                let _ = reply.send(state.delete_child(&id));
            }
            SupervisorMsg::Describe(reply) => {
                let _ = reply.send(state.describe());
            }
            SupervisorMsg::CountChildren(reply) => {
                let _ = reply.send(state.children.counts());
            }
            SupervisorMsg::ContinueRestarts => state.continue_restarts(&myself).await?,
            SupervisorMsg::Adopt(spec, cell) => state.adopt(&myself, spec, cell).await?,
            SupervisorMsg::DynamicShared(reply) => {
                let shared = match &state.mode {
                    Mode::Dynamic(shared) => Some(Arc::clone(shared)),
                    Mode::Static => None,
                };
                let _ = reply.send(shared);
            }
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
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                state
                    .on_child_exit(&myself, cell.get_id(), Exit::from_reason(reason))
                    .await
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                state
                    .on_child_exit(&myself, cell.get_id(), Exit::Abnormal(err.to_string()))
                    .await
            }
            // The default handler would stop the supervisor here; starts and group changes mean nothing to it.
            _ => Ok(()),
        }
    }
}

impl SupervisorState {
    async fn terminate_child(&mut self, which: ChildRef) -> Result<(), SupervisorError> {
        let order = match &which {
            ChildRef::Id(id) => self.children.order_of_id(id),
            ChildRef::Actor(actor) => self.children.order_of_actor(actor),
        };
        let Some(order) = order else {
            return Err(match which {
                ChildRef::Id(id) => SupervisorError::UnknownChild { id },
                ChildRef::Actor(actor) => SupervisorError::UnknownActor { actor },
            });
        };
        self.stop_child(order, ChildState::Terminated).await;
        let forget = matches!(self.mode, Mode::Dynamic(_))
            || self
                .children
                .get(order)
                .is_some_and(|c| c.spec.restart == Restart::Temporary);
        if forget {
            self.forget(order);
        }
        Ok(())
    }

    async fn restart_child(&mut self, id: &str, myself: &ActorCell) -> Result<ActorCell, SupervisorError> {
        let order = self
            .children
            .order_of_id(id)
            .ok_or_else(|| SupervisorError::UnknownChild { id: id.into() })?;
        let child = self.children.get(order).expect("indexed child exists");
        if let ChildState::Running(_) = child.state {
            return Err(SupervisorError::AlreadyRunning { id: id.into() });
        }
        let cell = start_one(&child.spec.clone(), myself.clone()).await?;
        self.children.set_state(order, ChildState::Running(cell.clone()));
        Ok(cell)
    }

    fn delete_child(&mut self, id: &str) -> Result<(), SupervisorError> {
        let order = self
            .children
            .order_of_id(id)
            .ok_or_else(|| SupervisorError::UnknownChild { id: id.into() })?;
        match self.children.get(order).map(|c| &c.state) {
            Some(ChildState::Terminated) => {
                self.forget(order);
                Ok(())
            }
            _ => Err(SupervisorError::AlreadyRunning { id: id.into() }),
        }
    }
}
