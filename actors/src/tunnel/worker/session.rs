//! The worker's session: opening it, heartbeating, stepping down when it may have expired, shutting it down.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ractor::ActorRef;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{WorkerMsg, WorkerState};
use crate::tunnel::backoff::ChannelBackoff;
use crate::tunnel::channel::{ChannelMsg, StopMode};
use crate::tunnel::error::{ErrorKind, TunnelError};
use crate::tunnel::info::{TunnelEvent, WorkerStatus};
use crate::tunnel::source::{ReportedChannel, ServerChannel, Session};
use crate::tunnel::state::{self, Local};

impl Drop for WorkerState {
    fn drop(&mut self) {
        // A killed worker runs no post_stop: its session (and one its connect task opened meanwhile) would hold
        // its channels until the service's heartbeat timeout. Mark the stop (the connect task then shuts its
        // session down itself) and shut down the live session and one handed over but never taken. Nothing is
        // checkpointed: the channels' next owners replay from the last checkpoint, as after a crash.
        let orphan = {
            let mut opening = self.opening.lock().unwrap_or_else(|p| p.into_inner());
            opening.stopped = true;
            opening.opened.take()
        };
        let sessions: Vec<Session> = self.session.take().into_iter().chain(orphan).collect();
        if sessions.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let source = Arc::clone(&self.source);
        runtime.spawn(async move {
            for session in sessions {
                match source.shutdown(&session).await {
                    Ok(()) => info!(client_id = %session.client_id, "killed worker's session shut down"),
                    Err(err) => warn!(
                        client_id = %session.client_id,
                        error = %err,
                        "killed worker's Shutdown failed; the service releases its channels at the heartbeat timeout"
                    ),
                }
            }
        });
    }
}

impl WorkerState {
    pub(super) fn connect(&mut self, myself: &ActorRef<WorkerMsg>) {
        if self.session.is_some()
            || self.connecting
            || self.subscriber.is_none() && self.status == WorkerStatus::Detached
        {
            return;
        }
        self.connecting = true;
        self.set_status(WorkerStatus::Connecting);
        let (source, options, me) = (
            Arc::clone(&self.source),
            Arc::clone(&self.options),
            myself.clone(),
        );
        let opening = Arc::clone(&self.opening);
        tokio::spawn(async move {
            let sent_at = Instant::now();
            let result = source
                .connect(&options.tunnel_id, &options.client_tag, options.heartbeat_timeout)
                .await;
            let orphan = match &result {
                Ok(session) => {
                    let mut opening = opening.lock().unwrap_or_else(|p| p.into_inner());
                    if opening.stopped {
                        Some(session.clone())
                    } else {
                        // Handed over under the lock: post_stop either finds it here or stops us above.
                        opening.opened = Some(session.clone());
                        None
                    }
                }
                Err(_) => None,
            };
            match orphan {
                Some(session) => {
                    info!(client_id = %session.client_id, "session opened as the worker stopped: shutting it down");
                    let _ = source.shutdown(&session).await;
                }
                None => {
                    let _ = me.cast(WorkerMsg::Connected { sent_at, result });
                }
            }
        });
    }

    pub(super) fn on_connected(
        &mut self,
        myself: &ActorRef<WorkerMsg>,
        sent_at: Instant,
        result: Result<Session, TunnelError>,
    ) {
        self.connecting = false;
        self.opening.lock().unwrap_or_else(|p| p.into_inner()).opened = None;
        match result {
            Ok(session) if self.subscriber.is_none() && self.status == WorkerStatus::Detached => {
                // The grace period ran out while this session was being opened: give it back at once rather
                // than hold channels nobody consumes.
                info!(client_id = %session.client_id, "session opened while detached: shutting it down");
                let source = Arc::clone(&self.source);
                tokio::spawn(async move {
                    let _ = source.shutdown(&session).await;
                });
            }
            Ok(session) => {
                self.session_gen += 1;
                self.sessions += 1;
                self.connect_failures = 0;
                self.last_ok_wall = Some(SystemTime::now());
                let step_down = self.step_down_after(&session);
                self.alive = Some(watch::channel(sent_at + step_down).0);
                if step_down <= self.options.heartbeat_interval {
                    warn!(
                        heartbeat_interval = %humantime::format_duration(self.options.heartbeat_interval),
                        step_down = %humantime::format_duration(step_down),
                        "the service's heartbeat timeout leaves no room for a heartbeat before the worker steps \
                         down: lower heartbeat_interval"
                    );
                }
                info!(
                    client_id = %session.client_id,
                    heartbeat_timeout = %humantime::format_duration(session.heartbeat_timeout),
                    step_down = %humantime::format_duration(step_down),
                    "session opened"
                );
                self.event(TunnelEvent::Connected {
                    client_id: session.client_id.to_string(),
                });
                self.session = Some(session);
                let status = if self.subscriber.is_some() {
                    WorkerStatus::Active
                } else {
                    WorkerStatus::Paused
                };
                self.set_status(status);
                self.heartbeat(myself);
            }
            Err(err) if err.kind() == ErrorKind::Fatal => self.fail(myself, err),
            Err(err) => {
                let retry = ChannelBackoff {
                    initial: Duration::from_millis(100),
                    multiplier: 2.0,
                    max: self.options.reconnect_delay_max.max(Duration::from_millis(100)),
                    jitter: 0.2,
                };
                let delay = retry.delay(self.connect_failures);
                self.connect_failures = self.connect_failures.saturating_add(1);
                warn!(
                    error = %err,
                    cause = ?std::error::Error::source(&err),
                    delay = %humantime::format_duration(delay),
                    "connecting failed; retrying"
                );
                myself.send_after(delay, || WorkerMsg::Connect);
            }
        }
    }

