//! A tunnel worker's options: what it consumes, how often it heartbeats, how it reads, acks and
//! checkpoints. A serde document with humantime durations; [`TunnelOptions::validate`] names the field at
//! fault.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::backoff::ChannelBackoff;
use super::error::TunnelError;
use super::source::ServiceLimits;

/// When a channel moves its checkpoint forward (always after the subscriber acknowledged the records).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CheckpointPolicy {
    /// After every acknowledged batch (the fewest records delivered again after a failover). Written while the
    /// next batch is delivered, one write at a time: when batches are acknowledged faster than the service
    /// answers, the next write carries the newest acknowledged position.
    EveryBatch,
    /// At most once per interval, and always when the channel closes, is handed over or finishes (fewer
    /// writes to the service; up to an interval of records delivered again after a crash).
    Every(#[serde(with = "humantime_serde")] Duration),
}

/// What a channel does when its position is below the records the service still keeps (retention trimmed
/// records that were never checkpointed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutOfRangePolicy {
    /// Resume at the first record still kept, and say how many records were lost (an `error!` event and
    /// the channel's `lost_to_retention` count). Kafka's `auto.offset.reset = earliest`.
    #[default]
    SkipToRetained,
    /// Stop the worker with [`TunnelError::OutOfRange`]: someone has to decide.
    Stop,
}

/// A tunnel worker's options. Build with [`TunnelOptions::new`] and the setters, or deserialize:
///
/// ```
/// use arbor_actors::tunnel::TunnelOptions;
/// let options: TunnelOptions = serde_json::from_str(r#"{
///     "tunnel_id": "orders",
///     "heartbeat_interval": "10s",
///     "heartbeat_timeout": "60s",
///     "checkpoint": { "every": "2s" }
/// }"#).unwrap();
/// options.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TunnelOptions {
    /// The tunnel to consume (its id, as `CreateTunnel` returned it). Required.
    pub tunnel_id: String,
    /// A label the service shows for this consumer (default `arbor-<pid>`).
    pub client_tag: String,
    /// How often the worker heartbeats (default 5 s; at least `min_heartbeat_interval`, and less than half
    /// `heartbeat_timeout`, so that a heartbeat fits before the worker steps down).
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How long the service keeps this consumer without a heartbeat (default 30 s, as Kafka consumers' session
    /// timeout is tens of seconds: a killed consumer's channels move after it; above twice the interval). The
    /// worker steps down (stops every channel and starts over with a new client id) at half the timeout the
    /// service granted without a heartbeat acknowledged, before the service can expire it, and delivers
    /// nothing past that deadline. Outside the service's bounds, the worker's start fails
    /// ([`TunnelError::InvalidOptions`] naming both values).
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    /// The floor of `heartbeat_interval` (default 5 s, the reference workers' minimum; lower it only on
    /// purpose, e.g. in tests).
    #[serde(with = "humantime_serde")]
    pub min_heartbeat_interval: Duration,
    /// Records per read, and so at most per batch handed to the subscriber (default 1,000). Above the
    /// service's `max_records_per_message`, it is lowered to that at start, with a warning.
    pub read_batch_size: u32,
    /// How long a read waits on the service for a record when none is available (long polling; default
    /// 500 ms). Empty reads then back off per `empty_read_backoff`. Above the service's longest wait, it is
    /// lowered to that at start, with a warning.
    #[serde(with = "humantime_serde")]
    pub read_wait: Duration,
    /// When checkpoints are written (default after every batch).
    pub checkpoint: CheckpointPolicy,
    /// How long the subscriber has to acknowledge a batch before it is treated as failed (default 60 s).
    #[serde(with = "humantime_serde")]
    pub processing_timeout: Duration,
    /// How long delivery stays paused after the subscriber died before the worker releases its channels
    /// (default 30 s).
    #[serde(with = "humantime_serde")]
    pub subscriber_grace: Duration,
    /// The deadline of every call to the service (default 10 s).
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Reconnection after a heartbeat timeout waits a random time in this range (default 1 s to 10 s), so
    /// that workers that lost the service together do not come back together.
    #[serde(with = "humantime_serde")]
    pub reconnect_delay_min: Duration,
    /// The upper end of the reconnection delay.
    #[serde(with = "humantime_serde")]
    pub reconnect_delay_max: Duration,
    /// The wait after an empty read (default 10 ms, × 5, at most 5 s, jitter 0.25; a full read resets it).
    pub empty_read_backoff: ChannelBackoff,
    /// The wait after a transient request error (default 16 ms, × 2, at most 3 s, jitter 0.2).
    pub retry_backoff: ChannelBackoff,
    /// How long a channel retries transient errors before it gives the channel up (reports CLOSE, so that
    /// the records are delivered again by whoever gets it next; default 75 s).
    #[serde(with = "humantime_serde")]
    pub retry_for: Duration,
    /// What to do when retention trimmed records before they were delivered (default skip to the first
    /// retained record, loudly).
    pub on_out_of_range: OutOfRangePolicy,
}

