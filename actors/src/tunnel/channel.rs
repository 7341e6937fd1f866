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
//!   acknowledgement (at most the processing timeout), checkpoint per policy, repeat. Empty reads back off
//!   (10 ms, × 5, jitter 0.25, at most 5 s; a full read resets); transient errors are retried with jittered
//!   backoff for `retry_for`, then the channel gives up: checkpoint, report CLOSE, and the next owner replays.
//! - **CLOSING** (the service moves the channel): no new reads; the batch in delivery is finished, the
//!   checkpoint flushed, CLOSE reported at version + 1.
//! - **finished** (a sealed base channel read to its end): checkpoint the end, report TERMINATED at
//!   version + 1, never read again.
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
use tracing::{debug, error, info, warn, Instrument};

use super::error::{ErrorKind, TunnelError};
use super::info::{ChannelInfo, TunnelEntry, TunnelEvent};
use super::options::{CheckpointPolicy, OutOfRangePolicy, TunnelOptions};
use super::source::{ChannelLease, ReadBatch, TunnelSource};
use super::subscriber::{Batch, Delivery, SubscriberRef};
use super::worker::WorkerMsg;
use crate::registry::Registry;

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
        let flush_wait = args.options.call_timeout * 2;
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
                    Err(panic) => Err(panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "panic".into())),
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
}

