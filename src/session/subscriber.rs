//! A room participant's receiving connection: volna's offers, renegotiated as tracks come and go
//! (lines recycled, BUNDLE kept, see `negotiation`), the participant's answers, and the viewer
//! tracks attached once lines are accepted. Payload types are chosen per bundle, so a track's
//! codec, RTX and RED never collide with another line's.

use std::collections::BTreeMap;
use std::time::Instant;

use rand::Rng;
use tracing::warn;

use super::conference::RoomTrack;
use super::connection::{ParticipantId, Role};
use super::error::SessionError;
use super::negotiation::{LineState, SubLine};
use super::shard::{CloseCause, Remote, Shard};
use crate::core::room::{MediaKind, Rtx, SessionId, ViewerTrackSpec};
use crate::core::rtp::{ExtKind, ExtMap};
use crate::session::protocol::ServerMessage;
use crate::session::sdp::{build_offer, Offer, OfferLine, OfferedCodec, Setup, Source};

/// Header extensions offered to subscribers (with the AV1 dependency descriptor when `dd`); ids
/// are shared by all m-lines of the bundle.
fn subscriber_exts(kind: MediaKind, dd: bool) -> Vec<(u8, String)> {
    let list: &[(u8, ExtKind)] = match kind {
        MediaKind::Audio => &[
            (1, ExtKind::Mid),
            (2, ExtKind::AudioLevel),
            (3, ExtKind::AbsSendTime),
            (6, ExtKind::TransportWideCc),
        ],
        MediaKind::Video => &[
            (1, ExtKind::Mid),
            (3, ExtKind::AbsSendTime),
            (4, ExtKind::VideoOrientation),
            (5, ExtKind::PlayoutDelay),
            (6, ExtKind::TransportWideCc),
        ],
    };
    let dd = dd.then_some((7, ExtKind::DependencyDescriptor));
    list.iter()
        .chain(dd.as_ref())
        .map(|(id, k)| (*id, k.uri().to_owned()))
        .collect()
}

impl Shard {
    /// Re-syncs every other participant's subscriptions in a room.
    pub(super) fn sync_room(&mut self, now: Instant, room: &str, except: ParticipantId) {
        let others: Vec<ParticipantId> = self
            .participants
            .values()
            .filter(|p| p.room == room && p.id != except)
            .map(|p| p.id)
            .collect();
        for o in others {
            self.sync_subscriber(now, o);
        }
    }

    /// Brings a participant's subscriber connection in line with what it should receive.
    pub(super) fn sync_subscriber(&mut self, now: Instant, pid: ParticipantId) {
        let Some(p) = self.participants.get(&pid) else {
            return;
        };
        if !p.grants.subscribe {
            return;
        }
        let room = p.room.clone();
        let desired: Vec<RoomTrack> = self
            .room_tracks(&room)
            .into_iter()
            .filter(|t| t.owner != Some(pid) && (p.auto_subscribe || p.wanted.contains(&t.info.id)))
            .collect();
        // Single-stream AV1 goes with its dependency descriptors (SVC frames need them).
        let with_dd: Vec<bool> = desired
            .iter()
            .map(|d| {
                d.codec.name.eq_ignore_ascii_case("AV1")
                    && self
                        .relay
                        .publisher_tracks(d.source.publisher)
                        .and_then(|mut ts| ts.nth(d.source.track))
                        .is_some_and(|t| t.rids.is_empty())
            })
            .collect();
        let sid = match p.subscriber {
            Some(sid) => sid,
            None if desired.is_empty() => return,
            None => {
                let Ok(mut s) = self.new_session(now, Role::Subscriber, &room, None) else {
                    return;
                };
                s.participant = Some(pid);
                let sid = s.id;
                self.register(s);
                if let Some(p) = self.participants.get_mut(&pid) {
                    p.subscriber = Some(sid);
                }
                sid
            }
        };
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let neg = &mut s.negotiation;
        let mut removed = Vec::new();
        for i in 0..neg.lines.len() {
            let Some(src) = neg.lines[i].source else {
                continue;
            };
            if !desired.iter().any(|d| d.source == src) {
                removed.extend(neg.end(i));
            }
        }
        // New tracks wait while an offer is outstanding: they come in the next one.
        let rng = &mut self.rng;
        for (d, &dd) in desired.iter().zip(&with_dd) {
            if neg.lines.iter().any(|l| l.source == Some(d.source)) {
                continue;
            }
            if !neg.can_add() {
                neg.dirty = true;
                break;
            }
            let mut codec = d.codec.clone();
            codec.feedback = match d.kind {
                MediaKind::Video => vec![
                    "nack".into(),
                    "nack pli".into(),
                    "ccm fir".into(),
                    "transport-cc".into(),
                ],
                MediaKind::Audio => vec!["transport-cc".into()],
            };
            codec.payload_type = assign_payload_type(&neg.lines, &codec);
            let rtx = (d.kind == MediaKind::Video).then(|| {
                (
                    assign_rtx_payload_type(&neg.lines, codec.payload_type),
                    rng.gen(),
                )
            });
            let red = (d.kind == MediaKind::Audio)
                .then(|| assign_red_payload_type(&neg.lines, codec.payload_type));
            neg.add(SubLine {
                mid: String::new(),
                kind: d.kind,
                source: Some(d.source),
                track_id: d.info.id.clone(),
                stream_id: d.stream_id.clone(),
                ssrc: rng.gen(),
                codec,
                rtx,
                rtx_accepted: false,
                red,
                red_accepted: false,
                ext: subscriber_exts(d.kind, dd),
                relay_index: None,
                accepted: false,
                offered_live: false,
                free: false,
            });
        }
        for i in removed {
            self.relay.remove_viewer_track(sid, i);
        }
        self.offer_if_needed(sid);
    }

