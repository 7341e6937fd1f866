//! OTP conformance: for each point where arbor follows OTP 25's `supervisor` (and `supervisor_SUITE`), the
//! scenario, and the observable sequence of starts, stops and return values.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use arbor_actors::supervisor::{
    AutoShutdown, ChildSpec, ChildStatus, DynamicSupervisor, DynamicSupervisorOptions, Restart,
    RestartBackoff, Strategy, Supervisor, SupervisorError, SupervisorExit, SupervisorHandle,
    SupervisorOptions,
};
use common::*;
use ractor::Actor;

const LONG: Duration = Duration::from_secs(30);

/// `child_adm`: `start_child` with an id in use is `{already_started, Pid}` while it runs and
/// `already_present` once terminated (spec kept); `restart_child` is the way to start it.
#[tokio::test]
async fn an_id_in_use_is_already_started_while_running_and_already_present_once_terminated() {
    let mut w = Workers::new();
    let sup = Supervisor::start(Default::default(), vec![w.spec("a")])
        .await
        .unwrap();
    w.take(1).await;
    let running = cell_of(&sup, "a").await;
    match sup.start_child(w.spec("a")).await {
        Err(SupervisorError::AlreadyStarted { id, actor }) => {
            assert_eq!(id, "a");
            assert_eq!(actor.get_id(), running.get_id());
        }
        other => panic!("expected AlreadyStarted, got {other:?}"),
    }
    sup.terminate_child("a").await.unwrap();
    assert_eq!(names(&w.take(1).await), ["-a"]);
    assert!(matches!(
        sup.start_child(w.spec("a")).await,
        Err(SupervisorError::AlreadyPresent { id }) if id == "a"
    ));
    assert!(w.quiet(), "neither refused start ran the child");
    sup.restart_child("a").await.unwrap();
    assert_eq!(names(&w.take(1).await), ["+a"]);
    sup.shutdown(LONG).await.unwrap();
}

/// `sup_start_map_faulty_specs` and `sup_flags`: every flag and every spec is checked before any child starts;
/// the first fault is the error, naming the child and the field.
#[tokio::test]
async fn every_spec_and_flag_is_checked_before_any_child_starts() {
    let mut w = Workers::new();
    let cases: Vec<(SupervisorOptions, Vec<ChildSpec>, &str)> = vec![
        (
            Default::default(),
            vec![w.spec("a"), w.spec("b").significant(true)],
            "invalid child spec \"b\": significant",
        ),
        (
            Default::default(),
            vec![
                w.spec("a"),
                w.spec("b").restart(Restart::Transient).significant(true),
            ],
            "invalid child spec \"b\": significant",
        ),
        (
            Default::default(),
            vec![w.spec("a"), w.spec("")],
            "invalid child spec \"\": id",
        ),
        (
            Default::default(),
            vec![w.spec("a"), w.spec("a")],
            "two children have the id \"a\"",
        ),
        (
            SupervisorOptions::default().intensity(3, Duration::ZERO),
            vec![w.spec("a")],
            "invalid supervisor options: period",
        ),
    ];
    for (options, specs, expected) in cases {
        let err = Supervisor::start(options, specs).await.unwrap_err();
        assert!(
            err.to_string().starts_with(expected),
            "{err} (expected {expected})"
        );
        assert!(w.quiet(), "nothing may start when a spec is invalid ({expected})");
    }
    // a significant transient child is fine under auto_shutdown
    let ok = SupervisorOptions::default().auto_shutdown(AutoShutdown::AnySignificant);
    let sup = Supervisor::start(
        ok,
        vec![w.spec("s").restart(Restart::Transient).significant(true)],
    )
    .await
    .unwrap();
    w.take(1).await;
    sup.shutdown(LONG).await.unwrap();
    // a dynamic supervisor checks its flags too
    let err = DynamicSupervisor::start(DynamicSupervisorOptions::default().intensity(1, Duration::ZERO))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SupervisorError::InvalidOptions { field: "period", .. }),
        "{err}"
    );
}