impl Ctx {
    fn new(args: ChannelArgs, control: watch::Receiver<Control>, registry_key: String) -> Self {
        Ctx {
            lease: args.lease,
            channel_type: args.channel_type,
            source: args.source,
            options: args.options,
            subscriber: args.subscriber,
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

    /// Runs `call` with retries for transient errors, for at most `retry_for`.
    async fn retrying<T, F>(&mut self, what: &'static str, mut call: F) -> Result<T, Ended>
    where
        F: FnMut(
            Arc<dyn TunnelSource>,
            ChannelLease,
        ) -> futures::future::BoxFuture<'static, Result<T, TunnelError>>,
    {
        let began = Instant::now();
        let mut attempt = 0;
        loop {
            let future = call(Arc::clone(&self.source), self.lease.clone());
            let result = match self.or_stop(future).await {
                Ok(result) => result,
                Err(mode) => return Err(Ended::Stopped(mode)),
            };
            match result {
                Ok(value) => return Ok(value),
                Err(err) => match err.kind() {
                    ErrorKind::Retryable if began.elapsed() < self.options.retry_for => {
                        let delay = self.options.retry_backoff.delay(attempt);
                        attempt += 1;
                        debug!(%what, error = %err, ?delay, "transient error; retrying");
                        if let Err(mode) = self.or_stop(tokio::time::sleep(delay)).await {
                            return Err(Ended::Stopped(mode));
                        }
                    }
                    ErrorKind::Retryable => {
                        return Err(Ended::GiveUp(format!(
                            "{what} kept failing for {:?}: {err}",
                            self.options.retry_for
                        )))
                    }
                    ErrorKind::OwnershipLost => return Err(Ended::OwnershipLost(err)),
                    ErrorKind::CheckpointOutOfRange => return Err(Ended::OutOfRange(err)),
                    ErrorKind::Fatal => return Err(Ended::Fatal(err)),
                },
            }
        }
    }

    /// Writes the acknowledged position if it moved.
    async fn checkpoint(&mut self) -> Result<(), Ended> {
        if self.acked == self.checkpointed {
            return Ok(());
        }
        let position = self.acked;
        self.retrying("Checkpoint", move |source, lease| {
            async move { source.checkpoint(&lease, position).await }.boxed()
        })
        .await?;
        self.checkpointed = position;
        self.last_checkpoint_at = Instant::now();
        debug!(position, "checkpoint written");
        self.event(TunnelEvent::Checkpointed {
            channel_id: self.channel_id(),
            position,
        });
        self.publish();
        Ok(())
    }

    /// The checkpoint the policy wants after an acknowledgement.
    async fn checkpoint_per_policy(&mut self) -> Result<(), Ended> {
        match self.options.checkpoint {
            CheckpointPolicy::EveryBatch => self.checkpoint().await,
            CheckpointPolicy::Every(interval) if self.last_checkpoint_at.elapsed() >= interval => {
                self.checkpoint().await
            }
            CheckpointPolicy::Every(_) => Ok(()),
        }
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

/// The channel's life: from `GetCheckpoint` to its outcome.
async fn run(ctx: &mut Ctx) -> Outcome {
    let ended = match read_and_deliver(ctx).await {
        Ok(never) => match never {},
        Err(ended) => ended,
    };
    // The final checkpoint: only of what was acknowledged, and never once the channel is not ours.
    let flush = match &ended {
        Ended::Stopped(StopMode::Flush)
        | Ended::Drained
        | Ended::Finished
        | Ended::GiveUp(_)
        | Ended::Nacked(_) => true,
        Ended::Stopped(StopMode::Abandon)
        | Ended::OwnershipLost(_)
        | Ended::OutOfRange(_)
        | Ended::Fatal(_) => false,
    };
    if flush {
        // Only an abandoning stop cuts the flush short (the graceful stop that may have ended the loop does
        // not); the flush itself is bounded by `retry_for`.
        ctx.flushing = true;
        match ctx.checkpoint().await {
            Ok(()) => {}
            Err(Ended::OwnershipLost(err)) => {
                info!(error = %err, "ownership lost during the last checkpoint");
                ctx.publish();
                return Outcome::OwnershipLost;
            }
            Err(_) => warn!(
                acked = ctx.acked,
                checkpointed = ctx.checkpointed,
                "last checkpoint failed"
            ),
        }
    }
    ctx.publish();
    let next = ctx.lease.version.next();
    let channel_id = ctx.channel_id();
    match ended {
        Ended::Stopped(_) => Outcome::Stopped,
        Ended::Drained => {
            info!(version = %next, "drained: releasing the channel");
            Outcome::Released {
                version: next,
                reason: "drained for a hand-over".into(),
            }
        }
        Ended::Finished => {
            info!(version = %next, position = ctx.checkpointed, "channel finished: terminated");
            ctx.event(TunnelEvent::ChannelTerminated { channel_id });
            Outcome::Terminated { version: next }
        }
        Ended::GiveUp(reason) | Ended::Nacked(reason) => {
            warn!(%reason, "giving the channel up so that it is delivered again");
            Outcome::Released {
                version: next,
                reason,
            }
        }
        Ended::OwnershipLost(err) => {
            info!(error = %err, "ownership lost: stopping without a checkpoint");
            Outcome::OwnershipLost
        }
        Ended::OutOfRange(err) | Ended::Fatal(err) => {
            error!(error = %err, "channel stops on an error it cannot retry");
            Outcome::Fatal(err)
        }
    }
}

/// Reads and delivers until something ends the channel (the `Ok` side never happens).
async fn read_and_deliver(ctx: &mut Ctx) -> Result<std::convert::Infallible, Ended> {
    let info = ctx
        .retrying("GetCheckpoint", |source, lease| {
            async move { source.get_checkpoint(&lease).await }.boxed()
        })
        .await?;
    ctx.channel_type = info.channel_type;
    let mut position = info.position;
    if position < info.first_retained {
        position = out_of_range(ctx, position, info.first_retained)?;
    }
    ctx.acked = position;
    ctx.checkpointed = info.position;
    ctx.lag = Some(info.end.saturating_sub(position));
    ctx.event(TunnelEvent::ChannelAssigned {
        channel_id: ctx.channel_id(),
        version: ctx.lease.version.get(),
        position,
    });
    ctx.publish();
    info!(position, end = info.end, "channel started");
    if info.finished {
        return Err(Ended::Finished);
    }

    let mut empty_reads = 0u32;
    let mut ahead = Some(spawn_read(ctx, position));
    loop {
        if ctx.closing() {
            return Err(Ended::Drained);
        }
        let Some(read) = ahead.take() else {
            return Err(Ended::Drained);
        };
        let batch = match ctx.or_control(read.wait()).await {
            Ok(batch) => batch,
            Err(Interrupted::Stop(mode)) => return Err(Ended::Stopped(mode)),
            Err(Interrupted::Drain) => return Err(Ended::Drained),
        };
        let batch = match batch {
            Ok(batch) => batch,
            Err(err) => {
                position = recover(ctx, err, position).await?;
                ahead = Some(spawn_read(ctx, position));
                continue;
            }
        };
        ctx.read_failing_since = None;
        ctx.read_attempts = 0;
        if batch.records.is_empty() {
            if batch.finished {
                ctx.acked = batch.next;
                return Err(Ended::Finished);
            }
            let delay = ctx.options.empty_read_backoff.delay(empty_reads);
            empty_reads = empty_reads.saturating_add(1);
            if let Err(interrupted) = ctx.or_control(tokio::time::sleep(delay)).await {
                return Err(match interrupted {
                    Interrupted::Stop(mode) => Ended::Stopped(mode),
                    Interrupted::Drain => Ended::Drained,
                });
            }
            ahead = Some(spawn_read(ctx, position));
            continue;
        }
        empty_reads = 0;
        position = batch.next;
        // One batch read ahead while this one is delivered (none past the end, none once closing).
        if !batch.finished && !ctx.closing() {
            ahead = Some(spawn_read(ctx, position));
        }
        let finished = batch.finished;
        deliver(ctx, batch).await?;
        ctx.checkpoint_per_policy().await?;
        if finished {
            return Err(Ended::Finished);
        }
        if ahead.is_none() && !ctx.closing() {
            ahead = Some(spawn_read(ctx, position));
        }
    }
}

/// A read running on its own task, so it proceeds while the previous batch is delivered.
struct PendingRead(JoinHandle<Result<ReadBatch, TunnelError>>);

impl PendingRead {
    async fn wait(mut self) -> Result<ReadBatch, TunnelError> {
        match (&mut self.0).await {
            Ok(result) => result,
            Err(join) => Err(TunnelError::Malformed {
                call: "ReadRecords",
                field: "(task)".into(),
                reason: format!("the read task ended abnormally: {join}"),
            }),
        }
    }
}

impl Drop for PendingRead {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn spawn_read(ctx: &Ctx, from: u64) -> PendingRead {
    let (source, lease) = (Arc::clone(&ctx.source), ctx.lease.clone());
    let (max, wait) = (ctx.options.read_batch_size, ctx.options.read_wait);
    PendingRead(tokio::spawn(
        async move { source.read(&lease, from, max, wait).await },
    ))
}

/// After a failed read: retry transient errors after a backoff, resync on a sequence mismatch, apply the
/// out-of-range policy; anything else ends the channel. Returns where to read next.
async fn recover(ctx: &mut Ctx, err: TunnelError, position: u64) -> Result<u64, Ended> {
    match err.kind() {
        ErrorKind::Retryable => {
            let since = *ctx.read_failing_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= ctx.options.retry_for {
                return Err(Ended::GiveUp(format!(
                    "reads kept failing for {:?}: {err}",
                    ctx.options.retry_for
                )));
            }
            let delay = ctx.options.retry_backoff.delay(ctx.read_attempts);
            ctx.read_attempts = ctx.read_attempts.saturating_add(1);
            debug!(error = %err, ?delay, "read failed; retrying");
            ctx.or_stop(tokio::time::sleep(delay))
                .await
                .map_err(Ended::Stopped)?;
            Ok(position)
        }
        ErrorKind::OwnershipLost => Err(Ended::OwnershipLost(err)),
        ErrorKind::CheckpointOutOfRange => {
            let info = ctx
                .retrying("GetCheckpoint", |source, lease| {
                    async move { source.get_checkpoint(&lease).await }.boxed()
                })
                .await?;
            if position < info.first_retained {
                let resume = out_of_range(ctx, position, info.first_retained)?;
                ctx.acked = resume;
                Ok(resume)
            } else {
                Ok(position)
            }
        }
        ErrorKind::Fatal if matches!(err, TunnelError::Malformed { .. }) => {
            // The two sides disagree on positions: resync from the checkpoint (records after it are delivered
            // again, which at-least-once allows). A service that keeps answering out of sequence is broken:
            // resyncs back off like transient errors, and after `retry_for` the error stops the worker
            // rather than spin.
            let since = *ctx.read_failing_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= ctx.options.retry_for {
                return Err(Ended::Fatal(err));
            }
            let delay = ctx.options.retry_backoff.delay(ctx.read_attempts);
            ctx.read_attempts = ctx.read_attempts.saturating_add(1);
            warn!(error = %err, ?delay, "read out of sequence; resyncing from the checkpoint");
            ctx.or_stop(tokio::time::sleep(delay))
                .await
                .map_err(Ended::Stopped)?;
            let info = ctx
                .retrying("GetCheckpoint", |source, lease| {
                    async move { source.get_checkpoint(&lease).await }.boxed()
                })
                .await?;
            ctx.acked = info.position.max(info.first_retained);
            Ok(ctx.acked)
        }
        ErrorKind::Fatal => Err(Ended::Fatal(err)),
    }
}

/// The out-of-range policy: skip to the first retained record (loudly), or stop.
fn out_of_range(ctx: &mut Ctx, position: u64, first_retained: u64) -> Result<u64, Ended> {
    match ctx.options.on_out_of_range {
        OutOfRangePolicy::SkipToRetained => {
            let lost = first_retained - position;
            ctx.lost_to_retention += lost;
            error!(
                position,
                first_retained, lost, "records were trimmed by retention before delivery; skipping them"
            );
            ctx.event(TunnelEvent::RecordsLostToRetention {
                channel_id: ctx.channel_id(),
                records: lost,
            });
            Ok(first_retained)
        }
        OutOfRangePolicy::Stop => Err(Ended::OutOfRange(TunnelError::OutOfRange {
            channel_id: ctx.channel_id(),
            position,
            first_retained,
        })),
    }
}

/// Hands `batch` to the subscriber and waits for its acknowledgement. A subscriber that dies or does not
/// answer in time is reported to the worker (which pauses delivery) and the batch is delivered again to the
/// next one; a drain waits for the batch in delivery.
async fn deliver(ctx: &mut Ctx, batch: ReadBatch) -> Result<(), Ended> {
    let next = batch.next;
    let count = batch.records.len() as u64;
    let batch = Arc::new(Batch {
        tunnel_id: Arc::clone(&ctx.lease.session.tunnel_id),
        channel_id: ctx.channel_id(),
        records: batch.records,
    });
    loop {
        let subscriber = match ctx.or_stop(wait_for_subscriber(ctx.subscriber.clone())).await {
            Ok(subscriber) => subscriber,
            Err(mode) => return Err(Ended::Stopped(mode)),
        };
        let (delivery, mut ack) = Delivery::new(Arc::clone(&batch));
        let failure = if subscriber.deliver(delivery).is_err() {
            "the subscriber is gone".to_string()
        } else {
            let timeout = ctx.options.processing_timeout;
            let deadline = tokio::time::Instant::now() + timeout;
            match ctx.or_stop(tokio::time::timeout_at(deadline, &mut ack)).await {
                Err(StopMode::Flush) => {
                    // A graceful stop while the subscriber has the batch: let it finish (within the call
                    // timeout) so that the flush includes it rather than deliver it again elsewhere.
                    ctx.flushing = true;
                    let until = deadline.min(tokio::time::Instant::now() + ctx.options.call_timeout);
                    let answer = ctx.or_stop(tokio::time::timeout_at(until, &mut ack)).await;
                    if let Ok(Ok(Ok(Ok(())))) = answer {
                        ctx.acked = next;
                        ctx.delivered += count;
                    }
                    return Err(Ended::Stopped(StopMode::Flush));
                }
                Err(mode) => return Err(Ended::Stopped(mode)),
                Ok(Ok(Ok(Ok(())))) => {
                    ctx.acked = next;
                    ctx.delivered += count;
                    ctx.lag = ctx.lag.map(|lag| lag.saturating_sub(count));
                    return Ok(());
                }
                Ok(Ok(Ok(Err(nack)))) => {
                    return Err(Ended::Nacked(format!("the subscriber refused the batch: {nack}")))
                }
                Ok(Ok(Err(_))) => "the subscriber dropped the batch without answering".to_string(),
                Ok(Err(_)) => format!("the subscriber did not acknowledge within {timeout:?}"),
            }
        };
        warn!(reason = %failure, "delivery failed; pausing until a subscriber is attached");
        let _ = ctx.worker.cast(WorkerMsg::SubscriberFailed {
            subscriber: subscriber.cell().get_id(),
            reason: failure,
        });
        // Wait until the worker has replaced (or detached) this subscriber, then deliver again.
        let mut rx = ctx.subscriber.clone();
        let failed = subscriber.cell().get_id();
        let replaced = async move {
            let _ = rx
                .wait_for(|s| s.as_ref().is_none_or(|s| s.cell().get_id() != failed))
                .await;
        };
        if let Err(mode) = ctx.or_stop(replaced).await {
            return Err(Ended::Stopped(mode));
        }
    }
}

async fn wait_for_subscriber(mut rx: watch::Receiver<Option<SubscriberRef>>) -> SubscriberRef {
    loop {
        if let Some(subscriber) = rx.borrow_and_update().clone() {
            return subscriber;
        }
        if rx.changed().await.is_err() {
            // The worker is gone: nothing will ever come; the stop that follows ends the wait.
            std::future::pending::<()>().await;
        }
    }
}
