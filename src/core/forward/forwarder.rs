//! The forwarder of one track for one viewer. It answers one question per packet: drop, or forward
//! with these header values. Sequence numbers and timestamps are shifted by offsets fixed when the
//! stream starts, so a retransmission from the publisher maps to the number the viewer asked for.

use crate::core::rtp::{Codec, Rewrite, RtpView};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Video waits for a keyframe before the first packet reaches the viewer.
    WaitingForKeyframe,
    /// Older than the first packet forwarded to this viewer.
    BeforeStart,
    /// The track is paused for this viewer (its link cannot carry it).
    Paused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Drop(DropReason),
    Forward(Rewrite),
}

#[derive(Debug, Clone, Copy)]
struct Started {
    seq_offset: u16,
    ts_offset: u32,
    /// Extended (roll-over counted) sequence numbers of the first and highest packets seen.
    start_ext: i64,
    highest_ext: i64,
}

impl Started {
    /// A publisher sequence number extended (roll-overs counted) next to the highest seen.
    fn extend(&self, seq: u16) -> i64 {
        self.highest_ext + i64::from(seq.wrapping_sub(self.highest_ext as u16) as i16)
    }
}

#[derive(Debug, Clone)]
pub struct Forwarder {
    codec: Codec,
    ssrc: u32,
    payload_type: u8,
    initial_seq: u16,
    initial_ts: u32,
    started: Option<Started>,
    /// Paused: nothing is forwarded. Resuming: the next key frame continues the viewer's
    /// numbering at this sequence number, so the gap is invisible.
    pause: Pause,
    /// The highest sequence number the viewer was sent.
    last_out: Option<u16>,
    packets: u32,
    octets: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pause {
    No,
    Paused,
    Resuming,
}

impl Forwarder {
    /// `initial_seq` and `initial_ts` are the viewer's first values (random, chosen by the caller).
    pub fn new(
        codec: Codec,
        ssrc: u32,
        payload_type: u8,
        initial_seq: u16,
        initial_ts: u32,
    ) -> Self {
        Self {
            codec,
            ssrc,
            payload_type,
            initial_seq,
            initial_ts,
            started: None,
            pause: Pause::No,
            last_out: None,
            packets: 0,
            octets: 0,
        }
    }

    /// Stops forwarding until [`Forwarder::resume`].
    pub fn pause(&mut self) {
        self.pause = Pause::Paused;
    }

    /// Forwards again from the next key frame (video) or packet (audio), numbered right after
    /// the last one the viewer got.
    pub fn resume(&mut self) {
        if self.pause == Pause::Paused {
            self.pause = Pause::Resuming;
        }
    }

    pub fn is_paused(&self) -> bool {
        self.pause != Pause::No
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    pub fn is_started(&self) -> bool {
        self.started.is_some()
    }

    /// Packets and payload octets forwarded, for this viewer's sender reports.
    pub fn counts(&self) -> (u32, u32) {
        (self.packets, self.octets)
    }

    pub fn decide(&mut self, view: &RtpView, payload: &[u8]) -> Decision {
        let s = match &mut self.started {
            Some(s) => s,
            None => {
                if self.codec.is_video() && !self.codec.starts_keyframe(payload) {
                    return Decision::Drop(DropReason::WaitingForKeyframe);
                }
                let ext = i64::from(view.sequence);
                self.started.insert(Started {
                    seq_offset: self.initial_seq.wrapping_sub(view.sequence),
                    ts_offset: self.initial_ts.wrapping_sub(view.timestamp),
                    start_ext: ext,
                    highest_ext: ext,
                })
            }
        };
        let ext = s.extend(view.sequence);
        match self.pause {
            Pause::No => {}
            Pause::Paused => {
                // Keep counting, so the numbering stays anchored however long the pause.
                s.highest_ext = s.highest_ext.max(ext);
                return Decision::Drop(DropReason::Paused);
            }
            Pause::Resuming => {
                if ext <= s.highest_ext
                    || (self.codec.is_video() && !self.codec.starts_keyframe(payload))
                {
                    s.highest_ext = s.highest_ext.max(ext);
                    return Decision::Drop(DropReason::Paused);
                }
                // Right after the last number the viewer got; timestamps keep their offset (the
                // publisher's clock ran on).
                let next_out = match self.last_out {
                    Some(last) => last.wrapping_add(1),
                    None => self.initial_seq,
                };
                s.seq_offset = next_out.wrapping_sub(view.sequence);
                s.start_ext = ext;
                s.highest_ext = ext;
                self.pause = Pause::No;
            }
        }
        if ext < s.start_ext {
            return Decision::Drop(DropReason::BeforeStart);
        }
        let out = view.sequence.wrapping_add(s.seq_offset);
        if ext >= s.highest_ext {
            s.highest_ext = ext;
            self.last_out = Some(out);
        }
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload.len() as u32);
        Decision::Forward(Rewrite {
            ssrc: self.ssrc,
            sequence: out,
            timestamp: view.timestamp.wrapping_add(s.ts_offset),
            payload_type: self.payload_type,
            marker: view.marker,
        })
    }

