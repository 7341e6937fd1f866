//! Connection benchmarks (not timed tests): prints a table.
//!
//! `cargo bench -p arbor-actors --bench connection`
//!
//! 1. Reconnect latency: the server is killed, the connection's immediate re-dial fails and it waits in
//!    TRANSIENT_FAILURE; the server comes back; time from the later of (server accepting again, next scheduled
//!    attempt) to READY. Goal: within 5 ms of the scheduled attempt.
//! 2. `ConnectionHandle::pinned_transport()` vs cloning a tonic `Channel` directly.
//! 3. A unary call through the following `ConnectionChannel` (routing + auth layer) vs the same call on the raw
//!    tonic `Channel` (the baseline), interleaved rounds on one connection.
//! 4. Pool `acquire` throughput: 1,000 leases over 10 targets.

#[path = "../tests/grpc_common/mod.rs"]
mod grpc_common;

use std::time::{Duration, Instant as StdInstant};

use arbor_actors::connection::{
    BackoffConfig, ConnectionConfig, ConnectionHandle, ConnectionPool, ConnectivityState, PoolOptions,
};
use grpc_common::{free_port, InProcessServer};
use tokio::time::Instant;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (pct(&v, 0.5), pct(&v, 0.99), v[v.len() - 1])
}

fn config(port: u16) -> ConnectionConfig {
    ConnectionConfig::parse(&format!("grpc://127.0.0.1:{port}?disableTls=true"))
        .unwrap()
        .with_backoff(BackoffConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
            min_connect_timeout: Duration::from_secs(1),
            ..Default::default()
        })
        .with_probe_interval(None)
}

async fn reconnect_latency(rounds: usize) -> (Vec<f64>, Vec<f64>) {
    let port = free_port();
    let mut server = InProcessServer::start(port, None);
    let h = ConnectionHandle::start(config(port)).await.unwrap();
    h.wait_ready(Duration::from_secs(10)).await.unwrap();
    let mut after_schedule = Vec::new();
    let mut after_up = Vec::new();
    let mut rx = h.watch();
    for _ in 0..rounds {
        server.kill();
        drop(server);
        // Wait for the failed re-dial: TRANSIENT_FAILURE with the next attempt scheduled.
        let next_at = rx
            .wait_for(|s| s.state == ConnectivityState::TransientFailure)
            .await
            .unwrap()
            .next_attempt_at
            .unwrap();
        server = InProcessServer::start(port, None);
        let up = Instant::now();
        // The attempt scheduled just before the server came back may still fail: the reference is the
        // scheduled start of the attempt that succeeded (the last TRANSIENT_FAILURE's next_attempt_at).
        let mut scheduled = next_at;
        loop {
            let s = rx.borrow_and_update().clone();
            match s.state {
                ConnectivityState::Ready => break,
                ConnectivityState::TransientFailure => scheduled = s.next_attempt_at.unwrap(),
                _ => {}
            }
            rx.changed().await.unwrap();
        }
        let ready = Instant::now();
        let reference = scheduled.max(up);
        after_schedule.push((ready - reference).as_secs_f64() * 1e3);
        if std::env::var_os("BENCH_VERBOSE").is_some() {
            let s = h.snapshot();
            eprintln!(
                "round: {:.2} ms after reference; scheduled {:?} vs up: {:.2} ms; attempt started {:.2} ms after reference",
                (ready - reference).as_secs_f64() * 1e3,
                if scheduled > up { "later" } else { "earlier" },
                (scheduled.max(up) - scheduled.min(up)).as_secs_f64() * 1e3,
                (s.attempt_started_at.unwrap() - reference).as_secs_f64() * 1e3,
            );
        }
        after_up.push((ready - up).as_secs_f64() * 1e3);
    }
    h.shutdown(Duration::from_secs(5)).await.unwrap();
    (after_schedule, after_up)
}

