//! [`KafkaOptions`]: where the topic is, who consumes it, how to authenticate; checked up front, every error
//! naming its field.
//!
//! TLS ([`KafkaTls`]) and the SCRAM mechanisms of [`KafkaSasl`] need a librdkafka built with OpenSSL: the
//! feature `kafka-tls` (the system's OpenSSL, `libssl-dev` and `pkg-config` at build time). Without it,
//! [`KafkaOptions::validate`] refuses them, naming `tls` or `sasl.mechanism`; SASL `PLAIN` works either way.
//! Credentials the brokers refuse at connection time are [`KafkaRefused`](super::KafkaRefused).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::ClientConfig;
use serde::Deserialize;

use crate::tunnel::error::TunnelError;

/// How a tunnel worker consumes a Kafka topic (a partition per channel, the consumer group as the sessions).
/// Debug redacts the SASL password and any property whose name says password, secret or key material.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaOptions {
    /// The brokers to bootstrap from, each `host:port`.
    pub bootstrap_servers: Vec<String>,
    /// The topic: its partitions are the channels.
    pub topic: String,
    /// The consumer group: its members are the sessions sharing the partitions.
    pub group_id: String,
    /// TLS to the brokers (`security.protocol` `ssl`, or `sasl_ssl` with [`KafkaOptions::sasl`]).
    #[serde(default)]
    pub tls: Option<KafkaTls>,
    /// SASL authentication (`sasl_plaintext`, or `sasl_ssl` with [`KafkaOptions::tls`]).
    #[serde(default)]
    pub sasl: Option<KafkaSasl>,
    /// Any other librdkafka property, by name (`fetch.max.bytes`, `client.rack`, ...). The properties the
    /// mapping depends on (group, commits, assignor, session timeout, offsets reset) and the credentials are
    /// refused here: they come from the fields above and the worker's options.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// How long a rebalance waits for the partitions it revokes to be drained and committed (their channels
    /// reporting CLOSE) before it lets them go anyway; kept below librdkafka's `max.poll.interval.ms`.
    #[serde(default = "default_revoke_wait", with = "humantime_serde")]
    pub revoke_wait: Duration,
}

/// A property whose value is a secret (`ssl.key.password`, `sasl.oauthbearer.client.secret`, ...).
fn is_secret(name: &str) -> bool {
    ["password", "secret", "pem", "token"]
        .iter()
        .any(|word| name.contains(word))
}

impl std::fmt::Debug for KafkaOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str(),
                    if is_secret(name) {
                        "(redacted)"
                    } else {
                        value.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("KafkaOptions")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("topic", &self.topic)
            .field("group_id", &self.group_id)
            .field("tls", &self.tls)
            .field("sasl", &self.sasl)
            .field("properties", &properties)
            .field("revoke_wait", &self.revoke_wait)
            .finish()
    }
}

fn default_revoke_wait() -> Duration {
    Duration::from_secs(30)
}

/// TLS files (PEM).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaTls {
    /// The CA certificate(s) the brokers' certificates are checked against (`ssl.ca.location`); the system's
    /// roots when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate (`ssl.certificate.location`), with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (`ssl.key.location`), with `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// SASL credentials. Debug never shows the password.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSasl {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: String,
    /// The user name.
    pub username: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for KafkaSasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"(redacted)")
            .finish()
    }
}

