//! Consumers of a tunnel at the gRPC level: balanced sticky assignment, heartbeat expiry, the CLOSING → CLOSE
//! → OPEN hand-over (never two owners, checked on the server's own assignment history), fencing of zombie
//! owners, Shutdown, and base → stream parenthood. Real server on 127.0.0.1, plain tonic clients.
#![cfg(feature = "tunnel-service")]

mod tunnel_service_common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arbor::tunnel_service::AssignmentEvent;
use arbor_proto::tunnel::domain::{ChannelStatus, ChannelType};
use arbor_proto::tunnel::error::ErrorKind;
use arbor_proto::tunnel::v1;
use tonic::Code;
use tunnel_service_common::*;

const TIMEOUT: Duration = Duration::from_secs(10);

fn loads(consumers: &[Consumer]) -> Vec<usize> {
    consumers.iter().map(|c| c.open_channels().len()).collect()
}

fn balanced(consumers: &[Consumer], channels: usize) -> bool {
    let loads = loads(consumers);
    let closing = consumers
        .iter()
        .flat_map(|c| c.owned.values())
        .any(|(s, _)| *s == ChannelStatus::Closing);
    !closing
        && loads.iter().sum::<usize>() == channels
        && loads.iter().max().unwrap() - loads.iter().min().unwrap() <= 1
}

/// Replays the server's history: a channel is only ever opened for a client when nobody holds it, and only
/// its holder's state changes while it is held. Returns the number of OPEN events checked.
fn assert_never_two_owners(history: &[AssignmentEvent]) -> usize {
    let mut holder: BTreeMap<u32, Option<String>> = BTreeMap::new();
    let mut last_version: BTreeMap<u32, i64> = BTreeMap::new();
    let mut opens = 0;
    for e in history {
        let held = holder.entry(e.channel_id).or_insert(None);
        let v = last_version.entry(e.channel_id).or_insert(i64::MIN);
        assert!(e.version.get() > *v, "versions grow: {e:?} after v{v}");
        *v = e.version.get();
        match e.status {
            ChannelStatus::Open => {
                assert!(
                    held.is_none(),
                    "channel {} opened for {:?} while {:?} holds it",
                    e.channel_id,
                    e.owner,
                    held
                );
                *held = e.owner.clone();
                opens += 1;
            }
            ChannelStatus::Closing => {
                assert_eq!(held.as_ref(), e.owner.as_ref(), "CLOSING keeps the holder: {e:?}");
            }
            _ => *held = None,
        }
    }
    opens
}