impl Default for TunnelOptions {
    fn default() -> Self {
        TunnelOptions {
            tunnel_id: String::new(),
            client_tag: format!("arbor-{}", std::process::id()),
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(30),
            min_heartbeat_interval: Duration::from_secs(5),
            read_batch_size: 1_000,
            read_wait: Duration::from_millis(500),
            checkpoint: CheckpointPolicy::EveryBatch,
            processing_timeout: Duration::from_secs(60),
            subscriber_grace: Duration::from_secs(30),
            call_timeout: Duration::from_secs(10),
            reconnect_delay_min: Duration::from_secs(1),
            reconnect_delay_max: Duration::from_secs(10),
            empty_read_backoff: ChannelBackoff::EMPTY_READS,
            retry_backoff: ChannelBackoff::TRANSIENT_ERRORS,
            retry_for: Duration::from_secs(75),
            on_out_of_range: OutOfRangePolicy::SkipToRetained,
        }
    }
}

/// Options fitted to a service's limits ([`TunnelOptions::fit_to`]).
#[derive(Debug)]
pub(crate) struct Fitted {
    pub(crate) options: TunnelOptions,
    /// The options lowered: (field, configured, used).
    pub(crate) lowered: Vec<(&'static str, String, String)>,
}

/// A duration as people write it (`1m 30s`), for messages.
pub(crate) fn human(duration: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(duration)
}

/// The most records a read may ask for (the service's per-message limit is of the same order).
const MAX_READ_BATCH: u32 = 100_000;

impl TunnelOptions {
    /// Options for `tunnel_id`, everything else at its default.
    pub fn new(tunnel_id: impl Into<String>) -> Self {
        TunnelOptions {
            tunnel_id: tunnel_id.into(),
            ..TunnelOptions::default()
        }
    }

    /// Sets the heartbeat interval and timeout (default 5 s and 30 s).
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.heartbeat_interval = interval;
        self.heartbeat_timeout = timeout;
        self
    }

    /// Lowers (or raises) the heartbeat interval's floor (default 5 s).
    pub fn min_heartbeat_interval(mut self, floor: Duration) -> Self {
        self.min_heartbeat_interval = floor;
        self
    }

    /// Sets the client tag (default `arbor-<pid>`).
    pub fn client_tag(mut self, tag: impl Into<String>) -> Self {
        self.client_tag = tag.into();
        self
    }

    /// Sets the records per read (default 1,000).
    pub fn read_batch_size(mut self, records: u32) -> Self {
        self.read_batch_size = records;
        self
    }

    /// Sets the long-poll wait of a read (default 500 ms).
    pub fn read_wait(mut self, wait: Duration) -> Self {
        self.read_wait = wait;
        self
    }

    /// Sets the checkpoint policy (default every batch).
    pub fn checkpoint(mut self, policy: CheckpointPolicy) -> Self {
        self.checkpoint = policy;
        self
    }

    /// Sets the processing timeout (default 60 s).
    pub fn processing_timeout(mut self, timeout: Duration) -> Self {
        self.processing_timeout = timeout;
        self
    }

    /// Sets the subscriber grace period (default 30 s).
    pub fn subscriber_grace(mut self, grace: Duration) -> Self {
        self.subscriber_grace = grace;
        self
    }

    /// Sets the per-call deadline (default 10 s).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Sets the range of the random reconnection delay (default 1 s to 10 s).
    pub fn reconnect_delay(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_delay_min = min;
        self.reconnect_delay_max = max;
        self
    }

    /// Sets how long transient errors are retried before a channel is given up (default 75 s).
    pub fn retry_for(mut self, period: Duration) -> Self {
        self.retry_for = period;
        self
    }

