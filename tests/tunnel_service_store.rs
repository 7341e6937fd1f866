//! The store keeps every promise it acknowledges: records whose request was dropped are published by the
//! write's completion (and a sealed channel still finishes), retention never trims past the acknowledged end,
//! deletes in the same group commit as an append leave nothing behind, no acknowledgement precedes its fsync,
//! a full writer queue refuses writes without a gap, versions grow across restarts, and a closed store can be
//! reopened at once.
#![cfg(feature = "tunnel-service")]

mod tunnel_service_common;
mod tunnel_service_store_common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbor::tunnel_service::store::engine::{ChannelMeta, RecoveredTunnel, TunnelDef, WriteOp};
use arbor::tunnel_service::store::{
    ChannelDef, DurableEngine, DurableOptions, Engine, MemoryEngine, NewTunnel, Retention, TunnelRef,
};
use arbor::tunnel_service::{StoreOptions, TunnelStore};
use arbor_proto::tunnel::domain::{ChannelStatus, ChannelType};
use arbor_proto::tunnel::error::ErrorKind;
use arbor_proto::tunnel::v1;
use bytes::Bytes;
use tonic::Code;
use tunnel_service_common::*;
use tunnel_service_store_common::*;

fn bytes_records(n: usize, size: usize) -> Vec<(Bytes, Bytes)> {
    (0..n)
        .map(|i| (Bytes::from(format!("k{i}")), Bytes::from(vec![b'v'; size])))
        .collect()
}

