//! The registry: unique keys, automatic removal on exit, watch events, metadata, a supervised watcher.

mod common;

use std::time::Duration;

use arbor_actors::registry::{Registry, RegistryError, RegistryEvent, RemovalReason};
use arbor_actors::supervisor::{Supervisor, SupervisorHandle};
use common::*;
use ractor::Actor;
use tokio::sync::broadcast;

async fn event<V: Clone>(rx: &mut broadcast::Receiver<RegistryEvent<V>>) -> RegistryEvent<V> {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("timed out waiting for a registry event")
        .expect("registry events closed")
}

async fn spawn_worker(w: &Workers, name: &str) -> ractor::ActorRef<WorkerMsg> {
    Actor::spawn(None, Worker, w.args(name)).await.unwrap().0
}

#[tokio::test]
async fn a_taken_key_is_refused_naming_its_holder() {
    let w = Workers::new();
    let registry: Registry<u32> = Registry::new("dup");
    registry.start().await.unwrap();
    let a = spawn_worker(&w, "a").await;
    let b = spawn_worker(&w, "b").await;
    registry.register("key", a.get_cell(), 1).unwrap();
    let err = registry.register("key", b.get_cell(), 2).unwrap_err();
    assert_eq!(
        err,
        RegistryError::Duplicate {
            key: "key".into(),
            holder: a.get_id()
        }
    );
    assert!(err.to_string().contains(&a.get_id().to_string()));
    assert_eq!(
        registry.lookup("key").unwrap().value,
        1,
        "the first registration is untouched"
    );
}