    /// Sets the out-of-range policy (default skip to the first retained record).
    pub fn on_out_of_range(mut self, policy: OutOfRangePolicy) -> Self {
        self.on_out_of_range = policy;
        self
    }

    /// How long a channel's graceful stop may take before its loop is aborted: the batch in the subscriber's
    /// hands is finished (within a call timeout), the checkpoint write in flight answered (one call), then the
    /// last position written (one call).
    pub(crate) fn channel_flush_wait(&self) -> Duration {
        self.call_timeout * 3
    }

    /// How long stopping the channels may take: each flushes within [`Self::channel_flush_wait`] (three call
    /// timeouts), and retries transient errors for at most `retry_for` (capped at 5 s) before giving up.
    pub(crate) fn channel_stop_wait(&self) -> Duration {
        self.channel_flush_wait() + self.retry_for.min(Duration::from_secs(5))
    }

    /// How long a graceful stop of the worker may take, sized from its own timeouts: the channels' stop (each
    /// flushes within three call timeouts plus up to 5 s of retries), then up to three calls in turn
    /// (`Shutdown` of the session, `Shutdown` of one opened as the worker stopped, the subscriber runner's
    /// stop), plus 5 s of scheduling slack. A supervisor gives the worker this long before it kills it (70 s
    /// with the defaults).
    pub fn shutdown_timeout(&self) -> Duration {
        self.channel_stop_wait() + self.call_timeout * 3 + Duration::from_secs(5)
    }

    /// These options fitted to what the service accepts (its [`ServiceLimits`]; a limit of 0 is one the
    /// service does not state): a heartbeat timeout outside the service's bounds is refused (the session's
    /// liveness must be what was configured), a read size or wait above its maximum is lowered to it (a
    /// smaller read only costs a round trip), each lowered option listed as (field, configured, used).
    pub(crate) fn fit_to(&self, limits: &ServiceLimits) -> Result<Fitted, TunnelError> {
        let refuse = |reason: String| TunnelError::InvalidOptions {
            field: "heartbeat_timeout".into(),
            reason,
        };
        let timeout = self.heartbeat_timeout;
        if !limits.max_heartbeat_timeout.is_zero() && timeout > limits.max_heartbeat_timeout {
            return Err(refuse(format!(
                "{} is above the service's maximum {}",
                human(timeout),
                human(limits.max_heartbeat_timeout)
            )));
        }
        if timeout < limits.min_heartbeat_timeout {
            return Err(refuse(format!(
                "{} is below the service's minimum {}",
                human(timeout),
                human(limits.min_heartbeat_timeout)
            )));
        }
        let mut fitted = Fitted {
            options: self.clone(),
            lowered: Vec::new(),
        };
        let max_records = limits.max_records_per_message;
        if max_records > 0 && self.read_batch_size > max_records {
            fitted.options.read_batch_size = max_records;
            fitted.lowered.push((
                "read_batch_size",
                self.read_batch_size.to_string(),
                max_records.to_string(),
            ));
        }
        let max_wait = limits.max_read_wait;
        if !max_wait.is_zero() && self.read_wait > max_wait {
            fitted.options.read_wait = max_wait;
            fitted.lowered.push((
                "read_wait",
                human(self.read_wait).to_string(),
                human(max_wait).to_string(),
            ));
        }
        Ok(fitted)
    }

