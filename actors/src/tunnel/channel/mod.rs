//! The channel actor: reads one channel, hands its records to the subscriber with back-pressure, and
//! checkpoints after delivery.
//!
//! The actor is thin: it owns one task running [`run`], the read → deliver → checkpoint loop, and talks to it
//! through a `watch` of [`Control`] (the lease's status and version, and whether to stop). So a drain or a
//! stop is seen at once, even while a delivery waits for an acknowledgement or for a subscriber.
//!
//! # States (the protocol's, as this channel lives them)
//!
//! - **OPEN**: `GetCheckpoint`, then read with one batch read ahead of delivery; deliver a batch, wait for its
//!   acknowledgement (at most the processing timeout), start writing the checkpoint per policy (in the
//!   background, one write at a time, while the next batch is delivered: see `checkpoint.rs`), repeat. Empty reads back off
//!   (10 ms, × 5, jitter 0.25, at most 5 s; a full read resets); transient errors are retried with jittered
//!   backoff for `retry_for`, then the channel gives up: checkpoint, report CLOSE, and the next owner replays.
//! - **CLOSING** (the service moves the channel): no new reads; the batch in delivery is finished, the
//!   checkpoint flushed, CLOSE reported at version + 1.
//! - **finished** (a sealed base channel read to its end): checkpoint the end, report TERMINATED at
//!   version + 1, never read again; if that last checkpoint fails, report CLOSE instead (the service
//!   refuses a TERMINATED whose end is not checkpointed) and the next owner finishes it.
//! - **ownership lost** (the service fenced a read or checkpoint): stop at once, without checkpointing.
//!
//! A nack from the subscriber gives the channel up (CLOSE) so its records are delivered again; a delivery
//! that fails because the subscriber died or timed out is kept and delivered again once a subscriber is
//! attached. Only acknowledged records are ever checkpointed: delivery is at-least-once, in order.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arbor_proto::tunnel::domain::{ChannelStatus, ChannelType, Version};
use futures::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tracing::{warn, Instrument};

use super::error::TunnelError;
use super::info::{ChannelInfo, TunnelEntry, TunnelEvent};
use super::options::TunnelOptions;
use super::source::{ChannelLease, TunnelSource};
use super::subscriber::SubscriberRef;
use super::worker::WorkerMsg;
use crate::registry::Registry;

mod checkpoint;
mod deliver;
mod run;

use run::run;

/// What the worker wants of the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Control {
    /// `Open`, or `Closing` to drain.
    pub(crate) status: ChannelStatus,
    /// The lease's version.
    pub(crate) version: Version,
    /// Stop now; `Flush` writes the acknowledged position first (a graceful shutdown), `Abandon` does not
    /// (the channel is no longer ours).
    pub(crate) stop: Option<StopMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopMode {
    Flush,
    Abandon,
}

/// How the channel's loop ended, for the worker (set before the actor stops, read on its exit).
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Drained, or given up: report CLOSE at this version.
    Released { version: Version, reason: String },
    /// Read and checkpointed to its end: report TERMINATED at this version.
    Terminated { version: Version },
    /// The service fenced it: it is not ours any more. Nothing to report.
    OwnershipLost,
    /// Stopped by the worker.
    Stopped,
    /// An error the worker cannot retry (out of range with the `Stop` policy, a fatal call).
    Fatal(TunnelError),
}

/// Where the loop leaves its outcome for the worker: set before the actor stops, taken on its exit.
#[derive(Debug, Default)]
pub(crate) struct OutcomeSlot(Mutex<Option<Outcome>>);

impl OutcomeSlot {
    fn set(&self, outcome: Outcome) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
    }

    pub(crate) fn take(&self) -> Option<Outcome> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

pub(crate) enum ChannelMsg {
    /// The lease is now at this version, in this status (`Open`, or `Closing` to drain).
    Control(ChannelStatus, Version),
    /// Stop the loop.
    Stop(StopMode),
    /// The loop ended (its outcome is in the slot); `Err` if it panicked.
    LoopEnded(Result<(), String>),
}

/// What a channel needs; shared pieces are `Arc`s of the worker's.
pub(crate) struct ChannelArgs {
    pub(crate) lease: ChannelLease,
    pub(crate) channel_type: ChannelType,
    pub(crate) source: Arc<dyn TunnelSource>,
    pub(crate) options: Arc<TunnelOptions>,
    pub(crate) subscriber: watch::Receiver<Option<SubscriberRef>>,
    /// The session's step-down deadline: nothing is delivered at or past it.
    pub(crate) alive: watch::Receiver<Instant>,
    pub(crate) worker: ActorRef<WorkerMsg>,
    pub(crate) registry: Registry<TunnelEntry>,
    pub(crate) events: broadcast::Sender<TunnelEvent>,
    pub(crate) outcome: Arc<OutcomeSlot>,
}