    /// Sends a new offer when lines changed and no offer is outstanding.
    pub(super) fn offer_if_needed(&mut self, sid: SessionId) {
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        if !s.negotiation.dirty || s.negotiation.awaiting_answer {
            return;
        }
        let Some(pid) = s.participant else { return };
        if s.negotiation.restart_ice {
            // The remote ufrag comes with the answer (or the first check with the new one).
            self.restart_ice(sid, "", "");
        }
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.negotiation.restart_ice = false;
        }
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        let neg = &s.negotiation;
        let lines: Vec<OfferLine> = neg
            .lines
            .iter()
            .enumerate()
            .map(|(i, l)| OfferLine {
                mid: l.mid.clone(),
                kind: l.kind,
                codec: l.codec.clone(),
                ext: l.ext.clone(),
                bundled: neg.state(i) != LineState::Stopped,
                source: l.source.map(|_| Source {
                    ssrc: l.ssrc,
                    cname: format!("volna-{}", l.stream_id),
                    stream_id: l.stream_id.clone(),
                    track_id: l.track_id.clone(),
                    rtx: l.rtx,
                    red: l.red,
                }),
            })
            .collect();
        let tracks: BTreeMap<String, String> = s
            .negotiation
            .lines
            .iter()
            .filter(|l| l.source.is_some())
            .map(|l| (l.mid.clone(), l.track_id.clone()))
            .collect();
        let sdp = build_offer(&self.local(s), neg.version + 1, &lines);
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.negotiation.offered();
        }
        self.send(pid, ServerMessage::Offer { sdp, tracks });
    }

    /// The participant's answer to the subscriber offer.
    pub fn participant_answer(
        &mut self,
        now: Instant,
        pid: ParticipantId,
        sdp: &str,
    ) -> Result<(), SessionError> {
        let p = self.joined(pid)?;
        let sid = p
            .subscriber
            .ok_or_else(|| SessionError::new(409, "no_offer", "no offer is outstanding"))?;
        let answer =
            Offer::parse(sdp).map_err(|e| SessionError::new(400, "bad_sdp", e.to_string()))?;
        let s = self
            .sessions
            .get(&sid)
            .ok_or_else(|| SessionError::new(409, "no_offer", "no offer is outstanding"))?;
        if !s.negotiation.awaiting_answer {
            return Err(SessionError::new(
                409,
                "no_offer",
                "no offer is outstanding",
            ));
        }
        if answer.media.len() != s.negotiation.lines.len()
            || answer
                .media
                .iter()
                .zip(&s.negotiation.lines)
                .any(|(a, l)| a.mid != l.mid)
        {
            return Err(SessionError::new(
                400,
                "bad_sdp",
                "the answer's m-lines do not match the offer",
            ));
        }
        if answer.setup == Setup::Actpass {
            return Err(SessionError::new(
                400,
                "bad_sdp",
                "an answer must say a=setup:active or passive",
            ));
        }
        if !s.remote_ufrag.is_empty() && s.remote_ufrag != answer.ice_ufrag {
            return Err(SessionError::new(
                400,
                "bad_sdp",
                "ICE restarts are not supported",
            ));
        }
        let first = s.dtls.is_none();
        let dtls = if first {
            Some(
                crate::transport::webrtc::dtls::Dtls::new(
                    now,
                    &self.identity,
                    &answer.fingerprint,
                    Remote::of_answer(&answer).dtls_client,
                )
                .map_err(SessionError::internal)?,
            )
        } else {
            None
        };
        let s = self.sessions.get_mut(&sid).expect("looked up above");
        s.remote_ufrag = answer.ice_ufrag.clone();
        s.remote_pwd = answer.ice_pwd.clone();
        if let Some(d) = dtls {
            s.dtls = Some(d);
        }
        for (line, m) in s.negotiation.lines.iter_mut().zip(&answer.media) {
            line.accepted = line.source.is_some()
                && m.active()
                && m.codecs
                    .iter()
                    .any(|c| c.payload_type == line.codec.payload_type);
            line.rtx_accepted = line.accepted
                && line.rtx.is_some_and(|(pt, _)| {
                    OfferedCodec::rtx_for(&m.codecs, line.codec.payload_type) == Some(pt)
                });
            line.red_accepted = line.accepted
                && line.red.is_some_and(|pt| {
                    OfferedCodec::red_for(&m.codecs, line.codec.payload_type) == Some(pt)
                });
        }
        s.negotiation.answered();
        let early = std::mem::take(&mut s.negotiation.early_dtls);
        let remote = s.remote;
        if first {
            self.flush_dtls(sid);
            if let Some(from) = remote {
                for d in early {
                    self.feed_dtls(now, sid, from, &d);
                }
            }
        }
        self.attach_accepted_lines(now, sid);
        // Tracks that came while the offer was out go in the next one.
        self.sync_subscriber(now, pid);
        Ok(())
    }

    /// The client could not apply the outstanding offer. Its receiving connection is replaced:
    /// the old session closes and a new one is offered from scratch (new ICE credentials and
    /// DTLS), which a client can always apply to a new `RTCPeerConnection`.
    pub fn participant_offer_failed(
        &mut self,
        now: Instant,
        pid: ParticipantId,
        reason: &str,
    ) -> Result<(), SessionError> {
        let p = self.joined(pid)?;
        let sid = p
            .subscriber
            .filter(|sid| {
                self.sessions
                    .get(sid)
                    .is_some_and(|s| s.negotiation.awaiting_answer)
            })
            .ok_or_else(|| SessionError::new(409, "no_offer", "no offer is outstanding"))?;
        warn!(participant = %p.public_id, session = sid, reason, "client could not apply an offer: new receiving connection");
        self.close(now, sid, CloseCause::Participant);
        if let Some(p) = self.participants.get_mut(&pid) {
            p.subscriber = None;
        }
        self.sync_subscriber(now, pid);
        Ok(())
    }

    /// Once SRTP is up, accepted lines start forwarding.
    pub(super) fn attach_accepted_lines(&mut self, now: Instant, sid: SessionId) {
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        if s.srtp.is_none() {
            return;
        }
        let lines: Vec<(usize, ViewerTrackSpec)> = s
            .negotiation
            .lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.accepted && l.relay_index.is_none())
            .filter_map(|(i, l)| {
                let mut ext = ExtMap::default();
                for (id, uri) in &l.ext {
                    if let Some(k) = ExtKind::from_uri(uri) {
                        ext.insert(*id, k);
                    }
                }
                Some((
                    i,
                    ViewerTrackSpec {
                        source: l.source?,
                        mid: l.mid.clone(),
                        ssrc: l.ssrc,
                        payload_type: l.codec.payload_type,
                        ext,
                        initial_seq: 0,
                        initial_ts: 0,
                        rtx: l.rtx.filter(|_| l.rtx_accepted).map(|(pt, ssrc)| Rtx {
                            payload_type: pt,
                            ssrc,
                        }),
                        red: l.red.filter(|_| l.red_accepted),
                        layer: None,
                    },
                ))
            })
            .collect();
        let (indices, mut specs): (Vec<usize>, Vec<ViewerTrackSpec>) = lines.into_iter().unzip();
        for spec in &mut specs {
            (spec.initial_seq, spec.initial_ts) = self.viewer_numbering();
        }
        let started = self.start_viewing(now, sid, specs);
        let pinned = self
            .sessions
            .get(&sid)
            .and_then(|s| s.participant)
            .and_then(|pid| self.participants.get(&pid))
            .map(|p| p.pinned.clone())
            .unwrap_or_default();
        let mut failed = false;
        for (line, index) in indices.into_iter().zip(started) {
            let Some(s) = self.sessions.get_mut(&sid) else {
                continue;
            };
            let neg = &mut s.negotiation;
            match index {
                Some(idx) => {
                    let l = &mut neg.lines[line];
                    l.relay_index = Some(idx);
                    if pinned.contains(&l.track_id) {
                        self.relay.set_pinned(sid, idx, true);
                    }
                }
                None => {
                    // Its publisher left meanwhile.
                    neg.end(line);
                    failed = true;
                }
            }
        }
        if failed {
            self.offer_if_needed(sid);
        }
    }

    /// The relay ended some of a subscriber's tracks (their publisher left).
    pub(super) fn tracks_ended(&mut self, _now: Instant, sid: SessionId, indices: &[usize]) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let neg = &mut s.negotiation;
        for i in 0..neg.lines.len() {
            if neg.lines[i]
                .relay_index
                .is_some_and(|r| indices.contains(&r))
            {
                neg.end(i);
            }
        }
        self.offer_if_needed(sid);
    }
}

