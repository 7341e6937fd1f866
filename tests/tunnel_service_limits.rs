//! The tunnel service's bounds: whatever a client sends, the service refuses it with a typed status carrying the
//! right error kind, and the limits it advertises (ConnectTunnel, GetLimits) are the ones it enforces. Raw
//! requests (oversized, malformed) go through a tonic client with a byte codec.
#![cfg(feature = "tunnel-service")]

mod tunnel_service_common;

use std::time::Duration;

use arbor::tunnel_service::{Limits, ServerOptions, StoreOptions};
use arbor_proto::tunnel::domain::{ChannelStatus, ChannelType};
use arbor_proto::tunnel::error::{error_field, ErrorKind};
use arbor_proto::tunnel::v1;
use prost::Message;
use tonic::Code;
use tunnel_service_common::*;

/// A codec that sends and receives message bytes as they are: requests the generated client cannot make.
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Sends `message` as is to `/arbor.tunnel.v1.TunnelService/<method>`; returns the answer's bytes or status.
async fn raw_call(url: &str, method: &str, message: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = format!("/arbor.tunnel.v1.TunnelService/{method}")
        .parse()
        .unwrap();
    grpc.unary(tonic::Request::new(message), path, RawCodec)
        .await
        .map(|r| r.into_inner())
}

async fn get_limits(client: &mut Client) -> v1::ServiceLimits {
    client
        .get_limits(v1::GetLimitsRequest {})
        .await
        .expect("get limits")
        .into_inner()
        .limits
        .expect("limits")
}

async fn connect(client: &mut Client, tunnel_id: &str) -> Result<v1::ConnectTunnelResponse, tonic::Status> {
    client
        .connect_tunnel(v1::ConnectTunnelRequest {
            tunnel_id: tunnel_id.into(),
            client_tag: "limits".into(),
            heartbeat_timeout_ms: 3_600_000,
        })
        .await
        .map(|r| r.into_inner())
}

fn report(channel_id: u32) -> v1::ChannelState {
    v1::ChannelState {
        channel_id,
        status: ChannelStatus::Open.into(),
        version: 1,
        channel_type: 0,
    }
}

async fn heartbeat(
    client: &mut Client,
    tunnel_id: &str,
    session: &v1::ConnectTunnelResponse,
    channels: Vec<v1::ChannelState>,
) -> Result<v1::HeartbeatResponse, tonic::Status> {
    client
        .heartbeat(v1::HeartbeatRequest {
            tunnel_id: tunnel_id.into(),
            client_id: session.client_id.clone(),
            channels,
            session_token: session.session_token.clone(),
        })
        .await
        .map(|r| r.into_inner())
}

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

