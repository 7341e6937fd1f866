//! etcd backend: the v3 election API under a lease (feature `etcd`).
//!
//! Per activator, one *session*: connect, grant a lease of `ttl`, keep it alive, put the node's membership
//! key under it, then `Campaign` (blocks until this candidate leads) while observing the current leader and
//! watching the membership prefix. The fencing token is the create revision of the leader key.
//!
//! Step-down rule: a keep-alive request sent at `t` and acknowledged proves the lease lives until at least
//! `t + ttl` on the server (the server restarts the countdown when it *receives* the request, after `t`).
//! The session ends, and a leader reports `Lost`, when no request sent within the last `ttl / 2` was
//! acknowledged — half a TTL before the server could possibly expire the lease. The same deadline is what
//! [`Candidacy::leadership_valid_until`] reports, so the activator checks it before every leader callback: a
//! process frozen past it runs no callback on resuming before it has stepped down, whichever of its timers
//! fires first. Any session failure leads to a retry with the gRPC backoff schedule ([`BackoffConfig`]);
//! nothing crashes the activator. A lease left behind by a failed session is revoked as soon as etcd answers
//! again (the first thing the next session does), so the next election does not wait for it to expire.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, LeaderKey, PutOptions, ResignOptions, WatchOptions};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tracing::Instrument;

use super::backend::{Backend, BackendError, BackendEvent, BackendOperation, BoxFuture, Campaign, Candidacy};
use super::callbacks::ClusterChange;
use super::etcd_options::EtcdOptions;
use super::handle::ActivatorError;
use crate::backoff::Backoff;

/// Leader election through etcd (one backend per process; it can serve many activators).
#[derive(Debug, Clone)]
pub struct EtcdBackend {
    opts: Arc<EtcdOptions>,
}

impl EtcdBackend {
    /// Validates `opts`; does not connect (activators connect themselves, retrying while etcd is down).
    pub fn new(opts: EtcdOptions) -> Result<Self, ActivatorError> {
        opts.validate()?;
        Ok(Self { opts: Arc::new(opts) })
    }
}

impl Backend for EtcdBackend {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    fn node_id(&self) -> &str {
        &self.opts.node_id
    }

    fn join(&self, campaign: Campaign) -> BoxFuture<'static, Result<Box<dyn Candidacy>, BackendError>> {
        let opts = self.opts.clone();
        Box::pin(async move {
            let (resign_tx, resign_rx) = oneshot::channel();
            let base = format!("{}/{}", opts.prefix, campaign.name);
            let valid_until = ValidUntil::default();
            let session = Session {
                election: format!("{base}/election"),
                members: format!("{base}/nodes/"),
                opts,
                campaign,
                valid_until: valid_until.clone(),
            };
            let task = tokio::spawn(session.run(resign_rx).in_current_span());
            Ok(Box::new(EtcdCandidacy {
                resign: Some(resign_tx),
                task: Some(task),
                valid_until,
            }) as Box<dyn Candidacy>)
        })
    }
}

/// The renew deadline of the current leadership, shared by the session (which moves it on every
/// acknowledged keep-alive) and the activator (which checks it before leader callbacks).
#[derive(Clone, Default)]
struct ValidUntil(Arc<Mutex<Option<Instant>>>);

impl ValidUntil {
    fn set(&self, until: Option<Instant>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = until;
    }

    fn get(&self) -> Option<Instant> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct EtcdCandidacy {
    resign: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    valid_until: ValidUntil,
}

/// Aborts the session task when dropped, also when a resignation is cut short.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Candidacy for EtcdCandidacy {
    fn leadership_valid_until(&self) -> Option<Instant> {
        // Not leading: `now` (any leader callback would be refused; the actor asks only while it leads).
        Some(self.valid_until.get().unwrap_or_else(Instant::now))
    }

