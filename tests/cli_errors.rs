//! What a user reads when a CLI command fails: one line naming the cause and what to try, never a Rust
//! `Debug` rendering (`Some(ConnectError(...))`, `Os { code: 111, .. }`, `Fatal(Call { .. })`).
#![cfg(feature = "cli")]

mod tunnel_service_common;

use std::process::{Command, Output};

use tunnel_service_common::ServeProcess;

fn arbor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(args)
        .output()
        .expect("arbor runs")
}

/// stderr of a command that must fail, checked for Debug renderings.
fn failure(args: &[&str]) -> String {
    let out = arbor(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} succeeded: {stderr}");
    for debug in [
        "Some(",
        "Os {",
        "ConnectError(",
        "Fatal(",
        "MetadataMap",
        "Status {",
        "(())",
    ] {
        assert!(
            !stderr.contains(debug),
            "{args:?}: Debug output `{debug}` in: {stderr}"
        );
    }
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    stderr
}

/// A free loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_server_that_is_not_running_is_named_with_a_hint() {
    let port = closed_port();
    let addr = format!("127.0.0.1:{port}");
    for args in [
        vec!["tunnel", "--server", addr.as_str(), "list"],
        vec!["inspect", "--addr", addr.as_str(), "tree"],
    ] {
        let stderr = failure(&args);
        assert!(
            stderr.contains(&format!("connection refused at http://127.0.0.1:{port}"))
                && stderr.contains("is the server running"),
            "{stderr}"
        );
    }
}

#[test]
fn an_address_that_is_not_one_is_refused_with_the_expected_form() {
    let stderr = failure(&["tunnel", "--server", "no such host:x", "list"]);
    assert!(
        stderr.contains("expected host:port or http(s)://host:port"),
        "{stderr}"
    );
}

#[test]
fn a_refused_call_says_what_and_which_field_in_words() {
    let serve = ServeProcess::start(&[]);
    let out = arbor(&["tunnel", "--server", serve.url.as_str(), "list"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "no tunnels (create one with `arbor tunnel create NAME --stream N`)\n"
    );
    let stderr = failure(&["tunnel", "--server", serve.url.as_str(), "describe", "nosuch"]);
    assert!(stderr.starts_with("arbor tunnel: not found: "), "{stderr}");
    let stderr = failure(&[
        "tunnel",
        "--server",
        serve.url.as_str(),
        "create",
        "BAD_NAME",
        "--stream",
        "1",
    ]);
    assert!(
        stderr.starts_with("arbor tunnel: invalid argument (field tunnel_name): "),
        "{stderr}"
    );
}

#[test]
fn demo_settings_that_cannot_work_are_refused_naming_the_flag() {
    for (args, expected) in [
        (
            vec!["demo", "--fault-every", "0s"],
            "--fault-every 0s: must be at least 100ms",
        ),
        (
            vec!["demo", "--duration", "5s", "--fault-every", "10s"],
            "--fault-every 10s: leaves no fault",
        ),
        (
            vec!["demo", "--duration", "0s"],
            "--duration 0s: must be more than 0",
        ),
    ] {
        let stderr = failure(&args);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
