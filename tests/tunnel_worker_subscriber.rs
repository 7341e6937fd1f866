//! The tunnel worker's subscriber, against the real tunnel service: a subscriber that dies pauses delivery at
//! what it acknowledged; one attached later resumes from the unacknowledged batch; nobody attaching within the
//! grace period releases the channels cleanly; a subscriber that stops acknowledging (processing timeout) is
//! treated as failed: a runner the worker owns is restarted, a user's actor is detached.

mod tunnel_worker_common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arbor::registry::Registry;
use arbor::supervisor::BoxError;
use arbor::tunnel::{Batch, Subscriber, TunnelEvent, TunnelWorker, WorkerStatus};
use tunnel_worker_common::*;

/// Waits until the worker has had `n` more successful heartbeats: time passes with the worker active.
async fn heartbeats(worker: &arbor::tunnel::TunnelHandle, n: usize) {
    let mut last = worker.info().await.unwrap().last_heartbeat;
    for _ in 0..n {
        let deadline = tokio::time::Instant::now() + LONG;
        loop {
            let now = worker.info().await.unwrap().last_heartbeat;
            if now != last {
                last = now;
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no heartbeat");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscriber_pauses_delivery_at_its_last_ack_and_an_attached_one_resumes_from_the_unacked_batch(
) {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "paused", 1).await;
    append_to(&mut client, &tunnel, Some(0), records("a", 300))
        .await
        .unwrap();

    // acknowledges 0..200, then hangs on the batch 200..300
    let first = Inbox::holding_from(200);
    let (first_actor, subscriber) = actor_subscriber(Arc::clone(&first)).await;
    let options = fast_options(&tunnel).subscriber_grace(Duration::from_secs(60));
    let worker = start_worker_with(&server.url, options, Registry::new("paused"), subscriber).await;
    let mut events = worker.events();
    first
        .wait_received("the batch 200..300", |&(c, from, to)| {
            (c, from, to) == (0, 200, 300)
        })
        .await;
    wait_for_tunnel(&mut client, &tunnel, "checkpoint at 200", |t| {
        t.channels[0].checkpoint_sequence_number == 200
    })
    .await;

    first_actor.kill();
    let reason = next_event(&mut events, |e| match e {
        TunnelEvent::SubscriberLost { reason } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(reason.contains("died") || reason.contains("dropped"), "{reason}");
    wait_for_status(&worker, WorkerStatus::Paused).await;

    // delivery is paused: more records come, heartbeats go on, nothing moves past what was acknowledged
    append_to(&mut client, &tunnel, Some(0), records("b", 100))
        .await
        .unwrap();
    heartbeats(&worker, 3).await;
    assert_eq!(checkpoints(&mut client, &tunnel).await, vec![200]);
    assert_eq!(first.acked_count(), 200);
    assert_eq!(worker.channels().len(), 1, "the channel is kept while paused");

    // a new subscriber gets the unacknowledged batch first, then everything after it
    let second = Arc::new(Inbox::default());
    let (_second_actor, subscriber) = actor_subscriber(Arc::clone(&second)).await;
    worker.attach_subscriber(subscriber).await.unwrap();
    next_event(&mut events, |e| {
        matches!(e, TunnelEvent::SubscriberAttached).then_some(())
    })
    .await;
    wait_for_tunnel(&mut client, &tunnel, "checkpoint at 400", |t| {
        t.channels[0].checkpoint_sequence_number == 400
    })
    .await;
    assert_eq!(second.received()[0], (0, 200, 300));
    assert_eq!(second.acked_on(0), (200..400).collect::<Vec<u64>>());
    assert_eq!(worker.info().await.unwrap().status, WorkerStatus::Active);
    worker.shutdown(Duration::from_secs(10)).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscriber_nobody_replaces_is_released_cleanly_after_the_grace_period() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "released", 2).await;
    for channel in 0..2 {
        append_to(&mut client, &tunnel, Some(channel), records("a", 300))
            .await
            .unwrap();
    }
    // A heartbeat timeout far beyond the test: only a Shutdown lets another consumer in quickly.
    let options = |tag: &str| {
        fast_options(&tunnel)
            .heartbeat(Duration::from_millis(100), Duration::from_secs(120))
            .subscriber_grace(Duration::from_secs(1))
            .client_tag(tag)
    };
    let inbox = Inbox::holding_from(200);
    let (actor, subscriber) = actor_subscriber(Arc::clone(&inbox)).await;
    let worker = start_worker_with(&server.url, options("first"), Registry::new("first"), subscriber).await;
    let mut events = worker.events();
    for channel in 0..2 {
        inbox
            .wait_received("both held batches", |&(c, from, _)| c == channel && from == 200)
            .await;
    }
    let first_client = wait_for_tunnel(&mut client, &tunnel, "checkpoints at 200", |t| {
        t.channels.iter().all(|c| c.checkpoint_sequence_number == 200)
    })
    .await
    .clients[0]
        .client_id
        .clone();

    actor.kill();
    next_event(&mut events, |e| {
        matches!(e, TunnelEvent::SubscriberLost { .. }).then_some(())
    })
    .await;
    wait_for_status(&worker, WorkerStatus::Detached).await;

    // released cleanly: checkpoints are what was acknowledged, and the service forgot the client at once
    let info = describe(&mut client, &tunnel).await;
    assert!(info.clients.is_empty(), "{:?}", info.clients);
    assert!(info
        .channels
        .iter()
        .all(|c| c.checkpoint_sequence_number == 200 && c.owner_client_id.is_empty()));
    let history = server.store.assignment_history(&tunnel).unwrap();
    for channel in 0..2 {
        let last = history.iter().rev().find(|e| e.channel_id == channel).unwrap();
        assert_eq!(last.reason, "client-shutdown", "{last:?}");
    }
    assert!(worker.channels().is_empty());

    // another consumer takes both channels at once (no expiry to wait for) and resumes at the checkpoints
    let (other, recorder) = start_worker(&server.url, options("other"), Registry::new("other")).await;
    recorder.wait_for(200).await;
    for channel in 0..2u32 {
        let seen: Vec<u64> = recorder
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.channel == channel)
            .map(|s| s.sequence)
            .collect();
        assert_eq!(seen, (200..300).collect::<Vec<u64>>(), "channel {channel}");
    }
    assert!(!server
        .store
        .assignment_history(&tunnel)
        .unwrap()
        .iter()
        .any(|e| e.reason == "client-expired"));

    // a subscriber attached to the detached worker brings it back with a new session, sharing the channels
    let (_actor, subscriber) = actor_subscriber(Arc::new(Inbox::default())).await;
    worker.attach_subscriber(subscriber).await.unwrap();
    let client_id = next_event(&mut events, |e| match e {
        TunnelEvent::Connected { client_id } => Some(client_id.clone()),
        _ => None,
    })
    .await;
    assert_ne!(client_id, first_client);
    wait_until("the channels are shared", || {
        worker.channels().len() == 1 && other.channels().len() == 1
    })
    .await;
    assert_eq!(worker.info().await.unwrap().sessions, 2);
    worker.shutdown(Duration::from_secs(10)).await.unwrap();
    other.shutdown(Duration::from_secs(10)).await.unwrap();
    server.stop().await;
}

/// Hangs (far past any processing timeout) over the batch starting at `slow_at` the first time it sees it;
/// records everything else.
#[derive(Clone)]
struct SlowOnce {
    slow_at: u64,
    slowed: Arc<AtomicBool>,
    recorder: Recorder,
}

impl Subscriber for SlowOnce {
    async fn handle(&self, batch: &Batch) -> Result<(), BoxError> {
        if batch.first_sequence() == self.slow_at && !self.slowed.swap(true, Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        self.recorder.handle(batch).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_past_the_processing_timeout_is_restarted_and_gets_the_batch_again() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "slow-runner", 1).await;
    append_to(&mut client, &tunnel, Some(0), records("a", 300))
        .await
        .unwrap();
    let subscriber = SlowOnce {
        slow_at: 100,
        slowed: Arc::default(),
        recorder: Recorder::default(),
    };
    let worker = TunnelWorker::builder(
        fast_options(&tunnel)
            .processing_timeout(Duration::from_secs(2))
            .subscriber_grace(Duration::from_secs(60)),
    )
    .connection(connection(&server.url).await)
    .run_subscriber(subscriber.clone())
    .registry(Registry::new("slow-runner"))
    .start()
    .await
    .unwrap();
    let mut events = worker.events();
    let reason = next_event(&mut events, |e| match e {
        TunnelEvent::SubscriberLost { reason } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(reason.contains("did not acknowledge within"), "{reason}");
    next_event(&mut events, |e| {
        matches!(e, TunnelEvent::SubscriberAttached).then_some(())
    })
    .await;
    wait_for_tunnel(&mut client, &tunnel, "checkpoint at the end", |t| {
        t.channels[0].checkpoint_sequence_number == 300
    })
    .await;
    // the hung delivery was cut off (the runner was replaced), then delivered again: every record, in order
    // (a stall of the machine past the processing timeout may time out and redeliver another batch: at least
    // once allows it, so records are counted at their first delivery)
    let seen: Vec<u64> = subscriber
        .recorder
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.sequence)
        .collect();
    let mut first_deliveries = Vec::new();
    for sequence in seen {
        if first_deliveries.last().is_none_or(|&last| sequence > last) {
            first_deliveries.push(sequence);
        }
    }
    assert_eq!(first_deliveries, (0..300).collect::<Vec<u64>>());
    assert_eq!(worker.info().await.unwrap().status, WorkerStatus::Active);
    worker.shutdown(Duration::from_secs(10)).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_actor_past_the_processing_timeout_is_detached_until_attached_again() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "slow-actor", 1).await;
    append_to(&mut client, &tunnel, Some(0), records("a", 300))
        .await
        .unwrap();
    let slow = Inbox::holding_from(100);
    let (slow_actor, subscriber) = actor_subscriber(Arc::clone(&slow)).await;
    let options = fast_options(&tunnel)
        .processing_timeout(Duration::from_secs(3))
        .subscriber_grace(Duration::from_secs(60));
    let worker = start_worker_with(&server.url, options, Registry::new("slow-actor"), subscriber).await;
    let mut events = worker.events();
    let reason = next_event(&mut events, |e| match e {
        TunnelEvent::SubscriberLost { reason } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(reason.contains("did not acknowledge within"), "{reason}");
    wait_for_status(&worker, WorkerStatus::Paused).await;
    heartbeats(&worker, 3).await;
    // the user's actor is left alone (not killed), and gets nothing more
    assert_eq!(slow_actor.get_status(), arbor::ractor::ActorStatus::Running);
    assert_eq!(slow.received(), vec![(0, 0, 100), (0, 100, 200)]);
    assert_eq!(checkpoints(&mut client, &tunnel).await, vec![100]);

    let fresh = Arc::new(Inbox::default());
    let (_fresh_actor, subscriber) = actor_subscriber(Arc::clone(&fresh)).await;
    worker.attach_subscriber(subscriber).await.unwrap();
    wait_for_tunnel(&mut client, &tunnel, "checkpoint at the end", |t| {
        t.channels[0].checkpoint_sequence_number == 300
    })
    .await;
    assert_eq!(fresh.acked_on(0), (100..300).collect::<Vec<u64>>());
    assert_eq!(worker.info().await.unwrap().status, WorkerStatus::Active);
    worker.shutdown(Duration::from_secs(10)).await.unwrap();
    slow_actor.stop(None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_is_restarted_three_times_per_grace_period_then_the_channels_are_released() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "crashing-runner", 1).await;
    // Long enough for four kill / append / deliver cycles on a loaded machine (the intensity window).
    let grace = Duration::from_secs(10);
    let (worker, recorder) = start_worker(
        &server.url,
        fast_options(&tunnel).subscriber_grace(grace),
        Registry::new("crashing-runner"),
    )
    .await;
    let mut events = worker.events();
    let mut appended = 0;
    let mut kill_and_expect_restart = async |appended: &mut usize| {
        let runner = runner_of(&worker).expect("the worker runs its subscriber");
        runner.kill();
        next_event(&mut events, |e| {
            matches!(e, TunnelEvent::SubscriberLost { .. }).then_some(())
        })
        .await;
        next_event(&mut events, |e| {
            matches!(e, TunnelEvent::SubscriberAttached).then_some(())
        })
        .await;
        assert_ne!(
            runner_of(&worker)
                .expect("the worker runs its subscriber")
                .get_id(),
            runner.get_id()
        );
        // restarted by the crate's own supervisor, which shows in the tree
        let new_runner = runner_of(&worker).unwrap().get_id();
        let supervisor_cell = worker
            .ractor_cell()
            .unwrap()
            .get_children()
            .into_iter()
            .find(|c| c.get_children().iter().any(|r| r.get_id() == new_runner))
            .expect("the runner's supervisor is the worker's child");
        let supervisor = arbor::supervisor::SupervisorHandle::from_cell(supervisor_cell).unwrap();
        let children = supervisor.which_children().await.unwrap();
        assert_eq!(children.len(), 1);
        assert_eq!(children[0].id, "subscriber");
        // the new runner gets records
        append_to(&mut client, &tunnel, Some(0), records("r", 10))
            .await
            .unwrap();
        *appended += 10;
        recorder.wait_for(*appended).await;
    };
    for _ in 0..3 {
        kill_and_expect_restart(&mut appended).await;
    }
    // restarts are counted per grace period, not over the worker's life
    tokio::time::sleep(grace + Duration::from_millis(200)).await;
    for _ in 0..3 {
        kill_and_expect_restart(&mut appended).await;
    }

    // a fourth death within the period: the runner is given up on, and the channels released after the grace
    runner_of(&worker).expect("the worker runs its subscriber").kill();
    next_event(&mut events, |e| {
        matches!(e, TunnelEvent::SubscriberLost { .. }).then_some(())
    })
    .await;
    wait_for_status(&worker, WorkerStatus::Detached).await;
    assert!(describe(&mut client, &tunnel).await.clients.is_empty());
    worker.shutdown(Duration::from_secs(10)).await.unwrap();
    server.stop().await;
}

/// Takes `delay` over every batch; counts the batches in processing at once, overall and per channel.
#[derive(Clone, Default)]
struct Slow {
    delay: Duration,
    recorder: Recorder,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    max_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    channels_busy: Arc<std::sync::Mutex<std::collections::HashSet<u32>>>,
    same_channel_twice: Arc<AtomicBool>,
}

impl Subscriber for Slow {
    async fn handle(&self, batch: &Batch) -> Result<(), BoxError> {
        if !self.channels_busy.lock().unwrap().insert(batch.channel_id) {
            self.same_channel_twice.store(true, Ordering::SeqCst);
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.channels_busy.lock().unwrap().remove(&batch.channel_id);
        self.recorder.handle(batch).await
    }
}

/// Runs `subscriber` with `concurrency` on 16 channels of a batch each (processing timeout 3 s: less than the
/// queue of a subscriber shared by 16 channels at 300 ms a batch, far more than one batch takes); returns the
/// events seen meanwhile.
async fn sixteen_channels(
    subscriber: Slow,
    concurrency: arbor::tunnel::SubscriberConcurrency,
) -> Vec<TunnelEvent> {
    const CHANNELS: u32 = 16;
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "sixteen", CHANNELS).await;
    for channel in 0..CHANNELS {
        append_to(&mut client, &tunnel, Some(channel), records("a", 10))
            .await
            .unwrap();
    }
    let worker = TunnelWorker::builder(
        fast_options(&tunnel)
            .read_batch_size(10)
            .processing_timeout(Duration::from_secs(3))
            .subscriber_grace(Duration::from_secs(60)),
    )
    .connection(connection(&server.url).await)
    .run_subscriber_with(subscriber.clone(), concurrency)
    .registry(Registry::new("sixteen"))
    .start()
    .await
    .unwrap();
    let mut events = worker.events();
    subscriber.recorder.wait_for(10 * CHANNELS as usize).await;
    wait_for_tunnel(
        &mut client,
        &tunnel,
        "every channel checkpointed to its end",
        |t| t.channels.iter().all(|c| c.checkpoint_sequence_number == 10),
    )
    .await;
    worker.shutdown(Duration::from_secs(10)).await.unwrap();
    server.stop().await;
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_subscriber_shared_by_sixteen_channels_is_never_timed_out_for_its_queue() {
    let subscriber = Slow {
        delay: Duration::from_millis(300),
        ..Slow::default()
    };
    let events = sixteen_channels(subscriber.clone(), Default::default()).await;
    let lost: Vec<&TunnelEvent> = events
        .iter()
        .filter(|e| matches!(e, TunnelEvent::SubscriberLost { .. }))
        .collect();
    assert!(lost.is_empty(), "a healthy subscriber was timed out: {lost:?}");
    assert_eq!(subscriber.max_in_flight.load(Ordering::SeqCst), 1);
    // nothing was delivered again: no timeout, no restart
    assert_eq!(subscriber.recorder.count(), 16 * 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_four_processes_batches_of_several_channels_at_once_never_two_of_one_channel() {
    let subscriber = Slow {
        delay: Duration::from_millis(300),
        ..Slow::default()
    };
    let pool = arbor::tunnel::SubscriberConcurrency::Pool(4.try_into().unwrap());
    let events = sixteen_channels(subscriber.clone(), pool).await;
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, TunnelEvent::SubscriberLost { .. })),
        "{events:?}"
    );
    let max = subscriber.max_in_flight.load(Ordering::SeqCst);
    assert!((2..=4).contains(&max), "{max} batches at once with a pool of 4");
    assert!(!subscriber.same_channel_twice.load(Ordering::SeqCst));
    // in order per channel
    let seen = subscriber.recorder.seen.lock().unwrap().clone();
    for channel in 0..16 {
        let sequences: Vec<u64> = seen
            .iter()
            .filter(|s| s.channel == channel)
            .map(|s| s.sequence)
            .collect();
        assert_eq!(sequences, (0..10).collect::<Vec<u64>>(), "channel {channel}");
    }
}
