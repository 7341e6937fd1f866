//! `arbor top`: a live terminal view of a running tree through its introspection server, in the manner of
//! Erlang's observer_cli — the tree with states and restart counts, the registries, the tunnel channels with
//! their lag, and the event feed. Redrawn on every event (at most [`MIN_REFRESH`] apart) and on a timer; `q`
//! (or Esc, or Ctrl-C) quits. Tab (or ← →) picks the tree or the events pane, ↑ ↓ (j k) scroll it a line,
//! PgUp PgDn a page, Home End to its start or end (End: the events follow the newest again); the footer lists
//! the keys.
//!
//! [`Top`] is the state and its drawing ([`Top::draw`] renders into any ratatui backend, a test's
//! `TestBackend` included); [`run`] drives it on the terminal with crossterm.

mod view;

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use arbor_proto::inspect::v1 as pb;
use futures::{Stream, StreamExt};
use ratatui::backend::Backend;
use ratatui::crossterm::event::{Event as TermEvent, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::{Frame, Terminal};

use crate::introspect::{describe_event, ClientError, ClientOptions, InspectClient, TreeView, WatchFrom};

/// The closest two refreshes caused by events may be (a burst of events is one refresh).
pub const MIN_REFRESH: Duration = Duration::from_millis(200);

/// How many events the feed keeps.
const FEED: usize = 500;

/// One line of the event feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedLine {
    /// The event's sequence number (0 for a notice).
    pub sequence: u64,
    /// `HH:MM:SS.mmm`.
    pub clock: String,
    /// The event in words.
    pub text: String,
    /// Whether it is bad news (an abnormal exit, a failed restart, a lost session...).
    pub alarming: bool,
}

/// What `arbor top` shows, and where it reads it from.
#[derive(Debug)]
pub struct Top {
    client: InspectClient,
    addr: String,
    tree: Option<TreeView>,
    registry: Vec<pb::RegistryEntry>,
    feed: VecDeque<FeedLine>,
    /// The watch's stream and the last sequence seen, to resume after a disconnect.
    position: Option<(String, u64)>,
    events_seen: u64,
    status: String,
    /// The pane the scroll keys move.
    focus: Pane,
    /// The tree pane's first line shown.
    tree_scroll: usize,
    /// How many lines the events pane is scrolled back from the newest (0: it follows the newest).
    feed_scroll: usize,
}

/// A pane that scrolls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    /// The tree.
    Tree,
    /// The event feed.
    Events,
}

/// How many lines PgUp and PgDn move.
const PAGE: usize = 10;

/// Why `arbor top` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    /// The server could not be reached at the start.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The terminal could not be set up or drawn on.
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
    /// Standard output is not a terminal.
    #[error("arbor top needs a terminal (use `arbor inspect` in scripts)")]
    NotATerminal,
}

impl Top {
    /// Connects and reads the tree and the registries once.
    ///
    /// # Errors
    /// [`ClientError`] when the server cannot be reached.
    pub async fn connect(options: &ClientOptions) -> Result<Top, ClientError> {
        let client = InspectClient::connect(options).await?;
        let mut top = Top {
            client,
            addr: options.url(),
            tree: None,
            registry: Vec::new(),
            feed: VecDeque::new(),
            position: None,
            events_seen: 0,
            status: "connected".into(),
            focus: Pane::Tree,
            tree_scroll: 0,
            feed_scroll: 0,
        };
        top.refresh().await;
        Ok(top)
    }

    /// Reads the tree and the registries again; a failure shows in the status line, the old view stays.
    pub async fn refresh(&mut self) {
        match self.client.tree().await {
            Ok(tree) => self.tree = Some(tree),
            Err(err) => {
                self.status = format!("cannot read the tree: {err}");
                return;
            }
        }
        match self.client.registry("", "").await {
            Ok(entries) => {
                self.registry = entries;
                self.status = "connected".into();
            }
            Err(err) => self.status = format!("cannot read the registries: {err}"),
        }
    }