#[tokio::test]
async fn three_clients_settle_balanced_and_a_fourth_moves_only_its_share() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "balanced", 8).await;
    let mut consumers = Vec::new();
    for _ in 0..3 {
        consumers.push(Consumer::connect(&server.url, &tunnel, TIMEOUT).await);
    }
    heartbeat_until(&mut consumers, |c| balanced(c, 8)).await;
    let mut sorted = loads(&consumers);
    sorted.sort();
    assert_eq!(sorted, vec![2, 3, 3]);
    // Each channel has exactly one owner, as the server describes it.
    let info = describe(&mut client, &tunnel).await;
    for c in &info.channels {
        assert_eq!(c.status, v1::ChannelStatus::Open as i32);
        let owners = consumers
            .iter()
            .filter(|k| k.open_channels().contains(&c.channel_id))
            .count();
        assert_eq!(owners, 1, "channel {}", c.channel_id);
        assert!(consumers.iter().any(|k| k.client_id == c.owner_client_id));
    }

    let opens_before = assert_never_two_owners(&server.store.assignment_history(&tunnel).unwrap());
    let before: BTreeMap<u32, String> = info
        .channels
        .iter()
        .map(|c| (c.channel_id, c.owner_client_id.clone()))
        .collect();
    consumers.push(Consumer::connect(&server.url, &tunnel, TIMEOUT).await);
    heartbeat_until(&mut consumers, |c| balanced(c, 8)).await;
    assert_eq!(loads(&consumers), vec![2, 2, 2, 2]);
    let newcomer = consumers[3].client_id.clone();
    let info = describe(&mut client, &tunnel).await;
    let moved: Vec<u32> = info
        .channels
        .iter()
        .filter(|c| before[&c.channel_id] != c.owner_client_id)
        .map(|c| c.channel_id)
        .collect();
    assert_eq!(
        moved.len(),
        2,
        "sticky: only the newcomer's share moved: {moved:?}"
    );
    for c in &moved {
        assert_eq!(info.channels[*c as usize].owner_client_id, newcomer);
    }
    let history = server.store.assignment_history(&tunnel).unwrap();
    assert_eq!(
        assert_never_two_owners(&history),
        opens_before + 2,
        "the newcomer's two channels were the only ones opened again"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_heartbeating_loses_its_channels_to_the_others() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "expiry", 8).await;
    let short = Duration::from_millis(1_000);
    let mut consumers = Vec::new();
    for _ in 0..3 {
        consumers.push(Consumer::connect(&server.url, &tunnel, short).await);
    }
    heartbeat_until(&mut consumers, |c| balanced(c, 8)).await;
    let mut silent = consumers.pop().unwrap();
    let silent_channels = silent.open_channels();
    assert!(!silent_channels.is_empty());
    let stopped = Instant::now();
    heartbeat_until(&mut consumers, |c| balanced(c, 8)).await;
    assert!(
        stopped.elapsed() >= short,
        "channels moved only after the timeout ({:?})",
        stopped.elapsed()
    );
    assert_eq!(loads(&consumers), vec![4, 4]);
    let history = server.store.assignment_history(&tunnel).unwrap();
    for channel in &silent_channels {
        assert!(
            history.iter().any(|e| e.channel_id == *channel
                && e.reason == "client-expired"
                && e.status == ChannelStatus::Close),
            "channel {channel} was taken back on expiry"
        );
    }
    assert_never_two_owners(&history);
    // The expired client learns it from its next call: ownership lost, reconnect.
    let status = silent.heartbeat().await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(kind(&status), ErrorKind::OwnershipLost);
    server.stop().await;
}