    fn resign(&mut self) -> BoxFuture<'static, ()> {
        let tx = self.resign.take();
        let task = self.task.take();
        Box::pin(async move {
            let Some(task) = task else { return };
            let _guard = AbortOnDrop(task.abort_handle());
            if let Some(tx) = tx {
                let _ = tx.send(());
            }
            // The task resigns and revokes, then ends. Bounded: a frozen etcd must not keep a stopping
            // activator (and its supervisor) waiting forever.
            if timeout(Duration::from_secs(5), task).await.is_err() {
                tracing::warn!("etcd resign did not finish in 5s; abandoning the session");
            }
        })
    }
}

impl Drop for EtcdCandidacy {
    fn drop(&mut self) {
        // A crashed activator must stop campaigning and renewing: the lease then expires after its TTL.
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// At most this many leases of failed sessions are remembered for revocation (one per failed session that got
/// a lease; they are revoked as soon as the next session reaches etcd, so the list stays short).
const MAX_STALE: usize = 16;

/// Leases that failed sessions left on the server. A lease outlives an etcd outage (a restarted etcd restores
/// it with a fresh TTL), and while it lives its leader key holds the election: each session revokes them as
/// soon as etcd answers.
#[derive(Clone, Default)]
struct StaleLeases(Arc<Mutex<Vec<i64>>>);

impl StaleLeases {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<i64>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, lease: i64) {
        let mut leases = self.lock();
        leases.push(lease);
        if leases.len() > MAX_STALE {
            leases.remove(0);
        }
    }

    /// Revoke every listed lease, retrying until each is revoked or found gone; runs for one session.
    async fn revoke(self, mut client: etcd_client::LeaseClient, request_timeout: Duration) {
        let mut pause = Duration::from_millis(50);
        loop {
            let leases = self.lock().clone();
            if leases.is_empty() {
                return;
            }
            for lease in leases {
                let gone = match timeout(request_timeout, client.revoke(lease)).await {
                    Ok(Ok(_)) => {
                        tracing::info!(lease = %format_args!("{lease:x}"), "revoked a lease this node held");
                        true
                    }
                    // Already gone (expired, or revoked before the failure was seen): nothing left to free.
                    Ok(Err(e)) if e.to_string().contains("lease not found") => true,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "stale lease not revoked yet");
                        false
                    }
                    Err(_) => false,
                };
                if gone {
                    self.lock().retain(|l| *l != lease);
                }
            }
            sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}

struct Session {
    opts: Arc<EtcdOptions>,
    campaign: Campaign,
    election: String,
    members: String,
    valid_until: ValidUntil,
}

/// What the session holds on the server, for cleanup after a failure.
#[derive(Default)]
struct Held {
    lease: Option<i64>,
    leading: bool,
}

impl Session {
    async fn run(self, mut resign_rx: oneshot::Receiver<()>) {
        let mut backoff = Backoff::new(self.opts.backoff.clone());
        let stale = StaleLeases::default();
        let mut attempt: u32 = 0;
        loop {
            let plan = backoff.begin_attempt(Instant::now());
            let mut held = Held::default();
            let result = self.session(&mut held, &stale, &mut resign_rx).await;
            self.valid_until.set(None);
            let Err(error) = result else { return };
            if held.leading {
                // First thing: stop acting. Everything else (cleanup, backoff) comes after.
                tracing::warn!(%error, "etcd session lost while leading: stepping down");
                self.campaign.events.send(BackendEvent::Lost {
                    reason: error.clone(),
                });
            }
            // Revoked by the next session as soon as etcd answers, so the election is free at once rather than
            // after the TTL, which a restarted etcd even renews for every lease it restores.
            if let Some(lease) = held.lease {
                stale.add(lease);
            }
            // A session that got a lease counted as a success: the schedule starts over.
            let delay = if held.lease.is_some() {
                backoff.reset();
                attempt = 1;
                self.opts.backoff.initial
            } else {
                attempt = attempt.saturating_add(1);
                plan.next_start.saturating_duration_since(Instant::now())
            };
            tracing::warn!(attempt, ?delay, %error, "etcd campaign failed, retrying");
            if !self.campaign.events.send(BackendEvent::Retrying {
                attempt,
                delay,
                error,
            }) {
                return;
            }
            tokio::select! {
                _ = sleep(delay) => {}
                _ = &mut resign_rx => {
                    // Stopping between sessions: a failed session's lease may still hold the election (a
                    // restarted etcd renews every lease it restores), and no later session will revoke it.
                    self.release_stale(&stale).await;
                    return;
                }
            }
        }
    }

