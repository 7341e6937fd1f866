//! The tree's TOML configuration: a good file, and each kind of bad file naming its field.

use std::io::Write;
use std::num::NonZeroUsize;

use arbor::tree::{ConfigError, TreeConfig};
use arbor::tunnel::SubscriberConcurrency;

fn invalid(text: &str) -> (String, String) {
    match TreeConfig::from_toml(text) {
        Err(ConfigError::Invalid { path, message, .. } | ConfigError::Inconsistent { path, message, .. }) => {
            (path, message)
        }
        other => panic!("expected an invalid configuration, got {other:?}"),
    }
}

/// Each bad document fails naming `path`, its message containing `needle`.
fn each_names_its_field<T: AsRef<str>>(cases: &[(T, &str, &str)]) {
    for (text, path, needle) in cases {
        let text = text.as_ref();
        let (got_path, message) = invalid(text);
        assert_eq!(&got_path, path, "for {text:?}: {message}");
        assert!(
            message.contains(needle),
            "for {text:?}: {message:?} lacks {needle:?}"
        );
    }
}

const GOOD: &str = r#"
name = "orders"

[root]
strategy = "rest_for_one"
max_restarts = 5
period = "30s"

[pool]
linger = "10s"

[connections.tunnels]
connection_string = "grpc://127.0.0.1:7700?disableTls=true"

[[tunnels]]
connection = "tunnels"
subscriber = "log"
[tunnels.options]
tunnel_id = "t-1"
heartbeat_interval = "10s"
heartbeat_timeout = "60s"
checkpoint = { every = "2s" }

[[activators.singletons]]
name = "janitor"
kind = "janitor"

[[dynamic]]
name = "jobs"
max_children = 100
"#;

#[test]
fn a_good_file_reads_whole() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(GOOD.as_bytes()).unwrap();
    let config = TreeConfig::from_file(file.path()).unwrap();
    assert_eq!(config.name, "orders");
    assert_eq!(config.root.max_restarts, 5);
    assert_eq!(config.pool.linger, std::time::Duration::from_secs(10));
    assert_eq!(config.tunnels[0].options.tunnel_id, "t-1");
    assert_eq!(
        config.tunnels[0].options.heartbeat_interval,
        std::time::Duration::from_secs(10)
    );
    assert_eq!(config.activators.singletons[0].kind, "janitor");
    assert_eq!(config.dynamic[0].max_children, Some(100));
    assert!(config.connections.contains_key("tunnels"));
}

#[test]
fn each_kind_of_bad_file_names_its_field() {
    let cases: &[(&str, &str, &str)] = &[
        ("name = \"x\"\nbogus = 1\n", "bogus", "unknown field"),
        ("[root]\nstrategy = \"one_for_two\"\n", "root.strategy", "unknown variant"),
        ("[root]\nperiod = \"five seconds\"\n", "root.period", ""),
        ("[root]\nmax_restarts = -1\n", "root.max_restarts", ""),
        ("[pool]\nlinger = 3\n", "pool.linger", ""),
        (
            "[[tunnels]]\nconnection = \"nope\"\nsubscriber = \"log\"\n[tunnels.options]\ntunnel_id = \"t\"\n",
            "tunnels[0].connection",
            "not under [connections]",
        ),
        (
            "[connections.a]\nconnection_string = \"grpc://127.0.0.1:1?disableTls=true\"\n[[tunnels]]\nconnection = \"a\"\nsubscriber = \"log\"\n[tunnels.options]\ntunnel_id = \"t\"\nheartbeat_interval = \"1s\"\n",
            "tunnels[0].options",
            "heartbeat_interval",
        ),
        (
            "[[tunnels]]\nconnection = \"a\"\nsubscriber = \"log\"\noptions = { tunnel_id = \"t\", heartbeat = \"1s\" }\n",
            "tunnels[0].options.heartbeat",
            "unknown field",
        ),
        ("[[dynamic]]\nname = \"tunnels\"\n", "dynamic[0].name", "tree's own"),
        ("[[dynamic]]\nname = \"a\"\n[[dynamic]]\nname = \"a\"\n", "dynamic[1].name", "twice"),
        ("[root]\nperiod = \"0s\"\n", "root", "period"),
        ("[connections.a]\nconnection_string = \"nope://\"\n", "connections.a", ""),
        ("name = \n", ".", ""),
        (
            "[[tunnels]]\nconnection = \"a\"\nsubscriber = \"log\"\nsubscriber_concurrency = \"two\"\n",
            "tunnels[0].subscriber_concurrency",
            "\"one\", \"per_channel\", or a number",
        ),
        (
            "[[tunnels]]\nconnection = \"a\"\nsubscriber = \"log\"\nsubscriber_concurrency = 0\n",
            "tunnels[0].subscriber_concurrency",
            "at least 1",
        ),
    ];
    each_names_its_field(cases);
}

