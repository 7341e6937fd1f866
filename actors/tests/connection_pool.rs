//! The refcounted connection pool, under the arbor supervisor, against real tonic servers on 127.0.0.1.
#![cfg(feature = "connection")]

mod grpc_common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arbor_actors::connection::{
    BackoffConfig, ConfigError, ConnectionConfig, ConnectionPool, ConnectivityState, PoolError, PoolOptions,
    PoolStats, TargetError,
};
use arbor_actors::registry::RegistryEvent;
use arbor_actors::supervisor::{Supervisor, SupervisorOptions};
use grpc_common::{free_port, InProcessServer, LONG};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::watch;
use tokio::time::timeout;

fn config(port: u16, extra: &str) -> ConnectionConfig {
    ConnectionConfig::parse(&format!("grpc://127.0.0.1:{port}?disableTls=true{extra}"))
        .unwrap()
        .with_backoff(BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(500),
            min_connect_timeout: Duration::from_secs(1),
            ..Default::default()
        })
        .with_probe_interval(None)
}

async fn wait_stats(pool: &ConnectionPool, want: PoolStats) {
    // The pool answers in message order: poll its counts until they match (each poll is a round trip).
    timeout(LONG, async {
        loop {
            if pool.stats().await.unwrap() == want {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("stats never became {want:?}"));
}

/// A TCP proxy that counts open client connections, to see from outside when a connection really closes.
async fn counting_proxy(upstream: u16) -> (u16, watch::Receiver<usize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = watch::channel(0usize);
    let tx = Arc::new(tx);
    let open = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            let open = open.clone();
            tx.send_replace(open.fetch_add(1, Ordering::SeqCst) + 1);
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
                tx.send_replace(open.fetch_sub(1, Ordering::SeqCst) - 1);
            });
        }
    });
    (port, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acquires_share_one_actor_and_release_to_zero_closes_tcp() {
    grpc_common::init_tracing();
    let server = InProcessServer::start(0, None);
    let (proxy, mut open) = counting_proxy(server.port()).await;
    let pool = ConnectionPool::new(PoolOptions::default());
    let _sup = Supervisor::start(SupervisorOptions::default(), vec![pool.child_spec("pool")])
        .await
        .unwrap();

    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.acquire(config(proxy, "")).await.unwrap() })
        })
        .collect();
    let mut leases = Vec::new();
    for t in tasks {
        leases.push(t.await.unwrap());
    }
    let first = leases[0].handle().actor().unwrap().get_id();
    assert!(leases
        .iter()
        .all(|l| l.handle().actor().unwrap().get_id() == first));
    assert_eq!(
        pool.stats().await.unwrap(),
        PoolStats {
            connections: 1,
            leases: 20
        }
    );
    leases[0].wait_ready(LONG).await.unwrap();
    assert!(leases[7].pinned_transport().is_ok());
    // A lease builds requests with the connection's deadline, and its channel serves a generated client.
    let reply = tonic_health::pb::health_client::HealthClient::new(leases[7].channel())
        .check(leases[7].request(tonic_health::pb::HealthCheckRequest::default()))
        .await
        .unwrap();
    assert_eq!(
        reply.into_inner().status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let timed = leases[7].request_with_timeout((), Duration::from_millis(250));
    assert_eq!(timed.metadata().get("grpc-timeout").unwrap(), "250000u");

    // Registered with target and live state.
    let key = leases[0].key().to_string();
    timeout(LONG, async {
        while pool.registry().lookup(&key).map(|e| e.value.state) != Some(ConnectivityState::Ready) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    let entry = pool.registry().lookup(&key).unwrap();
    assert_eq!(
        entry.value.target,
        format!("grpc://127.0.0.1:{proxy}?disableTls=true")
    );
    assert_eq!(entry.actor.id(), first);
    assert_eq!(*open.borrow(), 1, "one TCP connection for 20 leases");

    leases.truncate(1);
    assert_eq!(pool.stats().await.unwrap().connections, 1);
    drop(leases);
    wait_stats(
        &pool,
        PoolStats {
            connections: 0,
            leases: 0,
        },
    )
    .await;
    timeout(LONG, open.wait_for(|n| *n == 0))
        .await
        .expect("the TCP connection closes when the last lease goes")
        .unwrap();
    assert!(pool.registry().lookup(&key).is_none());
    pool.shutdown(LONG).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_credentials_get_different_entries() {
    grpc_common::init_tracing();
    let server = InProcessServer::start(0, None);
    let pool = ConnectionPool::new(PoolOptions::default());
    pool.start().await.unwrap();
    let a = pool
        .acquire(config(server.port(), "&apiKey=alpha"))
        .await
        .unwrap();
    let b = pool.acquire(config(server.port(), "&apiKey=beta")).await.unwrap();
    let a2 = pool
        .acquire(config(server.port(), "&apiKey=alpha"))
        .await
        .unwrap();
    assert_ne!(a.key(), b.key());
    assert_eq!(a.key(), a2.key());
    assert_ne!(
        a.handle().actor().unwrap().get_id(),
        b.handle().actor().unwrap().get_id()
    );
    assert_eq!(
        pool.stats().await.unwrap(),
        PoolStats {
            connections: 2,
            leases: 3
        }
    );
    assert_eq!(pool.registry().len(), 2);
    assert!(pool
        .registry()
        .list()
        .iter()
        .all(|e| !e.value.target.contains("alpha")));
    drop((a, b, a2));
    wait_stats(
        &pool,
        PoolStats {
            connections: 0,
            leases: 0,
        },
    )
    .await;
    // Bad input is a typed error naming the part, and creates nothing.
    let err = pool.acquire_str("grpc://h:99999").await.unwrap_err();
    match &err {
        PoolError::Config(ConfigError::Target(TargetError::InvalidPort { port, .. })) => {
            assert_eq!(port, "99999")
        }
        other => panic!("expected an invalid port, got {other:?}"),
    }
    // The cause is reachable by walking the chain, as a logger would.
    let source = std::error::Error::source(&err).and_then(std::error::Error::source);
    assert!(source.unwrap().to_string().contains("99999"), "{err}");
    assert_eq!(pool.stats().await.unwrap().connections, 0);
    pool.shutdown(LONG).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_entry_is_evicted_and_failed_first_dial_not_cached() {
    grpc_common::init_tracing();
    let port = free_port();
    let pool = ConnectionPool::new(PoolOptions::default().linger(Duration::from_secs(30)));
    pool.start().await.unwrap();
    // Nobody listens: the connection gives up after one attempt and is SHUTDOWN while the lease is held.
    let dead = pool
        .acquire(config(port, "").with_max_attempts(Some(1)))
        .await
        .unwrap();
    let first = dead.handle().actor().unwrap().get_id();
    assert!(dead.wait_ready(LONG).await.is_err());
    assert_eq!(dead.handle().state(), ConnectivityState::Shutdown);
    let _server = InProcessServer::start(port, None);
    let fresh = pool.acquire(config(port, "")).await.unwrap();
    assert_ne!(
        fresh.handle().actor().unwrap().get_id(),
        first,
        "stale entry evicted"
    );
    fresh.wait_ready(LONG).await.unwrap();
    drop(dead); // a lease on the evicted entry: its release is ignored
    assert_eq!(
        pool.stats().await.unwrap(),
        PoolStats {
            connections: 1,
            leases: 1
        }
    );
    drop(fresh);
    // Linger keeps a connection that was READY.
    assert_eq!(
        pool.stats().await.unwrap(),
        PoolStats {
            connections: 1,
            leases: 0
        }
    );

    // A connection that never reached READY is not cached, linger or not.
    let nowhere = free_port();
    let l = pool.acquire(config(nowhere, "")).await.unwrap();
    assert_eq!(
        pool.stats().await.unwrap(),
        PoolStats {
            connections: 2,
            leases: 1
        }
    );
    drop(l);
    wait_stats(
        &pool,
        PoolStats {
            connections: 1,
            leases: 0,
        },
    )
    .await;
    pool.shutdown(LONG).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linger_keeps_a_released_connection_then_closes_it() {
    grpc_common::init_tracing();
    let server = InProcessServer::start(0, None);
    let pool = ConnectionPool::new(PoolOptions::default().linger(Duration::from_millis(300)));
    pool.start().await.unwrap();
    let mut events = pool.registry().watch();
    let l = pool.acquire(config(server.port(), "")).await.unwrap();
    let id = l.handle().actor().unwrap().get_id();
    l.wait_ready(LONG).await.unwrap();
    drop(l);
    // Re-acquired within the linger: same connection.
    let l = pool.acquire(config(server.port(), "")).await.unwrap();
    assert_eq!(l.handle().actor().unwrap().get_id(), id);
    drop(l);
    timeout(LONG, async {
        loop {
            if let RegistryEvent::Removed(e, _) = events.recv().await.unwrap() {
                assert_eq!(e.actor.id(), id);
                return;
            }
        }
    })
    .await
    .expect("removed after the linger");
    assert_eq!(
        pool.stats().await.unwrap(),
        PoolStats {
            connections: 0,
            leases: 0
        }
    );
    pool.shutdown(LONG).await.unwrap();
}

struct Holder;
impl Actor for Holder {
    type Msg = ();
    type State = ();
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_death_releases_its_lease() {
    grpc_common::init_tracing();
    let server = InProcessServer::start(0, None);
    let pool = ConnectionPool::new(PoolOptions::default());
    pool.start().await.unwrap();
    let (holder, _) = Actor::spawn(None, Holder, ()).await.unwrap();
    let lease = pool
        .acquire_for(config(server.port(), ""), holder.get_cell())
        .await
        .unwrap();
    let other = pool.acquire(config(server.port(), "")).await.unwrap();
    assert_eq!(
        pool.stats().await.unwrap(),
        PoolStats {
            connections: 1,
            leases: 2
        }
    );
    holder.stop(None);
    wait_stats(
        &pool,
        PoolStats {
            connections: 1,
            leases: 1,
        },
    )
    .await;
    drop(other);
    wait_stats(
        &pool,
        PoolStats {
            connections: 0,
            leases: 0,
        },
    )
    .await;
    drop(lease); // already released with its holder: ignored
    assert_eq!(
        pool.stats().await.unwrap(),
        PoolStats {
            connections: 0,
            leases: 0
        }
    );
    pool.shutdown(LONG).await.unwrap();
}
