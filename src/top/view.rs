//! The layout of `arbor top`: a header, the tree (left), registries and channels (right), the event feed
//! (bottom), a status line.

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
    let [tree_area, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(middle);
    let [registry_area, channels_area] =
        Layout::vertical([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(right);

    frame.render_widget(Paragraph::new(header_line(top)), header);
    frame.render_widget(tree_widget(top), tree_area);
    frame.render_widget(registry_widget(top), registry_area);
    frame.render_widget(channels_widget(top), channels_area);
    frame.render_widget(feed_widget(top, feed.height.saturating_sub(2) as usize), feed);
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(" q ", Style::default().add_modifier(Modifier::REVERSED)),
            Span::raw(format!(" quit   {}", top.status)),
        ])),
        status,
    );
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

fn tree_widget(top: &Top) -> Paragraph<'static> {
    let mut lines = Vec::new();
    if let Some(tree) = &top.tree {
        tree_lines(&tree.snapshot, "", true, true, &mut lines);
    }
    Paragraph::new(lines).block(block("tree"))
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
            Constraint::Percentage(25),
            Constraint::Length(4),
            Constraint::Length(8),
            Constraint::Percentage(75),
        ],
    )
    .header(
        Row::new(vec!["TUNNEL", "CH", "LAG", "PROGRESS"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(block("channels"))
}

fn feed_widget(top: &Top, height: usize) -> Paragraph<'static> {
    let skip = top.feed.len().saturating_sub(height);
    let lines: Vec<Line<'static>> = top
        .feed
        .iter()
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
            Line::from(vec![
                Span::styled(place, Style::default().fg(Color::DarkGray)),
                Span::styled(line.text.clone(), style),
            ])
        })
        .collect();
    Paragraph::new(lines).block(block("events"))
}
