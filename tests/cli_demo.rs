//! The `arbor demo` command, run as a child process the way a user runs it.

use std::process::Command;

fn arbor(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(args)
        .output()
        .expect("arbor runs")
}

#[test]
fn the_demo_recovers_from_every_fault_and_loses_nothing() {
    let out = arbor(&["demo", "--duration", "10s", "--seed", "42"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| -> String {
        stdout
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(name))
            .unwrap_or_else(|| panic!("no `{name}` line in:\n{stdout}"))
            .trim()
            .to_string()
    };
    let number = |name: &str| -> u64 {
        let line = field(name);
        line.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("`{name}` has no count: {line}"))
    };
    assert!(number("produced") > 0, "{stdout}");
    assert!(number("delivered") >= number("produced"), "{stdout}");
    assert_eq!(number("lost"), 0, "{stdout}");
    assert_eq!(number("out of order"), 0, "{stdout}");
    // every kind of fault was injected at least once
    let faults = field("faults");
    for kind in ["channel", "worker", "subscriber", "service", "leader"] {
        let count = faults
            .split(&format!("{kind} "))
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(count >= 1, "no {kind} fault: {faults}");
    }
    assert!(
        field("checkpoints").contains("8 of 8 channels at their end"),
        "{stdout}"
    );
    assert!(field("leaders").starts_with("1 "), "{stdout}");
    assert!(field("result:").starts_with("ok"), "{stdout}");
    // the live tree of both nodes was printed with their supervisors and workers
    assert!(stdout.contains("node-a [supervisor]"), "{stdout}");
    assert!(stdout.contains("node-b [supervisor]"), "{stdout}");
    assert!(stdout.contains("tunnel#0 [worker]"), "{stdout}");
}

#[test]
fn a_bad_duration_is_refused_naming_the_value() {
    let out = arbor(&["demo", "--duration", "soon"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("soon") && stderr.contains("--duration"),
        "{stderr}"
    );
}
