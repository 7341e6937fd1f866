//! Durability and retention: the `arbor serve` binary in durable mode is SIGKILLed in the middle of a stream of
//! Appends and Checkpoints and restarted on the same directory — every acknowledged record and checkpoint is
//! there, in order, nothing duplicated; SIGTERM stops it cleanly; retention trims by size and age, and reading
//! or checkpointing below the retained range is the out-of-range kind.
#![cfg(feature = "tunnel-service")]

mod tunnel_service_common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arbor::tunnel_service::{ServerOptions, StoreOptions};
use arbor_proto::tunnel::domain::route_key;
use arbor_proto::tunnel::error::{error_field, ErrorKind};
use arbor_proto::tunnel::v1;
use tonic::Code;
use tunnel_service_common::*;

const CHANNELS: u32 = 4;

/// What the producer and the consumer were told was stored.
#[derive(Default)]
struct Acknowledged {
    /// (channel, sequence number) → value, for every record of an acknowledged Append.
    records: BTreeMap<(u32, u64), String>,
    /// Channel → every checkpoint acknowledged, in order.
    checkpoints: BTreeMap<u32, Vec<u64>>,
    /// Channel → every checkpoint attempted (acknowledged or not).
    attempted: BTreeMap<u32, BTreeSet<u64>>,
}

async fn produce(
    producer: u32,
    url: String,
    tunnel: String,
    acked: Arc<Mutex<Acknowledged>>,
    stop: Arc<AtomicBool>,
) {
    let mut client = client(&url).await;
    for batch in 0..100_000u64 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let records: Vec<(String, String)> = (0..20)
            .map(|i| {
                (
                    format!("key-{}", (batch * 7 + i) % 11),
                    format!("p{producer}-b{batch}-r{i}"),
                )
            })
            .collect();
        let request = records
            .iter()
            .map(|(k, v)| record(k.as_str(), v.as_str()))
            .collect();
        let Ok(response) = append_to(&mut client, &tunnel, None, request).await else {
            return; // the server died: this batch is not acknowledged
        };
        let mut acked = acked.lock().unwrap();
        let mut next: BTreeMap<u32, u64> = response
            .channels
            .iter()
            .map(|c| (c.channel_id, c.first_sequence_number))
            .collect();
        for (k, v) in records {
            let channel = route_key(k.as_bytes(), CHANNELS);
            let seq = next.get_mut(&channel).expect("routed as predicted");
            acked.records.insert((channel, *seq), v);
            *seq += 1;
        }
    }
}

