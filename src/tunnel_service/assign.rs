//! Channel assignment as a pure function: balanced, sticky, two-phase.
//!
//! [`plan`] looks at a tunnel's channels and live clients and says which channels to open on which client and
//! which to move away (OPEN → CLOSING). It never gives a channel that some client still holds (OPEN or CLOSING)
//! to another: a moving channel is given to its next owner by a later plan, once the old owner reported CLOSE
//! (or the store's closing timeout forced it). That is the hand-over rule; the store applies the moves and bumps
//! versions.
//!
//! Balance: with `m` assignable channels and `n` clients every client's quota is `m / n` or `m / n + 1`, so
//! once the moves have settled `max − min ≤ 1`. Stickiness: the larger quotas go to the clients that already
//! hold the most channels, and a client keeps every channel within its quota, so a rebalance moves the fewest
//! channels it can (adding a client to `n` balanced ones moves about `m / (n + 1)` channels, all to the new
//! client, as Kafka's cooperative-sticky assignor does).

use arbor_proto::tunnel::domain::ChannelStatus;

/// What [`plan`] needs to know about one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelView {
    /// The channel's id.
    pub id: u32,
    /// Its status on the server.
    pub status: ChannelStatus,
    /// The index (into the `clients` slice given to [`plan`]) of the client holding it, when OPEN or CLOSING.
    pub owner: Option<usize>,
    /// Whether it may be given to a client at all: false for a TERMINATED channel and for a stream channel
    /// whose parent base channel has not terminated yet.
    pub assignable: bool,
}

/// One step of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// Give the free channel (WAIT or CLOSE) to client `client` (an index into `clients`): → OPEN.
    Open {
        /// The channel.
        channel: u32,
        /// The client's index.
        client: usize,
    },
    /// Ask the owner of the OPEN channel to release it: → CLOSING.
    Close {
        /// The channel.
        channel: u32,
    },
}

