//! The activator actor: turns backend events into callbacks, keeps the timer and the dump up to date.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::SystemTime;

use ractor::{Actor, ActorProcessingErr, ActorRef, MessagingErr, RpcReplyPort, SupervisionEvent};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::backend::{Backend, BackendEvent, Campaign, Candidacy, EventSink};
use super::callbacks::{ActivatorEvent, Role, Singleton};
use super::handle::ActivatorInfo;
use super::{member_prefix, validate_name, ActivatorOptions};
use crate::registry::Registry;

/// Messages of the activator actor; users go through [`ActivatorHandle`](super::ActivatorHandle).
#[derive(Debug)]
pub(crate) enum ActivatorMsg {
    /// Something the backend reported.
    Backend(BackendEvent),
    /// Timer of the given generation fired (older generations are ignored).
    Tick(u64),
    /// Reply with the current [`ActivatorInfo`].
    Dump(RpcReplyPort<ActivatorInfo>),
    /// Run the `Shutdown` callback, resign, stop.
    Shutdown(String),
}

/// The ractor actor behind an activator.
pub(crate) struct ActivatorActor<S>(PhantomData<fn() -> S>);

impl<S> ActivatorActor<S> {
    pub(crate) fn new() -> Self {
        Self(PhantomData)
    }
}

/// Start arguments of [`ActivatorActor`].
pub(crate) struct ActivatorArgs<S> {
    pub(crate) singleton: S,
    pub(crate) options: ActivatorOptions,
    pub(crate) backend: Arc<dyn Backend>,
}

/// State of [`ActivatorActor`].
pub(crate) struct ActivatorState<S: Singleton> {
    singleton: S,
    user: S::State,
    options: ActivatorOptions,
    backend: Arc<dyn Backend>,
    info: ActivatorInfo,
    candidacy: Option<Box<dyn Candidacy>>,
    timer: Option<JoinHandle<Result<(), MessagingErr<ActivatorMsg>>>>,
    timer_gen: u64,
    /// Registry and key this activator's info is published under.
    published: Option<(Registry<ActivatorInfo>, String)>,
    shut_down: bool,
    span: tracing::Span,
}

impl<S: Singleton> Actor for ActivatorActor<S> {
    type Msg = ActivatorMsg;
    type State = ActivatorState<S>;
    type Arguments = ActivatorArgs<S>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let ActivatorArgs {
            singleton,
            options,
            backend,
        } = args;
        validate_name(&options.name)?;
        let node_id = backend.node_id().to_string();
        let identity = format!("{node_id}/{}", myself.get_id());
        let span = tracing::info_span!("activator", name = %options.name, id = %myself.get_id());
        let user = span.in_scope(|| singleton.init())?;
        let info = ActivatorInfo {
            name: options.name.clone(),
            role: Role::Unknown,
            node_id,
            identity,
            backend: backend.kind().to_string(),
            created_at: SystemTime::now(),
            active_from: None,
            leader: None,
            fencing_token: None,
            next_timer_at: None,
            backend_error: None,
        };
        let mut state = ActivatorState {
            singleton,
            user,
            options,
            backend,
            info,
            candidacy: None,
            timer: None,
            timer_gen: 0,
            published: None,
            shut_down: false,
            span,
        };
        // Joining happens here rather than in `post_start` so that a local election's outcome is queued before
        // any message sent after `spawn` returns (a `dump()` right after start sees the role). Everything
        // fallible came first: a failing `pre_start` sends no supervision event, so nothing registered may be
        // left behind when it fails.
        let span = state.span.clone();
        state.join(&myself).instrument(span).await?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let span = state.span.clone();
        state.on_message(&myself, message).instrument(span).await
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // The activator has no children: these come from monitors its backend set up. Never stop on them
        // (ractor's default would).
        if let Some(c) = state.candidacy.as_mut() {
            let _g = state.span.enter();
            c.supervision_event(&message);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let span = state.span.clone();
        state.shutdown("stopped".to_string()).instrument(span).await
    }
}

