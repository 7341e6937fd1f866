//! OTP `supervisor_SUITE` behaviours: start and stop, child administration, dynamic supervisors, significant
//! children, failed restarts and backoff.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbor_actors::supervisor::{
    AutoShutdown, ChildCounts, ChildSpec, ChildStatus, DynamicSupervisor, DynamicSupervisorOptions, Restart,
    RestartBackoff, Shutdown, StartPanic, Supervisor, SupervisorError, SupervisorExit, SupervisorOptions,
};
use common::*;
use ractor::ActorStatus;

#[tokio::test]
async fn shutdown_stops_children_in_reverse_start_order() {
    let mut w = Workers::new();
    let sup = Supervisor::start(Default::default(), vec![w.spec("a"), w.spec("b"), w.spec("c")])
        .await
        .unwrap();
    w.take(3).await;
    sup.shutdown(Duration::from_secs(30)).await.unwrap();
    assert_eq!(names(&w.take(3).await), ["-c", "-b", "-a"]);
    assert_eq!(sup.wait().await.unwrap(), SupervisorExit::Shutdown);
}

#[tokio::test]
async fn shutdown_timeouts_are_honoured_and_a_child_that_ignores_stop_is_killed() {
    let mut w = Workers::new();
    let mut slow = w.args("slow");
    slow.stop_delay = Duration::from_millis(300);
    let mut patient = w.args("patient");
    patient.stop_delay = Duration::from_millis(300);
    let specs = vec![
        spec_with(patient).shutdown(Shutdown::Infinity),
        spec_with(slow).shutdown(Shutdown::Timeout(Duration::from_secs(10))),
        w.spec("stubborn")
            .shutdown(Shutdown::Timeout(Duration::from_millis(200))),
        w.spec("brutal").shutdown(Shutdown::BrutalKill),
    ];
    let sup = Supervisor::start(Default::default(), specs).await.unwrap();
    w.take(4).await;
    let cells: Vec<_> = sup
        .which_children()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.cell.unwrap())
        .collect();
    // stubborn is busy for a minute and never reads its stop request
    worker(&cells[2])
        .cast(WorkerMsg::Hang(Duration::from_secs(60)))
        .unwrap();

    let began = Instant::now();
    sup.shutdown(Duration::from_secs(20)).await.unwrap();
    let took = began.elapsed();
    // brutal: killed, so no post_stop; stubborn: killed after its timeout; slow and patient: waited for
    assert_eq!(names(&w.take(2).await), ["-slow", "-patient"]);
    assert!(w.quiet());
    assert!(cells.iter().all(|c| c.get_status() == ActorStatus::Stopped));
    assert!(
        took >= Duration::from_millis(800),
        "the two 300 ms stops and stubborn's 200 ms were waited for: {took:?}"
    );
    assert!(
        took < Duration::from_secs(20),
        "stubborn was killed, not waited for a minute: {took:?}"
    );
}

#[tokio::test]
async fn a_child_failing_to_start_fails_the_supervisor_start_and_stops_the_ones_before_it() {
    let mut w = Workers::new();
    let b = w.args("b");
    b.fail_starts.store(u32::MAX, Ordering::SeqCst);
    let result = Supervisor::start(Default::default(), vec![w.spec("a"), spec_with(b), w.spec("c")]).await;
    match result {
        Err(SupervisorError::StartFailed { id, source }) => {
            assert_eq!(id, "b");
            // pre_start's own error, not ractor's "panicked during startup" wrapper
            assert_eq!(source.to_string(), "b refuses to start");
        }
        other => panic!("expected StartFailed, got {:?}", other.map(|_| ())),
    }
    assert_eq!(names(&w.take(2).await), ["+a", "-a"]);
    assert!(w.quiet(), "c was never started");
}

