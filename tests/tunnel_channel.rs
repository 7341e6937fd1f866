//! Channel actors against the real tunnel service: a nack gives the channel up and its records come again; a
//! crashed channel actor is reported CLOSE, reassigned to a new actor and goes on; a sealed base channel read to
//! its end is TERMINATED, never read again, and its stream child starts only then.

mod tunnel_worker_common;

use std::sync::Arc;
use std::time::Duration;

use arbor::registry::{Registry, RegistryEvent, RemovalReason};
use arbor::tunnel::{ChannelType, CheckpointPolicy, TunnelEntry, TunnelEvent, WorkerStatus};
use arbor_proto::tunnel::v1;
use tunnel_worker_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_gives_the_channel_up_and_its_records_are_delivered_again() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "nacked", 1).await;
    append_to(&mut client, &tunnel, Some(0), records("a", 100))
        .await
        .unwrap();
    let inbox = Arc::new(Inbox::default());
    let (_actor, subscriber) = actor_subscriber(Arc::clone(&inbox)).await;
    let worker = start_worker_with(
        &server.url,
        fast_options(&tunnel),
        Registry::new("nacked"),
        subscriber,
    )
    .await;
    let mut events = worker.events();
    wait_for_tunnel(&mut client, &tunnel, "checkpoint at 100", |t| {
        t.channels[0].checkpoint_sequence_number == 100
    })
    .await;
    let version_before = describe(&mut client, &tunnel).await.channels[0].version;

    // the next batch is refused
    inbox.nack_next.store(true, std::sync::atomic::Ordering::SeqCst);
    append_to(&mut client, &tunnel, Some(0), records("b", 100))
        .await
        .unwrap();
    let reason = next_event(&mut events, |e| match e {
        TunnelEvent::ChannelReleased {
            channel_id: 0,
            reason,
        } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(reason.contains("refused"), "{reason}");
    // the service reassigns it (to this worker, the only consumer), from the checkpoint before the refused batch
    let position = next_event(&mut events, |e| match e {
        TunnelEvent::ChannelAssigned {
            channel_id: 0,
            position,
            ..
        } => Some(*position),
        _ => None,
    })
    .await;
    assert_eq!(position, 100);
    wait_for_tunnel(&mut client, &tunnel, "checkpoint at 200", |t| {
        t.channels[0].checkpoint_sequence_number == 200
    })
    .await;
    assert_eq!(inbox.acked_on(0), (0..200).collect::<Vec<u64>>());
    let received = inbox.received();
    let refused = received.iter().position(|&r| r.1 == 100).unwrap();
    assert_eq!(
        received[refused + 1].1,
        100,
        "the refused batch came again: {received:?}"
    );

    // the service saw the release: CLOSE at version + 1, then OPEN again
    let history = server.store.assignment_history(&tunnel).unwrap();
    assert!(
        history
            .iter()
            .any(|e| e.channel_id == 0 && e.reason == "released" && e.version.get() == version_before + 1),
        "{history:#?}"
    );
    worker.shutdown(Duration::from_secs(10)).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_channel_actor_is_reported_close_and_reassigned_to_a_new_actor() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "crashed", 2).await;
    for channel in 0..2 {
        append_to(&mut client, &tunnel, Some(channel), records("a", 100))
            .await
            .unwrap();
    }
    let registry = Registry::new("crashed");
    let (worker, recorder) = start_worker(&server.url, fast_options(&tunnel), registry.clone()).await;
    wait_for_tunnel(&mut client, &tunnel, "checkpoints at 100", |t| {
        t.channels.iter().all(|c| c.checkpoint_sequence_number == 100)
    })
    .await;
    let mut events = worker.events();
    let key = format!("tunnel/{tunnel}/channel/1");
    let victim = registry.lookup(&key).expect("the channel is registered");
    let (_, mut watch) = registry.watch_with_snapshot();
    let version_before = describe(&mut client, &tunnel).await.channels[1].version;

    victim.actor.kill();
    let reason = next_event(&mut events, |e| match e {
        TunnelEvent::ChannelReleased {
            channel_id: 1,
            reason,
        } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(reason.contains("crashed"), "{reason}");
    let position = next_event(&mut events, |e| match e {
        TunnelEvent::ChannelAssigned {
            channel_id: 1,
            position,
            ..
        } => Some(*position),
        _ => None,
    })
    .await;
    assert_eq!(position, 100, "resumes at the checkpoint");

    // its registry entry went with the actor, and came back with the new one
    let mut removed = false;
    let replacement = tokio::time::timeout(LONG, async {
        loop {
            match watch.recv().await.unwrap() {
                RegistryEvent::Removed(entry, RemovalReason::ActorExited) if entry.key == key => {
                    assert_eq!(entry.actor.id(), victim.actor.id());
                    removed = true;
                }
                RegistryEvent::Registered(entry) if entry.key == key => return entry,
                _ => {}
            }
        }
    })
    .await
    .expect("the channel is registered again");
    assert!(removed, "the crashed actor's entry was removed first");
    assert_ne!(replacement.actor.id(), victim.actor.id());
    assert!(matches!(replacement.value, TunnelEntry::Channel(ref c) if c.channel_id == 1));

    // the service saw CLOSE at version + 1 (reported by the worker), then gave it back
    let history = server.store.assignment_history(&tunnel).unwrap();
    assert!(
        history
            .iter()
            .any(|e| e.channel_id == 1 && e.reason == "released" && e.version.get() == version_before + 1),
        "{history:#?}"
    );
    // and delivery goes on, on both channels
    for channel in 0..2 {
        append_to(&mut client, &tunnel, Some(channel), records("b", 50))
            .await
            .unwrap();
    }
    wait_for_tunnel(&mut client, &tunnel, "checkpoints at 150", |t| {
        t.channels.iter().all(|c| c.checkpoint_sequence_number == 150)
    })
    .await;
    let on_1: Vec<u64> = recorder
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.channel == 1)
        .map(|s| s.sequence)
        .collect();
    assert_eq!(on_1, (0..150).collect::<Vec<u64>>());
    assert_eq!(worker.channels().len(), 2);
    worker.shutdown(Duration::from_secs(10)).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_base_channel_is_terminated_never_read_again_and_its_stream_child_starts_after_it() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create(
        &mut client,
        "parenthood",
        vec![spec(ChannelType::Base, None), spec(ChannelType::Stream, Some(0))],
        None,
    )
    .await;
    append_to(&mut client, &tunnel, Some(0), records("base", 250))
        .await
        .unwrap();
    // key-routed: the only stream channel, 1, which waits for its parent
    append_to(&mut client, &tunnel, None, records("stream", 100))
        .await
        .unwrap();
    let registry = Registry::new("parenthood");
    let (worker, recorder) = start_worker(&server.url, fast_options(&tunnel), registry.clone()).await;
    let mut events = worker.events();
    recorder.wait_for(250).await;
    assert_eq!(
        describe(&mut client, &tunnel).await.channels[1].status,
        i32::from(v1::ChannelStatus::Wait),
        "the child waits while the base channel is not finished"
    );

    client
        .seal_channel(v1::SealChannelRequest {
            tunnel_id: tunnel.clone(),
            tunnel_name: String::new(),
            channel_id: 0,
        })
        .await
        .unwrap();
    next_event(&mut events, |e| {
        matches!(e, TunnelEvent::ChannelTerminated { channel_id: 0 }).then_some(())
    })
    .await;
    let position = next_event(&mut events, |e| match e {
        TunnelEvent::ChannelAssigned {
            channel_id: 1,
            position,
            ..
        } => Some(*position),
        _ => None,
    })
    .await;
    assert_eq!(position, 0);
    recorder.wait_for(350).await;

    let info = wait_for_tunnel(&mut client, &tunnel, "the base channel terminated", |t| {
        t.channels[0].status == i32::from(v1::ChannelStatus::Terminated)
    })
    .await;
    assert_eq!(info.channels[0].checkpoint_sequence_number, 250);
    // every base record once, and every stream record after the last base record
    let seen = recorder.seen.lock().unwrap().clone();
    let base: Vec<u64> = seen
        .iter()
        .filter(|s| s.channel == 0)
        .map(|s| s.sequence)
        .collect();
    assert_eq!(base, (0..250).collect::<Vec<u64>>());
    let first_stream = seen.iter().position(|s| s.channel == 1).unwrap();
    assert_eq!(first_stream, 250, "the child started after its parent finished");
    // never read again: no other lease of channel 0 after the termination, and no actor for it
    let history = server.store.assignment_history(&tunnel).unwrap();
    let terminated = history
        .iter()
        .position(|e| e.channel_id == 0 && e.reason == "terminated")
        .expect("TERMINATED reported");
    assert!(!history[terminated + 1..].iter().any(|e| e.channel_id == 0));
    assert!(registry.lookup(&format!("tunnel/{tunnel}/channel/0")).is_none());
    assert_eq!(worker.channels().len(), 1);
    worker.shutdown(Duration::from_secs(10)).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_finishes_the_batch_in_delivery_and_flushes_what_was_acknowledged() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "flushed", 1).await;
    append_to(&mut client, &tunnel, Some(0), records("a", 200))
        .await
        .unwrap();
    // checkpoints on a timer that never fires in this test: only the shutdown's flush writes one
    let options = fast_options(&tunnel).checkpoint(CheckpointPolicy::Every(Duration::from_secs(3600)));
    let inbox = Inbox::holding_from(100);
    let (_actor, subscriber) = actor_subscriber(Arc::clone(&inbox)).await;
    let worker = start_worker_with(&server.url, options, Registry::new("flushed"), subscriber).await;
    inbox
        .wait_received("the batch 100..200", |&r| r == (0, 100, 200))
        .await;
    assert_eq!(inbox.acked_on(0), (0..100).collect::<Vec<u64>>());
    assert_eq!(checkpoints(&mut client, &tunnel).await, vec![0]);

    // the shutdown starts while the second batch is in the subscriber's hands, which then acknowledges it
    let stopping = {
        let worker = worker.clone();
        tokio::spawn(async move { worker.shutdown(Duration::from_secs(10)).await })
    };
    let mut status = worker.status();
    tokio::time::timeout(LONG, status.wait_for(|s| *s == WorkerStatus::Stopping))
        .await
        .expect("the worker stops")
        .unwrap();
    inbox.release();
    stopping.await.unwrap().unwrap();
    let info = describe(&mut client, &tunnel).await;
    assert_eq!(info.channels[0].checkpoint_sequence_number, 200);
    assert!(info.clients.is_empty(), "{:?}", info.clients);
    server.stop().await;
}
