//! Who the records go to: a [`Subscriber`], or any ractor actor that takes a [`Delivery`].
//!
//! Delivery is back-pressured: a channel hands over one [`Batch`] at a time and waits for its
//! acknowledgement ([`Ack::ack`]) before the next one, and only acknowledged records are ever checkpointed.
//! A negative acknowledgement ([`Ack::nack`]) gives the channel up so that its records are delivered again
//! (to whichever consumer gets it next); an acknowledgement that never comes (the subscriber died, or took
//! longer than the processing timeout) pauses delivery until a subscriber is attached again.

use std::fmt;
use std::future::Future;
use std::num::NonZeroUsize;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::FutureExt;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, Message, RpcReplyPort};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;

use super::source::Record;
use super::Version;
use crate::actor::{ActorHandle, TypedActor};
use crate::supervisor::BoxError;

/// A batch of consecutive records of one channel.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The tunnel.
    pub tunnel_id: Arc<str>,
    /// The channel.
    pub channel_id: u32,
    /// The version of the channel's lease this batch was delivered under. Versions only grow, and every
    /// hand-over of the channel (to another consumer, or back to this one) gives a newer one. So within a
    /// channel, a batch that starts at or before records already seen is, with a newer version, the replay
    /// of what was not checkpointed when the channel changed hands (at-least-once), not disorder. Under one
    /// version the records go forward, except after a resync from the checkpoint (the worker and the service
    /// disagreed on positions; logged as a warning).
    pub version: Version,
    /// The records, in order (never empty).
    pub records: Vec<Record>,
}

impl Batch {
    /// The position of the first record.
    pub fn first_sequence(&self) -> u64 {
        self.records.first().map_or(0, |r| r.sequence)
    }

    /// The position after the last record: what the channel checkpoints once this batch is acknowledged.
    pub fn next_sequence(&self) -> u64 {
        self.records.last().map_or(0, |r| r.sequence + 1)
    }
}

/// Why a subscriber refused a batch (its records are delivered again): the subscriber's error, kept whole so its
/// cause chain can be walked ([`Nack::error`]) and is printed in full (`Display` gives the chain on one line).
#[derive(Debug, Clone)]
pub struct Nack(Arc<dyn std::error::Error + Send + Sync>);

impl Nack {
    /// The subscriber's error.
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Display for Nack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::report::ErrorChain(&*self.0).fmt(f)
    }
}

impl From<BoxError> for Nack {
    fn from(error: BoxError) -> Self {
        Nack(Arc::from(error))
    }
}

impl From<&str> for Nack {
    fn from(reason: &str) -> Self {
        Nack(Arc::from(BoxError::from(reason)))
    }
}

impl From<String> for Nack {
    fn from(reason: String) -> Self {
        Nack(Arc::from(BoxError::from(reason)))
    }
}

/// The acknowledgement a subscriber owes for one [`Batch`]. Dropping it unanswered counts as a failed
/// delivery (the batch is delivered again, to this subscriber or the next one).
#[derive(Debug)]
pub struct Ack {
    reply: Option<RpcReplyPort<Result<(), Nack>>>,
    /// Told when a runner starts processing the batch: its processing timeout starts then.
    taken: Option<oneshot::Sender<()>>,
    /// Told when the batch is answered (or the acknowledgement dropped): for a subscriber that takes its
    /// deliveries one at a time, in order, the next one is taken then.
    answered: Option<oneshot::Sender<()>>,
}

impl Ack {
    /// The batch was processed: its records may be checkpointed.
    pub fn ack(mut self) {
        self.answer(Ok(()));
    }

    /// The batch could not be processed: the channel is given up and its records delivered again. `reason` is
    /// the subscriber's error (or a message).
    pub fn nack(mut self, reason: impl Into<Nack>) {
        self.answer(Err(reason.into()));
    }

    fn answer(&mut self, answer: Result<(), Nack>) {
        self.mark_taken();
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(answer);
        }
    }

    /// The subscriber starts processing the batch now.
    pub(crate) fn mark_taken(&mut self) {
        if let Some(taken) = self.taken.take() {
            let _ = taken.send(());
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        self.mark_taken();
        self.reply.take();
        if let Some(answered) = self.answered.take() {
            let _ = answered.send(());
        }
    }
}

/// The channel's side of a [`Delivery`] not yet handed over.
pub(crate) struct Pending {
    reply: oneshot::Receiver<Result<(), Nack>>,
    taken: oneshot::Receiver<()>,
    answered: oneshot::Receiver<()>,
}

/// Resolves when the subscriber takes the delivery (starts processing it).
pub(crate) type Taken = BoxFuture<'static, ()>;

/// What a ractor subscriber receives: a batch and the acknowledgement it owes.
#[derive(Debug)]
pub struct Delivery {
    /// The records (shared with the channel, which delivers them again if the acknowledgement never comes).
    pub batch: Arc<Batch>,
    /// Answer it once the batch is processed.
    pub ack: Ack,
}

