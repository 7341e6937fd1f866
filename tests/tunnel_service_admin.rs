//! The tunnel service at the gRPC level, admin and producer side: create/describe/list/delete, routing by key
//! hash with order kept per channel, seals, a table of malformed requests each naming its field, and health and
//! reflection being served. Real server on 127.0.0.1, plain tonic clients.
#![cfg(feature = "tunnel-service")]

mod tunnel_service_common;

use std::collections::BTreeMap;

use arbor_proto::tunnel::domain::{route_key, ChannelType};
use arbor_proto::tunnel::error::{error_field, ErrorKind};
use arbor_proto::tunnel::v1;
use tonic::Code;
use tunnel_service_common::*;

#[tokio::test]
async fn create_describe_list_delete() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let orders = create(
        &mut client,
        "orders",
        vec![
            spec(ChannelType::Base, None),
            spec(ChannelType::Stream, Some(0)),
            spec(ChannelType::Stream, None),
        ],
        Some(v1::RetentionPolicy {
            max_age_ms: 60_000,
            max_bytes_per_channel: 0,
        }),
    )
    .await;
    let users = create_streams(&mut client, "users", 2).await;
    assert_ne!(orders, users);

    let info = describe(&mut client, &orders).await;
    assert_eq!(info.tunnel_name, "orders");
    assert_eq!(info.retention.unwrap().max_age_ms, 60_000);
    let types: Vec<i32> = info.channels.iter().map(|c| c.channel_type).collect();
    assert_eq!(
        types,
        vec![
            i32::from(ChannelType::Base),
            i32::from(ChannelType::Stream),
            i32::from(ChannelType::Stream)
        ]
    );
    assert_eq!(info.channels[1].parent_channel_id, Some(0));
    assert!(info
        .channels
        .iter()
        .all(|c| c.status == v1::ChannelStatus::Wait as i32));
    // By name too.
    let by_name = client
        .describe_tunnel(v1::DescribeTunnelRequest {
            tunnel_id: String::new(),
            tunnel_name: "orders".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tunnel
        .unwrap();
    assert_eq!(by_name.tunnel_id, orders);

    let duplicate = client
        .create_tunnel(v1::CreateTunnelRequest {
            tunnel_name: "orders".into(),
            channels: vec![spec(ChannelType::Stream, None)],
            retention: None,
        })
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    assert_eq!(kind(&duplicate), ErrorKind::Fatal);

    let names: Vec<String> = client
        .list_tunnels(v1::ListTunnelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .tunnels
        .into_iter()
        .map(|t| t.tunnel_name)
        .collect();
    assert_eq!(names, vec!["orders", "users"]);

    // A consumer of the deleted tunnel gets NOT_FOUND (fatal), and the name can be reused with a new id.
    let mut consumer = Consumer::connect(&server.url, &orders, std::time::Duration::from_secs(10)).await;
    let deleted = client
        .delete_tunnel(v1::DeleteTunnelRequest {
            tunnel_id: String::new(),
            tunnel_name: "orders".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.tunnel_id, orders);
    let gone = consumer.heartbeat().await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert_eq!(kind(&gone), ErrorKind::Fatal);
    let again = create_streams(&mut client, "orders", 1).await;
    assert_ne!(again, orders, "ids are never reused");
    let missing = client
        .delete_tunnel(v1::DeleteTunnelRequest {
            tunnel_id: orders.clone(),
            tunnel_name: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn appends_route_by_key_hash_and_keep_order_per_channel() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    // A base channel first: key routing uses the stream channels only (ids 1..=4 here).
    let mut channels = vec![spec(ChannelType::Base, None)];
    channels.extend((0..4).map(|_| spec(ChannelType::Stream, None)));
    let tunnel = create(&mut client, "routed", channels, None).await;

    let mut expected: BTreeMap<u32, Vec<(String, String)>> = BTreeMap::new();
    for batch in 0..5 {
        let records: Vec<(String, String)> = (0..40)
            .map(|i| (format!("key-{}", i % 13), format!("value-{batch}-{i}")))
            .collect();
        let response = append_to(
            &mut client,
            &tunnel,
            None,
            records
                .iter()
                .map(|(k, v)| record(k.as_str(), v.as_str()))
                .collect(),
        )
        .await
        .unwrap();
        let mut counted = BTreeMap::new();
        for (k, v) in records {
            let channel = 1 + route_key(k.as_bytes(), 4);
            *counted.entry(channel).or_insert(0u32) += 1;
            expected.entry(channel).or_default().push((k, v));
        }
        let reported: BTreeMap<u32, u32> = response
            .channels
            .iter()
            .map(|c| (c.channel_id, c.record_count))
            .collect();
        assert_eq!(reported, counted, "batch {batch}: records per channel");
    }
    assert!(expected.len() > 1, "the keys spread over several channels");

    // Read every channel back as its owner: same records, same order, consecutive sequence numbers.
    let mut consumer = Consumer::connect(&server.url, &tunnel, std::time::Duration::from_secs(10)).await;
    heartbeat_until(std::slice::from_mut(&mut consumer), |c| {
        c[0].open_channels().len() == 5
    })
    .await;
    for channel in 0..5u32 {
        let version = consumer.version(channel);
        let messages = consumer.read(channel, version, 0).await.unwrap();
        let got: Vec<(String, String)> = messages
            .iter()
            .flat_map(|m| m.records.iter())
            .enumerate()
            .map(|(i, r)| {
                assert_eq!(r.sequence_number, i as u64, "consecutive sequence numbers");
                (
                    String::from_utf8(r.key.to_vec()).unwrap(),
                    String::from_utf8(r.value.to_vec()).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            expected.remove(&channel).unwrap_or_default(),
            "channel {channel}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn base_channels_take_named_appends_until_sealed() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create(&mut client, "snapshot", vec![spec(ChannelType::Base, None)], None).await;
    let unrouted = append_to(&mut client, &tunnel, None, vec![record("k", "v")])
        .await
        .unwrap_err();
    assert_eq!(unrouted.code(), Code::InvalidArgument);
    assert_eq!(error_field(&unrouted), Some("channel_id"));
    append_to(
        &mut client,
        &tunnel,
        Some(0),
        vec![record("", "a"), record("", "b")],
    )
    .await
    .unwrap();
    let sealed = client
        .seal_channel(v1::SealChannelRequest {
            tunnel_id: tunnel.clone(),
            tunnel_name: String::new(),
            channel_id: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sealed.end_sequence_number, 2);
    let refused = append_to(&mut client, &tunnel, Some(0), vec![record("", "c")])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(kind(&refused), ErrorKind::Fatal);
    let info = describe(&mut client, &tunnel).await;
    assert!(info.channels[0].sealed);
    assert_eq!(
        info.channels[0].end_sequence_number, 2,
        "the refused record was not stored"
    );
    server.stop().await;
}

type Call = Box<
    dyn FnOnce(Client) -> std::pin::Pin<Box<dyn std::future::Future<Output = tonic::Status> + Send>> + Send,
>;

fn call<F, Fut>(f: F) -> Call
where
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = tonic::Status> + Send + 'static,
{
    Box::new(move |c| Box::pin(f(c)))
}

#[tokio::test]
async fn malformed_requests_are_refused_naming_the_field_and_lose_nothing() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "kept", 2).await;
    append_to(&mut client, &tunnel, Some(0), vec![record("k", "acknowledged")])
        .await
        .unwrap();
    let consumer = Consumer::connect(&server.url, &tunnel, std::time::Duration::from_secs(10)).await;
    let client_id = consumer.client_id.clone();
    let token = consumer.session_token.clone();

    fn create_req(name: &str, channels: Vec<v1::ChannelSpec>) -> v1::CreateTunnelRequest {
        v1::CreateTunnelRequest {
            tunnel_name: name.into(),
            channels,
            retention: None,
        }
    }
    fn append_req(tunnel: &str, records: Vec<v1::AppendRecord>) -> v1::AppendRequest {
        v1::AppendRequest {
            tunnel_id: tunnel.into(),
            tunnel_name: String::new(),
            channel_id: None,
            records,
            ..Default::default()
        }
    }
    let t = tunnel.clone();
    let cid = client_id.clone();
    let big = vec![b'x'; (1 << 20) + 1];
    let cases: Vec<(&str, Call, &str)> = vec![
        (
            "empty tunnel name",
            call(|mut c| async move {
                c.create_tunnel(create_req("", vec![spec(ChannelType::Stream, None)]))
                    .await
                    .unwrap_err()
            }),
            "tunnel_name",
        ),
        (
            "upper-case tunnel name",
            call(|mut c| async move {
                c.create_tunnel(create_req("Orders", vec![spec(ChannelType::Stream, None)]))
                    .await
                    .unwrap_err()
            }),
            "tunnel_name",
        ),
        (
            "no channels",
            call(|mut c| async move { c.create_tunnel(create_req("none", vec![])).await.unwrap_err() }),
            "channels",
        ),
        (
            "too many channels",
            call(|mut c| async move {
                c.create_tunnel(create_req(
                    "many",
                    (0..1025).map(|_| spec(ChannelType::Stream, None)).collect(),
                ))
                .await
                .unwrap_err()
            }),
            "channels",
        ),
        (
            "unspecified channel type",
            call(|mut c| async move {
                let channels = vec![
                    spec(ChannelType::Stream, None),
                    v1::ChannelSpec {
                        channel_type: 0,
                        parent_channel_id: None,
                    },
                ];
                c.create_tunnel(create_req("untyped", channels))
                    .await
                    .unwrap_err()
            }),
            "channels[1].channel_type",
        ),
        (
            "parent out of range",
            call(|mut c| async move {
                c.create_tunnel(create_req("orphan", vec![spec(ChannelType::Stream, Some(7))]))
                    .await
                    .unwrap_err()
            }),
            "channels[0].parent_channel_id",
        ),
        (
            "neither id nor name",
            call(|mut c| async move {
                c.describe_tunnel(v1::DescribeTunnelRequest::default())
                    .await
                    .unwrap_err()
            }),
            "tunnel_id",
        ),
        (
            "both id and name",
            call({
                let t = t.clone();
                |mut c| async move {
                    c.describe_tunnel(v1::DescribeTunnelRequest {
                        tunnel_id: t,
                        tunnel_name: "kept".into(),
                    })
                    .await
                    .unwrap_err()
                }
            }),
            "tunnel_name",
        ),
        (
            "no records",
            call({
                let t = t.clone();
                |mut c| async move { c.append(append_req(&t, vec![])).await.unwrap_err() }
            }),
            "records",
        ),
        (
            "record too large",
            call({
                let t = t.clone();
                |mut c| async move {
                    c.append(append_req(&t, vec![record("a", "ok"), record("b", big)]))
                        .await
                        .unwrap_err()
                }
            }),
            "records[1].value",
        ),
        (
            "too many records",
            call({
                let t = t.clone();
                |mut c| async move {
                    c.append(append_req(&t, (0..10_001).map(|_| record("k", "v")).collect()))
                        .await
                        .unwrap_err()
                }
            }),
            "records",
        ),
        (
            "unknown channel",
            call({
                let t = t.clone();
                |mut c| async move {
                    let mut req = append_req(&t, vec![record("k", "v")]);
                    req.channel_id = Some(9);
                    c.append(req).await.unwrap_err()
                }
            }),
            "channel_id",
        ),
        (
            "connect without tunnel id",
            call(|mut c| async move {
                c.connect_tunnel(v1::ConnectTunnelRequest::default())
                    .await
                    .unwrap_err()
            }),
            "tunnel_id",
        ),
        (
            "heartbeat timeout too short",
            call({
                let t = t.clone();
                |mut c| async move {
                    c.connect_tunnel(v1::ConnectTunnelRequest {
                        tunnel_id: t,
                        client_tag: String::new(),
                        heartbeat_timeout_ms: 1,
                    })
                    .await
                    .unwrap_err()
                }
            }),
            "heartbeat_timeout_ms",
        ),
        (
            "client tag too long",
            call({
                let t = t.clone();
                |mut c| async move {
                    c.connect_tunnel(v1::ConnectTunnelRequest {
                        tunnel_id: t,
                        client_tag: "x".repeat(257),
                        heartbeat_timeout_ms: 0,
                    })
                    .await
                    .unwrap_err()
                }
            }),
            "client_tag",
        ),
        (
            "heartbeat without client id",
            call({
                let t = t.clone();
                |mut c| async move {
                    c.heartbeat(v1::HeartbeatRequest {
                        tunnel_id: t,
                        client_id: String::new(),
                        channels: vec![],
                        ..Default::default()
                    })
                    .await
                    .unwrap_err()
                }
            }),
            "client_id",
        ),
        (
            "heartbeat report with unspecified status",
            call({
                let (t, cid) = (t.clone(), cid.clone());
                |mut c| async move {
                    let channels = vec![v1::ChannelState {
                        channel_id: 0,
                        status: 0,
                        version: 1,
                        channel_type: 0,
                    }];
                    c.heartbeat(v1::HeartbeatRequest {
                        tunnel_id: t,
                        client_id: cid,
                        channels,
                        ..Default::default()
                    })
                    .await
                    .unwrap_err()
                }
            }),
            "channels[0].status",
        ),
        (
            "heartbeat report for an unknown channel",
            call({
                let (t, cid, token) = (t.clone(), cid.clone(), token.clone());
                |mut c| async move {
                    let channels = vec![
                        v1::ChannelState {
                            channel_id: 0,
                            status: 2,
                            version: 1,
                            channel_type: 0,
                        },
                        v1::ChannelState {
                            channel_id: 5,
                            status: 4,
                            version: 1,
                            channel_type: 0,
                        },
                    ];
                    c.heartbeat(v1::HeartbeatRequest {
                        tunnel_id: t,
                        client_id: cid,
                        channels,
                        session_token: token,
                    })
                    .await
                    .unwrap_err()
                }
            }),
            "channels[1].channel_id",
        ),
        (
            "read with too many records per message",
            call({
                let (t, cid) = (t.clone(), cid.clone());
                |mut c| async move {
                    c.read_records(v1::ReadRecordsRequest {
                        tunnel_id: t,
                        client_id: cid,
                        max_records_per_message: 10_001,
                        ..Default::default()
                    })
                    .await
                    .unwrap_err()
                }
            }),
            "max_records_per_message",
        ),
        (
            "read waiting too long",
            call({
                let (t, cid) = (t.clone(), cid.clone());
                |mut c| async move {
                    c.read_records(v1::ReadRecordsRequest {
                        tunnel_id: t,
                        client_id: cid,
                        max_wait_ms: 31_000,
                        ..Default::default()
                    })
                    .await
                    .unwrap_err()
                }
            }),
            "max_wait_ms",
        ),
        (
            "checkpoint without tunnel id",
            call(|mut c| async move { c.checkpoint(v1::CheckpointRequest::default()).await.unwrap_err() }),
            "tunnel_id",
        ),
    ];
    for (name, case, field) in cases {
        let status = case(client.clone()).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert_eq!(kind(&status), ErrorKind::Fatal, "{name}");
        assert_eq!(error_field(&status), Some(field), "{name}: {}", status.message());
        assert!(
            status.message().contains(field),
            "{name}: the message names the field: {}",
            status.message()
        );
    }

    // Nothing acknowledged was lost, nothing refused was stored.
    let info = describe(&mut client, &tunnel).await;
    assert_eq!(info.channels[0].end_sequence_number, 1);
    assert_eq!(info.channels[1].end_sequence_number, 0);
    let names: Vec<String> = client
        .list_tunnels(v1::ListTunnelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .tunnels
        .into_iter()
        .map(|t| t.tunnel_name)
        .collect();
    assert_eq!(names, vec!["kept"]);
    server.stop().await;
}

#[tokio::test]
async fn serves_health_and_reflection() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let server = TestServer::memory().await;
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "arbor.tunnel.v1.TunnelService"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "health of {service:?}");
    }

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"arbor.tunnel.v1.TunnelService".to_string()),
        "{names:?}"
    );
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");
    server.stop().await;
}
