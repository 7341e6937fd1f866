//! The `arbor demo` command, run as a child process the way a user runs it.

use std::process::Command;

fn arbor(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(args)
        .output()
        .expect("arbor runs")
}

#[test]
fn the_demo_recovers_from_every_fault_and_says_so() {
    let out = arbor(&[
        "demo",
        "--duration",
        "3s",
        "--fault-every",
        "50ms",
        "--print-every",
        "1s",
        "--seed",
        "42",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("summary:"))
        .expect("a summary line");
    assert!(summary.ends_with("missing none"), "{summary}");
    let faults: u64 = summary
        .split("faults injected ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .expect("a fault count");
    assert!(faults >= 10, "faults were injected: {summary}");
    // the live tree was printed with its supervisors and workers
    assert!(stdout.contains("├─ ingest [supervisor]"), "{stdout}");
    assert!(stdout.contains("[dynamic]"), "{stdout}");
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
