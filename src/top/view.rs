//! The layout of `arbor top`: a header, the tree (left), registries and channels (right), the event feed
//! (bottom), a footer with the keys and the status. Below 100 columns the registries and channels go under the
//! tree instead of beside it; a line too long for its pane ends in `…` at a word's end rather than mid-word.

use arbor_actors::supervisor::{ChildKind, ChildStatus, TreeSnapshot};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};
use ratatui::Frame;

use super::Top;
use crate::inspect::channel_words;

pub(super) fn draw(top: &Top, frame: &mut Frame<'_>) {
    let [header, middle, feed, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Percentage(60),
        Constraint::Min(5),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let [tree_area, right] = if middle.width < NARROW {
        Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(middle)
    } else {
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(middle)
    };
    let [registry_area, channels_area] =
        Layout::vertical([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(right);

    frame.render_widget(Paragraph::new(header_line(top)), header);
    frame.render_widget(tree_widget(top, tree_area), tree_area);
    frame.render_widget(registry_widget(top), registry_area);
    frame.render_widget(channels_widget(top), channels_area);
    frame.render_widget(feed_widget(top, feed), feed);
    frame.render_widget(Paragraph::new(footer(top, status.width as usize)), status);
}

/// Narrower than this, the panes stack.
const NARROW: u16 = 100;

/// The keys, then the status as far as it fits.
fn footer(top: &Top, width: usize) -> Line<'static> {
    let key = Style::default().add_modifier(Modifier::REVERSED);
    let mut spans = Vec::new();
    let mut used = 0;
    for (k, what) in [
        ("q", "quit"),
        ("tab", "pane"),
        ("↑↓", "scroll"),
        ("pgup/pgdn", "page"),
        ("home/end", "ends"),
    ] {
        spans.push(Span::styled(format!(" {k} "), key));
        spans.push(Span::raw(format!(" {what} ")));
        used += k.chars().count() + what.chars().count() + 4;
    }
    spans.push(Span::raw(fit(
        &format!(" {}", top.status),
        width.saturating_sub(used),
    )));
    Line::from(spans)
}

/// `text` in at most `width` columns: whole, or cut at a word's end with `…`.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let head: String = text.chars().take(width - 1).collect();
    let cut = match head.rfind(' ') {
        Some(at) if at > 0 && head[..at].trim_end().chars().count() > width / 3 => {
            head[..at].trim_end().to_string()
        }
        _ => head,
    };
    format!("{cut}…")
}

fn header_line(top: &Top) -> Line<'static> {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let mut spans = vec![Span::styled("arbor top ", bold)];
    match &top.tree {
        Some(tree) => {
            spans.push(Span::styled(tree.name.clone(), bold.fg(Color::Cyan)));
            spans.push(Span::raw(format!(
                " @ {}   nodes {}   restarts {}   events {}",
                top.addr,
                tree.snapshot.nodes().len(),
                tree.snapshot.total_restarts(),
                top.events_seen
            )));
        }
        None => spans.push(Span::raw(format!("@ {} (no tree yet)", top.addr))),
    }
    Line::from(spans)
}

fn status_style(status: ChildStatus) -> Style {
    match status {
        ChildStatus::Running => Style::default().fg(Color::Green),
        ChildStatus::Restarting => Style::default().fg(Color::Yellow),
        ChildStatus::Terminated => Style::default().fg(Color::Red),
    }
}

/// One line per node: branch, id, kind, status, restarts (highlighted when not zero).
fn tree_lines(node: &TreeSnapshot, prefix: &str, last: bool, root: bool, out: &mut Vec<Line<'static>>) {
    let (branch, next_prefix) = if root {
        (String::new(), String::new())
    } else if last {
        ("└─ ".to_string(), format!("{prefix}   "))
    } else {
        ("├─ ".to_string(), format!("{prefix}│  "))
    };
    let kind = match node.kind {
        ChildKind::Worker => "",
        ChildKind::Supervisor => " [sup]",
        ChildKind::DynamicSupervisor => " [dyn]",
    };
    let status = match node.status {
        ChildStatus::Running => "running",
        ChildStatus::Restarting => "restarting",
        ChildStatus::Terminated => "terminated",
    };
    let restarts_style = if node.restart_count > 0 {
        Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
    } else {
        Style::default().fg(Color::DarkGray)
    };
    out.push(Line::from(vec![
        Span::styled(format!("{prefix}{branch}"), Style::default().fg(Color::DarkGray)),
        Span::styled(node.id.clone(), Style::default().add_modifier(Modifier::BOLD)),
        Span::raw(format!("{kind} ")),
        Span::styled(status, status_style(node.status)),
        Span::styled(format!(" restarts={}", node.restart_count), restarts_style),
    ]));
    for (i, child) in node.children.iter().enumerate() {
        tree_lines(child, &next_prefix, i + 1 == node.children.len(), false, out);
    }
}

fn block(title: &str) -> Block<'static> {
    Block::default().borders(Borders::ALL).title(Span::styled(
        format!(" {title} "),
        Style::default().add_modifier(Modifier::BOLD),
    ))
}

