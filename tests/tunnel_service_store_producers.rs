//! Idempotent producers: a retried batch is stored once and answered with its original positions, across a
//! SIGKILL of `arbor serve` and while the original is still being stored; sequence numbers out of order are
//! refused naming `producer_sequence`; a tunnel remembers a bounded number of producers; every Append reports
//! each record's position.
#![cfg(feature = "tunnel-service")]

mod tunnel_service_common;
mod tunnel_service_store_common;

use std::sync::Arc;

use arbor::tunnel_service::store::{MemoryEngine, ProducerRef, TunnelRef};
use arbor::tunnel_service::{ServerOptions, StoreOptions, TunnelStore};
use arbor_proto::tunnel::domain::{route_key, ChannelType};
use arbor_proto::tunnel::error::{error_field, ErrorKind};
use arbor_proto::tunnel::v1;
use bytes::Bytes;
use tonic::Code;
use tunnel_service_common::*;
use tunnel_service_store_common::*;

const CHANNELS: u32 = 4;

fn batch(n: usize) -> Vec<v1::AppendRecord> {
    (0..n)
        .map(|i| record(format!("key-{i}"), format!("value-{i}")))
        .collect()
}

async fn append_as(
    client: &mut Client,
    tunnel: &str,
    records: Vec<v1::AppendRecord>,
    producer: &str,
    sequence: u64,
) -> Result<v1::AppendResponse, tonic::Status> {
    client
        .append(v1::AppendRequest {
            tunnel_id: tunnel.into(),
            tunnel_name: String::new(),
            channel_id: None,
            records,
            producer_id: producer.into(),
            producer_sequence: sequence,
        })
        .await
        .map(|r| r.into_inner())
}

