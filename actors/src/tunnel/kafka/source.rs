//! [`KafkaSource`]: the [`TunnelSource`] calls over a Kafka consumer group (see the module docs for the
//! mapping). One consumer per session (a "member"), polled by a thread of its own that also runs the
//! rebalance callbacks; each assigned partition is read from its own queue.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use arbor_proto::tunnel::domain::{ChannelStatus, ChannelType, Version};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{watch, Notify};
use tracing::{debug, error, info, warn};

use super::errors::{code_of, failed, kind_of, own, KafkaRefused};
use super::options::KafkaOptions;
use crate::tunnel::error::{ErrorKind, TunnelError};
use crate::tunnel::options::TunnelOptions;
use crate::tunnel::source::{
    ChannelLease, CheckpointInfo, ReadBatch, Record, ReportedChannel, ServerChannel, Session, SessionToken,
    TunnelSource,
};

type KafkaConsumer = BaseConsumer<Rebalancer>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// [`TunnelSource`] over a Kafka consumer group: a partition per channel, one group member per session.
pub struct KafkaSource {
    options: Arc<KafkaOptions>,
    call_timeout: Duration,
    /// Bumped when a member's assignment changes (the worker heartbeats at once).
    changes: Arc<watch::Sender<u64>>,
    /// The members by client id: the current session's, and any being shut down.
    members: Mutex<HashMap<Arc<str>, Arc<Member>>>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("options", &self.options)
            .field("members", &lock(&self.members).keys().collect::<Vec<_>>())
            .finish()
    }
}

/// One consumer: a session of the worker.
struct Member {
    client_id: Arc<str>,
    consumer: Arc<KafkaConsumer>,
    assignment: Arc<Assignment>,
    stop: Arc<AtomicBool>,
    poller: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// What the member owns, shared by the rebalance callbacks (on the poll thread) and the source's calls.
struct Assignment {
    topic: String,
    state: Mutex<AssignState>,
    /// Signalled when a revoked partition is reported CLOSE, or the member stops.
    released: Condvar,
    /// Held across every commit and every removal of partitions: a commit is checked against the assignment
    /// and made before a revoke lets its partition go, or refused after.
    commits: Mutex<()>,
    changes: Arc<watch::Sender<u64>>,
    revoke_wait: Duration,
}

#[derive(Default)]
struct AssignState {
    /// Versions handed out: one more per assignment, revocation, or restart of a partition.
    epoch: i64,
    partitions: BTreeMap<i32, Partition>,
    /// Why the member may have been fenced by the group (its assignment was lost): the session is over.
    fenced: Option<String>,
    /// Shutting down: revocations do not wait for the channels (they were flushed or abandoned).
    closing: bool,
}

struct Partition {
    status: ChannelStatus,
    /// The version the worker sees (bumped by CLOSING and by restarts).
    version: i64,
    /// Leases older than this are of an earlier assignment or a stopped channel: fenced.
    valid_from: i64,
    /// Reported CLOSE by the worker: the revoke may let it go.
    released: bool,
    reader: Option<Arc<Reader>>,
    /// The last offset committed through this member (the heartbeat commits it again as proof of membership).
    committed: Option<i64>,
}

impl Assignment {
    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The partition if `lease` is still valid for it.
    fn check<'a>(state: &'a AssignState, lease: &ChannelLease) -> Result<&'a Partition, String> {
        if let Some(why) = &state.fenced {
            return Err(format!("the member may have been fenced: {why}"));
        }
        let partition = i32::try_from(lease.channel_id).map_err(|_| "not a partition number".to_string())?;
        match state.partitions.get(&partition) {
            None => Err(format!("partition {partition} is not assigned to this member")),
            Some(p) if lease.version.get() < p.valid_from => Err(format!(
                "the lease's version {} is older than the partition's assignment ({})",
                lease.version, p.valid_from
            )),
            Some(p) if p.released => Err(format!("partition {partition} was released")),
            Some(p) => Ok(p),
        }
    }
}