    /// The header values a packet already forwarded (or skipped) would have had, for resending
    /// it from the cache. Leaves the forwarder's state alone. `None` before the stream started
    /// or for packets from before its start.
    pub fn rewrite_again(&self, view: &RtpView) -> Option<Rewrite> {
        // While paused the numbering moves on without the viewer; nothing may be resent.
        if self.pause != Pause::No {
            return None;
        }
        let s = self.started?;
        let ext = s.extend(view.sequence);
        if ext < s.start_ext || ext > s.highest_ext {
            return None;
        }
        Some(Rewrite {
            ssrc: self.ssrc,
            sequence: view.sequence.wrapping_add(s.seq_offset),
            timestamp: view.timestamp.wrapping_add(s.ts_offset),
            payload_type: self.payload_type,
            marker: view.marker,
        })
    }

    /// Whether a publisher packet belongs to what this viewer is being sent now: started, not
    /// paused, and not from before the (re)start.
    pub fn covers(&self, source_seq: u16) -> bool {
        let Some(s) = self.started.filter(|_| self.pause == Pause::No) else {
            return false;
        };
        let ext = s.extend(source_seq);
        ext >= s.start_ext
    }

    /// Maps a sequence number in the viewer's numbering back to the publisher's (for NACKs).
    pub fn source_sequence(&self, viewer_seq: u16) -> Option<u16> {
        self.started.map(|s| viewer_seq.wrapping_sub(s.seq_offset))
    }