#[tokio::test]
async fn a_start_closure_that_panics_is_a_start_failure_not_a_crash() {
    let spec = ChildSpec::new("bad", |_sup| async move {
        if true {
            panic!("start closure exploded");
        }
        unreachable!()
    });
    let sup = Supervisor::start(Default::default(), vec![]).await.unwrap();
    let err = sup.start_child(spec).await.unwrap_err();
    assert!(
        matches!(&err, SupervisorError::StartFailed { id, source } if id == "bad"
            && source.downcast_ref::<StartPanic>().is_some_and(|p| p.message.contains("exploded"))),
        "{err}"
    );
    assert_eq!(sup.count_children().await.unwrap().specs, 0);
    sup.shutdown(Duration::from_secs(30)).await.unwrap();
}

/// A closure that panics before it returns its future (reading its configuration, say) fails the start the
/// same way: for a static supervisor, for a dynamic one (whose starts run on the caller's task), and at a
/// restart, where the supervisor goes on retrying instead of crashing.
#[tokio::test]
async fn a_start_closure_that_panics_before_its_future_is_a_start_failure_too() {
    fn exploding(id: &str) -> ChildSpec {
        ChildSpec::new(id, |_sup| -> futures::future::Ready<_> {
            panic!("start closure exploded before its future")
        })
    }
    let is_the_panic = |err: &SupervisorError| {
        matches!(err, SupervisorError::StartFailed { source, .. }
            if source.downcast_ref::<StartPanic>().is_some_and(|p| p.message.contains("before its future")))
    };

    let sup = Supervisor::start(Default::default(), vec![]).await.unwrap();
    let err = sup.start_child(exploding("bad")).await.unwrap_err();
    assert!(is_the_panic(&err), "{err}");
    assert_eq!(sup.count_children().await.unwrap().specs, 0);
    sup.shutdown(Duration::from_secs(30)).await.unwrap();

    let dynamic = DynamicSupervisor::start(DynamicSupervisorOptions::default())
        .await
        .unwrap();
    let err = dynamic.start_child(exploding("bad")).await.unwrap_err();
    assert!(is_the_panic(&err), "{err}");
    assert_eq!(dynamic.count_children().await.unwrap().specs, 0);
    dynamic.shutdown(Duration::from_secs(30)).await.unwrap();

    // Starts once, then panics at every restart: the supervisor counts the failed restarts and gives up at
    // its intensity, as with any other failed restart.
    let starts = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&starts);
    let args = Workers::new().args("flaky");
    let spec = ChildSpec::new("flaky", move |sup| {
        if counted.fetch_add(1, Ordering::SeqCst) > 0 {
            panic!("restart exploded before its future");
        }
        let args = args.clone();
        async move {
            let (child, _) = ractor::Actor::spawn_linked(None, Worker, args, sup).await?;
            Ok(child.get_cell())
        }
    });
    let options = SupervisorOptions::default().intensity(3, Duration::from_secs(60));
    let sup = Supervisor::start(options, vec![spec]).await.unwrap();
    sup.child("flaky").await.unwrap().kill().unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), sup.wait())
        .await
        .expect("the supervisor gives up within its intensity")
        .unwrap();
    assert!(
        matches!(exit, SupervisorExit::IntensityReached { ref child, .. } if child == "flaky"),
        "{exit:?}"
    );
    assert_eq!(
        starts.load(Ordering::SeqCst),
        4,
        "the first start and three restarts"
    );
}

