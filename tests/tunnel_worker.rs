//! The tunnel worker against the real tunnel service: consuming, uniqueness, graceful shutdown.

mod tunnel_worker_common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::time::Instant;

use arbor::registry::Registry;
use arbor::supervisor::{DynamicSupervisor, DynamicSupervisorOptions};
use arbor::tunnel::{TunnelError, TunnelEvent, TunnelExit, TunnelHandle, TunnelOptions, TunnelWorker};
use tunnel_worker_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_consumes_every_record_in_order_per_key_and_checkpoints_to_the_end() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "orders", 4).await;
    let mut expected = 0;
    for batch in 0..10 {
        let records = (0..100)
            .map(|i| record(format!("key-{}", i % 17), format!("{batch}-{i}")))
            .collect();
        append_to(&mut client, &tunnel, None, records).await.unwrap();
        expected += 100;
    }
    let registry = Registry::new("tunnels-test");
    let (worker, recorder) = start_worker(&server.url, fast_options(&tunnel), registry.clone()).await;
    recorder.wait_for(expected).await;
    // in order per key: values of one key were appended in (batch, i) order
    for (key, values) in recorder.by_key() {
        let positions: Vec<(u32, u32)> = values
            .iter()
            .map(|v| {
                let v = String::from_utf8(v.clone()).unwrap();
                let (b, i) = v.split_once('-').unwrap();
                (b.parse().unwrap(), i.parse().unwrap())
            })
            .collect();
        let mut sorted = positions.clone();
        sorted.sort();
        assert_eq!(positions, sorted, "key {key:?} out of order");
    }
    // every channel checkpointed to its end (every batch acknowledged)
    tokio::time::timeout(LONG, async {
        loop {
            let info = describe(&mut client, &tunnel).await;
            if info
                .channels
                .iter()
                .all(|c| c.checkpoint_sequence_number == c.end_sequence_number)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("checkpoints reach the end");
    assert_eq!(worker.channels().len(), 4);
    assert_eq!(worker.info().await.unwrap().channels, 4);

    // a second worker for the same tunnel in this registry is refused, naming the running one
    let second = TunnelWorker::builder(fast_options(&tunnel))
        .connection(connection(&server.url).await)
        .run_subscriber(Recorder::default())
        .registry(registry.clone())
        .start()
        .await;
    match second {
        Err(TunnelError::AlreadyRunning { tunnel_id, actor }) => {
            assert_eq!(tunnel_id, tunnel);
            assert_eq!(actor, worker.current().unwrap().id());
        }
        other => panic!("expected AlreadyRunning, got {other:?}"),
    }

    // graceful shutdown: the service forgets the client at once
    worker.shutdown(Duration::from_secs(10)).await.unwrap();
    let info = describe(&mut client, &tunnel).await;
    assert!(info.clients.is_empty(), "{:?}", info.clients);
    assert!(registry.lookup(&format!("tunnel/{tunnel}")).is_none());
    server.stop().await;
}

/// Channels of each worker, as its registry entries say, sorted.
fn spread(workers: &[TunnelHandle]) -> Vec<usize> {
    let mut spread: Vec<usize> = workers.iter().map(|w| w.channels().len()).collect();
    spread.sort();
    spread
}

/// Heartbeat interval and timeout of the failover tests. A killed worker shuts its session down (its state's
/// Drop), so its channels move at once; the timeout bounds the case where that Shutdown is lost.
const INTERVAL: Duration = Duration::from_millis(500);
const TIMEOUT: Duration = Duration::from_secs(6);

fn failover_options(tunnel: &str, tag: String) -> TunnelOptions {
    fast_options(tunnel).heartbeat(INTERVAL, TIMEOUT).client_tag(tag)
}

async fn wait_for_spread(workers: &[TunnelHandle], expected: &[usize]) {
    wait_until(&format!("the channels spread as {expected:?}"), || {
        spread(workers) == expected
    })
    .await;
}

/// Appends `n` records over the tunnel and waits until the recorders have them all.
async fn flow(client: &mut Client, tunnel: &str, recorders: &[Recorder], n: usize) {
    let before: usize = recorders.iter().map(|r| r.count()).sum();
    let records = (0..n).map(|i| record(format!("k{i}"), format!("{i}"))).collect();
    append_to(client, tunnel, None, records).await.unwrap();
    wait_until("the records are delivered", || {
        recorders.iter().map(|r| r.count()).sum::<usize>() >= before + n
    })
    .await;
}

/// Kills what `kill` kills and waits (generously: no timed assertion) until the channels are all owned by
/// `survivors`; prints how long that took.
async fn assert_failover(survivors: &[TunnelHandle], kill: impl FnOnce()) {
    let killed_at = Instant::now();
    kill();
    wait_for_spread(survivors, &[4, 4]).await;
    println!(
        "channels moved {} after the kill",
        humantime::format_duration(killed_at.elapsed())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_eight_channels_and_a_killed_ones_move_to_the_others() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "shared", 8).await;
    let mut workers = Vec::new();
    let mut recorders = Vec::new();
    for i in 0..3 {
        // one registry per worker: three processes' worth of workers in one test
        let (w, r) = start_worker(
            &server.url,
            failover_options(&tunnel, format!("w{i}")),
            Registry::new(format!("w{i}")),
        )
        .await;
        workers.push(w);
        recorders.push(r);
    }
    wait_for_spread(&workers, &[2, 3, 3]).await;
    flow(&mut client, &tunnel, &recorders, 400).await;

    // kill one worker outright (its channel actors and its runner die with it): its state's Drop shuts the
    // session down
    let victim = workers.remove(0);
    assert_failover(&workers, || victim.current().unwrap().kill()).await;
    assert!(matches!(victim.wait().await, TunnelExit::Killed));
    flow(&mut client, &tunnel, &recorders[1..], 400).await;
    for w in &workers {
        w.shutdown(Duration::from_secs(10)).await.unwrap();
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_under_dynamic_supervisors_restart_after_a_crash_and_move_away_when_their_tree_dies() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "supervised", 8).await;
    let mut trees = Vec::new();
    let mut workers = Vec::new();
    let mut recorders = Vec::new();
    for i in 0..3 {
        let supervisor = DynamicSupervisor::start(DynamicSupervisorOptions::default())
            .await
            .unwrap();
        let recorder = Recorder::default();
        let worker = TunnelWorker::builder(failover_options(&tunnel, format!("t{i}")))
            .connection(connection(&server.url).await)
            .run_subscriber(recorder.clone())
            .registry(Registry::new(format!("t{i}")))
            .start_under(&supervisor)
            .await
            .unwrap();
        trees.push(supervisor);
        workers.push(worker);
        recorders.push(recorder);
    }
    wait_for_spread(&workers, &[2, 3, 3]).await;
    flow(&mut client, &tunnel, &recorders, 400).await;

    // a crashed worker is restarted by its supervisor as a new session (new client id); the old session's
    // channels come back after its timeout, and the three balance again
    let mut events = workers[0].events();
    let old_client = workers[0].info().await.unwrap().client_id.unwrap();
    let old_actor = workers[0].current().unwrap().id();
    workers[0].current().unwrap().kill();
    let new_client = next_event(&mut events, |e| match e {
        TunnelEvent::Connected { client_id } => Some(client_id.clone()),
        _ => None,
    })
    .await;
    assert_ne!(new_client, old_client);
    assert_ne!(workers[0].current().unwrap().id(), old_actor);
    wait_for_spread(&workers, &[2, 3, 3]).await;
    flow(&mut client, &tunnel, &recorders, 400).await;

    // killing a tree kills its worker and the worker's channels: the others take them
    let tree = trees.remove(0);
    workers.remove(0);
    assert_failover(&workers, || tree.cell().unwrap().kill()).await;
    flow(&mut client, &tunnel, &recorders[1..], 400).await;
    for tree in &trees {
        tree.shutdown(Duration::from_secs(10)).await.unwrap();
    }
    // a supervisor's graceful shutdown is the worker's: checkpoints flushed, session shut down
    let info = describe(&mut client, &tunnel).await;
    assert!(info.clients.is_empty(), "{:?}", info.clients);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_shuts_its_session_down_so_that_its_channels_move_without_waiting_for_the_timeout() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "killed", 2).await;
    // A heartbeat timeout far beyond the test's bounds: only a Shutdown releases the channels in time.
    let options = |tag: &str| {
        fast_options(&tunnel)
            .heartbeat(Duration::from_millis(100), Duration::from_secs(120))
            .client_tag(tag)
    };
    let (victim, _) = start_worker(&server.url, options("victim"), Registry::new("victim")).await;
    wait_until("the victim holds both channels", || victim.channels().len() == 2).await;
    let victim_client = victim.info().await.unwrap().client_id.unwrap();
    victim.current().unwrap().kill();
    assert!(matches!(victim.wait().await, TunnelExit::Killed));
    wait_for_tunnel(&mut client, &tunnel, "the killed worker's session is gone", |t| {
        !t.clients.iter().any(|c| c.client_id == victim_client)
    })
    .await;
    let history = server.store.assignment_history(&tunnel).unwrap();
    for channel in 0..2 {
        let last = history.iter().rev().find(|e| e.channel_id == channel).unwrap();
        assert_eq!(last.reason, "client-shutdown", "{last:?}");
    }
    // and another consumer gets them at once
    let (other, _) = start_worker(&server.url, options("other"), Registry::new("other")).await;
    wait_until("the other worker holds both channels", || {
        other.channels().len() == 2
    })
    .await;
    other.shutdown(Duration::from_secs(10)).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_steps_down_at_half_the_services_heartbeat_timeout_not_at_its_own() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "step-down", 2).await;
    // The worker's own timeout (60 s) is far beyond the test's bounds; the service grants 2 s.
    let options = fast_options(&tunnel).heartbeat(Duration::from_millis(100), Duration::from_secs(60));
    let fail_heartbeats = Arc::new(AtomicBool::new(false));
    let source = ServiceTimeout {
        inner: arbor::tunnel::GrpcSource::new(connection(&server.url).await, options.call_timeout),
        service_timeout: Duration::from_secs(2),
        fail_heartbeats: Arc::clone(&fail_heartbeats),
        fail_connects: Arc::default(),
    };
    let recorder = Recorder::default();
    let worker = TunnelWorker::builder(options)
        .source(Arc::new(source))
        .run_subscriber(recorder.clone())
        .registry(Registry::new("step-down"))
        .start()
        .await
        .unwrap();
    wait_until("the worker holds both channels", || worker.channels().len() == 2).await;
    let mut events = worker.events();
    let first_client = worker.info().await.unwrap().client_id.unwrap();
    fail_heartbeats.store(true, Ordering::SeqCst);
    let (client_id, reason) = next_event(&mut events, |e| match e {
        TunnelEvent::SessionLost { client_id, reason } => Some((client_id.clone(), reason.clone())),
        _ => None,
    })
    .await;
    assert_eq!(client_id, first_client);
    assert!(
        reason.contains("half the service's heartbeat timeout of 2s"),
        "{reason}"
    );
    wait_until("the channels are stopped", || worker.channels().is_empty()).await;
    // heartbeats come back: a new session, the channels again, records flow
    fail_heartbeats.store(false, Ordering::SeqCst);
    wait_until("the worker holds both channels again", || {
        worker.channels().len() == 2
    })
    .await;
    assert_ne!(worker.info().await.unwrap().client_id.unwrap(), first_client);
    append_to(&mut client, &tunnel, None, records("a", 50))
        .await
        .unwrap();
    recorder.wait_for(50).await;
    worker.shutdown(Duration::from_secs(10)).await.unwrap();
    server.stop().await;
}

