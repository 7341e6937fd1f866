//! Shared by the `tunnel_service*` tests: a real tunnel server on 127.0.0.1 (in-process, or the `arbor serve`
//! binary as a child process killed by pid), plain tonic clients, and a scripted consumer.
#![allow(dead_code)]

pub mod raw;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbor::tunnel_service::{RunningServer, ServerOptions, StoreOptions, TunnelServer, TunnelStore};
use arbor_proto::tunnel::domain::{ChannelStatus, ChannelType};
use arbor_proto::tunnel::v1;
use arbor_proto::tunnel::v1::tunnel_service_client::TunnelServiceClient;
use tonic::transport::{Channel, Endpoint};

pub type Client = TunnelServiceClient<Channel>;

/// Generous outer bound for waiting on a condition.
pub const LONG: Duration = Duration::from_secs(20);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// An in-process server on a free loopback port.
pub struct TestServer {
    pub store: Arc<TunnelStore>,
    pub server: Option<RunningServer>,
    pub url: String,
}

impl TestServer {
    pub async fn start(store: StoreOptions, options: ServerOptions) -> TestServer {
        init_tracing();
        let store = TunnelStore::open(store).expect("open store");
        let options = options.listen("127.0.0.1:0".parse().unwrap());
        let server = TunnelServer::start(store.clone(), options)
            .await
            .expect("start server");
        let url = format!("http://{}", server.local_addr());
        TestServer {
            store,
            server: Some(server),
            url,
        }
    }

    /// In memory, maintenance every 20 ms, short timeouts.
    pub async fn memory() -> TestServer {
        TestServer::start(
            StoreOptions::in_memory().closing_timeout(Duration::from_secs(5)),
            ServerOptions::default().maintenance_interval(Duration::from_millis(20)),
        )
        .await
    }

    pub async fn client(&self) -> Client {
        client(&self.url).await
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop(Duration::from_secs(5)).await.unwrap();
        }
        self.store.close().unwrap();
    }
}

pub async fn client(url: &str) -> Client {
    let channel = Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .expect("connect to the tunnel server");
    TunnelServiceClient::new(channel)
}

pub fn spec(channel_type: ChannelType, parent: Option<u32>) -> v1::ChannelSpec {
    v1::ChannelSpec {
        channel_type: channel_type.into(),
        parent_channel_id: parent,
    }
}

/// Creates a tunnel of `stream` stream channels; returns its id.
pub async fn create_streams(client: &mut Client, name: &str, stream: u32) -> String {
    create(
        client,
        name,
        (0..stream).map(|_| spec(ChannelType::Stream, None)).collect(),
        None,
    )
    .await
}

pub async fn create(
    client: &mut Client,
    name: &str,
    channels: Vec<v1::ChannelSpec>,
    retention: Option<v1::RetentionPolicy>,
) -> String {
    client
        .create_tunnel(v1::CreateTunnelRequest {
            tunnel_name: name.into(),
            channels,
            retention,
        })
        .await
        .expect("create tunnel")
        .into_inner()
        .tunnel
        .unwrap()
        .tunnel_id
}