#[tokio::test]
async fn child_administration_and_its_error_cases() {
    let mut w = Workers::new();
    let sup = Supervisor::start(Default::default(), vec![w.spec("a")])
        .await
        .unwrap();
    w.take(1).await;

    let a = cell_of(&sup, "a").await;
    assert!(
        matches!(sup.start_child(w.spec("a")).await, Err(SupervisorError::AlreadyStarted { id, actor }) if id == "a" && actor.get_id() == a.get_id())
    );
    sup.start_child(w.spec("b")).await.unwrap();
    assert_eq!(names(&w.take(1).await), ["+b"]);
    assert!(matches!(
        sup.restart_child("b").await,
        Err(SupervisorError::AlreadyRunning { .. })
    ));
    assert!(matches!(
        sup.delete_child("b").await,
        Err(SupervisorError::AlreadyRunning { .. })
    ));
    assert!(
        matches!(sup.terminate_child("zz").await, Err(SupervisorError::UnknownChild { id }) if id == "zz")
    );

    sup.terminate_child("b").await.unwrap();
    assert_eq!(names(&w.take(1).await), ["-b"]);
    let b = sup
        .which_children()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.id == "b")
        .unwrap();
    assert_eq!(b.status, ChildStatus::Terminated);
    assert!(b.cell.is_none());

    sup.restart_child("b").await.unwrap();
    assert_eq!(names(&w.take(1).await), ["+b"]);
    sup.terminate_child("b").await.unwrap();
    w.take(1).await;
    sup.delete_child("b").await.unwrap();
    assert!(matches!(
        sup.restart_child("b").await,
        Err(SupervisorError::UnknownChild { .. })
    ));

    let sub = Supervisor::child_spec("sub", Default::default(), vec![w.spec("leaf")]);
    sup.start_child(sub).await.unwrap();
    w.take(1).await;
    let counts = sup.count_children().await.unwrap();
    assert_eq!(
        counts,
        ChildCounts {
            specs: 2,
            active: 2,
            supervisors: 1,
            workers: 1
        }
    );
    let which = sup.which_children().await.unwrap();
    assert_eq!(
        which.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["a", "sub"]
    );
    assert!(which.iter().all(|c| c.started_at.is_some()));
    sup.shutdown(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test]
async fn invalid_specs_are_refused_with_the_reason() {
    let w = Workers::new();
    let sup = Supervisor::start(Default::default(), vec![]).await.unwrap();
    let err = sup.start_child(w.spec("")).await.unwrap_err();
    assert!(
        matches!(&err, SupervisorError::InvalidSpec { field: "id", reason, .. } if reason.contains("empty")),
        "{err}"
    );
    let err = Supervisor::start(Default::default(), vec![w.spec("x"), w.spec("x")])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SupervisorError::DuplicateChild { id } if id == "x"),
        "{err}"
    );
    let err = sup.start_child(w.spec("p").significant(true)).await.unwrap_err();
    assert!(
        matches!(&err, SupervisorError::InvalidSpec { id, field: "significant", reason } if id == "p" && reason.contains("permanent"))
    );
    let bad_backoff = RestartBackoff {
        min: Duration::from_secs(2),
        max: Duration::from_secs(1),
        random_factor: 0.2,
        reset_after: Duration::from_secs(1),
    };
    let err = sup
        .start_child(w.spec("b").backoff(bad_backoff))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SupervisorError::InvalidSpec { id, field: "backoff.min", .. } if id == "b"),
        "{err}"
    );
    sup.shutdown(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test]