/// A hand-over replays what was not checkpointed, and the batch says so: the replay carries the newer lease's
/// version, so a subscriber tells it from disorder; the batches of one lease share its version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_replayed_after_a_hand_over_carries_the_newer_lease_version() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "versions", 1).await;
    append_to(&mut client, &tunnel, Some(0), records("a", 300))
        .await
        .unwrap();

    // the first consumer acknowledges 0..200 and still holds 200..300 when it is killed
    let first = Inbox::holding_from(200);
    let (_first_actor, subscriber) = actor_subscriber(Arc::clone(&first)).await;
    let options = |tag: &str| fast_options(&tunnel).client_tag(tag);
    let victim = start_worker_with(
        &server.url,
        options("first"),
        Registry::new("v-first"),
        subscriber,
    )
    .await;
    first
        .wait_received("the batch 200..300", |&(c, from, to)| {
            (c, from, to) == (0, 200, 300)
        })
        .await;
    wait_for_tunnel(&mut client, &tunnel, "checkpoint at 200", |t| {
        t.channels[0].checkpoint_sequence_number == 200
    })
    .await;
    victim.current().unwrap().kill();
    assert!(matches!(victim.wait().await, TunnelExit::Killed));

    let second = Arc::new(Inbox::default());
    let (_second_actor, subscriber) = actor_subscriber(Arc::clone(&second)).await;
    let other = start_worker_with(
        &server.url,
        options("second"),
        Registry::new("v-second"),
        subscriber,
    )
    .await;
    second
        .wait_received("the replay of 200..300", |&(c, from, _)| c == 0 && from == 200)
        .await;

    let first_versions = first.versions.lock().unwrap().clone();
    assert_eq!(first.received().len(), first_versions.len());
    assert!(
        first_versions.iter().all(|v| *v == first_versions[0]),
        "one lease, one version: {first_versions:?}"
    );
    let replay = second.versions.lock().unwrap()[0];
    assert_eq!(
        second.received()[0],
        (0, 200, 300),
        "the replay starts at the checkpoint"
    );
    assert!(
        replay > first_versions[0],
        "the replayed batch carries the newer lease: {replay} after {}",
        first_versions[0]
    );
    other.shutdown(Duration::from_secs(10)).await.unwrap();
    server.stop().await;
}