#[tokio::test]
async fn entries_vanish_when_their_actor_panics_or_is_killed() {
    let w = Workers::new();
    let registry: Registry<&'static str> = Registry::new("exits");
    registry.start().await.unwrap();
    let mut events = registry.watch();
    let panicker = spawn_worker(&w, "p").await;
    let killed = spawn_worker(&w, "k").await;
    registry.register("p/1", panicker.get_cell(), "x").unwrap();
    registry.register("p/2", panicker.get_cell(), "y").unwrap();
    registry.register("k", killed.get_cell(), "z").unwrap();
    for _ in 0..3 {
        assert!(matches!(event(&mut events).await, RegistryEvent::Registered(_)));
    }

    panicker.cast(WorkerMsg::Panic).unwrap();
    let mut removed = Vec::new();
    for _ in 0..2 {
        match event(&mut events).await {
            RegistryEvent::Removed(entry, RemovalReason::ActorExited) => removed.push(entry.key),
            other => panic!("unexpected {other:?}"),
        }
    }
    removed.sort();
    assert_eq!(removed, ["p/1", "p/2"]);

    killed.kill();
    match event(&mut events).await {
        RegistryEvent::Removed(entry, RemovalReason::ActorExited) => assert_eq!(entry.key, "k"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(registry.is_empty());
}

#[tokio::test]
async fn an_actor_that_has_exited_cannot_register_and_a_dead_holder_holds_nothing() {
    let w = Workers::new();
    let registry: Registry<()> = Registry::new("dead");
    // no watcher yet: removal on exit cannot happen, so the dead holder's entry is still there below
    let a = spawn_worker(&w, "a").await;
    registry.register("key", a.get_cell(), ()).unwrap();
    a.stop(None);
    a.get_cell().wait(Some(Duration::from_secs(5))).await.unwrap();
    let err = registry.register("other", a.get_cell(), ()).unwrap_err();
    assert!(matches!(err, RegistryError::NotAlive { .. }));
    let b = spawn_worker(&w, "b").await;
    registry.register("key", b.get_cell(), ()).unwrap();
    assert_eq!(registry.lookup("key").unwrap().actor.get_id(), b.get_id());
}

#[tokio::test]
async fn watch_reports_register_update_and_unregister_and_metadata_updates_stick() {
    let w = Workers::new();
    let registry: Registry<Vec<String>> = Registry::new("watch");
    registry.start().await.unwrap();
    let mut events = registry.watch();
    let a = spawn_worker(&w, "a").await;
    registry
        .register("conn/a", a.get_cell(), vec!["idle".into()])
        .unwrap();
    registry.update("conn/a", |v| v.push("ready".into())).unwrap();
    assert_eq!(registry.lookup("conn/a").unwrap().value, ["idle", "ready"]);
    assert_eq!(
        registry.update("conn/zz", |_| {}).unwrap_err(),
        RegistryError::NotFound {
            key: "conn/zz".into()
        }
    );
    let removed = registry.unregister("conn/a").unwrap();
    assert_eq!(removed.value, ["idle", "ready"]);

    assert!(matches!(event(&mut events).await, RegistryEvent::Registered(e) if e.key == "conn/a"));
    assert!(matches!(event(&mut events).await, RegistryEvent::Updated(e) if e.value.len() == 2));
    assert!(
        matches!(event(&mut events).await, RegistryEvent::Removed(e, RemovalReason::Unregistered) if e.key == "conn/a")
    );
    // unregistered actors are no longer watched: their exit produces nothing
    a.kill();
    a.get_cell().wait(Some(Duration::from_secs(5))).await.unwrap();
    assert!(matches!(
        events.try_recv(),
        Err(broadcast::error::TryRecvError::Empty)
    ));
}

#[tokio::test]
async fn select_by_prefix_and_predicate_and_typed_lookup() {
    let w = Workers::new();
    let registry: Registry<u32> = Registry::new("select");
    for (key, value) in [("conn/b", 2), ("conn/a", 1), ("tunnel/x", 3), ("conn", 0)] {
        let actor = spawn_worker(&w, key).await;
        registry.register(key, actor.get_cell(), value).unwrap();
    }
    let keys = |entries: Vec<arbor_actors::registry::RegistryEntry<u32>>| {
        entries.into_iter().map(|e| e.key).collect::<Vec<_>>()
    };
    assert_eq!(keys(registry.select_prefix("conn/")), ["conn/a", "conn/b"]);
    assert_eq!(keys(registry.select(|e| e.value >= 2)), ["conn/b", "tunnel/x"]);
    assert_eq!(registry.len(), 4);
    let typed = registry.lookup_ref::<WorkerMsg>("conn/a").expect("a worker");
    let id = ractor::call!(typed, WorkerMsg::Ping).unwrap();
    assert_eq!(id, typed.get_id());
    assert!(
        matches!(
            registry.lookup_ref::<String>("conn/a"),
            Err(RegistryError::WrongType { .. })
        ),
        "wrong message type"
    );
    assert_eq!(registry.keys_of(&typed.get_id()), ["conn/a"]);
}

#[tokio::test]
async fn a_supervised_watcher_that_restarts_still_removes_entries() {
    let w = Workers::new();
    let registry: Registry<()> = Registry::new("supervised");
    let sup = Supervisor::start(Default::default(), vec![registry.child_spec("watcher")])
        .await
        .unwrap();
    let a = spawn_worker(&w, "a").await;
    registry.register("a", a.get_cell(), ()).unwrap();

    let watcher = only_child(&sup).await;
    watcher.kill();
    watcher.wait(Some(Duration::from_secs(5))).await.unwrap();
    // wait for the replacement: the supervisor answers only after it has restarted the watcher
    assert_ne!(only_child(&sup).await.get_id(), watcher.get_id());

    let mut events = registry.watch();
    a.cast(WorkerMsg::Panic).unwrap();
    assert!(
        matches!(event(&mut events).await, RegistryEvent::Removed(e, RemovalReason::ActorExited) if e.key == "a")
    );
    sup.shutdown(Duration::from_secs(30)).await.unwrap();
}

async fn only_child(sup: &SupervisorHandle) -> ractor::ActorCell {
    sup.which_children().await.unwrap()[0]
        .cell
        .clone()
        .expect("running")
}

#[tokio::test]
async fn registries_are_independent() {
    let w = Workers::new();
    let one: Registry<u8> = Registry::new("one");
    let two: Registry<u8> = Registry::new("two");
    let a = spawn_worker(&w, "a").await;
    one.register("same-key", a.get_cell(), 1).unwrap();
    two.register("same-key", a.get_cell(), 2).unwrap();
    assert_eq!(one.lookup("same-key").unwrap().value, 1);
    assert_eq!(two.lookup("same-key").unwrap().value, 2);
}