async fn dynamic_supervisor_max_children_terminate_by_actor_and_restarts() {
    let mut w = Workers::new();
    let opts = DynamicSupervisorOptions::default().max_children(2);
    let dynsup = DynamicSupervisor::start(opts).await.unwrap();
    let first = dynsup.start_child(w.spec("job")).await.unwrap().cell().unwrap();
    let second = dynsup
        .start_child(w.spec("job").restart(Restart::Transient))
        .await
        .unwrap()
        .cell()
        .unwrap();
    w.take(2).await;
    assert!(matches!(
        dynsup.start_child(w.spec("job")).await,
        Err(SupervisorError::MaxChildren { max_children: 2 })
    ));

    // a crash restarts it under the same child id with a new actor
    worker(&first).cast(WorkerMsg::Panic).unwrap();
    let restarted = w.started("job").await;
    let which = dynsup.which_children().await.unwrap();
    assert_eq!(which.len(), 2);
    assert_eq!(which[0].actor_id(), Some(restarted));
    assert_eq!(which[0].restart_count, 1);

    // a transient child that exits normally is gone, which frees a place
    worker(&second).cast(WorkerMsg::Stop(None)).unwrap();
    second.wait(Some(Duration::from_secs(5))).await.unwrap();
    assert_eq!(dynsup.count_children().await.unwrap().specs, 1);
    let third = dynsup.start_child(w.spec("job")).await.unwrap().cell().unwrap();

    dynsup.terminate_actor(third.get_id()).await.unwrap();
    assert!(matches!(
        dynsup.terminate_actor(third.get_id()).await,
        Err(SupervisorError::UnknownActor { .. })
    ));
    assert_eq!(dynsup.count_children().await.unwrap().active, 1);

    // terminate_child takes the id that start_child's handle and child() use
    let fourth = dynsup.start_child(w.spec("job")).await.unwrap();
    let id = fourth.id();
    assert!(id.starts_with("job#"), "{id}");
    assert_eq!(
        dynsup.child(&id).await.unwrap().cell().unwrap().get_id(),
        fourth.cell().unwrap().get_id()
    );
    dynsup.terminate_child(&id).await.unwrap();
    assert!(matches!(fourth.cell(), Err(SupervisorError::ChildRemoved { .. })));
    assert!(matches!(
        dynsup.terminate_child(&id).await,
        Err(SupervisorError::UnknownChild { id: unknown }) if unknown == id
    ));
    assert_eq!(dynsup.count_children().await.unwrap().active, 1);
    dynsup.shutdown(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test]
async fn any_significant_child_exiting_shuts_the_supervisor_down() {
    let mut w = Workers::new();
    let opts = SupervisorOptions::default().auto_shutdown(AutoShutdown::AnySignificant);
    let specs = vec![
        w.spec("plain"),
        w.spec("key").restart(Restart::Transient).significant(true),
    ];
    let sup = Supervisor::start(opts, specs).await.unwrap();
    w.take(2).await;
    worker(&cell_of(&sup, "key").await)
        .cast(WorkerMsg::Stop(None))
        .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), sup.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit, SupervisorExit::AutoShutdown { child: "key".into() });
    assert_eq!(names(&w.take(2).await), ["-key", "-plain"]);
}

#[tokio::test]
async fn all_significant_waits_for_the_last_significant_child() {
    let mut w = Workers::new();
    let opts = SupervisorOptions::default().auto_shutdown(AutoShutdown::AllSignificant);
    let specs = vec![
        w.spec("one").restart(Restart::Temporary).significant(true),
        w.spec("two").restart(Restart::Transient).significant(true),
    ];
    let sup = Supervisor::start(opts, specs).await.unwrap();
    w.take(2).await;
    let one = cell_of(&sup, "one").await;
    worker(&one).cast(WorkerMsg::Stop(None)).unwrap();
    one.wait(Some(Duration::from_secs(5))).await.unwrap();
    assert_eq!(
        sup.count_children().await.unwrap().active,
        1,
        "still running with one significant child left"
    );
    worker(&cell_of(&sup, "two").await)
        .cast(WorkerMsg::Stop(None))
        .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), sup.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit, SupervisorExit::AutoShutdown { child: "two".into() });
}

#[tokio::test]
async fn a_child_that_keeps_failing_to_restart_does_not_hang_the_supervisor() {
    let mut w = Workers::new();
    let (parent, mut up) = probe().await;
    let flaky = w.args("flaky");
    let fail = flaky.fail_starts.clone();
    let opts = SupervisorOptions::default().intensity(50, Duration::from_secs(60));
    let sup = Supervisor::start_linked(opts, vec![spec_with(flaky)], parent.get_cell())
        .await
        .unwrap();
    w.take(1).await;
    fail.store(u32::MAX, Ordering::SeqCst);
    worker(&cell_of(&sup, "flaky").await)
        .cast(WorkerMsg::Panic)
        .unwrap();
    // the supervisor answers between attempts, then gives up when the intensity is spent
    let mut answered = 0;
    while let Ok(children) = sup.which_children().await {
        answered += 1;
        assert!(children[0].status != ChildStatus::Terminated);
    }
    assert!(answered >= 1);
    // OTP: the supervisor gives up with reason `shutdown`, exactly; `wait` has the cause
    match recv(&mut up).await {
        ProbeEvent::Terminated(_, Some(reason)) => assert_eq!(reason, "shutdown"),
        other => panic!("expected a shutdown exit, got {other:?}"),
    }
    assert!(
        matches!(sup.wait().await.unwrap(), SupervisorExit::IntensityReached { ref child, .. } if child == "flaky")
    );
    parent.stop(None);
}

