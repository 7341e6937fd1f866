//! What a supervisor does when a child exits: the restart decision (restart type, strategy, intensity,
//! backoff, auto_shutdown), taking a group down, and starting the children that are due.

use std::time::Instant;

use ractor::{ActorId, ActorRef};
use tracing::{debug, error, info, warn};

use super::actor::{Mode, SupervisorMsg, SupervisorState};
use super::children::ChildState;
use super::error::SupervisorError;
use super::events::SupervisorEvent;
use super::exit::{Exit, SupervisorExit};
use super::intensity::RestartIntensity;
use super::lifecycle::{start_one, KILL_WAIT};
use super::spec::{instant_after, AutoShutdown, IntensityScope, Restart, Strategy};
use crate::report::ErrorChain;

impl SupervisorState {
    /// Decides to exit: children are stopped by `post_stop`, and the exit is what `wait` reports.
    pub(super) fn exit_with(&mut self, myself: &ActorRef<SupervisorMsg>, exit: SupervisorExit) {
        let reason = exit.reason();
        self.exiting = Some(exit);
        myself.stop(Some(reason));
    }

    /// A child exited. Decide, per its restart type and the strategy, what to restart.
    pub(super) async fn on_child_exit(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        actor: ActorId,
        exit: Exit,
    ) {
        let Some(order) = self.children.order_of_actor(&actor) else {
            self.exit_of_no_child(actor, exit);
            return;
        };
        self.children.set_state(order, ChildState::Terminated);
        let record = self.children.get(order).and_then(|c| c.slot.exit_cell());
        if let (false, Some(record)) = (exit.is_normal(), &record) {
            // A child supervisor killed (or crashed) could not stop its children, and ractor kills them without
            // waiting; some may still be telling their own exits. They are waited for (bounded, as its restart
            // would wait anyway) so that nothing of its sub-tree is told after its own exit.
            record.wait_orphans(tokio::time::Instant::now() + KILL_WAIT).await;
        }
        let id = self.children.id_of(order);
        let child = self.children.get_mut(order).expect("indexed child exists");
        let (restart, significant) = (child.spec.restart, child.spec.significant);
        let started_at = child.started_at;
        // One clock reading for the whole exit (intensity, backoff, when the restart is due): each costs on
        // the restart path.
        let now = Instant::now();
        let cause = record.and_then(|record| record.exit());
        let mut restart_it = self.exiting.is_none()
            && match restart {
                Restart::Permanent => true,
                Restart::Transient => !exit.is_normal(),
                Restart::Temporary => false,
            };
        // Counted before the exit is told, so that the event says whether it really is restarted.
        if restart_it && !self.record_restart(myself, order, now) {
            restart_it = false;
        }
        match &exit {
            Exit::Normal(_) => info!(child = %id, %actor, restart = restart_it, "child exited normally"),
            Exit::Abnormal(reason) => {
                warn!(child = %id, %actor, %reason, restart = restart_it, "child exited abnormally")
            }
        }
        let normal = exit.is_normal();
        // A child supervisor that gave up exited with a plain `shutdown` (as OTP's): its record has the cause.
        let description = match cause {
            Some(cause) if normal && cause != SupervisorExit::Shutdown => format!("shutdown: {cause}").into(),
            _ => exit.into_description(),
        };
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

        // Siblings the strategy restarts too are stopped in reverse start order first, and each is waited
        // for: restarting before they have exited would race them for names and resources. (Boxed, like every
        // stop on this path: a future holding the stops inline would make every exit event's future, which
        // ractor moves, that much larger.)
        match self.strategy {
            Strategy::OneForOne => {}
            Strategy::OneForAll => Box::pin(self.stop_group(0)).await,
            Strategy::RestForOne => Box::pin(self.stop_group(order + 1)).await,
        }

        let child = self.children.get_mut(order).expect("indexed child exists");
        child.restart_count += 1;
        let due = match child.spec.backoff.as_deref() {
            Some(backoff) => {
                if started_at.is_some_and(|at| now.saturating_duration_since(at) >= backoff.reset_after) {
                    child.backoff_step = 0;
                }
                let delay = backoff.delay(child.backoff_step);
                child.backoff_step = child.backoff_step.saturating_add(1);
                info!(child = %id, delay = %humantime::format_duration(delay), "restart delayed by backoff");
                instant_after(delay)
            }
            None => now,
        };
        if self.strategy == Strategy::OneForOne && due <= now {
            // Started at once, without passing through the children waiting for a restart: nothing else is
            // started first under one_for_one (whatever waits has its own wake-up queued), and entering and
            // leaving that index was a good part of a restart's bookkeeping.
            self.restart_one(myself, order, now).await;
            return;
        }
        self.children.set_state(order, ChildState::Restarting { due });
        if self.strategy == Strategy::OneForOne {
            self.continue_restarts(myself, now).await;
        } else {
            // Through the mailbox: the exit events of the siblings just stopped come first (they outrank
            // ordinary messages), so a sibling supervisor killed meanwhile has its state dropped, and its
            // orphans recorded, before `start_one` waits for them.
            let _ = myself.cast(SupervisorMsg::ContinueRestarts);
        }
    }