/// `rest_for_one_other_child_fails_restart`: the children restarted before the one that fails are kept; the
/// failed one is retried, and those after it wait for it.
#[tokio::test]
async fn rest_for_one_keeps_the_members_restarted_before_a_failed_start() {
    let mut w = Workers::new();
    let b = w.args("b");
    let fail_b = b.fail_starts.clone();
    let opts = SupervisorOptions::default()
        .strategy(Strategy::RestForOne)
        .intensity(10, Duration::from_secs(60));
    let sup = Supervisor::start(opts, vec![w.spec("a"), spec_with(b), w.spec("c")])
        .await
        .unwrap();
    w.take(3).await;
    fail_b.store(2, Ordering::SeqCst);
    worker(&cell_of(&sup, "a").await).cast(WorkerMsg::Panic).unwrap();
    let events = w.take(4).await;
    assert_eq!(names(&events), ["-c", "-b", "+a", "+b"]);
    assert_eq!(names(&w.take(1).await), ["+c"]);
    let a_after = cell_of(&sup, "a").await.get_id();
    assert_eq!(events[2], started("a", a_after), "a was not restarted again");
    let counts: Vec<u32> = sup
        .which_children()
        .await
        .unwrap()
        .iter()
        .map(|c| c.restart_count)
        .collect();
    assert_eq!(counts, [1, 3, 1]);
    sup.shutdown(LONG).await.unwrap();
}

