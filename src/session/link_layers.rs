//! Simulcast layers across relay links, at both ends. The origin's subscriber session copies
//! each layer of a publisher's simulcast track as a stream of its own; the receiving node's
//! relayed publisher has those streams as its layers, and its own allocator picks one for each
//! viewer there. The receiving node says which layers its viewers want (per track, the layers'
//! indices, from the relay's [`RelayEvent::Layers`]); the origin forwards only those, within its
//! share of the link's budget (audio first, lowest layers next). Also: the checks on a QUIC
//! track list's SSRCs and layers.
//!
//! [`RelayEvent::Layers`]: crate::core::room::RelayEvent::Layers

use std::collections::HashSet;

use super::error::SessionError;
use super::quic::QuicTrack;
use super::shard::Shard;
use crate::core::room::alloc::MAX_LAYERS;
use crate::core::room::SessionId;

/// A relay link's session, as the link polls it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkView {
    pub session: SessionId,
    /// For a relayed publisher: per track, the indices of the layers its viewers here want;
    /// empty until the relay first tells (every layer, then).
    pub wanted: Vec<Vec<u8>>,
    /// For a subscriber serving another node: the streams (an audio or video track, or one
    /// layer of a simulcast one) it forwards now, and the bps it would send with room for
    /// everything the other node wants.
    pub streams: usize,
    pub want_bps: u64,
}

