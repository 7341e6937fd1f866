//! A test worker that reports its life to the test through a channel, and helpers to wait on those reports.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arbor_actors::supervisor::{ChildSpec, TypedChildSpec};
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::mpsc;

/// What a worker tells the test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Life {
    Started(String, ActorId),
    /// `post_stop` ran: a graceful stop (not a kill, not a panic).
    Stopped(String, ActorId),
}

pub type LifeLog = mpsc::UnboundedReceiver<Life>;

pub enum WorkerMsg {
    Panic,
    Stop(Option<String>),
    Ping(RpcReplyPort<ActorId>),
    /// Busy for this long without yielding to the mailbox (a child that ignores stop requests).
    Hang(Duration),
    /// Unlinks itself from its supervisor.
    Unlink,
}

pub struct Worker;

#[derive(Clone)]
pub struct WorkerArgs {
    pub name: String,
    pub log: mpsc::UnboundedSender<Life>,
    /// Fail this many starts (`u32::MAX`: every start).
    pub fail_starts: Arc<AtomicU32>,
    /// `post_stop` takes this long.
    pub stop_delay: Duration,
}

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = WorkerArgs;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<WorkerMsg>,
        args: WorkerArgs,
    ) -> Result<WorkerArgs, ActorProcessingErr> {
        let refused = args
            .fail_starts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                0 => None,
                u32::MAX => Some(u32::MAX),
                n => Some(n - 1),
            })
            .is_ok();
        if refused {
            return Err(format!("{} refuses to start", args.name).into());
        }
        let _ = args.log.send(Life::Started(args.name.clone(), myself.get_id()));
        Ok(args)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<WorkerMsg>,
        args: &mut WorkerArgs,
    ) -> Result<(), ActorProcessingErr> {
        if !args.stop_delay.is_zero() {
            tokio::time::sleep(args.stop_delay).await;
        }
        let _ = args.log.send(Life::Stopped(args.name.clone(), myself.get_id()));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        args: &mut WorkerArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Panic => panic!("{} was told to panic", args.name),
            WorkerMsg::Stop(reason) => myself.stop(reason),
            WorkerMsg::Ping(reply) => {
                let _ = reply.send(myself.get_id());
            }
            WorkerMsg::Hang(d) => tokio::time::sleep(d).await,
            WorkerMsg::Unlink => {
                if let Some(sup) = myself.get_cell().try_get_supervisor() {
                    myself.get_cell().unlink(sup);
                }
            }
        }
        Ok(())
    }
}

/// Makes workers that all log into one channel.
pub struct Workers {
    pub tx: mpsc::UnboundedSender<Life>,
    pub rx: LifeLog,
}

impl Workers {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Workers { tx, rx }
    }

    pub fn args(&self, name: &str) -> WorkerArgs {
        Workers::args_with(&self.tx, name)
    }

    /// Arguments for a worker that logs into `log`.
    pub fn args_with(log: &mpsc::UnboundedSender<Life>, name: &str) -> WorkerArgs {
        WorkerArgs {
            name: name.into(),
            log: log.clone(),
            fail_starts: Arc::new(AtomicU32::new(0)),
            stop_delay: Duration::ZERO,
        }
    }

    pub fn spec(&self, name: &str) -> ChildSpec {
        spec_with(self.args(name))
    }

    /// The next life event, or a panic after 10 s.
    pub async fn next(&mut self) -> Life {
        tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
            .await
            .expect("timed out waiting for a life event")
            .expect("log closed")
    }

    /// The next `n` events.
    pub async fn take(&mut self, n: usize) -> Vec<Life> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }

    /// Waits until `name` has started, skipping other events; returns its actor id.
    pub async fn started(&mut self, name: &str) -> ActorId {
        loop {
            if let Life::Started(n, id) = self.next().await {
                if n == name {
                    return id;
                }
            }
        }
    }

    /// Whether no event is pending right now.
    pub fn quiet(&mut self) -> bool {
        self.rx.try_recv().is_err()
    }
}

pub fn spec_with(args: WorkerArgs) -> ChildSpec {
    typed_spec(args).into()
}

/// A spec that knows its actor's message type, so `start_child` gives a `ChildRef<WorkerMsg>`.
pub fn typed_spec(args: WorkerArgs) -> TypedChildSpec<WorkerMsg> {
    let name = args.name.clone();
    ChildSpec::actor(name, move || (Worker, args.clone()))
}

pub fn started(name: &str, id: ActorId) -> Life {
    Life::Started(name.into(), id)
}

pub fn names(events: &[Life]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            Life::Started(n, _) => format!("+{n}"),
            Life::Stopped(n, _) => format!("-{n}"),
        })
        .collect()
}

pub fn worker(cell: &ActorCell) -> ActorRef<WorkerMsg> {
    cell.clone().into()
}

/// A parent that forwards every supervision event it gets, so tests can see what a supervisor reports upward.
pub struct Probe;

#[derive(Debug)]
pub enum ProbeEvent {
    Failed(ActorId, String),
    Terminated(ActorId, Option<String>),
}

impl Actor for Probe {
    type Msg = ();
    type State = mpsc::UnboundedSender<ProbeEvent>;
    type Arguments = mpsc::UnboundedSender<ProbeEvent>;

    async fn pre_start(
        &self,
        _: ActorRef<()>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<()>,
        event: SupervisionEvent,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                tx.send(ProbeEvent::Failed(cell.get_id(), err.to_string()))
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                tx.send(ProbeEvent::Terminated(cell.get_id(), reason))
            }
            _ => Ok(()),
        };
        Ok(())
    }
}

pub async fn probe() -> (ActorRef<()>, mpsc::UnboundedReceiver<ProbeEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (probe, _) = Actor::spawn(None, Probe, tx).await.expect("probe starts");
    (probe, rx)
}

pub async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("timed out")
        .expect("closed")
}

/// The running actor of the child `id` of `sup`.
pub async fn cell_of(sup: &arbor_actors::supervisor::SupervisorHandle, id: &str) -> ActorCell {
    sup.which_children()
        .await
        .expect("supervisor answers")
        .into_iter()
        .find(|c| c.id == id)
        .and_then(|c| c.cell)
        .unwrap_or_else(|| panic!("{id} is not running"))
}