/// The SASL mechanisms without a Kerberos or OAuth setup (SCRAM also needs OpenSSL: feature `kafka-tls`).
const SASL_MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// Properties the mapping sets itself: refused in [`KafkaOptions::properties`], naming the field to use.
const MANAGED: [(&str, &str); 14] = [
    ("bootstrap.servers", "bootstrap_servers"),
    ("metadata.broker.list", "bootstrap_servers"),
    ("group.id", "group_id"),
    (
        "enable.auto.commit",
        "the mapping (commits are the channels' checkpoints)",
    ),
    (
        "enable.auto.offset.store",
        "the mapping (commits are the channels' checkpoints)",
    ),
    ("auto.offset.reset", "the worker's on_out_of_range policy"),
    (
        "partition.assignment.strategy",
        "the mapping (cooperative-sticky)",
    ),
    (
        "group.protocol",
        "the mapping (the classic protocol with cooperative-sticky)",
    ),
    ("session.timeout.ms", "the worker's heartbeat_timeout"),
    ("security.protocol", "tls / sasl"),
    ("sasl.mechanism", "sasl.mechanism"),
    ("sasl.mechanisms", "sasl.mechanism"),
    ("sasl.username", "sasl.username"),
    ("sasl.password", "sasl.password"),
];

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> TunnelError {
    TunnelError::InvalidOptions {
        field: field.into(),
        reason: reason.into(),
    }
}

/// What a TLS file must hold: librdkafka reads each as PEM.
#[derive(Clone, Copy)]
enum PemKind {
    Certificate,
    PrivateKey,
}

/// Why `file` does not hold a PEM block of `kind`, if it does not. Checked here so that a DER file, a key given
/// as the certificate or a file left empty is named at once, not by librdkafka's client-creation error at
/// start. The message never quotes the file (it may hold a key).
fn pem_problem(file: &std::path::Path, kind: PemKind) -> Option<String> {
    let (label, what) = match kind {
        PemKind::Certificate => (
            "CERTIFICATE-----",
            "a PEM certificate (-----BEGIN CERTIFICATE-----)",
        ),
        PemKind::PrivateKey => (
            "PRIVATE KEY-----",
            "a PEM private key (-----BEGIN … PRIVATE KEY-----)",
        ),
    };
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(err) => return Some(format!("{} could not be read: {err}", file.display())),
    };
    let found = String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::trim)
        .any(|line| line.starts_with("-----BEGIN ") && line.ends_with(label));
    (!found).then(|| format!("{} does not hold {what}", file.display()))
}

/// Kafka's topic name rule: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn topic_problem(topic: &str) -> Option<String> {
    if topic.is_empty() {
        return Some("is empty".into());
    }
    if topic.len() > 249 {
        return Some(format!(
            "is {} characters long, at most 249 are allowed",
            topic.len()
        ));
    }
    if topic == "." || topic == ".." {
        return Some(format!("{topic:?} is not a topic name"));
    }
    topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .map(|c| format!("{topic:?} has {c:?}; a topic name is made of [a-zA-Z0-9._-]"))
}