/// The consumer's context: the rebalance callbacks.
struct Rebalancer {
    assignment: Arc<Assignment>,
    /// The consumer itself, to split partition queues (set once created).
    consumer: OnceLock<Weak<KafkaConsumer>>,
    /// The brokers' refusal of this client's credentials or TLS handshake, as last reported.
    refused: Mutex<Option<KafkaRefused>>,
}

impl ClientContext for Rebalancer {
    // Called for every error event the consumer's poll meets (rdkafka's default only logs it): the reason,
    // which the event handed back by the poll no longer carries, tells an authentication or TLS refusal.
    fn error(&self, error: KafkaError, reason: &str) {
        error!(target: "librdkafka", %error, "librdkafka: {reason}");
        if let Some(refused) = code_of(&error).and_then(|code| KafkaRefused::of(code, reason)) {
            *lock(&self.refused) = Some(refused);
        }
    }
}

impl ConsumerContext for Rebalancer {
    fn rebalance(&self, base: &KafkaConsumer, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let topic = self.assignment.topic.clone();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assign(base, tpl);
                if let Err(err) = base.incremental_assign(tpl) {
                    warn!(topic = %topic, error = %err, "incremental assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked: Vec<i32> = tpl
                    .elements_for_topic(&topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                self.revoke(&revoked, base.assignment_lost());
                if let Err(err) = base.incremental_unassign(tpl) {
                    warn!(topic = %topic, error = %err, "incremental unassign failed");
                }
            }
            other => warn!(topic = %topic, error = ?other, "rebalance error"),
        }
    }
}

impl Rebalancer {
    /// An assignment: each partition starts at the group's committed offset, or at the log's start when the
    /// group has none (explicitly, not by a reset); its records go to a queue of its own, split before it is assigned.
    fn assign(&self, base: &KafkaConsumer, tpl: &mut TopicPartitionList) {
        let topic = self.assignment.topic.clone();
        let committed = base.committed_offsets(tpl.clone(), Duration::from_secs(10));
        let consumer = self.consumer.get().and_then(Weak::upgrade);
        let mut assigned = Vec::new();
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        for partition in partitions {
            let start = match &committed {
                Ok(offsets) => Some(
                    match offsets.find_partition(&topic, partition).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => Offset::Offset(o),
                        _ => Offset::Beginning,
                    },
                ),
                // Unknown: librdkafka looks the committed offset up itself; the first read seeks.
                Err(err) => {
                    warn!(partition, error = %err, "committed offsets unknown at assignment");
                    None
                }
            };
            if let Some(start) = start {
                let _ = tpl.set_partition_offset(&topic, partition, start);
            }
            let reader = consumer
                .as_ref()
                .and_then(|c| c.split_partition_queue(&topic, partition))
                .map(|queue| {
                    let known = match start {
                        Some(Offset::Offset(o)) => Some(o),
                        _ => None,
                    };
                    Arc::new(Reader::new(queue, known))
                });
            let mut state = lock(&self.assignment.state);
            state.epoch += 1;
            let version = state.epoch;
            state.partitions.insert(
                partition,
                Partition {
                    status: ChannelStatus::Open,
                    version,
                    valid_from: version,
                    released: false,
                    reader,
                    committed: None,
                },
            );
            assigned.push(partition);
        }
        info!(topic = %topic, partitions = ?assigned, "rebalance: partitions assigned");
        self.assignment.changed();
    }