    /// Revokes the leases failed sessions left, for a graceful stop that happens between sessions. Retries
    /// until each is gone; the caller bounds it (the candidacy's resign budget).
    async fn release_stale(&self, stale: &StaleLeases) {
        if stale.lock().is_empty() {
            return;
        }
        let o = &self.opts;
        let mut copts = ConnectOptions::new().with_connect_timeout(o.connect_timeout);
        if let Some((user, password)) = &o.credentials {
            copts = copts.with_user(user.clone(), password.clone());
        }
        loop {
            match self
                .unary(
                    BackendOperation::Connect,
                    Client::connect(o.endpoints.clone(), Some(copts.clone())),
                )
                .await
            {
                Ok(client) => {
                    return stale
                        .clone()
                        .revoke(client.lease_client(), o.request_timeout)
                        .await
                }
                Err(e) => {
                    tracing::debug!(error = %e, "stopping: etcd not reached yet to revoke stale leases");
                    sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// One unary request within the request timeout, its failure typed with `operation`.
    async fn unary<T, E: fmt::Display>(
        &self,
        operation: BackendOperation,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, BackendError> {
        match timeout(self.opts.request_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(BackendError::Request {
                operation,
                message: e.to_string(),
            }),
            Err(_) => Err(BackendError::Timeout {
                operation,
                timeout: self.opts.request_timeout,
            }),
        }
    }

    async fn session(
        &self,
        held: &mut Held,
        stale: &StaleLeases,
        resign_rx: &mut oneshot::Receiver<()>,
    ) -> Result<(), BackendError> {
        let o = &self.opts;
        let mut copts = ConnectOptions::new().with_connect_timeout(o.connect_timeout);
        if let Some((user, password)) = &o.credentials {
            copts = copts.with_user(user.clone(), password.clone());
        }
        let client = self
            .unary(
                BackendOperation::Connect,
                Client::connect(o.endpoints.clone(), Some(copts)),
            )
            .await?;
        // Beside the campaign, which a stale lease's leader key may be holding up: the campaign goes on the moment
        // the key is gone. A restarting etcd may refuse the first requests, so this retries.
        let _revoker = AbortOnDrop(
            tokio::spawn(
                stale
                    .clone()
                    .revoke(client.lease_client(), o.request_timeout)
                    .in_current_span(),
            )
            .abort_handle(),
        );

        let mut lease_client = client.lease_client();
        // The lease cannot have started on the server before this instant.
        let granted_at = Instant::now();
        let asked = i64::try_from(o.ttl.as_secs()).unwrap_or(i64::MAX); // validation bounds it far below
        let grant = self
            .unary(BackendOperation::LeaseGrant, lease_client.grant(asked, None))
            .await?;
        let lease = grant.id();
        let granted = u64::try_from(grant.ttl()).unwrap_or(0);
        if granted == 0 {
            return Err(BackendError::Protocol {
                operation: BackendOperation::LeaseGrant,
                reason: format!("granted a TTL of {}s", grant.ttl()),
            });
        }
        held.lease = Some(lease);
        if granted != o.ttl.as_secs() {
            tracing::warn!(
                asked = o.ttl.as_secs(),
                granted,
                "etcd granted another lease TTL; stepping down on the shorter of both"
            );
        }
        let ttl = o.ttl.min(Duration::from_secs(granted));
        let renew_deadline = ttl / 2;
        let renew_every = ttl / 4;
        let (mut keeper, mut ka_stream) = self
            .unary(BackendOperation::KeepAlive, lease_client.keep_alive(lease))
            .await?;
        let mut last_ok = granted_at;
        let mut in_flight: VecDeque<Instant> = VecDeque::new();

        let member_key = format!("{}{}", self.members, o.node_id);
        let mut kv = client.kv_client();
        self.unary(
            BackendOperation::Membership,
            kv.put(
                member_key.clone(),
                self.campaign.identity.clone(),
                Some(PutOptions::new().with_lease(lease)),
            ),
        )
        .await?;
        let mut watch_client = client.watch_client();
        let mut members = self
            .unary(
                BackendOperation::MembershipWatch,
                watch_client.watch(self.members.clone(), Some(WatchOptions::new().with_prefix())),
            )
            .await?;
        // etcd sends Observe's response headers only with the first leader, so the call itself blocks while
        // there is none: run it beside the loop and hear from it through a channel.
        let (obs_tx, mut observed) = mpsc::unbounded_channel::<Result<(Vec<u8>, Vec<u8>), BackendError>>();
        let mut election = client.election_client();
        let name = self.election.clone();
        let _observer = AbortOnDrop(
            tokio::spawn(async move {
                let failed = |e: etcd_client::Error| BackendError::Request {
                    operation: BackendOperation::Observe,
                    message: e.to_string(),
                };
                let mut stream = match election.observe(name).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = obs_tx.send(Err(failed(e)));
                        return;
                    }
                };
                loop {
                    let msg = match stream.message().await {
                        Ok(Some(resp)) => match resp.kv() {
                            Some(kv) => Ok((kv.key().to_vec(), kv.value().to_vec())),
                            None => continue,
                        },
                        Ok(None) => Err(BackendError::StreamEnded {
                            operation: BackendOperation::Observe,
                        }),
                        Err(e) => Err(failed(e)),
                    };
                    let end = msg.is_err();
                    if obs_tx.send(msg).is_err() || end {
                        return;
                    }
                }
            })
            .abort_handle(),
        );
        let mut campaigner = client.election_client();
        let name = self.election.clone();
        let identity = self.campaign.identity.clone();
        let mut campaign = Box::pin(async move { campaigner.campaign(name, identity, lease).await });
        let mut leader_key: Option<LeaderKey> = None;
        let mut tick = tokio::time::interval(renew_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::debug!(lease, ?ttl, "etcd session up, campaigning");

        loop {
            tokio::select! {
                biased;
                _ = &mut *resign_rx => {
                    self.valid_until.set(None);
                    self.resign(&client, leader_key.take()).await;
                    held.leading = false;
                    held.lease = None;
                    // This session's lease and any a failed session left: each one's keys (leader key,
                    // membership) hold on for its TTL unless revoked. Retried until gone: one request that
                    // times out on a loaded etcd must not make the followers wait the whole TTL.
                    stale.add(lease);
                    stale.clone().revoke(client.lease_client(), o.request_timeout).await;
                    return Ok(());
                }
                _ = sleep_until(last_ok + renew_deadline) => {
                    return Err(BackendError::NotRenewed { lease, within: renew_deadline });
                }
                msg = ka_stream.message() => match msg {
                    Ok(Some(resp)) if resp.ttl() > 0 => {
                        if let Some(sent) = in_flight.pop_front() {
                            last_ok = last_ok.max(sent);
                            if leader_key.is_some() {
                                self.valid_until.set(Some(last_ok + renew_deadline));
                            }
                        }
                    }
                    Ok(Some(_)) => return Err(BackendError::LeaseExpired { lease }),
                    Ok(None) => return Err(BackendError::StreamEnded { operation: BackendOperation::KeepAlive }),
                    Err(e) => {
                        return Err(BackendError::Request { operation: BackendOperation::KeepAlive, message: e.to_string() })
                    }
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    keeper.keep_alive().await.map_err(|e| BackendError::Request {
                        operation: BackendOperation::KeepAlive,
                        message: e.to_string(),
                    })?;
                    in_flight.push_back(now);
                }
                res = &mut campaign, if leader_key.is_none() => {
                    let resp = res.map_err(|e| BackendError::Request {
                        operation: BackendOperation::Campaign,
                        message: e.to_string(),
                    })?;
                    let protocol = |reason: String| BackendError::Protocol { operation: BackendOperation::Campaign, reason };
                    let key = resp.leader().cloned().ok_or_else(|| protocol("answered without a leader key".into()))?;
                    let token = u64::try_from(key.rev()).map_err(|_| protocol(format!("negative revision {}", key.rev())))?;
                    // Elected on a lease we may already be unable to renew: do not act on it.
                    if Instant::now() >= last_ok + renew_deadline {
                        return Err(BackendError::NotRenewed { lease, within: renew_deadline });
                    }
                    leader_key = Some(key);
                    held.leading = true;
                    // Set before the event is sent: the activator checks it when it handles `Elected`.
                    self.valid_until.set(Some(last_ok + renew_deadline));
                    tracing::info!(fencing_token = token, "won the etcd election");
                    self.campaign.events.send(BackendEvent::Elected { fencing_token: token });
                }
                obs = observed.recv() => match obs {
                    Some(Ok((key, value))) => match &leader_key {
                        Some(ours) if key != ours.key() => {
                            return Err(BackendError::OtherLeader {
                                leader: String::from_utf8_lossy(&value).into_owned(),
                            });
                        }
                        Some(_) => {}
                        // Our own key, observed before `Campaign` has answered: not a follower.
                        None if value == self.campaign.identity.as_bytes() => {}
                        None => {
                            self.campaign.events.send(BackendEvent::Following {
                                leader: Some(String::from_utf8_lossy(&value).into_owned()),
                            });
                        }
                    },
                    Some(Err(e)) => return Err(e),
                    None => return Err(BackendError::StreamEnded { operation: BackendOperation::Observe }),
                },
                w = members.message() => match w {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            return Err(BackendError::Protocol {
                                operation: BackendOperation::MembershipWatch,
                                reason: format!("cancelled: {}", resp.cancel_reason()),
                            });
                        }
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            let node = String::from_utf8_lossy(kv.key())
                                .strip_prefix(&self.members)
                                .map(str::to_string);
                            let Some(node) = node else { continue };
                            let change = match ev.event_type() {
                                // A put that created the key (not a later overwrite) is a node joining.
                                EventType::Put if kv.version() == 1 => ClusterChange::NodeUp(node),
                                EventType::Put => continue,
                                EventType::Delete => ClusterChange::NodeDown(node),
                            };
                            self.campaign.events.send(BackendEvent::Cluster(change));
                        }
                    }
                    Ok(None) => return Err(BackendError::StreamEnded { operation: BackendOperation::MembershipWatch }),
                    Err(e) => {
                        return Err(BackendError::Request { operation: BackendOperation::MembershipWatch, message: e.to_string() })
                    }
                },
            }
        }
    }

    /// Graceful end: resign (if leading) so a follower is elected at once. The caller then revokes the
    /// lease, which also removes the membership key (a `NodeDown` for the others).
    async fn resign(&self, client: &Client, leader_key: Option<LeaderKey>) {
        if let Some(key) = leader_key {
            let mut election = client.election_client();
            match self
                .unary(
                    BackendOperation::Resign,
                    election.resign(Some(ResignOptions::new().with_leader(key))),
                )
                .await
            {
                Ok(_) => tracing::info!("resigned etcd leadership"),
                Err(e) => tracing::warn!(error = %e, "resign failed; revoking the lease instead"),
            }
        }
    }
}
