//! Tunnel workers on a real Apache Kafka broker reached over TLS (the broker verified by a CA), mutual TLS, SASL
//! PLAIN and SCRAM-SHA-256 over TLS: one broker for the whole file, with a listener for each (`scripts/kafka.sh`
//! with `KAFKA_TLS_DIR` and `KAFKA_SASL_USERS`), certificates made here with rcgen. A wrong password, a CA that
//! does not verify the broker and a missing client certificate are typed, fatal errors at start; no password is
//! in a Debug or in the logs.
#![cfg(feature = "kafka-tls")]

mod tunnel_kafka_common;

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arbor::tunnel::kafka::{KafkaOptions, KafkaRefused, KafkaSasl, KafkaSource, KafkaTls};
use arbor::tunnel::{ErrorKind, TunnelError, TunnelWorker};
use tunnel_kafka_common::*;

const USER: &str = "svc-orders";
const PASSWORD: &str = "c0rrect-h0rse-pw";
const WRONG_PASSWORD: &str = "wr0ng-batt3ry-pw";

/// The PEM files of a CA, the broker's certificate and a client's.
struct Pki {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Pki {
    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// A CA, a leaf for 127.0.0.1 and localhost signed by it (`server.pem`, `server.key`), a client certificate
    /// signed by it (`client.pem`, `client.key`), and a second CA that signed none of them (`other-ca.pem`).
    fn generate() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().to_path_buf();
        let ca = |name: &str| {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            (params, key, cert)
        };
        let (ca_params, ca_key, ca_cert) = ca("arbor kafka test CA");
        let (_, _, other_ca) = ca("arbor kafka other CA");
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let leaf = |names: Vec<String>| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()]);
        let (client, client_key) = leaf(vec!["arbor-client".into()]);
        for (name, pem) in [
            ("ca.pem", ca_cert.pem()),
            ("other-ca.pem", other_ca.pem()),
            ("server.pem", server),
            ("server.key", server_key),
            ("client.pem", client),
            ("client.key", client_key),
        ] {
            std::fs::write(path.join(name), pem).unwrap();
        }
        Pki { _dir: dir, path }
    }
}

struct Secure {
    broker: Broker,
    pki: Pki,
}

/// Everything logged by this test binary (librdkafka's lines included), to look for secrets in.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

/// The broker with every listener, for all the tests of this file (one start: ~15 s).
fn secure() -> &'static Secure {
    static SECURE: OnceLock<Secure> = OnceLock::new();
    SECURE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "info,librdkafka=debug,arbor_actors=debug",
            ))
            .with_writer(|| Capture)
            .with_ansi(false)
            .try_init();
        let pki = Pki::generate();
        let users = format!("{USER}:{PASSWORD}");
        let broker = Broker::start_with(&[
            ("KAFKA_TLS_DIR", pki.path.to_str().unwrap()),
            ("KAFKA_SASL_USERS", &users),
        ]);
        for name in ["ssl", "mtls", "sasl", "sasl_ssl"] {
            assert!(
                broker.listeners.contains_key(name),
                "kafka.sh printed no {name} listener: {:?}",
                broker.listeners
            );
        }
        Secure { broker, pki }
    })
}

impl Secure {
    fn options(&self, listener: &str, topic: &str) -> KafkaOptions {
        KafkaOptions::new(&self.broker.listeners[listener], topic, format!("{topic}-g"))
            .revoke_wait(Duration::from_secs(30))
    }

    fn tls(&self, ca: &str, client: bool) -> KafkaTls {
        KafkaTls {
            ca_file: Some(self.pki.file(ca)),
            cert_file: client.then(|| self.pki.file("client.pem")),
            key_file: client.then(|| self.pki.file("client.key")),
        }
    }
}

fn sasl(mechanism: &str, password: &str) -> KafkaSasl {
    KafkaSasl {
        mechanism: mechanism.into(),
        username: USER.into(),
        password: password.into(),
    }
}

/// Creates `topic` (2 partitions, 20 records each, through the plaintext listener), consumes it with a worker
/// over `kafka`'s listener, checks every record arrived once, and shuts the worker down (committing).
async fn consume_all(secure: &Secure, topic: &str, kafka: KafkaOptions) {
    let broker = &secure.broker;
    broker.create_topic(topic, 2, &[]).await;
    let producer = broker.producer();
    for p in 0..2 {
        produce(&producer, topic, p, "v", 20).await;
    }
    let journal = Journal::default();
    let options = kafka_worker_options(topic);
    let worker = start_kafka_worker(options, kafka, &journal, 0).await;
    journal.wait_distinct(40).await;
    let got = journal.got.lock().unwrap().clone();
    for p in 0..2u32 {
        let values: Vec<Vec<u8>> = got
            .iter()
            .filter(|g| g.partition == p)
            .map(|g| g.value.clone())
            .collect();
        let expected: Vec<Vec<u8>> = (0..20).map(|i| format!("v{i}").into_bytes()).collect();
        assert_eq!(values, expected, "partition {p} in order, once each");
    }
    worker.shutdown(Duration::from_secs(60)).await.expect("shutdown");
}

