//! The tunnel service's request bounds: whatever a client sends, the service refuses it with a typed status
//! carrying the right error kind, and the limits it advertises (ConnectTunnel, GetLimits) are the ones it
//! enforces. Raw requests (oversized, malformed) go through a tonic client with a byte codec.
#![cfg(feature = "tunnel-service")]

mod tunnel_service_common;

use arbor::tunnel_service::{Limits, ServerOptions, StoreOptions};
use arbor_proto::tunnel::domain::{ChannelStatus, ChannelType};
use arbor_proto::tunnel::error::{error_field, ErrorKind};
use arbor_proto::tunnel::v1;
use prost::Message;
use tonic::Code;
use tunnel_service_common::raw::*;
use tunnel_service_common::*;

#[tokio::test]
async fn sessions_per_tunnel_are_bounded_as_advertised() {
    let server = TestServer::start(
        StoreOptions::in_memory().max_sessions_per_tunnel(4),
        ServerOptions::default(),
    )
    .await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "sessions", 2).await;
    let other = create_streams(&mut client, "other", 2).await;
    let limit = get_limits(&mut client).await.max_sessions_per_tunnel;
    assert_eq!(limit, 4, "the advertised session limit");

    let mut sessions = Vec::new();
    for _ in 0..limit {
        sessions.push(
            connect(&mut client, &tunnel)
                .await
                .expect("a session within the limit"),
        );
    }
    assert_eq!(
        sessions[0].limits.as_ref().map(|l| l.max_sessions_per_tunnel),
        Some(limit),
        "ConnectTunnel advertises it too"
    );
    let refused = connect(&mut client, &tunnel)
        .await
        .expect_err("one session too many");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(ErrorKind::of(&refused), ErrorKind::Retryable);
    // Another tunnel has sessions of its own.
    connect(&mut client, &other)
        .await
        .expect("another tunnel's session");

    // A session that ends frees its slot.
    client
        .shutdown(v1::ShutdownRequest {
            tunnel_id: tunnel.clone(),
            client_id: sessions[0].client_id.clone(),
            session_token: sessions[0].session_token.clone(),
        })
        .await
        .expect("shutdown");
    connect(&mut client, &tunnel).await.expect("the freed slot");
    server.stop().await;
}

#[tokio::test]
async fn heartbeat_reports_are_bounded_by_the_limit_and_the_tunnels_channels() {
    let server = TestServer::start(
        StoreOptions::in_memory(),
        ServerOptions::default().limits(Limits::default().max_channels(8)),
    )
    .await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "reports", 3).await;
    let limit = get_limits(&mut client).await.max_heartbeat_reports;
    assert_eq!(limit, 8, "the advertised report limit is the channel limit");
    let session = connect(&mut client, &tunnel).await.unwrap();

    // Beyond the service's limit: refused before the tunnel is looked at.
    let over = heartbeat(
        &mut client,
        &tunnel,
        &session,
        (0..=limit).map(|i| report(i % 3)).collect(),
    )
    .await
    .expect_err("more reports than the limit");
    assert_eq!(over.code(), Code::InvalidArgument, "{over:?}");
    assert_eq!(error_field(&over), Some("channels"));

    // Within the limit but beyond the tunnel's channels.
    let over = heartbeat(
        &mut client,
        &tunnel,
        &session,
        (0..4).map(|i| report(i % 3)).collect(),
    )
    .await
    .expect_err("more reports than channels");
    assert_eq!(over.code(), Code::InvalidArgument, "{over:?}");
    assert_eq!(error_field(&over), Some("channels"));

    // One report per channel is fine.
    heartbeat(&mut client, &tunnel, &session, (0..3).map(report).collect())
        .await
        .expect("one report per channel");
    server.stop().await;
}