    /// Maps a publisher RTP timestamp to the viewer's (for sender reports).
    pub fn viewer_timestamp(&self, source_ts: u32) -> Option<u32> {
        self.started.map(|s| source_ts.wrapping_add(s.ts_offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(seq: u16, ts: u32) -> RtpView {
        RtpView {
            marker: false,
            payload_type: 96,
            sequence: seq,
            timestamp: ts,
            ssrc: 1,
            csrc_count: 0,
            ext_profile: 0,
            ext_start: 0,
            ext_len: 0,
            payload_start: 12,
            payload_end: 14,
        }
    }

    const KEY: &[u8] = &[0x10, 0x00];
    const DELTA: &[u8] = &[0x10, 0x01];

    #[test]
    fn video_table() {
        // (input seq, payload, expected: None = drop, Some(out seq))
        let mut f = Forwarder::new(Codec::Vp8, 9, 100, 1000, 50);
        let steps: &[(u16, &[u8], Option<u16>)] = &[
            (65530, DELTA, None),     // waits for a keyframe
            (65531, KEY, Some(1000)), // starts here
            (65532, DELTA, Some(1001)),
            (65535, DELTA, Some(1004)), // a gap stays a gap
            (0, DELTA, Some(1005)),     // wraps
            (65533, DELTA, Some(1002)), // late packet (retransmission) keeps its number
            (65530, DELTA, None),       // before the start
            (3, DELTA, Some(1008)),
        ];
        for (i, (seq, payload, want)) in steps.iter().enumerate() {
            let got = match f.decide(&view(*seq, 7), payload) {
                Decision::Forward(rw) => Some(rw.sequence),
                Decision::Drop(_) => None,
            };
            assert_eq!(got, *want, "step {i}");
        }
        assert_eq!(f.counts(), (6, 12));
        // Resending from the cache gives the same numbers, without moving the state.
        assert_eq!(
            f.rewrite_again(&view(65535, 7)).map(|r| r.sequence),
            Some(1004)
        );
        assert_eq!(f.rewrite_again(&view(65530, 7)), None, "before the start");
        assert_eq!(f.rewrite_again(&view(9, 7)), None, "not seen yet");
        assert_eq!(f.counts(), (6, 12));
        assert_eq!(f.source_sequence(1002), Some(65533));
        assert_eq!(f.viewer_timestamp(7), Some(50));
    }

    /// Paused, nothing goes out; resumed, the next key frame continues the viewer's numbering
    /// right after the last packet it got, timestamps keep their offset, and what was skipped
    /// can be neither resent nor asked for.
    #[test]
    fn pause_and_resume_keep_the_numbering_seamless() {
        let mut f = Forwarder::new(Codec::Vp8, 9, 100, 1000, 50);
        let out = |f: &mut Forwarder, seq: u16, p: &[u8]| match f
            .decide(&view(seq, u32::from(seq) * 10), p)
        {
            Decision::Forward(rw) => Some((rw.sequence, rw.timestamp)),
            Decision::Drop(_) => None,
        };
        assert_eq!(out(&mut f, 10, KEY), Some((1000, 50)));
        assert_eq!(out(&mut f, 11, DELTA), Some((1001, 60)));
        f.pause();
        assert!(f.is_paused());
        assert_eq!(out(&mut f, 12, KEY), None, "paused");
        // A long pause: far more than half the sequence space goes by.
        for seq in 13..40_000u16 {
            assert_eq!(out(&mut f, seq, DELTA), None);
        }
        f.resume();
        assert_eq!(
            out(&mut f, 40_000, DELTA),
            None,
            "resuming waits for a key frame"
        );
        assert_eq!(out(&mut f, 40_001, KEY), Some((1002, 399_960)));
        assert_eq!(out(&mut f, 40_002, DELTA), Some((1003, 399_970)));
        assert!(!f.is_paused());
        assert_eq!(
            f.rewrite_again(&view(20, 200)),
            None,
            "skipped while paused"
        );
        assert_eq!(out(&mut f, 39_999, DELTA), None, "from before the resume");
        assert_eq!(f.source_sequence(1003), Some(40_002));
    }

    #[test]
    fn audio_starts_at_once_and_shifts_timestamps() {
        let mut f = Forwarder::new(Codec::Opus, 9, 111, 0, 0);
        assert_eq!(f.source_sequence(0), None);
        let Decision::Forward(a) = f.decide(&view(10, 4_294_967_000), &[1]) else {
            panic!()
        };
        let Decision::Forward(b) = f.decide(&view(11, 664), &[1]) else {
            panic!()
        };
        assert_eq!(
            (a.sequence, a.timestamp, a.payload_type, a.ssrc),
            (0, 0, 111, 9)
        );
        assert_eq!((b.sequence, b.timestamp), (1, 960));
    }

    #[test]
    fn long_runs_wrap_many_times() {
        let mut f = Forwarder::new(Codec::Opus, 1, 111, 5, 0);
        for i in 0..200_000u32 {
            let Decision::Forward(rw) = f.decide(&view(i as u16, i * 960), &[0]) else {
                panic!("{i}")
            };
            assert_eq!(rw.sequence, (i as u16).wrapping_add(5));
        }
    }
}