async fn consume(url: String, tunnel: String, acked: Arc<Mutex<Acknowledged>>, stop: Arc<AtomicBool>) {
    let mut consumer = Consumer::connect(&url, &tunnel, Duration::from_secs(10)).await;
    while !stop.load(Ordering::Relaxed) {
        if consumer.heartbeat().await.is_err() {
            return;
        }
        for channel in consumer.open_channels() {
            let v = consumer.version(channel);
            let Ok(position) = consumer.get_checkpoint(channel, v).await else {
                return;
            };
            let Ok(messages) = consumer
                .read(channel, v, position.checkpoint_sequence_number)
                .await
            else {
                return;
            };
            let Some(next) = messages.last().map(|m| m.next_sequence_number) else {
                continue;
            };
            acked
                .lock()
                .unwrap()
                .attempted
                .entry(channel)
                .or_default()
                .insert(next);
            if consumer.checkpoint(channel, v, next).await.is_err() {
                return;
            }
            acked
                .lock()
                .unwrap()
                .checkpoints
                .entry(channel)
                .or_default()
                .push(next);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_nothing_acknowledged() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut serve = ServeProcess::durable(dir.path());
    let tunnel = create_streams(&mut client(&serve.url).await, "durable", CHANNELS).await;
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..2)
        .map(|p| {
            tokio::spawn(produce(
                p,
                serve.url.clone(),
                tunnel.clone(),
                acked.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let consumer = tokio::spawn(consume(
        serve.url.clone(),
        tunnel.clone(),
        acked.clone(),
        stop.clone(),
    ));

    // Kill once enough was acknowledged, with producers and the consumer still sending.
    let deadline = Instant::now() + LONG;
    loop {
        let (records, checkpoints) = {
            let a = acked.lock().unwrap();
            (
                a.records.len(),
                a.checkpoints.values().map(Vec::len).sum::<usize>(),
            )
        };
        if records >= 2_000 && checkpoints >= 8 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "too little traffic: {records} records, {checkpoints} checkpoints"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    serve.sigkill();
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }
    consumer.await.unwrap();
    let acked = Arc::try_unwrap(acked).ok().unwrap().into_inner().unwrap();

    let serve = ServeProcess::durable(dir.path());
    let mut admin = client(&serve.url).await;
    let info = describe(&mut admin, &tunnel).await;
    let mut reader = Consumer::connect(&serve.url, &tunnel, Duration::from_secs(10)).await;
    heartbeat_until(std::slice::from_mut(&mut reader), |c| {
        c[0].open_channels().len() == CHANNELS as usize
    })
    .await;
    let mut seen_values = BTreeSet::new();
    let mut checked = 0;
    for channel in 0..CHANNELS {
        let v = reader.version(channel);
        let records: Vec<v1::Record> = reader
            .read(channel, v, 0)
            .await
            .unwrap()
            .into_iter()
            .flat_map(|m| m.records)
            .collect();
        assert_eq!(
            records.len() as u64,
            info.channels[channel as usize].end_sequence_number
        );
        for (i, r) in records.iter().enumerate() {
            assert_eq!(
                r.sequence_number, i as u64,
                "channel {channel}: consecutive, in order"
            );
            let value = String::from_utf8(r.value.to_vec()).unwrap();
            assert!(seen_values.insert(value.clone()), "record {value} stored twice");
            if let Some(expected) = acked.records.get(&(channel, r.sequence_number)) {
                assert_eq!(&value, expected, "channel {channel} seq {}", r.sequence_number);
                checked += 1;
            }
        }
        // Every acknowledged record is there (the log may hold a few more: appended, not yet answered).
        let acked_here = acked.records.range((channel, 0)..(channel + 1, 0)).count();
        let end = records.len() as u64;
        assert!(
            acked
                .records
                .range((channel, 0)..(channel + 1, 0))
                .all(|((_, seq), _)| *seq < end),
            "channel {channel}: acknowledged records beyond the recovered end {end}"
        );
        let _ = acked_here;
        // The checkpoint is the last acknowledged one, or a later one that was written but not yet answered.
        let recovered = reader
            .get_checkpoint(channel, v)
            .await
            .unwrap()
            .checkpoint_sequence_number;
        if let Some(last) = acked.checkpoints.get(&channel).and_then(|c| c.last()) {
            assert!(
                recovered >= *last,
                "channel {channel}: checkpoint {recovered} < acknowledged {last}"
            );
            assert!(
                acked.attempted[&channel].contains(&recovered),
                "channel {channel}: checkpoint {recovered} never sent"
            );
        }
    }
    assert_eq!(
        checked,
        acked.records.len(),
        "every acknowledged record was found"
    );
}

#[test]
fn sigterm_stops_cleanly_and_a_restart_serves_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut serve = ServeProcess::durable(dir.path());
    let tunnel = rt.block_on(async {
        let mut c = client(&serve.url).await;
        let tunnel = create_streams(&mut c, "kept", 2).await;
        append_to(
            &mut c,
            &tunnel,
            Some(1),
            vec![record("a", "one"), record("b", "two")],
        )
        .await
        .unwrap();
        tunnel
    });
    let status = serve.sigterm();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    let serve = ServeProcess::durable(dir.path());
    rt.block_on(async {
        let info = describe(&mut client(&serve.url).await, &tunnel).await;
        assert_eq!(info.tunnel_name, "kept");
        assert_eq!(info.channels[1].end_sequence_number, 2);
    });
}

#[tokio::test]
async fn size_retention_trims_and_out_of_range_is_refused_by_kind() {
    size_retention(TestServer::memory().await).await;
}

#[tokio::test]
async fn size_retention_trims_durably_and_out_of_range_is_refused_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    size_retention(TestServer::start(StoreOptions::durable(dir.path()), ServerOptions::default()).await)
        .await;
}

async fn size_retention(server: TestServer) {
    let mut client = server.client().await;
    let retention = v1::RetentionPolicy {
        max_age_ms: 0,
        max_bytes_per_channel: 10_000,
    };
    let tunnel = create(
        &mut client,
        "bounded",
        vec![spec(arbor_proto::tunnel::domain::ChannelType::Stream, None)],
        Some(retention),
    )
    .await;
    let mut consumer = Consumer::connect(&server.url, &tunnel, Duration::from_secs(10)).await;
    consumer.heartbeat().await.unwrap();
    let v = consumer.version(0);
    for batch in 0..10 {
        // 10 records of 200 bytes: 2,000 bytes a batch.
        let records = (0..10)
            .map(|i| record("", format!("{batch}-{i}-{}", "x".repeat(200))[..200].to_string()))
            .collect();
        append_to(&mut client, &tunnel, Some(0), records).await.unwrap();
    }
    let info = describe(&mut client, &tunnel).await;
    let channel = &info.channels[0];
    assert_eq!(channel.end_sequence_number, 100);
    assert_eq!(
        channel.first_retained_sequence_number, 50,
        "5 batches of 2,000 bytes are kept"
    );

    let below = consumer.read(0, v, 10).await.unwrap_err();
    assert_eq!(below.code(), Code::OutOfRange);
    assert_eq!(kind(&below), ErrorKind::CheckpointOutOfRange);
    assert_eq!(error_field(&below), Some("from_sequence_number"));
    let below = consumer.checkpoint(0, v, 49).await.unwrap_err();
    assert_eq!(kind(&below), ErrorKind::CheckpointOutOfRange);
    assert_eq!(error_field(&below), Some("sequence_number"));
    // Nothing is skipped silently: the checkpoint stays below the retained range until the client decides.
    let position = consumer.get_checkpoint(0, v).await.unwrap();
    assert_eq!(
        (
            position.checkpoint_sequence_number,
            position.first_retained_sequence_number
        ),
        (0, 50)
    );
    let records: Vec<_> = consumer
        .read(0, v, 50)
        .await
        .unwrap()
        .into_iter()
        .flat_map(|m| m.records)
        .collect();
    assert_eq!(records.first().map(|r| r.sequence_number), Some(50));
    assert_eq!(records.len(), 50);
    consumer.checkpoint(0, v, 100).await.unwrap();
    let beyond = consumer.checkpoint(0, v, 101).await.unwrap_err();
    assert_eq!(beyond.code(), Code::InvalidArgument);
    assert_eq!(error_field(&beyond), Some("sequence_number"));
    server.stop().await;
}

#[tokio::test]
async fn age_retention_trims_durably() {
    let dir = tempfile::tempdir().unwrap();
    let options = || ServerOptions::default().maintenance_interval(Duration::from_millis(20));
    let server = TestServer::start(StoreOptions::durable(dir.path()), options()).await;
    let mut client = server.client().await;
    let retention = v1::RetentionPolicy {
        max_age_ms: 300,
        max_bytes_per_channel: 0,
    };
    let tunnel = create(
        &mut client,
        "aging",
        vec![spec(arbor_proto::tunnel::domain::ChannelType::Stream, None)],
        Some(retention),
    )
    .await;
    append_to(
        &mut client,
        &tunnel,
        Some(0),
        (0..5).map(|i| record("", format!("old-{i}"))).collect(),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + LONG;
    while describe(&mut client, &tunnel).await.channels[0].first_retained_sequence_number < 5 {
        assert!(
            Instant::now() < deadline,
            "records older than 300 ms were not trimmed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
    // Reopened: the trimmed range stays trimmed and new records continue the sequence.
    let server = TestServer::start(StoreOptions::durable(dir.path()), options()).await;
    let mut client = server.client().await;
    let info = describe(&mut client, &tunnel).await;
    assert_eq!(info.channels[0].first_retained_sequence_number, 5);
    assert_eq!(info.channels[0].end_sequence_number, 5);
    let appended = append_to(&mut client, &tunnel, Some(0), vec![record("", "new")])
        .await
        .unwrap();
    assert_eq!(appended.channels[0].first_sequence_number, 5);
    server.stop().await;
}