#[tokio::test]
async fn hand_over_waits_for_close_and_never_gives_a_channel_to_two_owners() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "handover", 4).await;
    append_to(
        &mut client,
        &tunnel,
        Some(0),
        vec![record("k", "v0"), record("k", "v1")],
    )
    .await
    .unwrap();
    let mut first = Consumer::connect(&server.url, &tunnel, TIMEOUT).await;
    first.release_closing = false;
    first.heartbeat().await.unwrap();
    assert_eq!(first.open_channels(), vec![0, 1, 2, 3]);

    let mut second = Consumer::connect(&server.url, &tunnel, TIMEOUT).await;
    second.heartbeat().await.unwrap();
    first.heartbeat().await.unwrap();
    let closing: Vec<u32> = first
        .owned
        .iter()
        .filter(|(_, (s, _))| *s == ChannelStatus::Closing)
        .map(|(&c, _)| c)
        .collect();
    assert_eq!(
        closing.len(),
        2,
        "two channels move to the newcomer: {:?}",
        first.owned
    );
    // While the first owner drains, the channels are not given to the second, however often it asks.
    for _ in 0..5 {
        second.heartbeat().await.unwrap();
        first.heartbeat().await.unwrap();
        assert!(
            second.owned.is_empty(),
            "given away before CLOSE: {:?}",
            second.owned
        );
    }
    // The old owner may still checkpoint while CLOSING (flush before release), under its lease's version.
    let drained = closing[0];
    let v = first.version(drained);
    if drained == 0 {
        first.checkpoint(0, v, 2).await.unwrap();
    } else {
        first.checkpoint(drained, v, 0).await.unwrap();
    }
    // It reports CLOSE (version + 1); only then does the newcomer get the channels.
    first.release_closing = true;
    first.heartbeat().await.unwrap();
    second.heartbeat().await.unwrap();
    assert_eq!(second.open_channels(), closing);
    for c in &closing {
        assert!(!first.owned.contains_key(c));
        assert!(second.version(*c) > v, "the new lease has a higher version");
    }
    let history = server.store.assignment_history(&tunnel).unwrap();
    assert_eq!(assert_never_two_owners(&history), 6);
    for c in &closing {
        let reasons: Vec<(&str, ChannelStatus)> = history
            .iter()
            .filter(|e| e.channel_id == *c)
            .map(|e| (e.reason.as_str(), e.status))
            .collect();
        assert_eq!(
            reasons,
            vec![
                ("rebalance", ChannelStatus::Open),
                ("rebalance", ChannelStatus::Closing),
                ("released", ChannelStatus::Close),
                ("rebalance", ChannelStatus::Open)
            ],
            "channel {c}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn zombie_owners_cannot_read_or_checkpoint() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "zombies", 1).await;
    append_to(
        &mut client,
        &tunnel,
        None,
        (0..10).map(|i| record("k", format!("v{i}"))).collect(),
    )
    .await
    .unwrap();

    // A zombie by expiry: it stops heartbeating, the channel goes to another client.
    let mut zombie = Consumer::connect(&server.url, &tunnel, Duration::from_millis(300)).await;
    zombie.heartbeat().await.unwrap();
    let old_version = zombie.version(0);
    zombie.checkpoint(0, old_version, 3).await.unwrap();
    let mut heir = Consumer::connect(&server.url, &tunnel, TIMEOUT).await;
    heartbeat_until(std::slice::from_mut(&mut heir), |c| {
        c[0].open_channels() == vec![0]
    })
    .await;
    let new_version = heir.version(0);
    assert_eq!(
        heir.get_checkpoint(0, new_version)
            .await
            .unwrap()
            .checkpoint_sequence_number,
        3
    );
    heir.checkpoint(0, new_version, 7).await.unwrap();

    for status in [
        zombie.read(0, old_version, 3).await.unwrap_err(),
        zombie.checkpoint(0, old_version, 10).await.unwrap_err(),
        zombie.get_checkpoint(0, old_version).await.unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::Aborted, "{status:?}");
        assert_eq!(kind(&status), ErrorKind::OwnershipLost);
    }
    // A live client that is not the owner, or the owner under a version from outside its lease, is refused too.
    let refused = [
        zombie.checkpoint(0, new_version, 10).await.unwrap_err(),
        heir.checkpoint(0, old_version, 10).await.unwrap_err(),
        heir.checkpoint(0, new_version + 5, 10).await.unwrap_err(),
    ];
    for status in refused {
        assert_eq!(kind(&status), ErrorKind::OwnershipLost, "{status:?}");
    }
    let info = describe(&mut client, &tunnel).await;
    assert_eq!(
        info.channels[0].checkpoint_sequence_number, 7,
        "no zombie moved the checkpoint"
    );
    assert_eq!(info.channels[0].owner_client_id, heir.client_id);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_releases_at_once() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "leaving", 4).await;
    let mut consumers = vec![
        Consumer::connect(&server.url, &tunnel, TIMEOUT).await,
        Consumer::connect(&server.url, &tunnel, TIMEOUT).await,
    ];
    heartbeat_until(&mut consumers, |c| balanced(c, 4)).await;
    let leaving = consumers.pop().unwrap();
    let mut raw = leaving.client.clone();
    raw.shutdown(v1::ShutdownRequest {
        tunnel_id: tunnel.clone(),
        client_id: leaving.client_id.clone(),
        session_token: leaving.session_token.clone(),
    })
    .await
    .unwrap();
    // Without waiting for any timeout (10 s here), the remaining client gets everything at its next heartbeat.
    consumers[0].heartbeat().await.unwrap();
    assert_eq!(consumers[0].open_channels(), vec![0, 1, 2, 3]);
    let again = raw
        .shutdown(v1::ShutdownRequest {
            tunnel_id: tunnel.clone(),
            client_id: leaving.client_id.clone(),
            session_token: leaving.session_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(kind(&again), ErrorKind::OwnershipLost);
    server.stop().await;
}

#[tokio::test]
async fn a_stream_channel_waits_for_its_base_parent_to_terminate() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create(
        &mut client,
        "parented",
        vec![spec(ChannelType::Base, None), spec(ChannelType::Stream, Some(0))],
        None,
    )
    .await;
    append_to(
        &mut client,
        &tunnel,
        Some(0),
        vec![record("", "base-0"), record("", "base-1")],
    )
    .await
    .unwrap();
    append_to(&mut client, &tunnel, None, vec![record("k", "change-0")])
        .await
        .unwrap();
    let mut consumer = Consumer::connect(&server.url, &tunnel, TIMEOUT).await;
    consumer.heartbeat().await.unwrap();
    assert_eq!(
        consumer.open_channels(),
        vec![0],
        "the stream child is not assigned yet"
    );
    let v = consumer.version(0);

    // Not sealed yet: the read ends at the current end without `finished`, and TERMINATED is refused.
    let messages = consumer.read(0, v, 0).await.unwrap();
    assert!(!messages.last().unwrap().finished);
    consumer.checkpoint(0, v, 2).await.unwrap();
    consumer.pending.push(v1::ChannelState {
        channel_id: 0,
        status: ChannelStatus::Terminated.into(),
        version: v + 1,
        channel_type: 0,
    });
    let refused = consumer.heartbeat().await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    consumer.heartbeat().await.unwrap();
    assert_eq!(consumer.open_channels(), vec![0]);

    client
        .seal_channel(v1::SealChannelRequest {
            tunnel_id: tunnel.clone(),
            tunnel_name: String::new(),
            channel_id: 0,
        })
        .await
        .unwrap();
    let messages = consumer.read(0, v, 2).await.unwrap();
    assert_eq!(messages.len(), 1);
    assert!(messages[0].finished && messages[0].records.is_empty() && messages[0].next_sequence_number == 2);
    let checkpoint = consumer.get_checkpoint(0, v).await.unwrap();
    assert!(checkpoint.finished);
    assert_eq!(checkpoint.channel_type, i32::from(ChannelType::Base));
    consumer.pending.push(v1::ChannelState {
        channel_id: 0,
        status: ChannelStatus::Terminated.into(),
        version: v + 1,
        channel_type: 0,
    });
    consumer.heartbeat().await.unwrap();
    assert_eq!(
        consumer.open_channels(),
        vec![1],
        "the parent finished, the child starts"
    );
    let info = describe(&mut client, &tunnel).await;
    assert_eq!(info.channels[0].status, v1::ChannelStatus::Terminated as i32);
    let v1_ = consumer.version(1);
    let records: Vec<_> = consumer
        .read(1, v1_, 0)
        .await
        .unwrap()
        .into_iter()
        .flat_map(|m| m.records)
        .collect();
    assert_eq!(records.len(), 1);
    assert_eq!(&records[0].value[..], b"change-0");
    server.stop().await;
}

#[tokio::test]
async fn a_long_poll_read_wakes_on_append() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "tail", 1).await;
    let mut consumer = Consumer::connect(&server.url, &tunnel, TIMEOUT).await;
    consumer.heartbeat().await.unwrap();
    let v = consumer.version(0);
    let mut reader = consumer.client.clone();
    let (tunnel_id, client_id) = (tunnel.clone(), consumer.client_id.clone());
    let session_token = consumer.session_token.clone();
    let started = Instant::now();
    let read = tokio::spawn(async move {
        let mut stream = reader
            .read_records(v1::ReadRecordsRequest {
                tunnel_id,
                client_id,
                session_token,
                channel_id: 0,
                channel_version: v,
                from_sequence_number: 0,
                max_wait_ms: 15_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut records = Vec::new();
        while let Some(m) = stream.message().await.unwrap() {
            records.extend(m.records);
        }
        records
    });
    append_to(&mut client, &tunnel, None, vec![record("k", "late")])
        .await
        .unwrap();
    let records = read.await.unwrap();
    assert_eq!(records.len(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken by the append, not by the wait's end"
    );
    server.stop().await;
}