/// Whether a payload type is in use by a line of the bundle (its codec, RTX or RED).
fn pt_taken(lines: &[SubLine], pt: u8) -> bool {
    lines.iter().any(|l| {
        l.codec.payload_type == pt || l.rtx.is_some_and(|(r, _)| r == pt) || l.red == Some(pt)
    })
}

/// A payload type for a format that wraps `apt` (RTX or RED): the one lines with that codec
/// already use, else a free one.
fn assign_wrapper_payload_type(
    lines: &[SubLine],
    apt: u8,
    of: impl Fn(&SubLine) -> Option<u8>,
) -> u8 {
    if let Some(pt) = lines
        .iter()
        .filter(|l| l.codec.payload_type == apt)
        .find_map(of)
    {
        return pt;
    }
    (96..=127)
        .chain(35..=63)
        .find(|&pt| !pt_taken(lines, pt) && pt != apt)
        .unwrap_or(127)
}

/// The RTX payload type for a codec's payload type: the one already used with it in this bundle,
/// else one no line uses.
fn assign_rtx_payload_type(lines: &[SubLine], apt: u8) -> u8 {
    assign_wrapper_payload_type(lines, apt, |l| l.rtx.map(|(pt, _)| pt))
}

/// The RED payload type for an audio codec's payload type, chosen as for RTX.
fn assign_red_payload_type(lines: &[SubLine], apt: u8) -> u8 {
    assign_wrapper_payload_type(lines, apt, |l| l.red)
}

