//! One connect attempt, run off the connection actor's loop, and the guarantee that its end is always
//! reported.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tonic::transport::Channel;

use super::actor::Shared;
use super::error::ErrorChain;
use super::state::CloseReason;
use super::transport::{DialOnceConnector, KillSwitch, TransportReporter};

pub(crate) type AttemptResult = Result<Channel, CloseReason>;

/// Reports an attempt's end exactly once, however it ends: with its result, as a failure if it panics (in the
/// attempt or in a token source), or as a failure if its task is dropped first (aborted, runtime shutting
/// down). The actor ignores a report it no longer waits for. An attempt that could end without a report would
/// leave the connection CONNECTING forever.
pub(crate) struct AttemptReport {
    sink: Option<Box<dyn FnOnce(AttemptResult) + Send>>,
}

impl AttemptReport {
    pub(crate) fn new(sink: impl FnOnce(AttemptResult) + Send + 'static) -> AttemptReport {
        AttemptReport {
            sink: Some(Box::new(sink)),
        }
    }

    pub(crate) async fn run(mut self, attempt: impl std::future::Future<Output = AttemptResult>) {
        let result = AssertUnwindSafe(attempt)
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                Err(CloseReason::Other {
                    reason: format!(
                        "attempt panicked: {}",
                        crate::report::panic_message(panic.as_ref())
                    ),
                })
            });
        if let Some(sink) = self.sink.take() {
            sink(result);
        }
    }
}

impl Drop for AttemptReport {
    fn drop(&mut self) {
        if let Some(sink) = self.sink.take() {
            sink(Err(CloseReason::Other {
                reason: "attempt cancelled".into(),
            }));
        }
    }
}

/// One attempt: token (if OAuth2), dial + TLS + HTTP/2 handshake within `connect_timeout`, then a health
/// check with its own deadline. Only a passed check proves the server is alive: a frozen server accepts a
/// connect.
pub(crate) struct Attempt {
    pub(crate) shared: Arc<Shared>,
    pub(crate) generation: u64,
    pub(crate) report: TransportReporter,
    pub(crate) kill: Arc<KillSwitch>,
    pub(crate) keepalive_interval: Option<Duration>,
    pub(crate) connect_timeout: Duration,
}

impl Attempt {
    pub(crate) async fn run(self) -> Result<Channel, CloseReason> {
        let shared = &self.shared;
        let after = self.connect_timeout;
        if let Some(source) = &shared.token {
            match tokio::time::timeout(after, source.token()).await {
                Err(_) => {
                    return Err(CloseReason::Auth {
                        reason: format!("token fetch timed out after {after:?}"),
                    })
                }
                Ok(Err(e)) => {
                    return Err(CloseReason::Auth {
                        reason: ErrorChain(&e).to_string(),
                    })
                }
                Ok(Ok(_)) => {}
            }
        }
        let connector = DialOnceConnector::new(
            shared.hosts.clone(),
            shared.tls.clone(),
            self.generation,
            self.report,
            self.kill,
        );
        let endpoint = shared.endpoint_for(self.keepalive_interval);
        let channel = match tokio::time::timeout(after, endpoint.connect_with_connector(connector)).await {
            Err(_) => return Err(CloseReason::ConnectTimeout { after }),
            Ok(Err(e)) => return Err(connect_failure(&e)),
            Ok(Ok(ch)) => ch,
        };
        shared
            .health()
            .check(channel.clone())
            .await
            .map_err(|reason| CloseReason::Health { reason })?;
        Ok(channel)
    }
}

/// Why a connect failed, from the IO error at the bottom of tonic's error chain.
fn connect_failure(e: &(dyn std::error::Error + 'static)) -> CloseReason {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return CloseReason::from_io(io);
        }
        cur = err.source();
    }
    CloseReason::Other {
        reason: format!("connect failed: {}", ErrorChain(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reporter() -> (AttemptReport, tokio::sync::oneshot::Receiver<AttemptResult>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (AttemptReport::new(move |r| drop(tx.send(r))), rx)
    }

    fn reason(r: AttemptResult) -> String {
        match r {
            Err(CloseReason::Other { reason }) => reason,
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[tokio::test]
    async fn a_panicking_attempt_is_a_failed_attempt() {
        let (report, rx) = reporter();
        let attempt = async { panic!("overflow when adding duration to instant") };
        tokio::spawn(report.run(attempt)).await.unwrap();
        let why = reason(rx.await.unwrap());
        assert!(why.contains("panicked") && why.contains("overflow"), "{why}");
    }

    #[tokio::test]
    async fn a_cancelled_attempt_is_a_failed_attempt() {
        let (report, rx) = reporter();
        let task = tokio::spawn(report.run(std::future::pending()));
        task.abort();
        assert_eq!(reason(rx.await.unwrap()), "attempt cancelled");
    }

    #[tokio::test]
    async fn an_attempt_reports_once() {
        let (report, mut rx) = reporter();
        let failed = Err(CloseReason::Refused);
        tokio::spawn(report.run(async { failed })).await.unwrap();
        assert!(matches!(rx.try_recv(), Ok(Err(CloseReason::Refused))));
    }
}
