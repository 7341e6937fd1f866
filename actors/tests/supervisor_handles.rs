//! Stable handles: every operation through a child's handle reaches the incarnation running at that moment,
//! answers a clear error while the child is down, and never overlaps two incarnations.

mod common;

use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arbor_actors::supervisor::{
    ChildRef, ChildSpec, ChildStatus, ChildTemplate, DynamicSupervisor, Restart, RestartBackoff, Supervisor,
    SupervisorError,
};
use common::*;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;

const LONG: Duration = Duration::from_secs(30);
const CALL: Duration = Duration::from_secs(5);

/// The incarnation the handle resolves once it is `expected`: between a new incarnation's `pre_start` and its
/// supervisor taking it over, the handle says the child is not running.
async fn resolved<M: ractor::Message>(child: &ChildRef<M>, expected: ractor::ActorId) -> ractor::ActorId {
    tokio::time::timeout(CALL, async {
        loop {
            match child.actor() {
                Ok(actor) if actor.get_id() == expected => return expected,
                _ => tokio::task::yield_now().await,
            }
        }
    })
    .await
    .expect("the handle resolves the new incarnation")
}

#[tokio::test]
async fn a_typed_child_ref_reaches_each_new_incarnation() {
    let mut w = Workers::new();
    let sup = Supervisor::builder()
        .intensity(10, Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let child = sup.start_child(typed_spec(w.args("a"))).await.unwrap();
    let first = w.started("a").await;
    assert_eq!(child.call(WorkerMsg::Ping, CALL).await.unwrap(), first);
    for _ in 0..5 {
        let before = child.call(WorkerMsg::Ping, CALL).await.unwrap();
        child.kill().unwrap();
        let next = w.started("a").await;
        assert_ne!(next, before);
        // the same handle, no re-fetching: it reaches the new incarnation (once its supervisor has it)
        assert_eq!(resolved(&child, next).await, next);
        assert_eq!(child.call(WorkerMsg::Ping, CALL).await.unwrap(), next);
        assert_eq!(cell_of(&sup, "a").await.get_id(), next);
    }
    // the stable handle from the parent and the one start_child gave are the same child
    let looked_up = sup.child_ref::<WorkerMsg>("a").await.unwrap();
    assert_eq!(
        looked_up.call(WorkerMsg::Ping, CALL).await.unwrap(),
        child.call(WorkerMsg::Ping, CALL).await.unwrap()
    );
    sup.shutdown(LONG).await.unwrap();
}

#[tokio::test]
async fn while_the_child_is_down_operations_say_so_and_once_it_is_gone_they_say_that() {
    let mut w = Workers::new();
    let hour = RestartBackoff {
        min: Duration::from_secs(3600),
        max: Duration::from_secs(3600),
        random_factor: 0.0,
        reset_after: Duration::from_secs(3600),
    };
    let sup = Supervisor::start(Default::default(), vec![]).await.unwrap();
    let child = sup
        .start_child(typed_spec(w.args("a")).backoff(hour))
        .await
        .unwrap();
    w.take(1).await;
    child.kill().unwrap();
    while sup.which_children().await.unwrap()[0].status != ChildStatus::Restarting {
        tokio::task::yield_now().await;
    }
    assert!(matches!(
        child.cast(WorkerMsg::Stop(None)),
        Err(SupervisorError::ChildNotRunning { id }) if id == "a"
    ));
    assert!(matches!(
        child.call(WorkerMsg::Ping, CALL).await,
        Err(SupervisorError::ChildNotRunning { .. })
    ));
    assert!(matches!(
        child.kill(),
        Err(SupervisorError::ChildNotRunning { .. })
    ));
    assert!(!child.is_running());
    sup.terminate_child("a").await.unwrap();
    sup.delete_child("a").await.unwrap();
    assert!(matches!(
        child.call(WorkerMsg::Ping, CALL).await,
        Err(SupervisorError::ChildRemoved { id }) if id == "a"
    ));
    assert!(w.quiet());
    sup.shutdown(LONG).await.unwrap();
}

/// Counts live incarnations: `pre_start` finds the count at zero or records an overlap; `post_stop` takes its
/// time before it decrements, so an incarnation started too early would overlap it.
struct Exclusive;

#[derive(Clone)]
struct ExclusiveArgs {
    live: Arc<AtomicI32>,
    overlaps: Arc<AtomicU32>,
    started: mpsc::UnboundedSender<ractor::ActorId>,
}

impl Actor for Exclusive {
    type Msg = WorkerMsg;
    type State = ExclusiveArgs;
    type Arguments = ExclusiveArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<WorkerMsg>,
        args: ExclusiveArgs,
    ) -> Result<ExclusiveArgs, ActorProcessingErr> {
        if args.live.fetch_add(1, Ordering::SeqCst) != 0 {
            args.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        let _ = args.started.send(myself.get_id());
        Ok(args)
    }

    async fn post_stop(
        &self,
        _: ActorRef<WorkerMsg>,
        args: &mut ExclusiveArgs,
    ) -> Result<(), ActorProcessingErr> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        args.live.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        _: &mut ExclusiveArgs,
    ) -> Result<(), ActorProcessingErr> {
        if let WorkerMsg::Ping(reply) = msg {
            let _ = reply.send(myself.get_id());
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_through_a_stable_handle_hit_the_current_incarnation_and_incarnations_never_overlap() {
    let (tx, mut started) = mpsc::unbounded_channel();
    let args = ExclusiveArgs {
        live: Arc::new(AtomicI32::new(0)),
        overlaps: Arc::new(AtomicU32::new(0)),
        started: tx,
    };
    let spec = ChildSpec::actor("x", {
        let args = args.clone();
        move || (Exclusive, args.clone())
    });
    let sup = Supervisor::start(
        arbor_actors::supervisor::SupervisorOptions::default().intensity(100, Duration::from_secs(60)),
        vec![],
    )
    .await
    .unwrap();
    let child = sup.start_child(spec).await.unwrap();
    let mut current = recv(&mut started).await;
    for round in 0..20 {
        // a stop through the handle stops the incarnation running now, and the next one starts only after
        // its post_stop is over
        assert_eq!(resolved(&child, current).await, current, "round {round}");
        child.stop(Some("again".into())).unwrap();
        let next = recv(&mut started).await;
        assert_ne!(next, current);
        current = next;
    }
    assert_eq!(args.overlaps.load(Ordering::SeqCst), 0);
    // a weak handle reaches the current incarnation too
    resolved(&child, current).await;
    let weak = child.downgrade();
    assert_eq!(
        weak.upgrade().unwrap().call(WorkerMsg::Ping, CALL).await.unwrap(),
        current
    );
    sup.shutdown(LONG).await.unwrap();
    assert_eq!(args.live.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_weak_handle_does_not_keep_a_forgotten_child() {
    let mut w = Workers::new();
    let sup = Supervisor::start(Default::default(), vec![]).await.unwrap();
    let child = sup
        .start_child(typed_spec(w.args("t")).restart(Restart::Temporary))
        .await
        .unwrap();
    w.take(1).await;
    let weak = child.downgrade();
    drop(child);
    let strong = weak.upgrade().expect("the supervisor keeps it");
    strong.cast(WorkerMsg::Stop(None)).unwrap();
    drop(strong);
    // temporary: forgotten once it exits
    while sup.count_children().await.unwrap().specs != 0 {
        tokio::task::yield_now().await;
    }
    assert!(weak.upgrade().is_none());
    sup.shutdown(LONG).await.unwrap();
}

#[tokio::test]
async fn a_dynamic_supervisor_handle_from_its_parent_follows_its_restarts() {
    let mut w = Workers::new();
    let parent = Supervisor::builder()
        .child(DynamicSupervisor::builder().max_children(10).child_spec("jobs"))
        .start()
        .await
        .unwrap();
    let jobs = parent.child_dynamic_supervisor("jobs").await.unwrap();
    jobs.start_child(w.spec("job")).await.unwrap();
    w.take(1).await;
    let before = jobs.cell().unwrap();
    before.kill();
    // down, then up again as a new incarnation (empty, as Elixir's): the same handle starts children in it
    let after = loop {
        match jobs.cell() {
            Ok(cell) if cell.get_id() != before.get_id() => break cell,
            _ => tokio::task::yield_now().await,
        }
    };
    assert_eq!(jobs.count_children().await.unwrap().specs, 0);
    let job = jobs.start_child(typed_spec(w.args("job"))).await.unwrap();
    w.started("job").await;
    assert_eq!(
        job.actor()
            .unwrap()
            .get_cell()
            .try_get_supervisor()
            .unwrap()
            .get_id(),
        after.get_id()
    );
    parent.shutdown(LONG).await.unwrap();
}

#[tokio::test]
async fn lookups_name_what_is_wrong() {
    let w = Workers::new();
    let parent = Supervisor::builder()
        .child(w.spec("worker"))
        .child(Supervisor::builder().child_spec("sub"))
        .start()
        .await
        .unwrap();
    assert!(matches!(
        parent.child_supervisor("worker").await,
        Err(SupervisorError::WrongChildKind { id, .. }) if id == "worker"
    ));
    assert!(matches!(
        parent.child_dynamic_supervisor("sub").await,
        Err(SupervisorError::WrongChildKind { .. })
    ));
    assert!(matches!(
        parent.child_ref::<String>("worker").await,
        Err(SupervisorError::WrongMessageType { id, .. }) if id == "worker"
    ));
    assert!(matches!(
        parent.child("nobody").await,
        Err(SupervisorError::UnknownChild { id }) if id == "nobody"
    ));
    assert_eq!(
        parent
            .child_supervisor("sub")
            .await
            .unwrap()
            .count_children()
            .await
            .unwrap()
            .specs,
        0
    );
    parent.shutdown(LONG).await.unwrap();
}

#[tokio::test]
async fn a_template_starts_children_from_one_argument() {
    let mut w = Workers::new();
    let log = w.tx.clone();
    let template = ChildTemplate::actor("job", move |name: String| {
        let mut args = Workers::args_with(&log, &name);
        args.name = name;
        (Worker, args)
    })
    .restart(Restart::Transient);
    let jobs = DynamicSupervisor::builder()
        .start()
        .await
        .unwrap()
        .with_template(template);
    let a = jobs.start_child("a".to_string()).await.unwrap();
    let b = jobs.start_child("b".to_string()).await.unwrap();
    assert_eq!(names(&w.take(2).await), ["+a", "+b"]);
    // transient: a crash restarts it with the same argument, a normal stop does not
    a.cast(WorkerMsg::Panic).unwrap();
    w.started("a").await;
    b.cast(WorkerMsg::Stop(None)).unwrap();
    assert_eq!(names(&w.take(1).await), ["-b"]);
    assert_eq!(a.id(), "job#0");
    let ids: Vec<String> = jobs
        .which_children()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, ["job#0"]);
    jobs.shutdown(LONG).await.unwrap();
}