fn server_problem(server: &str) -> Option<String> {
    let Some((host, port)) = server.rsplit_once(':') else {
        return Some(format!("{server:?} is not host:port"));
    };
    if host.is_empty() {
        return Some(format!("{server:?} has no host"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Some(format!("{server:?} has no valid port (1-65535)")),
        Ok(_) => None,
    }
}

impl KafkaOptions {
    /// Options for `topic` consumed by `group_id` from `bootstrap_servers` (`host:port,host:port`), no TLS
    /// or SASL.
    pub fn new(bootstrap_servers: &str, topic: impl Into<String>, group_id: impl Into<String>) -> Self {
        KafkaOptions {
            bootstrap_servers: bootstrap_servers
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            topic: topic.into(),
            group_id: group_id.into(),
            tls: None,
            sasl: None,
            properties: BTreeMap::new(),
            revoke_wait: default_revoke_wait(),
        }
    }

    /// TLS to the brokers.
    pub fn tls(mut self, tls: KafkaTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// SASL credentials.
    pub fn sasl(mut self, sasl: KafkaSasl) -> Self {
        self.sasl = Some(sasl);
        self
    }

    /// Any other librdkafka property, by name.
    pub fn property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }

    /// How long a rebalance waits for revoked partitions to be drained (default 30 s).
    pub fn revoke_wait(mut self, wait: Duration) -> Self {
        self.revoke_wait = wait;
        self
    }

    /// Checks every field; the error names the first one at fault. librdkafka itself checks the pass-through
    /// properties' names and values.
    pub fn validate(&self) -> Result<(), TunnelError> {
        if self.bootstrap_servers.is_empty() {
            return Err(invalid(
                "bootstrap_servers",
                "is empty; at least one host:port is needed",
            ));
        }
        for (i, server) in self.bootstrap_servers.iter().enumerate() {
            if let Some(problem) = server_problem(server) {
                return Err(invalid(format!("bootstrap_servers[{i}]"), problem));
            }
        }
        if let Some(problem) = topic_problem(&self.topic) {
            return Err(invalid("topic", problem));
        }
        if self.group_id.trim().is_empty() {
            return Err(invalid("group_id", "is empty"));
        }
        if let Some(tls) = &self.tls {
            for (field, file) in [
                ("tls.ca_file", &tls.ca_file),
                ("tls.cert_file", &tls.cert_file),
                ("tls.key_file", &tls.key_file),
            ] {
                if let Some(file) = file {
                    if !file.is_file() {
                        return Err(invalid(
                            field,
                            format!("{} is not a readable file", file.display()),
                        ));
                    }
                    let wanted = if field == "tls.key_file" {
                        PemKind::PrivateKey
                    } else {
                        PemKind::Certificate
                    };
                    if let Some(problem) = pem_problem(file, wanted) {
                        return Err(invalid(field, problem));
                    }
                }
            }
            match (&tls.cert_file, &tls.key_file) {
                (Some(_), None) => return Err(invalid("tls.key_file", "is missing; tls.cert_file needs it")),
                (None, Some(_)) => return Err(invalid("tls.cert_file", "is missing; tls.key_file needs it")),
                _ => {}
            }
        }
        if let Some(sasl) = &self.sasl {
            if !SASL_MECHANISMS.contains(&sasl.mechanism.as_str()) {
                return Err(invalid(
                    "sasl.mechanism",
                    format!(
                        "{:?} is not one of {}",
                        sasl.mechanism,
                        SASL_MECHANISMS.join(", ")
                    ),
                ));
            }
            if sasl.username.is_empty() {
                return Err(invalid("sasl.username", "is empty"));
            }
            if sasl.password.is_empty() {
                return Err(invalid("sasl.password", "is empty"));
            }
        }
        for name in self.properties.keys() {
            let field = format!("properties.{name:?}");
            if name.trim().is_empty() {
                return Err(invalid(field, "a property needs a name"));
            }
            if let Some((_, instead)) = MANAGED.iter().find(|(managed, _)| managed == name) {
                return Err(invalid(field, format!("is set by {instead}, not as a property")));
            }
        }
        if self.revoke_wait.is_zero() {
            return Err(invalid(
                "revoke_wait",
                "is zero; a revoked partition needs time to be drained",
            ));
        }
        // What this librdkafka was built with: TLS and SCRAM need OpenSSL (feature `kafka-tls`); asked of the
        // library itself, since another crate of the build may have turned rdkafka's `ssl` on.
        let builtin = ClientConfig::new()
            .create_native_config()
            .and_then(|native| native.get("builtin.features"))
            .unwrap_or_default();
        let has = |feature: &str| builtin.split(',').any(|f| f == feature);
        if self.tls.is_some() && !has("ssl") {
            return Err(invalid(
                "tls",
                format!(
                    "this librdkafka was built without TLS (its features: {builtin}); build arbor with the feature kafka-tls"
                ),
            ));
        }
        if let Some(sasl) = &self.sasl {
            if sasl.mechanism.starts_with("SCRAM") && !has("sasl_scram") {
                return Err(invalid(
                    "sasl.mechanism",
                    format!(
                        "{} needs a librdkafka built with SCRAM (its features: {builtin}); build arbor with the feature kafka-tls",
                        sasl.mechanism
                    ),
                ));
            }
        }
        // librdkafka's own check of every property's name and value (no client is created).
        let config = self.client_config("validate", Duration::from_secs(30));
        if let Err(err) = config.create_native_config() {
            return Err(match err {
                rdkafka::error::KafkaError::ClientConfig(_, description, key, value) => {
                    let field = if (key.starts_with("ssl.")
                        || key == "security.protocol" && self.tls.is_some())
                        && !self.properties.contains_key(&key)
                    {
                        "tls".to_string()
                    } else if key.starts_with("sasl.") && !self.properties.contains_key(&key) {
                        "sasl".to_string()
                    } else {
                        format!("properties.{key:?}")
                    };
                    let value = if is_secret(&key) {
                        "(redacted)".to_string()
                    } else {
                        format!("{value:?}")
                    };
                    invalid(
                        field,
                        format!("{key} = {value} refused by librdkafka: {description}"),
                    )
                }
                other => invalid("properties", other.to_string()),
            });
        }
        Ok(())
    }

    /// The consumer's configuration: the fields, the pass-through properties, and what the mapping needs
    /// (no auto commit or offset store, cooperative-sticky, the session timeout).
    pub(crate) fn client_config(&self, client_id: &str, session_timeout: Duration) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (name, value) in &self.properties {
            config.set(name, value);
        }
        let session_ms = session_timeout.as_millis().max(1);
        config
            .set("bootstrap.servers", self.bootstrap_servers.join(","))
            .set("group.id", &self.group_id)
            .set("client.id", client_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // A reset is detected by the reads (a jump below the log's start) and handed to the worker's
            // out-of-range policy; `error` would stop the partition's fetcher for good (a seek is refused).
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", session_ms.to_string())
            // librdkafka's rule: heartbeats well within the session timeout.
            .set("heartbeat.interval.ms", (session_ms / 10).max(100).to_string());
        let protocol = match (&self.tls, &self.sasl) {
            (None, None) => "plaintext",
            (Some(_), None) => "ssl",
            (None, Some(_)) => "sasl_plaintext",
            (Some(_), Some(_)) => "sasl_ssl",
        };
        config.set("security.protocol", protocol);
        if let Some(tls) = &self.tls {
            for (name, file) in [
                ("ssl.ca.location", &tls.ca_file),
                ("ssl.certificate.location", &tls.cert_file),
                ("ssl.key.location", &tls.key_file),
            ] {
                if let Some(file) = file {
                    config.set(name, file.display().to_string());
                }
            }
        }
        if let Some(sasl) = &self.sasl {
            config
                .set("sasl.mechanisms", &sasl.mechanism)
                .set("sasl.username", &sasl.username)
                .set("sasl.password", &sasl.password);
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> KafkaOptions {
        KafkaOptions::new("127.0.0.1:9092, broker-2:9093", "orders.v1", "billing")
    }

    fn field_of(options: KafkaOptions) -> String {
        match options.validate() {
            Err(TunnelError::InvalidOptions { field, .. }) => field,
            other => panic!("expected InvalidOptions, got {other:?}"),
        }
    }

    #[test]
    fn good_options_pass_and_set_what_the_mapping_needs() {
        let options = good().property("fetch.max.bytes", "1048576");
        options.validate().unwrap();
        assert_eq!(options.bootstrap_servers, ["127.0.0.1:9092", "broker-2:9093"]);
        let config = options.client_config("c-1", Duration::from_secs(10));
        assert_eq!(config.get("enable.auto.commit"), Some("false"));
        assert_eq!(config.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(
            config.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(config.get("session.timeout.ms"), Some("10000"));
        assert_eq!(config.get("heartbeat.interval.ms"), Some("1000"));
        assert_eq!(config.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(config.get("fetch.max.bytes"), Some("1048576"));
        assert_eq!(config.get("security.protocol"), Some("plaintext"));
    }

    #[test]
    fn every_bad_option_names_its_field() {
        let mut o = good();
        o.bootstrap_servers.clear();
        assert_eq!(field_of(o), "bootstrap_servers");
        assert_eq!(
            field_of(KafkaOptions::new("a:1,nohost", "t", "g")),
            "bootstrap_servers[1]"
        );
        assert_eq!(
            field_of(KafkaOptions::new("a:0", "t", "g")),
            "bootstrap_servers[0]"
        );
        assert_eq!(field_of(KafkaOptions::new("a:1", "bad topic", "g")), "topic");
        assert_eq!(field_of(KafkaOptions::new("a:1", "", "g")), "topic");
        assert_eq!(field_of(KafkaOptions::new("a:1", "..", "g")), "topic");
        assert_eq!(field_of(KafkaOptions::new("a:1", "t", " ")), "group_id");
        let tls = |ca: &str, cert: Option<&str>, key: Option<&str>| KafkaTls {
            ca_file: Some(ca.into()),
            cert_file: cert.map(Into::into),
            key_file: key.map(Into::into),
        };
        assert_eq!(
            field_of(good().tls(tls("/no/such/ca.pem", None, None))),
            "tls.ca_file"
        );
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key, der) = pem_files(dir.path());
        let (ca, cert, key, der) = (ca.as_str(), cert.as_str(), key.as_str(), der.as_str());
        assert_eq!(field_of(good().tls(tls(ca, Some(cert), None))), "tls.key_file");
        assert_eq!(field_of(good().tls(tls(ca, None, Some(key)))), "tls.cert_file");
        // Files that are there but hold no PEM of their kind: named before librdkafka sees them.
        assert_eq!(field_of(good().tls(tls(der, None, None))), "tls.ca_file");
        assert_eq!(
            field_of(good().tls(tls(ca, Some(key), Some(key)))),
            "tls.cert_file"
        );
        assert_eq!(
            field_of(good().tls(tls(ca, Some(cert), Some(cert)))),
            "tls.key_file"
        );
        let err = good().tls(tls(ca, Some(cert), Some(der))).validate().unwrap_err();
        assert!(
            err.to_string().contains("does not hold a PEM private key"),
            "{err}"
        );
        assert!(!err.to_string().contains("s3cret-key-bytes"), "{err}");
        let sasl = |m: &str, u: &str, p: &str| KafkaSasl {
            mechanism: m.into(),
            username: u.into(),
            password: p.into(),
        };
        assert_eq!(field_of(good().sasl(sasl("GSSAPI", "u", "p"))), "sasl.mechanism");
        assert_eq!(field_of(good().sasl(sasl("PLAIN", "", "p"))), "sasl.username");
        assert_eq!(field_of(good().sasl(sasl("PLAIN", "u", ""))), "sasl.password");
        assert_eq!(
            field_of(good().property("group.id", "x")),
            "properties.\"group.id\""
        );
        assert_eq!(
            field_of(good().property("enable.auto.commit", "true")),
            "properties.\"enable.auto.commit\""
        );
        assert_eq!(
            field_of(good().property("no.such.property", "1")),
            "properties.\"no.such.property\""
        );
        assert_eq!(
            field_of(good().property("fetch.max.bytes", "lots")),
            "properties.\"fetch.max.bytes\""
        );
        assert_eq!(field_of(good().revoke_wait(Duration::ZERO)), "revoke_wait");
    }

    /// A CA, a certificate, a key and a file that is no PEM (with bytes that must never reach an error), in
    /// `dir`. Only their form is checked in these tests: none reaches a TLS handshake.
    fn pem_files(dir: &std::path::Path) -> (String, String, String, String) {
        let write = |name: &str, text: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        (
            write(
                "ca.pem",
                b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            ),
            write(
                "client.pem",
                b"-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n",
            ),
            write(
                "client.key",
                b"-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n",
            ),
            write("client.der", b"\x30\x82\x01\x0as3cret-key-bytes"),
        )
    }

    fn tls_and_scram() -> (KafkaOptions, KafkaOptions, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ..) = pem_files(dir.path());
        let tls = good().tls(KafkaTls {
            ca_file: Some(ca.into()),
            cert_file: None,
            key_file: None,
        });
        let scram = good().sasl(KafkaSasl {
            mechanism: "SCRAM-SHA-256".into(),
            username: "u".into(),
            password: "p4ss".into(),
        });
        (tls, scram, dir)
    }

    fn builtin_features() -> String {
        ClientConfig::new()
            .create_native_config()
            .unwrap()
            .get("builtin.features")
            .unwrap()
    }

    #[cfg(not(feature = "kafka-tls"))]
    #[test]
    fn tls_and_scram_are_refused_naming_their_field_when_librdkafka_has_no_openssl() {
        let builtin = builtin_features();
        assert!(!builtin.split(',').any(|f| f == "ssl"), "{builtin}");
        let (tls, scram, _dir) = tls_and_scram();
        assert_eq!(field_of(tls.clone()), "tls");
        assert!(tls.validate().unwrap_err().to_string().contains("kafka-tls"));
        assert_eq!(field_of(scram.clone()), "sasl.mechanism");
        assert!(!scram.validate().unwrap_err().to_string().contains("p4ss"));
    }

    #[cfg(feature = "kafka-tls")]
    #[test]
    fn tls_and_scram_validate_when_librdkafka_has_openssl() {
        let builtin = builtin_features();
        for feature in ["ssl", "sasl_scram"] {
            assert!(builtin.split(',').any(|f| f == feature), "{feature} in {builtin}");
        }
        let (tls, scram, _dir) = tls_and_scram();
        tls.validate().unwrap();
        scram.validate().unwrap();
        let both = KafkaOptions {
            sasl: scram.sasl.clone(),
            ..tls.clone()
        };
        both.validate().unwrap();
        let config = both.client_config("c", Duration::from_secs(10));
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.mechanisms"), Some("SCRAM-SHA-256"));
        assert!(config.get("ssl.ca.location").is_some());
    }

    #[test]
    fn the_sasl_password_is_never_in_debug() {
        let options = good()
            .sasl(KafkaSasl {
                mechanism: "SCRAM-SHA-512".into(),
                username: "svc".into(),
                password: "hunter2-s3cret".into(),
            })
            .property("ssl.key.password", "k3y-s3cret");
        for shown in [format!("{options:?}"), format!("{options:#?}")] {
            assert!(shown.contains("svc"), "{shown}");
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(!shown.contains("k3y-s3cret"), "{shown}");
        }
        // Nor in an error naming it (without OpenSSL, librdkafka refuses ssl.* properties).
        if let Err(err) = options.validate() {
            assert!(!err.to_string().contains("k3y-s3cret"), "{err}");
        }
        let config = options.client_config("c", Duration::from_secs(10));
        assert_eq!(config.get("security.protocol"), Some("sasl_plaintext"));
        assert_eq!(config.get("sasl.password"), Some("hunter2-s3cret"));
    }

    #[test]
    fn deserializes_with_humantime_and_refuses_unknown_keys() {
        let options: KafkaOptions = serde_json::from_value(serde_json::json!({
            "bootstrap_servers": ["127.0.0.1:9092"],
            "topic": "t",
            "group_id": "g",
            "revoke_wait": "10s",
            "properties": {"fetch.wait.max.ms": "100"}
        }))
        .unwrap();
        assert_eq!(options.revoke_wait, Duration::from_secs(10));
        options.validate().unwrap();
        let err = serde_json::from_value::<KafkaOptions>(serde_json::json!({
            "bootstrap_servers": ["a:1"], "topic": "t", "group_id": "g", "group": "x"
        }))
        .unwrap_err();
        assert!(err.to_string().contains("group"), "{err}");
    }
}
