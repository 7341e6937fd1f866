//! `arbor serve` and `arbor tunnel` as a user runs them: child processes, an api key file, the admin commands.
#![cfg(feature = "tunnel-service")]

mod tunnel_service_common;

use std::process::{Command, Output};

use tunnel_service_common::ServeProcess;

fn arbor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(args)
        .output()
        .expect("arbor runs")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_admin_client_creates_appends_describes_lists_and_deletes_with_an_api_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "# rotated monthly\nk-2026\n").unwrap();
    let keys = keys.to_str().unwrap();
    let serve = ServeProcess::start(&["--api-key-file", keys]);
    let tunnel = |args: &[&str]| {
        let mut all = vec!["tunnel", "--server", serve.url.as_str(), "--api-key-file", keys];
        all.extend_from_slice(args);
        arbor(&all)
    };

    let out = tunnel(&[
        "create",
        "orders",
        "--base",
        "1",
        "--stream",
        "2",
        "--parents",
        "--max-age",
        "1h",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("channel 1 STREAM (parent 0) WAIT"), "{stdout}");

    let out = tunnel(&["append", "orders", "--key", "user-42", "a", "b", "c"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("3 records, sequence numbers 0..=2"), "{stdout}");
    let out = tunnel(&["append", "orders", "--channel", "0", "base"]);
    assert!(out.status.success());
    let out = tunnel(&["seal", "orders", "0"]);
    assert!(text(&out).0.contains("channel 0 sealed at 1"), "{:?}", text(&out));

    let (stdout, _) = text(&tunnel(&["describe", "orders"]));
    assert!(stdout.contains("retention: max age 3600000 ms"), "{stdout}");
    assert!(stdout.contains("sealed"), "{stdout}");
    let (stdout, _) = text(&tunnel(&["list"]));
    assert!(
        stdout.contains("orders  3 channels  0 clients  lag 4"),
        "{stdout}"
    );

    // A bad request names the field; a fatal error is an exit code.
    let out = tunnel(&["create", "Orders"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("invalid argument (field tunnel_name)"),
        "{stderr}"
    );

    // Without the key: refused.
    let out = arbor(&["tunnel", "--server", serve.url.as_str(), "list"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("api key is required"), "{stderr}");

    let out = tunnel(&["delete", "orders"]);
    assert!(out.status.success());
    assert!(text(&tunnel(&["list"])).0.starts_with("no tunnels"));
}

#[test]
fn serve_refuses_bad_settings_naming_them() {
    let out = arbor(&["serve", "--tls-cert", "cert.pem"]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("--tls-key"), "{:?}", text(&out));
    let out = arbor(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--api-key-file",
        "/nonexistent/keys",
    ]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("/nonexistent/keys"), "{:?}", text(&out));
}

#[test]
fn serve_beyond_loopback_says_on_stderr_what_is_missing_without_rust_log() {
    // 192.0.2.1 (TEST-NET-1) is no address of this machine: the warning comes before the bind, which fails,
    // so no server listens beyond loopback.
    let out = Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(["serve", "--listen", "192.0.2.1:0"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains(
            "arbor serve: warning: 192.0.2.1:0 is beyond loopback and served without TLS (calls and api keys \
             travel in clear text; add --tls-cert and --tls-key) and without api keys (anyone who reaches it \
             may create, append to and delete tunnels; add --api-key-file)\n"
        ),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "k\n").unwrap();
    let out = arbor(&[
        "serve",
        "--listen",
        "192.0.2.1:0",
        "--api-key-file",
        keys.to_str().unwrap(),
    ]);
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains(
            "arbor serve: warning: 192.0.2.1:0 is beyond loopback and served without TLS (calls and api keys \
             travel in clear text; add --tls-cert and --tls-key)\n"
        ),
        "{stderr}"
    );

    // On loopback: no warning.
    let out = arbor(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--api-key-file",
        "/nonexistent/keys",
    ]);
    let (_, stderr) = text(&out);
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[test]
fn serve_listens_on_a_host_name_and_localhost_stays_on_loopback() {
    let serve = ServeProcess::start_at("localhost:0", &[]);
    assert!(
        serve.url.starts_with("http://127.0.0.1:") || serve.url.starts_with("http://[::1]:"),
        "{}",
        serve.url
    );
    let out = arbor(&["tunnel", "--server", serve.url.as_str(), "list"]);
    assert!(text(&out).0.starts_with("no tunnels"), "{:?}", text(&out));

    let out = arbor(&["serve", "--listen", "localhost"]);
    assert!(!out.status.success());
    assert!(
        text(&out)
            .1
            .contains("invalid value 'localhost' for '--listen <LISTEN>': expected host:port"),
        "{:?}",
        text(&out)
    );
}

#[test]
fn tunnel_commands_print_one_json_document_with_json() {
    let serve = ServeProcess::start(&[]);
    let tunnel = |args: &[&str]| {
        let mut all = vec!["tunnel", "--server", serve.url.as_str(), "--json"];
        all.extend_from_slice(args);
        let out = arbor(&all);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}{stderr}");
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        serde_json::from_str::<serde_json::Value>(&stdout).expect("one JSON document")
    };

    let created = tunnel(&[
        "create",
        "orders",
        "--base",
        "1",
        "--stream",
        "1",
        "--parents",
        "--max-age",
        "1h",
    ]);
    assert_eq!(created["tunnel_name"], "orders");
    assert_eq!(created["retention"]["max_age_ms"], 3_600_000);
    assert_eq!(created["channels"][0]["channel_type"], "base");
    assert_eq!(
        created["channels"][0]["parent_channel_id"],
        serde_json::Value::Null
    );
    assert_eq!(created["channels"][1]["channel_type"], "stream");
    assert_eq!(created["channels"][1]["parent_channel_id"], 0);
    assert_eq!(created["channels"][1]["status"], "wait");
    assert_eq!(created["channels"][1]["owner_client_id"], serde_json::Value::Null);
    let id = created["tunnel_id"].as_str().unwrap().to_string();

    let appended = tunnel(&["append", "orders", "--key", "user-42", "a", "b"]);
    assert_eq!(appended["tunnel_id"], id.as_str());
    assert_eq!(
        appended["channels"],
        serde_json::json!([{"channel_id": 1, "record_count": 2, "first_sequence_number": 0, "last_sequence_number": 1}])
    );
    assert_eq!(
        appended["records"],
        serde_json::json!([{"channel_id": 1, "sequence_number": 0}, {"channel_id": 1, "sequence_number": 1}])
    );
    assert_eq!(appended["duplicate"], false);
    tunnel(&["append", "orders", "--channel", "0", "base"]);

    let sealed = tunnel(&["seal", "orders", "0"]);
    assert_eq!(
        sealed,
        serde_json::json!({"channel_id": 0, "end_sequence_number": 1})
    );

    let described = tunnel(&["describe", "orders"]);
    assert_eq!(described["tunnel_id"], id.as_str());
    assert_eq!(described["lag"], 3);
    assert_eq!(described["channels"][0]["sealed"], true);
    assert_eq!(described["channels"][0]["end_sequence_number"], 1);
    assert_eq!(described["channels"][1]["lag"], 2);

    let listed = tunnel(&["list"]);
    assert_eq!(listed["tunnels"][0]["tunnel_id"], id.as_str());
    assert_eq!(listed["tunnels"][0]["lag"], 3);
    assert_eq!(listed["tunnels"][0]["channels"].as_array().unwrap().len(), 2);

    assert_eq!(tunnel(&["delete", "orders"]), serde_json::json!({"deleted": id}));
    assert_eq!(tunnel(&["list"]), serde_json::json!({"tunnels": []}));
}

/// A CA and a leaf it signed for localhost and 127.0.0.1, written as the README's recipe writes them:
/// (ca.pem, ca.key, leaf.pem, leaf.key) in `dir`.
fn ca_and_leaf(dir: &std::path::Path) -> [String; 4] {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "arbor test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let files = [
        ("ca.pem", ca.pem()),
        ("ca.key", ca_key.serialize_pem()),
        ("leaf.pem", leaf.pem()),
        ("leaf.key", leaf_key.serialize_pem()),
    ];
    files.map(|(name, pem)| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_str().unwrap().to_string()
    })
}

