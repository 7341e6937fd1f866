//! The channel's loop: GetCheckpoint, read ahead, deliver, checkpoint, and the final flush.

use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use super::deliver::deliver;
use super::{source_panicked, Ctx, Ended, Outcome, StopMode};
use crate::tunnel::error::{ErrorKind, TunnelError};
use crate::tunnel::info::TunnelEvent;
use crate::tunnel::options::OutOfRangePolicy;
use crate::tunnel::source::ReadBatch;

/// The channel's life: from `GetCheckpoint` to its outcome.
pub(super) async fn run(ctx: &mut Ctx) -> Outcome {
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
    let mut flushed = false;
    if flush {
        // Only an abandoning stop cuts the flush short (the graceful stop that may have ended the loop does
        // not); the flush itself is bounded by `retry_for`.
        ctx.flushing = true;
        match ctx.checkpoint().await {
            Ok(()) => flushed = true,
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
        Ended::Finished if !flushed => {
            // TERMINATED is only true once the end is checkpointed: the service refuses it otherwise, and fails
            // the whole heartbeat with it. CLOSE lets the next owner finish the channel.
            warn!(
                version = %next,
                acked = ctx.acked,
                checkpointed = ctx.checkpointed,
                "channel finished but its last checkpoint failed: releasing it instead of terminating it"
            );
            Outcome::Released {
                version: next,
                reason: "finished, but the last checkpoint failed".into(),
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
        let batch = ctx.or_control_writing(read.wait()).await?;
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
            ctx.or_control_writing(tokio::time::sleep(delay)).await?;
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
            Err(join) => Err(source_panicked("ReadRecords", join)),
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
                    "reads kept failing for {}: {err}",
                    humantime::format_duration(ctx.options.retry_for)
                )));
            }
            let delay = ctx.options.retry_backoff.delay(ctx.read_attempts);
            ctx.read_attempts = ctx.read_attempts.saturating_add(1);
            debug!(error = %err, delay = %humantime::format_duration(delay), "read failed; retrying");
            ctx.or_stop(tokio::time::sleep(delay))
                .await
                .map_err(Ended::Stopped)?;
            Ok(position)
        }
        ErrorKind::OwnershipLost => Err(Ended::OwnershipLost(err)),
        ErrorKind::CheckpointOutOfRange => {
            // The service's checkpoint must include the write in flight before it is read back.
            ctx.finish_writing().await?;
            let info = ctx
                .retrying("GetCheckpoint", |source, lease| {
                    async move { source.get_checkpoint(&lease).await }.boxed()
                })
                .await?;
            if position < info.first_retained {
                let resume = out_of_range(ctx, position, info.first_retained)?;
                ctx.acked = resume;
                return Ok(resume);
            }
            // Refused as out of range at a position the service still keeps: not retention, so nothing to skip
            // (tonic's own status for a message over the decode limit is OUT_OF_RANGE too). Back off like a
            // transient error, and give up with the typed error after `retry_for` rather than spin.
            let since = *ctx.read_failing_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= ctx.options.retry_for {
                return Err(Ended::Fatal(TunnelError::PersistentOutOfRange {
                    channel_id: ctx.channel_id(),
                    position,
                    first_retained: info.first_retained,
                    retried_for: since.elapsed(),
                    last: Box::new(err),
                }));
            }
            let delay = ctx.options.retry_backoff.delay(ctx.read_attempts);
            ctx.read_attempts = ctx.read_attempts.saturating_add(1);
            warn!(
                error = %err,
                position,
                first_retained = info.first_retained,
                delay = %humantime::format_duration(delay),
                "read refused as out of range at a retained position; retrying"
            );
            ctx.or_stop(tokio::time::sleep(delay))
                .await
                .map_err(Ended::Stopped)?;
            Ok(position)
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
            warn!(error = %err, delay = %humantime::format_duration(delay), "read out of sequence; resyncing from the checkpoint");
            ctx.or_stop(tokio::time::sleep(delay))
                .await
                .map_err(Ended::Stopped)?;
            ctx.finish_writing().await?;
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
