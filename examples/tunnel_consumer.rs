//! Consume a tunnel through the tree's tunnel worker: a subscriber prints every record. By default the example
//! starts arbor's tunnel service in-process (in memory, 127.0.0.1, a free port), creates a tunnel of 4 stream
//! channels, appends 50 keyed records with `TunnelClient` (idempotent appends), consumes them, then stops the worker
//! (checkpoints flushed, session shut down) and shows the service's checkpoints.
//!
//! `cargo run --example tunnel_consumer`
//!
//! Against an external `arbor serve`, one consumer process among several (runs until Ctrl-C; exits non-zero if
//! it never got a session):
//! `cargo run --example tunnel_consumer -- --addr 127.0.0.1:50051 --tunnel <tunnel id>`

use std::sync::Arc;
use std::time::Duration;

use arbor::connection::{ConnectionChannel, ConnectionConfig};
use arbor::supervisor::BoxError;
use arbor::tree::Tree;
use arbor::tunnel::{Batch, Subscriber, TunnelExit, TunnelOptions, WorkerStatus};
use arbor::tunnel_service::client::{ChannelSpec, TunnelAddress, TunnelClient};
use arbor::tunnel_service::{ServerOptions, StoreOptions, TunnelServer, TunnelStore};
use tokio::sync::watch;

const RECORDS: usize = 50;

/// The typed tunnel client, on a connection of the tree's pool.
type Client = TunnelClient<ConnectionChannel>;

/// Prints each record and counts them; returning `Ok` acknowledges the batch (it may be checkpointed).
struct Print(Arc<watch::Sender<usize>>);

impl Subscriber for Print {
    async fn handle(&self, batch: &Batch) -> Result<(), BoxError> {
        let channel = batch.channel_id;
        for r in &batch.records {
            let (key, value) = (String::from_utf8_lossy(&r.key), String::from_utf8_lossy(&r.value));
            println!("channel {channel} #{:<3} {key} = {value}", r.sequence);
        }
        self.0.send_modify(|n| *n += batch.records.len());
        Ok(())
    }
}

const USAGE: &str = "usage: tunnel_consumer [--addr HOST:PORT --tunnel TUNNEL_ID]

Without arguments: starts a tunnel service in-process, appends 50 records and consumes them.
With --addr and --tunnel: consumes a tunnel of a running `arbor serve` until Ctrl-C, as one of any number of
consumer processes (each gets a balanced share of the channels); exits with 1 if it never got a session.";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    let arg = |name: &str| args.iter().skip_while(|a| *a != name).nth(1).cloned();
    let remote = match (arg("--addr"), arg("--tunnel")) {
        (Some(addr), Some(tunnel_id)) => Some((addr, tunnel_id)),
        (None, None) if args.is_empty() => None,
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let tree = Tree::builder().name("consumer").start().await?;

    if let Some((addr, tunnel_id)) = remote {
        let url = if addr.contains("://") {
            addr
        } else {
            format!("http://{addr}")
        };
        return consume_until_interrupted(&tree, ConnectionConfig::parse(&url)?, tunnel_id).await;
    }
    // In-process: the service, a tunnel of 50 records, and this process as its only consumer.
    let store = TunnelStore::open(StoreOptions::in_memory())?;
    let options = ServerOptions::default().listen("127.0.0.1:0".parse()?);
    let server = TunnelServer::start(store.clone(), options).await?;
    let target = ConnectionConfig::parse(&format!("http://{}", server.local_addr()))?;
    let lease = tree.acquire(target.clone()).await?; // pooled: the worker will share this connection
    let mut client = TunnelClient::new(lease.channel(), None)?;
    let tunnel_id = produce(&mut client).await?;

    let (delivered, mut count) = watch::channel(0);
    let worker = tree
        .tunnel(TunnelOptions::new(&tunnel_id), target)
        .run_subscriber(Print(Arc::new(delivered)))
        .start()
        .await?;
    let how = tokio::select! {
        Ok(_) = count.wait_for(|n| *n >= RECORDS) => "delivered",
        exit = worker.wait() => {
            eprintln!("the tunnel worker stopped: {}", exit_words(&exit));
            std::process::exit(1);
        }
        _ = tokio::signal::ctrl_c() => "interrupted after",
        _ = tokio::time::sleep(Duration::from_secs(30)) => "30 s passed after",
    };
    println!("{how}: {} records", *count.borrow());

    tree.stop_tunnel(&tunnel_id, Duration::from_secs(10)).await?; // checkpoints flushed, session shut down
    let described = client.describe(&TunnelAddress::Id(tunnel_id)).await?;
    for c in described.channels {
        let (checkpoint, end) = (c.checkpoint_sequence_number, c.end_sequence_number);
        println!("channel {}: checkpoint {checkpoint} of {end}", c.channel_id);
    }
    drop(lease);
    tree.shutdown(Duration::from_secs(10)).await?;
    server.stop(Duration::from_secs(5)).await?;
    store.close()?;
    Ok(())
}

/// How a worker ended, in words.
fn exit_words(exit: &TunnelExit) -> String {
    match exit {
        TunnelExit::Shutdown => "shut down".into(),
        TunnelExit::Fatal(error) => format!("fatal error: {error}"),
        TunnelExit::Killed => "killed".into(),
        _ => "stopped".into(),
    }
}

/// One consumer among several on a running service: prints what it is given until Ctrl-C, then stops
/// gracefully (checkpoints flushed, session shut down, its channels handed to the others at once).
async fn consume_until_interrupted(
    tree: &arbor::tree::TreeHandle,
    target: ConnectionConfig,
    tunnel_id: String,
) -> Result<(), Box<dyn std::error::Error>> {
    let (delivered, count) = watch::channel(0);
    let worker = tree
        .tunnel(TunnelOptions::new(&tunnel_id), target)
        .run_subscriber(Print(Arc::new(delivered)))
        .start()
        .await?;
    let mut status = worker.status();
    let mut had_session = false;
    println!("consuming tunnel {tunnel_id}; Ctrl-C stops");
    let stopped = loop {
        tokio::select! {
            changed = status.changed() => {
                if changed.is_err() {
                    break None;
                }
                had_session |= *status.borrow_and_update() == WorkerStatus::Active;
            }
            exit = worker.wait() => break Some(exit),
            _ = tokio::signal::ctrl_c() => break None,
        }
    };
    if let Some(exit) = stopped {
        eprintln!("the tunnel worker stopped: {}", exit_words(&exit));
    }
    println!("{} records", *count.borrow());
    tree.shutdown(Duration::from_secs(10)).await?;
    if !had_session {
        eprintln!(
            "never got a session on tunnel {tunnel_id}: is `arbor serve` running there, and the id right?"
        );
        std::process::exit(1);
    }
    Ok(())
}

/// Creates a tunnel of 4 stream channels and appends the records, routed by key (`user-0`..`user-6`).
async fn produce(client: &mut Client) -> Result<String, Box<dyn std::error::Error>> {
    let created = client.create("orders", &[ChannelSpec::stream(); 4], None).await?;
    let tunnel = TunnelAddress::Id(created.tunnel_id.clone());
    let records = (0..RECORDS).map(|i| (format!("user-{}", i % 7), format!("order {i}")));
    let appended = client.append(&tunnel, records).await?;
    let last = appended.records.last().ok_or("no record appended")?;
    println!(
        "created tunnel {}, appended {RECORDS} records (the last to channel {} at {})",
        created.tunnel_id, last.channel_id, last.sequence_number
    );
    Ok(created.tunnel_id)
}
