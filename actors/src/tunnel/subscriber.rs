//! Who the records go to: a [`Subscriber`], or any ractor actor that takes a [`Delivery`].
//!
//! Delivery is back-pressured: a channel hands over one [`Batch`] at a time and waits for its
//! acknowledgement ([`Ack::ack`]) before the next one, and only acknowledged records are ever checkpointed.
//! A negative acknowledgement ([`Ack::nack`]) gives the channel up so that its records are delivered again
//! (to whichever consumer gets it next); an acknowledgement that never comes (the subscriber died, or took
//! longer than the processing timeout) pauses delivery until a subscriber is attached again.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, Message, RpcReplyPort};

use super::source::Record;
use crate::supervisor::BoxError;

/// A batch of consecutive records of one channel.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The tunnel.
    pub tunnel_id: Arc<str>,
    /// The channel.
    pub channel_id: u32,
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

/// Why a subscriber refused a batch (its records are delivered again).
pub type Nack = String;

/// The acknowledgement a subscriber owes for one [`Batch`]. Dropping it unanswered counts as a failed
/// delivery (the batch is delivered again, to this subscriber or the next one).
#[derive(Debug)]
pub struct Ack(RpcReplyPort<Result<(), Nack>>);

impl Ack {
    /// The batch was processed: its records may be checkpointed.
    pub fn ack(self) {
        let _ = self.0.send(Ok(()));
    }

    /// The batch could not be processed: the channel is given up and its records delivered again.
    pub fn nack(self, reason: impl Into<String>) {
        let _ = self.0.send(Err(reason.into()));
    }
}

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

/// A subscriber as the worker holds it: an actor to monitor, and how to hand it a [`Delivery`].
#[derive(Clone)]
pub struct SubscriberRef {
    cell: ActorCell,
    deliver: Arc<Deliver>,
}

impl fmt::Debug for SubscriberRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriberRef")
            .field("actor", &self.cell.get_id())
            .finish_non_exhaustive()
    }
}

impl SubscriberRef {
    /// A ractor actor of yours that takes deliveries as messages built by `wrap` (often an enum variant:
    /// `SubscriberRef::actor(my_actor, MyMsg::Records)`). Its reply through [`Delivery::ack`] is the
    /// acknowledgement. The worker monitors it.
    pub fn actor<M: Message>(actor: ActorRef<M>, wrap: fn(Delivery) -> M) -> Self {
        let target = actor.clone();
        SubscriberRef {
            cell: actor.get_cell(),
            deliver: Arc::new(move |delivery: Delivery| target.cast(wrap(delivery)).map_err(|_| ())),
        }
    }

    /// The subscriber's actor.
    pub fn cell(&self) -> &ActorCell {
        &self.cell
    }

    pub(crate) fn deliver(&self, delivery: Delivery) -> Result<(), ()> {
        (self.deliver)(delivery)
    }
}

impl Delivery {
    /// A delivery of `batch`, and the receiver of its acknowledgement.
    pub(crate) fn new(
        batch: Arc<Batch>,
    ) -> (Delivery, ractor::concurrency::OneshotReceiver<Result<(), Nack>>) {
        let (tx, rx) = ractor::concurrency::oneshot();
        (
            Delivery {
                batch,
                ack: Ack(tx.into()),
            },
            rx,
        )
    }
}

/// The actor that runs a [`Subscriber`].
pub(crate) struct SubscriberActor<S>(std::marker::PhantomData<fn() -> S>);

impl<S: Subscriber> SubscriberActor<S> {
    pub(crate) fn new() -> Self {
        SubscriberActor(std::marker::PhantomData)
    }

    /// Spawns the actor linked to `supervisor`, and the reference the worker uses.
    pub(crate) async fn spawn_linked(
        subscriber: Arc<S>,
        supervisor: ActorCell,
    ) -> Result<SubscriberRef, ractor::SpawnErr> {
        let (actor, _) =
            Actor::spawn_linked(None, SubscriberActor::<S>::new(), subscriber, supervisor).await?;
        Ok(SubscriberRef::actor(actor, |d| d))
    }
}

impl<S: Subscriber> Actor for SubscriberActor<S> {
    type Msg = Delivery;
    type State = Arc<S>;
    type Arguments = Arc<S>;

    async fn pre_start(
        &self,
        _: ActorRef<Delivery>,
        subscriber: Arc<S>,
    ) -> Result<Arc<S>, ActorProcessingErr> {
        Ok(subscriber)
    }

    async fn handle(
        &self,
        _: ActorRef<Delivery>,
        delivery: Delivery,
        subscriber: &mut Arc<S>,
    ) -> Result<(), ActorProcessingErr> {
        match subscriber.handle(&delivery.batch).await {
            Ok(()) => delivery.ack.ack(),
            Err(err) => delivery.ack.nack(err.to_string()),
        }
        Ok(())
    }
}
