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
        vec!["tunnel", "--addr", addr.as_str(), "list"],
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
    let stderr = failure(&["tunnel", "--addr", "no such host:x", "list"]);
    assert!(
        stderr.contains("expected host:port or http(s)://host:port"),
        "{stderr}"
    );
}

#[test]
fn a_refused_call_says_what_and_which_field_in_words() {
    let serve = ServeProcess::start(&[]);
    let out = arbor(&["tunnel", "--addr", serve.url.as_str(), "list"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "no tunnels (create one with `arbor tunnel create NAME --stream N`)\n"
    );
    let stderr = failure(&["tunnel", "--addr", serve.url.as_str(), "describe", "nosuch"]);
    assert!(stderr.starts_with("arbor tunnel: not found: "), "{stderr}");
    let stderr = failure(&[
        "tunnel",
        "--addr",
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

/// One vocabulary: `--addr`, `--ca-file`, `--token-file` for every client command, accepted before or after the
/// subcommand (the old `tunnel` names still work as aliases).
#[test]
fn client_flags_are_the_same_everywhere_and_go_before_or_after_the_subcommand() {
    let port = closed_port();
    let addr = format!("127.0.0.1:{port}");
    for args in [
        vec!["tunnel", "list", "--addr", addr.as_str()],
        vec!["tunnel", "--server", addr.as_str(), "list"],
        vec!["inspect", "tree", "--addr", addr.as_str()],
    ] {
        let stderr = failure(&args);
        assert!(
            stderr.contains(&format!("127.0.0.1:{port}")),
            "{args:?}: {stderr}"
        );
    }
    for command in ["tunnel", "inspect"] {
        let out = arbor(&[command, "--help"]);
        let help = String::from_utf8_lossy(&out.stdout);
        for flag in ["--addr", "--ca-file", "--token-file"] {
            assert!(help.contains(flag), "{command} --help lacks {flag}: {help}");
        }
    }
}

#[test]
fn every_subcommand_help_shows_an_example() {
    for command in ["demo", "serve", "tunnel", "inspect", "top"] {
        let out = arbor(&[command, "--help"]);
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("Examples:") && help.contains(&format!("arbor {command}")),
            "{command} --help: {help}"
        );
    }
}
