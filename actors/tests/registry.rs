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
    registry.register("key", &a, 1).unwrap();
    let err = registry.register("key", &b, 2).unwrap_err();
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
    registry.register("p/1", &panicker, "x").unwrap();
    registry.register("p/2", &panicker, "y").unwrap();
    registry.register("k", &killed, "z").unwrap();
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
    registry.register("key", &a, ()).unwrap();
    a.stop(None);
    a.get_cell().wait(Some(Duration::from_secs(5))).await.unwrap();
    let err = registry.register("other", &a, ()).unwrap_err();
    assert!(matches!(err, RegistryError::NotAlive { .. }));
    let b = spawn_worker(&w, "b").await;
    registry.register("key", &b, ()).unwrap();
    assert_eq!(registry.lookup("key").unwrap().actor.id(), b.get_id());
}

#[tokio::test]
async fn watch_reports_register_update_and_unregister_and_metadata_updates_stick() {
    let w = Workers::new();
    let registry: Registry<Vec<String>> = Registry::new("watch");
    registry.start().await.unwrap();
    let mut events = registry.watch();
    let a = spawn_worker(&w, "a").await;
    registry.register("conn/a", &a, vec!["idle".into()]).unwrap();
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
        registry.register(key, &actor, value).unwrap();
    }
    let keys = |entries: Vec<arbor_actors::registry::RegistryEntry<u32>>| {
        entries.into_iter().map(|e| e.key).collect::<Vec<_>>()
    };
    assert_eq!(keys(registry.select_prefix("conn/")), ["conn/a", "conn/b"]);
    assert_eq!(keys(registry.select(|e| e.value >= 2)), ["conn/b", "tunnel/x"]);
    assert_eq!(registry.len(), 4);
    let typed = registry.lookup_typed::<WorkerMsg>("conn/a").expect("a worker");
    let id = typed.call(WorkerMsg::Ping, Duration::from_secs(5)).await.unwrap();
    assert_eq!(id, typed.id());
    assert!(
        matches!(
            registry.lookup_typed::<String>("conn/a"),
            Err(RegistryError::WrongType { .. })
        ),
        "wrong message type"
    );
    assert_eq!(registry.keys_of(&typed.id()), ["conn/a"]);
    // the ractor form stays reachable under its own name
    let id = ractor::call!(typed.ractor_ref(), WorkerMsg::Ping).unwrap();
    assert_eq!(id, typed.id());
}

#[tokio::test]
async fn a_supervised_watcher_that_restarts_still_removes_entries() {
    let w = Workers::new();
    let registry: Registry<()> = Registry::new("supervised");
    let sup = Supervisor::start(Default::default(), vec![registry.child_spec("watcher")])
        .await
        .unwrap();
    let a = spawn_worker(&w, "a").await;
    registry.register("a", &a, ()).unwrap();

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
    one.register("same-key", &a, 1).unwrap();
    two.register("same-key", &a, 2).unwrap();
    assert_eq!(one.lookup("same-key").unwrap().value, 1);
    assert_eq!(two.lookup("same-key").unwrap().value, 2);
}

/// Applies one event to a view of the table, failing on any event the table's own order could not produce.
fn apply(view: &mut std::collections::BTreeMap<String, (ractor::ActorId, u32)>, event: RegistryEvent<u32>) {
    match event {
        RegistryEvent::Registered(e) => {
            let old = view.insert(e.key.clone(), (e.actor.id(), e.value));
            assert!(old.is_none(), "Registered {} while the view holds it", e.key);
        }
        RegistryEvent::Updated(e) => {
            let held = view.get_mut(&e.key);
            let held = held.unwrap_or_else(|| panic!("Updated {} which the view does not hold", e.key));
            assert_eq!(held.0, e.actor.id(), "Updated {} of another holder", e.key);
            held.1 = e.value;
        }
        RegistryEvent::Removed(e, _) => {
            let old = view.remove(&e.key);
            assert_eq!(
                old.map(|h| h.0),
                Some(e.actor.id()),
                "Removed {} which the view does not hold (or of another holder)",
                e.key
            );
        }
    }
}