#[tokio::test]
async fn appends_are_bounded_exactly_as_advertised() {
    let limits = Limits::default()
        .max_batch_records(50)
        .max_record_bytes(1_000)
        .max_batch_bytes(20_000);
    let server = TestServer::start(StoreOptions::in_memory(), ServerOptions::default().limits(limits)).await;
    let mut client = server.client().await;
    let tunnel = create(&mut client, "appends", vec![spec(ChannelType::Base, None)], None).await;
    let advertised = get_limits(&mut client).await;
    assert_eq!(advertised.max_append_records, 50);
    assert_eq!(advertised.max_record_bytes, 1_000);
    assert_eq!(advertised.max_append_bytes, 20_000);

    let records = |n: u32, size: usize| (0..n).map(|_| record("", vec![7u8; size])).collect::<Vec<_>>();
    let n = advertised.max_append_records;
    append_to(&mut client, &tunnel, Some(0), records(n, 1))
        .await
        .expect("exactly the record limit");
    let refused = append_to(&mut client, &tunnel, Some(0), records(n + 1, 1))
        .await
        .expect_err("one record over");
    assert_eq!(
        (refused.code(), error_field(&refused)),
        (Code::InvalidArgument, Some("records"))
    );

    let size = advertised.max_record_bytes as usize;
    append_to(&mut client, &tunnel, Some(0), records(1, size))
        .await
        .expect("a record of exactly the size limit");
    let refused = append_to(&mut client, &tunnel, Some(0), records(1, size + 1))
        .await
        .expect_err("one byte over");
    assert_eq!(
        (refused.code(), error_field(&refused)),
        (Code::InvalidArgument, Some("records[0].value"))
    );

    let batch = advertised.max_append_bytes as usize;
    append_to(&mut client, &tunnel, Some(0), records(25, batch / 25))
        .await
        .expect("a batch of exactly the byte limit");
    let mut over = records(25, batch / 25);
    over[0].value = vec![7u8; batch / 25 + 1].into();
    let refused = append_to(&mut client, &tunnel, Some(0), over)
        .await
        .expect_err("one byte over the batch");
    assert_eq!(
        (refused.code(), error_field(&refused)),
        (Code::InvalidArgument, Some("records"))
    );
    server.stop().await;
}

/// An AppendRequest to `tunnel_id` whose encoding is exactly `size` bytes.
fn append_of_size(tunnel_id: &str, size: usize) -> Vec<u8> {
    let request = |value_len: usize| v1::AppendRequest {
        tunnel_id: tunnel_id.into(),
        channel_id: Some(0),
        records: vec![v1::AppendRecord {
            key: Default::default(),
            value: vec![1u8; value_len].into(),
        }],
        ..Default::default()
    };
    // The length prefixes grow by a byte or two as the value grows: adjust until the size is exact.
    let mut value_len = size;
    loop {
        let encoded = request(value_len).encode_to_vec();
        match encoded.len().cmp(&size) {
            std::cmp::Ordering::Equal => return encoded,
            std::cmp::Ordering::Greater => value_len -= encoded.len() - size,
            std::cmp::Ordering::Less => value_len += 1,
        }
    }
}

#[tokio::test]
async fn requests_beyond_the_decode_limit_are_resource_exhausted_and_fatal() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create(
        &mut client,
        "oversized",
        vec![spec(ChannelType::Base, None)],
        None,
    )
    .await;
    let max = get_limits(&mut client).await.max_request_bytes as usize;
    assert_eq!(max, Limits::default().max_request_bytes());

    // Exactly the limit is decoded (and then refused by validation, naming the field: it is above the batch
    // limit).
    let at_limit = raw_call(&server.url, "Append", append_of_size(&tunnel, max))
        .await
        .expect_err("above the batch limit");
    assert_eq!(at_limit.code(), Code::InvalidArgument, "{at_limit:?}");
    assert_eq!(error_field(&at_limit), Some("records[0].value"));

    // One byte more is not decoded at all.
    let over = raw_call(&server.url, "Append", append_of_size(&tunnel, max + 1))
        .await
        .expect_err("above the decode limit");
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
    assert_eq!(
        ErrorKind::of(&over),
        ErrorKind::Fatal,
        "never CHECKPOINT_OUT_OF_RANGE, nor worth retrying: {over:?}"
    );
    // The service still answers.
    append_to(&mut client, &tunnel, Some(0), vec![record("", "x")])
        .await
        .expect("append after");
    server.stop().await;
}

/// A ConnectTunnelRequest whose encoding is exactly `size` bytes (the client tag fills it).
fn connect_of_size(tunnel_id: &str, size: usize) -> Vec<u8> {
    let request = |tag_len: usize| v1::ConnectTunnelRequest {
        tunnel_id: tunnel_id.into(),
        client_tag: "t".repeat(tag_len),
        heartbeat_timeout_ms: 0,
    };
    let mut tag_len = size;
    loop {
        let encoded = request(tag_len).encode_to_vec();
        match encoded.len().cmp(&size) {
            std::cmp::Ordering::Equal => return encoded,
            std::cmp::Ordering::Greater => tag_len -= encoded.len() - size,
            std::cmp::Ordering::Less => tag_len += 1,
        }
    }
}

