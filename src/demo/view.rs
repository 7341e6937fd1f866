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

/// Renders the full frame (the terminal view) for a terminal of `cols` × `rows`: no line wider, never taller
/// (a frame taller than the terminal cannot be redrawn in place and piles up in the scrollback). The nodes'
/// trees share what the fixed lines leave; a cut tree says how many lines it lost.
pub fn render(frame: &Frame<'_>, cols: usize, rows: usize) -> String {
    let mut head = String::new();
    let t = frame.totals;
    let _ = writeln!(
        head,
        "── {} · {:.1}s of {} ──",
        frame.phase,
        frame.elapsed.as_secs_f64(),
        humantime::format_duration(frame.duration)
    );
    let _ = writeln!(
        head,
        "records produced {} · delivered {} · duplicates {} · behind {}",
        t.produced, t.delivered, t.duplicates, t.missing
    );
    let percent = (t.unique.min(t.produced) * 100)
        .checked_div(t.produced)
        .unwrap_or(0);
    let _ = writeln!(
        head,
        "delivered {} {percent:>3}%   behind = not yet delivered",
        bar(t.unique, t.produced, 24)
    );
    let c = frame.counts;
    let _ = writeln!(
        head,
        "faults {} · restarts {} · hand-overs {} · failovers {}",
        frame.faults, c.restarts, c.hand_overs, c.failovers
    );
    let _ = writeln!(
        head,
        "reconnects {} · checkpoints {}",
        c.reconnects, c.checkpoints
    );
    let mut tail = String::from("\n");
    for line in &frame.recent {
        let _ = writeln!(tail, "{line}");
    }
    // Whatever is left goes to the nodes: a title line each, and an equal share of their trees.
    let fixed = head.lines().count() + tail.lines().count();
    let per_node = rows.saturating_sub(fixed) / frame.nodes.len().max(1);
    let mut nodes = String::new();
    for node in &frame.nodes {
        let channels: Vec<String> = node.channels.iter().map(u32::to_string).collect();
        let _ = writeln!(
            nodes,
            "{} · {} · channels [{}]",
            node.name,
            node.role,
            channels.join(" ")
        );
        let tree: Vec<&str> = node.tree.lines().collect();
        let room = per_node.saturating_sub(1);
        if tree.len() <= room {
            tree.iter().for_each(|l| {
                let _ = writeln!(nodes, "{l}");
            });
        } else if room > 0 {
            tree[..room - 1].iter().for_each(|l| {
                let _ = writeln!(nodes, "{l}");
            });
            let _ = writeln!(
                nodes,
                "  … {} more lines of {}'s tree",
                tree.len() - (room - 1),
                node.name
            );
        }
    }
    fit(&format!("{head}{nodes}{tail}"), cols, rows)
}

/// `text` cut to `rows` lines of at most `cols` characters (the last lines kept: the history is newest last,
/// the head is repeated by every frame anyway).
fn fit(text: &str, cols: usize, rows: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(rows);
    let mut out = String::new();
    for line in &lines[skip..] {
        let cut: String = if line.chars().count() > cols {
            line.chars()
                .take(cols.saturating_sub(1))
                .chain(std::iter::once('…'))
                .collect()
        } else {
            (*line).to_string()
        };
        out.push_str(&cut);
        out.push('\n');
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
            let (cols, rows) = crossterm::terminal::size().unwrap_or((80, 24));
            // One row is left for the cursor below the frame.
            let text = render(frame, usize::from(cols), usize::from(rows).saturating_sub(1));
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
        let text = render(&frame(), 80, 23);
        assert!(text.contains("records produced 100 · delivered 60"), "{text}");
        assert!(
            text.contains(&format!("delivered [{}{}]  50%", "#".repeat(12), ".".repeat(12))),
            "{text}"
        );
        assert!(text.contains("behind = not yet delivered"), "{text}");
        assert!(
            text.lines().all(|l| !l.ends_with('…')),
            "nothing cut at 80 columns: {text}"
        );
        assert!(text.contains("node-a · leader · channels [0 2]"), "{text}");
        assert!(text.ends_with("killed the subscriber of node-a\n"), "{text}");
    }

    #[test]
    fn a_frame_fits_an_80_by_24_terminal_whatever_the_trees() {
        let mut big = frame();
        let tall_tree: String = (0..60)
            .map(|i| format!("  child-{i} [worker] running since 12s, restarted 0 times, a long line\n"))
            .collect();
        big.nodes = (0..2)
            .map(|i| NodeView {
                name: format!("node-{i}"),
                role: "follower".into(),
                channels: (0..8).collect(),
                tree: tall_tree.clone(),
            })
            .collect();
        big.totals.produced = 123_456_789;
        let text = render(&big, 80, 23);
        assert!(
            text.lines().count() <= 23,
            "{} lines:\n{text}",
            text.lines().count()
        );
        assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
        assert!(text.contains("more lines of node-0's tree"), "{text}");
        assert!(
            text.contains("node-1 · follower"),
            "both nodes keep their title: {text}"
        );
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
