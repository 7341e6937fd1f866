//! One delivery: hand a batch to the subscriber and wait for its acknowledgement.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use ractor::ActorId;
use tokio::sync::watch;
use tracing::warn;

use super::{Ctx, Ended, StopMode};
use crate::tunnel::source::ReadBatch;
use crate::tunnel::subscriber::{Batch, Delivery, Nack, SubscriberRef};
use crate::tunnel::worker::WorkerMsg;

/// Hands `batch` to the subscriber and waits for its acknowledgement, at most the processing timeout from
/// when the subscriber takes it. A subscriber that dies or does not answer in time is reported to the worker
/// (which pauses delivery) and the batch is delivered again to the next one; a drain waits for the batch in
/// delivery.
pub(super) async fn deliver(ctx: &mut Ctx, batch: ReadBatch) -> Result<(), Ended> {
    let next = batch.next;
    let count = batch.records.len() as u64;
    let batch = Arc::new(Batch {
        tunnel_id: Arc::clone(&ctx.lease.session.tunnel_id),
        channel_id: ctx.channel_id(),
        version: ctx.lease.version,
        records: batch.records,
    });
    loop {
        let subscriber = match ctx.or_stop(wait_for_subscriber(ctx.subscriber.clone())).await {
            Ok(subscriber) => subscriber,
            Err(mode) => return Err(Ended::Stopped(mode)),
        };
        // As the activator checks its renew deadline before every leader callback: a worker resumed from a
        // freeze (or cut off from the service) may hold read-ahead of a channel that has moved on, and a
        // subscriber doing last-writer-wins upserts would overwrite newer state with it. Hold the batch until
        // a heartbeat proves the session alive, or the session's loss stops the channel.
        if Instant::now() >= *ctx.alive.borrow() {
            warn!("the session may have expired (no heartbeat acknowledged within half its timeout): holding the batch");
            ctx.or_stop(session_alive(ctx.alive.clone()))
                .await
                .map_err(Ended::Stopped)?;
            continue;
        }
        let (delivery, pending) = Delivery::new(Arc::clone(&batch));
        let Ok((mut ack, mut taken)) = subscriber.deliver(delivery, pending) else {
            report_failure(ctx, &subscriber, "the subscriber is gone".into());
            wait_replaced(ctx, &subscriber).await?;
            continue;
        };
        let id = subscriber.cell().get_id();
        // Queued behind other channels' batches: the processing timeout starts only when the subscriber takes
        // this one, so that a healthy subscriber shared by many channels is never timed out (and every batch
        // in flight redelivered, over and over) for time spent in its queue.
        let gone = replaced(ctx.subscriber.clone(), id);
        let queued = async {
            tokio::select! {
                biased;
                answer = &mut ack => Waited::Answer(answer),
                _ = &mut taken => Waited::Taken,
                _ = gone => Waited::Replaced,
            }
        };
        let waited = match ctx.or_stop(queued).await {
            Ok(Waited::Taken) => {
                let timeout = ctx.options.processing_timeout;
                let deadline = tokio::time::Instant::now() + timeout;
                let gone = replaced(ctx.subscriber.clone(), id);
                let processing = async {
                    tokio::select! {
                        biased;
                        answer = &mut ack => Waited::Answer(answer),
                        _ = gone => Waited::Replaced,
                        _ = tokio::time::sleep_until(deadline) => Waited::TimedOut(timeout),
                    }
                };
                match ctx.or_stop(processing).await {
                    Err(StopMode::Flush) => {
                        return Err(finish_in_hand(ctx, &mut ack, deadline, next, count).await)
                    }
                    Err(mode) => return Err(Ended::Stopped(mode)),
                    Ok(waited) => waited,
                }
            }
            // Not seen taken yet, but the stop is looked at before the subscriber's news: the batch may be in
            // its hands, or answered, already. Then a graceful stop finishes it as above; otherwise nothing of it
            // is in the subscriber's hands to finish.
            Err(StopMode::Flush) => {
                if (&mut taken).now_or_never().is_some() {
                    let deadline = tokio::time::Instant::now() + ctx.options.processing_timeout;
                    return Err(finish_in_hand(ctx, &mut ack, deadline, next, count).await);
                }
                return Err(Ended::Stopped(StopMode::Flush));
            }
            Err(mode) => return Err(Ended::Stopped(mode)),
            Ok(waited) => waited,
        };
        let failure = match waited {
            Waited::Answer(Ok(Ok(()))) => {
                ctx.acked = next;
                ctx.delivered += count;
                ctx.lag = ctx.lag.map(|lag| lag.saturating_sub(count));
                return Ok(());
            }
            Waited::Answer(Ok(Err(nack))) => {
                return Err(Ended::Nacked(format!("the subscriber refused the batch: {nack}")))
            }
            Waited::Answer(Err(_)) => "the subscriber dropped the batch without answering".to_string(),
            Waited::TimedOut(timeout) => format!(
                "the subscriber did not acknowledge within {}",
                humantime::format_duration(timeout)
            ),
            // The worker replaced (or detached) the subscriber meanwhile: deliver again to the next one.
            Waited::Replaced | Waited::Taken => continue,
        };
        report_failure(ctx, &subscriber, failure);
        wait_replaced(ctx, &subscriber).await?;
    }
}

