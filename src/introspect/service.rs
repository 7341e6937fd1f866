//! The generated `InspectService` trait, answered from a [`TreeHandle`] and the [`Journal`] (thin: read, convert).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use arbor_actors::supervisor::{ChildInfo, SupervisorHandle, TreeSnapshot};
use arbor_actors::tunnel::TunnelEntry;
use arbor_proto::inspect::v1 as pb;
use arbor_proto::inspect::v1::inspect_service_server::InspectService;
use futures::{Stream, StreamExt};
use tokio::sync::{broadcast, watch};
use tonic::{Request, Response, Status};

use super::convert;
use super::journal::{Item, Journal};
use crate::tree::{TreeError, TreeHandle};

/// The service: one tree, its journal.
#[derive(Debug, Clone)]
pub(crate) struct InspectGrpc {
    tree: TreeHandle,
    journal: Arc<Journal>,
    /// Turns true when the server stops: event watches end then, rather than hold the shutdown up.
    closing: watch::Receiver<bool>,
}

impl InspectGrpc {
    pub(crate) fn new(tree: TreeHandle, journal: Arc<Journal>, closing: watch::Receiver<bool>) -> Self {
        InspectGrpc {
            tree,
            journal,
            closing,
        }
    }

    /// The child info of the node at `path` from its supervisor, and the supervisor's path; `None` for the root.
    /// `ids` are the ids below the root down to the node (taken from a snapshot, not by splitting `path` at
    /// `/`: an id may hold `/` itself, as a connection's `grpc://host:port` does).
    async fn child_info(&self, path: &str, ids: &[String]) -> Result<Option<(ChildInfo, String)>, Status> {
        let Some((last, parents)) = ids.split_last() else {
            return Ok(None);
        };
        let mut supervisor = self.tree.root().clone();
        let mut supervisor_path = self.tree.name().to_string();
        for id in parents {
            let child = find_child(&supervisor, id, path).await?;
            let cell = child.cell.ok_or_else(|| {
                Status::unavailable(format!(
                    "{supervisor_path}/{id} is not running: its children are unknown"
                ))
            })?;
            supervisor = SupervisorHandle::from_cell(cell).map_err(|e| Status::not_found(e.to_string()))?;
            supervisor_path = format!("{supervisor_path}/{id}");
        }
        Ok(Some((
            find_child(&supervisor, last, path).await?,
            supervisor_path,
        )))
    }
}

/// The nodes from `root` down to the node whose path is `path`, both included.
fn chain_to<'a>(root: &'a TreeSnapshot, path: &str) -> Option<Vec<&'a TreeSnapshot>> {
    if root.path == path {
        return Some(vec![root]);
    }
    root.children.iter().find_map(|child| {
        let mut chain = chain_to(child, path)?;
        chain.insert(0, root);
        Some(chain)
    })
}

async fn find_child(supervisor: &SupervisorHandle, id: &str, path: &str) -> Result<ChildInfo, Status> {
    supervisor
        .which_children()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?
        .into_iter()
        .find(|c| c.id == id)
        .ok_or_else(|| Status::not_found(format!("no node at path {path:?}")))
}