    /// The exit of an actor that is no current child: one that a dynamic start in flight has not handed over
    /// yet (kept until it is), or one stopped already. Out of line: rare, and kept off a restart's code.
    #[cold]
    #[inline(never)]
    fn exit_of_no_child(&mut self, actor: ActorId, exit: Exit) {
        match &self.mode {
            Mode::Dynamic(shared) if shared.may_be_starting() => {
                self.early_exits.insert(actor, exit);
            }
            _ => debug!(%actor, "ignoring exit of an actor that is not a current child"),
        }
    }

    /// Counts a restart of the child `order`, against its own intensity or the supervisor's (see
    /// [`IntensityScope`]); `false` (and the supervisor is on its way out) when it is one too many.
    pub(super) fn record_restart(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        order: u64,
        now: Instant,
    ) -> bool {
        let intensity = match (self.intensity_scope, self.children.get_mut(order)) {
            (IntensityScope::PerChild, Some(child)) => child.intensity.get_or_insert_with(|| {
                Box::new(RestartIntensity::new(
                    self.intensity.max_restarts(),
                    self.intensity.period(),
                ))
            }),
            _ => &mut self.intensity,
        };
        if intensity.record(now) {
            return true;
        }
        let (max_restarts, period) = (intensity.max_restarts(), intensity.period());
        let child = self.children.id_of(order);
        let exit = SupervisorExit::IntensityReached {
            child: child.to_string(),
            max_restarts,
            period,
        };
        error!(%child, cause = %exit, "restart intensity reached: stopping all children and exiting");
        self.exit_with(myself, exit);
        false
    }

    /// Takes down the group from start order `from` on, to be restarted with the child that exited: running
    /// members are stopped in reverse start order; every member that is not temporary is then restarted,
    /// including one that was terminated before (OTP's `terminate_children` + `start_children` over the whole
    /// group); temporary ones are forgotten instead (OTP's temporary bystander).
    pub(super) async fn stop_group(&mut self, from: u64) {
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

    pub(super) fn should_auto_shutdown(&self) -> bool {
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
    /// `now`: the time to compare the restarts' due times with (taken by the caller, who has it already).
    pub(super) async fn continue_restarts(&mut self, myself: &ActorRef<SupervisorMsg>, now: Instant) {
        if self.exiting.is_some() {
            return;
        }
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
            if !self.restart_one(myself, order, Instant::now()).await {
                return;
            }
        }
        if let Some(due) = next_due {
            myself.send_after(due.saturating_duration_since(now), || {
                SupervisorMsg::ContinueRestarts
            });
        }
    }

    /// Starts child `order` again, whether it waited among the restarting children or has just exited. A
    /// start that fails counts as a restart and is retried through the mailbox (the child waits among the
    /// restarting ones meanwhile); under one_for_all the members restarted before it are stopped again so
    /// the whole group restarts together. `false` when it failed: nothing more is started now. `began`: when
    /// this start began (the time the caller read last, so a restart reads the clock once).
    async fn restart_one(&mut self, myself: &ActorRef<SupervisorMsg>, order: u64, began: Instant) -> bool {
        let child = self.children.get(order).expect("listed child exists");
        match start_one(
            &child.spec,
            &myself.get_cell(),
            &child.slot,
            Some(&mut self.stopping),
        )
        .await
        {
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
                self.children.set_running(order, cell, began);
                true
            }
            Err(err) => {
                if !self.restart_failed(myself, order, err) {
                    return false;
                }
                if self.strategy == Strategy::OneForAll {
                    Box::pin(self.stop_group(0)).await;
                }
                // Through the mailbox, so calls queued meanwhile are answered between attempts.
                let _ = myself.cast(SupervisorMsg::ContinueRestarts);
                false
            }
        }
    }

    /// A restart of child `order` failed: tells it, keeps the child waiting among the restarting ones, and
    /// counts the attempt as a restart; `false` when that was one too many (the supervisor is on its way out).
    /// Out of line (and cold), so the code of a restart that succeeds stays compact.
    #[cold]
    #[inline(never)]
    fn restart_failed(&mut self, myself: &ActorRef<SupervisorMsg>, order: u64, err: SupervisorError) -> bool {
        let id = self.children.id_of(order);
        warn!(child = %id, error = %err, cause = ?std::error::Error::source(&err), "restart failed; retrying");
        self.publish(|supervisor| SupervisorEvent::RestartFailed {
            supervisor,
            child: id.to_string(),
            error: ErrorChain(&err).to_string(),
        });
        self.children
            .set_state(order, ChildState::Restarting { due: Instant::now() });
        if let Some(c) = self.children.get_mut(order) {
            c.last_exit = Some(format!("restart failed: {err}").into());
        }
        if !self.record_restart(myself, order, Instant::now()) {
            return false;
        }
        if let Some(c) = self.children.get_mut(order) {
            c.restart_count += 1;
        }
        true
    }
}
