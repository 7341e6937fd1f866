//! The layout of `arbor top`: a header, the tree (left), registries and channels (right), the event feed
//! (bottom), a footer with the keys and the status. Below 100 columns the registries and channels go under the
//! tree instead of beside it; a line too long for its pane ends in `…` at a word's end rather than mid-word. A
//! registry entry's value is shown as `name=value` words wrapped over up to four lines of its column.

use arbor_actors::supervisor::{ChildKind, ChildStatus, TreeSnapshot};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};
use ratatui::Frame;

use super::Top;
use crate::inspect::channel_words;
use arbor_proto::inspect::v1 as pb;

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
    frame.render_widget(registry_widget(top, registry_area), registry_area);
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

/// How many lines one registry entry's value may take before it ends in `…`.
const VALUE_LINES: usize = 4;

/// An entry's value for people: an object's fields as `name=value` words (nested ones as `outer.inner=`,
/// strings unquoted, null as `-`), anything else as its JSON.
fn value_words(json: &str) -> String {
    fn words(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(fields) if !fields.is_empty() => {
                for (name, field) in fields {
                    let name = if prefix.is_empty() {
                        name.clone()
                    } else {
                        format!("{prefix}.{name}")
                    };
                    words(&name, field, out);
                }
            }
            scalar => {
                let text = match scalar {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => "-".to_string(),
                    other => other.to_string(),
                };
                out.push(if prefix.is_empty() {
                    text
                } else {
                    format!("{prefix}={text}")
                });
            }
        }
    }
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(value) => {
            let mut out = Vec::new();
            words("", &value, &mut out);
            out.join(" ")
        }
        Err(_) => json.to_string(),
    }
}

/// `text` wrapped at spaces into lines of at most `width` columns (a word wider than that is split), at most
/// `max_lines` of them: the last one ends in `…` when the rest does not fit.
fn wrap(text: &str, width: usize, max_lines: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let mut word: Vec<char> = word.chars().collect();
        let used = line.chars().count();
        if used > 0 && used + 1 + word.len() <= width {
            line.push(' ');
            line.extend(&word);
            continue;
        }
        if used > 0 {
            lines.push(std::mem::take(&mut line));
        }
        while word.len() > width {
            lines.push(word.drain(..width).collect());
        }
        line = word.into_iter().collect();
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    if lines.len() > max_lines {
        let rest = lines.split_off(max_lines - 1).join(" ");
        lines.push(fit(&rest, width));
    }
    lines
}

/// Narrower than this, a registry entry's value goes under its key instead of beside it.
const VALUE_BESIDE: usize = 48;

/// The registry pane: `REGISTRY KEY ACTOR VALUE` with the value wrapped in its column, or, when that column
/// would be narrower than [`VALUE_BESIDE`], each value under its entry's row across the pane.
fn registry_widget(top: &Top, area: ratatui::layout::Rect) -> Paragraph<'static> {
    let entries: Vec<_> = top.registry.iter().filter(|e| e.channel.is_none()).collect();
    let inner = area.width.saturating_sub(2) as usize;
    let widest = |header: &str, column: fn(&pb::RegistryEntry) -> &str| {
        entries
            .iter()
            .map(|e| column(e).chars().count())
            .chain([header.len()])
            .max()
            .unwrap_or(0)
    };
    let registry_width = widest("REGISTRY", |e| &e.registry);
    let actor_width = widest("ACTOR", |e| &e.actor_id);
    // Keys as wide as the widest, but never more than a third of the pane.
    let key_width = widest("KEY", |e| &e.key).min((inner / 3).max(3));
    let value_column = registry_width + key_width + actor_width + 6;
    let beside = inner.saturating_sub(value_column) >= VALUE_BESIDE;
    let row = |registry: &str, key: &str, actor: &str| {
        format!("{registry:registry_width$}  {key:key_width$}  {actor:actor_width$}  ")
    };
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let mut lines = vec![Line::styled(
        fit(row("REGISTRY", "KEY", "ACTOR").trim_end(), inner) + if beside { "  VALUE" } else { "" },
        bold,
    )];
    for e in entries {
        let head = row(&e.registry, &fit(&e.key, key_width), &e.actor_id);
        let words = value_words(&e.value_json);
        if beside {
            let value = wrap(&words, inner - value_column, VALUE_LINES);
            let indent = " ".repeat(value_column);
            for (i, part) in value.into_iter().enumerate() {
                let lead = if i == 0 { head.clone() } else { indent.clone() };
                lines.push(Line::raw(format!("{lead}{part}")));
            }
        } else {
            lines.push(Line::raw(fit(head.trim_end(), inner)));
            for part in wrap(&words, inner.saturating_sub(2), VALUE_LINES) {
                lines.push(Line::raw(format!("  {part}")));
            }
        }
    }
    Paragraph::new(lines).block(block("registry"))
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

    #[test]
    fn a_registry_value_reads_as_words_wrapped_whole() {
        assert_eq!(
            value_words(r#"{"target":"grpc://db:5432","state":{"name":"READY","since":null},"n":3}"#),
            "n=3 state.name=READY state.since=- target=grpc://db:5432"
        );
        assert_eq!(value_words(r#""primary""#), "primary");
        assert_eq!(value_words("[1,2]"), "[1,2]");
        assert_eq!(value_words("not json"), "not json");
        assert_eq!(wrap("a=1 b=22 c=333", 8, 4), ["a=1 b=22", "c=333"]);
        assert_eq!(wrap("abcdefghij", 4, 4), ["abcd", "efgh", "ij"]);
        assert_eq!(wrap("", 4, 4), [""]);
        let cut = wrap("one two three four five six", 9, 2);
        assert_eq!(cut, ["one two", "three…"]);
    }
}