/// The moves that bring `channels` towards a balanced assignment over `clients` live clients (identified by
/// their index; the order of indexes breaks ties, so give clients in a stable order). Deterministic.
pub fn plan(channels: &[ChannelView], clients: usize) -> Vec<Move> {
    if clients == 0 {
        return Vec::new();
    }
    let assignable: Vec<&ChannelView> = channels
        .iter()
        .filter(|c| c.assignable && c.status != ChannelStatus::Terminated)
        .collect();
    let total = assignable.len();
    let mut open: Vec<Vec<u32>> = vec![Vec::new(); clients];
    for c in &assignable {
        if let (ChannelStatus::Open, Some(owner)) = (c.status, c.owner) {
            if owner < clients {
                open[owner].push(c.id);
            }
        }
    }
    // Quotas: the (total % clients) clients holding the most channels get one more than the others.
    let mut order: Vec<usize> = (0..clients).collect();
    order.sort_by(|&a, &b| open[b].len().cmp(&open[a].len()).then(a.cmp(&b)));
    let mut quota = vec![total / clients; clients];
    for &client in order.iter().take(total % clients) {
        quota[client] += 1;
    }

    let mut moves = Vec::new();
    // Over quota: release the highest channel ids beyond the quota.
    for (client, held) in open.iter_mut().enumerate() {
        if held.len() > quota[client] {
            held.sort_unstable();
            for &channel in &held[quota[client]..] {
                moves.push(Move::Close { channel });
            }
            held.truncate(quota[client]);
        }
    }
    // Under quota: fill from the free channels, the largest deficit first (ties: lowest index).
    let mut deficit: Vec<usize> = (0..clients).map(|c| quota[c] - open[c].len()).collect();
    let mut free: Vec<u32> = assignable
        .iter()
        .filter(|c| matches!(c.status, ChannelStatus::Wait | ChannelStatus::Close))
        .map(|c| c.id)
        .collect();
    free.sort_unstable();
    for channel in free {
        let Some(client) = (0..clients)
            .filter(|&c| deficit[c] > 0)
            .max_by(|&a, &b| deficit[a].cmp(&deficit[b]).then(b.cmp(&a)))
        else {
            break;
        };
        deficit[client] -= 1;
        moves.push(Move::Open { channel, client });
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;
    use ChannelStatus::*;

    fn free(n: u32) -> Vec<ChannelView> {
        (0..n)
            .map(|id| ChannelView {
                id,
                status: Wait,
                owner: None,
                assignable: true,
            })
            .collect()
    }

    /// Applies a plan the way the store does, with every CLOSING released at once (owners report CLOSE).
    fn apply(channels: &mut [ChannelView], moves: &[Move]) {
        for m in moves {
            match *m {
                Move::Open { channel, client } => {
                    let c = &mut channels[channel as usize];
                    assert!(
                        matches!(c.status, Wait | Close) && c.owner.is_none(),
                        "opened a held channel: {c:?}"
                    );
                    c.status = Open;
                    c.owner = Some(client);
                }
                Move::Close { channel } => {
                    let c = &mut channels[channel as usize];
                    assert_eq!(c.status, Open);
                    c.status = Closing;
                }
            }
        }
    }

    fn release_closing(channels: &mut [ChannelView]) {
        for c in channels.iter_mut().filter(|c| c.status == Closing) {
            c.status = Close;
            c.owner = None;
        }
    }

    fn settle(channels: &mut [ChannelView], clients: usize) -> usize {
        let mut moved = 0;
        for _ in 0..4 {
            let moves = plan(channels, clients);
            moved += moves.iter().filter(|m| matches!(m, Move::Close { .. })).count();
            apply(channels, &moves);
            release_closing(channels);
        }
        moved
    }

    fn loads(channels: &[ChannelView], clients: usize) -> Vec<usize> {
        let mut loads = vec![0; clients];
        for c in channels.iter().filter(|c| c.status == Open) {
            loads[c.owner.unwrap()] += 1;
        }
        loads
    }

    #[test]
    fn no_clients_no_moves() {
        assert!(plan(&free(4), 0).is_empty());
    }

    #[test]
    fn settles_balanced_for_every_shape() {
        for channels in 0..20u32 {
            for clients in 1..7usize {
                let mut state = free(channels);
                settle(&mut state, clients);
                let loads = loads(&state, clients);
                let (max, min) = (*loads.iter().max().unwrap(), *loads.iter().min().unwrap());
                assert!(max - min <= 1, "{channels} channels over {clients}: {loads:?}");
                assert_eq!(loads.iter().sum::<usize>(), channels as usize);
                assert!(plan(&state, clients).is_empty(), "a settled state is stable");
            }
        }
    }

    #[test]
    fn a_new_client_takes_only_its_share_and_nothing_else_moves() {
        let mut state = free(8);
        settle(&mut state, 3);
        let before: Vec<Option<usize>> = state.iter().map(|c| c.owner).collect();
        let moved = settle(&mut state, 4);
        assert_eq!(moved, 2, "8 channels over 4 clients: the new client takes 2");
        for (c, old) in state.iter().zip(&before) {
            assert!(
                c.owner == *old || c.owner == Some(3),
                "channel {} moved between old clients",
                c.id
            );
        }
        assert_eq!(loads(&state, 4), vec![2, 2, 2, 2]);
    }

    #[test]
    fn a_closing_channel_is_never_given_away_before_it_is_released() {
        let mut state = free(4);
        settle(&mut state, 1);
        let moves = plan(&state, 2);
        assert_eq!(
            moves.iter().filter(|m| matches!(m, Move::Close { .. })).count(),
            2
        );
        assert!(!moves.iter().any(|m| matches!(m, Move::Open { .. })));
        apply(&mut state, &moves);
        // The old owner has not reported CLOSE yet: planning again opens nothing and closes nothing more.
        assert!(plan(&state, 2).is_empty());
        release_closing(&mut state);
        let moves = plan(&state, 2);
        assert_eq!(
            moves,
            vec![
                Move::Open {
                    channel: 2,
                    client: 1
                },
                Move::Open {
                    channel: 3,
                    client: 1
                }
            ]
        );
    }

    #[test]
    fn channels_not_assignable_wait_and_terminated_ones_do_not_count() {
        let mut state = free(4);
        state[2].assignable = false; // a stream child of an unfinished base channel
        state[3].status = Terminated;
        state[3].assignable = false;
        let moves = plan(&state, 2);
        assert_eq!(
            moves,
            vec![
                Move::Open {
                    channel: 0,
                    client: 0
                },
                Move::Open {
                    channel: 1,
                    client: 1
                }
            ]
        );
    }

    #[test]
    fn a_departed_clients_channels_are_spread_over_the_rest() {
        let mut state = free(9);
        settle(&mut state, 3);
        // Client 2 expires: the store marks its channels CLOSE; the others are re-indexed 0 and 1.
        for c in state.iter_mut() {
            if c.owner == Some(2) {
                c.status = Close;
                c.owner = None;
            }
        }
        let moved = settle(&mut state, 2);
        assert_eq!(moved, 0, "the survivors keep what they had");
        let loads = loads(&state, 2);
        assert_eq!(loads.iter().sum::<usize>(), 9);
        assert!(
            loads.iter().max().unwrap() - loads.iter().min().unwrap() <= 1,
            "{loads:?}"
        );
    }
}