#[tokio::test]
async fn requests_other_than_append_are_capped_far_below_the_decode_limit() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "control", 2).await;
    let advertised = get_limits(&mut client).await;
    let cap = advertised.max_control_request_bytes as usize;
    assert_eq!(cap, Limits::default().max_control_request_bytes());
    assert!(
        cap < advertised.max_request_bytes as usize / 100,
        "{advertised:?}"
    );

    // Exactly the cap is decoded (and refused by validation: the tag is over its limit).
    let at_cap = raw_call(&server.url, "ConnectTunnel", connect_of_size(&tunnel, cap))
        .await
        .expect_err("a tag over its limit");
    assert_eq!(
        (at_cap.code(), error_field(&at_cap)),
        (Code::InvalidArgument, Some("client_tag"))
    );
    // One byte more is not decoded.
    let over = raw_call(&server.url, "ConnectTunnel", connect_of_size(&tunnel, cap + 1))
        .await
        .expect_err("above the cap");
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
    assert_eq!(ErrorKind::of(&over), ErrorKind::Fatal);
    // A heartbeat reporting every channel of the channel limit fits with room to spare.
    let session = connect(&mut client, &tunnel).await.unwrap();
    let full = v1::HeartbeatRequest {
        tunnel_id: tunnel.clone(),
        client_id: session.client_id.clone(),
        channels: (0..advertised.max_channels)
            .map(|id| v1::ChannelState {
                channel_id: id,
                status: ChannelStatus::Terminated.into(),
                version: i64::MAX,
                channel_type: ChannelType::Stream.into(),
            })
            .collect(),
        session_token: "t".repeat(256),
    };
    assert!(full.encoded_len() < cap, "{} bytes", full.encoded_len());
    server.stop().await;
}

#[tokio::test]
async fn malformed_requests_are_invalid_argument_and_fatal() {
    let server = TestServer::memory().await;
    let garbage: Vec<Vec<u8>> = vec![
        vec![0xff; 32],               // an invalid tag and varint
        vec![0x0a, 0x7f, b'x'],       // a string field longer than the message
        vec![0x08, 0x80, 0x80, 0x80], // a truncated varint
        vec![0x12, 0x02, 0xc3, 0x28], // invalid UTF-8 in string field 2 (GetLimits has none: skipped)
    ];
    for method in ["Append", "ConnectTunnel", "Heartbeat", "ReadRecords", "GetLimits"] {
        let cases = if method == "GetLimits" {
            &garbage[..3]
        } else {
            &garbage[..]
        };
        for bytes in cases {
            let status = if method == "ReadRecords" {
                raw_stream_call(&server.url, method, bytes.clone()).await
            } else {
                raw_call(&server.url, method, bytes.clone()).await.map(|_| ())
            }
            .expect_err("malformed");
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{method} {bytes:?}: {status:?}"
            );
            assert_eq!(ErrorKind::of(&status), ErrorKind::Fatal, "{method}: {status:?}");
            assert!(
                status.metadata().get("arbor-error-kind").is_some(),
                "{method}: the kind is sent, not guessed from the code"
            );
        }
    }
    // An unknown method of the service is UNIMPLEMENTED, with its kind too.
    let unknown = raw_call(&server.url, "NoSuchMethod", Vec::new())
        .await
        .expect_err("no such method");
    assert_eq!(unknown.code(), Code::Unimplemented);
    assert_eq!(
        unknown
            .metadata()
            .get("arbor-error-kind")
            .map(|v| v.to_str().unwrap()),
        Some("ERROR_KIND_FATAL")
    );
    server.stop().await;
}

#[tokio::test]
async fn the_advertised_response_limit_holds_the_largest_read_message() {
    let limits = Limits::default()
        .max_record_bytes(6 << 20)
        .max_batch_bytes(6 << 20);
    let server = TestServer::start(StoreOptions::in_memory(), ServerOptions::default().limits(limits)).await;
    let mut client = server.client().await;
    let advertised = get_limits(&mut client).await;
    assert!(
        advertised.max_response_bytes >= advertised.max_record_bytes + (64 << 10),
        "{advertised:?}"
    );
    let tunnel = create(&mut client, "big", vec![spec(ChannelType::Base, None)], None).await;
    append_to(
        &mut client,
        &tunnel,
        Some(0),
        vec![record("", vec![3u8; 6 << 20])],
    )
    .await
    .expect("a record of 6 MiB");
    // A reader whose decode limit is the advertised response limit reads it.
    let session = connect(&mut client, &tunnel).await.unwrap();
    let version = wait_for_open_channel(&mut client, &tunnel, &session).await;
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reader = v1::tunnel_service_client::TunnelServiceClient::new(channel)
        .max_decoding_message_size(advertised.max_response_bytes as usize);
    let mut stream = reader
        .read_records(v1::ReadRecordsRequest {
            tunnel_id: tunnel.clone(),
            client_id: session.client_id.clone(),
            channel_id: 0,
            channel_version: version,
            session_token: session.session_token.clone(),
            ..Default::default()
        })
        .await
        .expect("read within the advertised response limit")
        .into_inner();
    let mut records = 0;
    while let Some(message) = stream
        .message()
        .await
        .expect("read within the advertised response limit")
    {
        records += message.records.len();
    }
    assert_eq!(records, 1);
    server.stop().await;
}
