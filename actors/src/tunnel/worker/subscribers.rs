//! The worker's subscriber: attaching, monitoring, restarting the runner, the grace period.

use std::time::Instant;

use ractor::{ActorId, ActorRef};
use tracing::{error, info, warn};

use super::{WorkerMsg, WorkerState, RUNNER_RESTARTS};
use crate::tunnel::info::{TunnelEvent, WorkerStatus};
use crate::tunnel::subscriber::SubscriberRef;

impl WorkerState {
    pub(super) fn attach(&mut self, myself: &ActorRef<WorkerMsg>, subscriber: SubscriberRef, owned: bool) {
        if !owned {
            myself.get_cell().monitor(subscriber.cell().clone());
        }
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

    pub(super) async fn subscriber_lost(
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
        if let Some(factory) = self.owned.clone() {
            if kill {
                current.cell().kill();
            }
            // Restart intensity, as a supervisor's: at most RUNNER_RESTARTS within a grace period. A runner
            // that keeps dying (a batch that makes it panic) is then given up on like a user's subscriber.
            let window = self.options.subscriber_grace;
            while self
                .owned_restarts
                .front()
                .is_some_and(|at| at.elapsed() > window)
            {
                self.owned_restarts.pop_front();
            }
            if self.owned_restarts.len() < RUNNER_RESTARTS {
                self.owned_restarts.push_back(Instant::now());
                match factory(myself.get_cell()).await {
                    Ok(subscriber) => {
                        self.attach(myself, subscriber, true);
                        return;
                    }
                    Err(err) => error!(error = %err, "the subscriber failed to start again"),
                }
            }
        }
        self.grace_generation += 1;
        let generation = self.grace_generation;
        myself.send_after(self.options.subscriber_grace, move || WorkerMsg::GraceExpired {
            generation,
        });
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
