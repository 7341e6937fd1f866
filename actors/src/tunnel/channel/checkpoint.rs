//! Checkpoints, written off the delivery path: after an acknowledgement the channel starts writing the
//! acknowledged position and goes on to deliver the next batch without waiting for the service's answer.
//!
//! A checkpoint was a round trip to the service on the channel's path after every batch (a fifth of the
//! worker's time end to end). Now one write is in flight at a time, always of an acknowledged position and in
//! order; when batches are acknowledged faster than the service answers, the write in flight is handed the
//! newest position and writes it next (also while the channel waits for its subscriber), so a checkpoint never moves back and never waits for a
//! position in between. The answer is taken at the next acknowledgement, while the channel waits for a read
//! (so an idle channel's last position is written too), before a resync from the service's checkpoint, and
//! before the final flush, which then writes what is left. A write that the service fences ends the channel
//! as a fenced read does; one that keeps failing for `retry_for` gives the channel up, as before.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::FutureExt;
use tokio::task::JoinHandle;
use tracing::debug;

use super::{source_panicked, Ctx, Ended, Interrupted};
use crate::tunnel::error::{ErrorKind, TunnelError};
use crate::tunnel::info::TunnelEvent;
use crate::tunnel::options::{CheckpointPolicy, TunnelOptions};
use crate::tunnel::source::{ChannelLease, TunnelSource};

/// The write in flight: the newest position it is to write, and its task, which answers the last position
/// it wrote (aborted if dropped: an abandoned channel writes nothing).
pub(super) struct Writing {
    newest: Arc<Mutex<Newest>>,
    task: JoinHandle<Result<u64, Ended>>,
}

/// What the writing task and the channel share: a position acknowledged while a write was in flight is handed
/// to the task, which writes it next (the channel may be waiting for its subscriber by then, for as long as the
/// subscriber holds the next batch). `running` turns false, under the lock, only when the task has nothing left.
struct Newest {
    position: u64,
    running: bool,
}

