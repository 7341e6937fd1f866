//! Connection strings: table tests, redaction, and a property test (no panic on any input); the configuration
//! as a serde document.
#![cfg(feature = "connection")]

use arbor_actors::connection::{
    Auth, ConnectionConfig, HostPort, IdleReconnect, Secret, Target, TargetError,
};
use proptest::prelude::*;

fn hp(host: &str, port: u16) -> HostPort {
    HostPort {
        host: host.into(),
        port,
    }
}

#[test]
fn accepted_strings() {
    let t: Target = "chronicle://localhost".parse().unwrap();
    assert_eq!(t.hosts, vec![hp("localhost", 35000)]);
    assert!(t.tls);
    assert_eq!(t.endpoint_uri(), "https://localhost:35000");

    let t: Target = "chronicle://localhost:35001?disableTls=true".parse().unwrap();
    assert!(!t.tls);
    assert_eq!(t.endpoint_uri(), "http://localhost:35001");

    let t: Target = "CHRONICLE://a.example:1,b.example,[::1]:9".parse().unwrap();
    assert_eq!(
        t.hosts,
        vec![hp("a.example", 1), hp("b.example", 35000), hp("[::1]", 9)]
    );

    let t: Target = "grpc://h?disableTls=true".parse().unwrap();
    assert_eq!(t.hosts[0].port, 80);
    let t: Target = "grpc://h".parse().unwrap();
    assert_eq!(t.hosts[0].port, 443);
    let t: Target = "http://h".parse().unwrap();
    assert!(!t.tls);
    let t: Target = "https://h/".parse().unwrap();
    assert!(t.tls);

    let t: Target = "chronicle://client%40x:p%40ss%3Aw@host:1?authPort=9000"
        .parse()
        .unwrap();
    let c = t.credentials.clone().unwrap();
    assert_eq!(c.username, "client@x");
    assert_eq!(c.password.expose(), "p@ss:w");
    assert_eq!(t.auth_port, Some(9000));

    let t: Target = "chronicle://h?apiKey=k%20y&caFile=/tmp/ca.pem&tlsServerName=srv.local"
        .parse()
        .unwrap();
    assert_eq!(t.api_key.as_ref().unwrap().expose(), "k y");
    assert_eq!(t.ca_file.as_deref(), Some(std::path::Path::new("/tmp/ca.pem")));
    assert_eq!(t.tls_server_name.as_deref(), Some("srv.local"));

    let t = Target::from_server_address("kernel:35100").unwrap();
    assert_eq!(t.hosts, vec![hp("kernel", 35100)]);
    assert_eq!(t.scheme, "chronicle");
}

#[test]
fn refused_strings_name_the_offending_part() {
    use TargetError::*;
    let cases: Vec<(&str, TargetError)> = vec![
        ("", Empty),
        ("localhost:35000", MissingScheme),
        ("ftp://h", UnsupportedScheme { scheme: "ftp".into() }),
        ("chronicle://", MissingHost { index: 0 }),
        ("chronicle://a,,b", MissingHost { index: 1 }),
        (
            "chronicle://h:0",
            InvalidPort {
                host: "h".into(),
                port: "0".into(),
            },
        ),
        (
            "chronicle://h:99999",
            InvalidPort {
                host: "h".into(),
                port: "99999".into(),
            },
        ),
        (
            "chronicle://h:+80",
            InvalidPort {
                host: "h".into(),
                port: "+80".into(),
            },
        ),
        ("chronicle://h o", InvalidHost { host: "h o".into() }),
        (
            "chronicle://[zz]:1",
            InvalidHost {
                host: "[zz]:1".into(),
            },
        ),
        ("chronicle://h?foo=1", UnknownParameter { name: "foo".into() }),
        (
            "chronicle://h?disableTls=true&disableTls=false",
            DuplicateParameter {
                name: "disableTls".into(),
            },
        ),
        (
            "chronicle://h?disableTls=maybe",
            InvalidParameter {
                name: "disableTls".into(),
                reason: "`maybe` is not true or false".into(),
            },
        ),
        (
            "chronicle://h?authPort=x",
            InvalidParameter {
                name: "authPort".into(),
                reason: "`x` is not a port".into(),
            },
        ),
        ("chronicle://u:p@h?apiKey=k", CredentialsWithApiKey),
        (
            "chronicle://user@h",
            InvalidUserInfo {
                reason: "expected user:password",
            },
        ),
        (
            "chronicle://:p@h",
            InvalidUserInfo {
                reason: "empty user name",
            },
        ),
        (
            "chronicle://u:%zz@h",
            InvalidUserInfo {
                reason: "bad percent-encoding in the password",
            },
        ),
        (
            "https://h?disableTls=true",
            TlsConflict {
                scheme: "https".into(),
                disable_tls: true,
            },
        ),
        (
            "http://h?disableTls=false",
            TlsConflict {
                scheme: "http".into(),
                disable_tls: false,
            },
        ),
    ];
    for (input, want) in cases {
        assert_eq!(input.parse::<Target>(), Err(want), "input {input:?}");
    }
    assert!(Target::from_server_address("u:p@h:1").is_err());
}

