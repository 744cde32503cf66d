//! WHIP and WHEP sessions (RFC 9725): a publisher from its offer, a viewer of one publisher from
//! its offer, ICE restarts by `PATCH`, and `DELETE`; each answered with volna's SDP.

use std::time::Instant;

use rand::Rng;
use tracing::info;

use super::connection::Role;
use super::error::{Full, SessionError};
use super::shard::{
    random_string, CloseCause, Created, IceRestart, Remote, Shard, AV1_VIEWER_EXTS,
    NEGOTIATED_EXTS, VIEWER_EXTS,
};
use crate::core::room::{MediaKind, Rtx, SessionId, TrackRef, TrackSpec, ViewerTrackSpec};
use crate::core::rtp::{Codec, ExtKind};
use crate::session::sdp::{
    build_answer, AnswerMedia, Direction, Offer, OfferedCodec, SdpError, Source,
};

/// A codec volna can forward for this kind of media.
fn forwardable(kind: MediaKind, c: &OfferedCodec) -> bool {
    c.codec
        .is_some_and(|codec| codec.is_video() == (kind == MediaKind::Video))
}

impl Shard {
    /// WHIP: a publisher's offer. Each m-line that sends audio or video is received with the
    /// offerer's most preferred codec volna can forward.
    pub fn publish(
        &mut self,
        now: Instant,
        room: &str,
        offer: &Offer,
    ) -> Result<Created, SessionError> {
        self.admit(room)?;
        let max = self.config.limits.max_tracks_per_participant;
        let (id, created) = self.publish_session(now, room, offer, max)?;
        self.publisher_appeared(now, id);
        Ok(created)
    }

    /// Creates a publisher session with at most `max_tracks` tracks.
    pub(super) fn publish_session(
        &mut self,
        now: Instant,
        room: &str,
        offer: &Offer,
        max_tracks: usize,
    ) -> Result<(SessionId, Created), SessionError> {
        if self.relay.room_publishers(room).is_none()
            && self.relay.room_count() >= self.config.limits.max_rooms
        {
            return Err(Full::Node(self.config.limits.max_rooms).refusal(room));
        }
        let mut answers = Vec::with_capacity(offer.media.len());
        let mut tracks = Vec::new();
        let mut published = Vec::new();
        let mut slides = Vec::new();
        for m in &offer.media {
            let codec = m
                .kind
                .filter(|_| m.direction.sends() && m.active())
                .and_then(|k| m.codecs.iter().find(|c| forwardable(k, c)));
            let (Some(kind), Some(codec)) = (m.kind, codec) else {
                answers.push(AnswerMedia::Rejected);
                continue;
            };
            if tracks.len() >= max_tracks {
                return Err(Full::Tracks(max_tracks).refusal(room));
            }
            let a = AnswerMedia::accept(
                m,
                codec.clone(),
                Direction::RecvOnly,
                NEGOTIATED_EXTS,
                None,
                true,
            );
            tracks.push(TrackSpec {
                kind,
                mid: m.mid.clone(),
                codec: codec.codec.expect("forwardable codecs are known"),
                payload_type: codec.payload_type,
                clock_rate: codec.clock_rate,
                ssrc: m.ssrc,
                ext: a.ext_map(),
                feedback: a.feedback(),
                rids: a.rids().to_vec(),
            });
            published.push((kind, codec.clone(), m.mid.clone()));
            slides.push(m.slides && kind == MediaKind::Video);
            answers.push(a);
        }
        if tracks.is_empty() {
            return Err(SdpError::Unacceptable(
                "offer sends no audio or video in a codec volna forwards (Opus, VP8, VP9, H264, AV1)"
                    .into(),
            )
            .into());
        }
        let mut s = self.new_session(now, Role::Publisher, room, Some(Remote::of_offer(offer)))?;
        s.published = published;
        let answer = build_answer(offer, &self.local(&s), &answers);
        s.answer = answer.clone();
        self.relay
            .add_publisher(s.id, room, s.rtcp_ssrc, tracks)
            .map_err(SessionError::internal)?;
        for (i, _) in slides.iter().enumerate().filter(|(_, &on)| on) {
            self.relay.set_slides(s.id, i, true);
        }
        info!(session = s.id, room, publisher = %s.public_id, "publisher created");
        let id = s.id;
        let created = Created {
            answer,
            resource: s.resource.clone(),
            public_id: s.public_id.clone(),
        };
        self.register(s);
        Ok((id, created))
    }

