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
//! `continue_restarts`, in start order, once due. A failed restart counts against the intensity and is
//! retried through the mailbox, so the supervisor keeps answering meanwhile; under one_for_all a failed
//! group restart stops the members already restarted and restarts the whole group again, as OTP does.
//!
//! Exits are recognised by actor id only: a child the supervisor stops itself leaves the actor index first,
//! so its late exit event, and monitor events from actors that are not children, are ignored.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use futures::FutureExt;
use ractor::SupervisionEvent;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort, SpawnErr};
use tracing::{debug, error, info, warn};

use super::children::{Child, ChildCounts, ChildInfo, ChildState, Children, ShownId};
use super::dynamic::{DynamicShared, Pending};
use super::error::{BoxError, StartPanic, SupervisorError};
use super::events::{EventSink, SupervisorEvent};
use super::exit::{Exit, ExitCell, Orphan, SupervisorExit};
use super::intensity::RestartIntensity;
use super::slot::{ChildHandle, ChildSlot};
use super::spec::{
    instant_after, AutoShutdown, ChildKind, ChildSpec, Restart, Shutdown, StartContext, Strategy,
};

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
    pub(crate) auto_shutdown: AutoShutdown,
    pub(crate) children: Vec<ChildSpec>,
    pub(crate) exit: ExitCell,
    pub(crate) events: Option<EventSink>,
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
    mode: Mode,
    strategy: Strategy,
    auto_shutdown: AutoShutdown,
    intensity: RestartIntensity,
    children: Children,
    started_at: Instant,
    /// Exits of actors not known yet, kept while dynamic starts are in flight (see `dynamic.rs`).
    early_exits: HashMap<ActorId, Exit>,
    /// Set once the supervisor has decided to exit on its own: nothing is restarted from then on.
    exiting: Option<SupervisorExit>,
    /// Children being stopped right now (no longer `Running` in the table): orphans too if this supervisor
    /// is killed meanwhile.
    stopping: Vec<Orphan>,
    exit: ExitCell,
    events: Option<EventSink>,
}

/// An error and its causes, on one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// The cause inside ractor's "panicked during startup" wrapper: what `pre_start` returned, or its panic.
fn startup_cause(err: ActorProcessingErr) -> BoxError {
    match err.downcast::<SpawnErr>() {
        Ok(spawn) => match *spawn {
            SpawnErr::StartupFailed(inner) => inner,
            other => Box::new(other),
        },
        Err(err) => err,
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic payload that is not a string)".into())
}

/// Whether `cell` is linked to `supervisor`. An actor that has exited already is unlinked by ractor after its
/// exit event went to its supervisor, so it is given the benefit of the doubt.
fn linked_to(cell: &ActorCell, supervisor: &ActorCell) -> bool {
    match cell.try_get_supervisor() {
        Some(parent) => parent.get_id() == supervisor.get_id(),
        None => matches!(cell.get_status(), ActorStatus::Stopping | ActorStatus::Stopped),
    }
}

/// Runs a start closure; a panic, an error and an actor that escaped supervision are all start failures.
///
/// Before a child supervisor starts again, the children its previous incarnation may have left running are
/// waited for (bounded): a supervisor killed outright, or one of its own child supervisors killed while it
/// stopped them, leaves children to ractor, which kills them without waiting. So the new incarnation's
/// children never race the old ones for names, registry keys or resources. (Workers have no such record.)
pub(crate) async fn start_one(
    spec: &ChildSpec,
    supervisor: &ActorCell,
    slot: &Arc<ChildSlot>,
) -> Result<ActorCell, SupervisorError> {
    if let Some(previous) = slot.exit_cell() {
        previous
            .wait_orphans(tokio::time::Instant::now() + KILL_WAIT)
            .await;
    }
    let ctx = StartContext {
        supervisor: supervisor.clone(),
        name: spec.name.clone(),
        slot: Arc::clone(slot),
    };
    let failed = |source: BoxError| SupervisorError::StartFailed {
        id: spec.id.to_string(),
        source,
    };
    match AssertUnwindSafe((spec.start)(ctx)).catch_unwind().await {
        Ok(Ok(cell)) if linked_to(&cell, supervisor) => Ok(cell),
        Ok(Ok(cell)) => {
            warn!(child = %spec.id, actor = %cell.get_id(), "start closure returned an actor not linked to the supervisor; stopping it");
            terminate_cell(&cell, spec.shutdown).await;
            Err(SupervisorError::NotLinked {
                id: spec.id.to_string(),
                actor: cell.get_id(),
            })
        }
        Ok(Err(err)) => Err(failed(startup_cause(err))),
        Err(panic) => Err(failed(Box::new(StartPanic {
            message: panic_message(panic),
        }))),
    }
}

