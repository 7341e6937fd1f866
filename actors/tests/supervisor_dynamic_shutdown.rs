//! A dynamic supervisor's graceful shutdown: every child whose `start_child` returned `Ok` gets its `post_stop`,
//! however soon the stop follows; none is alive when `shutdown` returns; children stop concurrently.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbor_actors::supervisor::{ChildSpec, DynamicSupervisor, Shutdown, SupervisorError};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, ActorStatus};
use tokio::sync::Barrier;

/// What the children tell the test, by the tag each start was given.
#[derive(Default)]
struct Ledger {
    started: Mutex<HashMap<u64, ActorCell>>,
    stopped: Mutex<HashSet<u64>>,
}

#[derive(Clone)]
struct CountedArgs {
    tag: u64,
    ledger: Arc<Ledger>,
    /// `post_stop` waits here (with every other child) when set.
    barrier: Option<Arc<Barrier>>,
    /// `pre_start` takes this long.
    start_delay: Duration,
}

struct Counted;

impl Actor for Counted {
    type Msg = ();
    type State = CountedArgs;
    type Arguments = CountedArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        args: CountedArgs,
    ) -> Result<CountedArgs, ActorProcessingErr> {
        if !args.start_delay.is_zero() {
            tokio::time::sleep(args.start_delay).await;
        }
        args.ledger
            .started
            .lock()
            .unwrap()
            .insert(args.tag, myself.get_cell());
        Ok(args)
    }

    async fn post_stop(&self, _: ActorRef<()>, args: &mut CountedArgs) -> Result<(), ActorProcessingErr> {
        if let Some(barrier) = &args.barrier {
            barrier.wait().await;
        }
        args.ledger.stopped.lock().unwrap().insert(args.tag);
        Ok(())
    }
}

fn counted(args: CountedArgs) -> ChildSpec {
    ChildSpec::actor("counted", move || (Counted, args.clone()))
        .shutdown(Shutdown::Timeout(Duration::from_secs(10)))
        .into()
}

fn args(tag: u64, ledger: &Arc<Ledger>) -> CountedArgs {
    CountedArgs {
        tag,
        ledger: Arc::clone(ledger),
        barrier: None,
        start_delay: Duration::ZERO,
    }
}

fn assert_all_stopped(ledger: &Ledger) {
    for (tag, cell) in ledger.started.lock().unwrap().iter() {
        assert_eq!(
            cell.get_status(),
            ActorStatus::Stopped,
            "child {tag} is still alive after shutdown returned"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_right_after_the_last_start_stops_every_acknowledged_child_gracefully() {
    for round in 0..10 {
        let ledger = Arc::new(Ledger::default());
        let sup = DynamicSupervisor::builder().start().await.unwrap();
        for tag in 0..200 {
            sup.start_child(counted(args(tag, &ledger))).await.unwrap();
        }
        sup.shutdown(Duration::from_secs(30)).await.unwrap();
        let stopped = ledger.stopped.lock().unwrap().len();
        assert_eq!(
            stopped, 200,
            "round {round}: only {stopped} of 200 post_stops ran"
        );
        assert_all_stopped(&ledger);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn starts_racing_the_stop_are_either_refused_or_stopped_gracefully() {
    for round in 0..5 {
        let ledger = Arc::new(Ledger::default());
        let sup = DynamicSupervisor::builder().start().await.unwrap();
        let next_tag = Arc::new(AtomicU64::new(0));
        let started = Arc::new(tokio::sync::Semaphore::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (sup, ledger, next_tag, started) = (
                    sup.clone(),
                    Arc::clone(&ledger),
                    Arc::clone(&next_tag),
                    Arc::clone(&started),
                );
                tokio::spawn(async move {
                    let mut acknowledged = Vec::new();
                    loop {
                        let tag = next_tag.fetch_add(1, Ordering::Relaxed);
                        match sup.start_child(counted(args(tag, &ledger))).await {
                            Ok(_) => {
                                acknowledged.push(tag);
                                started.add_permits(1);
                            }
                            Err(SupervisorError::ShuttingDown | SupervisorError::NotRunning { .. }) => {
                                return acknowledged
                            }
                            Err(other) => panic!("unexpected start error: {other}"),
                        }
                    }
                })
            })
            .collect();
        // the stop comes while all 50 tasks keep starting children
        let _ = tokio::time::timeout(Duration::from_secs(10), started.acquire_many(100))
            .await
            .expect("children start");
        sup.shutdown(Duration::from_secs(60)).await.unwrap();
        assert_all_stopped(&ledger);
        let mut acknowledged = 0;
        for task in tasks {
            let task = tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("task ends");
            for tag in task.unwrap() {
                acknowledged += 1;
                assert!(
                    ledger.stopped.lock().unwrap().contains(&tag),
                    "round {round}: child {tag} was acknowledged but its post_stop never ran"
                );
            }
        }
        assert!(acknowledged >= 100);
        assert_all_stopped(&ledger);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_children_are_stopped_concurrently() {
    // Each post_stop waits until every child is in its post_stop: one at a time, the first would wait out its
    // 10 s timeout and be killed, and the count would fall short.
    const CHILDREN: u64 = 94;
    let ledger = Arc::new(Ledger::default());
    let barrier = Arc::new(Barrier::new(CHILDREN as usize));
    let sup = DynamicSupervisor::builder().start().await.unwrap();
    for tag in 0..CHILDREN {
        let mut a = args(tag, &ledger);
        a.barrier = Some(Arc::clone(&barrier));
        sup.start_child(counted(a)).await.unwrap();
    }
    sup.shutdown(Duration::from_secs(60)).await.unwrap();
    assert_eq!(ledger.stopped.lock().unwrap().len() as u64, CHILDREN);
    assert_all_stopped(&ledger);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_a_start_in_flight() {
    let ledger = Arc::new(Ledger::default());
    let sup = DynamicSupervisor::builder().start().await.unwrap();
    let mut slow = args(1, &ledger);
    slow.start_delay = Duration::from_millis(300);
    let starting = {
        let sup = sup.clone();
        tokio::spawn(async move { sup.start_child(counted(slow)).await })
    };
    // the start is in flight (its pre_start sleeps) when the stop comes
    tokio::task::yield_now().await;
    sup.shutdown(Duration::from_secs(30)).await.unwrap();
    assert_all_stopped(&ledger);
    match starting.await.unwrap() {
        Ok(_) => assert!(
            ledger.stopped.lock().unwrap().contains(&1),
            "acknowledged, so stopped gracefully"
        ),
        Err(SupervisorError::ShuttingDown | SupervisorError::NotRunning { .. }) => {}
        Err(other) => panic!("unexpected start error: {other}"),
    }
    assert!(matches!(
        sup.start_child(counted(args(2, &ledger))).await,
        Err(SupervisorError::NotRunning { .. })
    ));
}
