//! One delivery: hand a batch to the subscriber and wait for its acknowledgement.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tracing::warn;

use super::{Ctx, Ended, StopMode};
use crate::tunnel::source::ReadBatch;
use crate::tunnel::subscriber::{Batch, Delivery, SubscriberRef};
use crate::tunnel::worker::WorkerMsg;

/// Hands `batch` to the subscriber and waits for its acknowledgement. A subscriber that dies or does not
/// answer in time is reported to the worker (which pauses delivery) and the batch is delivered again to the
/// next one; a drain waits for the batch in delivery.
pub(super) async fn deliver(ctx: &mut Ctx, batch: ReadBatch) -> Result<(), Ended> {
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
                Ok(Err(_)) => format!(
                    "the subscriber did not acknowledge within {}",
                    humantime::format_duration(timeout)
                ),
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