/// A subscriber rebuilding the table from `watch_with_snapshot` under a storm of registrations, updates,
/// unregistrations and deaths from several tasks: every event is one the table's order allows, and the view
/// equals the table at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_view_rebuilt_from_events_always_equals_the_table_under_a_storm() {
    use rand::{Rng, SeedableRng};
    let w = Workers::new();
    let registry: Registry<u32> = Registry::with_event_buffer("storm", 1 << 20);
    registry.start().await.unwrap();
    let (entries, mut events) = registry.watch_with_snapshot();
    assert!(entries.is_empty());
    let storms: Vec<_> = (0..4u64)
        .map(|task| {
            let (registry, args) = (registry.clone(), w.args("storm"));
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(task);
                let mut mine = Vec::new();
                for i in 0..600u32 {
                    // few keys shared by all tasks, so the tasks contend for them
                    let key = format!("k{}", rng.random_range(0..12));
                    match rng.random_range(0..5) {
                        0 | 1 => {
                            let (actor, _) = Actor::spawn(None, Worker, args.clone()).await.unwrap();
                            if registry.register(key, &actor, i).is_ok() {
                                mine.push(actor);
                            } else {
                                actor.stop(None);
                            }
                        }
                        2 => {
                            let _ = registry.update(&key, |v| *v = i);
                        }
                        3 => {
                            registry.unregister(&key);
                        }
                        _ => {
                            if !mine.is_empty() {
                                let victim = mine.swap_remove(rng.random_range(0..mine.len()));
                                if i % 2 == 0 {
                                    victim.kill();
                                } else {
                                    victim.stop(None);
                                }
                            }
                        }
                    }
                    if i % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                mine
            })
        })
        .collect();
    let mut survivors = Vec::new();
    for storm in storms {
        survivors.extend(storm.await.unwrap());
    }
    // Let the watcher catch up with the deaths, then compare: stop every survivor too, so that the end state
    // is known (empty) and every removal must have been seen.
    for actor in &survivors {
        actor.stop(None);
    }
    for actor in &survivors {
        actor
            .get_cell()
            .wait(Some(Duration::from_secs(10)))
            .await
            .unwrap();
    }
    let mut view = std::collections::BTreeMap::new();
    let mut seen = 0u64;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Ok(event)) => {
                seen += 1;
                apply(&mut view, event);
                if view.is_empty() && registry.is_empty() {
                    break;
                }
            }
            Ok(Err(err)) => panic!("the subscriber fell behind: {err}"),
            Err(_) => panic!("no event for 5 s with {} entries left in the view", view.len()),
        }
    }
    // The table is final now (every holder exited, every removal published): what is still queued must
    // leave the view empty too.
    while let Ok(event) = events.try_recv() {
        seen += 1;
        apply(&mut view, event);
    }
    assert!(view.is_empty(), "{view:?}");
    assert!(seen > 100, "the storm produced only {seen} events");
    let table: Vec<String> = registry.list().into_iter().map(|e| e.key).collect();
    assert!(table.is_empty(), "{table:?}");
}

#[tokio::test]
async fn an_entry_of_an_exited_actor_is_gone_even_without_a_watcher() {
    let w = Workers::new();
    let registry: Registry<u32> = Registry::new("unwatched"); // no watcher started
    let mut events = registry.watch();
    let actor = spawn_worker(&w, "x").await;
    registry.register("x", &actor, 1).unwrap();
    assert!(matches!(event(&mut events).await, RegistryEvent::Registered(_)));
    actor.kill();
    actor.get_cell().wait(Some(Duration::from_secs(5))).await.unwrap();
    assert!(registry.lookup("x").is_none());
    assert!(matches!(
        event(&mut events).await,
        RegistryEvent::Removed(_, RemovalReason::ActorExited)
    ));
    assert_eq!(registry.len(), 0);
    assert!(matches!(
        registry.lookup_typed::<WorkerMsg>("x"),
        Err(RegistryError::NotFound { .. })
    ));
}

#[tokio::test]
async fn events_read_as_one_line_for_people() {
    let w = Workers::new();
    let registry: Registry<Vec<u8>> = Registry::new("words");
    registry.start().await.unwrap();
    let mut events = registry.watch();
    let a = spawn_worker(&w, "a").await;
    registry.register("worker-3", &a, vec![1]).unwrap();
    let id = a.get_id();
    assert_eq!(
        event(&mut events).await.to_string(),
        format!("registered worker-3 (actor {id})")
    );
    a.kill();
    assert_eq!(
        event(&mut events).await.to_string(),
        format!("removed worker-3 (actor {id}): its actor exited")
    );
}

/// What arbor's own handles give is what `register` takes: a supervised child's running incarnation; the
/// lookup answers with arbor handles, and the entry goes with that incarnation (the ChildRef follows on).
#[tokio::test]
async fn a_supervised_childs_incarnation_registers_and_is_looked_up_as_an_arbor_handle() {
    let mut w = Workers::new();
    let registry: Registry<&'static str> = Registry::new("handles");
    registry.start().await.unwrap();
    let pool = arbor_actors::supervisor::DynamicSupervisor::builder()
        .start()
        .await
        .unwrap();
    let child = pool.start_child(typed_spec(w.args("db"))).await.unwrap();
    let first = w.started("db").await;
    registry
        .register("db", child.current().unwrap(), "primary")
        .unwrap();

    let entry = registry.lookup("db").expect("registered");
    assert_eq!(entry.actor.id(), first);
    assert_eq!(entry.actor, child.handle().current().unwrap());
    let typed = entry.typed::<WorkerMsg>().unwrap();
    assert_eq!(
        typed.call(WorkerMsg::Ping, Duration::from_secs(5)).await.unwrap(),
        first
    );

    let mut changes = registry.watch();
    entry.actor.kill();
    assert!(matches!(
        event(&mut changes).await,
        RegistryEvent::Removed(_, RemovalReason::ActorExited)
    ));
    let second = w.started("db").await;
    assert_ne!(second, first);
    assert!(
        registry.lookup("db").is_none(),
        "the entry named the killed incarnation"
    );
    assert!(matches!(
        typed.cast(WorkerMsg::Panic),
        Err(arbor_actors::actor::ActorError::NotRunning { .. })
    ));
    registry
        .register("db", child.current().unwrap(), "primary")
        .unwrap();
    assert_eq!(registry.lookup("db").unwrap().actor.id(), second);
    pool.shutdown(Duration::from_secs(5)).await.unwrap();
}
