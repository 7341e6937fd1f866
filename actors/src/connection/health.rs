//! `grpc.health.v1.Health` as the connection uses it: one `Check` with a deadline proves an attempt; while
//! READY a `Watch` stream reports status changes at once (servers without it fall back to polling), and a
//! periodic `Check` proves the server still answers.

use std::time::Duration;

use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::auth::AuthInterceptor;
use super::error::ErrorChain;

/// What a health check needs.
#[derive(Clone)]
pub(crate) struct Health {
    pub(crate) interceptor: AuthInterceptor,
    pub(crate) service: String,
    pub(crate) check_timeout: Duration,
}

/// How a `Watch` ended.
#[derive(Debug)]
pub(crate) enum WatchEnd {
    /// The server has no `Watch`: fall back to polling `Check`.
    Unimplemented,
    /// The server says it does not serve (`NOT_SERVING`, `SERVICE_UNKNOWN`).
    NotServing(String),
    /// The stream ended or failed otherwise (server restart, connection trouble).
    Ended(String),
}

impl Health {
    fn client(
        &self,
        channel: Channel,
    ) -> HealthClient<tonic::service::interceptor::InterceptedService<Channel, AuthInterceptor>> {
        HealthClient::with_interceptor(channel, self.interceptor.clone())
    }

    fn request(&self) -> HealthCheckRequest {
        HealthCheckRequest {
            service: self.service.clone(),
        }
    }

    /// `Check` with a deadline. UNIMPLEMENTED counts as healthy: the server answered, it has no health
    /// service.
    pub(crate) async fn check(&self, channel: Channel) -> Result<(), String> {
        let timeout = self.check_timeout;
        let mut req = tonic::Request::new(self.request());
        req.set_timeout(timeout);
        // The outer timer guards against a frozen server even if the grpc-timeout machinery does not fire.
        let mut client = self.client(channel);
        match tokio::time::timeout(timeout + Duration::from_millis(100), client.check(req)).await {
            Err(_) => Err(format!("health check timed out after {timeout:?}")),
            Ok(Ok(resp)) => match resp.into_inner().status() {
                ServingStatus::Serving => Ok(()),
                other => Err(format!("server reports {}", other.as_str_name())),
            },
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => Ok(()),
            Ok(Err(status)) => Err(format!("check failed: {}", ErrorChain(&status))),
        }
    }

    /// Follow `Watch` until the server stops serving or the stream ends. The first message comes at once;
    /// SERVING messages are the normal case and change nothing.
    pub(crate) async fn watch(&self, channel: Channel) -> WatchEnd {
        let mut stream = match self.client(channel).watch(self.request()).await {
            Ok(resp) => resp.into_inner(),
            Err(status) if status.code() == tonic::Code::Unimplemented => return WatchEnd::Unimplemented,
            Err(status) => return WatchEnd::Ended(format!("watch failed: {}", ErrorChain(&status))),
        };
        loop {
            match stream.message().await {
                Ok(Some(resp)) => match resp.status() {
                    ServingStatus::Serving => {}
                    other => return WatchEnd::NotServing(format!("server reports {}", other.as_str_name())),
                },
                Ok(None) => return WatchEnd::Ended("watch stream closed by the server".into()),
                Err(status) if status.code() == tonic::Code::Unimplemented => return WatchEnd::Unimplemented,
                Err(status) => return WatchEnd::Ended(format!("watch failed: {}", ErrorChain(&status))),
            }
        }
    }

    /// While READY: a `Watch` (if `watch`), and a `Check` every `probe` (if set). Returns the first failure.
    /// A `Watch` the server does not have, or one that ends while the server still answers a `Check`,
    /// leaves the polling alone in charge.
    pub(crate) async fn monitor(&self, channel: Channel, watch: bool, probe: Option<Duration>) -> String {
        let poll = async {
            let Some(every) = probe else {
                return std::future::pending::<String>().await;
            };
            loop {
                tokio::time::sleep(every).await;
                if let Err(reason) = self.check(channel.clone()).await {
                    return reason;
                }
            }
        };
        tokio::pin!(poll);
        if watch {
            tokio::select! {
                reason = &mut poll => return reason,
                end = self.watch(channel.clone()) => match end {
                    WatchEnd::Unimplemented => tracing::debug!("no health Watch on the server: polling Check"),
                    WatchEnd::NotServing(reason) => return reason,
                    WatchEnd::Ended(why) => {
                        tracing::debug!(%why, "health watch ended: checking now, then polling");
                        if let Err(reason) = self.check(channel.clone()).await {
                            return reason;
                        }
                    }
                },
            }
        }
        poll.await
    }
}
