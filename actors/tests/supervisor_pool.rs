//! A dynamic supervisor as a pool: its default intensity counts each child's restarts on their own, so
//! unrelated crashes across a large pool do not wipe it, while one child crash-looping still makes it give up.

mod common;

use std::time::Duration;

use arbor_actors::supervisor::{
    DynamicSupervisor, EventSink, IntensityScope, SupervisorEvent, SupervisorExit,
};
use common::*;
use tokio::sync::broadcast;

const WORKERS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_worker_pool_survives_twenty_quick_crashes_of_different_workers() {
    let mut w = Workers::new();
    let pool = DynamicSupervisor::builder().start().await.unwrap();
    let mut workers = Vec::new();
    for i in 0..WORKERS {
        workers.push(
            pool.start_child(typed_spec(w.args(&format!("w{i}"))))
                .await
                .unwrap(),
        );
    }
    w.take(WORKERS).await;
    for worker in workers.iter().step_by(5) {
        worker.cast(WorkerMsg::Panic).unwrap();
    }
    // each comes back (one restart each, well within its own 3 in 5 s)
    let mut restarted = 0;
    while restarted < WORKERS / 5 {
        if let Life::Started(..) = w.next().await {
            restarted += 1;
        }
    }
    assert!(pool.is_running());
    let counts = pool.count_children().await.unwrap();
    assert_eq!((counts.specs, counts.active), (WORKERS, WORKERS));
    pool.shutdown(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test]
async fn one_child_crash_looping_makes_the_pool_give_up_and_say_which() {
    let mut w = Workers::new();
    let (tx, mut rx) = broadcast::channel(256);
    let pool = DynamicSupervisor::builder()
        .events(EventSink::new("pool", tx))
        .start()
        .await
        .unwrap();
    let calm = pool.start_child(typed_spec(w.args("calm"))).await.unwrap();
    let looping = pool.start_child(typed_spec(w.args("loop"))).await.unwrap();
    w.take(2).await;
    calm.cast(WorkerMsg::Panic).unwrap();
    w.started("calm").await;
    for _ in 0..3 {
        looping.cast(WorkerMsg::Panic).unwrap();
        w.started("loop").await;
    }
    // the fourth crash of one child within 5 s is one too many
    looping.cast(WorkerMsg::Panic).unwrap();
    let exit = pool.wait().await.unwrap();
    assert_eq!(
        exit,
        SupervisorExit::IntensityReached {
            child: looping.id(),
            max_restarts: 3,
            period: Duration::from_secs(5)
        }
    );
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an event")
            .expect("open");
        if let SupervisorEvent::Stopped { supervisor, exit: e } = event {
            assert_eq!((&*supervisor, e), ("pool", exit));
            break;
        }
    }
}

#[tokio::test]
async fn the_supervisor_scope_counts_every_childs_restarts_against_one_budget() {
    let mut w = Workers::new();
    let pool = DynamicSupervisor::builder()
        .intensity_scope(IntensityScope::Supervisor)
        .start()
        .await
        .unwrap();
    let mut workers = Vec::new();
    for i in 0..4 {
        workers.push(
            pool.start_child(typed_spec(w.args(&format!("w{i}"))))
                .await
                .unwrap(),
        );
    }
    w.take(4).await;
    for worker in &workers[..3] {
        worker.cast(WorkerMsg::Panic).unwrap();
        w.next().await;
    }
    workers[3].cast(WorkerMsg::Panic).unwrap();
    assert!(matches!(
        pool.wait().await.unwrap(),
        SupervisorExit::IntensityReached { max_restarts: 3, .. }
    ));
}