/// Processes record batches, for users who want no ractor of their own: the worker runs it in an actor it
/// supervises. Returning `Ok` acknowledges the batch; `Err` gives the channel up so its records are
/// delivered again.
///
/// ```
/// use arbor_actors::tunnel::{Batch, Subscriber};
/// use arbor_actors::supervisor::BoxError;
///
/// struct Print;
/// impl Subscriber for Print {
///     async fn handle(&self, batch: &Batch) -> Result<(), BoxError> {
///         for record in &batch.records {
///             println!("{}#{}: {:?}", batch.channel_id, record.sequence, record.value);
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait Subscriber: Send + Sync + 'static {
    /// Processes one batch.
    fn handle(&self, batch: &Batch) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// Hands a delivery over; `Err` when the subscriber is gone (the delivery, and its `Ack`, are dropped).
type Deliver = dyn Fn(Delivery) -> Result<(), ()> + Send + Sync;

/// How the channel learns that the subscriber took a delivery.
#[derive(Clone)]
enum Taking {
    /// An actor that handles its deliveries one at a time, in order (any ractor actor): a delivery is taken
    /// when the one handed over before it was answered. Holds that one's answer signal.
    InOrder(Arc<Mutex<Option<oneshot::Receiver<()>>>>),
    /// A runner that says when it starts each delivery ([`Ack::mark_taken`]).
    Marked,
}

/// A subscriber as the worker holds it: an actor to monitor, and how to hand it a [`Delivery`].
#[derive(Clone)]
pub struct SubscriberRef {
    cell: ActorCell,
    deliver: Arc<Deliver>,
    taking: Taking,
}

impl fmt::Debug for SubscriberRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriberRef")
            .field("actor", &self.cell.get_id())
            .finish_non_exhaustive()
    }
}

impl SubscriberRef {
    /// An actor of yours that takes deliveries as messages built by `wrap` (often an enum variant:
    /// `SubscriberRef::actor(&myself, MyMsg::Records)`). `actor` is a [`TypedActor`] (from a registry lookup, a
    /// supervised child's [`current`](crate::supervisor::ChildRef::current) incarnation) or a ractor
    /// `ActorRef`. Its reply through [`Delivery::ack`] is the acknowledgement. The worker monitors this
    /// incarnation: when it exits, delivery pauses until a subscriber is attached again.
    pub fn actor<M: Message>(actor: impl Into<TypedActor<M>>, wrap: fn(Delivery) -> M) -> Self {
        let target = actor.into().ractor_ref();
        SubscriberRef {
            cell: target.get_cell(),
            deliver: Arc::new(move |delivery: Delivery| target.cast(wrap(delivery)).map_err(|_| ())),
            taking: Taking::InOrder(Arc::default()),
        }
    }

    /// A runner of the worker's own, which marks when it starts each delivery.
    fn runner(actor: ActorRef<Delivery>) -> Self {
        SubscriberRef {
            cell: actor.get_cell(),
            deliver: Arc::new(move |delivery: Delivery| actor.cast(delivery).map_err(|_| ())),
            taking: Taking::Marked,
        }
    }

    /// The subscriber's actor.
    pub fn actor_handle(&self) -> ActorHandle {
        ActorHandle::from(&self.cell)
    }

    /// The subscriber's actor in ractor's form.
    pub(crate) fn cell(&self) -> &ActorCell {
        &self.cell
    }

    /// Hands `delivery` over: the receiver of its acknowledgement, and when the subscriber takes it.
    pub(crate) fn deliver(
        &self,
        delivery: Delivery,
        pending: Pending,
    ) -> Result<(oneshot::Receiver<Result<(), Nack>>, Taken), ()> {
        let taken: Taken = match &self.taking {
            Taking::Marked => {
                let taken = pending.taken;
                Box::pin(async move {
                    let _ = taken.await;
                })
            }
            Taking::InOrder(previous) => {
                // Swapped under the lock, in the order the deliveries are cast: the actor's mailbox order.
                let mut previous = previous.lock().unwrap_or_else(|p| p.into_inner());
                let before = previous.replace(pending.answered);
                (self.deliver)(delivery)?;
                return Ok((
                    pending.reply,
                    Box::pin(async move {
                        if let Some(before) = before {
                            let _ = before.await;
                        }
                    }),
                ));
            }
        };
        (self.deliver)(delivery)?;
        Ok((pending.reply, taken))
    }
}

impl Delivery {
    /// A delivery of `batch`, and the channel's side of it.
    pub(crate) fn new(batch: Arc<Batch>) -> (Delivery, Pending) {
        let (reply_tx, reply) = oneshot::channel();
        let (taken_tx, taken) = oneshot::channel();
        let (answered_tx, answered) = oneshot::channel();
        let ack = Ack {
            reply: Some(reply_tx.into()),
            taken: Some(taken_tx),
            answered: Some(answered_tx),
        };
        (
            Delivery { batch, ack },
            Pending {
                reply,
                taken,
                answered,
            },
        )
    }
}