#[test]
fn the_readme_tls_recipe_a_ca_and_a_leaf_it_signed_serves_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let [ca, _, leaf, leaf_key] = ca_and_leaf(dir.path());
    let serve = ServeProcess::start(&["--tls-cert", &leaf, "--tls-key", &leaf_key]);
    let addr = serve.url.trim_start_matches("http://").to_string();
    for server in [addr.clone(), addr.replace("127.0.0.1", "localhost")] {
        let out = arbor(&[
            "tunnel",
            "--ca-file",
            &ca,
            "--server",
            &server,
            "create",
            "orders",
            "--stream",
            "1",
        ]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{server}: {stdout}{stderr}");
        let out = arbor(&["tunnel", "--ca-file", &ca, "--server", &server, "list"]);
        assert!(text(&out).0.contains("orders  1 channels"), "{:?}", text(&out));
        let out = arbor(&[
            "tunnel",
            "--ca-file",
            &ca,
            "--server",
            &server,
            "delete",
            "orders",
        ]);
        assert!(out.status.success(), "{:?}", text(&out));
    }
}

#[test]
fn serve_refuses_a_ca_certificate_as_its_own_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let [ca, ca_key, _, _] = ca_and_leaf(dir.path());
    let mut serve = Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &ca,
            "--tls-key",
            &ca_key,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It must end at start: if it says it listens instead, stop it and fail (rather than wait forever).
    let stdout = std::io::BufReader::new(serve.stdout.take().unwrap());
    if let Some(line) = std::io::BufRead::lines(stdout)
        .map_while(Result::ok)
        .find(|line| line.contains("listening on"))
    {
        let _ = serve.kill();
        let _ = serve.wait();
        panic!("arbor serve started with a CA certificate as its own: {line}");
    }
    let out = serve.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "{ca}: this certificate is a CA; serve a leaf signed by it (clients refuse a CA as the server's \
             certificate)"
        )),
        "{stderr}"
    );
}

#[test]
fn a_ca_file_without_a_certificate_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let [_, ca_key, _, _] = ca_and_leaf(dir.path());
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let serve = ServeProcess::start(&[]);
    let addr = serve.url.trim_start_matches("http://");
    for file in [empty.to_str().unwrap(), ca_key.as_str()] {
        let out = arbor(&["tunnel", "--ca-file", file, "--server", addr, "list"]);
        let (_, stderr) = text(&out);
        assert!(!out.status.success());
        assert_eq!(
            stderr,
            format!(
                "arbor tunnel: {file} holds no certificate (expected PEM \"-----BEGIN CERTIFICATE-----\")\n"
            )
        );
    }
}
