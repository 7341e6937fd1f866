//! The worker's subscriber: attaching, monitoring, the runner under its own supervisor, the grace period.

use ractor::{ActorId, ActorRef};
use tracing::{error, info, warn};

use super::{WorkerMsg, WorkerState};
use crate::tunnel::info::{TunnelEvent, WorkerStatus};
use crate::tunnel::subscriber::SubscriberRef;

impl WorkerState {
    pub(super) fn attach(&mut self, myself: &ActorRef<WorkerMsg>, subscriber: SubscriberRef, owned: bool) {
        // A runner is monitored too: its supervisor restarts it, the worker pauses delivery meanwhile.
        myself.get_cell().monitor(subscriber.cell().clone());
        info!(subscriber = %subscriber.cell().get_id(), owned, "subscriber attached");
        self.subscriber = Some(subscriber.clone());
        self.shared.subscriber.send_replace(Some(subscriber));
        self.grace_generation += 1;
        self.event(TunnelEvent::SubscriberAttached);
        if self.session.is_some() {
            self.set_status(WorkerStatus::Active);
        } else {
            if self.status == WorkerStatus::Detached {
                self.set_status(WorkerStatus::Connecting);
            }
            self.connect(myself);
        }
    }

    pub(super) fn subscriber_lost(
        &mut self,
        myself: &ActorRef<WorkerMsg>,
        subscriber: ActorId,
        reason: String,
        kill: bool,
    ) {
        let Some(current) = &self.subscriber else {
            return;
        };
        if current.cell().get_id() != subscriber {
            return;
        }
        let current = self.subscriber.take().expect("checked above");
        warn!(%subscriber, %reason, "subscriber lost: delivery paused");
        self.shared.subscriber.send_replace(None);
        self.event(TunnelEvent::SubscriberLost { reason });
        if self.session.is_some() {
            self.set_status(WorkerStatus::Paused);
        }
        if kill && self.runner.is_some() {
            // A runner that missed the processing timeout: its supervisor starts a new one (counted against its
            // restart intensity, RUNNER_RESTARTS per grace period; past that it gives up, and the worker waits
            // for a subscriber to be attached as it would for a user's).
            current.cell().kill();
        }
        self.grace_generation += 1;
        let generation = self.grace_generation;
        myself.send_after(self.options.subscriber_grace, move || WorkerMsg::GraceExpired {
            generation,
        });
    }

    /// The runner's supervisor started a runner (first or again): attach it, after saying the one it replaces
    /// is lost (its exit may reach the worker after this).
    pub(super) fn runner_started(
        &mut self,
        myself: &ActorRef<WorkerMsg>,
        supervisor: ActorId,
        subscriber: SubscriberRef,
    ) {
        if self.runner.as_ref().is_none_or(|r| r.get_id() != supervisor) {
            // A runner of a supervisor stopped since (a user's subscriber was attached meanwhile).
            subscriber.cell().stop(None);
            return;
        }
        if let Some(old) = self.subscriber.as_ref().map(|s| s.cell().get_id()) {
            if old != subscriber.cell().get_id() {
                self.subscriber_lost(myself, old, "the subscriber runner was restarted".into(), false);
            }
        }
        self.attach(myself, subscriber, true);
    }

    /// The runner's supervisor stopped: it gave up on a runner that kept dying (or was stopped).
    pub(super) fn runner_supervisor_exited(&mut self, reason: Option<String>) {
        let Some(runner) = self.runner.take() else {
            return;
        };
        error!(
            supervisor = %runner.get_id(),
            reason = reason.as_deref().unwrap_or("stopped"),
            grace = %humantime::format_duration(self.options.subscriber_grace),
            "the subscriber runner kept failing and was given up on: waiting for a subscriber to be attached"
        );
    }

    pub(super) async fn grace_expired(&mut self, generation: u64) {
        if generation != self.grace_generation || self.subscriber.is_some() {
            return;
        }
        warn!(grace = %humantime::format_duration(self.options.subscriber_grace), "no subscriber came back: releasing the channels");
        self.release_session("no subscriber within the grace period")
            .await;
        self.set_status(WorkerStatus::Detached);
    }
}
