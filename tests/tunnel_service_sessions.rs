//! Sessions of the tunnel service: the client id is public (DescribeTunnel shows it), so only the session's
//! secret lets a call act for the session; a waiting ReadRecords ends as soon as its lease or its channel does;
//! a call whose server crashed is retryable. Real servers on 127.0.0.1 (in-process, or `arbor serve` killed by
//! pid), plain tonic clients.
#![cfg(feature = "tunnel-service")]

mod tunnel_service_common;

use std::time::Duration;

use arbor_proto::tunnel::error::ErrorKind;
use arbor_proto::tunnel::v1;
use tonic::Code;
use tunnel_service_common::*;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Every session call a client can make for `client_id` with `token`, each with the error it got (or `None`
/// when the call succeeded).
async fn act_for(
    client: &mut Client,
    tunnel_id: &str,
    client_id: &str,
    token: &str,
    version: i64,
    end: u64,
) -> Vec<(&'static str, Option<tonic::Status>)> {
    let (tunnel_id, client_id, token) = (tunnel_id.to_string(), client_id.to_string(), token.to_string());
    let checkpoint = client
        .checkpoint(v1::CheckpointRequest {
            tunnel_id: tunnel_id.clone(),
            client_id: client_id.clone(),
            channel_id: 0,
            channel_version: version,
            sequence_number: end,
            session_token: token.clone(),
        })
        .await
        .err();
    let read = read_all(client, &tunnel_id, &client_id, &token, 0, version, 0)
        .await
        .err();
    let get_checkpoint = client
        .get_checkpoint(v1::GetCheckpointRequest {
            tunnel_id: tunnel_id.clone(),
            client_id: client_id.clone(),
            channel_id: 0,
            channel_version: version,
            session_token: token.clone(),
        })
        .await
        .err();
    // A heartbeat that would give the channel up (CLOSE at version + 1) if it were accepted.
    let heartbeat = client
        .heartbeat(v1::HeartbeatRequest {
            tunnel_id: tunnel_id.clone(),
            client_id: client_id.clone(),
            channels: vec![v1::ChannelState {
                channel_id: 0,
                status: v1::ChannelStatus::Close as i32,
                version: version + 1,
                channel_type: 0,
            }],
            session_token: token.clone(),
        })
        .await
        .err();
    let shutdown = client
        .shutdown(v1::ShutdownRequest {
            tunnel_id,
            client_id,
            session_token: token,
        })
        .await
        .err();
    vec![
        ("Checkpoint", checkpoint),
        ("ReadRecords", read),
        ("GetCheckpoint", get_checkpoint),
        ("Heartbeat", heartbeat),
        ("Shutdown", shutdown),
    ]
}

#[tokio::test]
async fn a_client_that_knows_another_sessions_id_cannot_act_for_it() {
    let server = TestServer::memory().await;
    let mut admin = server.client().await;
    let tunnel = create_streams(&mut admin, "victim", 1).await;
    let mut victim = Consumer::connect(&server.url, &tunnel, TIMEOUT).await;
    victim.heartbeat().await.unwrap();
    let version = victim.version(0);
    let records = (0..5).map(|i| record("k", format!("v{i}"))).collect();
    append_to(&mut admin, &tunnel, Some(0), records).await.unwrap();

    assert!(
        victim.session_token.len() >= 32,
        "at least 128 bits: {} hex digits",
        victim.session_token.len()
    );
    assert_ne!(victim.session_token, victim.client_id);

    // The attacker has a session of its own and reads the victim's client id and version from DescribeTunnel,
    // which shows no token.
    let mut attacker = Consumer::connect(&server.url, &tunnel, TIMEOUT).await;
    let info = describe(&mut admin, &tunnel).await;
    assert_eq!(info.channels[0].owner_client_id, victim.client_id);
    assert_eq!(info.channels[0].version, version);
    assert!(!format!("{info:?}").contains(&victim.session_token));
    assert_ne!(attacker.session_token, victim.session_token);

    let guessed = "0".repeat(victim.session_token.len());
    for token in ["", attacker.session_token.as_str(), guessed.as_str()] {
        let attempts = act_for(
            &mut attacker.client,
            &tunnel,
            &victim.client_id,
            token,
            version,
            5,
        )
        .await;
        for (call, result) in attempts {
            let status = result.unwrap_or_else(|| panic!("{call} with token {token:?} was accepted"));
            assert_eq!(status.code(), Code::Aborted, "{call}: {status:?}");
            assert_eq!(kind(&status), ErrorKind::OwnershipLost, "{call}");
            for secret in [&victim.session_token, &attacker.session_token] {
                assert!(
                    !status.message().contains(secret.as_str()),
                    "{call}: {}",
                    status.message()
                );
            }
        }
    }

    // Nothing moved: the victim still owns the channel under the same version, its checkpoint is where it was,
    // and it reads every record.
    let info = describe(&mut admin, &tunnel).await;
    assert_eq!(info.channels[0].owner_client_id, victim.client_id);
    assert_eq!(info.channels[0].checkpoint_sequence_number, 0);
    assert!(info.clients.iter().any(|c| c.client_id == victim.client_id));
    victim.heartbeat().await.unwrap();
    assert_eq!(victim.version(0), version);
    let read: usize = victim
        .read(0, version, 0)
        .await
        .unwrap()
        .iter()
        .map(|m| m.records.len())
        .sum();
    assert_eq!(read, 5);
    // With its own token every call goes through.
    let token = victim.session_token.clone();
    let attempts = act_for(&mut victim.client, &tunnel, &victim.client_id, &token, version, 5).await;
    for (call, result) in attempts {
        assert!(result.is_none(), "{call}: {result:?}");
    }
    server.stop().await;
}

/// Far longer than any test waits: a long poll that lasts this long missed its event.
const MAX_WAIT_MS: u64 = 30_000;
/// Generous for a loaded CI machine, and well below `MAX_WAIT_MS`.
const PROMPT: Duration = Duration::from_secs(10);

type LongPoll = tokio::task::JoinHandle<(Result<Vec<v1::ReadRecordsResponse>, tonic::Status>, Duration)>;

/// Starts a ReadRecords of channel 0 from `from` waiting up to `MAX_WAIT_MS`, and returns once the server has
/// it waiting. The task answers what the stream gave and how long it took.
async fn long_poll(server: &TestServer, consumer: &Consumer, version: i64, from: u64) -> LongPoll {
    long_poll_on(server, consumer, 0, version, from).await
}

/// [`long_poll`] on any channel.
async fn long_poll_on(
    server: &TestServer,
    consumer: &Consumer,
    channel: u32,
    version: i64,
    from: u64,
) -> LongPoll {
    let mut client = consumer.client.clone();
    let request = v1::ReadRecordsRequest {
        tunnel_id: consumer.tunnel_id.clone(),
        client_id: consumer.client_id.clone(),
        session_token: consumer.session_token.clone(),
        channel_id: channel,
        channel_version: version,
        from_sequence_number: from,
        max_wait_ms: MAX_WAIT_MS,
        ..Default::default()
    };
    let waiting_before = server.store.long_polls(&consumer.tunnel_id, channel);
    let poll = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let result = async {
            let mut stream = client.read_records(request).await?.into_inner();
            let mut messages = Vec::new();
            while let Some(message) = stream.message().await? {
                messages.push(message);
            }
            Ok(messages)
        }
        .await;
        (result, started.elapsed())
    });
    let deadline = std::time::Instant::now() + LONG;
    while server.store.long_polls(&consumer.tunnel_id, channel) == waiting_before {
        assert!(std::time::Instant::now() < deadline, "the read never waited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    poll
}

/// The long poll's outcome, once it ended promptly.
async fn ended(poll: LongPoll, what: &str) -> Result<Vec<v1::ReadRecordsResponse>, tonic::Status> {
    let (result, took) = tokio::time::timeout(LONG + Duration::from_millis(MAX_WAIT_MS), poll)
        .await
        .expect("the long poll ends at the latest at max_wait")
        .unwrap();
    assert!(
        took < PROMPT,
        "{what}: the long poll ended after {took:?}, not when its lease or channel did ({result:?})"
    );
    result
}

fn assert_ownership_lost(result: Result<Vec<v1::ReadRecordsResponse>, tonic::Status>, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(kind(&status), ErrorKind::OwnershipLost, "{what}: {status:?}");
}

/// A tunnel of one stream channel and a consumer owning it: (server, consumer, its version).
async fn owned_channel(name: &str, heartbeat_timeout: Duration) -> (TestServer, Consumer, i64) {
    let server = TestServer::memory().await;
    let mut admin = server.client().await;
    let tunnel = create_streams(&mut admin, name, 1).await;
    let mut consumer = Consumer::connect(&server.url, &tunnel, heartbeat_timeout).await;
    consumer.heartbeat().await.unwrap();
    let version = consumer.version(0);
    (server, consumer, version)
}

#[tokio::test]
async fn a_long_poll_ends_as_soon_as_its_owner_releases_the_channel() {
    let (server, mut consumer, version) = owned_channel("released", TIMEOUT).await;
    let poll = long_poll(&server, &consumer, version, 0).await;
    consumer.pending.push(v1::ChannelState {
        channel_id: 0,
        status: v1::ChannelStatus::Close as i32,
        version: version + 1,
        channel_type: 0,
    });
    consumer.heartbeat().await.unwrap();
    assert_ownership_lost(ended(poll, "released").await, "released");
    server.stop().await;
}

#[tokio::test]
async fn a_long_poll_ends_as_soon_as_its_session_shuts_down() {
    let (server, mut consumer, version) = owned_channel("shut-down", TIMEOUT).await;
    let poll = long_poll(&server, &consumer, version, 0).await;
    consumer
        .client
        .shutdown(v1::ShutdownRequest {
            tunnel_id: consumer.tunnel_id.clone(),
            client_id: consumer.client_id.clone(),
            session_token: consumer.session_token.clone(),
        })
        .await
        .unwrap();
    assert_ownership_lost(ended(poll, "shutdown").await, "shutdown");
    server.stop().await;
}

#[tokio::test]
async fn a_long_poll_ends_as_soon_as_its_session_expires_and_the_channel_is_taken() {
    // No heartbeat after the first: the service expires the session after 1 s (its maintenance runs every
    // 20 ms) and gives the channel to the heir.
    let (server, consumer, version) = owned_channel("expired", Duration::from_secs(1)).await;
    let poll = long_poll(&server, &consumer, version, 0).await;
    let mut heir = Consumer::connect(&server.url, &consumer.tunnel_id, TIMEOUT).await;
    assert_ownership_lost(ended(poll, "expired").await, "expired");
    heartbeat_until(std::slice::from_mut(&mut heir), |c| c[0].open_channels() == [0]).await;
    server.stop().await;
}

#[tokio::test]
async fn a_long_poll_ends_as_soon_as_its_tunnel_is_deleted() {
    let (server, consumer, version) = owned_channel("deleted", TIMEOUT).await;
    let poll = long_poll(&server, &consumer, version, 0).await;
    let mut admin = server.client().await;
    admin
        .delete_tunnel(v1::DeleteTunnelRequest {
            tunnel_id: consumer.tunnel_id.clone(),
            tunnel_name: String::new(),
        })
        .await
        .unwrap();
    // A deleted tunnel's clients get NOT_FOUND (fatal), as DeleteTunnel's contract says.
    let status = ended(poll, "deleted").await.expect_err("deleted");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_long_poll_finishes_as_soon_as_its_channel_is_sealed_at_the_readers_position() {
    let server = TestServer::memory().await;
    let mut admin = server.client().await;
    let tunnel = create(
        &mut admin,
        "sealed",
        vec![spec(arbor_proto::tunnel::domain::ChannelType::Base, None)],
        None,
    )
    .await;
    append_to(&mut admin, &tunnel, Some(0), vec![record("k", "only")])
        .await
        .unwrap();
    let mut consumer = Consumer::connect(&server.url, &tunnel, TIMEOUT).await;
    consumer.heartbeat().await.unwrap();
    let version = consumer.version(0);
    let poll = long_poll(&server, &consumer, version, 1).await;
    admin
        .seal_channel(v1::SealChannelRequest {
            tunnel_id: tunnel.clone(),
            tunnel_name: String::new(),
            channel_id: 0,
        })
        .await
        .unwrap();
    let messages = ended(poll, "sealed").await.expect("a finished read");
    let last = messages.last().expect("one message at least");
    assert!(last.finished, "{messages:?}");
    assert_eq!(last.next_sequence_number, 1);
    assert!(messages.iter().all(|m| m.records.is_empty()));
    server.stop().await;
}

#[tokio::test]
async fn a_call_whose_server_dies_mid_call_is_retryable() {
    let (mut server, consumer, version) = owned_channel("crash", TIMEOUT).await;
    let poll = long_poll(&server, &consumer, version, 0).await;
    // The server goes away without answering: its connections are closed under the waiting call.
    server.server.take().unwrap().stop(Duration::ZERO).await.unwrap();
    let (result, _) = poll.await.unwrap();
    let status = result.expect_err("the call lost its server");
    eprintln!("a call whose connection was lost: {status:?}");
    assert!(
        status.metadata().get("arbor-error-kind").is_none(),
        "made by the client's transport, not the service: {status:?}"
    );
    assert_eq!(kind(&status), ErrorKind::Retryable, "{status:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_long_poll_of_a_closing_owner_keeps_waiting_and_gets_its_records() {
    let server = TestServer::memory().await;
    let mut admin = server.client().await;
    let tunnel = create_streams(&mut admin, "closing", 2).await;
    let mut owner = Consumer::connect(&server.url, &tunnel, TIMEOUT).await;
    owner.release_closing = false;
    heartbeat_until(std::slice::from_mut(&mut owner), |c| {
        c[0].open_channels() == [0, 1]
    })
    .await;
    let polls = [
        long_poll_on(&server, &owner, 0, owner.version(0), 0).await,
        long_poll_on(&server, &owner, 1, owner.version(1), 0).await,
    ];
    // A newcomer: one of the owner's channels moves to CLOSING, which leaves the owner its lease to drain.
    let _newcomer = Consumer::connect(&server.url, &tunnel, TIMEOUT).await;
    owner.heartbeat().await.unwrap();
    assert!(
        owner
            .owned
            .values()
            .any(|(s, _)| *s == arbor_proto::tunnel::domain::ChannelStatus::Closing),
        "{:?}",
        owner.owned
    );
    for channel in [0, 1] {
        append_to(&mut admin, &tunnel, Some(channel), vec![record("k", "drained")])
            .await
            .unwrap();
    }
    for (channel, poll) in polls.into_iter().enumerate() {
        let messages = ended(poll, "closing")
            .await
            .unwrap_or_else(|s| panic!("channel {channel}: {s:?}"));
        let records: usize = messages.iter().map(|m| m.records.len()).sum();
        assert_eq!(records, 1, "channel {channel}");
    }
    server.stop().await;
}