    pub(super) fn reports(&self) -> Vec<ReportedChannel> {
        self.channels
            .iter()
            .filter_map(|(&channel_id, c)| {
                let (status, version) = match c.local? {
                    Local::Running { status, version } | Local::Reported { status, version } => {
                        (status, version)
                    }
                };
                Some(ReportedChannel {
                    channel_id,
                    status,
                    version,
                })
            })
            .collect()
    }

    pub(super) fn heartbeat(&mut self, myself: &ActorRef<WorkerMsg>) {
        let Some(session) = self.session.clone() else {
            return;
        };
        if self.heartbeat_in_flight {
            self.heartbeat_again = true;
            return;
        }
        self.heartbeat_in_flight = true;
        self.heartbeat_again = false;
        let reports = self.reports();
        let (source, me, generation) = (Arc::clone(&self.source), myself.clone(), self.session_gen);
        tokio::spawn(async move {
            let sent_at = Instant::now();
            let result = source.heartbeat(&session, &reports).await;
            let _ = me.cast(WorkerMsg::HeartbeatDone {
                session: generation,
                sent_at,
                result,
            });
        });
    }

    /// How long the session is trusted after a heartbeat sent that succeeded (half the service's timeout).
    fn step_down_after(&self, session: &Session) -> std::time::Duration {
        state::step_down_after(session.heartbeat_timeout, self.options.heartbeat_timeout)
    }

    pub(super) fn on_tick(&mut self, myself: &ActorRef<WorkerMsg>) {
        let (Some(session), Some(alive)) = (&self.session, &self.alive) else {
            return;
        };
        // As the etcd activator at TTL/2: past half the service's timeout without a heartbeat sent since
        // that succeeded, the service may already have expired the session and handed its channels on.
        let deadline = *alive.borrow();
        if Instant::now() >= deadline {
            let reason = format!(
                "no heartbeat acknowledged within {} (half the service's heartbeat timeout of {})",
                humantime::format_duration(self.step_down_after(session)),
                humantime::format_duration(session.heartbeat_timeout)
            );
            self.lose_session(myself, reason);
            return;
        }
        self.heartbeat(myself);
    }

    pub(super) async fn on_heartbeat(
        &mut self,
        myself: &ActorRef<WorkerMsg>,
        generation: u64,
        sent_at: Instant,
        result: Result<Vec<ServerChannel>, TunnelError>,
    ) {
        if generation != self.session_gen {
            return;
        }
        self.heartbeat_in_flight = false;
        match result {
            Ok(owned) => {
                if let (Some(session), Some(alive)) = (&self.session, &self.alive) {
                    let until = sent_at + self.step_down_after(session);
                    alive.send_if_modified(|deadline| {
                        let later = until > *deadline;
                        if later {
                            *deadline = until;
                        }
                        later
                    });
                }
                self.last_ok_wall = Some(SystemTime::now());
                self.apply(myself, owned).await;
                self.publish();
                if self.heartbeat_again {
                    self.heartbeat(myself);
                }
            }
            Err(err) => match err.kind() {
                ErrorKind::OwnershipLost => {
                    self.lose_session(myself, format!("the service no longer knows this client: {err}"))
                }
                ErrorKind::Fatal => self.fail(myself, err),
                _ => {
                    warn!(error = %err, cause = ?std::error::Error::source(&err), "heartbeat failed");
                    if self.heartbeat_again {
                        self.heartbeat(myself);
                    }
                }
            },
        }
    }

    /// The session is over: its channels, even those still stopping, must deliver nothing more.
    fn expire_deadline(&mut self) {
        if let Some(alive) = self.alive.take() {
            alive.send_replace(Instant::now());
        }
    }

    /// Ends the session without waiting for the service: the channels are abandoned (their unacknowledged
    /// records are delivered again by their next owner), `Shutdown` is sent in the background, and a new
    /// session is opened after a random delay.
    pub(super) fn lose_session(&mut self, myself: &ActorRef<WorkerMsg>, reason: String) {
        let Some(session) = self.session.take() else {
            return;
        };
        self.expire_deadline();
        self.session_gen += 1;
        self.heartbeat_in_flight = false;
        warn!(client_id = %session.client_id, %reason, "session lost: starting over with a new client id");
        self.event(TunnelEvent::SessionLost {
            client_id: session.client_id.to_string(),
            reason,
        });
        for c in self.channels.values_mut() {
            c.local = None;
            if let Some(actor) = &c.actor {
                let _ = actor.cast(ChannelMsg::Stop(StopMode::Abandon));
            }
        }
        let source = Arc::clone(&self.source);
        tokio::spawn(async move {
            let _ = source.shutdown(&session).await;
        });
        let (min, max) = (self.options.reconnect_delay_min, self.options.reconnect_delay_max);
        let delay = min + (max - min).mul_f64(rand::random::<f64>());
        self.set_status(WorkerStatus::Connecting);
        myself.send_after(delay, || WorkerMsg::Connect);
    }

    /// Ends the session cleanly: channels checkpoint what was acknowledged, then `Shutdown` releases them.
    pub(super) async fn release_session(&mut self, reason: &str) {
        self.stop_channels(StopMode::Flush).await;
        self.expire_deadline();
        if let Some(session) = self.session.take() {
            self.session_gen += 1;
            self.heartbeat_in_flight = false;
            info!(client_id = %session.client_id, %reason, "session shut down");
            if let Err(err) = self.source.shutdown(&session).await {
                warn!(error = %err, "Shutdown failed; the service releases the channels at the heartbeat timeout");
            }
        }
    }
}