/// Polls DescribeTunnel until `done` holds for the tunnel (or panics after [`LONG`]).
async fn describe_until(
    client: &mut Client,
    tunnel: &str,
    what: &str,
    done: impl Fn(&v1::TunnelInfo) -> bool,
) {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let info = describe(client, tunnel).await;
        if done(&info) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {LONG:?}: {:?}",
            info.channels
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Closes the gate, starts an append of 3 records to channel 0 and drops it once the engine has its write.
async fn drop_append_once_submitted(engine: &Gated, store: &TunnelStore, target: &TunnelRef) {
    engine.close_gate();
    let before = engine.submitted();
    let append = store.append(target, Some(0), bytes_records(3, 10), None);
    tokio::select! {
        biased;
        result = append => panic!("answered while its acknowledgement is held: {result:?}"),
        () = engine.wait_submitted(before + 1) => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_append_is_published_and_its_sealed_channel_terminates() {
    let engine = Gated::new(Arc::new(MemoryEngine::new()));
    let store = TunnelStore::with_engine(engine.clone(), StoreOptions::in_memory()).unwrap();
    let server = serve(store.clone()).await;
    let mut client = server.client().await;
    let tunnel = create(
        &mut client,
        "dropped",
        vec![spec(ChannelType::Base, None), spec(ChannelType::Stream, Some(0))],
        None,
    )
    .await;

    // The append reaches the engine, then its caller gives up (as a grpc-timeout or RST_STREAM drops it); the
    // disk answers later: its records become readable.
    let target = TunnelRef::Id(tunnel.clone());
    drop_append_once_submitted(&engine, &store, &target).await;
    engine.open_gate();
    describe_until(
        &mut client,
        &tunnel,
        "the dropped append's records readable",
        |t| t.channels[0].end_sequence_number == 3,
    )
    .await;

    // Again, with a seal behind it before the disk answers: the seal counts it and publishes it.
    drop_append_once_submitted(&engine, &store, &target).await;
    let before = engine.submitted();
    let seal = tokio::spawn({
        let mut client = client.clone();
        let tunnel = tunnel.clone();
        async move {
            client
                .seal_channel(v1::SealChannelRequest {
                    tunnel_id: tunnel,
                    tunnel_name: String::new(),
                    channel_id: 0,
                })
                .await
        }
    });
    engine.wait_submitted(before + 1).await;
    engine.open_gate();
    let sealed = seal.await.unwrap().expect("seal").into_inner();
    assert_eq!(
        sealed.end_sequence_number, 6,
        "the seal counts the dropped append"
    );
    describe_until(&mut client, &tunnel, "the sealed end readable", |t| {
        t.channels[0].end_sequence_number == 6
    })
    .await;

    // The base channel finishes, reaches TERMINATED, and its child stream channel is handed out.
    let mut consumer = Consumer::connect(&server.url, &tunnel, Duration::from_secs(10)).await;
    heartbeat_until(std::slice::from_mut(&mut consumer), |c| {
        c[0].open_channels() == vec![0]
    })
    .await;
    let v = consumer.version(0);
    let messages = consumer.read(0, v, 0).await.expect("read");
    let records: usize = messages.iter().map(|m| m.records.len()).sum();
    assert_eq!(records, 6);
    assert!(
        messages.last().unwrap().finished,
        "the sealed channel is finished"
    );
    consumer.checkpoint(0, v, 6).await.expect("checkpoint the end");
    consumer.pending.push(v1::ChannelState {
        channel_id: 0,
        status: ChannelStatus::Terminated.into(),
        version: v + 1,
        channel_type: 0,
    });
    heartbeat_until(std::slice::from_mut(&mut consumer), |c| {
        c[0].open_channels() == vec![1]
    })
    .await;
    let info = describe(&mut client, &tunnel).await;
    assert_eq!(info.channels[0].status, i32::from(v1::ChannelStatus::Terminated));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_creation_whose_write_fails_is_rolled_back() {
    let engine = Gated::new(Arc::new(MemoryEngine::new()));
    let store = TunnelStore::with_engine(engine.clone(), StoreOptions::in_memory()).unwrap();
    engine.close_gate();
    engine.fail_held();
    let create = store.create_tunnel(NewTunnel {
        name: "failed".into(),
        channels: vec![ChannelDef {
            channel_type: ChannelType::Stream,
            parent: None,
        }],
        retention: Retention::default(),
    });
    tokio::select! {
        biased;
        result = create => panic!("answered while its acknowledgement is held: {result:?}"),
        () = engine.wait_submitted(1) => {}
    }
    engine.open_gate();
    let name = TunnelRef::Name("failed".into());
    let deadline = std::time::Instant::now() + LONG;
    while store.describe(&name).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "a tunnel whose creation failed is still listed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    store.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_never_trims_past_the_acknowledged_end() {
    let engine = Gated::new(Arc::new(MemoryEngine::new()));
    let store = TunnelStore::with_engine(engine.clone(), StoreOptions::in_memory()).unwrap();
    let server = serve(store.clone()).await;
    let mut client = server.client().await;
    let tunnel = create(
        &mut client,
        "retained",
        vec![spec(ChannelType::Stream, None)],
        Some(v1::RetentionPolicy {
            max_age_ms: 0,
            max_bytes_per_channel: 100,
        }),
    )
    .await;
    let target = TunnelRef::Id(tunnel.clone());
    store
        .append(&target, Some(0), bytes_records(1, 60), None)
        .await
        .unwrap();

    // Two appends in flight: the second's size trim must not drop the first, which nobody can read yet.
    engine.close_gate();
    let mut in_flight = Vec::new();
    for n in 1..=2 {
        let before = engine.submitted();
        in_flight.push(tokio::spawn({
            let (store, target) = (store.clone(), target.clone());
            async move { store.append(&target, Some(0), bytes_records(1, 60), None).await }
        }));
        engine.wait_submitted(before + 1).await;
        let info = describe(&mut client, &tunnel).await;
        let ch = &info.channels[0];
        assert!(
            ch.first_retained_sequence_number <= ch.end_sequence_number,
            "after {n} appends in flight: first retained {} is past the readable end {}",
            ch.first_retained_sequence_number,
            ch.end_sequence_number
        );
    }
    // A caught-up reader reads at the end without being sent out of range.
    let mut consumer = Consumer::connect(&server.url, &tunnel, Duration::from_secs(10)).await;
    heartbeat_until(std::slice::from_mut(&mut consumer), |c| {
        c[0].open_channels() == vec![0]
    })
    .await;
    let v = consumer.version(0);
    let end = consumer.get_checkpoint(0, v).await.unwrap().end_sequence_number;
    consumer.read(0, v, end).await.expect("a read at the end");

    engine.open_gate();
    for append in in_flight {
        append.await.unwrap().expect("stored once the disk answers");
    }
    // Maintenance trims by size what was acknowledged later.
    describe_until(&mut client, &tunnel, "trimmed to the newest batch", |t| {
        let ch = &t.channels[0];
        ch.end_sequence_number == 3 && ch.first_retained_sequence_number == 2
    })
    .await;
    server.stop().await;
}

fn def(uid: u64) -> TunnelDef {
    TunnelDef {
        uid,
        name: "grouped".into(),
        created_ms: 1,
        channels: vec![ChannelDef {
            channel_type: ChannelType::Stream,
            parent: None,
        }],
        retention: Retention::default(),
    }
}

fn append_op(uid: u64, first_seq: u64, n: usize) -> WriteOp {
    WriteOp::Append {
        uid,
        channel: 0,
        first_seq,
        append_ms: 1,
        records: bytes_records(n, 8),
    }
}

fn recovered(engine: &DurableEngine, uid: u64) -> Option<RecoveredTunnel> {
    engine.recover().unwrap().into_iter().find(|t| t.def.uid == uid)
}

#[tokio::test]
async fn trims_and_deletes_in_the_same_group_as_an_append_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = DurableEngine::open(dir.path()).unwrap();
    // A trim of a batch appended in the same group (one submission is one group).
    let meta = ChannelMeta {
        first_retained: 3,
        ..ChannelMeta::default()
    };
    engine
        .submit(vec![
            WriteOp::PutTunnel(def(1)),
            append_op(1, 0, 3),
            append_op(1, 3, 2),
            WriteOp::Trim {
                uid: 1,
                channel: 0,
                from: 0,
                below: 3,
            },
            WriteOp::PutChannelMeta {
                uid: 1,
                channel: 0,
                meta,
            },
        ])
        .await
        .unwrap()
        .unwrap();
    let seqs: Vec<u64> = engine
        .read(1, 0, 0, 100, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, vec![3, 4], "the trimmed batch is gone, the next one kept");
    // A deletion of a tunnel whose records and producer were written in the same group.
    let producer = arbor::tunnel_service::store::engine::ProducerBatch {
        sequence: 1,
        appends: Vec::new(),
        used: 0,
    };
    engine
        .submit(vec![
            WriteOp::PutTunnel(def(2)),
            append_op(2, 0, 4),
            WriteOp::PutProducer {
                uid: 2,
                producer_id: "p".into(),
                batch: producer,
            },
            WriteOp::DeleteTunnel { uid: 2, channels: 1 },
        ])
        .await
        .unwrap()
        .unwrap();
    engine.close().unwrap();
    drop(engine);

    let engine = DurableEngine::open(dir.path()).unwrap();
    assert!(recovered(&engine, 2).is_none());
    assert!(
        engine.read(2, 0, 0, 100, usize::MAX).unwrap().is_empty(),
        "records left behind"
    );
    let one = recovered(&engine, 1).unwrap();
    assert_eq!(one.channels[0].batches.len(), 1);
    assert_eq!(engine.read(1, 0, 0, 100, usize::MAX).unwrap().len(), 2);
    // Were the producer key left behind, a tunnel with that uid would find it.
    engine
        .submit(vec![WriteOp::PutTunnel(def(2))])
        .await
        .unwrap()
        .unwrap();
    assert!(
        recovered(&engine, 2).unwrap().producers.is_empty(),
        "producer left behind"
    );
    engine.close().unwrap();
}

/// A sync hook's other end: each fsync reports here, then blocks until released while `hold` is set.
struct HeldSync {
    entered: mpsc::Receiver<usize>,
    release: mpsc::Sender<()>,
    hold: Arc<AtomicBool>,
}

fn held_sync_hook() -> (DurableOptions, HeldSync) {
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let hold = Arc::new(AtomicBool::new(false));
    let (entered_tx, release_rx, held) = (Mutex::new(entered_tx), Mutex::new(release_rx), Arc::clone(&hold));
    let options = DurableOptions {
        on_sync: Some(Arc::new(move |groups| {
            let _ = entered_tx.lock().unwrap().send(groups);
            if held.load(Ordering::SeqCst) {
                let _ = release_rx.lock().unwrap().recv_timeout(LONG);
            }
        })),
        ..DurableOptions::default()
    };
    (
        options,
        HeldSync {
            entered,
            release,
            hold,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledgement_goes_out_before_the_fsync_of_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let (options, sync) = held_sync_hook();
    sync.hold.store(true, Ordering::SeqCst);
    let engine = DurableEngine::open_with(dir.path(), options).unwrap();
    let mut acks: Vec<_> = (0..5)
        .map(|b| engine.submit(vec![WriteOp::PutTunnel(def(10 + b))]))
        .collect();
    let mut answered = vec![false; acks.len()];
    let mut synced = 0;
    while synced < acks.len() {
        let groups = sync
            .entered
            .recv_timeout(LONG)
            .expect("every acknowledged group is fsynced first");
        // The writer is inside the hook (right after the fsync): the groups it covers are not acknowledged yet.
        for (ack, answered) in acks.iter_mut().zip(answered.iter_mut()) {
            if !*answered {
                *answered = !matches!(
                    ack.try_recv(),
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty)
                );
            }
        }
        let count = answered.iter().filter(|a| **a).count();
        assert_eq!(count, synced, "an acknowledgement went out before its fsync");
        sync.release.send(()).unwrap();
        synced += groups;
        for (ack, answered) in acks.iter_mut().zip(answered.iter_mut()).take(synced) {
            if !*answered {
                tokio::time::timeout(LONG, ack)
                    .await
                    .expect("acknowledged")
                    .unwrap()
                    .unwrap();
                *answered = true;
            }
        }
    }
    assert_eq!(synced, 5);
    sync.hold.store(false, Ordering::SeqCst);
    engine.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_writer_queue_refuses_appends_as_retryable_and_leaves_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (mut options, sync) = held_sync_hook();
    options.max_queued_bytes = 1_000;
    let durable = Arc::new(DurableEngine::open_with(dir.path(), options).unwrap());
    let engine: Arc<dyn Engine> = durable.clone();
    let store = TunnelStore::with_engine(engine, StoreOptions::durable(dir.path())).unwrap();
    let server = serve(store.clone()).await;
    let mut client = server.client().await;
    let tunnel = create(&mut client, "queued", vec![spec(ChannelType::Stream, None)], None).await;
    while sync.entered.try_recv().is_ok() {}

    // The writer stalls on its fsync with the first append; the second waits in the queue.
    sync.hold.store(true, Ordering::SeqCst);
    let value = "v".repeat(600);
    let spawn_append = |client: &Client| {
        let (mut client, tunnel, value) = (client.clone(), tunnel.clone(), value.clone());
        tokio::spawn(async move { append_to(&mut client, &tunnel, Some(0), vec![record("k", value)]).await })
    };
    let first = spawn_append(&client);
    sync.entered
        .recv_timeout(LONG)
        .expect("the writer reaches its fsync");
    let second = spawn_append(&client);
    let deadline = std::time::Instant::now() + LONG;
    while durable.queued_bytes() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the second append never queued"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refused = append_to(&mut client, &tunnel, Some(0), vec![record("k", value.clone())])
        .await
        .expect_err("accepted beyond the queue's limit");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(kind(&refused), ErrorKind::Retryable);

    sync.hold.store(false, Ordering::SeqCst);
    sync.release.send(()).unwrap();
    let first = first.await.unwrap().expect("first stored");
    let second = second.await.unwrap().expect("second stored");
    let next = append_to(&mut client, &tunnel, Some(0), vec![record("k", "after")])
        .await
        .expect("accepted once the queue drained");
    assert_eq!(
        [
            first.channels[0].first_sequence_number,
            second.channels[0].first_sequence_number
        ],
        [0, 1]
    );
    assert_eq!(
        next.channels[0].first_sequence_number, 2,
        "the refused append left no gap"
    );
    assert_eq!(
        next.records,
        vec![v1::RecordPosition {
            channel_id: 0,
            sequence_number: 2
        }]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_store_reopens_at_once_with_versions_above_all_before() {
    let dir = tempfile::tempdir().unwrap();
    let store = TunnelStore::open_async(StoreOptions::durable(dir.path()))
        .await
        .unwrap();
    let server = serve(store.clone()).await;
    let mut client = server.client().await;
    let tunnel = create(
        &mut client,
        "versions",
        vec![spec(ChannelType::Base, None), spec(ChannelType::Stream, Some(0))],
        None,
    )
    .await;
    append_to(&mut client, &tunnel, Some(1), vec![record("k", "v"); 50])
        .await
        .unwrap();
    client
        .seal_channel(v1::SealChannelRequest {
            tunnel_id: tunnel.clone(),
            tunnel_name: String::new(),
            channel_id: 0,
        })
        .await
        .unwrap();
    // Channel 0 goes OPEN → TERMINATED, then channel 1 OPEN: versions 1, 2 and 1.
    let mut consumer = Consumer::connect(&server.url, &tunnel, Duration::from_secs(10)).await;
    heartbeat_until(std::slice::from_mut(&mut consumer), |c| {
        c[0].open_channels() == vec![0]
    })
    .await;
    let v = consumer.version(0);
    consumer.checkpoint(0, v, 0).await.unwrap();
    consumer.pending.push(v1::ChannelState {
        channel_id: 0,
        status: ChannelStatus::Terminated.into(),
        version: v + 1,
        channel_type: 0,
    });
    heartbeat_until(std::slice::from_mut(&mut consumer), |c| {
        c[0].open_channels() == vec![1]
    })
    .await;
    let before = describe(&mut client, &tunnel).await;
    let highest: Vec<i64> = before.channels.iter().map(|c| c.version).collect();

    // Readers in flight while the server stops.
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (mut client, tunnel) = (client.clone(), tunnel.clone());
            let (client_id, v1) = (consumer.client_id.clone(), consumer.version(1));
            let token = consumer.session_token.clone();
            tokio::spawn(async move {
                for _ in 0..1_000 {
                    if read_all(&mut client, &tunnel, &client_id, &token, 1, v1, 0)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            })
        })
        .collect();
    let TestServer {
        store: old,
        server: running,
        ..
    } = server;
    running.unwrap().stop(Duration::from_millis(200)).await.unwrap();
    old.close_async().await.unwrap();
    // Opened again at once, while `old` is still held: no retry needed.
    let store = TunnelStore::open_async(StoreOptions::durable(dir.path()))
        .await
        .expect("a closed store's directory opens at once");
    for reader in readers {
        reader.await.unwrap();
    }
    drop(old);
    let server = serve(store).await;
    let mut client = server.client().await;
    let after = describe(&mut client, &tunnel).await;
    assert_eq!(after.channels[1].end_sequence_number, 50);
    assert_eq!(after.channels[0].status, i32::from(v1::ChannelStatus::Terminated));
    for (c, (old, new)) in highest
        .iter()
        .zip(after.channels.iter().map(|c| c.version))
        .enumerate()
    {
        assert!(
            new > *old,
            "channel {c}: version {new} after the restart, {old} before"
        );
    }
    // And a new owner gets a version above everything before too.
    let mut consumer = Consumer::connect(&server.url, &tunnel, Duration::from_secs(10)).await;
    heartbeat_until(std::slice::from_mut(&mut consumer), |c| {
        c[0].open_channels() == vec![1]
    })
    .await;
    assert!(consumer.version(1) > highest[1]);
    server.stop().await;
}
