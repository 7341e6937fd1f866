//! `arbor inspect` as a child process against a tree with introspection started in the test: `tree` in words,
//! `--json` and `--dot`; `registry --prefix`; `node`; `events` seeing a kill and the restart, in words and as
//! JSON lines; a refused token is a failure naming the reason.

mod inspect_common;

use std::process::Stdio;
use std::time::Duration;

use inspect_common::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn arbor() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_arbor"));
    command.kill_on_drop(true);
    command
}

/// Runs `arbor inspect --addr ADDR <args>`; its stdout, or a panic with its stderr.
async fn inspect(addr: std::net::SocketAddr, args: &[&str]) -> String {
    let output = tokio::time::timeout(
        LONG,
        arbor()
            .args(["inspect", "--addr", &addr.to_string()])
            .args(args)
            .output(),
    )
    .await
    .expect("arbor inspect ends")
    .unwrap();
    assert!(
        output.status.success(),
        "arbor inspect {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_in_words_as_json_and_as_graphviz() {
    let tree = start_tree(options()).await;
    let addr = addr(&tree);
    let mut client = client(&tree).await;
    let mut watch = client.watch(arbor::introspect::WatchFrom::Now).await.unwrap();
    tree.root().child("cache").await.unwrap().kill().unwrap();
    next_event(&mut watch, |e| {
        matches!(
            supervisor_kind(e, "orders", "cache"),
            Some(arbor_proto::inspect::v1::supervisor_event::Kind::Restarted(_))
        )
    })
    .await;

    let words = inspect(addr, &["tree"]).await;
    assert!(words.starts_with("tree orders ("), "{words}");
    let cache = words
        .lines()
        .find(|l| l.contains("cache [worker]"))
        .unwrap_or_else(|| panic!("{words}"));
    assert!(
        cache.contains("running") && cache.contains("restarts=1") && cache.contains("last_exit=\"killed\""),
        "{cache}"
    );
    assert!(words.contains("└─ introspection [worker] running"), "{words}");

    let json: serde_json::Value = serde_json::from_str(&inspect(addr, &["--json", "tree"]).await).unwrap();
    assert_eq!(json["name"], "orders");
    assert_eq!(json["root"]["path"], "orders");
    fn json_nodes(node: &serde_json::Value) -> Vec<&serde_json::Value> {
        let mut out = vec![node];
        for child in node["children"].as_array().unwrap() {
            out.extend(json_nodes(child));
        }
        out
    }
    let nodes = json_nodes(&json["root"]);
    let local = tree.snapshot().await.unwrap();
    let paths: Vec<_> = nodes
        .iter()
        .map(|n| n["path"].as_str().unwrap().to_string())
        .collect();
    let local_paths: Vec<_> = local.nodes().iter().map(|n| n.path.clone()).collect();
    assert_eq!(paths, local_paths, "the same tree");
    let cache = nodes.iter().find(|n| n["path"] == "orders/cache").unwrap();
    assert_eq!(cache["restart_count"], 1);

    let dot = inspect(addr, &["tree", "--dot"]).await;
    assert!(dot.starts_with("digraph \"orders\" {"), "{dot}");
    assert!(dot.contains("\"orders\" -> \"orders/cache\";"), "{dot}");
    let node = dot
        .lines()
        .find(|l| l.trim_start().starts_with("\"orders/cache\" ["))
        .unwrap();
    assert!(
        node.contains("restarts=1") && node.contains("running") && node.contains("color=\"#c62828\""),
        "{node}"
    );
    assert!(dot.trim_end().ends_with('}'));
    tree.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_by_prefix_and_one_node() {
    let tree = start_tree(options()).await;
    let addr = addr(&tree);
    for n in [1, 2, 30] {
        start_job(&tree, n).await;
    }
    let table = inspect(addr, &["registry", "--prefix", "job/"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("REGISTRY") && lines[0].contains("KEY"),
        "{table}"
    );
    assert_eq!(lines.len(), 4, "a header and three jobs: {table}");
    assert!(
        lines[1].starts_with("app") && lines[1].contains("job/1") && lines[1].contains(r#"{"job":"job/1"}"#),
        "{table}"
    );
    let narrower = inspect(addr, &["registry", "--prefix", "job/3"]).await;
    assert!(
        narrower.contains("job/30") && !narrower.contains("job/1"),
        "{narrower}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&inspect(addr, &["registry", "--prefix", "job/", "--json"]).await).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[2]["value"], serde_json::json!({ "job": "job/30" }));

    let node = inspect(addr, &["node", "orders/cache"]).await;
    assert!(node.starts_with("node orders/cache\n"), "{node}");
    assert!(
        node.contains("spec: restart=transient shutdown=brutal_kill significant=false backoff=10ms..100ms"),
        "{node}"
    );
    assert!(
        node.contains("started as actor"),
        "history from the tree's start: {node}"
    );
    tree.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// Starts `arbor inspect events` and waits until it is subscribed; the child and its stdout lines.
async fn watch_events(
    addr: std::net::SocketAddr,
    args: &[&str],
) -> (
    tokio::process::Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) {
    let mut child = arbor()
        .args(["inspect", "--addr", &addr.to_string()])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(LONG, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        first.contains("watching stream") || first.contains("\"subscribed\""),
        "{first}"
    );
    (child, lines)
}

async fn line_with(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    needle: &str,
) -> String {
    tokio::time::timeout(LONG, async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("arbor inspect events goes on");
            if line.contains(needle) {
                return line;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no line with {needle:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_show_a_kill_and_the_restart() {
    let tree = start_tree(options()).await;
    let addr = addr(&tree);
    let job = start_job(&tree, 1).await;

    let (mut words, mut lines) = watch_events(addr, &["events"]).await;
    let (mut json, mut json_lines) = watch_events(addr, &["events", "--json", "--count", "2"]).await;
    job.kill().unwrap();
    let exited = line_with(&mut lines, "exited").await;
    assert!(
        exited.contains("orders/jobs/job#0 exited: killed (abnormal, restarting)"),
        "{exited}"
    );
    let restarted = line_with(&mut lines, "restarted").await;
    assert!(
        restarted.contains("orders/jobs/job#0 restarted as actor") && restarted.contains("(restart 1)"),
        "{restarted}"
    );
    words.kill().await.unwrap();

    let exited: serde_json::Value =
        serde_json::from_str(&line_with(&mut json_lines, "exited").await).unwrap();
    assert_eq!(exited["type"], "supervisor");
    assert_eq!(exited["event"], "exited");
    assert_eq!(exited["supervisor"], "orders/jobs");
    assert_eq!(exited["reason"], "killed");
    let restarted: serde_json::Value =
        serde_json::from_str(&line_with(&mut json_lines, "restarted").await).unwrap();
    assert_eq!(restarted["restart_count"], 1);
    assert_eq!(
        restarted["sequence"].as_u64().unwrap(),
        exited["sequence"].as_u64().unwrap() + 1
    );
    let status = tokio::time::timeout(LONG, json.wait()).await.unwrap().unwrap();
    assert!(status.success(), "--count 2 ends after two events");

    // With --replay, the events from the tree's start come first.
    let replayed = inspect(addr, &["events", "--replay", "--count", "1"]).await;
    assert!(replayed.lines().nth(1).unwrap().starts_with("#1 "), "{replayed}");
    tree.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "right\n").unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "wrong\n").unwrap();
    let tree = start_tree(options().token_file(&tokens)).await;
    let addr = addr(&tree).to_string();

    let output = arbor()
        .args(["inspect", "--addr", &addr, "--token-file"])
        .arg(&wrong)
        .arg("tree")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not authenticated") && !stderr.contains("right"),
        "{stderr}"
    );

    let output = arbor()
        .args(["inspect", "--addr", &addr, "--token-file"])
        .arg(&tokens)
        .arg("tree")
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    tree.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// True when `value` is an RFC 3339 timestamp (as `humantime` parses them).
fn is_rfc3339(value: &serde_json::Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| humantime::parse_rfc3339(s).is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_has_rfc3339_times_millisecond_durations_and_the_words_of_the_text() {
    let tree = start_tree(options()).await;
    let addr = addr(&tree);

    let json: serde_json::Value = serde_json::from_str(&inspect(addr, &["--json", "tree"]).await).unwrap();
    assert!(is_rfc3339(&json["captured_at"]), "{json:#}");
    assert!(json["root"]["uptime_ms"].is_u64(), "{json:#}");
    assert_eq!(json["root"]["kind"], "supervisor", "{json:#}");
    assert_eq!(json["root"]["status"], "running", "{json:#}");
    let cache = json["root"]["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "cache")
        .unwrap_or_else(|| panic!("{json:#}"));
    assert_eq!(cache["kind"], "worker");
    assert_eq!(cache["restart"], "transient");
    let text = serde_json::to_string(&json).unwrap();
    assert!(
        !text.contains("secs_since_epoch") && !text.contains("unix_ms"),
        "{text}"
    );

    let node: serde_json::Value =
        serde_json::from_str(&inspect(addr, &["--json", "node", "orders/cache"]).await).unwrap();
    assert_eq!(node["spec"]["restart"], "transient", "{node:#}");
    assert_eq!(node["spec"]["shutdown"], "brutal_kill", "{node:#}");
    assert_eq!(node["spec"]["kind"], "worker", "{node:#}");
    assert_eq!(node["spec"]["backoff"]["min_ms"], 10, "{node:#}");
    assert!(is_rfc3339(&node["history_since"]), "{node:#}");
    assert_eq!(node["history"][0]["kind"], "started", "{node:#}");
    assert!(is_rfc3339(&node["history"][0]["at"]), "{node:#}");
    assert!(node["node"]["uptime_ms"].is_u64(), "{node:#}");

    let line = inspect(addr, &["--json", "events", "--replay", "--count", "1"]).await;
    let event: serde_json::Value = serde_json::from_str(line.lines().nth(1).unwrap()).unwrap();
    assert!(is_rfc3339(&event["at"]), "{event:#}");
    assert!(event.get("at_unix_ms").is_none(), "{event:#}");
    tree.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_of_the_tree_is_reachable_by_its_path() {
    let tree = start_tree(options()).await;
    let addr = addr(&tree);
    start_job(&tree, 1).await;
    // A pooled connection: its id is its target, `grpc://127.0.0.1:1`, with `/` in it.
    let _lease = tree
        .acquire(arbor::connection::ConnectionConfig::parse("grpc://127.0.0.1:1?disableTls=true").unwrap())
        .await
        .unwrap();

    let json: serde_json::Value = serde_json::from_str(&inspect(addr, &["--json", "tree"]).await).unwrap();
    fn paths(node: &serde_json::Value, out: &mut Vec<String>) {
        out.push(node["path"].as_str().unwrap().to_string());
        for child in node["children"].as_array().unwrap() {
            paths(child, out);
        }
    }
    let mut all = Vec::new();
    paths(&json["root"], &mut all);
    assert!(
        all.iter().any(|p| p.contains("grpc://127.0.0.1:1")),
        "a connection node: {all:?}"
    );
    for path in &all {
        let node = inspect(addr, &["node", path]).await;
        assert!(node.starts_with(&format!("node {path}\n")), "{path}: {node}");
    }
    let short = inspect(addr, &["node", "cache"]).await;
    assert!(
        short.starts_with("node orders/cache\n"),
        "without the tree's name: {short}"
    );
    tree.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_filtered_by_kind_and_path() {
    let tree = start_tree(options()).await;
    let addr = addr(&tree);
    start_job(&tree, 1).await;
    // Held: cache, jobs, introspection and the job started; only jobs and its job are at or under `jobs`.
    let words = inspect(
        addr,
        &[
            "events",
            "--replay",
            "--kind",
            "exited,started",
            "--path",
            "jobs",
            "--count",
            "2",
        ],
    )
    .await;
    let lines: Vec<&str> = words.lines().collect();
    assert_eq!(lines.len(), 3, "{words}");
    assert!(lines[1].contains("orders/jobs started"), "{words}");
    assert!(lines[2].contains("orders/jobs/job#0 started"), "{words}");

    let json = inspect(
        addr,
        &[
            "--json",
            "events",
            "--replay",
            "--kind",
            "supervisor",
            "--path",
            "orders/cache",
            "--count",
            "1",
        ],
    )
    .await;
    let event: serde_json::Value = serde_json::from_str(json.lines().nth(1).unwrap()).unwrap();
    assert_eq!(event["child"], "cache", "{json}");
    assert_eq!(event["event"], "started", "{json}");
    tree.shutdown(Duration::from_secs(10)).await.unwrap();
}
