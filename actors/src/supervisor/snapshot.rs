//! A serializable picture of a live supervision tree.
//!
//! Built outside the actors: the handle asks each supervisor for its children and descends into the child
//! supervisors concurrently, so no supervisor waits on another while it is asked.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use futures::future::{join_all, BoxFuture};
use futures::FutureExt;
use ractor::{ActorCell, ActorRef};
use serde::{Deserialize, Serialize};

use super::actor::{Description, SupervisorMsg};
use super::children::{ChildInfo, ChildStatus};
use super::error::SupervisorError;
use super::spec::{ChildKind, Restart};

/// One node of a supervision tree and everything below it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeSnapshot {
    /// The id its supervisor knows it by (the actor's name, or its actor id, for the root). Unique among its
    /// siblings only.
    pub id: String,
    /// The ids from the root down to this node, joined by `/`: unique in the tree.
    pub path: String,
    /// The actor's registered name, if it has one.
    pub name: Option<String>,
    /// Worker, supervisor or dynamic supervisor.
    pub kind: ChildKind,
    /// The running actor's id, if it runs.
    pub actor_id: Option<String>,
    /// Running, restarting or terminated.
    pub status: ChildStatus,
    /// Its restart type (`None` for the root).
    pub restart: Option<Restart>,
    /// How often its supervisor restarted it.
    pub restart_count: u32,
    /// How long the running incarnation has been up.
    #[serde(with = "humantime_serde")]
    pub uptime: Option<Duration>,
    /// Why its last incarnation exited, if one did (a panic message, `"killed"`, or the cause a child
    /// supervisor gave up with).
    pub last_exit: Option<String>,
    /// Its children, in start order (empty for workers).
    pub children: Vec<TreeSnapshot>,
}

impl TreeSnapshot {
    /// Every node of the tree, depth first, this one first.
    pub fn nodes(&self) -> Vec<&TreeSnapshot> {
        let mut out = vec![self];
        for child in &self.children {
            out.extend(child.nodes());
        }
        out
    }

    /// The first node with this id, depth first.
    pub fn find(&self, id: &str) -> Option<&TreeSnapshot> {
        self.nodes().into_iter().find(|n| n.id == id)
    }

    /// The node at this path (see [`path`](Self::path)).
    pub fn find_path(&self, path: &str) -> Option<&TreeSnapshot> {
        self.nodes().into_iter().find(|n| n.path == path)
    }

    /// The sum of restart counts over the whole tree.
    pub fn total_restarts(&self) -> u64 {
        self.nodes().iter().map(|n| u64::from(n.restart_count)).sum()
    }

    /// The tree as indented text, one node a line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out, "", true, true);
        out
    }

    fn render_into(&self, out: &mut String, prefix: &str, last: bool, root: bool) {
        let (branch, next_prefix) = if root {
            ("", String::new())
        } else if last {
            ("└─ ", format!("{prefix}   "))
        } else {
            ("├─ ", format!("{prefix}│  "))
        };
        let kind = match self.kind {
            ChildKind::Worker => "worker",
            ChildKind::Supervisor => "supervisor",
            ChildKind::DynamicSupervisor => "dynamic",
        };
        let status = match self.status {
            ChildStatus::Running => "running",
            ChildStatus::Restarting => "restarting",
            ChildStatus::Terminated => "terminated",
        };
        let actor = self.actor_id.as_deref().unwrap_or("-");
        let uptime = self
            .uptime
            .map(|u| humantime::format_duration(Duration::from_millis(u.as_millis() as u64)).to_string())
            .unwrap_or_else(|| "-".into());
        let _ = write!(
            out,
            "{prefix}{branch}{} [{kind}] {status} actor={actor} restarts={} up={uptime}",
            self.id, self.restart_count
        );
        match &self.last_exit {
            Some(exit) if self.restart_count > 0 || self.status != ChildStatus::Running => {
                let _ = writeln!(out, " last_exit={exit:?}");
            }
            _ => out.push('\n'),
        }
        for (i, child) in self.children.iter().enumerate() {
            child.render_into(out, &next_prefix, i + 1 == self.children.len(), false);
        }
    }
}

/// The snapshot of the supervisor running as `cell`, as a root.
pub(crate) async fn of_supervisor(cell: ActorCell) -> Result<TreeSnapshot, SupervisorError> {
    let actor: ActorRef<SupervisorMsg> = cell.clone().into();
    let description: Description =
        ractor::call!(actor, SupervisorMsg::Describe).map_err(|_| SupervisorError::NotRunning {
            which: cell.get_name().unwrap_or_else(|| cell.get_id().to_string()),
        })?;
    let id = cell.get_name().unwrap_or_else(|| cell.get_id().to_string());
    Ok(of_description(cell, description, id.clone(), id).await)
}

async fn of_description(cell: ActorCell, description: Description, id: String, path: String) -> TreeSnapshot {
    let children = join_all(
        description
            .children
            .into_iter()
            .map(|info| of_child(info, path.clone())),
    )
    .await;
    TreeSnapshot {
        id,
        path,
        name: cell.get_name(),
        kind: description.kind,
        actor_id: Some(cell.get_id().to_string()),
        status: ChildStatus::Running,
        restart: None,
        restart_count: 0,
        uptime: Some(description.uptime),
        last_exit: None,
        children,
    }
}

fn of_child(info: ChildInfo, parent: String) -> BoxFuture<'static, TreeSnapshot> {
    async move {
        let path = format!("{parent}/{}", info.id);
        let uptime = info
            .started_at
            .filter(|_| info.status == ChildStatus::Running)
            .and_then(|at| SystemTime::now().duration_since(at).ok());
        let mut node = TreeSnapshot {
            id: info.id.clone(),
            path: path.clone(),
            name: info.cell.as_ref().and_then(ActorCell::get_name),
            kind: info.kind,
            actor_id: info.actor_id().map(|a| a.to_string()),
            status: info.status,
            restart: Some(info.restart),
            restart_count: info.restart_count,
            uptime,
            last_exit: info.last_exit.clone(),
            children: Vec::new(),
        };
        let is_supervisor = matches!(info.kind, ChildKind::Supervisor | ChildKind::DynamicSupervisor);
        if let (true, Some(cell)) = (is_supervisor, info.cell) {
            // A child supervisor that stopped between the two calls is shown without children.
            let actor: ActorRef<SupervisorMsg> = cell.clone().into();
            if let Ok(description) = ractor::call!(actor, SupervisorMsg::Describe) {
                node.children = of_description(cell, description, info.id, path).await.children;
            }
        }
        node
    }
    .boxed()
}