#[test]
fn subscriber_concurrency_is_one_per_channel_or_a_pool_and_unset_by_default() {
    let with = |value: &str| {
        let text = GOOD.replace(
            "subscriber = \"log\"\n",
            &format!("subscriber = \"log\"\nsubscriber_concurrency = {value}\n"),
        );
        TreeConfig::from_toml(&text).unwrap().tunnels[0].subscriber_concurrency
    };
    assert_eq!(
        TreeConfig::from_toml(GOOD).unwrap().tunnels[0].subscriber_concurrency,
        None
    );
    assert_eq!(with("\"one\""), Some(SubscriberConcurrency::One));
    assert_eq!(with("\"per_channel\""), Some(SubscriberConcurrency::PerChannel));
    assert_eq!(
        with("8"),
        Some(SubscriberConcurrency::Pool(NonZeroUsize::new(8).unwrap()))
    );
}

#[test]
fn a_missing_file_is_a_read_error_naming_it() {
    let err = TreeConfig::from_file("/nonexistent/arbor.toml").unwrap_err();
    assert!(
        matches!(&err, ConfigError::Read { file, .. } if file.ends_with("arbor.toml")),
        "{err}"
    );
    assert!(err.to_string().contains("/nonexistent/arbor.toml"));
}

/// A `[[tunnels]]` entry reads from the tunnel service (a named `connection`) or, with `source = "kafka"`,
/// from the `[tunnels.kafka]` table; each mix-up is named.
#[test]
fn a_tunnels_source_and_what_it_needs_agree() {
    const CONNECTION: &str = "[connections.a]\nconnection_string = \"grpc://127.0.0.1:1?disableTls=true\"\n";
    const OPTIONS: &str = "[tunnels.options]\ntunnel_id = \"orders\"\n";
    let kafka_table = "[tunnels.kafka]\nbootstrap_servers = [\"127.0.0.1:9092\"]\ntopic = \"orders\"\ngroup_id = \"billing\"\n";
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!("[[tunnels]]\nsubscriber = \"log\"\n{OPTIONS}"),
            "tunnels[0].connection",
            "is required",
        ),
        (
            format!("[[tunnels]]\nsource = \"kafak\"\nsubscriber = \"log\"\n{OPTIONS}"),
            "tunnels[0].source",
            "unknown variant",
        ),
        (
            format!("{CONNECTION}[[tunnels]]\nsource = \"kafka\"\nconnection = \"a\"\nsubscriber = \"log\"\n{OPTIONS}"),
            "tunnels[0].connection",
            "source is kafka",
        ),
        (
            format!("[[tunnels]]\nsource = \"kafka\"\nsubscriber = \"log\"\n{OPTIONS}"),
            if cfg!(feature = "kafka") {
                "tunnels[0].kafka"
            } else {
                "tunnels[0].source"
            },
            if cfg!(feature = "kafka") {
                "is required"
            } else {
                "`kafka` feature"
            },
        ),
        (
            format!("{CONNECTION}[[tunnels]]\nconnection = \"a\"\nsubscriber = \"log\"\n{OPTIONS}{kafka_table}"),
            "tunnels[0].kafka",
            "is for source = \"kafka\"",
        ),
    ];
    each_names_its_field(&cases);
}