    /// Checks every option; the error names the first field at fault, what was expected and what came.
    pub fn validate(&self) -> Result<(), TunnelError> {
        let invalid = |field: &str, reason: String| TunnelError::InvalidOptions {
            field: field.to_string(),
            reason,
        };
        if self.tunnel_id.trim().is_empty() {
            return Err(invalid("tunnel_id", "is required".into()));
        }
        if self
            .tunnel_id
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
            || self.tunnel_id.len() > 128
        {
            return Err(invalid(
                "tunnel_id",
                format!(
                    "must be at most 128 characters without spaces or control characters (got {:?})",
                    self.tunnel_id
                ),
            ));
        }
        if self.client_tag.len() > 256 || self.client_tag.chars().any(char::is_control) {
            return Err(invalid(
                "client_tag",
                "must be at most 256 bytes without control characters".into(),
            ));
        }
        if self.heartbeat_interval < self.min_heartbeat_interval {
            return Err(invalid(
                "heartbeat_interval",
                format!(
                    "must be at least min_heartbeat_interval {} (got {})",
                    human(self.min_heartbeat_interval),
                    human(self.heartbeat_interval)
                ),
            ));
        }
        if self.heartbeat_interval.is_zero() {
            return Err(invalid("heartbeat_interval", "must be above zero".into()));
        }
        if self.heartbeat_timeout <= self.heartbeat_interval * 2 {
            return Err(invalid(
                "heartbeat_timeout",
                format!(
                    "must exceed twice heartbeat_interval {} (the worker steps down at half the timeout; got {})",
                    human(self.heartbeat_interval),
                    human(self.heartbeat_timeout)
                ),
            ));
        }
        if self.heartbeat_timeout > Duration::from_secs(24 * 3600) {
            return Err(invalid(
                "heartbeat_timeout",
                format!("must be at most 24h (got {})", human(self.heartbeat_timeout)),
            ));
        }
        if self.read_batch_size == 0 || self.read_batch_size > MAX_READ_BATCH {
            return Err(invalid(
                "read_batch_size",
                format!(
                    "must be within 1..={MAX_READ_BATCH} (got {})",
                    self.read_batch_size
                ),
            ));
        }
        if self.read_wait > Duration::from_secs(60) {
            return Err(invalid(
                "read_wait",
                format!("must be at most 1m (got {})", human(self.read_wait)),
            ));
        }
        if let CheckpointPolicy::Every(interval) = self.checkpoint {
            if interval.is_zero() {
                return Err(invalid(
                    "checkpoint.every",
                    "must be above zero (use every_batch instead)".into(),
                ));
            }
        }
        for (field, value) in [
            ("processing_timeout", self.processing_timeout),
            ("subscriber_grace", self.subscriber_grace),
            ("call_timeout", self.call_timeout),
            ("retry_for", self.retry_for),
        ] {
            if value.is_zero() || value > Duration::from_secs(24 * 3600) {
                return Err(invalid(
                    field,
                    format!("must be above zero and at most 24h (got {})", human(value)),
                ));
            }
        }
        if self.reconnect_delay_min > self.reconnect_delay_max
            || self.reconnect_delay_max > Duration::from_secs(3600)
        {
            return Err(invalid(
                "reconnect_delay_min",
                format!(
                    "must not exceed reconnect_delay_max, itself at most 1h (got {} and {})",
                    human(self.reconnect_delay_min),
                    human(self.reconnect_delay_max)
                ),
            ));
        }
        for (prefix, backoff) in [
            ("empty_read_backoff", &self.empty_read_backoff),
            ("retry_backoff", &self.retry_backoff),
        ] {
            backoff
                .check(prefix)
                .map_err(|(field, reason)| invalid(&field, reason))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(options: TunnelOptions) -> String {
        match options.validate() {
            Err(TunnelError::InvalidOptions { field, .. }) => field,
            other => panic!("expected InvalidOptions, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_kafka_like_and_valid() {
        let options = TunnelOptions::new("t");
        assert_eq!(options.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(options.heartbeat_timeout, Duration::from_secs(30));
        assert_eq!(options.min_heartbeat_interval, Duration::from_secs(5));
        options.validate().unwrap();
    }

    #[test]
    fn the_shutdown_timeout_covers_every_step_of_a_graceful_stop() {
        for options in [
            TunnelOptions::new("t"),
            TunnelOptions::new("t").call_timeout(Duration::from_secs(30)),
            TunnelOptions::new("t")
                .call_timeout(Duration::from_millis(200))
                .retry_for(Duration::from_secs(1)),
        ] {
            // channels (the batch in hand, the write in flight, the last write; retries up to 5 s), Shutdown,
            // the orphan's Shutdown, the runner
            let steps = options.call_timeout * 3
                + options.retry_for.min(Duration::from_secs(5))
                + options.call_timeout * 3;
            assert!(
                options.shutdown_timeout() > steps,
                "{:?} for steps of {:?}",
                options.shutdown_timeout(),
                steps
            );
        }
        assert_eq!(
            TunnelOptions::new("t").shutdown_timeout(),
            Duration::from_secs(70)
        );
    }

    #[test]
    fn every_bad_option_names_its_field() {
        let base = || TunnelOptions::new("t");
        assert_eq!(field(TunnelOptions::default()), "tunnel_id");
        assert_eq!(field(TunnelOptions::new("has space")), "tunnel_id");
        assert_eq!(
            field(base().heartbeat(Duration::from_secs(1), Duration::from_secs(60))),
            "heartbeat_interval"
        );
        assert_eq!(
            field(base().heartbeat(Duration::from_secs(30), Duration::from_secs(30))),
            "heartbeat_timeout"
        );
        // no heartbeat would fit before the step-down at half the timeout
        assert_eq!(
            field(base().heartbeat(Duration::from_secs(10), Duration::from_secs(20))),
            "heartbeat_timeout"
        );
        assert_eq!(field(base().read_batch_size(0)), "read_batch_size");
        assert_eq!(
            field(base().checkpoint(CheckpointPolicy::Every(Duration::ZERO))),
            "checkpoint.every"
        );
        assert_eq!(
            field(base().processing_timeout(Duration::ZERO)),
            "processing_timeout"
        );
        assert_eq!(
            field(base().reconnect_delay(Duration::from_secs(5), Duration::from_secs(1))),
            "reconnect_delay_min"
        );
        assert_eq!(field(base().client_tag("a\nb")), "client_tag");
        let mut o = base();
        o.retry_backoff.jitter = 2.0;
        assert_eq!(field(o), "retry_backoff.jitter");
        // the floor can be lowered on purpose
        base()
            .min_heartbeat_interval(Duration::from_millis(50))
            .heartbeat(Duration::from_millis(100), Duration::from_secs(1))
            .validate()
            .unwrap();
    }

    fn limits() -> ServiceLimits {
        ServiceLimits {
            max_records_per_message: 10_000,
            max_read_wait: Duration::from_secs(30),
            min_heartbeat_timeout: Duration::from_millis(100),
            max_heartbeat_timeout: Duration::from_secs(3600),
            max_response_bytes: 4 << 20,
        }
    }

    #[test]
    fn options_wider_than_the_services_limits_are_lowered_or_refused_naming_both_values() {
        // a heartbeat timeout outside the service's bounds is refused
        let wide = TunnelOptions::new("t").heartbeat(Duration::from_secs(5), Duration::from_secs(24 * 3600));
        match wide.fit_to(&limits()) {
            Err(TunnelError::InvalidOptions { field, reason }) => {
                assert_eq!(field, "heartbeat_timeout");
                assert_eq!(reason, "1day is above the service's maximum 1h");
            }
            other => panic!("expected InvalidOptions, got {other:?}"),
        }
        let mut narrow = limits();
        narrow.min_heartbeat_timeout = Duration::from_secs(60);
        assert!(TunnelOptions::new("t").fit_to(&narrow).is_err());
        // read sizes are lowered to the service's, and listed
        let fitted = TunnelOptions::new("t")
            .read_batch_size(100_000)
            .read_wait(Duration::from_secs(60))
            .fit_to(&limits())
            .unwrap();
        assert_eq!(fitted.options.read_batch_size, 10_000);
        assert_eq!(fitted.options.read_wait, Duration::from_secs(30));
        assert_eq!(
            fitted.lowered,
            vec![
                ("read_batch_size", "100000".to_string(), "10000".to_string()),
                ("read_wait", "1m".to_string(), "30s".to_string()),
            ]
        );
        // within the limits, or limits the service does not state: unchanged
        let defaults = TunnelOptions::new("t");
        assert_eq!(defaults.fit_to(&limits()).unwrap().options, defaults);
        let unstated = ServiceLimits {
            max_records_per_message: 0,
            max_read_wait: Duration::ZERO,
            min_heartbeat_timeout: Duration::ZERO,
            max_heartbeat_timeout: Duration::ZERO,
            max_response_bytes: 0,
        };
        let fitted = TunnelOptions::new("t")
            .read_batch_size(100_000)
            .fit_to(&unstated)
            .unwrap();
        assert!(fitted.lowered.is_empty());
    }

    #[test]
    fn deserializes_with_humantime_and_refuses_unknown_keys() {
        let o: TunnelOptions = serde_json::from_str(
            r#"{"tunnel_id":"t","heartbeat_interval":"10s","checkpoint":{"every":"2s"}}"#,
        )
        .unwrap();
        assert_eq!(o.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(o.checkpoint, CheckpointPolicy::Every(Duration::from_secs(2)));
        let err = serde_json::from_str::<TunnelOptions>(r#"{"tunnel_id":"t","heartbeat":"1s"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `heartbeat`"), "{err}");
    }
}
