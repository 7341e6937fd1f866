//! The tunnel worker against the real tunnel service: consuming, uniqueness, graceful shutdown.

mod tunnel_worker_common;

use std::time::Duration;

use arbor::registry::Registry;
use arbor::tunnel::{TunnelError, TunnelWorker};
use tunnel_worker_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_consumes_every_record_in_order_per_key_and_checkpoints_to_the_end() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "orders", 4).await;
    let mut expected = 0;
    for batch in 0..10 {
        let records = (0..100)
            .map(|i| record(format!("key-{}", i % 17), format!("{batch}-{i}")))
            .collect();
        append_to(&mut client, &tunnel, None, records).await.unwrap();
        expected += 100;
    }
    let registry = Registry::new("tunnels-test");
    let (worker, recorder) = start_worker(&server.url, fast_options(&tunnel), registry.clone()).await;
    recorder.wait_for(expected).await;
    // in order per key: values of one key were appended in (batch, i) order
    for (key, values) in recorder.by_key() {
        let positions: Vec<(u32, u32)> = values
            .iter()
            .map(|v| {
                let v = String::from_utf8(v.clone()).unwrap();
                let (b, i) = v.split_once('-').unwrap();
                (b.parse().unwrap(), i.parse().unwrap())
            })
            .collect();
        let mut sorted = positions.clone();
        sorted.sort();
        assert_eq!(positions, sorted, "key {key:?} out of order");
    }
    // every channel checkpointed to its end (every batch acknowledged)
    tokio::time::timeout(LONG, async {
        loop {
            let info = describe(&mut client, &tunnel).await;
            if info
                .channels
                .iter()
                .all(|c| c.checkpoint_sequence_number == c.end_sequence_number)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("checkpoints reach the end");
    assert_eq!(worker.channels().len(), 4);
    assert_eq!(worker.info().await.unwrap().channels, 4);

    // a second worker for the same tunnel in this registry is refused, naming the running one
    let second = TunnelWorker::builder(fast_options(&tunnel))
        .connection(connection(&server.url).await)
        .run_subscriber(Recorder::default())
        .registry(registry.clone())
        .start()
        .await;
    match second {
        Err(TunnelError::AlreadyRunning { tunnel_id, actor }) => {
            assert_eq!(tunnel_id, tunnel);
            assert_eq!(actor, worker.cell().unwrap().get_id());
        }
        other => panic!("expected AlreadyRunning, got {other:?}"),
    }

    // graceful shutdown: the service forgets the client at once
    worker.shutdown(Duration::from_secs(10)).await.unwrap();
    let info = describe(&mut client, &tunnel).await;
    assert!(info.clients.is_empty(), "{:?}", info.clients);
    assert!(registry.lookup(&format!("tunnel/{tunnel}")).is_none());
    server.stop().await;
}

/// Channels of each worker, as its registry entries say.
fn spread(workers: &[arbor::tunnel::TunnelHandle]) -> Vec<usize> {
    workers.iter().map(|w| w.channels().len()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_eight_channels_and_a_killed_one_is_replaced_within_its_timeout() {
    let server = TestServer::memory().await;
    let mut client = server.client().await;
    let tunnel = create_streams(&mut client, "shared", 8).await;
    let mut workers = Vec::new();
    let mut recorders = Vec::new();
    for i in 0..3 {
        // one registry per worker: three processes' worth of workers in one test
        let (w, r) = start_worker(
            &server.url,
            fast_options(&tunnel).client_tag(format!("w{i}")),
            Registry::new(format!("w{i}")),
        )
        .await;
        workers.push(w);
        recorders.push(r);
    }
    tokio::time::timeout(LONG, async {
        loop {
            let mut s = spread(&workers);
            s.sort();
            if s == [2, 3, 3] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not balanced: {:?}", spread(&workers)));

    // records flow to whoever owns the channels
    let records = (0..400)
        .map(|i| record(format!("k{i}"), format!("{i}")))
        .collect();
    append_to(&mut client, &tunnel, None, records).await.unwrap();
    tokio::time::timeout(LONG, async {
        while recorders.iter().map(|r| r.count()).sum::<usize>() < 400 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("all records delivered");

    // kill one worker outright: no Shutdown, so the service waits for its heartbeat timeout (2 s)
    let victim = workers.remove(0);
    let killed_at = std::time::Instant::now();
    victim.cell().unwrap().kill();
    tokio::time::timeout(LONG, async {
        loop {
            let mut s = spread(&workers);
            s.sort();
            if s == [4, 4] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("channels not taken over: {:?}", spread(&workers)));
    println!(
        "channels moved {:?} after the kill (timeout 2 s, heartbeat 100 ms)",
        killed_at.elapsed()
    );
    for w in &workers {
        w.shutdown(Duration::from_secs(10)).await.unwrap();
    }
    server.stop().await;
}
