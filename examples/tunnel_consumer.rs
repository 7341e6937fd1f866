//! Consume a tunnel through the tree's tunnel worker: a subscriber prints every record. By default the example
//! starts arbor's tunnel service in-process (in memory, 127.0.0.1, a free port), creates a tunnel of 4 stream
//! channels, appends 50 keyed records with the generated gRPC client, consumes them, then stops the worker
//! (checkpoints flushed, session shut down) and shows the service's checkpoints.
//!
//! `cargo run --example tunnel_consumer`
//!
//! Against an external `arbor serve` (stops after 50 records, 30 s or Ctrl-C):
//! `cargo run --example tunnel_consumer -- --addr http://127.0.0.1:50051 --tunnel <tunnel id>`

use std::sync::Arc;
use std::time::Duration;

use arbor::connection::{ConnectionChannel, ConnectionConfig};
use arbor::supervisor::BoxError;
use arbor::tree::Tree;
use arbor::tunnel::{Batch, ChannelType, Subscriber, TunnelOptions};
use arbor::tunnel_service::{ServerOptions, StoreOptions, TunnelServer, TunnelStore};
use arbor_proto::tunnel::v1::{self, tunnel_service_client::TunnelServiceClient};
use tokio::sync::watch;

const RECORDS: usize = 50;

/// The generated client, on a connection of the tree's pool.
type Client = TunnelServiceClient<ConnectionChannel>;

/// Prints each record and counts them; returning `Ok` acknowledges the batch (it may be checkpointed).
struct Print(Arc<watch::Sender<usize>>);

impl Subscriber for Print {
    async fn handle(&self, batch: &Batch) -> Result<(), BoxError> {
        let channel = batch.channel_id;
        for r in &batch.records {
            let (key, value) = (r.key.escape_ascii(), r.value.escape_ascii());
            println!("channel {channel} #{:<3} {key} = {value}", r.sequence);
        }
        self.0.send_modify(|n| *n += batch.records.len());
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().skip_while(|a| *a != name).nth(1).cloned();
    let tree = Tree::builder().name("consumer").start().await?;

    let mut local = None; // the in-process service, and the producer's client
    let (target, tunnel_id) = match (arg("--addr"), arg("--tunnel")) {
        (Some(addr), Some(tunnel_id)) => (ConnectionConfig::parse(&addr)?, tunnel_id),
        _ => {
            let store = TunnelStore::open(StoreOptions::in_memory())?;
            let options = ServerOptions::default().listen("127.0.0.1:0".parse()?);
            let server = TunnelServer::start(store.clone(), options).await?;
            let target = ConnectionConfig::parse(&format!("http://{}", server.local_addr()))?;
            let lease = tree.acquire(target.clone()).await?; // pooled: the worker will share this connection
            let mut client = TunnelServiceClient::new(lease.channel());
            let tunnel_id = produce(&mut client).await?;
            local = Some((server, store, lease, client));
            (target, tunnel_id)
        }
    };

    let (delivered, mut count) = watch::channel(0);
    let worker = tree
        .tunnel(TunnelOptions::new(&tunnel_id), target)
        .run_subscriber(Print(Arc::new(delivered)))
        .start()
        .await?;
    let how = tokio::select! {
        Ok(_) = count.wait_for(|n| *n >= RECORDS) => "delivered",
        exit = worker.wait() => {
            eprintln!("the tunnel worker stopped: {exit:?}");
            std::process::exit(1);
        }
        _ = tokio::signal::ctrl_c() => "interrupted after",
        _ = tokio::time::sleep(Duration::from_secs(30)) => "30 s passed after",
    };
    println!("{how}: {} records", *count.borrow());

    tree.stop_tunnel(&tunnel_id, Duration::from_secs(10)).await?; // checkpoints flushed, session shut down
    if let Some((server, store, _lease, mut client)) = local {
        let request = v1::DescribeTunnelRequest {
            tunnel_id,
            ..Default::default()
        };
        let described = client.describe_tunnel(request).await?.into_inner();
        for c in described.tunnel.ok_or("no tunnel")?.channels {
            let (checkpoint, end) = (c.checkpoint_sequence_number, c.end_sequence_number);
            println!("channel {}: checkpoint {checkpoint} of {end}", c.channel_id);
        }
        tree.shutdown(Duration::from_secs(10)).await?;
        server.stop(Duration::from_secs(5)).await?;
        store.close()?;
    } else {
        tree.shutdown(Duration::from_secs(10)).await?;
    }
    Ok(())
}

/// Creates a tunnel of 4 stream channels and appends the records, routed by key (`user-0`..`user-6`).
async fn produce(client: &mut Client) -> Result<String, Box<dyn std::error::Error>> {
    let stream = v1::ChannelSpec {
        channel_type: ChannelType::Stream.into(),
        parent_channel_id: None,
    };
    let request = v1::CreateTunnelRequest {
        tunnel_name: "orders".into(),
        channels: vec![stream; 4],
        ..Default::default()
    };
    let created = client.create_tunnel(request).await?.into_inner();
    let tunnel_id = created.tunnel.ok_or("no tunnel")?.tunnel_id;
    let records = (0..RECORDS)
        .map(|i| v1::AppendRecord {
            key: format!("user-{}", i % 7).into(),
            value: format!("order {i}").into(),
        })
        .collect();
    let request = v1::AppendRequest {
        tunnel_id: tunnel_id.clone(),
        records,
        ..Default::default()
    };
    client.append(request).await?;
    println!("created tunnel {tunnel_id}, appended {RECORDS} records");
    Ok(tunnel_id)
}