/// A payload type for `codec` that no other m-line of the bundle uses for something else.
fn assign_payload_type(lines: &[SubLine], codec: &OfferedCodec) -> u8 {
    let same = |l: &SubLine| {
        l.codec.name.eq_ignore_ascii_case(&codec.name)
            && l.codec.clock_rate == codec.clock_rate
            && l.codec.fmtp == codec.fmtp
    };
    if let Some(l) = lines.iter().find(|l| same(l)) {
        return l.codec.payload_type;
    }
    if !pt_taken(lines, codec.payload_type) {
        return codec.payload_type;
    }
    (96..=127)
        .chain(35..=63)
        .find(|&pt| !pt_taken(lines, pt))
        .unwrap_or(codec.payload_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(pt: u8, name: &str, rtx: Option<u8>) -> SubLine {
        SubLine {
            mid: "0".into(),
            kind: MediaKind::Video,
            source: None,
            track_id: String::new(),
            stream_id: String::new(),
            ssrc: 1,
            codec: OfferedCodec {
                payload_type: pt,
                codec: None,
                name: name.into(),
                clock_rate: 90000,
                channels: String::new(),
                fmtp: String::new(),
                feedback: Vec::new(),
            },
            rtx: rtx.map(|r| (r, 2)),
            rtx_accepted: false,
            red: None,
            red_accepted: false,
            ext: Vec::new(),
            relay_index: None,
            accepted: false,
            offered_live: false,
            free: false,
        }
    }

    /// In one bundle a payload type means one thing: RTX types are shared by lines of the same
    /// codec and kept apart from every codec's and every other RTX type.
    #[test]
    fn rtx_payload_types_table() {
        let cases: Vec<(&str, Vec<SubLine>, u8, u8)> = vec![
            ("first line", vec![], 96, 97),
            (
                "same codec shares",
                vec![line(96, "VP8", Some(100))],
                96,
                100,
            ),
            (
                "another codec gets its own",
                vec![line(96, "VP8", Some(97)), line(98, "H264", None)],
                98,
                99,
            ),
            (
                "skips codecs and RTX types in use",
                vec![line(96, "VP8", Some(97)), line(98, "VP9", Some(99))],
                100,
                101,
            ),
        ];
        for (name, lines, apt, want) in cases {
            assert_eq!(assign_rtx_payload_type(&lines, apt), want, "{name}");
        }
        // A codec added later does not take a type an RTX stream already has.
        let lines = vec![line(96, "VP8", Some(97))];
        let mut h264 = line(97, "H264", None).codec;
        h264.payload_type = 97;
        assert_ne!(assign_payload_type(&lines, &h264), 97);
    }
}