/// The events of the first session and the first assignment can be seen: subscribed on the builder, before
/// `start` (which returns after the first `Connected` was sent, and often after the first assignment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_subscribed_before_start_show_the_first_session_and_assignment() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "first-events", 2).await;
    let builder = TunnelWorker::builder(fast_options(&tunnel))
        .connection(connection(&server.url).await)
        .run_subscriber(Recorder::default())
        .registry(Registry::new("first-events"));
    let mut events = builder.events();
    let worker = builder.start().await.unwrap();

    let client_id = worker.info().await.unwrap().client_id.unwrap();
    let first = tokio::time::timeout(LONG, events.recv()).await.unwrap().unwrap();
    assert!(
        matches!(&first, TunnelEvent::Connected { client_id: id } if *id == client_id),
        "the first event is the first session: {first:?}"
    );
    let mut assigned = Vec::new();
    while assigned.len() < 2 {
        assigned.push(
            next_event(&mut events, |e| match e {
                TunnelEvent::ChannelAssigned { channel_id, .. } => Some(*channel_id),
                _ => None,
            })
            .await,
        );
    }
    assigned.sort();
    assert_eq!(assigned, [0, 1], "both channels of the first assignment");
    worker.shutdown(Duration::from_secs(10)).await.unwrap();
    server.stop().await;
}