/// A scrolling pane's block: its title marked and its border coloured when the scroll keys move it.
fn pane_block(title: &str, focused: bool) -> Block<'static> {
    if focused {
        block(&format!("{title} ◂")).border_style(Style::default().fg(Color::Cyan))
    } else {
        block(title)
    }
}

/// A line shortened to `width` columns (see [`fit`]), its spans' styles kept.
fn fit_line(line: Line<'static>, width: usize) -> Line<'static> {
    let mut left = width;
    let total: usize = line.spans.iter().map(|s| s.content.chars().count()).sum();
    if total <= width {
        return line;
    }
    let mut spans = Vec::new();
    for span in line.spans {
        let n = span.content.chars().count();
        if n < left {
            left -= n;
            spans.push(span);
        } else {
            spans.push(Span::styled(fit(&span.content, left), span.style));
            break;
        }
    }
    Line::from(spans)
}

fn tree_widget(top: &Top, area: ratatui::layout::Rect) -> Paragraph<'static> {
    let mut lines = Vec::new();
    if let Some(tree) = &top.tree {
        tree_lines(&tree.snapshot, "", true, true, &mut lines);
    }
    let width = area.width.saturating_sub(2) as usize;
    let lines: Vec<_> = lines
        .into_iter()
        .skip(top.tree_scroll)
        .map(|l| fit_line(l, width))
        .collect();
    Paragraph::new(lines).block(pane_block("tree", top.focus == super::Pane::Tree))
}

fn registry_widget(top: &Top) -> Table<'static> {
    let rows = top.registry.iter().filter(|e| e.channel.is_none()).map(|e| {
        Row::new(vec![
            e.registry.clone(),
            e.key.clone(),
            e.actor_id.clone(),
            e.value_json.clone(),
        ])
    });
    Table::new(
        rows,
        [
            Constraint::Length(11),
            Constraint::Percentage(40),
            Constraint::Length(8),
            Constraint::Percentage(60),
        ],
    )
    .header(
        Row::new(vec!["REGISTRY", "KEY", "ACTOR", "VALUE"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(block("registry"))
}

fn channels_widget(top: &Top) -> Table<'static> {
    let rows = top.registry.iter().filter_map(|e| e.channel.as_ref()).map(|c| {
        let lag_style = match c.lag {
            Some(0) => Style::default().fg(Color::Green),
            Some(_) => Style::default().fg(Color::Yellow),
            None => Style::default().fg(Color::DarkGray),
        };
        Row::new(vec![
            ratatui::widgets::Cell::from(c.tunnel_id.clone()),
            ratatui::widgets::Cell::from(c.channel_id.to_string()),
            ratatui::widgets::Cell::from(c.lag.map_or_else(|| "?".into(), |l| l.to_string()))
                .style(lag_style),
            ratatui::widgets::Cell::from(channel_words(c)),
        ])
    });
    Table::new(
        rows,
        [
            Constraint::Length(16),
            Constraint::Length(4),
            Constraint::Length(8),
            Constraint::Fill(1),
        ],
    )
    .header(
        Row::new(vec!["TUNNEL", "CH", "LAG", "PROGRESS"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(block("channels"))
}

fn feed_widget(top: &Top, area: ratatui::layout::Rect) -> Paragraph<'static> {
    let height = area.height.saturating_sub(2) as usize;
    let width = area.width.saturating_sub(2) as usize;
    let end = top.feed.len().saturating_sub(top.feed_scroll);
    let skip = end.saturating_sub(height);
    let lines: Vec<Line<'static>> = top
        .feed
        .iter()
        .take(end)
        .skip(skip)
        .map(|line| {
            let style = if line.alarming {
                Style::default().fg(Color::Red)
            } else {
                Style::default()
            };
            let place = if line.sequence > 0 {
                format!("{} #{:<5} ", line.clock, line.sequence)
            } else {
                String::new()
            };
            fit_line(
                Line::from(vec![
                    Span::styled(place, Style::default().fg(Color::DarkGray)),
                    Span::styled(line.text.clone(), style),
                ]),
                width,
            )
        })
        .collect();
    let title = if top.feed_scroll > 0 {
        format!("events (scrolled back {}; end follows)", top.feed_scroll)
    } else {
        "events".to_string()
    };
    Paragraph::new(lines).block(pane_block(&title, top.focus == super::Pane::Events))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_too_long_ends_at_a_word_with_an_ellipsis() {
        assert_eq!(fit("orders/jobs started", 40), "orders/jobs started");
        assert_eq!(
            fit("orders/jobs/job#0 exited: killed (abnormal)", 30),
            "orders/jobs/job#0 exited:…"
        );
        assert_eq!(
            fit("grpc://127.0.0.1:7700#6cc3e12676e370cf#0", 12),
            "grpc://127.…"
        );
        let line = Line::from(vec![
            Span::raw("02:43:12.734 #4     "),
            Span::raw("orders/registry started (actor 0.14)"),
        ]);
        let fitted = fit_line(line, 40);
        let text: String = fitted.spans.iter().map(|s| s.content.as_ref()).collect();
        assert_eq!(text, "02:43:12.734 #4     orders/registry…");
        assert!(text.chars().count() <= 40);
    }
}