/// Starts a worker that must not start; its error.
async fn refused(kafka: KafkaOptions, name: &str) -> TunnelError {
    let options = kafka_worker_options(name).call_timeout(Duration::from_secs(20));
    let source = KafkaSource::new(kafka, &options).expect("the options are valid");
    let started = Instant::now();
    let err = TunnelWorker::builder(options)
        .source(Arc::new(source))
        .run_subscriber(Journal::default().writer(0))
        .registry(arbor::registry::Registry::new(name))
        .start()
        .await
        .expect_err("the brokers refuse this client: no worker");
    // Told as soon as the brokers refuse, not after the call timeout.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "refused after {:?}: {err}",
        started.elapsed()
    );
    err
}

/// The refusal inside a worker's error.
fn refusal_of(err: &TunnelError) -> &KafkaRefused {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<KafkaRefused>() {
            return refused;
        }
        source = e.source();
    }
    panic!("no KafkaRefused in {err:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_consumes_over_tls_verifying_the_broker_with_the_ca() {
    let secure = secure();
    let kafka = secure.options("ssl", "over-tls").tls(secure.tls("ca.pem", false));
    consume_all(secure, "over-tls", kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_consumes_over_mutual_tls_with_a_client_certificate() {
    let secure = secure();
    let kafka = secure
        .options("mtls", "over-mtls")
        .tls(secure.tls("ca.pem", true));
    consume_all(secure, "over-mtls", kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_consumes_with_sasl_plain_over_plaintext() {
    let secure = secure();
    let kafka = secure.options("sasl", "over-plain").sasl(sasl("PLAIN", PASSWORD));
    consume_all(secure, "over-plain", kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_consumes_with_scram_sha_256_over_tls() {
    let secure = secure();
    let kafka = secure
        .options("sasl_ssl", "over-scram-tls")
        .tls(secure.tls("ca.pem", false))
        .sasl(sasl("SCRAM-SHA-256", PASSWORD));
    consume_all(secure, "over-scram-tls", kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_consumes_with_scram_sha_512_over_plaintext() {
    let secure = secure();
    let kafka = secure
        .options("sasl", "over-scram-512")
        .sasl(sasl("SCRAM-SHA-512", PASSWORD));
    consume_all(secure, "over-scram-512", kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_fatal_authentication_error_and_no_password_is_shown() {
    let secure = secure();
    secure.broker.create_topic("wrong-pw", 1, &[]).await;
    for (listener, mechanism, tls) in [
        ("sasl", "PLAIN", None),
        ("sasl_ssl", "SCRAM-SHA-256", Some(secure.tls("ca.pem", false))),
    ] {
        let mut kafka = secure
            .options(listener, "wrong-pw")
            .sasl(sasl(mechanism, WRONG_PASSWORD))
            // librdkafka's security and protocol debug lines too: none may carry the password.
            .property("debug", "security,broker,protocol");
        kafka.tls = tls;
        for shown in [format!("{kafka:?}"), format!("{kafka:#?}")] {
            assert!(!shown.contains(WRONG_PASSWORD), "{shown}");
        }
        let err = refused(kafka, &format!("wrong-pw-{listener}")).await;
        assert_eq!(err.kind(), ErrorKind::Fatal, "{err}");
        let refusal = refusal_of(&err);
        assert!(
            matches!(refusal, KafkaRefused::Authentication { .. }),
            "{mechanism}: {refusal:?}"
        );
        assert_eq!(refusal.field(), "sasl");
        let told = err.to_string();
        println!("{mechanism}: {told}");
        assert!(told.contains("SASL authentication"), "{told}");
        assert!(
            told.contains("SASL authentication error"),
            "librdkafka's reason: {told}"
        );
        assert!(!told.contains(WRONG_PASSWORD) && !format!("{err:?}").contains(WRONG_PASSWORD));
    }
    let logs = logs();
    assert!(
        logs.contains("SASL") && logs.contains("Authentication"),
        "librdkafka's debug lines were captured: {} bytes",
        logs.len()
    );
    for password in [WRONG_PASSWORD, PASSWORD] {
        assert!(!logs.contains(password), "a password is in the logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_does_not_verify_the_broker_and_a_missing_client_certificate_are_fatal_tls_errors() {
    let secure = secure();
    secure.broker.create_topic("bad-tls", 1, &[]).await;
    let kafka = secure
        .options("ssl", "bad-tls")
        .tls(secure.tls("other-ca.pem", false));
    let err = refused(kafka, "bad-ca").await;
    assert_eq!(err.kind(), ErrorKind::Fatal, "{err}");
    let refusal = refusal_of(&err);
    assert!(matches!(refusal, KafkaRefused::Tls { .. }), "{refusal:?}");
    assert_eq!(refusal.field(), "tls");
    let told = err.to_string();
    println!("other CA: {told}");
    assert!(told.contains("certificate verify failed"), "{told}");

    // The mTLS listener requires a certificate the client does not have.
    let kafka = secure.options("mtls", "bad-tls").tls(secure.tls("ca.pem", false));
    let err = refused(kafka, "no-client-cert").await;
    assert_eq!(err.kind(), ErrorKind::Fatal, "{err}");
    println!("no client certificate: {err}");
    assert_eq!(refusal_of(&err).field(), "tls", "{err}");
    assert!(err.to_string().contains("alert"), "the broker's TLS alert: {err}");
}