    /// A publisher of the room by its public id, or the room's most recent one.
    pub(super) fn find_publisher(
        &self,
        room: &str,
        publisher: Option<&str>,
    ) -> Result<SessionId, SessionError> {
        let list = self
            .relay
            .room_publishers(room)
            .filter(|l| !l.is_empty())
            .ok_or(SessionError::no_room())?;
        match publisher {
            None => list.last().copied().ok_or(SessionError::no_room()),
            Some(p) => list
                .iter()
                .copied()
                .find(|id| self.sessions.get(id).is_some_and(|s| s.public_id == p))
                .ok_or(SessionError::no_publisher()),
        }
    }

    /// WHEP: a viewer's offer for one publisher of the room (the most recent one when `publisher`
    /// is `None`).
    pub fn view(
        &mut self,
        now: Instant,
        room: &str,
        publisher: Option<&str>,
        offer: &Offer,
    ) -> Result<Created, SessionError> {
        let pub_id = self.find_publisher(room, publisher)?;
        self.admit(room)?;
        let (pub_public, sources) = {
            let p = self
                .sessions
                .get(&pub_id)
                .ok_or(SessionError::no_publisher())?;
            (p.public_id.clone(), p.published.clone())
        };
        // Per source track: AV1 without simulcast (its descriptors describe what viewers get).
        let av1_single: Vec<bool> = self
            .relay
            .publisher_tracks(pub_id)
            .map(|ts| {
                ts.map(|t| t.codec == Codec::Av1 && t.rids.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let mut used = vec![false; sources.len()];
        let mut answers = Vec::with_capacity(offer.media.len());
        let mut vtracks = Vec::new();
        let rng = &mut self.rng;
        for m in &offer.media {
            let Some(kind) = m.kind.filter(|_| m.direction.receives() && m.active()) else {
                answers.push(AnswerMedia::Rejected);
                continue;
            };
            let pick = sources.iter().enumerate().find_map(|(i, (k, src, _))| {
                if used[i] || *k != kind {
                    return None;
                }
                let theirs = m.codecs.iter().find(|c| c.compatible(src))?;
                Some((i, theirs.clone()))
            });
            let Some((track, codec)) = pick else {
                // Nothing to send on it. Rejecting it (port 0) would break a bundle whose tag it
                // is, so it is accepted as inactive when one of its codecs is known.
                answers.push(match m.codecs.iter().find(|c| forwardable(kind, c)) {
                    Some(c) => AnswerMedia::accept(
                        m,
                        c.clone(),
                        Direction::Inactive,
                        &[ExtKind::Mid],
                        None,
                        false,
                    ),
                    None => AnswerMedia::Rejected,
                });
                continue;
            };
            used[track] = true;
            let ssrc: u32 = rng.gen();
            let pt = codec.payload_type;
            // Resends and probes go on an RTX stream when the viewer offered one for this codec.
            let rtx = OfferedCodec::rtx_for(&m.codecs, pt).map(|rtx_pt| Rtx {
                payload_type: rtx_pt,
                ssrc: rng.gen(),
            });
            // Audio may go as RED (redundant frames) when the viewer's link loses packets.
            let red = (kind == MediaKind::Audio)
                .then(|| OfferedCodec::red_for(&m.codecs, pt))
                .flatten();
            let src = Source {
                ssrc,
                cname: format!("volna-{pub_public}"),
                stream_id: format!("volna-{pub_public}"),
                track_id: format!("{pub_public}-{track}"),
                rtx: rtx.map(|r| (r.payload_type, r.ssrc)),
                red,
            };
            let exts = if av1_single.get(track) == Some(&true) {
                AV1_VIEWER_EXTS
            } else {
                VIEWER_EXTS
            };
            let a = AnswerMedia::accept(m, codec, Direction::SendOnly, exts, Some(src), false);
            vtracks.push(ViewerTrackSpec {
                source: TrackRef {
                    publisher: pub_id,
                    track,
                },
                mid: m.mid.clone(),
                ssrc,
                payload_type: pt,
                ext: a.ext_map(),
                initial_seq: rng.gen(),
                initial_ts: rng.gen(),
                rtx,
                red,
                layer: None,
            });
            answers.push(a);
        }
        if vtracks.is_empty() {
            return Err(SdpError::Unacceptable(
                "offer receives nothing this publisher sends (check the media kinds and codecs)"
                    .into(),
            )
            .into());
        }
        let mut s = self.new_session(now, Role::Viewer, room, Some(Remote::of_offer(offer)))?;
        s.pending_viewer = Some(vtracks);
        let answer = build_answer(offer, &self.local(&s), &answers);
        info!(session = s.id, room, publisher = %pub_public, "viewer created");
        let created = Created {
            answer,
            resource: s.resource.clone(),
            public_id: pub_public,
        };
        self.register(s);
        Ok(created)
    }

    /// New local ICE credentials for a session (an ICE restart, RFC 8839 §4.4.1.1.1): checks
    /// must then use them and `remote_ufrag` (empty: learnt from the first check), and the
    /// next nominating check picks the path. DTLS and SRTP go on; media keeps flowing on the
    /// old path until then.
    pub(super) fn restart_ice(
        &mut self,
        id: SessionId,
        remote_ufrag: &str,
        remote_pwd: &str,
    ) -> Option<(String, String)> {
        let s = self.sessions.get_mut(&id)?;
        self.by_ufrag.remove(&s.local_ufrag);
        s.local_ufrag = random_string(&mut self.rng, 8);
        s.local_pwd = random_string(&mut self.rng, 24);
        s.remote_ufrag = remote_ufrag.to_owned();
        s.remote_pwd = remote_pwd.to_owned();
        s.nominated = false;
        self.by_ufrag.insert(s.local_ufrag.clone(), id);
        self.ice_restarts += 1;
        info!(session = id, room = %s.room, "ICE restart");
        Some((s.local_ufrag.clone(), s.local_pwd.clone()))
    }

    /// A WHIP/WHEP `PATCH` with the client's ICE credentials (RFC 9725 §4.3): new ones restart
    /// ICE and return volna's new ones; the same ones (trickled candidates) change nothing.
    pub fn patch_ice(
        &mut self,
        role: Role,
        room: &str,
        resource: &str,
        remote_ufrag: &str,
        remote_pwd: &str,
        may: &dyn Fn(Option<&str>) -> bool,
    ) -> Result<Option<IceRestart>, SessionError> {
        let id = self.by_resource(role, room, resource)?;
        if !may(self.sessions[&id].owner.as_deref()) {
            return Err(SessionError::not_owner());
        }
        if self.sessions[&id].remote_ufrag == remote_ufrag {
            return Ok(None);
        }
        Ok(self
            .restart_ice(id, remote_ufrag, remote_pwd)
            .map(|(ufrag, pwd)| IceRestart {
                ufrag,
                pwd,
                candidates: self.candidates(),
                tcp_port: self.config.tcp_addr.map(|a| a.port()),
            }))
    }

    /// Records who created a WHIP/WHEP session (the token's identity).
    pub fn set_owner(&mut self, resource: &str, owner: Option<String>) {
        if let Some(s) = self
            .by_resource
            .get(resource)
            .and_then(|id| self.sessions.get_mut(id))
        {
            s.owner = owner;
        }
    }

    /// Ends a session by its resource id (WHIP/WHEP DELETE). `role` must match the URL used, and
    /// `may` allow the caller to act for the session's owner.
    pub fn delete(
        &mut self,
        now: Instant,
        role: Role,
        room: &str,
        resource: &str,
        may: &dyn Fn(Option<&str>) -> bool,
    ) -> Result<(), SessionError> {
        let id = self.by_resource(role, room, resource)?;
        if !may(self.sessions[&id].owner.as_deref()) {
            return Err(SessionError::not_owner());
        }
        self.close(now, id, CloseCause::Deleted);
        Ok(())
    }

    /// A WHIP or WHEP session by its URL: the resource id, under the room and role it was made
    /// with (a room participant's sessions have no URL).
    pub(super) fn by_resource(
        &self,
        role: Role,
        room: &str,
        resource: &str,
    ) -> Result<SessionId, SessionError> {
        let id = *self
            .by_resource
            .get(resource)
            .ok_or(SessionError::no_session())?;
        let s = self.sessions.get(&id).ok_or(SessionError::no_session())?;
        if s.role != role || s.room != room || s.participant.is_some() {
            return Err(SessionError::no_session());
        }
        Ok(id)
    }
}