pub fn record(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> v1::AppendRecord {
    v1::AppendRecord {
        key: key.into().into(),
        value: value.into().into(),
    }
}

pub async fn append_to(
    client: &mut Client,
    tunnel_id: &str,
    channel: Option<u32>,
    records: Vec<v1::AppendRecord>,
) -> Result<v1::AppendResponse, tonic::Status> {
    client
        .append(v1::AppendRequest {
            tunnel_id: tunnel_id.into(),
            tunnel_name: String::new(),
            channel_id: channel,
            records,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

pub async fn describe(client: &mut Client, tunnel_id: &str) -> v1::TunnelInfo {
    client
        .describe_tunnel(v1::DescribeTunnelRequest {
            tunnel_id: tunnel_id.into(),
            tunnel_name: String::new(),
        })
        .await
        .expect("describe")
        .into_inner()
        .tunnel
        .unwrap()
}

/// A scripted consumer: connects, heartbeats, and (by default) releases CLOSING channels at its next
/// heartbeat, as a worker that has drained would.
pub struct Consumer {
    pub client: Client,
    pub tunnel_id: String,
    pub client_id: String,
    /// The session's secret, sent with every session call.
    pub session_token: String,
    /// Channel id → (status, version) as the server last told.
    pub owned: BTreeMap<u32, (ChannelStatus, i64)>,
    /// Reports to send with the next heartbeat.
    pub pending: Vec<v1::ChannelState>,
    pub release_closing: bool,
}

impl Consumer {
    pub async fn connect(url: &str, tunnel_id: &str, timeout: Duration) -> Consumer {
        let mut client = client(url).await;
        let response = client
            .connect_tunnel(v1::ConnectTunnelRequest {
                tunnel_id: tunnel_id.into(),
                client_tag: "test".into(),
                heartbeat_timeout_ms: timeout.as_millis() as u64,
            })
            .await
            .expect("connect tunnel")
            .into_inner();
        Consumer {
            client,
            tunnel_id: tunnel_id.into(),
            client_id: response.client_id,
            session_token: response.session_token,
            owned: BTreeMap::new(),
            pending: Vec::new(),
            release_closing: true,
        }
    }

    /// One heartbeat: sends the pending reports (and CLOSE v+1 for CLOSING channels when releasing), then
    /// takes the server's answer as the owned set.
    pub async fn heartbeat(&mut self) -> Result<(), tonic::Status> {
        let mut channels: Vec<v1::ChannelState> = std::mem::take(&mut self.pending);
        for (&id, &(status, version)) in &self.owned {
            if channels.iter().any(|c| c.channel_id == id) {
                continue;
            }
            let (status, version) = if status == ChannelStatus::Closing && self.release_closing {
                (ChannelStatus::Close, version + 1)
            } else {
                (status, version)
            };
            channels.push(v1::ChannelState {
                channel_id: id,
                status: status.into(),
                version,
                channel_type: 0,
            });
        }
        let response = self
            .client
            .heartbeat(v1::HeartbeatRequest {
                tunnel_id: self.tunnel_id.clone(),
                client_id: self.client_id.clone(),
                session_token: self.session_token.clone(),
                channels,
            })
            .await?
            .into_inner();
        self.owned = response
            .channels
            .iter()
            .map(|c| {
                (
                    c.channel_id,
                    (ChannelStatus::from_wire(c.status, "status").unwrap(), c.version),
                )
            })
            .collect();
        Ok(())
    }

    pub fn open_channels(&self) -> Vec<u32> {
        self.owned
            .iter()
            .filter(|(_, (s, _))| *s == ChannelStatus::Open)
            .map(|(&id, _)| id)
            .collect()
    }

    pub fn version(&self, channel: u32) -> i64 {
        self.owned[&channel].1
    }

    pub async fn read(
        &mut self,
        channel: u32,
        version: i64,
        from: u64,
    ) -> Result<Vec<v1::ReadRecordsResponse>, tonic::Status> {
        read_all(
            &mut self.client,
            &self.tunnel_id,
            &self.client_id,
            &self.session_token,
            channel,
            version,
            from,
        )
        .await
    }

    pub async fn checkpoint(&mut self, channel: u32, version: i64, seq: u64) -> Result<(), tonic::Status> {
        self.client
            .checkpoint(v1::CheckpointRequest {
                tunnel_id: self.tunnel_id.clone(),
                client_id: self.client_id.clone(),
                session_token: self.session_token.clone(),
                channel_id: channel,
                channel_version: version,
                sequence_number: seq,
            })
            .await
            .map(|_| ())
    }

    pub async fn get_checkpoint(
        &mut self,
        channel: u32,
        version: i64,
    ) -> Result<v1::GetCheckpointResponse, tonic::Status> {
        self.client
            .get_checkpoint(v1::GetCheckpointRequest {
                tunnel_id: self.tunnel_id.clone(),
                client_id: self.client_id.clone(),
                session_token: self.session_token.clone(),
                channel_id: channel,
                channel_version: version,
            })
            .await
            .map(|r| r.into_inner())
    }
}

/// Reads a channel from `from` to its current end (one ReadRecords stream, no waiting).
pub async fn read_all(
    client: &mut Client,
    tunnel_id: &str,
    client_id: &str,
    session_token: &str,
    channel: u32,
    version: i64,
    from: u64,
) -> Result<Vec<v1::ReadRecordsResponse>, tonic::Status> {
    let mut stream = client
        .read_records(v1::ReadRecordsRequest {
            tunnel_id: tunnel_id.into(),
            client_id: client_id.into(),
            session_token: session_token.into(),
            channel_id: channel,
            channel_version: version,
            from_sequence_number: from,
            max_records_per_message: 0,
            max_records: 0,
            max_wait_ms: 0,
        })
        .await?
        .into_inner();
    let mut messages = Vec::new();
    while let Some(message) = stream.message().await? {
        messages.push(message);
    }
    Ok(messages)
}

/// Heartbeats every consumer in rounds until `done` holds (or panics after [`LONG`]).
pub async fn heartbeat_until(consumers: &mut [Consumer], mut done: impl FnMut(&[Consumer]) -> bool) {
    let deadline = Instant::now() + LONG;
    loop {
        for c in consumers.iter_mut() {
            c.heartbeat().await.expect("heartbeat");
        }
        if done(consumers) {
            return;
        }
        assert!(Instant::now() < deadline, "condition not reached within {LONG:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The `arbor serve` binary as a child process.
pub struct ServeProcess {
    pub child: Child,
    pub url: String,
}

impl ServeProcess {
    /// Starts `arbor serve --listen 127.0.0.1:0 <args>` and waits for its "listening on" line.
    pub fn start(args: &[&str]) -> ServeProcess {
        ServeProcess::start_at("127.0.0.1:0", args)
    }

    /// Starts `arbor serve --listen <listen> <args>` and waits for its "listening on" line.
    pub fn start_at(listen: &str, args: &[&str]) -> ServeProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_arbor"))
            .args(["serve", "--listen", listen])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn arbor serve");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("listening on ") => {
                    let rest = line.split("listening on ").nth(1).unwrap();
                    break rest.split_whitespace().next().unwrap().to_string();
                }
                Some(Ok(_)) => continue,
                _ => {
                    let _ = child.kill();
                    panic!("arbor serve exited before listening");
                }
            }
        };
        std::thread::spawn(move || for _ in lines {});
        ServeProcess {
            child,
            url: format!("http://{addr}"),
        }
    }

    pub fn durable(dir: &Path) -> ServeProcess {
        ServeProcess::start(&["--data", dir.to_str().unwrap()])
    }

    pub fn sigkill(&mut self) {
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill -9 {}", self.child.id());
        let _ = self.child.wait();
    }

    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill -TERM {}", self.child.id());
        self.child.wait().unwrap()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The error kind a status carries (from `arbor-error-kind`, else its code).
pub fn kind(status: &tonic::Status) -> arbor_proto::tunnel::error::ErrorKind {
    arbor_proto::tunnel::error::ErrorKind::of(status)
}
