//! OTP `supervisor_SUITE` behaviours: strategies, restart types, intensity and escalation, nested trees.

mod common;

use std::time::Duration;

use arbor_actors::supervisor::{
    ChildSpec, ChildStatus, Restart, Strategy, Supervisor, SupervisorError, SupervisorExit, SupervisorHandle,
    SupervisorOptions,
};
use common::*;
use ractor::ActorId;

async fn ids(sup: &SupervisorHandle) -> Vec<(String, Option<ActorId>)> {
    sup.which_children()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.id.clone(), c.actor_id()))
        .collect()
}

async fn start(opts: SupervisorOptions, specs: Vec<ChildSpec>) -> SupervisorHandle {
    Supervisor::start(opts, specs).await.expect("supervisor starts")
}

#[tokio::test]
async fn one_for_one_restarts_only_the_failed_child() {
    let mut w = Workers::new();
    let sup = start(Default::default(), vec![w.spec("a"), w.spec("b"), w.spec("c")]).await;
    assert_eq!(names(&w.take(3).await), ["+a", "+b", "+c"]);
    let before = ids(&sup).await;

    worker(&cell_of(&sup, "b").await).cast(WorkerMsg::Panic).unwrap();
    let new_b = w.started("b").await;

    let after = ids(&sup).await;
    assert_eq!(after[0], before[0]);
    assert_eq!(after[2], before[2]);
    assert_eq!(after[1], ("b".to_string(), Some(new_b)));
    assert_ne!(before[1].1, Some(new_b));
    let infos = sup.which_children().await.unwrap();
    assert_eq!(
        infos.iter().map(|c| c.restart_count).collect::<Vec<_>>(),
        [0, 1, 0]
    );
    sup.shutdown(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test]
async fn one_for_all_stops_siblings_in_reverse_then_restarts_all_in_order() {
    let mut w = Workers::new();
    let opts = SupervisorOptions::default().strategy(Strategy::OneForAll);
    let sup = start(opts, vec![w.spec("a"), w.spec("b"), w.spec("c")]).await;
    w.take(3).await;

    worker(&cell_of(&sup, "b").await).cast(WorkerMsg::Panic).unwrap();
    // b panicked (no post_stop); c and a are stopped gracefully in reverse start order, then all restart.
    assert_eq!(names(&w.take(5).await), ["-c", "-a", "+a", "+b", "+c"]);
    let infos = sup.which_children().await.unwrap();
    assert!(infos
        .iter()
        .all(|c| c.status == ChildStatus::Running && c.restart_count == 1));
    sup.shutdown(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test]
async fn rest_for_one_restarts_the_failed_child_and_those_after_it() {
    let mut w = Workers::new();
    let opts = SupervisorOptions::default().strategy(Strategy::RestForOne);
    let sup = start(opts, vec![w.spec("a"), w.spec("b"), w.spec("c"), w.spec("d")]).await;
    w.take(4).await;
    let a_before = ids(&sup).await[0].clone();

    worker(&cell_of(&sup, "b").await).cast(WorkerMsg::Panic).unwrap();
    assert_eq!(names(&w.take(5).await), ["-d", "-c", "+b", "+c", "+d"]);
    assert_eq!(ids(&sup).await[0], a_before);
    sup.shutdown(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test]
async fn restart_types_decide_who_comes_back_after_normal_and_abnormal_exits() {
    let mut w = Workers::new();
    let specs = vec![
        w.spec("perm"),
        w.spec("trans").restart(Restart::Transient),
        w.spec("temp").restart(Restart::Temporary),
    ];
    let sup = start(
        SupervisorOptions::default().intensity(10, Duration::from_secs(5)),
        specs,
    )
    .await;
    w.take(3).await;

    // normal exits: permanent comes back, transient and temporary do not
    for id in ["perm", "trans", "temp"] {
        let cell = cell_of(&sup, id).await;
        worker(&cell).cast(WorkerMsg::Stop(None)).unwrap();
        // once it is gone its exit event is queued, and the supervisor handles that before the next call
        cell.wait(Some(Duration::from_secs(5))).await.unwrap();
    }
    let events = names(&w.take(4).await);
    assert!(events.contains(&"+perm".to_string()), "{events:?}");
    let infos = sup.which_children().await.unwrap();
    let status: Vec<_> = infos.iter().map(|c| (c.id.as_str(), c.status)).collect();
    // the temporary child's spec is forgotten
    assert_eq!(
        status,
        [("perm", ChildStatus::Running), ("trans", ChildStatus::Terminated)]
    );

    // a `shutdown` reason is normal too
    sup.restart_child("trans").await.unwrap();
    w.started("trans").await;
    worker(&cell_of(&sup, "trans").await)
        .cast(WorkerMsg::Stop(Some("shutdown".into())))
        .unwrap();
    assert_eq!(names(&w.take(1).await), ["-trans"]);

    // an abnormal exit brings the transient child back
    sup.restart_child("trans").await.unwrap();
    w.started("trans").await;
    worker(&cell_of(&sup, "trans").await)
        .cast(WorkerMsg::Panic)
        .unwrap();
    w.started("trans").await;
    // so does any other stop reason, and a kill
    worker(&cell_of(&sup, "trans").await)
        .cast(WorkerMsg::Stop(Some("bad input".into())))
        .unwrap();
    w.started("trans").await;
    cell_of(&sup, "trans").await.kill();
    w.started("trans").await;
    sup.shutdown(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test]
async fn a_temporary_bystander_is_not_restarted_by_a_group_restart() {
    let mut w = Workers::new();
    let opts = SupervisorOptions::default().strategy(Strategy::OneForAll);
    let sup = start(
        opts,
        vec![w.spec("a"), w.spec("temp").restart(Restart::Temporary)],
    )
    .await;
    w.take(2).await;
    worker(&cell_of(&sup, "a").await).cast(WorkerMsg::Panic).unwrap();
    assert_eq!(names(&w.take(2).await), ["-temp", "+a"]);
    let infos = sup.which_children().await.unwrap();
    assert_eq!(infos.len(), 1);
    assert_eq!(infos[0].id, "a");
    sup.shutdown(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test]
async fn exceeding_the_intensity_stops_all_children_and_escalates_to_the_parent() {
    let mut w = Workers::new();
    let (parent, mut up) = probe().await;
    let opts = SupervisorOptions::default().intensity(2, Duration::from_secs(60));
    let sup = Supervisor::start_linked(opts, vec![w.spec("a"), w.spec("b")], parent.get_cell())
        .await
        .unwrap();
    w.take(2).await;
    let sup_id = sup.cell().unwrap().get_id();
    for _ in 0..2 {
        worker(&cell_of(&sup, "a").await).cast(WorkerMsg::Panic).unwrap();
        w.started("a").await;
    }
    worker(&cell_of(&sup, "a").await).cast(WorkerMsg::Panic).unwrap();
    // the third restart is one too many: b is stopped, the supervisor exits with reason `shutdown` exactly
    // (as OTP: code matching `reason == "shutdown"` works); the cause is typed, from `wait`
    assert_eq!(names(&w.take(1).await), ["-b"]);
    match recv(&mut up).await {
        ProbeEvent::Terminated(who, Some(reason)) => {
            assert_eq!(who, sup_id);
            assert_eq!(reason, "shutdown");
        }
        other => panic!("expected a shutdown exit, got {other:?}"),
    }
    assert!(matches!(
        sup.which_children().await,
        Err(SupervisorError::NotRunning { .. })
    ));
    assert_eq!(
        sup.wait().await.unwrap(),
        SupervisorExit::IntensityReached {
            child: "a".into(),
            max_restarts: 2,
            period: Duration::from_secs(60)
        }
    );
    parent.stop(None);
}

#[tokio::test]
async fn an_inner_supervisor_exceeding_its_intensity_is_restarted_by_the_outer_one() {
    let mut w = Workers::new();
    let inner_opts = SupervisorOptions::default().intensity(1, Duration::from_secs(60));
    let inner = Supervisor::child_spec("inner", inner_opts, vec![w.spec("leaf")]);
    let outer = start(SupervisorOptions::default(), vec![w.spec("sibling"), inner]).await;
    w.take(2).await;

    let inner_handle = SupervisorHandle::from_cell(cell_of(&outer, "inner").await).unwrap();
    let stable = outer.child_supervisor("inner").await.unwrap();
    let leaf = cell_of(&inner_handle, "leaf").await;
    worker(&leaf).cast(WorkerMsg::Panic).unwrap();
    w.started("leaf").await; // the inner supervisor's one allowed restart
    worker(&cell_of(&inner_handle, "leaf").await)
        .cast(WorkerMsg::Panic)
        .unwrap();
    // one too many for the inner supervisor: the outer one restarts it, which starts a fresh leaf
    w.started("leaf").await;

    let snapshot = outer.snapshot().await.unwrap();
    let inner_node = snapshot.find("inner").expect("inner in the tree");
    assert_eq!(inner_node.restart_count, 1);
    assert_eq!(inner_node.children[0].status, ChildStatus::Running);
    assert_eq!(
        inner_node.children[0].restart_count, 0,
        "a fresh inner supervisor has a fresh count"
    );
    assert_eq!(snapshot.find("sibling").unwrap().restart_count, 0);
    // a handle to one incarnation says it is gone; the stable handle follows the restart
    assert!(matches!(
        inner_handle.cell(),
        Err(SupervisorError::NotRunning { .. })
    ));
    assert_eq!(
        stable.cell().unwrap().get_id(),
        cell_of(&outer, "inner").await.get_id()
    );
    assert_eq!(stable.count_children().await.unwrap().active, 1);
    outer.shutdown(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test]
async fn a_crash_propagates_exactly_as_far_as_the_intensities_say_in_a_three_level_tree() {
    let mut w = Workers::new();
    let strict = SupervisorOptions::default().intensity(0, Duration::from_secs(60));
    let level2 = Supervisor::child_spec("l2", strict, vec![w.spec("leaf")]);
    let level1 = Supervisor::child_spec("l1", strict, vec![w.spec("l1-worker"), level2]);
    let root = start(SupervisorOptions::default(), vec![w.spec("root-worker"), level1]).await;
    w.take(3).await;
    let root_worker = cell_of(&root, "root-worker").await.get_id();

    let l1 = SupervisorHandle::from_cell(cell_of(&root, "l1").await).unwrap();
    let l2 = SupervisorHandle::from_cell(cell_of(&l1, "l2").await).unwrap();
    worker(&cell_of(&l2, "leaf").await)
        .cast(WorkerMsg::Panic)
        .unwrap();
    // l2 gives up at once, so does l1 (it stops l1-worker); root restarts l1, which starts everything afresh
    let events = names(&w.take(3).await);
    assert_eq!(events, ["-l1-worker", "+l1-worker", "+leaf"]);
    let snap = root.snapshot().await.unwrap();
    assert_eq!(snap.find("l1").unwrap().restart_count, 1);
    assert_eq!(
        snap.find("root-worker").unwrap().actor_id,
        Some(root_worker.to_string())
    );
    root.shutdown(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test]
async fn monitor_events_from_actors_that_are_not_children_are_ignored() {
    let mut w = Workers::new();
    let sup = start(
        SupervisorOptions::default().intensity(0, Duration::from_secs(60)),
        vec![w.spec("a")],
    )
    .await;
    w.take(1).await;
    let (stranger, _) = ractor::Actor::spawn(None, Worker, w.args("stranger"))
        .await
        .unwrap();
    w.take(1).await;
    sup.cell().unwrap().monitor(stranger.get_cell());
    stranger.cast(WorkerMsg::Panic).unwrap();
    stranger
        .get_cell()
        .wait(Some(Duration::from_secs(5)))
        .await
        .unwrap();
    // with an intensity of 0, mistaking the stranger's death for a child's would have stopped the supervisor
    let counts = sup.count_children().await.unwrap();
    assert_eq!(counts.active, 1);
    sup.shutdown(Duration::from_secs(30)).await.unwrap();
}