pub(crate) struct ChannelActor;

pub(crate) struct ChannelState {
    control: watch::Sender<Control>,
    task: Option<JoinHandle<()>>,
    /// How long `post_stop` waits for the loop to flush its checkpoint.
    flush_wait: Duration,
}

impl Drop for ChannelState {
    fn drop(&mut self) {
        // Killed: the loop must not outlive its actor.
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

pub(crate) fn registry_key(tunnel_id: &str, channel_id: u32) -> String {
    format!("tunnel/{tunnel_id}/channel/{channel_id}")
}

impl Actor for ChannelActor {
    type Msg = ChannelMsg;
    type State = ChannelState;
    type Arguments = ChannelArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ChannelMsg>,
        args: ChannelArgs,
    ) -> Result<ChannelState, ActorProcessingErr> {
        let lease = &args.lease;
        let key = registry_key(&lease.session.tunnel_id, lease.channel_id);
        let entry = TunnelEntry::Channel(ChannelInfo {
            tunnel_id: lease.session.tunnel_id.to_string(),
            client_id: lease.session.client_id.to_string(),
            channel_id: lease.channel_id,
            status: ChannelStatus::Open,
            version: lease.version.get(),
            checkpoint: 0,
            delivered: 0,
            lag: None,
            lost_to_retention: 0,
        });
        args.registry.register(key.clone(), myself.get_cell(), entry)?;
        let (control, control_rx) = watch::channel(Control {
            status: ChannelStatus::Open,
            version: lease.version,
            stop: None,
        });
        let flush_wait = args.options.channel_flush_wait();
        let span = tracing::info_span!(
            "tunnel_channel",
            tunnel = %lease.session.tunnel_id,
            channel = lease.channel_id,
            actor = %myself.get_id()
        );
        let me = myself.clone();
        let task = tokio::spawn(
            async move {
                let mut ctx = Ctx::new(args, control_rx, key);
                let ended = AssertUnwindSafe(run(&mut ctx)).catch_unwind().await;
                let ended = match ended {
                    Ok(outcome) => {
                        ctx.outcome.set(outcome);
                        Ok(())
                    }
                    Err(panic) => Err(crate::report::panic_message(panic.as_ref())),
                };
                let _ = me.cast(ChannelMsg::LoopEnded(ended));
            }
            .instrument(span),
        );
        Ok(ChannelState {
            control,
            task: Some(task),
            flush_wait,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ChannelMsg>,
        msg: ChannelMsg,
        state: &mut ChannelState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ChannelMsg::Control(status, version) => state.control.send_modify(|c| {
                c.status = status;
                c.version = version;
            }),
            ChannelMsg::Stop(mode) => state.control.send_modify(|c| c.stop = Some(mode)),
            ChannelMsg::LoopEnded(Ok(())) => {
                state.task = None;
                myself.stop(Some("normal".into()));
            }
            ChannelMsg::LoopEnded(Err(panic)) => {
                state.task = None;
                return Err(format!("the channel's loop panicked: {panic}").into());
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<ChannelMsg>,
        state: &mut ChannelState,
    ) -> Result<(), ActorProcessingErr> {
        // Stopped from outside (the worker's shutdown): let the loop flush what was acknowledged.
        if let Some(task) = state.task.take() {
            state.control.send_modify(|c| {
                if c.stop.is_none() {
                    c.stop = Some(StopMode::Flush);
                }
            });
            let abort = task.abort_handle();
            if tokio::time::timeout(state.flush_wait, task).await.is_err() {
                warn!("channel loop did not finish its last checkpoint in time");
                abort.abort();
            }
        }
        Ok(())
    }
}

/// Why a wait was cut short.
enum Interrupted {
    Stop(StopMode),
    Drain,
}

/// The loop's state.
struct Ctx {
    lease: ChannelLease,
    channel_type: ChannelType,
    source: Arc<dyn TunnelSource>,
    options: Arc<TunnelOptions>,
    subscriber: watch::Receiver<Option<SubscriberRef>>,
    alive: watch::Receiver<Instant>,
    worker: ActorRef<WorkerMsg>,
    registry: Registry<TunnelEntry>,
    registry_key: String,
    events: broadcast::Sender<TunnelEvent>,
    outcome: Arc<OutcomeSlot>,
    control: watch::Receiver<Control>,
    /// Every record below it was acknowledged.
    acked: u64,
    /// Every record below it is checkpointed.
    checkpointed: u64,
    last_checkpoint_at: Instant,
    delivered: u64,
    lost_to_retention: u64,
    lag: Option<u64>,
    /// Since when reads have failed with transient errors (reset by a read that works).
    read_failing_since: Option<Instant>,
    read_attempts: u32,
    /// Writing the last checkpoint (or finishing the batch in delivery) for a graceful stop: only
    /// [`StopMode::Abandon`] interrupts now.
    flushing: bool,
    /// The checkpoint being written while the next batch is delivered ([`checkpoint`]).
    writing: Option<checkpoint::Writing>,
}

impl Ctx {
    fn new(args: ChannelArgs, control: watch::Receiver<Control>, registry_key: String) -> Self {
        Ctx {
            lease: args.lease,
            channel_type: args.channel_type,
            source: args.source,
            options: args.options,
            subscriber: args.subscriber,
            alive: args.alive,
            worker: args.worker,
            registry: args.registry,
            registry_key,
            events: args.events,
            outcome: args.outcome,
            control,
            acked: 0,
            checkpointed: 0,
            last_checkpoint_at: Instant::now(),
            delivered: 0,
            lost_to_retention: 0,
            lag: None,
            read_failing_since: None,
            read_attempts: 0,
            flushing: false,
            writing: None,
        }
    }

    fn channel_id(&self) -> u32 {
        self.lease.channel_id
    }

    /// The control's current demand, keeping the lease's version current.
    fn poll_control(&mut self) -> Option<Interrupted> {
        let control = *self.control.borrow_and_update();
        if control.version > self.lease.version {
            self.lease.version = control.version;
        }
        match (control.stop, control.status) {
            (Some(mode), _) => Some(Interrupted::Stop(mode)),
            (None, ChannelStatus::Closing) => Some(Interrupted::Drain),
            _ => None,
        }
    }

    fn closing(&self) -> bool {
        self.control.borrow().status == ChannelStatus::Closing
    }

    /// Waits for `what`, unless the worker stops the channel first, or (with `drain_interrupts`) drains it.
    async fn wait_unless<T>(
        &mut self,
        what: impl std::future::Future<Output = T>,
        drain_interrupts: bool,
    ) -> Result<T, Interrupted> {
        tokio::pin!(what);
        loop {
            match self.poll_control() {
                // The stop being flushed does not interrupt its own flush; abandoning it does.
                Some(Interrupted::Stop(StopMode::Flush)) if self.flushing => {}
                Some(Interrupted::Stop(mode)) => return Err(Interrupted::Stop(mode)),
                Some(Interrupted::Drain) if drain_interrupts && !self.flushing => {
                    return Err(Interrupted::Drain)
                }
                _ => {}
            }
            tokio::select! {
                biased;
                changed = self.control.changed() => {
                    if changed.is_err() {
                        return Err(Interrupted::Stop(StopMode::Abandon));
                    }
                }
                value = &mut what => return Ok(value),
            }
        }
    }

    /// Waits for `what` unless the channel is stopped or drained first.
    async fn or_control<T>(&mut self, what: impl std::future::Future<Output = T>) -> Result<T, Interrupted> {
        self.wait_unless(what, true).await
    }

    /// Waits for `what` unless the channel is stopped first (a drain lets the current step finish).
    async fn or_stop<T>(&mut self, what: impl std::future::Future<Output = T>) -> Result<T, StopMode> {
        match self.wait_unless(what, false).await {
            Ok(value) => Ok(value),
            Err(Interrupted::Stop(mode)) => Err(mode),
            Err(Interrupted::Drain) => unreachable!("a drain does not interrupt or_stop"),
        }
    }

    fn publish(&self) {
        let lease = &self.lease;
        let status = self.control.borrow().status;
        let _ = self.registry.update(&self.registry_key, |entry| {
            if let TunnelEntry::Channel(info) = entry {
                info.status = status;
                info.version = lease.version.get();
                info.checkpoint = self.checkpointed;
                info.delivered = self.delivered;
                info.lag = self.lag;
                info.lost_to_retention = self.lost_to_retention;
            }
        });
    }

    fn event(&self, event: TunnelEvent) {
        let _ = self.events.send(event);
    }
}

/// A task of the source's that did not answer: its panic (a bug in the source), as the source's own error rather
/// than the resync of a malformed answer.
fn source_panicked(call: &'static str, join: tokio::task::JoinError) -> TunnelError {
    TunnelError::SourcePanicked {
        call,
        reason: if join.is_panic() {
            crate::report::panic_message(join.into_panic().as_ref())
        } else {
            format!("the task ended abnormally: {join}")
        },
    }
}

/// Why the loop is ending, before the final checkpoint decides the outcome.
enum Ended {
    Stopped(StopMode),
    Drained,
    Finished,
    GiveUp(String),
    Nacked(String),
    OwnershipLost(TunnelError),
    OutOfRange(TunnelError),
    Fatal(TunnelError),
}