fn unavailable(err: TreeError) -> Status {
    Status::unavailable(format!("the tree does not answer: {err}"))
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEventsResponse, Status>> + Send>>;

fn message(kind: pb::watch_events_response::Kind) -> Result<pb::WatchEventsResponse, Status> {
    Ok(pb::WatchEventsResponse { kind: Some(kind) })
}

fn item_message(item: &Item) -> Result<pb::WatchEventsResponse, Status> {
    use pb::watch_events_response::Kind;
    match item {
        Item::Event(recorded) => message(Kind::Event(convert::event(recorded))),
        Item::Missed { missed, .. } => message(Kind::Lagged(pb::Lagged {
            missed: *missed,
            reason: "the server's journal fell behind the tree's events".into(),
        })),
    }
}

#[tonic::async_trait]
impl InspectService for InspectGrpc {
    async fn get_tree(
        &self,
        _request: Request<pb::GetTreeRequest>,
    ) -> Result<Response<pb::GetTreeResponse>, Status> {
        let snapshot = self.tree.snapshot().await.map_err(unavailable)?;
        Ok(Response::new(pb::GetTreeResponse {
            tree_name: self.tree.name().to_string(),
            root: Some(convert::node(&snapshot)),
            captured_at_unix_ms: convert::unix_ms(SystemTime::now()),
        }))
    }

    async fn get_node(
        &self,
        request: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::GetNodeResponse>, Status> {
        let path = request.into_inner().path;
        if path.is_empty() {
            return Err(Status::invalid_argument(
                "path: required (e.g. the tree's name for the root)",
            ));
        }
        let snapshot = self.tree.snapshot().await.map_err(unavailable)?;
        // As `tree` shows it, or without the tree's name.
        let chain = chain_to(&snapshot, &path)
            .or_else(|| chain_to(&snapshot, &format!("{}/{path}", snapshot.path)))
            .ok_or_else(|| Status::not_found(format!("no node at path {path:?}")))?;
        let ids: Vec<String> = chain.iter().skip(1).map(|n| n.id.clone()).collect();
        let found_node = chain.last().copied().unwrap_or(&snapshot);
        let path = found_node.path.clone();
        let node = convert::node(found_node);
        let found = self.child_info(&path, &ids).await?;
        let (history, incomplete) = self.journal.history(&path);
        Ok(Response::new(pb::GetNodeResponse {
            node: Some(node),
            spec: found.as_ref().map(|(info, _)| convert::spec(info)),
            supervisor_path: found.map(|(_, path)| path).unwrap_or_default(),
            history: history.records.iter().map(convert::lifecycle).collect(),
            history_dropped: history.dropped,
            history_since_unix_ms: convert::unix_ms(self.journal.since()),
            history_incomplete: incomplete,
        }))
    }

    async fn list_registry(
        &self,
        request: Request<pb::ListRegistryRequest>,
    ) -> Result<Response<pb::ListRegistryResponse>, Status> {
        let request = request.into_inner();
        let channels: HashMap<String, _> = self
            .tree
            .tunnel_registry()
            .select_prefix(&request.prefix)
            .into_iter()
            .filter_map(|e| match e.value {
                TunnelEntry::Channel(info) => Some((e.key, info)),
                TunnelEntry::Worker(_) => None,
            })
            .collect();
        let mut rows = self.tree.registry_entries(&request.prefix);
        rows.retain(|row| request.registry.is_empty() || row.registry == request.registry);
        rows.sort_by(|a, b| (&a.registry, &a.key).cmp(&(&b.registry, &b.key)));
        let entries = rows
            .iter()
            .map(|row| {
                let channel = (row.registry == self.tree.tunnel_registry().name())
                    .then(|| channels.get(&row.key))
                    .flatten();
                convert::registry_entry(row, channel)
            })
            .collect();
        Ok(Response::new(pb::ListRegistryResponse { entries }))
    }

    type WatchEventsStream = WatchStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        use pb::watch_events_response::Kind;
        let request = request.into_inner();
        let subscription = self.journal.subscribe(&request.stream_id, request.after_sequence);
        let mut first = vec![message(Kind::Subscribed(pb::Subscribed {
            stream_id: subscription.stream_id,
            next_sequence: subscription.next_sequence,
            oldest_sequence: subscription.oldest_sequence,
        }))];
        if let Some((missed, reason)) = subscription.gap {
            first.push(message(Kind::Lagged(pb::Lagged { missed, reason })));
        }
        first.extend(subscription.replay.iter().map(item_message));
        let state = (subscription.live, self.closing.clone(), false);
        let live = futures::stream::unfold(state, |(mut live, mut closing, ended)| async move {
            if ended {
                return None;
            }
            let received = tokio::select! {
                received = live.recv() => Some(received),
                _ = closing.wait_for(|closing| *closing) => None,
            };
            let next = match received {
                Some(Ok(item)) => item_message(&item),
                Some(Err(broadcast::error::RecvError::Lagged(missed))) => message(Kind::Lagged(pb::Lagged {
                    missed,
                    reason: "this watcher fell behind; re-read the tree".into(),
                })),
                // The journal is gone: the tree stopped.
                Some(Err(broadcast::error::RecvError::Closed)) => return None,
                None => {
                    let stopping = Status::unavailable("the introspection server is stopping");
                    return Some((Err(stopping), (live, closing, true)));
                }
            };
            Some((next, (live, closing, false)))
        });
        let stream: WatchStream = Box::pin(futures::stream::iter(first).chain(live));
        Ok(Response::new(stream))
    }
}
