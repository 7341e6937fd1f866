//! etcd backend: the v3 election API under a lease (feature `etcd`).
//!
//! Per activator, one *session*: connect, grant a lease of `ttl`, keep it alive, put the node's membership
//! key under it, then `Campaign` (blocks until this candidate leads) while observing the current leader and
//! watching the membership prefix. The fencing token is the create revision of the leader key.
//!
//! Step-down rule: a keep-alive request sent at `t` and acknowledged proves the lease lives until at least
//! `t + ttl` on the server (the server restarts the countdown when it *receives* the request, after `t`).
//! The session ends, and a leader reports `Lost`, when no request sent within the last `ttl / 2` was
//! acknowledged — half a TTL before the server could possibly expire the lease. Any session failure leads
//! to a retry with exponential backoff; nothing crashes the activator.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, LeaderKey, PutOptions, ResignOptions, WatchOptions};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tracing::Instrument;

use super::backend::{Backend, BackendError, BackendEvent, BoxFuture, Campaign, Candidacy};
use super::callbacks::ClusterChange;
use super::handle::ActivatorError;

/// Smallest TTL accepted: etcd rounds shorter leases up to its own minimum (about 1.5 s with default
/// election timeouts), which would silently break the step-down arithmetic.
const MIN_TTL: Duration = Duration::from_secs(2);

/// Configuration of [`EtcdBackend`].
#[derive(Clone)]
pub struct EtcdOptions {
    endpoints: Vec<String>,
    node_id: String,
    ttl: Duration,
    prefix: String,
    connect_timeout: Duration,
    request_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    credentials: Option<(String, String)>,
}

impl fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("node_id", &self.node_id)
            .field("ttl", &humantime::format_duration(self.ttl).to_string())
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("backoff", &(self.backoff_min, self.backoff_max))
            // Never the password, not even its length.
            .field(
                "credentials",
                &self.credentials.as_ref().map(|(u, _)| format!("{u}:<redacted>")),
            )
            .finish()
    }
}

impl EtcdOptions {
    /// Options for `endpoints` (e.g. `http://127.0.0.1:2379`); `node_id` names this process in the
    /// cluster and must be unique among the processes running activators of a name. Defaults: TTL 10 s,
    /// prefix `arbor/activator`, connect and request timeouts 2 s, backoff 100 ms .. 5 s.
    pub fn new<E: Into<String>>(endpoints: impl IntoIterator<Item = E>, node_id: impl Into<String>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            node_id: node_id.into(),
            ttl: Duration::from_secs(10),
            prefix: "arbor/activator".to_string(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            credentials: None,
        }
    }

    /// Lease TTL: whole seconds, at least 2 s. A leader that cannot renew steps down after half of it.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Lease TTL as a humantime string (`"10s"`, `"1m"`).
    pub fn ttl_str(self, ttl: &str) -> Result<Self, ActivatorError> {
        let parsed = humantime::parse_duration(ttl).map_err(|e| ActivatorError::InvalidConfig {
            field: "ttl",
            value: ttl.to_string(),
            reason: leak_reason(e),
        })?;
        Ok(self.ttl(parsed))
    }

    /// Key prefix under which elections and membership keys live.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Timeout of one connection attempt and of each unary request (lease grant, put, resign, revoke).
    pub fn timeouts(mut self, connect: Duration, request: Duration) -> Self {
        self.connect_timeout = connect;
        self.request_timeout = request;
        self
    }

    /// Exponential backoff between session attempts while etcd is unreachable.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    /// Authenticates as `user`. The password is never printed by `Debug` or logged.
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((user.into(), password.into()));
        self
    }

    fn validate(&self) -> Result<(), ActivatorError> {
        let bad = |field, value: String, reason| Err(ActivatorError::InvalidConfig { field, value, reason });
        if self.endpoints.is_empty() {
            return bad("endpoints", "[]".into(), "at least one endpoint is required");
        }
        if let Some(e) = self.endpoints.iter().find(|e| e.trim().is_empty()) {
            return bad("endpoints", format!("{e:?}"), "empty endpoint");
        }
        if self.node_id.is_empty() || self.node_id.contains('/') {
            return bad(
                "node_id",
                format!("{:?}", self.node_id),
                "must be non-empty and contain no '/'",
            );
        }
        if self.ttl < MIN_TTL {
            return bad(
                "ttl",
                humantime::format_duration(self.ttl).to_string(),
                "must be at least 2s",
            );
        }
        if self.ttl.subsec_nanos() != 0 {
            return bad(
                "ttl",
                humantime::format_duration(self.ttl).to_string(),
                "must be whole seconds",
            );
        }
        if self.prefix.is_empty() {
            return bad("prefix", "\"\"".into(), "must not be empty");
        }
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return bad(
                "timeouts",
                format!("{:?}/{:?}", self.connect_timeout, self.request_timeout),
                "must be > 0",
            );
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return bad(
                "backoff",
                format!("{:?}..{:?}", self.backoff_min, self.backoff_max),
                "need 0 < min <= max",
            );
        }
        Ok(())
    }
}

