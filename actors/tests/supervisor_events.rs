//! Supervisor events: every start, exit, restart and the supervisor's own end reach an [`EventSink`].

mod common;

use std::time::Duration;

use arbor_actors::supervisor::{EventSink, Supervisor, SupervisorEvent, SupervisorExit};
use common::*;
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