fn lock(newest: &Mutex<Newest>) -> std::sync::MutexGuard<'_, Newest> {
    newest.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Writing {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a wait beside the write in flight ended.
enum Raced<T> {
    Done(T),
    Written(Result<Result<u64, Ended>, tokio::task::JoinError>),
}

/// Runs `call` with retries for transient errors, for at most `retry_for`, with the options' backoff.
pub(super) async fn with_retries<T, F>(
    what: &'static str,
    source: Arc<dyn TunnelSource>,
    lease: ChannelLease,
    options: Arc<TunnelOptions>,
    mut call: F,
) -> Result<T, Ended>
where
    F: FnMut(
        Arc<dyn TunnelSource>,
        ChannelLease,
    ) -> futures::future::BoxFuture<'static, Result<T, TunnelError>>,
{
    let began = Instant::now();
    let mut attempt = 0;
    loop {
        let err = match call(Arc::clone(&source), lease.clone()).await {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        match err.kind() {
            ErrorKind::Retryable if began.elapsed() < options.retry_for => {
                let delay = options.retry_backoff.delay(attempt);
                attempt += 1;
                debug!(%what, error = %err, delay = %humantime::format_duration(delay), "transient error; retrying");
                tokio::time::sleep(delay).await;
            }
            ErrorKind::Retryable => {
                return Err(Ended::GiveUp(format!(
                    "{what} kept failing for {}: {err}",
                    humantime::format_duration(options.retry_for)
                )))
            }
            ErrorKind::OwnershipLost => return Err(Ended::OwnershipLost(err)),
            ErrorKind::CheckpointOutOfRange => return Err(Ended::OutOfRange(err)),
            ErrorKind::Fatal => return Err(Ended::Fatal(err)),
        }
    }
}

impl From<Interrupted> for Ended {
    fn from(interrupted: Interrupted) -> Self {
        match interrupted {
            Interrupted::Stop(mode) => Ended::Stopped(mode),
            Interrupted::Drain => Ended::Drained,
        }
    }
}

impl Ctx {
    /// Runs `call` with retries for transient errors, for at most `retry_for`, unless the channel is stopped.
    pub(super) async fn retrying<T, F>(&mut self, what: &'static str, call: F) -> Result<T, Ended>
    where
        F: FnMut(
            Arc<dyn TunnelSource>,
            ChannelLease,
        ) -> futures::future::BoxFuture<'static, Result<T, TunnelError>>,
    {
        let (source, lease, options) = (
            Arc::clone(&self.source),
            self.lease.clone(),
            Arc::clone(&self.options),
        );
        match self
            .or_stop(with_retries(what, source, lease, options, call))
            .await
        {
            Ok(result) => result,
            Err(mode) => Err(Ended::Stopped(mode)),
        }
    }

    /// Writes every acknowledged position now: waits for the write in flight, then writes what is left (the
    /// final flush).
    pub(super) async fn checkpoint(&mut self) -> Result<(), Ended> {
        self.finish_writing().await?;
        if self.acked == self.checkpointed {
            return Ok(());
        }
        let position = self.acked;
        self.retrying("Checkpoint", move |source, lease| {
            async move { source.checkpoint(&lease, position).await }.boxed()
        })
        .await?;
        self.written(position);
        Ok(())
    }

    /// After an acknowledgement: takes the answer of the write in flight if it came, and starts writing the
    /// acknowledged position if the policy wants it now and nothing is in flight. Never waits for the service.
    pub(super) async fn checkpoint_per_policy(&mut self) -> Result<(), Ended> {
        if self.writing.as_ref().is_some_and(|w| w.task.is_finished()) {
            self.finish_writing().await?;
        }
        self.write_if_due();
        Ok(())
    }

    /// Waits for the write in flight, if any, and takes its answer (unless the channel is stopped first).
    pub(super) async fn finish_writing(&mut self) -> Result<(), Ended> {
        let Some(mut writing) = self.writing.take() else {
            return Ok(());
        };
        let joined = self.or_stop(&mut writing.task).await.map_err(Ended::Stopped)?;
        self.took(joined)
    }

    /// Waits for `what` unless the channel is stopped or drained first; meanwhile takes the answer of the
    /// write in flight and starts the next one when due, so that a channel waiting for records still writes
    /// what its subscriber acknowledged.
    pub(super) async fn or_control_writing<T>(&mut self, what: impl Future<Output = T>) -> Result<T, Ended> {
        tokio::pin!(what);
        loop {
            let Some(mut writing) = self.writing.take() else {
                return self.or_control(what).await.map_err(Ended::from);
            };
            let raced = self
                .or_control(async {
                    tokio::select! {
                        biased;
                        joined = &mut writing.task => Raced::Written(joined),
                        value = &mut what => Raced::Done(value),
                    }
                })
                .await;
            match raced {
                Ok(Raced::Written(joined)) => {
                    self.took(joined)?;
                    self.write_if_due();
                }
                Ok(Raced::Done(value)) => {
                    self.writing = Some(writing);
                    return Ok(value);
                }
                Err(interrupted) => {
                    // Kept for the final flush, which waits for it (unless the channel is abandoned).
                    self.writing = Some(writing);
                    return Err(interrupted.into());
                }
            }
        }
    }

    /// Whether the policy wants the acknowledged position written now.
    fn due(&self) -> bool {
        self.acked != self.checkpointed
            && match self.options.checkpoint {
                CheckpointPolicy::EveryBatch => true,
                CheckpointPolicy::Every(interval) => self.last_checkpoint_at.elapsed() >= interval,
            }
    }

    /// Has the acknowledged position written, if due: by the write in flight when there is one (it writes it
    /// next), else by a new one on a task of its own. Never waits for the service.
    fn write_if_due(&mut self) {
        if !self.due() {
            return;
        }
        let position = self.acked;
        // A write that has ended without being taken yet goes first: the new one waits for its answer.
        let mut previous = None;
        if let Some(writing) = self.writing.take() {
            let mut newest = lock(&writing.newest);
            if newest.running {
                newest.position = newest.position.max(position);
                drop(newest);
                self.writing = Some(writing);
                return;
            }
            drop(newest);
            previous = Some(writing);
        }
        let newest = Arc::new(Mutex::new(Newest {
            position,
            running: true,
        }));
        let (source, lease, options) = (
            Arc::clone(&self.source),
            self.lease.clone(),
            Arc::clone(&self.options),
        );
        let shared = Arc::clone(&newest);
        let task = tokio::spawn(async move {
            if let Some(mut previous) = previous {
                match (&mut previous.task).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(ended)) => return Err(ended),
                    Err(join) => return Err(Ended::Fatal(source_panicked("Checkpoint", join))),
                }
            }
            let mut position = position;
            loop {
                let (source, lease, options) = (Arc::clone(&source), lease.clone(), Arc::clone(&options));
                with_retries("Checkpoint", source, lease, options, move |source, lease| {
                    async move { source.checkpoint(&lease, position).await }.boxed()
                })
                .await?;
                let mut newest = lock(&shared);
                if newest.position <= position {
                    newest.running = false;
                    return Ok(position);
                }
                position = newest.position;
            }
        });
        self.writing = Some(Writing { newest, task });
    }

    /// The answer of a background write.
    fn took(&mut self, joined: Result<Result<u64, Ended>, tokio::task::JoinError>) -> Result<(), Ended> {
        match joined {
            Ok(Ok(position)) => {
                self.written(position);
                Ok(())
            }
            Ok(Err(ended)) => Err(ended),
            Err(join) => Err(Ended::Fatal(source_panicked("Checkpoint", join))),
        }
    }

    /// `position` is checkpointed.
    fn written(&mut self, position: u64) {
        self.checkpointed = position;
        self.last_checkpoint_at = Instant::now();
        debug!(position, "checkpoint written");
        self.event(TunnelEvent::Checkpointed {
            channel_id: self.channel_id(),
            position,
        });
        self.publish();
    }
}
