//! Tunnel service throughput, side by side with a raw tonic baseline, in one run.
//!
//! `cargo bench --bench tunnel` prints one table, medians over `RUNS` runs (alternating sides):
//! - ReadRecords: one consumer drains pre-appended channels (200-byte records, messages of 1,000) through the
//!   service (in-memory, and durable), against a raw tonic server-streaming method that streams the same
//!   messages from a `Vec` (same proto types, same codec, no store, no fencing).
//! - Append: batches of 1,000 records of 200 bytes, from 1 and from 4 concurrent producers, in memory and
//!   durable (every batch acknowledged after an fsync, group commit across producers), against a raw tonic
//!   unary method that drops the batch.
//!
//! Everything runs on loopback in one process; client and server share tokio's multi-threaded runtime.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbor::tunnel_service::{ServerOptions, StoreOptions, TunnelServer, TunnelStore};
use arbor_proto::tunnel::domain::ChannelType;
use arbor_proto::tunnel::v1;
use arbor_proto::tunnel::v1::tunnel_service_client::TunnelServiceClient;
use arbor_proto::tunnel::v1::tunnel_service_server::{TunnelService, TunnelServiceServer};
use bytes::Bytes;
use futures::Stream;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};

const RECORD_BYTES: usize = 200;
const BATCH: usize = 1_000;
const CHANNELS: u32 = 4;
const RECORDS_PER_CHANNEL: usize = 100_000;
const APPEND_BATCHES: usize = 400;
const RUNS: usize = 5;

fn payload(i: usize) -> Bytes {
    let mut v = format!("record-{i}-").into_bytes();
    v.resize(RECORD_BYTES, b'.');
    Bytes::from(v)
}

