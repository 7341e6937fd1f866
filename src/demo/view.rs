//! The live view: a frame redrawn in place on a terminal, a status line at a time otherwise.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use super::ledger::Totals;
use super::observe::Counts;

/// One node as the view shows it.
pub struct NodeView {
    pub name: String,
    pub role: String,
    pub channels: Vec<u32>,
    /// The node's tree, rendered.
    pub tree: String,
}

/// Everything one frame shows.
pub struct Frame<'a> {
    pub phase: &'a str,
    pub elapsed: Duration,
    pub duration: Duration,
    pub totals: Totals,
    pub faults: usize,
    pub counts: Counts,
    pub nodes: Vec<NodeView>,
    pub recent: Vec<String>,
}

/// Renders the full frame (the terminal view).
pub fn render(frame: &Frame<'_>) -> String {
    let mut out = String::new();
    let t = frame.totals;
    let _ = writeln!(
        out,
        "── {} · {:.1}s of {}s ──",
        frame.phase,
        frame.elapsed.as_secs_f64(),
        frame.duration.as_secs()
    );
    let _ = writeln!(
        out,
        "records   produced {:>8}  delivered {:>8}  duplicates {:>6}  behind {:>6}",
        t.produced, t.delivered, t.duplicates, t.missing
    );
    let _ = writeln!(out, "          {}", bar(t.unique, t.produced, 50));
    let c = frame.counts;
    let _ = writeln!(
        out,
        "faults {:>3}  restarts {:>3}  hand-overs {:>3}  failovers {:>2}  reconnects {:>3}  checkpoints {}",
        frame.faults, c.restarts, c.hand_overs, c.failovers, c.reconnects, c.checkpoints
    );
    for node in &frame.nodes {
        let channels: Vec<String> = node.channels.iter().map(u32::to_string).collect();
        let _ = writeln!(
            out,
            "\n{} · {} · channels [{}]",
            node.name,
            node.role,
            channels.join(" ")
        );
        out.push_str(&node.tree);
    }
    out.push('\n');
    for line in &frame.recent {
        let _ = writeln!(out, "{line}");
    }
    out
}

/// One line of progress (the plain view).
pub fn status_line(frame: &Frame<'_>) -> String {
    let t = frame.totals;
    let c = frame.counts;
    let owners: Vec<String> = frame
        .nodes
        .iter()
        .map(|n| format!("{} {} {}ch", n.name, n.role, n.channels.len()))
        .collect();
    format!(
        "t={:.1}s {}: produced {} delivered {} duplicates {} behind {} | faults {} restarts {} hand-overs {} failovers {} | {}",
        frame.elapsed.as_secs_f64(),
        frame.phase,
        t.produced,
        t.delivered,
        t.duplicates,
        t.missing,
        frame.faults,
        c.restarts,
        c.hand_overs,
        c.failovers,
        owners.join(", ")
    )
}

fn bar(done: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 {
        0
    } else {
        ((done.min(total) as f64 / total as f64) * width as f64).round() as usize
    };
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

/// Where frames go: redrawn in place on a terminal, as plain lines otherwise.
pub struct Screen {
    terminal: bool,
    drawn_lines: usize,
}

impl Screen {
    pub fn new() -> Screen {
        Screen {
            terminal: std::io::stdout().is_terminal(),
            drawn_lines: 0,
        }
    }

    /// Shows `frame`; on plain output, also prints `fresh` history lines first.
    pub fn show(&mut self, frame: &Frame<'_>, fresh: &[String]) {
        let mut stdout = std::io::stdout().lock();
        if self.terminal {
            let text = render(frame);
            // Up to the first line of the previous frame, then clear everything below it.
            if self.drawn_lines > 0 {
                let _ = write!(stdout, "\x1b[{}A\r\x1b[J", self.drawn_lines);
            }
            let _ = write!(stdout, "{text}");
            self.drawn_lines = text.lines().count();
        } else {
            for line in fresh {
                let _ = writeln!(stdout, "{line}");
            }
            let _ = writeln!(stdout, "{}", status_line(frame));
        }
        let _ = stdout.flush();
    }

    /// Whether frames are redrawn in place.
    pub fn is_terminal(&self) -> bool {
        self.terminal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Frame<'static> {
        Frame {
            phase: "faults",
            elapsed: Duration::from_millis(2_500),
            duration: Duration::from_secs(10),
            totals: Totals {
                produced: 100,
                delivered: 60,
                unique: 50,
                duplicates: 10,
                missing: 50,
                ..Totals::default()
            },
            faults: 2,
            counts: Counts::default(),
            nodes: vec![NodeView {
                name: "node-a".into(),
                role: "leader".into(),
                channels: vec![0, 2],
                tree: "node-a [supervisor]\n".into(),
            }],
            recent: vec!["   2.0s  killed the subscriber of node-a".into()],
        }
    }

    #[test]
    fn a_frame_shows_progress_nodes_and_history() {
        let text = render(&frame());
        assert!(text.contains("produced      100"), "{text}");
        assert!(
            text.contains(&format!("[{}{}]", "#".repeat(25), ".".repeat(25))),
            "{text}"
        );
        assert!(text.contains("node-a · leader · channels [0 2]"), "{text}");
        assert!(text.ends_with("killed the subscriber of node-a\n"), "{text}");
    }

    #[test]
    fn a_status_line_is_one_line() {
        let line = status_line(&frame());
        assert!(!line.contains('\n'));
        assert!(
            line.starts_with("t=2.5s faults: produced 100 delivered 60"),
            "{line}"
        );
        assert!(line.ends_with("node-a leader 2ch"), "{line}");
    }

    #[test]
    fn the_bar_is_empty_before_anything_is_produced() {
        assert_eq!(bar(0, 0, 4), "[....]");
        assert_eq!(bar(9, 4, 4), "[####]");
    }
}