/// How many batches a [`Subscriber`] the worker runs
/// ([`TunnelWorkerBuilder::run_subscriber_with`](super::TunnelWorkerBuilder::run_subscriber_with)) processes at
/// once. Whatever the choice, one channel never has two batches in flight (it waits for each acknowledgement),
/// so the records of a channel, and so of a key, are processed in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SubscriberConcurrency {
    /// One batch at a time, across all channels (the default).
    #[default]
    One,
    /// One batch per channel at a time: each channel's batch is processed as soon as it is read.
    PerChannel,
    /// At most this many batches at once, across channels (taken in the order they arrive).
    Pool(NonZeroUsize),
}

/// The actor that runs a [`Subscriber`]: each batch on a task of its own, as many at once as its
/// [`SubscriberConcurrency`] allows; each batch's processing timeout starts when its task starts it.
pub(crate) struct SubscriberActor<S>(std::marker::PhantomData<fn() -> S>);

pub(crate) struct RunnerState<S> {
    subscriber: Arc<S>,
    /// The permits of a bounded concurrency; `None` for one batch per channel.
    permits: Option<Arc<Semaphore>>,
    /// The batches in processing: aborted (their acknowledgements dropped, so they are delivered again) when
    /// the runner goes.
    tasks: JoinSet<()>,
}

impl<S: Subscriber> SubscriberActor<S> {
    pub(crate) fn new() -> Self {
        SubscriberActor(std::marker::PhantomData)
    }

    /// Spawns the actor linked to `supervisor`, and the reference the worker uses.
    pub(crate) async fn spawn_linked(
        subscriber: Arc<S>,
        concurrency: SubscriberConcurrency,
        supervisor: ActorCell,
    ) -> Result<SubscriberRef, ractor::SpawnErr> {
        let (actor, _) = Actor::spawn_linked(
            None,
            SubscriberActor::<S>::new(),
            (subscriber, concurrency),
            supervisor,
        )
        .await?;
        Ok(SubscriberRef::runner(actor))
    }
}

impl<S: Subscriber> Actor for SubscriberActor<S> {
    type Msg = Delivery;
    type State = RunnerState<S>;
    type Arguments = (Arc<S>, SubscriberConcurrency);

    async fn pre_start(
        &self,
        _: ActorRef<Delivery>,
        (subscriber, concurrency): (Arc<S>, SubscriberConcurrency),
    ) -> Result<RunnerState<S>, ActorProcessingErr> {
        let permits = match concurrency {
            SubscriberConcurrency::One => Some(1),
            SubscriberConcurrency::Pool(n) => Some(n.get()),
            SubscriberConcurrency::PerChannel => None,
        };
        Ok(RunnerState {
            subscriber,
            permits: permits.map(|n| Arc::new(Semaphore::new(n))),
            tasks: JoinSet::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Delivery>,
        mut delivery: Delivery,
        state: &mut RunnerState<S>,
    ) -> Result<(), ActorProcessingErr> {
        while state.tasks.try_join_next().is_some() {}
        let (subscriber, permits) = (Arc::clone(&state.subscriber), state.permits.clone());
        // Off the mailbox, so that a batch waiting for a permit holds up nothing but itself (the semaphore is
        // fair: batches are taken in the order they came).
        state.tasks.spawn(async move {
            let _permit = match permits {
                Some(permits) => match permits.acquire_owned().await {
                    Ok(permit) => Some(permit),
                    Err(_) => return,
                },
                None => None,
            };
            delivery.ack.mark_taken();
            let handled = AssertUnwindSafe(subscriber.handle(&delivery.batch))
                .catch_unwind()
                .await;
            match handled {
                Ok(Ok(())) => delivery.ack.ack(),
                Ok(Err(err)) => delivery.ack.nack(err),
                // A panic is the runner's crash, as if it had happened in the actor: the worker restarts it and
                // the batches it held are delivered again.
                Err(panic) => myself.stop(Some(format!(
                    "the subscriber panicked: {}",
                    crate::report::panic_message(panic.as_ref())
                ))),
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot write the order")]
    struct WriteFailed(#[source] std::io::Error);

    #[test]
    fn a_nack_keeps_the_subscribers_error_whole_and_prints_its_chain() {
        let error: BoxError = Box::new(WriteFailed(std::io::Error::other("disk full")));
        let nack = Nack::from(error);
        assert_eq!(nack.to_string(), "cannot write the order: disk full");
        assert!(nack.error().downcast_ref::<WriteFailed>().is_some());
        assert_eq!(Nack::from("refused").to_string(), "refused");
    }
}