/// humantime's error is a value, `InvalidConfig::reason` a static str: map the few kinds.
fn leak_reason(e: humantime::DurationError) -> &'static str {
    match e {
        humantime::DurationError::InvalidCharacter(_) => "invalid character in duration",
        humantime::DurationError::NumberExpected(_) => "number expected in duration",
        humantime::DurationError::UnknownUnit { .. } => "unknown unit in duration",
        humantime::DurationError::NumberOverflow => "duration too large",
        humantime::DurationError::Empty => "empty duration",
    }
}

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
            let session = Session {
                election: format!("{base}/election"),
                members: format!("{base}/nodes/"),
                opts,
                campaign,
            };
            let task = tokio::spawn(session.run(resign_rx).in_current_span());
            Ok(Box::new(EtcdCandidacy {
                resign: Some(resign_tx),
                task: Some(task),
            }) as Box<dyn Candidacy>)
        })
    }
}

struct EtcdCandidacy {
    resign: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Aborts the session task when dropped, also when a resignation is cut short.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Candidacy for EtcdCandidacy {
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

/// Why a session ended.
enum End {
    Resigned,
    Failed(String),
}

struct Session {
    opts: Arc<EtcdOptions>,
    campaign: Campaign,
    election: String,
    members: String,
}

/// What the session holds on the server, for cleanup after a failure.
#[derive(Default)]
struct Held {
    client: Option<Client>,
    lease: Option<i64>,
    leading: bool,
}

impl Session {
    async fn run(self, mut resign_rx: oneshot::Receiver<()>) {
        let mut attempt: u32 = 0;
        loop {
            let mut held = Held::default();
            match self.session(&mut held, &mut resign_rx).await {
                End::Resigned => return,
                End::Failed(error) => {
                    if held.leading {
                        // First thing: stop acting. Everything else (cleanup, backoff) comes after.
                        tracing::warn!(%error, "etcd session lost while leading: stepping down");
                        self.campaign.events.send(BackendEvent::Lost {
                            reason: error.clone(),
                        });
                    }
                    if let (Some(client), Some(lease)) = (held.client.take(), held.lease) {
                        // Free the election as soon as etcd listens again instead of after the TTL.
                        let t = self.opts.ttl;
                        tokio::spawn(async move {
                            let mut lc = client.lease_client();
                            let _ = timeout(t, lc.revoke(lease)).await;
                        });
                    }
                    // A session that got a lease counted as a success: restart the backoff.
                    attempt = if held.lease.is_some() {
                        1
                    } else {
                        attempt.saturating_add(1)
                    };
                    let delay = self.backoff(attempt);
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
                        _ = &mut resign_rx => return,
                    }
                }
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .opts
            .backoff_min
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(self.opts.backoff_max);
        // Jitter (50..100 %) so that nodes restarted together do not retry in lockstep.
        capped.mul_f64(0.5 + rand::random::<f64>() / 2.0)
    }

    async fn unary<T, E: fmt::Display>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, String> {
        match timeout(self.opts.request_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{what}: {e}")),
            Err(_) => Err(format!(
                "{what}: no answer within {:?}",
                self.opts.request_timeout
            )),
        }
    }

    async fn session(&self, held: &mut Held, resign_rx: &mut oneshot::Receiver<()>) -> End {
        match self.session_inner(held, resign_rx).await {
            Ok(()) => End::Resigned,
            Err(e) => End::Failed(e),
        }
    }

    async fn session_inner(
        &self,
        held: &mut Held,
        resign_rx: &mut oneshot::Receiver<()>,
    ) -> Result<(), String> {
        let o = &self.opts;
        let mut copts = ConnectOptions::new().with_connect_timeout(o.connect_timeout);
        if let Some((user, password)) = &o.credentials {
            copts = copts.with_user(user.clone(), password.clone());
        }
        let client = self
            .unary("connect", Client::connect(o.endpoints.clone(), Some(copts)))
            .await?;
        held.client = Some(client.clone());

        let mut lease_client = client.lease_client();
        // The lease cannot have started on the server before this instant.
        let granted_at = Instant::now();
        let grant = self
            .unary("lease grant", lease_client.grant(o.ttl.as_secs() as i64, None))
            .await?;
        held.lease = Some(grant.id());
        let lease = grant.id();
        // The server may round the TTL; the shorter of both keeps the step-down rule safe.
        let ttl = o.ttl.min(Duration::from_secs(grant.ttl().max(1) as u64));
        let renew_deadline = ttl / 2;
        let renew_every = ttl / 4;
        let (mut keeper, mut ka_stream) = self
            .unary("lease keep-alive", lease_client.keep_alive(lease))
            .await?;
        let mut last_ok = granted_at;
        let mut in_flight: VecDeque<Instant> = VecDeque::new();

        let member_key = format!("{}{}", self.members, o.node_id);
        let mut kv = client.kv_client();
        self.unary(
            "membership put",
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
                "membership watch",
                watch_client.watch(self.members.clone(), Some(WatchOptions::new().with_prefix())),
            )
            .await?;
        // etcd sends Observe's response headers only with the first leader, so the call itself blocks while
        // there is none: run it beside the loop and hear from it through a channel.
        let (obs_tx, mut observed) = mpsc::unbounded_channel::<Result<(Vec<u8>, Vec<u8>), String>>();
        let mut election = client.election_client();
        let name = self.election.clone();
        let _observer = AbortOnDrop(
            tokio::spawn(async move {
                let mut stream = match election.observe(name).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = obs_tx.send(Err(format!("observe: {e}")));
                        return;
                    }
                };
                loop {
                    let msg = match stream.message().await {
                        Ok(Some(resp)) => match resp.kv() {
                            Some(kv) => Ok((kv.key().to_vec(), kv.value().to_vec())),
                            None => continue,
                        },
                        Ok(None) => Err("observe stream closed".to_string()),
                        Err(e) => Err(format!("observe: {e}")),
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
                    self.resign(&client, leader_key.take(), lease).await;
                    held.leading = false;
                    held.lease = None;
                    return Ok(());
                }
                _ = sleep_until(last_ok + renew_deadline) => {
                    return Err(format!("lease {lease:x} not renewed within {renew_deadline:?}"));
                }
                msg = ka_stream.message() => match msg {
                    Ok(Some(resp)) if resp.ttl() > 0 => {
                        if let Some(sent) = in_flight.pop_front() {
                            last_ok = last_ok.max(sent);
                        }
                    }
                    Ok(Some(_)) => return Err(format!("lease {lease:x} expired on the server")),
                    Ok(None) => return Err("keep-alive stream closed".into()),
                    Err(e) => return Err(format!("keep-alive: {e}")),
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    keeper.keep_alive().await.map_err(|e| format!("keep-alive send: {e}"))?;
                    in_flight.push_back(now);
                }
                res = &mut campaign, if leader_key.is_none() => {
                    let resp = res.map_err(|e| format!("campaign: {e}"))?;
                    let key = resp.leader().cloned().ok_or("campaign answered without a leader key")?;
                    let token = u64::try_from(key.rev()).map_err(|_| format!("negative revision {}", key.rev()))?;
                    // Elected on a lease we may already be unable to renew: do not act on it.
                    if Instant::now() >= last_ok + renew_deadline {
                        return Err("elected after the renew deadline".into());
                    }
                    leader_key = Some(key);
                    held.leading = true;
                    tracing::info!(fencing_token = token, "won the etcd election");
                    self.campaign.events.send(BackendEvent::Elected { fencing_token: token });
                }
                obs = observed.recv() => match obs {
                    Some(Ok((key, value))) => match &leader_key {
                        Some(ours) if key != ours.key() => {
                            return Err(format!(
                                "observed another leader: {}",
                                String::from_utf8_lossy(&value)
                            ));
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
                    None => return Err("observer ended".into()),
                },
                w = members.message() => match w {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            return Err(format!("membership watch cancelled: {}", resp.cancel_reason()));
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
                    Ok(None) => return Err("membership watch closed".into()),
                    Err(e) => return Err(format!("membership watch: {e}")),
                },
            }
        }
    }

    /// Graceful end: resign (if leading) so a follower is elected at once, then revoke the lease, which
    /// also removes the membership key (a `NodeDown` for the others).
    async fn resign(&self, client: &Client, leader_key: Option<LeaderKey>, lease: i64) {
        if let Some(key) = leader_key {
            let mut election = client.election_client();
            match self
                .unary(
                    "resign",
                    election.resign(Some(ResignOptions::new().with_leader(key))),
                )
                .await
            {
                Ok(_) => tracing::info!("resigned etcd leadership"),
                Err(e) => tracing::warn!(error = %e, "resign failed; revoking the lease instead"),
            }
        }
        let mut lc = client.lease_client();
        if let Err(e) = self.unary("lease revoke", lc.revoke(lease)).await {
            tracing::warn!(error = %e, "lease revoke failed; it expires after its TTL");
        }
    }
}