#[test]
fn secrets_never_in_display_debug_or_errors() {
    let s = "chronicle://admin:hunter2-secret@h:1?disableTls=true";
    let t: Target = s.parse().unwrap();
    for text in [format!("{t}"), format!("{t:?}")] {
        assert!(!text.contains("hunter2-secret"), "{text}");
        assert!(text.contains("admin"), "{text}");
    }
    assert_eq!(t.to_string(), "chronicle://admin:***@h:1?disableTls=true");

    let t: Target = "chronicle://h?apiKey=key-SECRET-123".parse().unwrap();
    assert_eq!(t.to_string(), "chronicle://h:35000?apiKey=***");
    assert!(!format!("{t:?}").contains("SECRET"));

    let cfg = ConnectionConfig::new(t.clone()).with_auth(Auth::for_target(&t).unwrap());
    assert!(matches!(cfg.auth, Some(Auth::ApiKey(_))));
    assert!(!format!("{cfg:?}").contains("SECRET"));

    let cfg = ConnectionConfig::parse(s).unwrap();
    assert!(!format!("{cfg:?}").contains("hunter2-secret"));
    assert_eq!(format!("{:?}", Secret::new("x")), "***");

    // Errors for strings with secrets do not echo them.
    let err = "chronicle://u:topsecret@h?apiKey=alsosecret"
        .parse::<Target>()
        .unwrap_err();
    assert!(!err.to_string().contains("secret"), "{err}");
    let err = "chronicle://u:topsecret@h?apiKey=alsosecret&bad=1"
        .parse::<Target>()
        .unwrap_err();
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[test]
fn pool_key_normalises_and_separates_credentials() {
    let a: Target = "CHRONICLE://Host:35000?disableTls=true".parse().unwrap();
    let b: Target = "chronicle://host?disableTls=true".parse().unwrap();
    assert_eq!(a.pool_key(), b.pool_key());
    assert!(a.pool_key().starts_with("chronicle://host:35000#"));
    let c: Target = "chronicle://u:p1@host?disableTls=true".parse().unwrap();
    let d: Target = "chronicle://u:p2@host?disableTls=true".parse().unwrap();
    assert_ne!(c.pool_key(), d.pool_key());
    assert_ne!(a.pool_key(), c.pool_key());
    assert!(!c.pool_key().contains("p1"));
    let e: Target = "chronicle://host".parse().unwrap();
    assert_ne!(a.pool_key(), e.pool_key(), "TLS on/off are different connections");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parsing_never_panics(s in ".{0,80}") {
        let _ = s.parse::<Target>();
        let _ = Target::from_server_address(&s);
    }

    #[test]
    fn structured_inputs_never_panic_and_roundtrip(
        scheme in "(chronicle|grpc|http|https|CHRONICLE|x)",
        user in proptest::option::of("[a-z%@:0-9]{0,6}"),
        hosts in proptest::collection::vec("[a-z0-9.\\-\\[\\]:%]{0,10}", 0..3),
        query in "[a-zA-Z=&%0-9]{0,20}",
    ) {
        let mut s = format!("{scheme}://");
        if let Some(u) = user { s.push_str(&u); s.push('@'); }
        s.push_str(&hosts.join(","));
        if !query.is_empty() { s.push('?'); s.push_str(&query); }
        if let Ok(t) = s.parse::<Target>() {
            // What parses prints back to something that parses to the same target (no secrets involved).
            if t.credentials.is_none() && t.api_key.is_none() {
                let again: Target = t.to_string().parse().unwrap();
                prop_assert_eq!(again, t);
            }
        }
    }
}

#[test]
fn config_document_with_humantime_durations() {
    use std::time::Duration;
    let cfg: ConnectionConfig = serde_json::from_str(
        r#"{"server_address": "kernel:35100", "backoff": {"initial": "250ms", "multiplier": 2.0},
            "probe_interval": null, "keepalive": {"interval": "45s"}, "call_timeout": "2s",
            "idle_reconnect": "eager", "health_watch": false}"#,
    )
    .unwrap();
    assert_eq!(cfg.target.hosts, vec![hp("kernel", 35100)]);
    assert_eq!(cfg.backoff.initial, Duration::from_millis(250));
    assert_eq!(cfg.backoff.multiplier, 2.0);
    assert_eq!(cfg.backoff.max, Duration::from_secs(120));
    assert_eq!(cfg.probe_interval, None);
    assert_eq!(cfg.keepalive.unwrap().timeout, Duration::from_secs(20));
    assert_eq!(cfg.call_timeout, Duration::from_secs(2));
    assert_eq!(cfg.idle_reconnect, IdleReconnect::Eager);
    assert!(!cfg.health_watch);
    // Defaults are the builder's.
    let doc: ConnectionConfig = serde_json::from_str(r#"{"connection_string": "grpc://h:1"}"#).unwrap();
    let built = ConnectionConfig::parse("grpc://h:1").unwrap();
    assert_eq!(
        format!("{doc:?}"),
        format!("{built:?}"),
        "a document with only a target is the builder's default"
    );

    let err = serde_json::from_str::<ConnectionConfig>(r#"{"call_timeot": "2s"}"#).unwrap_err();
    assert!(err.to_string().contains("call_timeot"), "{err}");
    let err = serde_json::from_str::<ConnectionConfig>(r#"{"call_timeout": "soon"}"#).unwrap_err();
    assert!(
        err.to_string().contains(r#""soon", expected a duration"#),
        "{err}"
    );
    let err =
        serde_json::from_str::<ConnectionConfig>(r#"{"connection_string": "grpc://h", "max_attempts": 0}"#)
            .unwrap_err();
    assert!(err.to_string().contains("max_attempts"), "{err}");
    let err = serde_json::from_str::<ConnectionConfig>("{}").unwrap_err();
    assert!(err.to_string().contains("connection_string"), "{err}");
    // A refused connection string: the document's error carries the whole chain (serde shows one message).
    let err =
        serde_json::from_str::<ConnectionConfig>(r#"{"connection_string": "grpc://h:99999"}"#).unwrap_err();
    assert!(err.to_string().contains("99999"), "{err}");
    // Secrets in a refused document are not echoed.
    let err = serde_json::from_str::<ConnectionConfig>(
        r#"{"connection_string": "grpc://u:topsecret@h?apiKey=alsosecret"}"#,
    )
    .unwrap_err();
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[test]
fn tls_file_parameters() {
    let t: Target = "grpc://h?caFile=/ca.pem&certFile=/c.pem&keyFile=/k.pem"
        .parse()
        .unwrap();
    assert_eq!(t.cert_file.as_deref(), Some(std::path::Path::new("/c.pem")));
    assert_eq!(t.key_file.as_deref(), Some(std::path::Path::new("/k.pem")));
    assert_eq!(
        t.to_string(),
        "grpc://h:443?caFile=/ca.pem&certFile=/c.pem&keyFile=/k.pem"
    );
    for (s, name) in [
        ("grpc://h?certFile=/c.pem", "keyFile"),
        ("grpc://h?keyFile=/k.pem", "certFile"),
    ] {
        match s.parse::<Target>() {
            Err(TargetError::InvalidParameter { name: n, .. }) => assert_eq!(n, name, "{s}"),
            other => panic!("{s}: {other:?}"),
        }
    }
}