    /// Opens the event watch: the events the server holds first, or after the last one seen when resuming.
    ///
    /// # Errors
    /// [`ClientError`] when the server refuses or cannot be reached.
    pub async fn watch(&mut self) -> Result<tonic::Streaming<pb::WatchEventsResponse>, ClientError> {
        let from = match &self.position {
            Some((stream_id, sequence)) => WatchFrom::After {
                stream_id: stream_id.clone(),
                sequence: *sequence,
            },
            None => WatchFrom::Held,
        };
        self.client.watch(from).await
    }

    /// Takes one message of the watch; says whether the tree and registries should be read again.
    pub fn on_watch_message(&mut self, message: pb::WatchEventsResponse) -> bool {
        use pb::watch_events_response::Kind;
        match message.kind {
            Some(Kind::Subscribed(s)) => {
                // A new stream (the first watch, or the server's journal restarted): events set the position.
                if self.position.as_ref().map(|(id, _)| id) != Some(&s.stream_id) {
                    self.position = Some((s.stream_id, 0));
                }
                false
            }
            Some(Kind::Lagged(l)) => {
                self.push(FeedLine {
                    sequence: 0,
                    clock: String::new(),
                    text: format!("!! {} events missed: {}", l.missed, l.reason),
                    alarming: true,
                });
                true
            }
            Some(Kind::Event(event)) => {
                self.events_seen += 1;
                if let Some((_, last)) = &mut self.position {
                    *last = event.sequence;
                }
                self.push(FeedLine {
                    sequence: event.sequence,
                    clock: crate::inspect::clock(event.at_unix_ms),
                    text: describe_event(&event),
                    alarming: alarming(&event),
                });
                true
            }
            None => false,
        }
    }

    /// A notice in the feed and the status line (the watch ended, reconnecting...).
    pub fn notice(&mut self, text: String) {
        self.status = text.clone();
        self.push(FeedLine {
            sequence: 0,
            clock: String::new(),
            text,
            alarming: true,
        });
    }

    fn push(&mut self, line: FeedLine) {
        if self.feed.len() == FEED {
            self.feed.pop_front();
        }
        self.feed.push_back(line);
    }

    /// The tree last read.
    pub fn tree(&self) -> Option<&TreeView> {
        self.tree.as_ref()
    }

    /// The event feed, oldest first.
    pub fn feed(&self) -> impl Iterator<Item = &FeedLine> {
        self.feed.iter()
    }

    /// The pane the scroll keys move.
    pub fn focus(&self) -> Pane {
        self.focus
    }

    /// Takes a key (other than the ones that quit): picks a pane or scrolls the one picked.
    pub fn on_key(&mut self, event: &TermEvent) {
        let TermEvent::Key(key) = event else { return };
        if key.kind == KeyEventKind::Release {
            return;
        }
        let tree_lines = self.tree.as_ref().map_or(0, |t| t.snapshot.nodes().len());
        let (scroll, max, back) = match self.focus {
            Pane::Tree => (&mut self.tree_scroll, tree_lines.saturating_sub(1), false),
            // The feed scrolls back from the newest: up is more.
            Pane::Events => (&mut self.feed_scroll, self.feed.len().saturating_sub(1), true),
        };
        let mut move_by = |lines: isize| {
            let lines = if back { -lines } else { lines };
            let next = (*scroll as isize + lines).clamp(0, max as isize);
            *scroll = next as usize;
        };
        match key.code {
            KeyCode::Tab | KeyCode::BackTab | KeyCode::Left | KeyCode::Right => {
                self.focus = match self.focus {
                    Pane::Tree => Pane::Events,
                    Pane::Events => Pane::Tree,
                }
            }
            KeyCode::Up | KeyCode::Char('k') => move_by(-1),
            KeyCode::Down | KeyCode::Char('j') => move_by(1),
            KeyCode::PageUp => move_by(-(PAGE as isize)),
            KeyCode::PageDown => move_by(PAGE as isize),
            KeyCode::Home | KeyCode::Char('g') => move_by(-(max as isize) - 1),
            KeyCode::End | KeyCode::Char('G') => move_by(max as isize + 1),
            _ => {}
        }
    }

    /// Draws the whole view into `frame`.
    pub fn draw(&self, frame: &mut Frame<'_>) {
        view::draw(self, frame);
    }
}