/// A graceful stop while the subscriber has the batch: lets it finish (within the call timeout and its
/// processing deadline) so that the flush includes it rather than deliver it again elsewhere.
async fn finish_in_hand(
    ctx: &mut Ctx,
    ack: &mut tokio::sync::oneshot::Receiver<Result<(), Nack>>,
    deadline: tokio::time::Instant,
    next: u64,
    count: u64,
) -> Ended {
    ctx.flushing = true;
    let until = deadline.min(tokio::time::Instant::now() + ctx.options.call_timeout);
    let answer = ctx.or_stop(tokio::time::timeout_at(until, ack)).await;
    if let Ok(Ok(Ok(Ok(())))) = answer {
        ctx.acked = next;
        ctx.delivered += count;
    }
    Ended::Stopped(StopMode::Flush)
}

/// How waiting for an acknowledgement ended.
enum Waited {
    Answer(Result<Result<(), Nack>, tokio::sync::oneshot::error::RecvError>),
    Taken,
    Replaced,
    TimedOut(Duration),
}

/// Tells the worker the subscriber failed this delivery (it pauses delivery and replaces or detaches it).
fn report_failure(ctx: &Ctx, subscriber: &SubscriberRef, failure: String) {
    warn!(reason = %failure, "delivery failed; pausing until a subscriber is attached");
    let _ = ctx.worker.cast(WorkerMsg::SubscriberFailed {
        subscriber: subscriber.cell().get_id(),
        reason: failure,
    });
}

/// Waits until the worker has replaced (or detached) `subscriber`, unless the channel is stopped first.
async fn wait_replaced(ctx: &mut Ctx, subscriber: &SubscriberRef) -> Result<(), Ended> {
    let rx = ctx.subscriber.clone();
    ctx.or_stop(replaced(rx, subscriber.cell().get_id()))
        .await
        .map_err(Ended::Stopped)
}

/// Returns once the current subscriber is not `failed` any more; never, once the worker is gone.
async fn replaced(mut rx: watch::Receiver<Option<SubscriberRef>>, failed: ActorId) {
    if rx
        .wait_for(|s| s.as_ref().is_none_or(|s| s.cell().get_id() != failed))
        .await
        .is_err()
    {
        std::future::pending::<()>().await;
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

/// Returns once the session's step-down deadline is in the future again (a heartbeat succeeded); never, once
/// the session is over.
async fn session_alive(mut alive: watch::Receiver<Instant>) {
    loop {
        if Instant::now() < *alive.borrow_and_update() {
            return;
        }
        if alive.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