fn per_op_ns(batches: usize, per_batch: usize, mut f: impl FnMut()) -> Vec<f64> {
    (0..batches)
        .map(|_| {
            let t = StdInstant::now();
            for _ in 0..per_batch {
                f();
            }
            t.elapsed().as_nanos() as f64 / per_batch as f64
        })
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("arbor connection benchmark (2-core machine, loopback, release build)\n");
    println!("| measure | median | p99 | max |");
    println!("|---|---|---|---|");

    let (sched, up) = reconnect_latency(30).await;
    let (m, p, x) = summary(sched);
    println!("| reconnect: READY after max(next scheduled attempt, server up) (ms, 30 rounds) | {m:.2} | {p:.2} | {x:.2} |");
    let (m, p, x) = summary(up);
    println!("| reconnect: READY after server up (ms; includes the wait for the scheduled attempt) | {m:.2} | {p:.2} | {x:.2} |");

    let server = InProcessServer::start(0, None);
    let h = ConnectionHandle::start(config(server.port())).await.unwrap();
    h.wait_ready(Duration::from_secs(10)).await.unwrap();
    let ch = h.pinned_transport().unwrap();
    let via_handle = per_op_ns(200, 10_000, || {
        std::hint::black_box(h.pinned_transport().unwrap());
    });
    let direct = per_op_ns(200, 10_000, || {
        std::hint::black_box(ch.clone());
    });
    let (hm, hp, hx) = summary(via_handle);
    let (dm, dp, dx) = summary(direct);
    println!("| `handle.pinned_transport()` (ns/call) | {hm:.1} | {hp:.1} | {hx:.1} |");
    println!("| `Channel::clone()` direct (ns/call) | {dm:.1} | {dp:.1} | {dx:.1} |");
    println!("| ratio transport()/clone (median) | {:.2}x | | |", hm / dm);

    // Unary Check, 20 interleaved rounds of 500 calls per side, one client per side built once.
    let mut following = HealthClient::new(h.channel());
    let mut raw = HealthClient::new(ch.clone());
    let (mut f_us, mut r_us) = (Vec::new(), Vec::new());
    for round in 0..21 {
        for (client_is_following, out) in [(true, &mut f_us), (false, &mut r_us)] {
            for _ in 0..500 {
                let t = StdInstant::now();
                let reply = if client_is_following {
                    following.check(HealthCheckRequest::default()).await
                } else {
                    raw.check(HealthCheckRequest::default()).await
                };
                reply.unwrap();
                // Round 0 warms both sides up.
                if round > 0 {
                    out.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
        }
    }
    let (fm, fp, fx) = summary(f_us);
    let (rm, rp, rx) = summary(r_us);
    println!("| unary call via `ConnectionChannel` (us) | {fm:.1} | {fp:.1} | {fx:.1} |");
    println!("| unary call via raw tonic `Channel` (us) | {rm:.1} | {rp:.1} | {rx:.1} |");
    println!(
        "| ratio ConnectionChannel/raw (median, p99) | {:.2}x | {:.2}x | |",
        fm / rm,
        fp / rp
    );
    h.shutdown(Duration::from_secs(5)).await.unwrap();
    drop(server);

    let servers: Vec<InProcessServer> = (0..10).map(|_| InProcessServer::start(0, None)).collect();
    let pool = ConnectionPool::new(PoolOptions::default().linger(Duration::from_secs(60)));
    pool.start().await.unwrap();
    let configs: Vec<ConnectionConfig> = servers.iter().map(|s| config(s.port())).collect();
    let mut round_rates = Vec::new();
    let mut lat = Vec::new();
    for round in 0..6 {
        let t = StdInstant::now();
        let mut leases = Vec::with_capacity(1000);
        for i in 0..1000 {
            let a = StdInstant::now();
            leases.push(pool.acquire(configs[i % 10].clone()).await.unwrap());
            if round > 0 {
                lat.push(a.elapsed().as_secs_f64() * 1e6);
            }
        }
        let elapsed = t.elapsed();
        if round == 0 {
            println!(
                "| pool: first 1,000 acquires incl. creating 10 connections (ms total) | {:.1} | | |",
                elapsed.as_secs_f64() * 1e3
            );
        } else {
            round_rates.push(1000.0 / elapsed.as_secs_f64());
        }
        drop(leases);
    }
    let (m, p, x) = summary(lat);
    println!("| pool: acquire latency, warm, sequential (us) | {m:.1} | {p:.1} | {x:.1} |");
    let (m, _, _) = summary(round_rates);
    println!("| pool: acquires/s, warm, sequential (median of 5 rounds of 1,000) | {m:.0} | | |");

    // Concurrent: 10 tasks x 100 acquires.
    let mut conc = Vec::new();
    for _ in 0..5 {
        let t = StdInstant::now();
        let tasks: Vec<_> = (0..10)
            .map(|k| {
                let pool = pool.clone();
                let cfg = configs[k].clone();
                tokio::spawn(async move {
                    let mut v = Vec::with_capacity(100);
                    for _ in 0..100 {
                        v.push(pool.acquire(cfg.clone()).await.unwrap());
                    }
                    v
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        conc.push(1000.0 / t.elapsed().as_secs_f64());
        assert_eq!(pool.stats().await.unwrap().leases, 1000);
        drop(all);
    }
    let (m, _, _) = summary(conc);
    println!("| pool: acquires/s, 10 concurrent tasks x 100 (median of 5) | {m:.0} | | |");
    pool.shutdown(Duration::from_secs(10)).await.unwrap();
}
