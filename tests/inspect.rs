//! The introspection server against a real tree on 127.0.0.1: GetTree is the handle's snapshot; ListRegistry
//! filters by prefix and registry, tunnel channels with their progress; WatchEvents sees a kill and the restart
//! and resumes after a disconnect; GetNode shows the child's spec and its restart history; health and
//! reflection; the server is the root's last child, stops with the tree and ends the watches; the TOML section.

mod inspect_common;
mod tunnel_worker_common;

use std::time::Duration;

use arbor::introspect::{
    snapshot_from_wire, ClientOptions, InspectClient, IntrospectionOptions, IntrospectionServer, WatchFrom,
};
use arbor::supervisor::{ChildStatus, TreeSnapshot};
use arbor::tree::{Tree, TreeConfig};
use arbor_proto::inspect::v1 as pb;
use inspect_common::*;
use pb::supervisor_event::Kind as S;

/// The snapshot without what changes between two looks (uptimes).
fn timeless(mut node: TreeSnapshot) -> TreeSnapshot {
    node.uptime = None;
    node.children = node.children.into_iter().map(timeless).collect();
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_tree_is_the_handles_snapshot_and_the_server_its_last_child() {
    let tree = start_tree(options()).await;
    start_job(&tree, 1).await;
    assert!(addr(&tree).ip().is_loopback());
    let mut client = client(&tree).await;

    let seen = client.tree().await.unwrap();
    let local = tree.snapshot().await.unwrap();
    assert_eq!(seen.name, "orders");
    assert_eq!(timeless(seen.snapshot.clone()), timeless(local.clone()));
    let ids: Vec<&str> = seen.snapshot.children.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "registry",
            "connections",
            "tunnels",
            "activators",
            "cache",
            "jobs",
            "introspection"
        ],
        "introspection starts last, so it stops first"
    );
    assert!(
        seen.snapshot.find_path("orders/jobs/job#0").is_some(),
        "{}",
        seen.snapshot.render()
    );
    tree.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_registry_filters_by_prefix_and_by_registry() {
    let tree = start_tree(options()).await;
    for n in [1, 2, 10] {
        start_job(&tree, n).await;
    }
    let mut client = client(&tree).await;

    let all = client.registry("", "").await.unwrap();
    assert!(
        all.iter().any(|e| e.registry == "app" && e.key == "job/10"),
        "{all:?}"
    );

    let jobs = client.registry("job/1", "").await.unwrap();
    let keys: Vec<&str> = jobs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["job/1", "job/10"], "prefix, in key order");
    let value: serde_json::Value = serde_json::from_str(&jobs[0].value_json).unwrap();
    assert_eq!(value, serde_json::json!({ "job": "job/1" }));
    let expected = tree.registry().select_prefix("job/1");
    assert!(expected
        .iter()
        .any(|e| e.actor.id().to_string() == jobs[0].actor_id));

    assert!(
        client.registry("job/", "tunnels").await.unwrap().is_empty(),
        "another registry"
    );
    assert_eq!(client.registry("job/", "app").await.unwrap().len(), 3);
    tree.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_sees_a_kill_and_the_restart_and_resumes_after_a_disconnect() {
    let tree = start_tree(options()).await;
    let mut client = client(&tree).await;
    let job = start_job(&tree, 1).await;

    let mut watch = client.watch(WatchFrom::Now).await.unwrap();
    let subscribed = match watch.message().await.unwrap().unwrap().kind {
        Some(pb::watch_events_response::Kind::Subscribed(s)) => s,
        other => panic!("the first message says where the stream stands: {other:?}"),
    };
    job.kill().unwrap();
    let exited = next_event(&mut watch, |e| {
        matches!(supervisor_kind(e, "orders/jobs", "job#"), Some(S::Exited(_)))
    })
    .await;
    let Some(S::Exited(exit)) = supervisor_kind(&exited, "orders/jobs", "job#") else {
        unreachable!()
    };
    assert_eq!(exit.reason, "killed");
    assert!(!exit.normal && exit.will_restart);
    let restarted = next_event(&mut watch, |e| {
        matches!(supervisor_kind(e, "orders/jobs", "job#"), Some(S::Restarted(_)))
    })
    .await;
    let Some(S::Restarted(restart)) = supervisor_kind(&restarted, "orders/jobs", "job#") else {
        unreachable!()
    };
    assert_eq!(restart.restart_count, 1);
    assert!(restarted.sequence > exited.sequence && exited.sequence >= subscribed.next_sequence);
    drop(watch);

    // Disconnected; more happens; the watcher resumes after the last event it saw, missing nothing.
    job.kill().unwrap();
    let mut resumed = client
        .watch(WatchFrom::After {
            stream_id: subscribed.stream_id.clone(),
            sequence: restarted.sequence,
        })
        .await
        .unwrap();
    let first = next_event(&mut resumed, |_| true).await;
    assert_eq!(
        first.sequence,
        restarted.sequence + 1,
        "the next event, none twice, none lost"
    );
    next_event(&mut resumed, |e| {
        matches!(supervisor_kind(e, "orders/jobs", "job#"), Some(S::Restarted(r)) if r.restart_count == 2)
    })
    .await;

    // A stream id this server never had (it restarted): told first, then what it holds.
    let mut foreign = client
        .watch(WatchFrom::After {
            stream_id: "0000000000000000".into(),
            sequence: 5,
        })
        .await
        .unwrap();
    foreign.message().await.unwrap(); // subscribed
    match foreign.message().await.unwrap().unwrap().kind {
        Some(pb::watch_events_response::Kind::Lagged(l)) => assert!(l.reason.contains("gone"), "{l:?}"),
        other => panic!("a lagged notice first: {other:?}"),
    }
    let replayed = next_event(&mut foreign, |_| true).await;
    assert_eq!(replayed.sequence, 1, "everything held, from the tree's start");
    tree.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_node_shows_the_spec_and_the_restart_history() {
    let tree = start_tree(options()).await;
    let mut client = client(&tree).await;
    let mut watch = client.watch(WatchFrom::Now).await.unwrap();
    let cache = tree.root().child("cache").await.unwrap();
    cache.kill().unwrap();
    next_event(&mut watch, |e| {
        matches!(supervisor_kind(e, "orders", "cache"), Some(S::Restarted(_)))
    })
    .await;

    let node = client.node("orders/cache").await.unwrap();
    let spec = node.spec.expect("a child has a spec");
    assert_eq!(spec.restart(), pb::RestartType::Transient);
    assert_eq!(spec.shutdown(), pb::ShutdownKind::BrutalKill);
    assert_eq!(spec.kind(), pb::NodeKind::Worker);
    assert!(!spec.significant);
    let backoff = spec.backoff.expect("the backoff");
    assert_eq!(
        (backoff.min_ms, backoff.max_ms, backoff.reset_after_ms),
        (10, 100, 60_000)
    );
    assert_eq!(node.supervisor_path, "orders");
    let shown = snapshot_from_wire(node.node.as_ref().unwrap());
    assert_eq!(shown.restart_count, 1);
    assert_eq!(shown.last_exit.as_deref(), Some("killed"));
    assert_eq!(shown.status, ChildStatus::Running);

    let kinds: Vec<pb::LifecycleKind> = node.history.iter().map(|r| r.kind()).collect();
    assert_eq!(
        kinds,
        [
            pb::LifecycleKind::Started,
            pb::LifecycleKind::Exited,
            pb::LifecycleKind::Restarted
        ],
        "recorded from the tree's start: {:?}",
        node.history
    );
    let exit = &node.history[1];
    assert_eq!(exit.reason, "killed");
    assert!(exit.will_restart && !exit.normal && exit.at_unix_ms >= node.history_since_unix_ms);
    assert_eq!(node.history[2].restart_count, 1);
    assert_ne!(
        node.history[0].actor_id, node.history[2].actor_id,
        "a new incarnation"
    );
    assert!(!node.history_incomplete);

    // A dynamic supervisor's child, a supervisor, the root.
    start_job(&tree, 1).await;
    let job = client.node("orders/jobs/job#0").await.unwrap();
    assert_eq!(job.supervisor_path, "orders/jobs");
    assert_eq!(job.spec.unwrap().restart(), pb::RestartType::Permanent);
    let jobs = client.node("orders/jobs").await.unwrap();
    assert_eq!(jobs.spec.unwrap().kind(), pb::NodeKind::DynamicSupervisor);
    let nested = client.node("orders/registry/app").await.unwrap();
    assert_eq!(nested.supervisor_path, "orders/registry");
    let root = client.node("orders").await.unwrap();
    assert!(root.spec.is_none() && root.supervisor_path.is_empty());

    let missing = client.node("orders/nothing").await.unwrap_err();
    assert!(
        matches!(missing, arbor::introspect::ClientError::Rpc { code: tonic::Code::NotFound, ref message } if message.contains("orders/nothing")),
        "{missing}"
    );
    let empty = client.node("").await.unwrap_err();
    assert!(
        matches!(empty, arbor::introspect::ClientError::Rpc { code: tonic::Code::InvalidArgument, ref message } if message.starts_with("path")),
        "{empty}"
    );
    tree.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_health_and_reflection() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let tree = start_tree(options()).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", addr(&tree)))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "arbor.inspect.v1.InspectService"] {
        let request = tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        };
        let status = health.check(request).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "health of {service:?}");
    }
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"arbor.inspect.v1.InspectService".to_string()),
        "{names:?}"
    );
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");
    tree.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_channels_are_listed_with_their_progress() {
    use tunnel_worker_common::*;
    let server = TestServer::memory().await;
    let mut service = server.client().await;
    let tunnel = create_streams(&mut service, "inspected", 2).await;
    let tree = inspect_common::start_tree(options()).await;
    let target = arbor::connection::ConnectionConfig::parse(&format!(
        "{}?disableTls=true",
        server.url.replace("http://", "grpc://")
    ))
    .unwrap();
    let recorder = Recorder::default();
    tree.tunnel(fast_options(&tunnel), target)
        .run_subscriber(recorder.clone())
        .start()
        .await
        .unwrap();
    let records: Vec<_> = (0..20).map(|i| record(format!("k{i}"), "v")).collect();
    append_to(&mut service, &tunnel, None, records).await.unwrap();
    recorder.wait_for(20).await;

    let mut client = inspect_common::client(&tree).await;
    let prefix = format!("tunnel/{tunnel}/channel/");
    let channels = tokio::time::timeout(LONG, async {
        loop {
            let entries = client.registry(&prefix, "").await.unwrap();
            let delivered: u64 = entries
                .iter()
                .filter_map(|e| e.channel.as_ref())
                .map(|c| c.delivered)
                .sum();
            if entries.len() == 2 && delivered == 20 {
                return entries;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("both channels, every record delivered");
    for entry in &channels {
        assert_eq!(entry.registry, "tunnels");
        let progress = entry
            .channel
            .as_ref()
            .expect("a channel's entry carries its progress");
        assert_eq!(progress.tunnel_id, tunnel);
        assert_eq!(progress.status, "OPEN");
    }
    tree.shutdown(Duration::from_secs(30)).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_stops_with_the_tree_and_ends_the_watches() {
    let tree = start_tree(options()).await;
    let addr = addr(&tree);
    let mut client = client(&tree).await;
    let mut watch = client.watch(WatchFrom::Now).await.unwrap();
    watch.message().await.unwrap();
    tree.shutdown(Duration::from_secs(10)).await.unwrap();
    let end = tokio::time::timeout(LONG, async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the watch ends");
    match end {
        Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status}"),
        Ok(None) => {}
        Ok(Some(_)) => unreachable!(),
    }
    assert!(tree.introspection_addrs().is_none(), "not running any more");
    let refused = InspectClient::connect(&ClientOptions::new(addr.to_string())).await;
    assert!(refused.is_err(), "the listener closed with the tree");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_on_its_own_serves_a_tree_started_without_it() {
    let tree = Tree::builder().name("plain").start().await.unwrap();
    assert!(tree.introspection_addrs().is_none());
    let server = IntrospectionServer::start(&tree, options()).await.unwrap();
    let mut client = InspectClient::connect(&ClientOptions::new(server.local_addr().to_string()))
        .await
        .unwrap();
    assert_eq!(client.tree().await.unwrap().name, "plain");
    server.stop(Duration::from_secs(5)).await.unwrap();
    tree.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_file_starts_introspection_on_loopback_and_names_bad_fields() {
    let defaults = TreeConfig::from_toml("[introspection]\n").unwrap();
    let section = defaults.introspection.expect("the section is there");
    assert_eq!(
        section.listen,
        "127.0.0.1:50052".parse().unwrap(),
        "loopback unless told otherwise"
    );
    assert!(section.prometheus.is_none() && section.tls.is_none() && section.token_file.is_none());
    assert!(IntrospectionOptions::default().listen.ip().is_loopback());

    let config = TreeConfig::from_toml(
        "name = \"filed\"\n[introspection]\nlisten = \"127.0.0.1:0\"\nhistory_per_node = 4\n",
    )
    .unwrap();
    let tree = Tree::from_config(config).start().await.unwrap();
    let mut client = client(&tree).await;
    assert_eq!(client.tree().await.unwrap().name, "filed");
    tree.shutdown(Duration::from_secs(10)).await.unwrap();

    let bad = TreeConfig::from_toml("[introspection]\nhistory_per_node = 0\n")
        .unwrap_err()
        .to_string();
    assert!(bad.contains("introspection.history_per_node"), "{bad}");
    let unknown = TreeConfig::from_toml("[introspection]\nport = 1\n")
        .unwrap_err()
        .to_string();
    assert!(
        unknown.contains("introspection") && unknown.contains("port"),
        "{unknown}"
    );
    let shape = TreeConfig::from_toml("[introspection]\nlisten = \"everywhere\"\n")
        .unwrap_err()
        .to_string();
    assert!(shape.contains("introspection.listen"), "{shape}");
}
