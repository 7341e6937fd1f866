//! A passive reader of the HTTP/2 frames a server sends, fed with the bytes the client's transport reads.
//!
//! Neither tonic nor hyper tells its user that a GOAWAY arrived: h2 handles it inside the connection task, and
//! the first sign a user gets is a new call failing with `Cancelled`. The connector's stream sees the same bytes
//! h2 reads (after TLS), so it runs them through this reader: frame headers are parsed, payloads skipped, except
//! GOAWAY's (error code, last stream id, debug data). Nothing is ever written or changed.

use super::state::GoAway;

/// GOAWAY's frame type (RFC 9113 section 6.8).
const GOAWAY: u8 = 0x7;
/// Debug data kept from a GOAWAY; the rest is skipped.
const MAX_DEBUG: usize = 256;

/// Frame reader state: a header being assembled, then a payload being skipped or (for GOAWAY) collected.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    header: [u8; 9],
    header_len: usize,
    /// Payload bytes of the current frame still to come (0: reading a header).
    remaining: usize,
    kind: u8,
    /// The GOAWAY payload collected so far (at most 8 + MAX_DEBUG bytes).
    goaway: Vec<u8>,
}

impl FrameReader {
    /// Feed bytes the transport read, in order; `emit` is called for each GOAWAY they complete.
    pub(crate) fn feed(&mut self, mut bytes: &[u8], emit: &mut impl FnMut(GoAway)) {
        while !bytes.is_empty() {
            if self.remaining == 0 {
                let take = (9 - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + take].copy_from_slice(&bytes[..take]);
                self.header_len += take;
                bytes = &bytes[take..];
                if self.header_len < 9 {
                    return;
                }
                self.header_len = 0;
                let len = u32::from_be_bytes([0, self.header[0], self.header[1], self.header[2]]) as usize;
                self.kind = self.header[3];
                self.goaway.clear();
                self.remaining = len;
                if len == 0 {
                    self.frame_done(emit);
                }
                continue;
            }
            let take = self.remaining.min(bytes.len());
            if self.kind == GOAWAY {
                let room = (8 + MAX_DEBUG).saturating_sub(self.goaway.len());
                self.goaway.extend_from_slice(&bytes[..take.min(room)]);
            }
            self.remaining -= take;
            bytes = &bytes[take..];
            if self.remaining == 0 {
                self.frame_done(emit);
            }
        }
    }

    fn frame_done(&mut self, emit: &mut impl FnMut(GoAway)) {
        if self.kind != GOAWAY || self.goaway.len() < 8 {
            return;
        }
        let p = &self.goaway;
        emit(GoAway {
            last_stream_id: u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff,
            code: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            debug_data: String::from_utf8_lossy(&p[8..]).into_owned(),
        });
    }
}

/// Encode one frame (for tests of this module and test servers).
#[cfg(test)]
pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn goaway_frame(last: u32, code: u32, debug: &[u8]) -> Vec<u8> {
        let mut p = last.to_be_bytes().to_vec();
        p.extend_from_slice(&code.to_be_bytes());
        p.extend_from_slice(debug);
        frame(GOAWAY, 0, 0, &p)
    }

    fn read_all(chunks: &[&[u8]]) -> Vec<GoAway> {
        let mut r = FrameReader::default();
        let mut out = Vec::new();
        for c in chunks {
            r.feed(c, &mut |e| out.push(e));
        }
        out
    }

    #[test]
    fn settings_data_goaway_in_one_read() {
        let mut bytes = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        bytes.extend(frame(0x4, 0x1, 0, &[]));
        bytes.extend(frame(0x0, 0, 1, b"some data"));
        bytes.extend(goaway_frame(1, 0xb, b"too_many_pings"));
        let events = read_all(&[&bytes]);
        assert_eq!(
            events,
            vec![GoAway {
                code: 0xb,
                last_stream_id: 1,
                debug_data: "too_many_pings".into()
            }]
        );
    }

    #[test]
    fn frames_split_at_every_byte() {
        let mut bytes = frame(0x1, 0x4, 1, &[0x88; 30]);
        bytes.extend(goaway_frame(0x8000_0007, 0, b""));
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        let events = read_all(&chunks);
        assert_eq!(
            events,
            vec![GoAway {
                code: 0,
                last_stream_id: 7,
                debug_data: String::new()
            }]
        );
    }

    #[test]
    fn long_debug_data_is_truncated_and_the_stream_stays_in_step() {
        let mut bytes = goaway_frame(5, 2, &[b'x'; 10_000]);
        bytes.extend(goaway_frame(5, 0, b"after"));
        let events = read_all(&bytes.chunks(777).collect::<Vec<_>>());
        assert_eq!(events.len(), 2);
        assert_eq!((events[0].code, events[0].debug_data.len()), (2, MAX_DEBUG));
        assert_eq!(events[1].debug_data, "after");
    }

    #[test]
    fn a_truncated_goaway_payload_is_ignored() {
        assert!(read_all(&[&frame(GOAWAY, 0, 0, &[0, 0, 0])]).is_empty());
    }
}
