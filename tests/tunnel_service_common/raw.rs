//! Requests made by hand, for the tests of the service's bounds: raw message bytes through a tonic client with a
//! byte codec (oversized, malformed), and session calls that carry the session token.

use std::time::{Duration, Instant};

use arbor_proto::tunnel::domain::ChannelStatus;
use arbor_proto::tunnel::v1;

use super::{Client, LONG};

/// A codec that sends and receives message bytes as they are: requests the generated client cannot make.
#[derive(Debug, Clone, Default)]
pub struct RawCodec;

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
pub async fn raw_call(url: &str, method: &str, message: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
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

pub async fn get_limits(client: &mut Client) -> v1::ServiceLimits {
    client
        .get_limits(v1::GetLimitsRequest {})
        .await
        .expect("get limits")
        .into_inner()
        .limits
        .expect("limits")
}

pub async fn connect(
    client: &mut Client,
    tunnel_id: &str,
) -> Result<v1::ConnectTunnelResponse, tonic::Status> {
    client
        .connect_tunnel(v1::ConnectTunnelRequest {
            tunnel_id: tunnel_id.into(),
            client_tag: "limits".into(),
            heartbeat_timeout_ms: 3_600_000,
        })
        .await
        .map(|r| r.into_inner())
}

pub fn report(channel_id: u32) -> v1::ChannelState {
    v1::ChannelState {
        channel_id,
        status: ChannelStatus::Open.into(),
        version: 1,
        channel_type: 0,
    }
}

pub async fn heartbeat(
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

/// Sends `message` as is to a server-streaming method; returns the status the stream ends with.
pub async fn raw_stream_call(url: &str, method: &str, message: Vec<u8>) -> Result<(), tonic::Status> {
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

/// Heartbeats `session` until it owns an OPEN channel; returns that channel's version (panics after [`LONG`]).
pub async fn wait_for_open_channel(
    client: &mut Client,
    tunnel_id: &str,
    session: &v1::ConnectTunnelResponse,
) -> i64 {
    let deadline = Instant::now() + LONG;
    loop {
        let owned = heartbeat(client, tunnel_id, session, Vec::new())
            .await
            .expect("heartbeat");
        if let Some(open) = owned
            .channels
            .iter()
            .find(|c| c.status == i32::from(ChannelStatus::Open))
        {
            return open.version;
        }
        assert!(Instant::now() < deadline, "no channel assigned within {LONG:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
