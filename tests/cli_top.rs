//! `arbor top`: the binary under a pseudo-terminal (libc's openpty; the screen read back through the vt100
//! terminal emulator) shows the tree, then a kill and the restart in its event feed, and quits with 0 on `q`;
//! and the view rendered into ratatui's `TestBackend` from the test.

mod inspect_common;

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use arbor::introspect::ClientOptions;
use arbor::top::Top;
use arbor_proto::inspect::v1::supervisor_event::Kind as S;
use inspect_common::*;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{Event, KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;

const ROWS: u16 = 40;
const COLS: u16 = 140;

/// A child process on a pseudo-terminal, and the screen it draws.
struct Pty {
    child: Child,
    master: std::fs::File,
    output: mpsc::Receiver<Vec<u8>>,
    screen: vt100::Parser,
}

impl Pty {
    fn spawn(command: &mut Command) -> Pty {
        Pty::spawn_sized(command, ROWS, COLS)
    }

    fn spawn_sized(command: &mut Command, rows: u16, cols: u16) -> Pty {
        let (mut master, mut slave) = (-1, -1);
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two descriptors we then own; the other arguments are valid or null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just opened by openpty and are owned by nobody else.
        let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let stdio = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
        command
            .stdin(stdio(&slave))
            .stdout(stdio(&slave))
            .stderr(stdio(&slave));
        // SAFETY: only async-signal-safe calls between fork and exec: a new session whose controlling
        // terminal is the pty (already the child's stdin).
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() == -1 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        drop(slave); // the child holds it: reading the master ends when the child is gone
        let master = std::fs::File::from(master);
        let mut reader = master.try_clone().unwrap();
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Pty {
            child,
            master,
            output,
            screen: vt100::Parser::new(rows.try_into().unwrap(), cols.try_into().unwrap(), 0),
        }
    }

    fn contents(&self) -> String {
        self.screen.screen().contents()
    }

    /// Feeds the screen until it shows what `seen` looks for (panics with the screen after [`LONG`]).
    fn wait_for(&mut self, what: &str, seen: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + LONG;
        while !seen(&self.contents()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(bytes) => self.screen.process(&bytes),
                Err(_) => panic!("the screen never showed {what}:\n{}", self.contents()),
            }
        }
    }

    fn type_keys(&mut self, keys: &[u8]) {
        self.master.write_all(keys).unwrap();
        self.master.flush().unwrap();
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + LONG;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "arbor top did not exit:\n{}",
                self.contents()
            );
            // Drain what it still draws (it leaves the alternate screen) while waiting.
            if let Ok(bytes) = self.output.recv_timeout(Duration::from_millis(50)) {
                self.screen.process(&bytes);
            }
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbor_top_on_a_terminal_shows_the_tree_and_the_events_and_quits_on_q() {
    let tree = start_tree(options()).await;
    let job = start_job(&tree, 1).await;
    let addr = addr(&tree).to_string();
    let mut top = Command::new(env!("CARGO_BIN_EXE_arbor"));
    top.args(["top", "--addr", &addr, "--interval", "300ms"]);
    let mut pty = Pty::spawn(&mut top);

    tokio::task::block_in_place(|| {
        pty.wait_for("the tree", |screen| {
            screen.contains("orders") && screen.contains("cache") && screen.contains("introspection")
        })
    });
    let screen = pty.contents();
    assert!(
        screen.contains("arbor top orders @ http://"),
        "the header:\n{screen}"
    );
    assert!(screen.contains("job#0"), "the job under jobs:\n{screen}");
    assert!(screen.contains("job/1"), "the registry:\n{screen}");

    job.kill().unwrap();
    tokio::task::block_in_place(|| {
        pty.wait_for("the kill and the restart", |screen| {
            screen.contains("orders/jobs/job#0 exited: killed")
                && screen.contains("orders/jobs/job#0 restarted")
        })
    });
    tokio::task::block_in_place(|| {
        pty.wait_for("the restart count", |screen| {
            screen
                .lines()
                .any(|l| l.contains("job#0") && l.contains("restarts=1"))
        })
    });

    pty.type_keys(b"q");
    let status = tokio::task::block_in_place(|| pty.wait_exit());
    assert!(status.success(), "q quits with 0: {status:?}");
    tree.shutdown(Duration::from_secs(10)).await.unwrap();
}

fn text(terminal: &Terminal<TestBackend>) -> String {
    let buffer = terminal.backend().buffer();
    let width = buffer.area.width as usize;
    buffer
        .content
        .chunks(width)
        .map(|row| row.iter().map(|cell| cell.symbol()).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_renders_the_tree_registries_and_events_into_a_test_backend() {
    let tree = start_tree(options()).await;
    let job = start_job(&tree, 7).await;
    let options = ClientOptions::new(addr(&tree).to_string());
    let mut top = Top::connect(&options).await.unwrap();
    let mut watch = top.watch().await.unwrap();
    job.kill().unwrap();
    tokio::time::timeout(LONG, async {
        loop {
            let message = watch.message().await.unwrap().expect("the watch goes on");
            let restarted = matches!(
                &message.kind,
                Some(arbor_proto::inspect::v1::watch_events_response::Kind::Event(e))
                    if matches!(supervisor_kind(e, "orders/jobs", "job#"), Some(S::Restarted(_)))
            );
            top.on_watch_message(message);
            if restarted {
                break;
            }
        }
    })
    .await
    .expect("the restart comes");
    top.refresh().await;

    let mut terminal = Terminal::new(TestBackend::new(COLS, ROWS)).unwrap();
    terminal.draw(|frame| top.draw(frame)).unwrap();
    let screen = text(&terminal);
    assert!(screen.contains("arbor top orders"), "{screen}");
    let job_line = screen
        .lines()
        .find(|l| l.contains("job#0"))
        .unwrap_or_else(|| panic!("{screen}"));
    assert!(job_line.contains("running restarts=1"), "{job_line}");
    assert!(screen.contains("└─ introspection running restarts=0"), "{screen}");
    assert!(screen.contains("job/7"), "the registry:\n{screen}");
    assert!(
        screen.contains("orders/jobs/job#0 exited: killed (abnormal, restarting)"),
        "{screen}"
    );
    assert!(
        screen.contains("orders/jobs/job#0 restarted as actor"),
        "{screen}"
    );
    assert!(
        top.feed()
            .any(|line| line.alarming && line.text.contains("killed")),
        "a kill is bad news"
    );

    // The loop: draws, and `q` ends it.
    let q = Event::Key(KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE));
    let keys = futures::stream::iter(vec![Ok(q)]);
    tokio::time::timeout(
        LONG,
        arbor::top::run_on(&mut top, &mut terminal, keys, Duration::from_secs(1)),
    )
    .await
    .expect("q quits")
    .unwrap();
    assert!(text(&terminal).contains("orders"), "drawn before quitting");
    tree.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// The rows of the pane whose top border holds `title`, between its side borders, trailing blanks dropped.
fn pane_rows(screen: &str, title: &str) -> Vec<String> {
    let lines: Vec<&str> = screen.lines().collect();
    let top = lines
        .iter()
        .position(|l| l.contains(title))
        .unwrap_or_else(|| panic!("no pane {title:?}:\n{screen}"));
    let left = lines[top][..lines[top].find(title).unwrap()].chars().count();
    lines[top + 1..]
        .iter()
        .take_while(|l| l.chars().nth(left) == Some('│'))
        .map(|l| {
            let inner: String = l.chars().skip(left + 1).take_while(|c| *c != '│').collect();
            inner.trim_end().to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbor_top_at_80_and_140_columns_lists_its_keys_and_scrolls_the_tree_and_the_events() {
    let tree = start_tree(options()).await;
    start_job(&tree, 1).await;
    let addr = addr(&tree).to_string();
    for cols in [80, 140] {
        let mut top = Command::new(env!("CARGO_BIN_EXE_arbor"));
        top.args(["top", "--addr", &addr, "--interval", "300ms"]);
        let mut pty = Pty::spawn_sized(&mut top, 30, cols);
        tokio::task::block_in_place(|| {
            pty.wait_for("the tree and the job's start", |screen| {
                screen.contains("introspection") && screen.contains("orders/jobs/job#0 started")
            })
        });
        let screen = pty.contents();
        let footer = screen.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
        for key in [
            "q  quit",
            "tab  pane",
            "↑↓  scroll",
            "pgup/pgdn  page",
            "home/end  ends",
        ] {
            assert!(
                footer.contains(key),
                "{cols} columns, the footer lists {key:?}: {footer}"
            );
        }
        let tree_rows = pane_rows(&screen, "┌ tree ◂ ");
        assert!(tree_rows[0].starts_with("orders"), "{cols} columns:\n{screen}");
        for row in tree_rows.iter().filter(|r| !r.is_empty()) {
            assert!(
                row.ends_with("restarts=0") || row.ends_with('…'),
                "{cols} columns, whole lines: {row:?}\n{screen}"
            );
        }
        assert!(
            screen.contains("TUNNEL "),
            "{cols} columns, the channels' header:\n{screen}"
        );
        let started = pane_rows(&screen, "┌ events ")
            .into_iter()
            .find(|r| r.contains("orders/jobs/job#0"))
            .unwrap();
        assert!(
            started.ends_with(')') || started.ends_with('…'),
            "{cols} columns: {started:?}"
        );

        // Down scrolls the tree a line; tab picks the events, PgUp scrolls them back, End follows again.
        pty.type_keys(b"\x1b[B");
        tokio::task::block_in_place(|| {
            pty.wait_for("the tree scrolled", |screen| {
                pane_rows(screen, "┌ tree ◂ ")
                    .first()
                    .is_some_and(|r| !r.starts_with("orders"))
            })
        });
        pty.type_keys(b"\t");
        tokio::task::block_in_place(|| {
            pty.wait_for("the events picked", |screen| screen.contains(" events ◂ "))
        });
        pty.type_keys(b"\x1b[5~");
        tokio::task::block_in_place(|| {
            pty.wait_for("the events scrolled back", |screen| {
                screen.contains("scrolled back")
            })
        });
        pty.type_keys(b"\x1b[F");
        tokio::task::block_in_place(|| {
            pty.wait_for("the events following", |screen| {
                screen.contains(" events ◂ ") && !screen.contains("scrolled back")
            })
        });
        pty.type_keys(b"q");
        let status = tokio::task::block_in_place(|| pty.wait_exit());
        assert!(status.success(), "{status:?}");
    }
    tree.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// The rows of the registry pane from the one holding `key` to the next entry (an entry's value may take
/// several rows; the next entry's row starts with its registry's name).
fn entry_rows(pane: &[String], key: &str) -> Vec<String> {
    let start = pane
        .iter()
        .position(|r| r.contains(key))
        .unwrap_or_else(|| panic!("no row for {key}: {pane:#?}"));
    let mut rows = vec![pane[start].clone()];
    rows.extend(
        pane[start + 1..]
            .iter()
            .take_while(|r| r.starts_with(' ') && !r.trim().is_empty())
            .cloned(),
    );
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_pane_shows_a_long_value_whole_at_80_and_140_columns() {
    let tree = start_tree(options()).await;
    start_job(&tree, 1).await;
    // a value as long as the ones arbor's own registries hold (connections, activators)
    let (holder, _) = arbor::ractor::Actor::spawn(None, Idle, ()).await.unwrap();
    let value = serde_json::json!({
        "endpoint": "grpc://orders-db.internal.example:5432",
        "role": "primary",
        "zone": "eu-west-1a",
        "since": "2026-12-06T04:20:00Z",
    });
    tree.registry().register("db/primary", &holder, value).unwrap();
    let mut top = Top::connect(&ClientOptions::new(addr(&tree).to_string()))
        .await
        .unwrap();
    top.refresh().await;

    for cols in [80, 140] {
        let mut terminal = Terminal::new(TestBackend::new(cols, ROWS)).unwrap();
        terminal.draw(|frame| top.draw(frame)).unwrap();
        let screen = text(&terminal);
        let pane = pane_rows(&screen, "┌ registry ");
        let rows = entry_rows(&pane, "db/primary");
        let shown = rows.join(" ");
        for part in [
            "endpoint=grpc://orders-db.internal.example:5432",
            "role=primary",
            "zone=eu-west-1a",
            "since=2026-12-06T04:20:00Z",
        ] {
            assert!(
                shown.split_whitespace().any(|word| word == part),
                "{cols} columns: {part} whole in the registry pane:\n{}",
                pane.join("\n")
            );
        }
        assert!(
            entry_rows(&pane, "job/1").join(" ").contains("job=job/1"),
            "{cols} columns:\n{}",
            pane.join("\n")
        );
    }
    tree.shutdown(Duration::from_secs(10)).await.unwrap();
}