/// Sends `message` as is to a server-streaming method; returns the status the stream ends with.
async fn raw_stream_call(url: &str, method: &str, message: Vec<u8>) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = format!("/arbor.tunnel.v1.TunnelService/{method}")
        .parse()
        .unwrap();
    let mut stream = grpc
        .server_streaming(tonic::Request::new(message), path, RawCodec)
        .await?
        .into_inner();
    while stream.message().await?.is_some() {}
    Ok(())
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
    let deadline = std::time::Instant::now() + LONG;
    let version = loop {
        let owned = heartbeat(&mut client, &tunnel, &session, Vec::new())
            .await
            .unwrap();
        if let Some(open) = owned
            .channels
            .iter()
            .find(|c| c.status == i32::from(ChannelStatus::Open))
        {
            break open.version;
        }
        assert!(std::time::Instant::now() < deadline, "channel 0 never assigned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
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

#[tokio::test]
async fn connections_beyond_the_limit_are_refused_until_one_closes() {
    let limits = arbor::tunnel_service::ConnectionLimits::default().max_connections(3);
    let server = TestServer::start(
        StoreOptions::in_memory(),
        ServerOptions::default().connection_limits(limits),
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = server.client().await;
        get_limits(&mut c).await;
        held.push(c);
    }
    // The fourth is closed as it is accepted: its call fails (retryable), wherever the client notices.
    let fourth = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(LONG)
        .connect()
        .await;
    if let Ok(channel) = fourth {
        let refused = v1::tunnel_service_client::TunnelServiceClient::new(channel)
            .get_limits(v1::GetLimitsRequest {})
            .await
            .expect_err("a fourth connection is refused");
        assert_eq!(ErrorKind::of(&refused), ErrorKind::Retryable, "{refused:?}");
    }
    for c in &mut held {
        get_limits(c).await;
    }

    // Closing one frees its slot (once the server has seen it close).
    held.pop();
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let attempt = tonic::transport::Endpoint::from_shared(server.url.clone())
            .unwrap()
            .connect()
            .await;
        if let Ok(channel) = attempt {
            v1::tunnel_service_client::TunnelServiceClient::new(channel)
                .get_limits(v1::GetLimitsRequest {})
                .await
                .expect("a call on the freed slot");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the slot was never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_connection_that_never_speaks_is_closed_at_the_handshake_timeout() {
    use tokio::io::AsyncReadExt;
    let limits =
        arbor::tunnel_service::ConnectionLimits::default().handshake_timeout(Duration::from_millis(300));
    let server = TestServer::start(
        StoreOptions::in_memory(),
        ServerOptions::default().connection_limits(limits),
    )
    .await;
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(LONG, silent.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "a silent connection is still open after {LONG:?}");
    // A client that speaks is served as before.
    get_limits(&mut server.client().await).await;
    server.stop().await;
}

#[tokio::test]
async fn the_request_timeout_must_exceed_the_long_poll_and_does_not_cut_it() {
    let short = arbor::tunnel_service::ConnectionLimits::default().request_timeout(Duration::from_secs(1));
    let store = arbor::tunnel_service::TunnelStore::open(StoreOptions::in_memory()).unwrap();
    let refused = arbor::tunnel_service::TunnelServer::start(
        store.clone(),
        ServerOptions::default()
            .listen("127.0.0.1:0".parse().unwrap())
            .connection_limits(short),
    )
    .await
    .expect_err("a request timeout within the 30 s long poll");
    match refused {
        arbor::tunnel_service::ServerError::InvalidOptions { field, .. } => {
            assert_eq!(field, "connection_limits.request_timeout")
        }
        other => panic!("{other:?}"),
    }
    store.close().unwrap();

    // A long poll of the whole max_wait, under a request timeout just above it, ends normally.
    let mut limits = Limits::default();
    limits.max_wait = Duration::from_millis(800);
    let server = TestServer::start(
        StoreOptions::in_memory(),
        ServerOptions::default().limits(limits).connection_limits(short),
    )
    .await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "poll", 1).await;
    let session = connect(&mut client, &tunnel).await.unwrap();
    let deadline = std::time::Instant::now() + LONG;
    let version = loop {
        let owned = heartbeat(&mut client, &tunnel, &session, Vec::new())
            .await
            .unwrap();
        if let Some(open) = owned.channels.first() {
            break open.version;
        }
        assert!(std::time::Instant::now() < deadline, "channel 0 never assigned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut stream = client
        .read_records(v1::ReadRecordsRequest {
            tunnel_id: tunnel.clone(),
            client_id: session.client_id.clone(),
            channel_id: 0,
            channel_version: version,
            max_wait_ms: 800,
            session_token: session.session_token.clone(),
            ..Default::default()
        })
        .await
        .expect("a long poll within the request timeout")
        .into_inner();
    assert!(stream.message().await.expect("ends normally").is_none());
    server.stop().await;
}

/// The resident set of process `pid`, in KiB (VmRSS in /proc/PID/status).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The time since `start`, in words.
fn since(start: std::time::Instant) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(start.elapsed().as_millis() as u64))
}

/// `call`'s answer; panics if it takes longer than [`LONG`].
async fn within<T>(call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LONG, call)
        .await
        .unwrap_or_else(|_| panic!("no answer within {LONG:?} during the flood"))
}

/// A real producer and consumer on their own tunnel: each round appends a record, reads it back and
/// heartbeats, every call bounded by [`LONG`]. Runs until `stop` (10 rounds at least); returns the rounds done.
async fn real_client(url: String, stop: tokio::sync::watch::Receiver<bool>) -> u64 {
    let mut client = client(&url).await;
    let tunnel = create(&mut client, "real", vec![spec(ChannelType::Base, None)], None).await;
    let session = connect(&mut client, &tunnel)
        .await
        .expect("the real client's session");
    let deadline = std::time::Instant::now() + LONG;
    let version = loop {
        let owned = heartbeat(&mut client, &tunnel, &session, Vec::new())
            .await
            .unwrap();
        if let Some(open) = owned.channels.first() {
            break open.version;
        }
        assert!(std::time::Instant::now() < deadline, "channel 0 never assigned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut rounds = 0u64;
    // At least a few rounds however early the flood ends, so that an answer was seen during it.
    while rounds < 10 || !*stop.borrow() {
        let appended = within(append_to(
            &mut client,
            &tunnel,
            Some(0),
            vec![record("", rounds.to_string())],
        ))
        .await
        .expect("the real client's append");
        let at = appended.channels[0].first_sequence_number;
        let read = within(client.read_records(v1::ReadRecordsRequest {
            tunnel_id: tunnel.clone(),
            client_id: session.client_id.clone(),
            channel_id: 0,
            channel_version: version,
            from_sequence_number: at,
            max_records: 1,
            session_token: session.session_token.clone(),
            ..Default::default()
        }))
        .await
        .expect("the real client's read");
        let message = read.into_inner().message().await.expect("the read's message");
        let records = message.map(|m| m.records).unwrap_or_default();
        assert_eq!(records.len(), 1, "the record just appended");
        assert_eq!(records[0].value, rounds.to_string().into_bytes());
        within(heartbeat(&mut client, &tunnel, &session, Vec::new()))
            .await
            .expect("the real client's heartbeat");
        rounds += 1;
    }
    rounds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_hostile_requests_leaves_the_service_answering_within_bounded_memory() {
    init_tracing();
    let mut serve = ServeProcess::start(&[]);
    let pid = serve.child.id();
    let url = serve.url.clone();
    let started = std::time::Instant::now();
    let rss_at_start = rss_kib(pid).expect("the server's RSS");

    // The server's RSS, sampled until the flood ends.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sampler = {
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            loop {
                peak = peak.max(rss_kib(pid).unwrap_or(0));
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return peak.max(rss_kib(pid).unwrap_or(0)),
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        })
    };
    let real = tokio::spawn(real_client(url.clone(), stop_rx.clone()));

    let mut admin = client(&url).await;
    let flood_tunnel = create_streams(&mut admin, "flood", 4).await;

    // 500 connections that never speak (closed by the server at its handshake timeout).
    let addr = url.trim_start_matches("http://").to_string();
    let mut idle = Vec::new();
    for _ in 0..500 {
        idle.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("an idle connection"),
        );
    }

    // 1,100 Connects with the longest timeout on one tunnel, 8 at a time: 1,024 sessions, then RESOURCE_EXHAUSTED.
    let connects = {
        let (url, tunnel) = (url.clone(), flood_tunnel.clone());
        tokio::spawn(async move {
            use futures::StreamExt;
            let client = client(&url).await;
            let answers: Vec<_> = futures::stream::iter(0..1_100)
                .map(|_| {
                    let (mut client, tunnel) = (client.clone(), tunnel.clone());
                    async move { connect(&mut client, &tunnel).await }
                })
                .buffer_unordered(8)
                .collect()
                .await;
            let (mut accepted, mut exhausted) = (0, 0);
            let mut first = None;
            for answer in answers {
                match answer {
                    Ok(session) => {
                        accepted += 1;
                        first.get_or_insert(session);
                    }
                    Err(status) if status.code() == Code::ResourceExhausted => exhausted += 1,
                    Err(status) => panic!("connect: {status:?}"),
                }
            }
            (accepted, exhausted, first.expect("a session"))
        })
    };

    // 10,000 malformed requests on 4 connections, 16 at a time on each.
    let malformed = (0..4)
        .map(|task| {
            let url = url.clone();
            tokio::spawn(async move {
                use futures::StreamExt;
                let channel = tonic::transport::Endpoint::from_shared(url)
                    .unwrap()
                    .connect()
                    .await
                    .unwrap();
                let refused = futures::stream::iter(0..2_500u32)
                    .map(|i| {
                        let mut grpc = tonic::client::Grpc::new(channel.clone());
                        async move {
                            grpc.ready().await.expect("ready");
                            let garbage = vec![0xff; 8 + (i + task) as usize % 64];
                            let path = "/arbor.tunnel.v1.TunnelService/Append".parse().unwrap();
                            let status = grpc
                                .unary(tonic::Request::new(garbage), path, RawCodec)
                                .await
                                .expect_err("malformed");
                            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
                        }
                    })
                    .buffer_unordered(16)
                    .count()
                    .await;
                assert_eq!(refused, 2_500);
            })
        })
        .collect::<Vec<_>>();

    // 64 MiB records: refused undecoded.
    let huge = {
        let (url, tunnel) = (url.clone(), flood_tunnel.clone());
        tokio::spawn(async move {
            let mut client = client(&url).await;
            let value = bytes::Bytes::from(vec![0x5a; 64 << 20]);
            for _ in 0..4 {
                let refused = append_to(
                    &mut client,
                    &tunnel,
                    Some(0),
                    vec![v1::AppendRecord {
                        key: Default::default(),
                        value: value.clone(),
                    }],
                )
                .await
                .expect_err("a 64 MiB record");
                assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
                assert_eq!(ErrorKind::of(&refused), ErrorKind::Fatal);
            }
        })
    };

    let (accepted, exhausted, session) = connects.await.unwrap();
    println!(
        "flood: {accepted} sessions accepted, {exhausted} refused (RESOURCE_EXHAUSTED) after {}",
        since(started)
    );
    assert_eq!((accepted, exhausted), (1_024, 76), "the default session limit");

    // Heartbeats of 2 million reports (about 12 MB each, under the Append decode limit): refused undecoded.
    let reports = v1::HeartbeatRequest {
        tunnel_id: flood_tunnel.clone(),
        client_id: session.client_id.clone(),
        channels: vec![report(1); 2_000_000],
        session_token: session.session_token.clone(),
    }
    .encode_to_vec();
    for _ in 0..4 {
        let refused = raw_call(&url, "Heartbeat", reports.clone())
            .await
            .expect_err("2 million reports");
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert_eq!(ErrorKind::of(&refused), ErrorKind::Fatal);
    }
    drop(reports);
    println!(
        "flood: 4 heartbeats of 2 million reports refused after {}",
        since(started)
    );
    huge.await.unwrap();
    println!("flood: 4 records of 64 MiB refused after {}", since(started));
    for task in malformed {
        task.await.unwrap();
    }
    println!(
        "flood: 10,000 malformed requests refused after {}",
        since(started)
    );

    let _ = stop_tx.send(true);
    let rounds = real.await.expect("the real client ran throughout");
    let peak = sampler.await.unwrap();
    println!(
        "flood: {} in all; the real client did {rounds} append + read + heartbeat rounds meanwhile; server RSS \
         {} MiB at start, {} MiB at peak",
        since(started),
        rss_at_start / 1024,
        peak / 1024
    );
    assert!(peak < 1 << 20, "server RSS peaked at {} MiB", peak / 1024);
    assert!(
        serve.child.try_wait().unwrap().is_none(),
        "the server is still running"
    );
    get_limits(&mut client(&url).await).await;
    drop(idle);
}

#[tokio::test]
async fn arbor_serve_takes_the_limits_as_flags() {
    let serve = ServeProcess::start(&["--max-sessions-per-tunnel", "2", "--max-connections", "64"]);
    let mut client = client(&serve.url).await;
    let tunnel = create_streams(&mut client, "flags", 1).await;
    assert_eq!(get_limits(&mut client).await.max_sessions_per_tunnel, 2);
    for _ in 0..2 {
        connect(&mut client, &tunnel)
            .await
            .expect("a session within the flag's limit");
    }
    let refused = connect(&mut client, &tunnel).await.expect_err("a third session");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    drop(serve);

    // A request timeout that would cut the 30 s long poll is refused at start, naming the option.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(["serve", "--listen", "127.0.0.1:0", "--request-timeout", "10s"])
        .output()
        .expect("run arbor serve");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("connection_limits.request_timeout"), "{stderr}");
}