/// The baseline: the same service trait, answering ReadRecords from prebuilt messages and Append by dropping
/// the batch; everything else unimplemented.
struct RawTonic {
    messages: Arc<Vec<v1::ReadRecordsResponse>>,
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<v1::ReadRecordsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl TunnelService for RawTonic {
    type ReadRecordsStream = ReadStream;

    async fn read_records(&self, _: Request<v1::ReadRecordsRequest>) -> Result<Response<ReadStream>, Status> {
        let messages = Arc::clone(&self.messages);
        let stream = futures::stream::iter(0..messages.len()).map(move |i| Ok(messages[i].clone()));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn append(
        &self,
        request: Request<v1::AppendRequest>,
    ) -> Result<Response<v1::AppendResponse>, Status> {
        let n = request.into_inner().records.len() as u32;
        Ok(Response::new(v1::AppendResponse {
            tunnel_id: String::new(),
            channels: vec![v1::ChannelAppend {
                channel_id: 0,
                first_sequence_number: 0,
                record_count: n,
            }],
            ..Default::default()
        }))
    }

    async fn create_tunnel(
        &self,
        _: Request<v1::CreateTunnelRequest>,
    ) -> Result<Response<v1::CreateTunnelResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn describe_tunnel(
        &self,
        _: Request<v1::DescribeTunnelRequest>,
    ) -> Result<Response<v1::DescribeTunnelResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn list_tunnels(
        &self,
        _: Request<v1::ListTunnelsRequest>,
    ) -> Result<Response<v1::ListTunnelsResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn delete_tunnel(
        &self,
        _: Request<v1::DeleteTunnelRequest>,
    ) -> Result<Response<v1::DeleteTunnelResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn seal_channel(
        &self,
        _: Request<v1::SealChannelRequest>,
    ) -> Result<Response<v1::SealChannelResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn connect_tunnel(
        &self,
        _: Request<v1::ConnectTunnelRequest>,
    ) -> Result<Response<v1::ConnectTunnelResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn heartbeat(
        &self,
        _: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn get_checkpoint(
        &self,
        _: Request<v1::GetCheckpointRequest>,
    ) -> Result<Response<v1::GetCheckpointResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn checkpoint(
        &self,
        _: Request<v1::CheckpointRequest>,
    ) -> Result<Response<v1::CheckpointResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn shutdown(
        &self,
        _: Request<v1::ShutdownRequest>,
    ) -> Result<Response<v1::ShutdownResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn get_limits(
        &self,
        _: Request<v1::GetLimitsRequest>,
    ) -> Result<Response<v1::GetLimitsResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
}

use futures::StreamExt;

async fn start_raw() -> String {
    let messages: Vec<v1::ReadRecordsResponse> = (0..RECORDS_PER_CHANNEL / BATCH)
        .map(|m| v1::ReadRecordsResponse {
            records: (0..BATCH)
                .map(|i| {
                    let seq = (m * BATCH + i) as u64;
                    v1::Record {
                        sequence_number: seq,
                        append_time_unix_ms: 1,
                        key: Bytes::from_static(b"key"),
                        value: payload(seq as usize),
                    }
                })
                .collect(),
            next_sequence_number: ((m + 1) * BATCH) as u64,
            finished: false,
        })
        .collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TunnelServiceServer::new(RawTonic {
        messages: Arc::new(messages),
    })
    .max_decoding_message_size(64 << 20);
    tokio::spawn(
        Server::builder().add_service(service).serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        ),
    );
    format!("http://{addr}")
}

async fn connect(url: &str) -> TunnelServiceClient<Channel> {
    let channel = Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    TunnelServiceClient::new(channel).max_decoding_message_size(64 << 20)
}

/// Drains `channels` (one stream each, in turn) and returns records/s.
async fn drain(
    client: &mut TunnelServiceClient<Channel>,
    tunnel: &str,
    (consumer, token): (&str, &str),
    versions: &[(u32, i64)],
) -> f64 {
    let started = Instant::now();
    let mut records = 0usize;
    for &(channel, version) in versions {
        let mut stream = client
            .read_records(v1::ReadRecordsRequest {
                tunnel_id: tunnel.into(),
                client_id: consumer.into(),
                session_token: token.into(),
                channel_id: channel,
                channel_version: version,
                from_sequence_number: 0,
                max_records_per_message: BATCH as u32,
                max_records: 0,
                max_wait_ms: 0,
            })
            .await
            .unwrap()
            .into_inner();
        while let Some(m) = stream.message().await.unwrap() {
            records += m.records.len();
        }
    }
    assert_eq!(
        records,
        versions.len() * RECORDS_PER_CHANNEL,
        "drained everything"
    );
    records as f64 / started.elapsed().as_secs_f64()
}

fn batch(start: usize) -> Vec<v1::AppendRecord> {
    (0..BATCH)
        .map(|i| v1::AppendRecord {
            key: Bytes::from(format!("key-{}", (start + i) % 64)),
            value: payload(start + i),
        })
        .collect()
}

/// `producers` tasks append `APPEND_BATCHES` batches in all; returns records/s and every call's latency.
async fn append_rate(url: &str, tunnel: &str, producers: usize) -> (f64, Vec<Duration>) {
    let mut clients = Vec::new();
    for _ in 0..producers {
        clients.push(connect(url).await);
    }
    let batches: Vec<Vec<v1::AppendRecord>> = (0..APPEND_BATCHES).map(|b| batch(b * BATCH)).collect();
    let per_producer = APPEND_BATCHES / producers;
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(p, mut client)| {
            let mine: Vec<_> = batches[p * per_producer..(p + 1) * per_producer].to_vec();
            let tunnel = tunnel.to_string();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(mine.len());
                for records in mine {
                    let sent = Instant::now();
                    client
                        .append(v1::AppendRequest {
                            tunnel_id: tunnel.clone(),
                            tunnel_name: String::new(),
                            channel_id: None,
                            records,
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let rate = (per_producer * producers * BATCH) as f64 / started.elapsed().as_secs_f64();
    (rate, latencies)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

struct Service {
    store: Arc<TunnelStore>,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

async fn start_service(durable: bool) -> Service {
    let dir = durable.then(|| tempfile::tempdir().unwrap());
    let options = match &dir {
        Some(d) => StoreOptions::durable(d.path()),
        None => StoreOptions::in_memory(),
    };
    let store = TunnelStore::open(options).unwrap();
    let server = TunnelServer::start(
        store.clone(),
        ServerOptions::default().listen("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let url = format!("http://{}", server.local_addr());
    std::mem::forget(server); // serves until the process ends
    Service {
        store,
        url,
        _dir: dir,
    }
}

async fn create(client: &mut TunnelServiceClient<Channel>, name: &str) -> String {
    client
        .create_tunnel(v1::CreateTunnelRequest {
            tunnel_name: name.into(),
            channels: (0..CHANNELS)
                .map(|_| v1::ChannelSpec {
                    channel_type: ChannelType::Stream.into(),
                    parent_channel_id: None,
                })
                .collect(),
            retention: None,
        })
        .await
        .unwrap()
        .into_inner()
        .tunnel
        .unwrap()
        .tunnel_id
}

/// A tunnel with `RECORDS_PER_CHANNEL` records in each channel and one consumer owning them all (its client id
/// and session token).
async fn prepared_reader(
    service: &Service,
) -> (
    TunnelServiceClient<Channel>,
    String,
    (String, String),
    Vec<(u32, i64)>,
) {
    let mut client = connect(&service.url).await;
    let tunnel = create(&mut client, "drain").await;
    for channel in 0..CHANNELS {
        for b in 0..RECORDS_PER_CHANNEL / BATCH {
            client
                .append(v1::AppendRequest {
                    tunnel_id: tunnel.clone(),
                    tunnel_name: String::new(),
                    channel_id: Some(channel),
                    records: batch(b * BATCH),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    }
    let consumer = client
        .connect_tunnel(v1::ConnectTunnelRequest {
            tunnel_id: tunnel.clone(),
            client_tag: "bench".into(),
            heartbeat_timeout_ms: 600_000,
        })
        .await
        .unwrap()
        .into_inner();
    let (consumer, token) = (consumer.client_id, consumer.session_token);
    let owned = client
        .heartbeat(v1::HeartbeatRequest {
            tunnel_id: tunnel.clone(),
            client_id: consumer.clone(),
            session_token: token.clone(),
            channels: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .channels;
    assert_eq!(owned.len(), CHANNELS as usize);
    let versions = owned.iter().map(|c| (c.channel_id, c.version)).collect();
    (client, tunnel, (consumer, token), versions)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn row(name: &str, baseline: f64, ours: f64) {
    println!(
        "| {name} | {:.0}k/s | {:.0}k/s | {:.2}x |",
        baseline / 1e3,
        ours / 1e3,
        ours / baseline
    );
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing we need: run a short smoke pass.
    let raw = start_raw().await;
    let memory = start_service(false).await;
    let durable = start_service(true).await;
    println!(
        "tunnel bench: {CHANNELS} channels x {RECORDS_PER_CHANNEL} records of {RECORD_BYTES} B, messages and batches \
         of {BATCH}, medians of {RUNS} runs, loopback, {} CPUs",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );

    let mut raw_client = connect(&raw).await;
    let raw_versions: Vec<(u32, i64)> = (0..CHANNELS).map(|c| (c, 0)).collect();
    let (mut mem_client, mem_tunnel, mem_consumer, mem_versions) = prepared_reader(&memory).await;
    let (mut dur_client, dur_tunnel, dur_consumer, dur_versions) = prepared_reader(&durable).await;
    // Warm-up of every side.
    drain(&mut raw_client, "", ("", ""), &raw_versions).await;
    drain(
        &mut mem_client,
        &mem_tunnel,
        (&mem_consumer.0, &mem_consumer.1),
        &mem_versions,
    )
    .await;
    drain(
        &mut dur_client,
        &dur_tunnel,
        (&dur_consumer.0, &dur_consumer.1),
        &dur_versions,
    )
    .await;
    let (mut r_raw, mut r_mem, mut r_dur) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        r_raw.push(drain(&mut raw_client, "", ("", ""), &raw_versions).await);
        r_mem.push(
            drain(
                &mut mem_client,
                &mem_tunnel,
                (&mem_consumer.0, &mem_consumer.1),
                &mem_versions,
            )
            .await,
        );
        r_dur.push(
            drain(
                &mut dur_client,
                &dur_tunnel,
                (&dur_consumer.0, &dur_consumer.1),
                &dur_versions,
            )
            .await,
        );
    }
    println!();
    println!("| measure | raw tonic | tunnel service | service / raw |");
    println!("|---|---|---|---|");
    let (raw_read, mem_read, dur_read) = (median(r_raw), median(r_mem), median(r_dur));
    row("ReadRecords drain, in memory (goal >= 0.8x)", raw_read, mem_read);
    row("ReadRecords drain, durable (fjall)", raw_read, dur_read);

    let mut latency_notes = Vec::new();
    for producers in [1, 4] {
        let mut mem_client = connect(&memory.url).await;
        let mut dur_client = connect(&durable.url).await;
        let mem_tunnel = create(&mut mem_client, &format!("append-{producers}")).await;
        let dur_tunnel = create(&mut dur_client, &format!("append-{producers}")).await;
        append_rate(&raw, "", producers).await;
        append_rate(&memory.url, &mem_tunnel, producers).await;
        append_rate(&durable.url, &dur_tunnel, producers).await;
        let (mut a_raw, mut a_mem, mut a_dur) = (Vec::new(), Vec::new(), Vec::new());
        let mut durable_latencies = Vec::new();
        for _ in 0..RUNS {
            a_raw.push(append_rate(&raw, "", producers).await.0);
            a_mem.push(append_rate(&memory.url, &mem_tunnel, producers).await.0);
            let (rate, latencies) = append_rate(&durable.url, &dur_tunnel, producers).await;
            a_dur.push(rate);
            durable_latencies.extend(latencies);
        }
        let raw_append = median(a_raw);
        row(
            &format!("Append, {producers} producer(s), in memory"),
            raw_append,
            median(a_mem),
        );
        row(
            &format!("Append, {producers} producer(s), durable, fsync per group (goal >= 200k/s)"),
            raw_append,
            median(a_dur),
        );
        durable_latencies.sort();
        latency_notes.push(format!(
            "durable Append latency, {producers} producer(s): p50 {:?}, p99 {:?}, max {:?}",
            percentile(&durable_latencies, 0.5),
            percentile(&durable_latencies, 0.99),
            durable_latencies.last().unwrap()
        ));
    }
    println!();
    for note in latency_notes {
        println!("{note}");
    }
    durable.store.close().unwrap();
    memory.store.close().unwrap();
}
