//! Supervisor events: every start, exit, restart and the supervisor's own end reach an [`EventSink`].

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use arbor_actors::supervisor::{
    ChildKind, ChildStatus, DynamicSupervisor, EventSink, Strategy, Supervisor, SupervisorEvent,
    SupervisorExit, SupervisorHandle, SupervisorOptions, TreeSnapshot,
};
use common::*;
use futures::future::BoxFuture;
use futures::FutureExt;
use ractor::{ActorCell, ActorId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::broadcast;

async fn next(rx: &mut broadcast::Receiver<SupervisorEvent>) -> SupervisorEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event")
        .expect("events open")
}

#[tokio::test]
async fn starts_exits_restarts_and_giving_up_are_published_with_the_supervisors_label() {
    let mut w = Workers::new();
    let (tx, mut rx) = broadcast::channel(64);
    let sink = EventSink::new("app", tx);
    let sup = Supervisor::builder()
        .intensity(1, Duration::from_secs(60))
        .events(sink.clone())
        .child(w.spec("a"))
        .child(
            Supervisor::builder()
                .events(sink.child("sub"))
                .child(w.spec("leaf"))
                .child_spec("sub"),
        )
        .start()
        .await
        .unwrap();
    w.take(2).await;
    let a = cell_of(&sup, "a").await.get_id();
    assert_eq!(
        next(&mut rx).await,
        SupervisorEvent::Started {
            supervisor: "app".into(),
            child: "a".into(),
            actor: a
        }
    );
    // the nested supervisor's child, under its own label, then the nested supervisor itself
    match next(&mut rx).await {
        SupervisorEvent::Started {
            supervisor, child, ..
        } => assert_eq!((&*supervisor, child.as_str()), ("app/sub", "leaf")),
        other => panic!("{other:?}"),
    }
    match next(&mut rx).await {
        SupervisorEvent::Started {
            supervisor, child, ..
        } => assert_eq!((&*supervisor, child.as_str()), ("app", "sub")),
        other => panic!("{other:?}"),
    }

    worker(&cell_of(&sup, "a").await).cast(WorkerMsg::Panic).unwrap();
    match next(&mut rx).await {
        SupervisorEvent::Exited {
            child,
            actor,
            normal,
            restart,
            reason,
            ..
        } => {
            assert_eq!((child.as_str(), actor, normal, restart), ("a", a, false, true));
            assert!(reason.contains("told to panic"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let b = w.started("a").await;
    assert_eq!(
        next(&mut rx).await,
        SupervisorEvent::Restarted {
            supervisor: "app".into(),
            child: "a".into(),
            actor: b,
            restarts: 1
        }
    );

    // one restart too many: the supervisor gives up and says so
    worker(&cell_of(&sup, "a").await).cast(WorkerMsg::Panic).unwrap();
    loop {
        if let SupervisorEvent::Stopped { supervisor, exit } = next(&mut rx).await {
            if &*supervisor == "app" {
                assert!(
                    matches!(exit, SupervisorExit::IntensityReached { ref child, .. } if child == "a"),
                    "{exit:?}"
                );
                break;
            }
        }
    }
}

/// What a subscriber knows from the events alone: which child runs as which actor, by (supervisor label,
/// child id). Whatever contradicts the stream (a second start of a running child, the exit of a child that
/// is not running, a supervisor stopping with children still running) is a violation.
#[derive(Default)]
struct Replay {
    running: BTreeMap<(String, String), ActorId>,
    violations: Vec<String>,
    /// Restarts seen, by supervisor label: the storm must have reached every kind of group.
    restarts: BTreeMap<String, u32>,
}

impl Replay {
    fn apply(&mut self, event: &SupervisorEvent) {
        match event {
            SupervisorEvent::Started {
                supervisor,
                child,
                actor,
            }
            | SupervisorEvent::Restarted {
                supervisor,
                child,
                actor,
                ..
            } => {
                if matches!(event, SupervisorEvent::Restarted { .. }) {
                    *self.restarts.entry(supervisor.to_string()).or_default() += 1;
                }
                if let Some(old) = self
                    .running
                    .insert((supervisor.to_string(), child.clone()), *actor)
                {
                    self.violations.push(format!(
                        "{supervisor}/{child} started as {actor} while {old} runs"
                    ));
                }
            }
            SupervisorEvent::Exited {
                supervisor,
                child,
                actor,
                ..
            } => {
                match self.running.remove(&(supervisor.to_string(), child.clone())) {
                    Some(old) if old == *actor => {}
                    other => self.violations.push(format!(
                        "{supervisor}/{child} exited as {actor}, but ran as {other:?}"
                    )),
                }
                // A child supervisor that was killed could not tell its children's exits: they went with it.
                let below = format!("{supervisor}/{child}");
                self.running.retain(|(label, _), _| !under(label, &below));
            }
            SupervisorEvent::Stopped { supervisor, .. } => {
                let left: Vec<_> = self
                    .running
                    .keys()
                    .filter(|(label, _)| under(label, supervisor))
                    .cloned()
                    .collect();
                if !left.is_empty() {
                    self.violations
                        .push(format!("{supervisor} stopped with {left:?} still running"));
                }
            }
            _ => {}
        }
    }
}

fn under(label: &str, supervisor: &str) -> bool {
    label == supervisor || label.starts_with(&format!("{supervisor}/"))
}

/// What runs according to a snapshot, keyed as the events are: the root's label stands for its actor id.
fn running_in(snapshot: &TreeSnapshot, root_label: &str) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for node in snapshot.nodes().into_iter().skip(1) {
        if let (ChildStatus::Running, Some(actor)) = (node.status, &node.actor_id) {
            let (parent, child) = node.path.rsplit_once('/').expect("a child has a parent");
            let label = match parent.split_once('/') {
                Some((_, rest)) => format!("{root_label}/{rest}"),
                None => root_label.to_string(),
            };
            out.insert((label, child.to_string()), actor.clone());
        }
    }
    out
}

/// Every actor below `sup`, supervisors included.
fn actors_below(sup: ActorCell) -> BoxFuture<'static, Vec<ActorCell>> {
    async move {
        let Ok(handle) = SupervisorHandle::from_cell(sup) else {
            return Vec::new();
        };
        let Ok(children) = handle.which_children().await else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for child in children {
            if let Some(cell) = child.cell {
                if child.kind != ChildKind::Worker {
                    out.extend(actors_below(cell.clone()).await);
                }
                out.push(cell);
            }
        }
        out
    }
    .boxed()
}

/// Applies events until the model agrees with the live tree (the tree settles once the faults stop), or no
/// event has come for a long while and they still disagree.
async fn replay_until_settled(
    rx: &mut broadcast::Receiver<SupervisorEvent>,
    replay: &mut Replay,
    root: &SupervisorHandle,
) {
    for _ in 0..10_000 {
        loop {
            match rx.try_recv() {
                Ok(event) => replay.apply(&event),
                Err(broadcast::error::TryRecvError::Empty) => break,
                Err(other) => panic!("events: {other:?}"),
            }
        }
        let live = running_in(&root.snapshot().await.unwrap(), "root");
        let model: BTreeMap<_, _> = replay
            .running
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        if live == model {
            return;
        }
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Ok(event)) => replay.apply(&event),
            Ok(Err(err)) => panic!("events: {err:?}"),
            Err(_) => panic!("no event for 30 s and the replay disagrees:\nlive  {live:?}\nmodel {model:?}"),
        }
    }
    panic!("the tree never settled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_the_events_through_a_kill_storm_always_knows_what_runs() {
    let w = Workers::new();
    let (tx, mut rx) = broadcast::channel(1 << 17);
    let sink = EventSink::new("root", tx);
    let lenient = SupervisorOptions::default().intensity(100_000, Duration::from_secs(60));
    // Low intensity below the root: these give up now and then and are restarted by their parent.
    let touchy = SupervisorOptions::default().intensity(4, Duration::from_secs(60));
    let nested = Supervisor::builder()
        .options(touchy)
        .events(sink.child("rfo").child("nested"))
        .child(w.spec("n1"))
        .child(w.spec("n2"))
        .child_spec("nested");
    let rfo = Supervisor::builder()
        .options(touchy.strategy(Strategy::RestForOne))
        .events(sink.child("rfo"))
        .children([w.spec("r1"), w.spec("r2")])
        .child(nested)
        .child(w.spec("r3"))
        .child_spec("rfo");
    let ofa = Supervisor::builder()
        .options(lenient.strategy(Strategy::OneForAll))
        .events(sink.child("ofa"))
        .children([w.spec("o1"), w.spec("o2"), w.spec("o3")])
        .child_spec("ofa");
    let pool = DynamicSupervisor::builder()
        .intensity(100_000, Duration::from_secs(60))
        .events(sink.child("pool"))
        .child_spec("pool");
    let root = Supervisor::builder()
        .options(lenient)
        .events(sink.clone())
        .child(w.spec("a"))
        .child(ofa)
        .child(rfo)
        .child(pool)
        .start()
        .await
        .unwrap();
    let pool = root.child_dynamic_supervisor("pool").await.unwrap();
    for i in 0..4 {
        pool.start_child(w.spec(&format!("p{i}"))).await.unwrap();
    }

    let mut rng = StdRng::seed_from_u64(0xe7e7);
    let mut kills = 0;
    while kills < 200 {
        let actors = actors_below(root.cell().unwrap()).await;
        for _ in 0..2 {
            let Some(victim) = actors.get(rng.random_range(0..actors.len().max(1))) else {
                break;
            };
            if rng.random_bool(0.7) {
                victim.kill();
            } else {
                victim.stop(Some("crashed".into()));
            }
            kills += 1;
        }
    }

    let mut replay = Replay::default();
    replay_until_settled(&mut rx, &mut replay, &root).await;
    for group in ["root", "root/ofa", "root/rfo", "root/rfo/nested"] {
        assert!(
            replay.restarts.get(group).is_some_and(|n| *n > 0),
            "no restart under {group}: {:?}",
            replay.restarts
        );
    }
    assert!(
        replay.violations.is_empty(),
        "{} inconsistencies, first: {:#?}",
        replay.violations.len(),
        &replay.violations[..replay.violations.len().min(10)]
    );
    // a shutdown tells every exit too: nothing runs in the end, by the events alone
    root.shutdown(Duration::from_secs(30)).await.unwrap();
    while let Ok(event) = rx.try_recv() {
        replay.apply(&event);
    }
    assert!(replay.violations.is_empty(), "{:#?}", replay.violations);
    assert!(replay.running.is_empty(), "{:?}", replay.running);
}

/// The (child, what) of each event, for comparing sequences.
fn outline(event: &SupervisorEvent) -> (String, &'static str) {
    match event {
        SupervisorEvent::Started { child, .. } => (child.clone(), "started"),
        SupervisorEvent::Exited { child, restart, .. } => (
            child.clone(),
            if *restart { "exited, restarting" } else { "exited" },
        ),
        SupervisorEvent::Restarted { child, .. } => (child.clone(), "restarted"),
        SupervisorEvent::RestartFailed { child, .. } => (child.clone(), "restart failed"),
        SupervisorEvent::Stopped { exit, .. } => (exit.to_string(), "stopped"),
        _ => (String::new(), "other"),
    }
}

async fn outlines(rx: &mut broadcast::Receiver<SupervisorEvent>, n: usize) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(outline(&next(rx).await));
    }
    out
}

