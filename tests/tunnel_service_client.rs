//! `TunnelClient`, the typed admin and producer client, against a real in-process service on 127.0.0.1: every
//! call, key routing with each record's position, typed errors with their kind, and an append whose answer is
//! lost being retried with the same producer sequence so the service stores it once.
#![cfg(feature = "tunnel-service")]

mod tunnel_service_common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use arbor::tunnel_service::client::{
    ChannelSpec, RecordPosition, TunnelAddress, TunnelClient, TunnelClientError,
};
use arbor_proto::tunnel::domain::route_key;
use arbor_proto::tunnel::error::ErrorKind;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::codegen::Service;
use tunnel_service_common::*;

#[tokio::test]
async fn creates_appends_by_key_describes_lists_seals_and_deletes() {
    let server = TestServer::memory().await;
    let mut client = TunnelClient::connect(&server.url, None, None).await.unwrap();
    let channels = [
        ChannelSpec::base(),
        ChannelSpec::stream().parent(0),
        ChannelSpec::stream(),
    ];
    let created = client.create("orders", &channels, None).await.unwrap();
    assert_eq!(created.tunnel_name, "orders");
    assert_eq!(created.channels.len(), 3);
    assert_eq!(created.channels[1].parent_channel_id, Some(0));
    let orders = TunnelAddress::Name("orders".into());

    let appended = client
        .append(&orders, [("user-1", "a"), ("user-2", "b"), ("user-1", "c")])
        .await
        .unwrap();
    assert_eq!(appended.tunnel_id, created.tunnel_id);
    assert!(!appended.duplicate);
    // Stream channels are 1 and 2: a key goes to 1 + route_key(key, 2), in order within its channel.
    let channel = |key: &str| 1 + route_key(key.as_bytes(), 2);
    let user1 = channel("user-1");
    let user2 = channel("user-2");
    let expected_second = u64::from(user1 == user2);
    assert_eq!(
        appended.records,
        vec![
            RecordPosition {
                channel_id: user1,
                sequence_number: 0
            },
            RecordPosition {
                channel_id: user2,
                sequence_number: expected_second
            },
            RecordPosition {
                channel_id: user1,
                sequence_number: 1 + expected_second
            },
        ]
    );
    // A second batch (the next producer sequence) is stored after the first.
    let again = client.append(&orders, [("user-2", "d")]).await.unwrap();
    assert!(!again.duplicate);
    let stored_in_user2 = if user1 == user2 { 3 } else { 1 };
    assert_eq!(
        again.records,
        vec![RecordPosition {
            channel_id: user2,
            sequence_number: stored_in_user2
        }]
    );

    let base = client.append_to_channel(&orders, 0, ["x", "y"]).await.unwrap();
    assert_eq!(
        base.records[1],
        RecordPosition {
            channel_id: 0,
            sequence_number: 1
        }
    );
    assert_eq!(client.seal(&orders, 0).await.unwrap(), 2);

    let by_id = TunnelAddress::Id(created.tunnel_id.clone());
    let described = client.describe(&by_id).await.unwrap();
    assert!(described.channels[0].sealed);
    assert_eq!(
        described
            .channels
            .iter()
            .map(|c| c.end_sequence_number)
            .sum::<u64>(),
        6
    );
    let listed = client.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].tunnel_id, created.tunnel_id);

    assert_eq!(client.delete(&orders).await.unwrap(), created.tunnel_id);
    assert!(client.list().await.unwrap().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn errors_are_typed_with_their_kind_and_field() {
    let server = TestServer::memory().await;
    let mut client = TunnelClient::connect(&server.url, None, None).await.unwrap();
    let err = client
        .create("Orders", &[ChannelSpec::stream()], None)
        .await
        .unwrap_err();
    match &err {
        TunnelClientError::Rpc {
            code, kind, field, ..
        } => {
            assert_eq!(*code, tonic::Code::InvalidArgument);
            assert_eq!(*kind, ErrorKind::Fatal);
            assert_eq!(field.as_deref(), Some("tunnel_name"));
        }
        other => panic!("expected a refused call, got {other}"),
    }
    assert!(
        err.to_string()
            .starts_with("invalid argument (field tunnel_name): "),
        "{err}"
    );
    let err = client
        .describe(&TunnelAddress::Name("missing".into()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::Fatal));
    assert!(err.to_string().starts_with("not found"), "{err}");

    let err = TunnelClient::connect(&server.url, None, Some("bad\nkey"))
        .await
        .unwrap_err();
    assert!(matches!(err, TunnelClientError::ApiKey), "{err}");
    server.stop().await;
}

/// A transport that delivers the first Append to the service but answers the client UNAVAILABLE, as when the
/// connection is lost after the service stored the batch.
#[derive(Clone)]
struct LoseFirstAppendAnswer {
    inner: tonic::transport::Channel,
    lost: Arc<AtomicBool>,
}

impl Service<http::Request<Body>> for LoseFirstAppendAnswer {
    type Response = http::Response<Body>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let lose = request.uri().path().ends_with("/Append") && !self.lost.swap(true, Ordering::SeqCst);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            if !lose {
                return Ok(response);
            }
            // The service answered (so it stored the batch); the client is told the call failed.
            drop(response);
            Ok(tonic::Status::unavailable("connection lost").into_http())
        })
    }
}

#[tokio::test]
async fn an_append_whose_answer_is_lost_is_retried_and_stored_once() {
    let server = TestServer::memory().await;
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let lost = Arc::new(AtomicBool::new(false));
    let transport = LoseFirstAppendAnswer {
        inner: channel,
        lost: Arc::clone(&lost),
    };
    let mut client = TunnelClient::new(transport, None).unwrap();
    client
        .create("orders", &[ChannelSpec::stream()], None)
        .await
        .unwrap();
    let orders = TunnelAddress::Name("orders".into());

    let appended = client.append(&orders, [("k", "a"), ("k", "b")]).await.unwrap();
    assert!(lost.load(Ordering::SeqCst), "the first answer was lost");
    assert!(appended.duplicate, "the retry was answered from the stored batch");
    assert_eq!(
        appended.records,
        vec![
            RecordPosition {
                channel_id: 0,
                sequence_number: 0
            },
            RecordPosition {
                channel_id: 0,
                sequence_number: 1
            },
        ]
    );
    let next = client.append(&orders, [("k", "c")]).await.unwrap();
    assert!(!next.duplicate);
    assert_eq!(
        next.records,
        vec![RecordPosition {
            channel_id: 0,
            sequence_number: 2
        }]
    );
    let described = client.describe(&orders).await.unwrap();
    assert_eq!(described.channels[0].end_sequence_number, 3, "stored once");
    server.stop().await;
}