/// Whether `rid` is a RID as RFC 8851 writes one (`1*(ALPHA / DIGIT / "-" / "_")`), short
/// enough for a one-byte header extension (16 bytes).
pub fn valid_rid(rid: &str) -> bool {
    (1..=16).contains(&rid.len())
        && rid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn bad(i: usize, what: String) -> SessionError {
    SessionError::new(400, "bad_tracks", format!("track {i}: {what}"))
}

/// Checks track `i`'s SSRCs and simulcast layers against itself and the tracks before it:
/// packets go to tracks and layers by SSRC, so each must be one of its own.
pub(super) fn check_ssrcs(tracks: &[QuicTrack], i: usize) -> Result<(), SessionError> {
    let t = &tracks[i];
    let ssrcs = |t: &QuicTrack| -> Vec<u32> {
        std::iter::once(t.ssrc)
            .chain(t.layers.iter().skip(1).map(|l| l.ssrc))
            .collect()
    };
    if !t.layers.is_empty() {
        if t.kind != "video" || !(2..=MAX_LAYERS).contains(&t.layers.len()) {
            return Err(bad(
                i,
                format!("simulcast takes 2 to {MAX_LAYERS} layers, on video"),
            ));
        }
        if t.layers[0].ssrc != t.ssrc {
            return Err(bad(i, "the first layer's ssrc must be the track's".into()));
        }
        let mut rids = HashSet::new();
        for l in &t.layers {
            if !valid_rid(&l.rid) || !rids.insert(l.rid.as_str()) {
                return Err(bad(
                    i,
                    format!(
                        "layer rid {:?} must be 1-16 of A-Z a-z 0-9 - _, one per layer",
                        l.rid
                    ),
                ));
            }
        }
    }
    let mine = ssrcs(t);
    for (k, s) in mine.iter().enumerate() {
        if mine[..k].contains(s) {
            return Err(bad(i, format!("ssrc {s} is taken twice")));
        }
        if let Some(j) = tracks[..i].iter().position(|o| ssrcs(o).contains(s)) {
            return Err(bad(i, format!("ssrc {s} is track {j}'s too")));
        }
    }
    Ok(())
}

impl Shard {
    /// The layers another node wants of the publisher its subscriber `session` serves it: per
    /// track of the subscription, the layers' indices. Entries past the tracks or layers are
    /// ignored; a track left out (the list ends before it) keeps what it had.
    pub fn set_link_layers(&mut self, session: SessionId, wanted: &[Vec<u8>]) {
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        let mut on: HashSet<usize> = HashSet::new();
        let mut told = HashSet::new();
        for (copies, layers) in s.link_layers.copies.iter().zip(wanted) {
            told.extend(copies.iter().copied());
            on.extend(
                layers
                    .iter()
                    .filter_map(|&l| copies.get(usize::from(l)).copied()),
            );
        }
        self.relay
            .set_link_layers(session, |k| told.contains(&k).then(|| on.contains(&k)));
    }

    /// Each of these subscriber sessions may send this many bps over its relay link.
    pub fn set_link_budgets(&mut self, budgets: &[(SessionId, u64)]) {
        for &(s, bps) in budgets {
            self.relay.set_link_budget(s, bps);
        }
    }

    /// A relayed publisher's track `track` has these layers (a bit each) wanted here now.
    pub(super) fn note_link_layers(&mut self, publisher: SessionId, track: usize, active: u8) {
        let Some(s) = self
            .sessions
            .get_mut(&publisher)
            .filter(|s| s.origin.is_some())
        else {
            return;
        };
        let wanted = &mut s.link_layers.wanted;
        if wanted.len() <= track {
            // Tracks not heard of yet want every layer.
            wanted.resize(track + 1, u8::MAX);
        }
        wanted[track] = active;
    }

    /// Which of a relay link's `sessions` still run, and what each tells the link.
    pub fn link_views(&self, sessions: &[SessionId]) -> Vec<LinkView> {
        sessions
            .iter()
            .filter_map(|&id| {
                let s = self.sessions.get(&id)?;
                // A track without layers is listed empty.
                let n_layers = |track: usize| {
                    self.relay
                        .publisher_tracks(id)
                        .and_then(|mut t| t.nth(track))
                        .map_or(0, |t| t.rids.len().min(MAX_LAYERS))
                };
                let wanted = s
                    .link_layers
                    .wanted
                    .iter()
                    .enumerate()
                    .map(|(track, &mask)| {
                        (0..n_layers(track) as u8)
                            .filter(|l| mask & (1 << l) != 0)
                            .collect()
                    })
                    .collect();
                let (streams, want_bps) = self.relay.link_streams(id);
                Some(LinkView {
                    session: id,
                    wanted,
                    streams,
                    want_bps,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::quic::QuicLayer;

    fn track(kind: &str, ssrc: u32, layers: &[(&str, u32)]) -> QuicTrack {
        QuicTrack {
            kind: kind.into(),
            codec: if kind == "audio" { "opus" } else { "VP8" }.into(),
            payload_type: 96,
            clock_rate: 90000,
            channels: None,
            fmtp: String::new(),
            ssrc,
            content: None,
            layers: layers
                .iter()
                .map(|(rid, ssrc)| QuicLayer {
                    rid: (*rid).into(),
                    ssrc: *ssrc,
                })
                .collect(),
        }
    }

    #[test]
    fn ssrcs_and_layers_are_checked() {
        let cases: Vec<(Vec<QuicTrack>, Option<&str>)> = vec![
            (vec![track("audio", 1, &[]), track("video", 2, &[])], None),
            (
                vec![
                    track("audio", 1, &[]),
                    track("video", 2, &[("q", 2), ("f", 3)]),
                ],
                None,
            ),
            (
                vec![track("audio", 1, &[]), track("video", 1, &[])],
                Some("track 0's"),
            ),
            (
                vec![
                    track("audio", 3, &[]),
                    track("video", 2, &[("q", 2), ("f", 3)]),
                ],
                Some("track 0's"),
            ),
            (
                vec![track("video", 2, &[("q", 2), ("f", 2)])],
                Some("taken twice"),
            ),
            (vec![track("video", 2, &[("q", 2)])], Some("2 to 4")),
            (
                vec![track("audio", 2, &[("q", 2), ("f", 3)])],
                Some("on video"),
            ),
            (
                vec![track("video", 2, &[("q", 5), ("f", 3)])],
                Some("first layer"),
            ),
            (
                vec![track("video", 2, &[("q", 2), ("q", 3)])],
                Some("one per layer"),
            ),
            (vec![track("video", 2, &[("r-0", 2), ("hi_res", 3)])], None),
            (
                vec![track("video", 2, &[("q", 2), ("f.1", 3)])],
                Some("A-Z a-z 0-9 - _"),
            ),
            (
                vec![track("video", 2, &[("q", 2), ("f23456789abcdefgh", 3)])],
                Some("1-16"),
            ),
        ];
        for (tracks, want) in cases {
            let got = (0..tracks.len())
                .map(|i| check_ssrcs(&tracks, i))
                .find_map(Result::err);
            match (want, got) {
                (None, None) => {}
                (Some(w), Some(e)) => assert!(e.message.contains(w), "{w}: {}", e.message),
                (w, g) => panic!("{tracks:?}: want {w:?}, got {g:?}"),
            }
        }
    }
}