/// How long a kill is waited for. A kill takes effect at the child's next `.await`; a child stuck in blocking
/// code never gets there, and the supervisor must not hang with it.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Stops one child as its shutdown says: ask, wait up to the timeout, then kill.
///
/// ractor takes one stop request per actor: if someone else asked first, asking again fails at once, and
/// the child is then waited for just the same (that stop is under way), within the same timeout.
pub(crate) async fn terminate_cell(cell: &ActorCell, shutdown: Shutdown) {
    let reason = Some("shutdown".to_string());
    let stopped = match shutdown {
        Shutdown::BrutalKill => false,
        Shutdown::Infinity => {
            if cell.stop_and_wait(reason, None).await.is_err() {
                let _ = cell.wait(None).await;
            }
            true
        }
        Shutdown::Timeout(timeout) => {
            let stopped = match cell.stop_and_wait(reason, Some(timeout)).await {
                Ok(()) => true,
                Err(ractor::RactorErr::Timeout) => false,
                Err(_) => cell.wait(Some(timeout)).await.is_ok(),
            };
            if !stopped {
                warn!(child = %cell.get_id(), ?timeout, "child did not stop in time, killing it");
            }
            stopped
        }
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
            exiting: None,
            stopping: Vec::new(),
            exit: Arc::clone(&args.exit),
            events: args.events.clone(),
        }
    }

    /// Starts a new child and appends it; on failure nothing is kept (as OTP's `start_child`).
    async fn add_child(
        &mut self,
        spec: ChildSpec,
        myself: &ActorCell,
    ) -> Result<ChildHandle, SupervisorError> {
        if let Mode::Dynamic(_) = self.mode {
            return Err(SupervisorError::NotASupervisor {
                actor: myself.get_id(),
                expected: "static supervisor (this one is dynamic: use DynamicSupervisorHandle)",
            });
        }
        spec.check(Some(self.auto_shutdown))?;
        if let Some(order) = self.children.order_of_id(&spec.id) {
            let id = spec.id.to_string();
            return Err(
                match &self.children.get(order).expect("indexed child exists").state {
                    ChildState::Running(cell) => SupervisorError::AlreadyStarted {
                        id,
                        actor: cell.clone(),
                    },
                    _ => SupervisorError::AlreadyPresent { id },
                },
            );
        }
        let slot = ChildSlot::new(Arc::clone(&spec.id), None);
        let cell = start_one(&spec, myself, &slot).await?;
        let order = self
            .children
            .push(Child::new(spec, cell.clone(), Arc::clone(&slot)));
        info!(child = %self.children.id_of(order), actor = %cell.get_id(), "child started");
        self.publish(|supervisor| SupervisorEvent::Started {
            supervisor,
            child: self.children.id_of(order).to_string(),
            actor: cell.get_id(),
        });
        Ok(ChildHandle::new(slot))
    }

    /// Stops a running child; its exit event, arriving later, no longer matches any child.
    async fn stop_child(&mut self, order: u64, next: ChildState) {
        let shutdown = match self.children.get(order) {
            Some(child) => child.spec.shutdown,
            None => return,
        };
        let incarnation = self.children.get(order).and_then(|c| c.slot.exit_cell());
        if let Some(cell) = self.children.set_state(order, next) {
            self.stopping.push(Orphan {
                cell: Some(cell.clone()),
                incarnation,
            });
            terminate_cell(&cell, shutdown).await;
            self.stopping.clear();
        }
    }

    /// Stops every child, and `pending` ones not adopted yet. A static supervisor stops them one at a time in
    /// reverse start order (later children may depend on earlier ones); a dynamic one stops them all at once,
    /// each within its own shutdown, as OTP's `simple_one_for_one` and Elixir's `DynamicSupervisor` do.
    pub(crate) async fn stop_all(&mut self, pending: Vec<Pending>) {
        for (order, _) in self.children.restarting() {
            self.children.set_state(order, ChildState::Terminated);
        }
        match self.mode {
            Mode::Static => {
                for order in self.children.running_from_reversed(0) {
                    self.stop_child(order, ChildState::Terminated).await;
                }
            }
            Mode::Dynamic(_) => {
                let mut stopping = Vec::new();
                for order in self.children.running_from_reversed(0) {
                    let shutdown = self.children.get(order).map(|c| c.spec.shutdown);
                    if let (Some(cell), Some(shutdown)) =
                        (self.children.set_state(order, ChildState::Terminated), shutdown)
                    {
                        stopping.push((cell, shutdown));
                    }
                }
                for p in pending {
                    p.slot.set_removed();
                    stopping.push((p.cell, p.spec.shutdown));
                }
                if !stopping.is_empty() {
                    debug!(
                        children = stopping.len(),
                        "stopping dynamic children concurrently"
                    );
                }
                // Killed halfway, these would be orphans: say so (see the Drop below).
                self.stopping = stopping
                    .iter()
                    .map(|(cell, _)| Orphan {
                        cell: Some(cell.clone()),
                        incarnation: None,
                    })
                    .collect();
                join_all(
                    stopping
                        .iter()
                        .map(|(cell, shutdown)| terminate_cell(cell, *shutdown)),
                )
                .await;
                self.stopping.clear();
            }
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

    /// Takes over the dynamic children that callers started; handles the exits that overtook the hand-over.
    async fn adopt(&mut self, myself: &ActorRef<SupervisorMsg>) {
        let Mode::Dynamic(shared) = &self.mode else {
            return;
        };
        let adopted = shared.adopt_all();
        let quiet = shared.quiet();
        let mut early = Vec::new();
        for p in adopted {
            let actor = p.cell.get_id();
            self.children.push_at(p.order, Child::new(p.spec, p.cell, p.slot));
            debug!(child = %self.children.id_of(p.order), %actor, "child started");
            self.publish(|supervisor| SupervisorEvent::Started {
                supervisor,
                child: self.children.id_of(p.order).to_string(),
                actor,
            });
            if let Some(exit) = self.early_exits.remove(&actor) {
                early.push((actor, exit));
            }
        }
        if quiet {
            self.early_exits.clear();
        }
        for (actor, exit) in early {
            self.on_child_exit(myself, actor, exit).await;
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

    /// Publishes an event, built only when someone set a sink.
    fn publish(&self, event: impl FnOnce(Arc<str>) -> SupervisorEvent) {
        if let Some(events) = &self.events {
            events.send(event(events.label_arc()));
        }
    }

    /// Decides to exit: children are stopped by `post_stop`, and the exit is what `wait` reports.
    fn exit_with(&mut self, myself: &ActorRef<SupervisorMsg>, exit: SupervisorExit) {
        let reason = exit.reason();
        self.exiting = Some(exit);
        myself.stop(Some(reason));
    }

    /// A child exited. Decide, per its restart type and the strategy, what to restart.
    async fn on_child_exit(&mut self, myself: &ActorRef<SupervisorMsg>, actor: ActorId, exit: Exit) {
        let Some(order) = self.children.order_of_actor(&actor) else {
            match &self.mode {
                Mode::Dynamic(shared) if shared.may_be_starting() => {
                    self.early_exits.insert(actor, exit);
                }
                _ => debug!(%actor, "ignoring exit of an actor that is not a current child"),
            }
            return;
        };
        self.children.set_state(order, ChildState::Terminated);
        let id = self.children.id_of(order);
        let child = self.children.get_mut(order).expect("indexed child exists");
        let (restart, significant) = (child.spec.restart, child.spec.significant);
        let uptime = child.started_at.map(|at| at.elapsed());
        let restart_it = self.exiting.is_none()
            && match restart {
                Restart::Permanent => true,
                Restart::Transient => !exit.is_normal(),
                Restart::Temporary => false,
            };
        match &exit {
            Exit::Normal(_) => info!(child = %id, %actor, restart = restart_it, "child exited normally"),
            Exit::Abnormal(reason) => {
                warn!(child = %id, %actor, %reason, restart = restart_it, "child exited abnormally")
            }
        }
        let normal = exit.is_normal();
        let description = exit.into_description();
        if let Some(events) = &self.events {
            events.send(SupervisorEvent::Exited {
                supervisor: events.label_arc(),
                child: id.to_string(),
                actor,
                reason: description.to_string(),
                normal,
                restart: restart_it,
            });
        }
        let child = self.children.get_mut(order).expect("indexed child exists");
        child.last_exit = Some(description);
        if self.exiting.is_some() {
            return;
        }

        if !restart_it {
            if restart == Restart::Temporary || matches!(self.mode, Mode::Dynamic(_)) {
                self.forget(order);
            }
            if significant && self.should_auto_shutdown() {
                info!(child = %id, "significant child exited: supervisor shuts down");
                self.exit_with(
                    myself,
                    SupervisorExit::AutoShutdown {
                        child: id.to_string(),
                    },
                );
            }
            return;
        }

        if !self.record_restart(myself, &id) {
            return;
        }

        // Siblings the strategy restarts too are stopped in reverse start order first, and each is waited
        // for: restarting before they have exited would race them for names and resources.
        match self.strategy {
            Strategy::OneForOne => {}
            Strategy::OneForAll => self.stop_group(0).await,
            Strategy::RestForOne => self.stop_group(order + 1).await,
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
                instant_after(delay)
            }
            None => Instant::now(),
        };
        self.children.set_state(order, ChildState::Restarting { due });
        if self.strategy == Strategy::OneForOne {
            self.continue_restarts(myself).await;
        } else {
            // Through the mailbox: the exit events of the siblings just stopped come first (they outrank
            // ordinary messages), so a sibling supervisor killed meanwhile has its state dropped, and its
            // orphans recorded, before `start_one` waits for them.
            let _ = myself.cast(SupervisorMsg::ContinueRestarts);
        }
    }

    /// Counts a restart; `false` (and the supervisor is on its way out) when it is one too many.
    fn record_restart(&mut self, myself: &ActorRef<SupervisorMsg>, child: &ShownId) -> bool {
        if self.intensity.record(Instant::now()) {
            return true;
        }
        let exit = SupervisorExit::IntensityReached {
            child: child.to_string(),
            max_restarts: self.intensity.max_restarts(),
            period: self.intensity.period(),
        };
        error!(%child, cause = %exit, "restart intensity reached: stopping all children and exiting");
        self.exit_with(myself, exit);
        false
    }

    /// Takes down the group from start order `from` on, to be restarted with the child that exited: running
    /// members are stopped in reverse start order; every member that is not temporary is then restarted,
    /// including one that was terminated before (OTP's `terminate_children` + `start_children` over the whole
    /// group); temporary ones are forgotten instead (OTP's temporary bystander).
    async fn stop_group(&mut self, from: u64) {
        for sibling in self.children.orders_from_reversed(from) {
            let Some(child) = self.children.get(sibling) else {
                continue;
            };
            let temporary = child.spec.restart == Restart::Temporary;
            match child.state {
                ChildState::Running(_) => {
                    let next = if temporary {
                        ChildState::Terminated
                    } else {
                        ChildState::Restarting { due: Instant::now() }
                    };
                    self.stop_child(sibling, next).await;
                    if let Some(c) = self.children.get_mut(sibling).filter(|_| !temporary) {
                        c.restart_count += 1;
                    }
                }
                ChildState::Terminated if !temporary => {
                    self.children
                        .set_state(sibling, ChildState::Restarting { due: Instant::now() });
                }
                _ => {}
            }
            if temporary {
                self.forget(sibling);
            }
        }
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
    /// child that is not due yet holds back those after it (they depend on it). A start that fails counts
    /// as a restart and is retried through the mailbox; under one_for_all the members restarted before it are
    /// stopped again so the whole group restarts together (OTP's `restart_multiple_children`).
    async fn continue_restarts(&mut self, myself: &ActorRef<SupervisorMsg>) {
        if self.exiting.is_some() {
            return;
        }
        let now = Instant::now();
        let ordered = !matches!(self.strategy, Strategy::OneForOne);
        let mut next_due: Option<Instant> = None;
        let mut from = 0;
        while let Some((order, due)) = self.children.restarting_from(from) {
            from = order + 1;
            if due > now {
                next_due = Some(next_due.map_or(due, |d| d.min(due)));
                if ordered {
                    break;
                }
                continue;
            }
            let child = self.children.get(order).expect("listed child exists");
            match start_one(&child.spec, &myself.get_cell(), &child.slot).await {
                Ok(cell) => {
                    info!(
                        child = %self.children.id_of(order),
                        actor = %cell.get_id(),
                        restarts = self.children.get(order).map_or(0, |c| c.restart_count),
                        "child restarted"
                    );
                    self.publish(|supervisor| SupervisorEvent::Restarted {
                        supervisor,
                        child: self.children.id_of(order).to_string(),
                        actor: cell.get_id(),
                        restarts: self.children.get(order).map_or(0, |c| c.restart_count),
                    });
                    self.children.set_state(order, ChildState::Running(cell));
                }
                Err(err) => {
                    let id = self.children.id_of(order);
                    warn!(child = %id, error = %err, cause = ?std::error::Error::source(&err), "restart failed; retrying");
                    self.publish(|supervisor| SupervisorEvent::RestartFailed {
                        supervisor,
                        child: id.to_string(),
                        error: error_chain(&err),
                    });
                    if let Some(c) = self.children.get_mut(order) {
                        c.last_exit = Some(format!("restart failed: {err}").into());
                    }
                    if !self.record_restart(myself, &id) {
                        return;
                    }
                    if let Some(c) = self.children.get_mut(order) {
                        c.restart_count += 1;
                    }
                    if self.strategy == Strategy::OneForAll {
                        self.stop_group(0).await;
                    }
                    // Through the mailbox, so calls queued meanwhile are answered between attempts.
                    let _ = myself.cast(SupervisorMsg::ContinueRestarts);
                    return;
                }
            }
        }
        if let Some(due) = next_due {
            myself.send_after(due.saturating_duration_since(now), || {
                SupervisorMsg::ContinueRestarts
            });
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
            SupervisorMsg::ContinueRestarts => state.continue_restarts(&myself).await,
            SupervisorMsg::Adopt => state.adopt(&myself).await,
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
                // A killed child supervisor's state comes back here; dropping it now records the children it
                // left running (see `start_one`).
                drop(child_state);
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
            _ => {}
        }
        Ok(())
    }
}

impl SupervisorState {
    /// A child by the id it is shown under (`id#n` for dynamic children).
    fn order_of(&self, id: &str) -> Option<u64> {
        if let Some(order) = self.children.order_of_id(id) {
            return Some(order);
        }
        let (_, n) = id.rsplit_once('#')?;
        let order = n.parse().ok()?;
        (self.children.get(order).is_some() && self.children.id_of(order).to_string() == id).then_some(order)
    }

    fn find(&self, id: &str) -> Result<u64, SupervisorError> {
        self.order_of(id)
            .ok_or_else(|| SupervisorError::UnknownChild { id: id.into() })
    }

    fn child(&self, id: &str) -> Result<(ChildHandle, ChildKind), SupervisorError> {
        let child = self.children.get(self.find(id)?).expect("indexed child exists");
        Ok((ChildHandle::new(Arc::clone(&child.slot)), child.spec.kind))
    }

    async fn terminate_child(&mut self, which: ChildSelector) -> Result<(), SupervisorError> {
        let order = match &which {
            ChildSelector::Id(id) => self.find(id)?,
            ChildSelector::Actor(actor) => self
                .children
                .order_of_actor(actor)
                .ok_or(SupervisorError::UnknownActor { actor: *actor })?,
        };
        self.stop_child(order, ChildState::Terminated).await;
        // A child waiting for a restart is terminated too: it must not come back.
        self.children.set_state(order, ChildState::Terminated);
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

    async fn restart_child(&mut self, id: &str, myself: &ActorCell) -> Result<ChildHandle, SupervisorError> {
        let order = self.find(id)?;
        let child = self.children.get(order).expect("indexed child exists");
        match child.state {
            ChildState::Running(_) => return Err(SupervisorError::AlreadyRunning { id: id.into() }),
            ChildState::Restarting { .. } => return Err(SupervisorError::Restarting { id: id.into() }),
            ChildState::Terminated => {}
        }
        let (spec, slot) = (child.spec.clone(), Arc::clone(&child.slot));
        let cell = start_one(&spec, myself, &slot).await?;
        info!(child = %id, actor = %cell.get_id(), "child restarted by request");
        self.publish(|supervisor| SupervisorEvent::Started {
            supervisor,
            child: id.to_string(),
            actor: cell.get_id(),
        });
        self.children.set_state(order, ChildState::Running(cell));
        Ok(ChildHandle::new(slot))
    }

    fn delete_child(&mut self, id: &str) -> Result<(), SupervisorError> {
        let order = self.find(id)?;
        match self.children.get(order).map(|c| &c.state) {
            Some(ChildState::Terminated) => {
                self.forget(order);
                Ok(())
            }
            Some(ChildState::Restarting { .. }) => Err(SupervisorError::Restarting { id: id.into() }),
            _ => Err(SupervisorError::AlreadyRunning { id: id.into() }),
        }
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
                let incarnation = child.slot.exit_cell();
                (cell.is_some() || incarnation.is_some()).then_some(Orphan { cell, incarnation })
            })
            .collect();
        if let Mode::Dynamic(shared) = &self.mode {
            orphans.extend(shared.take_pending().into_iter().map(|p| Orphan {
                cell: Some(p.cell),
                incarnation: p.slot.exit_cell(),
            }));
        }
        orphans.append(&mut self.stopping);
        self.exit.set_orphans(orphans);
    }
}