#[tokio::test]
async fn a_failed_restart_is_retried_until_the_child_starts() {
    let mut w = Workers::new();
    let flaky = w.args("flaky");
    let fail = flaky.fail_starts.clone();
    let opts = SupervisorOptions::default().intensity(10, Duration::from_secs(60));
    let sup = Supervisor::start(opts, vec![spec_with(flaky)]).await.unwrap();
    w.take(1).await;
    // the next five starts fail: each is retried through the mailbox and counts against the intensity
    fail.store(5, Ordering::SeqCst);
    worker(&cell_of(&sup, "flaky").await)
        .cast(WorkerMsg::Panic)
        .unwrap();
    w.started("flaky").await;
    let child = &sup.which_children().await.unwrap()[0];
    assert_eq!(child.status, ChildStatus::Running);
    assert_eq!(
        child.restart_count, 6,
        "one restart for the crash and one per failed attempt"
    );
    sup.shutdown(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test]
async fn backoff_delays_the_restart_of_a_crashing_child() {
    let mut w = Workers::new();
    let backoff = RestartBackoff {
        min: Duration::from_millis(200),
        max: Duration::from_secs(1),
        random_factor: 0.0,
        reset_after: Duration::from_secs(60),
    };
    let sup = Supervisor::start(
        Default::default(),
        vec![w.spec("c").backoff(backoff), w.spec("d")],
    )
    .await
    .unwrap();
    w.take(2).await;
    let crashed_at = Instant::now();
    worker(&cell_of(&sup, "c").await).cast(WorkerMsg::Panic).unwrap();
    // meanwhile the child shows as restarting, and its sibling is untouched
    let c = loop {
        let which = sup.which_children().await.unwrap();
        if which[0].status != ChildStatus::Running {
            break which[0].clone();
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(c.status, ChildStatus::Restarting);
    w.started("c").await;
    assert!(crashed_at.elapsed() >= Duration::from_millis(200));
    // the second crash in a row waits twice as long
    let crashed_at = Instant::now();
    worker(&cell_of(&sup, "c").await).cast(WorkerMsg::Panic).unwrap();
    w.started("c").await;
    assert!(crashed_at.elapsed() >= Duration::from_millis(400));
    sup.shutdown(Duration::from_secs(30)).await.unwrap();
}

/// Fails in `post_start` while `exits_left` is above zero, telling the test who it was: its exit races the
/// supervisor's adoption of it.
struct DiesAtOnce;

type Dying = (
    Arc<AtomicU32>,
    tokio::sync::mpsc::UnboundedSender<ractor::ActorCell>,
);

impl ractor::Actor for DiesAtOnce {
    type Msg = ();
    type State = Dying;
    type Arguments = Dying;

    async fn pre_start(
        &self,
        _: ractor::ActorRef<()>,
        args: Dying,
    ) -> Result<Dying, ractor::ActorProcessingErr> {
        Ok(args)
    }

    async fn post_start(
        &self,
        myself: ractor::ActorRef<()>,
        (exits_left, dying): &mut Dying,
    ) -> Result<(), ractor::ActorProcessingErr> {
        match exits_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) {
            Ok(_) => {
                let _ = dying.send(myself.get_cell());
                Err("exits at once".into())
            }
            Err(_) => Ok(()),
        }
    }
}

fn dies_at_once(
    exits: u32,
) -> (
    arbor_actors::supervisor::TypedChildSpec<()>,
    tokio::sync::mpsc::UnboundedReceiver<ractor::ActorCell>,
) {
    let exits_left = Arc::new(AtomicU32::new(exits));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (
        ChildSpec::actor("brief", move || (DiesAtOnce, (exits_left.clone(), tx.clone()))),
        rx,
    )
}

#[tokio::test]
async fn dynamic_children_that_exit_before_adoption_are_still_handled() {
    let dynsup = DynamicSupervisor::start(DynamicSupervisorOptions::default().max_children(3))
        .await
        .unwrap();
    // temporary children that fail at once are forgotten and free their place, however the race goes
    for _ in 0..50 {
        let (spec, mut dying) = dies_at_once(1);
        dynsup
            .start_child(spec.restart(Restart::Temporary))
            .await
            .unwrap();
        let cell = recv(&mut dying).await;
        cell.wait(Some(Duration::from_secs(5))).await.unwrap();
        assert_eq!(dynsup.count_children().await.unwrap().specs, 0);
    }
    // a transient one that fails at once is restarted, and its handle follows it
    let (spec, mut dying) = dies_at_once(1);
    let child = dynsup
        .start_child(spec.restart(Restart::Transient))
        .await
        .unwrap();
    let cell = recv(&mut dying).await;
    cell.wait(Some(Duration::from_secs(5))).await.unwrap();
    let which = dynsup.which_children().await.unwrap();
    assert_eq!(which.len(), 1);
    assert_eq!(which[0].status, ChildStatus::Running);
    assert_eq!(which[0].restart_count, 1);
    assert_eq!(child.actor().unwrap().get_id(), which[0].actor_id().unwrap());
    dynsup.shutdown(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test]
async fn max_children_holds_under_concurrent_starts() {
    let w = Workers::new();
    let dynsup = DynamicSupervisor::start(DynamicSupervisorOptions::default().max_children(5))
        .await
        .unwrap();
    let starts = (0..20).map(|_| {
        let (dynsup, spec) = (dynsup.clone(), w.spec("job"));
        tokio::spawn(async move { dynsup.start_child(spec).await })
    });
    let results = futures::future::join_all(starts).await;
    let ok = results.iter().filter(|r| r.as_ref().unwrap().is_ok()).count();
    let full = results
        .iter()
        .filter(|r| {
            matches!(
                r.as_ref().unwrap(),
                Err(SupervisorError::MaxChildren { max_children: 5 })
            )
        })
        .count();
    assert_eq!((ok, full), (5, 15));
    assert_eq!(dynsup.count_children().await.unwrap().active, 5);
    dynsup.shutdown(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test]
async fn a_child_that_unlinked_itself_is_still_stopped_on_shutdown() {
    let mut w = Workers::new();
    let sup = Supervisor::start(Default::default(), vec![w.spec("loner")])
        .await
        .unwrap();
    w.take(1).await;
    let loner = cell_of(&sup, "loner").await;
    worker(&loner).cast(WorkerMsg::Unlink).unwrap();
    let id = ractor::call!(worker(&loner), WorkerMsg::Ping).unwrap();
    assert_eq!(id, loner.get_id());
    sup.shutdown(Duration::from_secs(30)).await.unwrap();
    assert_eq!(names(&w.take(1).await), ["-loner"]);
    assert_eq!(loner.get_status(), ActorStatus::Stopped);
}

/// OTP's `one_for_all_other_child_fails_restart`: the members already restarted are stopped again and the
/// whole group restarts.
#[tokio::test]
async fn a_sibling_failing_to_restart_in_a_group_restart_restarts_the_whole_group_again() {
    let mut w = Workers::new();
    let b = w.args("b");
    let fail_b = b.fail_starts.clone();
    let opts = SupervisorOptions::default()
        .strategy(arbor_actors::supervisor::Strategy::OneForAll)
        .intensity(10, Duration::from_secs(60));
    let sup = Supervisor::start(opts, vec![w.spec("a"), spec_with(b), w.spec("c")])
        .await
        .unwrap();
    w.take(3).await;
    fail_b.store(2, Ordering::SeqCst);
    worker(&cell_of(&sup, "a").await).cast(WorkerMsg::Panic).unwrap();
    // c and b stopped in reverse order; a restarts; b fails, so a is stopped again and the group retried,
    // twice; then all three start in order
    assert_eq!(
        names(&w.take(9).await),
        ["-c", "-b", "+a", "-a", "+a", "-a", "+a", "+b", "+c"]
    );
    let counts: Vec<_> = sup
        .which_children()
        .await
        .unwrap()
        .iter()
        .map(|c| c.restart_count)
        .collect();
    assert_eq!(counts, [3, 3, 1]);
    sup.shutdown(Duration::from_secs(30)).await.unwrap();
}