impl<S: Singleton> ActivatorState<S> {
    async fn join(&mut self, myself: &ActorRef<ActivatorMsg>) -> Result<(), ActorProcessingErr> {
        if let Some(registry) = self
            .options
            .registry
            .clone()
            .or_else(|| self.backend.publish_registry())
        {
            let key = format!("{}{}", member_prefix(&self.info.name), self.info.identity);
            registry.register(key.clone(), myself.get_cell(), self.info.clone())?;
            self.published = Some((registry, key));
        }
        let me = myself.clone();
        let campaign = Campaign {
            name: self.info.name.clone(),
            identity: self.info.identity.clone(),
            actor: myself.get_cell(),
            events: EventSink::new(move |e| me.send_message(ActivatorMsg::Backend(e)).is_ok()),
        };
        tracing::info!(backend = self.backend.kind(), node = %self.info.node_id, "activator started");
        match self.backend.join(campaign).await {
            Ok(c) => self.candidacy = Some(c),
            Err(e) => {
                if let Some((registry, key)) = self.published.take() {
                    registry.unregister(&key);
                }
                return Err(e.into());
            }
        }
        self.rearm_timer(myself);
        Ok(())
    }

    async fn on_message(
        &mut self,
        myself: &ActorRef<ActivatorMsg>,
        message: ActivatorMsg,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ActivatorMsg::Dump(reply) => {
                let _ = reply.send(self.info.clone());
            }
            ActivatorMsg::Shutdown(reason) => {
                let result = self.shutdown(reason.clone()).await;
                myself.stop(Some(reason));
                result?;
            }
            ActivatorMsg::Tick(generation) => {
                if generation == self.timer_gen && !self.shut_down {
                    self.info.next_timer_at = None;
                    self.timer = None;
                    if self.info.role == Role::Leader && self.claim_expired() {
                        return self.step_down_expired(myself).await;
                    }
                    let result = self.callback(ActivatorEvent::Timer).await;
                    self.rearm_timer(myself);
                    result?;
                }
            }
            ActivatorMsg::Backend(_) if self.shut_down => {}
            ActivatorMsg::Backend(event) => self.on_backend(myself, event).await?,
        }
        Ok(())
    }

    async fn on_backend(
        &mut self,
        myself: &ActorRef<ActivatorMsg>,
        event: BackendEvent,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            BackendEvent::Elected { fencing_token } => {
                if self.claim_expired() {
                    // Elected, but the claim's renew deadline passed before this event was handled (the
                    // process was frozen): never act on it. The backend reports the loss and campaigns again.
                    tracing::warn!(
                        fencing_token,
                        "elected on a claim already past its renew deadline: not acting"
                    );
                    self.become_non_leader(Role::Unknown, None);
                    return Ok(());
                }
                tracing::info!(fencing_token, "became leader");
                self.info.backend_error = None;
                self.info.role = Role::Leader;
                self.info.active_from = Some(SystemTime::now());
                self.info.leader = Some(self.info.identity.clone());
                self.info.fencing_token = Some(fencing_token);
                self.publish();
                let result = self.callback(ActivatorEvent::NowLeader { fencing_token }).await;
                self.rearm_timer(myself);
                result
            }
            BackendEvent::Lost { reason } => {
                if self.info.role == Role::Leader {
                    tracing::warn!(%reason, "stepping down: lost leadership");
                    self.info.backend_error = Some(reason);
                    self.become_non_leader(Role::Unknown, None);
                    self.rearm_timer(myself);
                    self.callback(ActivatorEvent::LostLeadership).await
                } else {
                    Ok(())
                }
            }
            BackendEvent::Following { leader } => {
                if self.info.role == Role::Leader {
                    // Backends report `Lost` before `Following`; if one does not, do not keep acting.
                    tracing::warn!(?leader, "stepping down: another leader reported");
                    self.become_non_leader(Role::Follower, leader);
                    self.rearm_timer(myself);
                    return self.callback(ActivatorEvent::LostLeadership).await;
                }
                self.info.backend_error = None;
                if self.info.role != Role::Follower || self.info.leader != leader {
                    tracing::info!(?leader, "following");
                }
                self.become_non_leader(Role::Follower, leader);
                Ok(())
            }
            BackendEvent::Retrying {
                attempt,
                delay,
                error,
            } => {
                tracing::warn!(attempt, ?delay, %error, "election backend unavailable, retrying");
                self.info.backend_error = Some(error);
                if self.info.role != Role::Leader {
                    self.become_non_leader(Role::Unknown, None);
                }
                Ok(())
            }
            BackendEvent::Cluster(change) => {
                tracing::info!(?change, leader = self.info.role == Role::Leader, "cluster change");
                if self.info.role == Role::Leader && self.claim_expired() {
                    self.step_down_expired(myself).await
                } else if self.info.role == Role::Leader {
                    self.callback(ActivatorEvent::ClusterChange(change)).await
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Whether the backend's claim is past its renew deadline (only backends with expiring claims say so).
    fn claim_expired(&self) -> bool {
        self.candidacy
            .as_ref()
            .and_then(|c| c.leadership_valid_until())
            .is_some_and(|until| tokio::time::Instant::now() >= until)
    }

    /// Before a leader callback the claim turned out expired: step down first (`LostLeadership`), and run
    /// nothing else. The backend's own `Lost` follows and finds a non-leader.
    async fn step_down_expired(&mut self, myself: &ActorRef<ActivatorMsg>) -> Result<(), ActorProcessingErr> {
        tracing::warn!("stepping down: the claim is past its renew deadline");
        self.become_non_leader(Role::Unknown, None);
        self.rearm_timer(myself);
        self.callback(ActivatorEvent::LostLeadership).await
    }

    fn become_non_leader(&mut self, role: Role, leader: Option<String>) {
        self.info.role = role;
        self.info.active_from = None;
        self.info.fencing_token = None;
        self.info.leader = leader;
        self.publish();
    }

    async fn callback(&mut self, event: ActivatorEvent) -> Result<(), ActorProcessingErr> {
        self.singleton.on_event(&mut self.user, event).await
    }

    /// Re-arms (or disarms) the timer after any role change or tick. The generation counter makes a tick
    /// that was already queued when the timer was replaced harmless.
    fn rearm_timer(&mut self, myself: &ActorRef<ActivatorMsg>) {
        if let Some(t) = self.timer.take() {
            t.abort();
        }
        self.timer_gen += 1;
        self.info.next_timer_at = None;
        let active = self.info.role == Role::Leader || self.options.timers_on_followers;
        if active && !self.shut_down {
            if let Some(delay) = self.singleton.next_timer_in(&self.user) {
                let generation = self.timer_gen;
                self.timer = Some(myself.send_after(delay, move || ActivatorMsg::Tick(generation)));
                self.info.next_timer_at = Some(SystemTime::now() + delay);
            }
        }
        self.publish();
    }

    fn publish(&self) {
        if let Some((registry, key)) = &self.published {
            let info = self.info.clone();
            if let Err(err) = registry.update(key, move |v| *v = info) {
                tracing::debug!(%err, "could not update registry entry");
            }
        }
    }

    /// The `Shutdown` callback, then resignation. Runs once, whether the stop came through the handle or
    /// from a supervisor.
    async fn shutdown(&mut self, reason: String) -> Result<(), ActorProcessingErr> {
        if self.shut_down {
            return Ok(());
        }
        self.shut_down = true;
        if let Some(t) = self.timer.take() {
            t.abort();
        }
        let was_leader = self.info.role == Role::Leader;
        tracing::info!(%reason, was_leader, "activator shutting down");
        let result = self.callback(ActivatorEvent::Shutdown(reason)).await;
        if let Some(mut c) = self.candidacy.take() {
            c.resign().await;
        }
        if was_leader {
            tracing::info!("resigned leadership");
        }
        self.info.role = Role::Unknown;
        self.info.active_from = None;
        self.info.fencing_token = None;
        if let Some((registry, key)) = self.published.take() {
            registry.unregister(&key);
        }
        result
    }
}