/// Every record once per channel: the ends add up to the records stored.
async fn stored(client: &mut Client, tunnel: &str) -> u64 {
    describe(client, tunnel)
        .await
        .channels
        .iter()
        .map(|c| c.end_sequence_number)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_sigkill_is_a_duplicate_with_the_original_positions() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = ServeProcess::durable(dir.path());
    let mut client = client(&serve.url).await;
    let tunnel = create_streams(&mut client, "idempotent", CHANNELS).await;
    append_as(&mut client, &tunnel, batch(5), "producer-1", 41)
        .await
        .unwrap();
    let original = append_as(&mut client, &tunnel, batch(20), "producer-1", 42)
        .await
        .unwrap();
    assert!(!original.duplicate);
    assert_eq!(original.records.len(), 20);
    for (i, position) in original.records.iter().enumerate() {
        assert_eq!(
            position.channel_id,
            route_key(format!("key-{i}").as_bytes(), CHANNELS)
        );
    }

    serve.sigkill();
    let serve = ServeProcess::durable(dir.path());
    let mut client = tunnel_service_common::client(&serve.url).await;
    let retried = append_as(&mut client, &tunnel, batch(20), "producer-1", 42)
        .await
        .expect("the retry is answered");
    assert!(retried.duplicate, "the retry is a duplicate");
    assert_eq!(retried.records, original.records, "with the original positions");
    assert_eq!(retried.channels, original.channels);
    assert_eq!(stored(&mut client, &tunnel).await, 25, "nothing stored twice");

    // Out of order: refused naming the field, nothing stored.
    for bad in [40, 44] {
        let refused = append_as(&mut client, &tunnel, batch(1), "producer-1", bad)
            .await
            .expect_err("out of order");
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert_eq!(kind(&refused), ErrorKind::Fatal);
        assert_eq!(error_field(&refused), Some("producer_sequence"), "{refused:?}");
    }
    // The next one is new; another producer starts anywhere.
    let next = append_as(&mut client, &tunnel, batch(2), "producer-1", 43)
        .await
        .unwrap();
    assert!(!next.duplicate);
    let other = append_as(&mut client, &tunnel, batch(2), "producer-2", 7)
        .await
        .unwrap();
    assert!(!other.duplicate);
    assert_eq!(stored(&mut client, &tunnel).await, 29);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_while_the_original_is_in_flight_stores_once() {
    let engine = Gated::new(Arc::new(MemoryEngine::new()));
    let store = TunnelStore::with_engine(engine.clone(), StoreOptions::in_memory()).unwrap();
    let server = serve(store.clone()).await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "in-flight", CHANNELS).await;

    engine.close_gate();
    let before = engine.submitted();
    let records: Vec<(Bytes, Bytes)> = batch(10).into_iter().map(|r| (r.key, r.value)).collect();
    let producer = Some(ProducerRef {
        id: "p".into(),
        sequence: 1,
    });
    let target = TunnelRef::Id(tunnel.clone());
    let original = tokio::spawn({
        let (store, target, records, producer) =
            (store.clone(), target.clone(), records.clone(), producer.clone());
        async move { store.append(&target, None, records, producer).await }
    });
    engine.wait_submitted(before + 1).await;
    // The retry comes while the original waits for its acknowledgement (its client gave up on it).
    let retry = tokio::spawn({
        let (store, target) = (store.clone(), target.clone());
        async move { store.append(&target, None, records, producer).await }
    });
    let submitted = engine.submitted();
    engine.open_gate();
    let original = original.await.unwrap().expect("original stored");
    let retry = retry.await.unwrap().expect("retry answered");
    assert!(!original.duplicate);
    assert!(retry.duplicate);
    assert_eq!(retry.records, original.records);
    assert_eq!(engine.submitted(), submitted, "the retry submitted nothing");
    assert_eq!(stored(&mut client, &tunnel).await, 10, "stored once");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_recently_used_producer_is_forgotten_beyond_the_limit() {
    let server = TestServer::start(
        StoreOptions::in_memory().max_producers_per_tunnel(2),
        ServerOptions::default(),
    )
    .await;
    let mut client = server.client().await;
    let limits = client
        .get_limits(v1::GetLimitsRequest {})
        .await
        .unwrap()
        .into_inner()
        .limits
        .unwrap();
    assert_eq!(limits.max_producers_per_tunnel, 2);
    let tunnel = create_streams(&mut client, "lru", 2).await;
    for producer in ["a", "b"] {
        append_as(&mut client, &tunnel, batch(1), producer, 0)
            .await
            .unwrap();
    }
    // "a" is used again, so "b" is the least recently used when "c" comes.
    assert!(
        append_as(&mut client, &tunnel, batch(1), "a", 0)
            .await
            .unwrap()
            .duplicate
    );
    append_as(&mut client, &tunnel, batch(1), "c", 0).await.unwrap();
    assert!(
        append_as(&mut client, &tunnel, batch(1), "a", 0)
            .await
            .unwrap()
            .duplicate
    );
    assert!(
        append_as(&mut client, &tunnel, batch(1), "c", 0)
            .await
            .unwrap()
            .duplicate
    );
    let forgotten = append_as(&mut client, &tunnel, batch(1), "b", 0).await.unwrap();
    assert!(!forgotten.duplicate, "b was forgotten: its batch is taken as new");
    assert_eq!(stored(&mut client, &tunnel).await, 4);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_append_reports_each_records_position_in_request_order() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create(
        &mut client,
        "positions",
        vec![
            spec(ChannelType::Base, None),
            spec(ChannelType::Stream, None),
            spec(ChannelType::Stream, None),
        ],
        None,
    )
    .await;
    let named = append_to(&mut client, &tunnel, Some(0), batch(3)).await.unwrap();
    let positions: Vec<(u32, u64)> = named
        .records
        .iter()
        .map(|p| (p.channel_id, p.sequence_number))
        .collect();
    assert_eq!(positions, vec![(0, 0), (0, 1), (0, 2)]);
    let routed = append_to(&mut client, &tunnel, None, batch(30)).await.unwrap();
    assert_eq!(routed.records.len(), 30);
    let mut next = std::collections::BTreeMap::new();
    for (i, p) in routed.records.iter().enumerate() {
        // Stream channel number route_key(key) % 2, i.e. channel 1 or 2.
        let expected = 1 + route_key(format!("key-{i}").as_bytes(), 2);
        assert_eq!(p.channel_id, expected, "record {i}");
        let at = next.entry(p.channel_id).or_insert(0u64);
        assert_eq!(p.sequence_number, *at, "record {i}: consecutive in request order");
        *at += 1;
    }
    let refused = client
        .append(v1::AppendRequest {
            tunnel_id: tunnel.clone(),
            records: batch(1),
            producer_sequence: 3,
            ..Default::default()
        })
        .await
        .expect_err("a sequence without a producer id");
    assert_eq!(error_field(&refused), Some("producer_id"));
    server.stop().await;
}