fn alarming(event: &pb::Event) -> bool {
    use pb::event::Kind;
    match &event.kind {
        Some(Kind::Supervisor(s)) => {
            use pb::supervisor_event::Kind as S;
            match &s.kind {
                Some(S::Exited(x)) => !x.normal,
                Some(S::RestartFailed(_)) => true,
                Some(S::Stopped(stopped)) => stopped.exit() != pb::SupervisorExitKind::Shutdown,
                _ => false,
            }
        }
        Some(Kind::Connection(c)) => c.state() == pb::ConnectivityState::TransientFailure,
        Some(Kind::Tunnel(t)) => {
            use pb::tunnel_event::Kind as T;
            matches!(
                t.kind,
                Some(T::SessionLost(_) | T::SubscriberLost(_) | T::Fatal(_) | T::RecordsLost(_))
            )
        }
        _ => false,
    }
}

/// What a key asks for.
fn quits(event: &TermEvent) -> bool {
    match event {
        TermEvent::Key(key) if key.kind != KeyEventKind::Release => {
            matches!(key.code, KeyCode::Char('q') | KeyCode::Esc)
                || (key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL))
        }
        _ => false,
    }
}

/// Runs the view on `terminal` until a key in `keys` quits (or `keys` ends): redraws after every event (at most
/// every [`MIN_REFRESH`]) and every `interval`, re-reading the tree; reconnects the watch when it drops,
/// resuming after the last event seen.
///
/// # Errors
/// [`TopError::Terminal`] when drawing fails.
pub async fn run_on<B: Backend>(
    top: &mut Top,
    terminal: &mut Terminal<B>,
    mut keys: impl Stream<Item = std::io::Result<TermEvent>> + Unpin,
    interval: Duration,
) -> Result<(), TopError>
where
    B::Error: Send + Sync + 'static,
{
    let mut watch = match top.watch().await {
        Ok(watch) => Some(watch),
        Err(err) => {
            top.notice(format!("cannot watch events: {err}"));
            None
        }
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stale = false;
    let mut last_refresh = Instant::now();
    loop {
        terminal
            .draw(|frame| top.draw(frame))
            .map_err(std::io::Error::other)?;
        let next_message = async {
            match &mut watch {
                Some(stream) => stream.message().await,
                None => std::future::pending().await,
            }
        };
        let refresh_due = async {
            if stale {
                tokio::time::sleep_until((last_refresh + MIN_REFRESH).into()).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            key = keys.next() => match key {
                Some(Ok(event)) if quits(&event) => return Ok(()),
                Some(Ok(event)) => top.on_key(&event),
                Some(Err(err)) => return Err(TopError::Terminal(err)),
                None => return Ok(()),
            },
            message = next_message => match message {
                Ok(Some(message)) => stale |= top.on_watch_message(message),
                Ok(None) => {
                    top.notice("the event stream ended; reconnecting".into());
                    watch = None;
                }
                Err(status) => {
                    top.notice(format!("the event stream failed: {}; reconnecting", status.message()));
                    watch = None;
                }
            },
            _ = refresh_due => {
                top.refresh().await;
                stale = false;
                last_refresh = Instant::now();
            }
            _ = tick.tick() => {
                top.refresh().await;
                stale = false;
                last_refresh = Instant::now();
                if watch.is_none() {
                    match top.watch().await {
                        Ok(stream) => watch = Some(stream),
                        Err(err) => top.status = format!("cannot watch events: {err}"),
                    }
                }
            }
        }
    }
}

/// `arbor top`: the view on this terminal (alternate screen, raw mode) until `q`.
///
/// # Errors
/// [`TopError`] when the server cannot be reached at the start, or the terminal fails.
pub async fn run(options: &ClientOptions, interval: Duration) -> Result<(), TopError> {
    if !std::io::stdout().is_terminal() {
        return Err(TopError::NotATerminal);
    }
    let mut top = Top::connect(options).await?;
    let mut terminal = ratatui::try_init()?;
    let keys = ratatui::crossterm::event::EventStream::new();
    let result = run_on(&mut top, &mut terminal, keys, interval).await;
    ratatui::try_restore()?;
    result
}