    /// A revocation: the partitions go CLOSING, the worker drains them and reports CLOSE, and only then (or
    /// after `revoke_wait`, or at once when the assignment was lost or the member is closing) are they let go.
    fn revoke(&self, revoked: &[i32], lost: bool) {
        let assignment = &self.assignment;
        let mut state = lock(&assignment.state);
        if lost {
            warn!(partitions = ?revoked, "rebalance: the assignment was lost (the group fenced this member)");
            state.fenced =
                Some("the group revoked the assignment as lost (session timeout or fencing)".into());
        }
        let wait = !lost && !state.closing;
        if wait {
            for partition in revoked {
                state.epoch += 1;
                let epoch = state.epoch;
                if let Some(p) = state.partitions.get_mut(partition) {
                    p.status = ChannelStatus::Closing;
                    p.version = epoch;
                }
            }
            info!(partitions = ?revoked, "rebalance: partitions revoked; draining them");
            assignment.changed();
            let deadline = Instant::now() + assignment.revoke_wait;
            loop {
                let pending: Vec<i32> = revoked
                    .iter()
                    .copied()
                    .filter(|p| state.partitions.get(p).is_some_and(|p| !p.released))
                    .collect();
                if pending.is_empty() || state.closing || state.fenced.is_some() {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    warn!(
                        partitions = ?pending,
                        revoke_wait = %humantime::format_duration(assignment.revoke_wait),
                        "revoked partitions not drained in time: letting them go (their commits are refused now)"
                    );
                    break;
                }
                state = assignment
                    .released
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        drop(state);
        // No commit in flight for them, none accepted after.
        let _commits = lock(&assignment.commits);
        let mut state = lock(&assignment.state);
        for partition in revoked {
            state.partitions.remove(partition);
        }
        drop(state);
        info!(partitions = ?revoked, lost, "rebalance: partitions released");
        assignment.changed();
    }
}

/// One partition's queue and where its reads are.
struct Reader {
    queue: rdkafka::consumer::base_consumer::PartitionQueue<Rebalancer>,
    ready: Arc<Notify>,
    /// Where the next read continues (`None`: seek first); one read at a time.
    position: tokio::sync::Mutex<Option<i64>>,
}

impl Reader {
    fn new(
        mut queue: rdkafka::consumer::base_consumer::PartitionQueue<Rebalancer>,
        start: Option<i64>,
    ) -> Self {
        let ready = Arc::new(Notify::new());
        let notify = Arc::clone(&ready);
        queue.set_nonempty_callback(move || notify.notify_one());
        Reader {
            queue,
            ready,
            position: tokio::sync::Mutex::new(start),
        }
    }
}

impl KafkaSource {
    /// A source for the worker whose options these are (their `call_timeout` bounds the metadata, offset
    /// and commit calls). The options are checked first.
    pub fn new(options: KafkaOptions, worker: &TunnelOptions) -> Result<Self, TunnelError> {
        options.validate()?;
        Ok(KafkaSource {
            options: Arc::new(options),
            call_timeout: worker.call_timeout,
            changes: Arc::new(watch::channel(0).0),
            members: Mutex::new(HashMap::new()),
        })
    }

    /// The options.
    pub fn options(&self) -> &KafkaOptions {
        &self.options
    }

    /// The partition's log start and end.
    async fn watermarks(&self, member: &Arc<Member>, partition: i32) -> Result<(i64, i64), TunnelError> {
        let (m, timeout) = (Arc::clone(member), self.call_timeout);
        blocking("Read", move || {
            m.consumer
                .fetch_watermarks(&m.assignment.topic, partition, timeout)
                .map_err(|e| failed("Read", e))
        })
        .await
    }

    fn member(&self, call: &'static str, session: &Session) -> Result<Arc<Member>, TunnelError> {
        lock(&self.members)
            .get(&session.client_id)
            .cloned()
            .ok_or_else(|| {
                own(
                    call,
                    ErrorKind::OwnershipLost,
                    format!("session {} is closed", session.client_id),
                )
            })
    }
}

/// Opens a member: a consumer in the group, subscribed, with its poll thread (blocking).
fn open(
    options: &KafkaOptions,
    call_timeout: Duration,
    changes: &Arc<watch::Sender<u64>>,
    client_tag: &str,
    heartbeat_timeout: Duration,
) -> Result<Arc<Member>, TunnelError> {
    {
        let client_id: Arc<str> = Arc::from(format!("{client_tag}-{:016x}", rand::random::<u64>()));
        let assignment = Arc::new(Assignment {
            topic: options.topic.clone(),
            state: Mutex::new(AssignState::default()),
            released: Condvar::new(),
            commits: Mutex::new(()),
            changes: Arc::clone(changes),
            revoke_wait: options.revoke_wait,
        });
        let context = Rebalancer {
            assignment: Arc::clone(&assignment),
            consumer: OnceLock::new(),
            refused: Mutex::new(None),
        };
        let consumer: KafkaConsumer = options
            .client_config(&client_id, heartbeat_timeout)
            .create_with_context(context)
            .map_err(|e| failed("Connect", e))?;
        let consumer = Arc::new(consumer);
        let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
        // The topic must exist: a missing one is a configuration error, not something to wait for.
        let metadata = metadata(&consumer, &options.topic, call_timeout)?;
        let topic = metadata.topics().iter().find(|t| t.name() == options.topic);
        match topic.and_then(|t| t.error()) {
            Some(err) => {
                let code = RDKafkaErrorCode::from(err);
                let kind = match code {
                    RDKafkaErrorCode::UnknownTopicOrPartition => ErrorKind::Fatal,
                    other => kind_of(other),
                };
                return Err(own("Connect", kind, format!("topic {:?}: {code}", options.topic)));
            }
            None if topic.is_none_or(|t| t.partitions().is_empty()) => {
                return Err(own(
                    "Connect",
                    ErrorKind::Fatal,
                    format!("topic {:?} does not exist", options.topic),
                ));
            }
            None => {}
        }
        consumer
            .subscribe(&[&options.topic])
            .map_err(|e| failed("Connect", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let (consumer, stop, assignment) =
                (Arc::clone(&consumer), Arc::clone(&stop), Arc::clone(&assignment));
            std::thread::Builder::new()
                .name(format!("kafka-{client_id}"))
                .spawn(move || poll(&consumer, &stop, &assignment))
                .map_err(|e| own("Connect", ErrorKind::Retryable, format!("no poll thread: {e}")))?
        };
        Ok(Arc::new(Member {
            client_id,
            consumer,
            assignment,
            stop,
            poller: Mutex::new(Some(poller)),
        }))
    }
}

/// The topic's metadata, asked for in slices of the call timeout: between them, the client's error events say
/// whether the brokers refused its credentials or its TLS handshake, which no wait mends (librdkafka itself
/// only reconnects and the call times out).
fn metadata(
    consumer: &KafkaConsumer,
    topic: &str,
    call_timeout: Duration,
) -> Result<rdkafka::metadata::Metadata, TunnelError> {
    const SLICE: Duration = Duration::from_millis(500);
    let deadline = Instant::now() + call_timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match consumer.fetch_metadata(Some(topic), left.min(SLICE)) {
            Ok(metadata) => return Ok(metadata),
            Err(err) => {
                // Not subscribed yet: only error and log events are queued here, never a record. A poll serves
                // them (the error callback sees the reasons) and returns at each error, or after a wait without.
                let refused = &consumer.context().refused;
                while Instant::now() < deadline
                    && lock(refused).is_none()
                    && consumer.poll(Duration::from_millis(100)).is_some()
                {}
                if let Some(refused) = lock(refused).take() {
                    warn!(topic, error = %refused, "the brokers refused this client");
                    return Err(TunnelError::Source {
                        call: "Connect",
                        kind: ErrorKind::Fatal,
                        source: Box::new(refused),
                    });
                }
                if Instant::now() >= deadline {
                    return Err(failed("Connect", err));
                }
            }
        }
    }
}

/// The poll thread: serves the rebalance callbacks and the consumer's events until stopped. Records never
/// come here (each partition has its queue).
fn poll(consumer: &KafkaConsumer, stop: &AtomicBool, assignment: &Assignment) {
    while !stop.load(Ordering::Acquire) {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => debug!(
                partition = message.partition(),
                offset = message.offset(),
                "a record reached the main queue; its partition's reader seeks to it again"
            ),
            Some(Err(err)) => {
                let kind = code_of(&err).map(kind_of);
                if matches!(err, KafkaError::MessageConsumptionFatal(_)) {
                    warn!(error = %err, "the consumer failed fatally: ending the session");
                    lock(&assignment.state).fenced = Some(format!("fatal consumer error: {err}"));
                    assignment.released.notify_all();
                    assignment.changed();
                } else if kind == Some(ErrorKind::CheckpointOutOfRange) {
                    // Which partition is not said here: every reader checks its position on its next read.
                    warn!(error = %err, "an offset is out of range");
                    for reader in lock(&assignment.state)
                        .partitions
                        .values()
                        .filter_map(|p| p.reader.as_ref())
                    {
                        reader.ready.notify_one();
                    }
                } else {
                    debug!(error = %err, "consumer event");
                }
            }
        }
    }
}

/// Applies the worker's CLOSE reports; true if a revoked partition was released.
fn take_reports(state: &mut AssignState, reports: &[ReportedChannel]) -> bool {
    let mut released = false;
    for report in reports {
        if !matches!(report.status, ChannelStatus::Close | ChannelStatus::Terminated) {
            continue;
        }
        let Ok(partition) = i32::try_from(report.channel_id) else {
            continue;
        };
        let next = state.epoch + 1;
        let Some(p) = state.partitions.get_mut(&partition) else {
            continue;
        };
        if report.version.get() <= p.version || p.released {
            continue; // of an earlier lease, or taken already
        }
        if p.status == ChannelStatus::Closing {
            p.released = true;
            released = true;
            continue;
        }
        // The channel gave up or crashed while the partition is still ours: Kafka has no "give back", so it
        // starts again here, at the last commit, under a new lease (the old one is fenced).
        info!(
            partition,
            "channel closed while assigned: restarting it at the last commit"
        );
        p.version = next;
        p.valid_from = next;
        if let Some(reader) = &p.reader {
            if let Ok(mut position) = reader.position.try_lock() {
                *position = None;
            }
        }
        state.epoch = next;
    }
    released
}

/// Blocking work off the runtime's threads.
async fn blocking<T: Send + 'static>(
    call: &'static str,
    work: impl FnOnce() -> Result<T, TunnelError> + Send + 'static,
) -> Result<T, TunnelError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|join| {
        Err(own(
            call,
            ErrorKind::Fatal,
            format!("the call's task ended: {join}"),
        ))
    })
}