/// Starts a worker on its own one-channel tunnel under `supervisor`.
async fn supervised_worker(
    server: &TestServer,
    client: &mut Client,
    name: &str,
    supervisor: &arbor::supervisor::DynamicSupervisorHandle,
) -> TunnelHandle {
    let tunnel = create_streams(client, name, 1).await;
    TunnelWorker::builder(fast_options(&tunnel))
        .connection(connection(&server.url).await)
        .run_subscriber(Recorder::default())
        .registry(Registry::new(name))
        .start_under(supervisor)
        .await
        .unwrap()
}

/// Kills the worker's running incarnation; returns once the supervisor's next one runs.
async fn kill_and_wait_for_the_next(worker: &TunnelHandle) {
    let killed = worker.current().unwrap();
    let one = tokio::spawn({
        let worker = worker.clone();
        async move { worker.wait_incarnation().await }
    });
    killed.kill();
    assert!(
        matches!(one.await.unwrap(), TunnelExit::Killed),
        "an incarnation ends with it"
    );
    wait_until("the next incarnation runs", || {
        worker.current().is_ok_and(|now| now.id() != killed.id())
    })
    .await;
}

/// `wait()` follows a supervised worker across restarts, as the handle does: a killed incarnation is followed
/// by the next, and the wait ends with how the worker ended for good — a graceful shutdown, or a kill after
/// which its supervisor gave up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_follows_a_supervised_worker_across_restarts_until_it_is_down_for_good() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;

    let patient = DynamicSupervisor::start(DynamicSupervisorOptions::default())
        .await
        .unwrap();
    let worker = supervised_worker(&server, &mut client, "wait-restarted", &patient).await;
    let waiting = tokio::spawn({
        let worker = worker.clone();
        async move { worker.wait().await }
    });
    kill_and_wait_for_the_next(&worker).await;
    worker.shutdown(Duration::from_secs(10)).await.unwrap();
    let exit = waiting.await.unwrap();
    assert!(
        matches!(exit, TunnelExit::Shutdown),
        "ends with the shutdown, not the kill: {exit:?}"
    );

    // one restart allowed: the second kill makes the supervisor give up, and the wait ends with that kill
    let strict =
        DynamicSupervisor::start(DynamicSupervisorOptions::default().intensity(1, Duration::from_secs(3600)))
            .await
            .unwrap();
    let worker = supervised_worker(&server, &mut client, "wait-given-up", &strict).await;
    let waiting = tokio::spawn({
        let worker = worker.clone();
        async move { worker.wait().await }
    });
    kill_and_wait_for_the_next(&worker).await;
    worker.current().unwrap().kill();
    let exit = waiting.await.unwrap();
    assert!(matches!(exit, TunnelExit::Killed), "{exit:?}");
    let gave_up = strict.wait().await.unwrap();
    assert!(
        matches!(
            gave_up,
            arbor::supervisor::SupervisorExit::IntensityReached { .. }
        ),
        "{gave_up:?}"
    );
    patient.shutdown(Duration::from_secs(10)).await.unwrap();
    server.stop().await;
}