#[cfg(feature = "kafka")]
#[test]
fn a_kafka_tunnel_reads_whole_and_its_bad_fields_are_named() {
    let text = |topic: &str| {
        format!(
            "[[tunnels]]\nsource = \"kafka\"\nsubscriber = \"log\"\n[tunnels.options]\ntunnel_id = \"orders\"\n\
             [tunnels.kafka]\nbootstrap_servers = [\"127.0.0.1:9092\"]\ntopic = \"{topic}\"\ngroup_id = \"billing\"\n\
             properties = {{ \"fetch.max.bytes\" = \"1048576\" }}\n"
        )
    };
    let config = TreeConfig::from_toml(&text("orders")).unwrap();
    let kafka = config.tunnels[0].kafka.as_ref().expect("the kafka table");
    assert_eq!(kafka.topic, "orders");
    assert_eq!(kafka.group_id, "billing");
    assert_eq!(kafka.properties["fetch.max.bytes"], "1048576");
    assert!(config.tunnels[0].connection.is_none());

    let (path, message) = invalid(&text("two words"));
    assert_eq!(path, "tunnels[0].kafka");
    assert!(message.contains("topic"), "{message}");
}

#[test]
fn tunnels_as_named_tables_take_their_name_as_tunnel_id_and_errors_name_the_tunnel() {
    const CONNECTION: &str = "[connections.a]\nconnection_string = \"grpc://127.0.0.1:1?disableTls=true\"\n";
    let text = format!(
        "{CONNECTION}[tunnels.payments]\nconnection = \"a\"\nsubscriber = \"log\"\n\
         [tunnels.orders]\nconnection = \"a\"\nsubscriber = \"discard\"\n\
         [tunnels.orders.options]\ntunnel_id = \"t-1234\"\nheartbeat_interval = \"10s\"\n"
    );
    let config = TreeConfig::from_toml(&text).unwrap();
    let ids: Vec<&str> = config
        .tunnels
        .iter()
        .map(|t| t.options.tunnel_id.as_str())
        .collect();
    // in name order; an options.tunnel_id wins over the name
    assert_eq!(ids, ["t-1234", "payments"]);
    assert_eq!(config.tunnels[0].subscriber, "discard");
    assert_eq!(
        config.tunnels[0].options.heartbeat_interval,
        std::time::Duration::from_secs(10)
    );

    let cases: Vec<(String, &str, &str)> = vec![
        (
            "[tunnels.orders]\nconnection = \"nope\"\nsubscriber = \"log\"\n".into(),
            "tunnels.orders.connection",
            "not under [connections]",
        ),
        (
            format!("{CONNECTION}[tunnels.orders]\nconnection = \"a\"\nsubscriber = \"log\"\nbogus = 1\n"),
            "tunnels.orders.bogus",
            "unknown field",
        ),
        (
            format!(
                "{CONNECTION}[tunnels.orders]\nconnection = \"a\"\nsubscriber = \"log\"\n\
                 [tunnels.orders.options]\nheartbeat_interval = \"soon\"\n"
            ),
            "tunnels.orders.options.heartbeat_interval",
            "",
        ),
        (
            format!(
                "{CONNECTION}[tunnels.orders]\nconnection = \"a\"\nsubscriber = \"log\"\n\
                 [tunnels.orders.options]\nheartbeat_interval = \"1s\"\n"
            ),
            "tunnels.orders.options",
            "heartbeat_interval",
        ),
        (
            format!(
                "{CONNECTION}[tunnels.orders]\nconnection = \"a\"\nsubscriber = \"log\"\n\
                 [tunnels.other]\nconnection = \"a\"\nsubscriber = \"log\"\noptions = {{ tunnel_id = \"orders\" }}\n"
            ),
            "tunnels.other.options.tunnel_id",
            "twice",
        ),
        (
            "[tunnels.orders]\nsource = \"kafka\"\nsubscriber = \"log\"\n".into(),
            if cfg!(feature = "kafka") {
                "tunnels.orders.kafka"
            } else {
                "tunnels.orders.source"
            },
            "",
        ),
        // an array entry still needs its tunnel_id
        (
            format!("{CONNECTION}[[tunnels]]\nconnection = \"a\"\nsubscriber = \"log\"\n"),
            "tunnels[0].options",
            "tunnel_id",
        ),
    ];
    each_names_its_field(&cases);
}