fn lost(call: &'static str, why: String) -> TunnelError {
    own(call, ErrorKind::OwnershipLost, why)
}

impl Member {
    /// Moves the partition's fetcher to `offset` (records fetched before are dropped by librdkafka).
    fn seek(&self, partition: i32, offset: i64) -> Result<(), TunnelError> {
        self.consumer
            .seek(
                &self.assignment.topic,
                partition,
                Offset::Offset(offset),
                Duration::ZERO,
            )
            .map_err(|e| own("Read", ErrorKind::Retryable, format!("seek to {offset}: {e}")))
    }

    /// Commits `offsets` (partition, offset), synchronously, fenced by the group's generation.
    fn commit(&self, offsets: &[(i32, i64)]) -> Result<(), KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for &(partition, offset) in offsets {
            tpl.add_partition_offset(&self.assignment.topic, partition, Offset::Offset(offset))?;
        }
        match self.consumer.commit(&tpl, CommitMode::Sync) {
            Err(err) if code_of(&err) == Some(RDKafkaErrorCode::NoOffset) => Ok(()),
            other => other,
        }
    }

    /// The worker's heartbeat (blocking): takes its CLOSE reports (a drained partition releases its revoke; a
    /// channel that ended while its partition is still assigned is started again under a new lease), proves
    /// the membership, and answers the partitions owned.
    fn heartbeat(&self, reports: &[ReportedChannel]) -> Result<Vec<ServerChannel>, TunnelError> {
        const CALL: &str = "Heartbeat";
        let assignment = &self.assignment;
        // Before any lease changes: no commit of an older lease is in flight, none is accepted after.
        let _commits = lock(&assignment.commits);
        let proof = {
            let mut state = lock(&assignment.state);
            if let Some(why) = &state.fenced {
                return Err(lost(CALL, why.clone()));
            }
            let released = take_reports(&mut state, reports);
            if released {
                assignment.released.notify_all();
            }
            state
                .partitions
                .iter()
                .filter(|(_, p)| !p.released)
                .filter_map(|(&id, p)| p.committed.map(|c| (id, c)))
                .collect::<Vec<_>>()
        };
        // The proof of membership: the checkpoints committed again, fenced by the generation. A member the
        // group expelled (a freeze past the session timeout) learns it here, before delivering anything.
        if !proof.is_empty() {
            match self.commit(&proof) {
                Ok(()) => {}
                // The generation moves while the group rebalances (this member rejoining): no proof this time,
                // but nothing lost either; the next heartbeat tries again.
                Err(err)
                    if matches!(
                        code_of(&err),
                        Some(RDKafkaErrorCode::RebalanceInProgress | RDKafkaErrorCode::IllegalGeneration)
                    ) =>
                {
                    return Err(own(
                        CALL,
                        ErrorKind::Retryable,
                        format!("the group is rebalancing: {err}"),
                    ));
                }
                Err(err) => {
                    let err = failed(CALL, err);
                    if err.kind() == ErrorKind::OwnershipLost {
                        warn!(error = %err, "the group no longer knows this member: the session is over");
                        lock(&assignment.state).fenced = Some(err.to_string());
                    }
                    return Err(err);
                }
            }
        }
        let state = lock(&assignment.state);
        Ok(state
            .partitions
            .iter()
            .filter(|(_, p)| !p.released)
            .map(|(&id, p)| ServerChannel {
                channel_id: id as u32,
                status: p.status,
                version: Version(p.version),
                channel_type: ChannelType::Stream,
            })
            .collect())
    }

    /// Stops the poll thread and lets the partitions' queues go; blocking. The consumer closes (it leaves the
    /// group, its last revocation not waiting) when the last reference to the member is dropped.
    fn close(&self) {
        {
            let mut state = lock(&self.assignment.state);
            state.closing = true;
            for p in state.partitions.values_mut() {
                p.reader = None;
            }
        }
        self.assignment.released.notify_all();
        self.stop.store(true, Ordering::Release);
        if let Some(poller) = lock(&self.poller).take() {
            let _ = poller.join();
        }
        lock(&self.assignment.state).partitions.clear();
    }
}