/// OTP's `{error, restarting}`: a child whose restart is pending cannot be restarted or deleted by hand;
/// terminating it cancels the restart.
#[tokio::test]
async fn a_child_pending_a_restart_is_restarting_for_restart_and_delete_and_terminate_cancels_it() {
    let mut w = Workers::new();
    let slow = RestartBackoff {
        min: Duration::from_secs(3600),
        max: Duration::from_secs(3600),
        random_factor: 0.0,
        reset_after: Duration::from_secs(60),
    };
    let sup = Supervisor::start(Default::default(), vec![w.spec("c").backoff(slow)])
        .await
        .unwrap();
    w.take(1).await;
    let handle = sup.child("c").await.unwrap();
    handle.kill().unwrap();
    loop {
        if sup.which_children().await.unwrap()[0].status == ChildStatus::Restarting {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(matches!(sup.restart_child("c").await, Err(SupervisorError::Restarting { id }) if id == "c"));
    assert!(matches!(sup.delete_child("c").await, Err(SupervisorError::Restarting { id }) if id == "c"));
    assert!(matches!(
        handle.cell(),
        Err(SupervisorError::ChildNotRunning { .. })
    ));
    sup.terminate_child("c").await.unwrap();
    assert_eq!(
        sup.which_children().await.unwrap()[0].status,
        ChildStatus::Terminated
    );
    sup.delete_child("c").await.unwrap();
    assert!(matches!(handle.cell(), Err(SupervisorError::ChildRemoved { .. })));
    assert!(w.quiet());
    sup.shutdown(LONG).await.unwrap();
}

/// OTP ends a supervisor that reached its restart intensity with reason `shutdown`: its parent restarts it
/// if it is permanent and leaves it down if it is transient. The cause is in the parent's snapshot.
#[tokio::test]
async fn reaching_intensity_is_a_shutdown_that_only_a_permanent_parent_entry_restarts() {
    let mut w = Workers::new();
    let strict = SupervisorOptions::default().intensity(0, Duration::from_secs(60));
    let permanent = Supervisor::child_spec("perm", strict, vec![w.spec("perm-leaf")]);
    let transient =
        Supervisor::child_spec("trans", strict, vec![w.spec("trans-leaf")]).restart(Restart::Transient);
    let root = Supervisor::start(Default::default(), vec![permanent, transient])
        .await
        .unwrap();
    w.take(2).await;

    let trans = root.child_supervisor("trans").await.unwrap();
    worker(&cell_of(&trans, "trans-leaf").await)
        .cast(WorkerMsg::Panic)
        .unwrap();
    assert_eq!(
        trans.wait().await.unwrap(),
        SupervisorExit::IntensityReached {
            child: "trans-leaf".into(),
            max_restarts: 0,
            period: Duration::from_secs(60)
        }
    );
    let perm = root.child_supervisor("perm").await.unwrap();
    worker(&cell_of(&perm, "perm-leaf").await)
        .cast(WorkerMsg::Panic)
        .unwrap();
    // the permanent one comes back with a fresh leaf; the transient one stays down
    assert_eq!(
        w.started("perm-leaf").await,
        cell_of(&perm, "perm-leaf").await.get_id()
    );

    let snapshot = root.snapshot().await.unwrap();
    let trans_node = snapshot.find("trans").unwrap();
    assert_eq!(trans_node.status, ChildStatus::Terminated);
    assert_eq!(trans_node.restart_count, 0);
    let cause = trans_node.last_exit.as_deref().unwrap();
    assert!(
        cause.starts_with("shutdown: reached_max_restart_intensity"),
        "{cause}"
    );
    assert!(cause.contains("trans-leaf"), "{cause}");
    let perm_node = snapshot.find("perm").unwrap();
    assert_eq!(
        (perm_node.status, perm_node.restart_count),
        (ChildStatus::Running, 1)
    );
    assert!(snapshot.render().contains("reached_max_restart_intensity"));
    root.shutdown(LONG).await.unwrap();
    assert_eq!(root.wait().await.unwrap(), SupervisorExit::Shutdown);
}

/// A service's `main` can await its root and learn that the tree gave up, and why.
#[tokio::test]
async fn the_root_reports_why_it_gave_up() {
    let mut w = Workers::new();
    let root = Supervisor::start(
        SupervisorOptions::default().intensity(1, Duration::from_secs(60)),
        vec![w.spec("a"), w.spec("b")],
    )
    .await
    .unwrap();
    w.take(2).await;
    worker(&cell_of(&root, "b").await).cast(WorkerMsg::Panic).unwrap();
    w.started("b").await;
    worker(&cell_of(&root, "b").await).cast(WorkerMsg::Panic).unwrap();
    let exit = root.wait().await.unwrap();
    assert!(exit.is_failure());
    assert!(matches!(&exit, SupervisorExit::IntensityReached { child, max_restarts: 1, .. } if child == "b"));
    // its children were stopped in reverse order before it exited
    assert_eq!(names(&w.take(1).await), ["-a"]);
}

/// `pre_start` returning `Err` is a start failure whose `source()` is that error, not a panic report.
#[tokio::test]
async fn a_pre_start_error_is_the_source_of_the_start_failure() {
    let w = Workers::new();
    let sup = Supervisor::start(Default::default(), vec![]).await.unwrap();
    let bad = w.args("bad");
    bad.fail_starts.store(1, Ordering::SeqCst);
    let err = sup.start_child(spec_with(bad)).await.unwrap_err();
    assert_eq!(err.to_string(), "child \"bad\" failed to start");
    let source = std::error::Error::source(&err).expect("a source");
    assert_eq!(source.to_string(), "bad refuses to start");
    assert!(!source.to_string().contains("panicked"));
    assert_eq!(sup.count_children().await.unwrap().specs, 0);
    sup.shutdown(LONG).await.unwrap();
}

/// A start closure that spawns its actor without linking it would escape supervision: refused, and stopped.
#[tokio::test]
async fn a_child_not_linked_to_its_supervisor_is_refused_and_stopped() {
    let mut w = Workers::new();
    let args = w.args("loose");
    let loose = ChildSpec::new("loose", move |_sup| {
        let args = args.clone();
        async move {
            let (actor, _) = Actor::spawn(None, Worker, args).await?;
            Ok(actor.get_cell())
        }
    });
    let sup = Supervisor::start(Default::default(), vec![]).await.unwrap();
    let err = sup.start_child(loose).await.unwrap_err();
    let events = w.take(2).await;
    assert_eq!(names(&events), ["+loose", "-loose"]);
    match err {
        SupervisorError::NotLinked { id, actor } => {
            assert_eq!(id, "loose");
            assert_eq!(events[0], started("loose", actor));
        }
        other => panic!("expected NotLinked, got {other}"),
    }
    assert_eq!(sup.count_children().await.unwrap().specs, 0);
    sup.shutdown(LONG).await.unwrap();
}

/// `from_cell` checks that the actor is a supervisor at all.
#[tokio::test]
async fn from_cell_on_a_worker_is_not_a_supervisor() {
    let w = Workers::new();
    let (actor, _) = Actor::spawn(None, Worker, w.args("x")).await.unwrap();
    assert!(matches!(
        SupervisorHandle::from_cell(actor.get_cell()),
        Err(SupervisorError::NotASupervisor { .. })
    ));
    actor.stop(None);
}

/// `do_not_save_child_specs_for_temporary_children`: a temporary child's spec is gone once it exits.
#[tokio::test]
async fn a_temporary_childs_spec_is_not_kept_after_it_exits() {
    let mut w = Workers::new();
    let sup = Supervisor::start(Default::default(), vec![w.spec("t").restart(Restart::Temporary)])
        .await
        .unwrap();
    w.take(1).await;
    let t = sup.child("t").await.unwrap();
    t.kill().unwrap();
    while sup.count_children().await.unwrap().specs != 0 {
        tokio::task::yield_now().await;
    }
    assert!(matches!(
        sup.restart_child("t").await,
        Err(SupervisorError::UnknownChild { .. })
    ));
    assert!(matches!(t.cell(), Err(SupervisorError::ChildRemoved { .. })));
    sup.shutdown(LONG).await.unwrap();
}

/// Elixir once counted restarting children twice against `max_children`: restarts must not change the count.
#[tokio::test]
async fn max_children_counts_right_across_restarts_of_its_children() {
    let mut w = Workers::new();
    let sup = DynamicSupervisor::start(
        DynamicSupervisorOptions::default()
            .max_children(2)
            .intensity(20, Duration::from_secs(60)),
    )
    .await
    .unwrap();
    let first = sup.start_child(typed_spec(w.args("one"))).await.unwrap();
    sup.start_child(w.spec("two")).await.unwrap();
    w.take(2).await;
    for _ in 0..5 {
        first.cast(WorkerMsg::Panic).unwrap();
        w.started("one").await;
    }
    assert!(matches!(
        sup.start_child(w.spec("three")).await,
        Err(SupervisorError::MaxChildren { max_children: 2 })
    ));
    sup.terminate_child(&first.id()).await.unwrap();
    sup.start_child(w.spec("three")).await.unwrap();
    let counts = sup.count_children().await.unwrap();
    assert_eq!((counts.specs, counts.active), (2, 2));
    sup.shutdown(LONG).await.unwrap();
}

/// A backoff at its bounds schedules a restart a day ahead without panicking, and the supervisor answers.
#[tokio::test]
async fn a_backoff_at_its_bounds_never_panics_the_supervisor() {
    let mut w = Workers::new();
    let longest = RestartBackoff {
        min: RestartBackoff::MAX_DELAY,
        max: RestartBackoff::MAX_DELAY,
        random_factor: 1.0,
        reset_after: Duration::MAX,
    };
    let sup = Supervisor::start(Default::default(), vec![w.spec("c").backoff(longest)])
        .await
        .unwrap();
    w.take(1).await;
    sup.child("c").await.unwrap().kill().unwrap();
    loop {
        if sup.which_children().await.unwrap()[0].status == ChildStatus::Restarting {
            break;
        }
        tokio::task::yield_now().await;
    }
    let too_long = RestartBackoff {
        max: RestartBackoff::MAX_DELAY + Duration::from_secs(1),
        ..longest
    };
    assert!(matches!(
        sup.start_child(w.spec("d").backoff(too_long)).await,
        Err(SupervisorError::InvalidSpec {
            field: "backoff.max",
            ..
        })
    ));
    let nan = RestartBackoff {
        random_factor: f64::NAN,
        ..longest
    };
    assert!(matches!(
        sup.start_child(w.spec("d").backoff(nan)).await,
        Err(SupervisorError::InvalidSpec {
            field: "backoff.random_factor",
            ..
        })
    ));
    sup.shutdown(LONG).await.unwrap();
    assert_eq!(sup.wait().await.unwrap(), SupervisorExit::Shutdown);
    assert!(!sup.is_running());
}

/// OTP's one_for_all restarts *all* children (`terminate_children` then `start_children` over the whole list),
/// so a transient member that had exited normally comes back with the group; a temporary one does not.
#[tokio::test]
async fn a_group_restart_brings_back_a_terminated_transient_member() {
    let mut w = Workers::new();
    let opts = SupervisorOptions::default().strategy(Strategy::OneForAll);
    let specs = vec![
        w.spec("a"),
        w.spec("b").restart(Restart::Transient),
        w.spec("t").restart(Restart::Temporary),
        w.spec("c"),
    ];
    let sup = Supervisor::start(opts, specs).await.unwrap();
    w.take(4).await;
    worker(&cell_of(&sup, "b").await)
        .cast(WorkerMsg::Stop(None))
        .unwrap();
    assert_eq!(names(&w.take(1).await), ["-b"]);
    worker(&cell_of(&sup, "a").await).cast(WorkerMsg::Panic).unwrap();
    assert_eq!(names(&w.take(5).await), ["-c", "-t", "+a", "+b", "+c"]);
    let ids: Vec<String> = sup
        .which_children()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, ["a", "b", "c"]);
    sup.shutdown(LONG).await.unwrap();
}
