//! The tree's connection pool: two leases on one gRPC target share one connection (refcounted); a call goes
//! through a lease's channel; the connection's state is watched while the server goes away (IDLE, CONNECTING,
//! TRANSIENT_FAILURE with the reason) and comes back on the same port (READY again at the next backoff
//! attempt); releasing the last lease stops the connection. The server is arbor's tunnel service, in-process
//! on 127.0.0.1 (any tonic server would do: the connection only needs `grpc.health.v1`).
//!
//! `cargo run --example connection_pool`

use std::time::{Duration, Instant};

use arbor::connection::{ConnectionConfig, ConnectivityState, IdleReconnect};
use arbor::tree::Tree;
use arbor::tunnel_service::{ServerOptions, StoreOptions, TunnelServer, TunnelStore};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = TunnelStore::open(StoreOptions::in_memory())?;
    let options = ServerOptions::default().listen("127.0.0.1:0".parse()?);
    let server = TunnelServer::start(store.clone(), options).await?;
    let addr = server.local_addr();
    let tree = Tree::builder().name("client").start().await?;

    // Eager: after a clean close by the server, reconnect at once (the default waits for the next call).
    let config =
        ConnectionConfig::parse(&format!("http://{addr}"))?.with_idle_reconnect(IdleReconnect::Eager);
    let a = tree.acquire(config.clone()).await?;
    let b = tree.acquire(config).await?;
    assert_eq!(a.key(), b.key());
    println!("leases a and b share {}: {}", a.key(), tree.pool().stats().await?);

    a.wait_ready(Duration::from_secs(5)).await?;
    let mut health = HealthClient::new(b.channel()); // any tonic client; it follows reconnects
    let answer = health
        .check(b.request(HealthCheckRequest::default()))
        .await?
        .into_inner();
    println!(
        "READY; health check through lease b: {}",
        answer.status().as_str_name()
    );

    let mut states = a.watch();
    let printer = tokio::spawn(async move {
        while states.changed().await.is_ok() {
            let now = states.borrow_and_update().clone();
            let why = now.close_reason.map(|r| format!(" ({r})")).unwrap_or_default();
            println!("  state: {}{why}", now.state);
        }
    });

    server.stop(Duration::from_millis(100)).await?;
    println!("server stopped");
    let mut watch = a.watch();
    tokio::time::timeout(
        Duration::from_secs(5),
        watch.wait_for(|s| s.state == ConnectivityState::TransientFailure),
    )
    .await??;
    let server = TunnelServer::start(store.clone(), ServerOptions::default().listen(addr)).await?;
    println!("server restarted on {addr}");
    let since = Instant::now();
    a.wait_ready(Duration::from_secs(10)).await?;
    println!(
        "READY again after {:.1?} (the next attempt of the backoff schedule)",
        since.elapsed()
    );
    let answer = health
        .check(b.request(HealthCheckRequest::default()))
        .await?
        .into_inner();
    println!("the same client works again: {}", answer.status().as_str_name());

    drop(a); // the pool's linger is 0 (the default): the last release stops the connection at once
    println!("a released: {}", tree.pool().stats().await?);
    drop((b, health));
    println!("b released: {}", tree.pool().stats().await?);

    tree.shutdown(Duration::from_secs(5)).await?;
    printer.abort();
    server.stop(Duration::from_secs(1)).await?;
    store.close()?;
    Ok(())
}