impl TunnelSource for KafkaSource {
    fn connect<'a>(
        &'a self,
        tunnel_id: &'a str,
        client_tag: &'a str,
        heartbeat_timeout: Duration,
    ) -> BoxFuture<'a, Result<Session, TunnelError>> {
        async move {
            let member = {
                let (options, timeout, changes) =
                    (Arc::clone(&self.options), self.call_timeout, Arc::clone(&self.changes));
                let tag = client_tag.to_string();
                blocking("Connect", move || open(&options, timeout, &changes, &tag, heartbeat_timeout)).await?
            };
            let session = Session {
                tunnel_id: Arc::from(tunnel_id),
                client_id: Arc::clone(&member.client_id),
                // Kafka has no session secret: the consumer is the session.
                session_token: SessionToken::new(""),
                heartbeat_timeout,
            };
            info!(topic = %self.options.topic, group = %self.options.group_id, client_id = %member.client_id, "joined the consumer group");
            lock(&self.members).insert(Arc::clone(&member.client_id), member);
            Ok(session)
        }
        .boxed()
    }

    fn heartbeat<'a>(
        &'a self,
        session: &'a Session,
        channels: &'a [ReportedChannel],
    ) -> BoxFuture<'a, Result<Vec<ServerChannel>, TunnelError>> {
        async move {
            const CALL: &str = "Heartbeat";
            let member = self.member(CALL, session)?;
            let reports = channels.to_vec();
            blocking(CALL, move || member.heartbeat(&reports)).await
        }
        .boxed()
    }

    fn get_checkpoint<'a>(
        &'a self,
        lease: &'a ChannelLease,
    ) -> BoxFuture<'a, Result<CheckpointInfo, TunnelError>> {
        async move {
            const CALL: &str = "GetCheckpoint";
            let member = self.member(CALL, &lease.session)?;
            Assignment::check(&lock(&member.assignment.state), lease).map_err(|why| lost(CALL, why))?;
            let partition = lease.channel_id as i32;
            let (m, timeout) = (Arc::clone(&member), self.call_timeout);
            let (committed, low, high) = blocking(CALL, move || {
                let topic = &m.assignment.topic;
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(topic, partition);
                let committed = m
                    .consumer
                    .committed_offsets(tpl, timeout)
                    .map_err(|e| failed(CALL, e))?
                    .find_partition(topic, partition)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    });
                let (low, high) = m
                    .consumer
                    .fetch_watermarks(topic, partition, timeout)
                    .map_err(|e| failed(CALL, e))?;
                Ok((committed, low, high))
            })
            .await?;
            let position = committed.unwrap_or(low);
            let mut state = lock(&member.assignment.state);
            if let Some(p) = state.partitions.get_mut(&partition) {
                if committed.is_some() && p.committed.is_none() {
                    p.committed = committed;
                }
            }
            Ok(CheckpointInfo {
                position: position.max(0) as u64,
                first_retained: low.max(0) as u64,
                end: high.max(0) as u64,
                channel_type: ChannelType::Stream,
                finished: false,
            })
        }
        .boxed()
    }

    fn read<'a>(
        &'a self,
        lease: &'a ChannelLease,
        from: u64,
        max_records: u32,
        wait: Duration,
    ) -> BoxFuture<'a, Result<ReadBatch, TunnelError>> {
        async move {
            const CALL: &str = "Read";
            let member = self.member(CALL, &lease.session)?;
            let reader = {
                let state = lock(&member.assignment.state);
                let p = Assignment::check(&state, lease).map_err(|why| lost(CALL, why))?;
                p.reader.clone().ok_or_else(|| {
                    own(
                        CALL,
                        ErrorKind::Retryable,
                        format!("partition {} has no queue", lease.channel_id),
                    )
                })?
            };
            let partition = lease.channel_id as i32;
            let from = i64::try_from(from).unwrap_or(i64::MAX);
            let mut position = reader.position.lock().await;
            if *position != Some(from) {
                // The first read of a lease, or a resync: the fetcher goes where the channel is.
                member.seek(partition, from)?;
                *position = Some(from);
            }
            let deadline = tokio::time::Instant::now() + wait;
            let mut batch = ReadBatch {
                records: Vec::new(),
                next: from as u64,
                finished: false,
            };
            loop {
                while batch.records.len() < max_records as usize {
                    let Some(message) = reader.queue.poll(Duration::ZERO) else {
                        break;
                    };
                    let message = match message {
                        Ok(message) => message,
                        Err(err) => {
                            *position = None;
                            if batch.records.is_empty() {
                                return Err(failed(CALL, err));
                            }
                            // What was read is good; the next read seeks and meets the error again.
                            break;
                        }
                    };
                    let offset = message.offset();
                    if offset < batch.next as i64 {
                        continue; // fetched before a seek
                    }
                    if offset > batch.next as i64 {
                        // A jump: a gap the log has (compaction, transaction markers), or librdkafka's reset
                        // to the log's start after the offset was trimmed by retention. Only the log's start
                        // tells: this message is dropped and the next read seeks back to look again alone.
                        *position = None;
                        if !batch.records.is_empty() {
                            break;
                        }
                        let (low, high) = self.watermarks(&member, partition).await?;
                        if (batch.next as i64) < low {
                            return Err(own(
                                CALL,
                                ErrorKind::CheckpointOutOfRange,
                                format!(
                                    "offset {} is below the partition's log [{low}, {high})",
                                    batch.next
                                ),
                            ));
                        }
                    }
                    batch.next = offset as u64 + 1;
                    batch.records.push(Record {
                        sequence: offset as u64,
                        key: message.key().map(Bytes::copy_from_slice).unwrap_or_default(),
                        value: message.payload().map(Bytes::copy_from_slice).unwrap_or_default(),
                        append_time: message
                            .timestamp()
                            .to_millis()
                            .map_or(SystemTime::UNIX_EPOCH, |ms| {
                                SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
                            }),
                    });
                    *position = Some(batch.next as i64);
                }
                if !batch.records.is_empty()
                    || tokio::time::timeout_at(deadline, reader.ready.notified())
                        .await
                        .is_err()
                {
                    if batch.records.is_empty() {
                        *position = Some(from);
                    }
                    return Ok(batch);
                }
            }
        }
        .boxed()
    }

    fn checkpoint<'a>(
        &'a self,
        lease: &'a ChannelLease,
        position: u64,
    ) -> BoxFuture<'a, Result<(), TunnelError>> {
        async move {
            const CALL: &str = "Commit";
            let member = self.member(CALL, &lease.session)?;
            let (m, lease) = (Arc::clone(&member), lease.clone());
            blocking(CALL, move || {
                let _commits = lock(&m.assignment.commits);
                Assignment::check(&lock(&m.assignment.state), &lease).map_err(|why| lost(CALL, why))?;
                let partition = lease.channel_id as i32;
                let offset = i64::try_from(position).unwrap_or(i64::MAX);
                match m.commit(&[(partition, offset)]) {
                    Ok(()) => {
                        if let Some(p) = lock(&m.assignment.state).partitions.get_mut(&partition) {
                            p.committed = Some(offset);
                        }
                        debug!(partition, offset, "committed");
                        Ok(())
                    }
                    Err(err) => {
                        let err = failed(CALL, err);
                        if err.kind() == ErrorKind::OwnershipLost {
                            warn!(partition, offset, error = %err, "commit refused: the member was fenced");
                        }
                        Err(err)
                    }
                }
            })
            .await
        }
        .boxed()
    }

    fn shutdown<'a>(&'a self, session: &'a Session) -> BoxFuture<'a, Result<(), TunnelError>> {
        async move {
            let member = lock(&self.members).remove(&session.client_id);
            if let Some(member) = member {
                blocking("Shutdown", move || {
                    let client_id = Arc::clone(&member.client_id);
                    member.close();
                    // Usually the last reference (a read in flight may hold another a little longer): the
                    // consumer closes here, off the runtime's threads.
                    drop(member);
                    info!(%client_id, "left the consumer group");
                    Ok(())
                })
                .await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn assignment_changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        // Members left open (a worker killed without its post_stop): stop their poll threads; the consumers
        // close (and leave the group) when their last reference goes.
        for member in lock(&self.members).values() {
            member.stop.store(true, Ordering::Release);
            let mut state = lock(&member.assignment.state);
            state.closing = true;
            for p in state.partitions.values_mut() {
                p.reader = None;
            }
            member.assignment.released.notify_all();
        }
    }
}