fn expected(steps: &[(&str, &'static str)]) -> Vec<(String, &'static str)> {
    steps.iter().map(|(c, w)| (c.to_string(), *w)).collect()
}

#[tokio::test]
async fn terminate_child_and_shutdown_tell_every_exit() {
    let w = Workers::new();
    let (tx, mut rx) = broadcast::channel(64);
    let sup = Supervisor::builder()
        .events(EventSink::new("app", tx))
        .children([w.spec("a"), w.spec("b")])
        .start()
        .await
        .unwrap();
    sup.terminate_child("a").await.unwrap();
    sup.restart_child("a").await.unwrap();
    sup.shutdown(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        outlines(&mut rx, 7).await,
        expected(&[
            ("a", "started"),
            ("b", "started"),
            ("a", "exited"),
            ("a", "started"),
            ("b", "exited"),
            ("a", "exited"),
            ("shutdown", "stopped"),
        ])
    );
    assert!(rx.try_recv().is_err(), "nothing more");
}

#[tokio::test]
async fn a_dynamic_supervisors_terminate_child_and_shutdown_tell_every_exit() {
    let w = Workers::new();
    let (tx, mut rx) = broadcast::channel(64);
    let pool = DynamicSupervisor::builder()
        .events(EventSink::new("pool", tx))
        .start()
        .await
        .unwrap();
    let first = pool.start_child(w.spec("job")).await.unwrap();
    pool.start_child(w.spec("job")).await.unwrap();
    assert_eq!(
        outlines(&mut rx, 2).await,
        expected(&[("job#0", "started"), ("job#1", "started")])
    );
    first.stop(Some("done".into())).unwrap();
    // a normal exit of a permanent child: restarted, and told so
    assert_eq!(
        outlines(&mut rx, 2).await,
        expected(&[("job#0", "exited, restarting"), ("job#0", "restarted")])
    );
    pool.shutdown(Duration::from_secs(10)).await.unwrap();
    let mut end = outlines(&mut rx, 3).await;
    end[..2].sort();
    assert_eq!(
        end,
        expected(&[("job#0", "exited"), ("job#1", "exited"), ("shutdown", "stopped")])
    );
}

/// OTP's exit reason: a supervisor that gives up exits with `shutdown` exactly; its parent's `Exited` event
/// and snapshot keep the cause.
#[tokio::test]
async fn a_supervisor_that_gives_up_exits_with_plain_shutdown_and_its_parent_tells_the_cause() {
    let w = Workers::new();
    let (tx, mut rx) = broadcast::channel(256);
    let sink = EventSink::new("app", tx);
    let root = Supervisor::builder()
        .events(sink.clone())
        .child(
            Supervisor::builder()
                .intensity(0, Duration::from_secs(60))
                .events(sink.child("sub"))
                .child(w.spec("leaf"))
                .child_spec("sub"),
        )
        .start()
        .await
        .unwrap();
    let sub = root.child_supervisor("sub").await.unwrap();
    worker(&cell_of(&sub, "leaf").await)
        .cast(WorkerMsg::Panic)
        .unwrap();
    loop {
        if let SupervisorEvent::Exited {
            supervisor,
            child,
            reason,
            normal,
            restart,
            ..
        } = next(&mut rx).await
        {
            if (&*supervisor, child.as_str()) == ("app", "sub") {
                assert!(normal && restart);
                assert!(
                    reason.starts_with("shutdown: reached_max_restart_intensity"),
                    "{reason}"
                );
                break;
            }
        }
    }
    root.shutdown(Duration::from_secs(10)).await.unwrap();
}
