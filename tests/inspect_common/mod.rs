//! Shared by the `inspect*` and `cli_inspect*` / `cli_top*` tests: a real tree with its introspection server on
//! 127.0.0.1 (port 0), jobs that register themselves, and waiting for events over the wire.
#![allow(dead_code)]

use std::time::Duration;

use arbor::introspect::{ClientOptions, InspectClient, IntrospectionOptions};
use arbor::ractor::{Actor, ActorProcessingErr, ActorRef};
use arbor::registry::Registry;
use arbor::supervisor::{ChildSpec, RestartBackoff, Shutdown};
use arbor::tree::{DynamicConfig, Tree, TreeHandle};
use arbor_proto::inspect::v1 as pb;

/// Generous: only a broken build waits this long.
pub const LONG: Duration = Duration::from_secs(30);

/// A worker that registers itself in the app registry under its key, with its key as the value.
pub struct Job;

impl Actor for Job {
    type Msg = ();
    type State = ();
    type Arguments = (Registry<serde_json::Value>, String);
    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        (registry, key): Self::Arguments,
    ) -> Result<(), ActorProcessingErr> {
        registry.register(key.clone(), &myself, serde_json::json!({ "job": key }))?;
        Ok(())
    }
}

/// A worker that does nothing.
pub struct Idle;

impl Actor for Idle {
    type Msg = ();
    type State = ();
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

/// Introspection on a free loopback port.
pub fn options() -> IntrospectionOptions {
    IntrospectionOptions::default().listen("127.0.0.1:0".parse().unwrap())
}

/// A tree `orders`: a dynamic supervisor `jobs`, the child `cache` (transient, brutal kill, a 10 ms restart
/// backoff), introspection with `options`.
pub async fn start_tree(options: IntrospectionOptions) -> TreeHandle {
    let cache = ChildSpec::actor("cache", || (Idle, ()))
        .restart(arbor::supervisor::Restart::Transient)
        .shutdown(Shutdown::BrutalKill)
        .backoff(RestartBackoff {
            min: Duration::from_millis(10),
            max: Duration::from_millis(100),
            random_factor: 0.0,
            reset_after: Duration::from_secs(60),
        });
    Tree::builder()
        .name("orders")
        .dynamic(DynamicConfig::new("jobs"))
        .child(cache)
        .introspection(options)
        .start()
        .await
        .expect("the tree starts")
}

/// Starts a job under `jobs` registered as `job/<n>`.
pub async fn start_job(tree: &TreeHandle, n: u32) -> arbor::supervisor::ChildRef<()> {
    let registry = tree.registry().clone();
    tree.start_child(
        "jobs",
        ChildSpec::actor("job", move || (Job, (registry.clone(), format!("job/{n}")))),
    )
    .await
    .expect("the job starts")
}

/// The gRPC address of the tree's introspection server.
pub fn addr(tree: &TreeHandle) -> std::net::SocketAddr {
    tree.introspection_addrs().expect("introspection runs").grpc
}

pub async fn client(tree: &TreeHandle) -> InspectClient {
    InspectClient::connect(&ClientOptions::new(addr(tree).to_string()))
        .await
        .expect("connect to the introspection server")
}

/// The next event of a watch matching `pick` (panics after [`LONG`] or when the stream ends).
pub async fn next_event(
    stream: &mut tonic::Streaming<pb::WatchEventsResponse>,
    mut pick: impl FnMut(&pb::Event) -> bool,
) -> pb::Event {
    tokio::time::timeout(LONG, async {
        loop {
            match stream.message().await {
                Ok(Some(pb::WatchEventsResponse {
                    kind: Some(pb::watch_events_response::Kind::Event(event)),
                })) if pick(&event) => return event,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the event stream ended"),
                Err(status) => panic!("the event stream failed: {status}"),
            }
        }
    })
    .await
    .expect("the event comes")
}

/// A supervisor event's kind, if `event` is one about `child` (by prefix) under `supervisor`.
pub fn supervisor_kind<'a>(
    event: &'a pb::Event,
    supervisor: &str,
    child: &str,
) -> Option<&'a pb::supervisor_event::Kind> {
    match &event.kind {
        Some(pb::event::Kind::Supervisor(s))
            if s.supervisor_path == supervisor && s.child.starts_with(child) =>
        {
            s.kind.as_ref()
        }
        _ => None,
    }
}