#[cfg(feature = "kafka")]
#[test]
fn a_named_kafka_tunnel_reads_whole() {
    let text = "[tunnels.orders]\nsource = \"kafka\"\nsubscriber = \"log\"\n\
                [tunnels.orders.kafka]\nbootstrap_servers = [\"127.0.0.1:9092\"]\ntopic = \"orders\"\ngroup_id = \"billing\"\n";
    let config = TreeConfig::from_toml(text).unwrap();
    assert_eq!(config.tunnels[0].options.tunnel_id, "orders");
    let kafka = config.tunnels[0].kafka.as_ref().expect("the kafka table");
    assert_eq!(
        (kafka.topic.as_str(), kafka.group_id.as_str()),
        ("orders", "billing")
    );

    let bad = text.replace("topic = \"orders\"", "topic = \"two words\"");
    let (path, message) = invalid(&bad);
    assert_eq!(path, "tunnels.orders.kafka");
    assert!(message.contains("topic"), "{message}");
}

/// `[tunnels.kafka.tls]` and `[tunnels.kafka.sasl]` read into the Kafka options; the password is never shown;
/// TLS validates only where librdkafka has OpenSSL (feature `kafka-tls`), and says so otherwise.
#[cfg(feature = "kafka")]
#[test]
fn a_kafka_tunnels_tls_and_sasl_tables_read_and_the_password_is_never_shown() {
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        ca.path(),
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let text = |tls_extra: &str| {
        format!(
            "[[tunnels]]\nsource = \"kafka\"\nsubscriber = \"log\"\n[tunnels.options]\ntunnel_id = \"orders\"\n\
             [tunnels.kafka]\nbootstrap_servers = [\"broker-1:9093\"]\ntopic = \"orders\"\ngroup_id = \"billing\"\n\
             [tunnels.kafka.tls]\nca_file = {:?}\n{tls_extra}\
             [tunnels.kafka.sasl]\nmechanism = \"PLAIN\"\nusername = \"billing\"\npassword = \"s3cret-from-toml\"\n",
            ca.path().display().to_string()
        )
    };
    let parsed = TreeConfig::from_toml(&text(""));
    if cfg!(feature = "kafka-tls") {
        let config = parsed.unwrap();
        let kafka = config.tunnels[0].kafka.as_ref().expect("the kafka table");
        let tls = kafka.tls.as_ref().expect("the tls table");
        assert_eq!(tls.ca_file.as_deref(), Some(ca.path()));
        assert_eq!(tls.cert_file, None);
        let sasl = kafka.sasl.as_ref().expect("the sasl table");
        assert_eq!(
            (sasl.mechanism.as_str(), sasl.username.as_str()),
            ("PLAIN", "billing")
        );
        assert_eq!(sasl.password, "s3cret-from-toml");
        let shown = format!("{config:?}");
        assert!(
            shown.contains("billing") && !shown.contains("s3cret-from-toml"),
            "{shown}"
        );
    } else {
        let Err(ConfigError::Inconsistent { path, message, .. }) = parsed else {
            panic!("TLS without kafka-tls: {parsed:?}");
        };
        assert_eq!(path, "tunnels[0].kafka");
        assert!(
            message.contains("tls") && message.contains("kafka-tls"),
            "{message}"
        );
        assert!(!message.contains("s3cret-from-toml"), "{message}");
    }
    // A misspelt key of either table is named.
    let (path, message) = invalid(&text("ca = \"x\"\n"));
    assert!(path.starts_with("tunnels[0].kafka"), "{path}: {message}");
    assert!(message.contains("ca"), "{path}: {message}");
    let (path, message) = invalid(&text("").replace("username", "user"));
    assert!(path.starts_with("tunnels[0].kafka"), "{path}: {message}");
    assert!(message.contains("user"), "{path}: {message}");
    assert!(!message.contains("s3cret-from-toml"), "{message}");
    // Nor does a misspelt password key or a broken string show the line it is on.
    let (path, message) = invalid(&text("").replace("password", "pasword"));
    assert_eq!(path, "tunnels[0].kafka.sasl.pasword");
    assert!(
        message.contains("line 15") && message.contains("unknown field `pasword`"),
        "{message}"
    );
    assert!(!message.contains("s3cret-from-toml"), "{message}");
    let (path, message) = invalid(&text("").replace("\"s3cret-from-toml\"", "\"s3cret-from-toml"));
    assert_eq!(path, ".");
    assert!(message.contains("line 15, column 29"), "{message}");
    assert!(!message.contains("s3cret-from-toml"), "{message}");
}
