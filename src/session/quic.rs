//! QUIC sessions in the shard. A QUIC publisher or subscriber is a session like a WebRTC one,
//! without ICE, DTLS or SRTP (QUIC authenticates and encrypts): its packets come and go as RoQ
//! datagrams with the flow id the client chose, and the worker owns the connection.

use std::time::Instant;

use bytes::Bytes;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::connection::{Origin, Role};
use super::error::{Full, SessionError};
use super::shard::{CloseCause, Shard};
use crate::core::room::alloc::MAX_LAYERS;
use crate::core::room::{MediaKind, SessionId, TrackRef, TrackSpec, ViewerTrackSpec};
use crate::core::rtp::{is_rtcp, Codec, ExtMap, RtpView};
use crate::session::sdp::OfferedCodec;
use crate::transport::quic::roq::split_datagram;

/// A track carried on a flow, as both sides describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuicTrack {
    /// "audio" or "video".
    pub kind: String,
    /// Encoding name as in SDP: "opus", "VP8", "VP9", "H264", "AV1".
    pub codec: String,
    pub payload_type: u8,
    pub clock_rate: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u8>,
    /// Format parameters as in SDP `a=fmtp`, may be empty.
    #[serde(default)]
    pub fmtp: String,
    pub ssrc: u32,
    /// "slides" for a presentation (a screen share), as RFC 4796 `a=content` names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Simulcast: the track's encodings, each an RTP stream of its own (the first on `ssrc`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<QuicLayer>,
}

/// One simulcast encoding of a [`QuicTrack`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuicLayer {
    /// Its RID (RFC 8851), as the publisher named it.
    pub rid: String,
    pub ssrc: u32,
}

/// A publisher other nodes may relay (see [`Shard::relay_sources`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelaySource {
    /// Its publisher id (what a subscription names).
    pub publisher: String,
    pub identity: String,
    pub name: String,
    /// The mids of its tracks that are muted (by their publisher or the server API).
    #[serde(default)]
    pub muted: Vec<String>,
}

/// The header extensions relay links carry, with fixed ids on both ends: the audio level (the
/// other node's active speaker), the video orientation (a phone's rotation), the playout delay and
/// the AV1 dependency descriptor.
pub fn relay_extensions() -> ExtMap {
    use crate::core::rtp::ExtKind;
    ExtMap::from_pairs(&[
        (1, ExtKind::AudioLevel),
        (2, ExtKind::VideoOrientation),
        (3, ExtKind::PlayoutDelay),
        (4, ExtKind::DependencyDescriptor),
    ])
}

fn kind_of(t: &QuicTrack) -> Option<MediaKind> {
    match t.kind.as_str() {
        "audio" => Some(MediaKind::Audio),
        "video" => Some(MediaKind::Video),
        _ => None,
    }
}

impl Shard {
    /// A QUIC client publishes `tracks` on datagram flow `flow`; with `origin`, it is another
    /// node relaying one of its publishers.
    pub fn quic_publish(
        &mut self,
        now: Instant,
        room: &str,
        flow: u64,
        tracks: &[QuicTrack],
        origin: Option<Origin>,
    ) -> Result<(SessionId, String), SessionError> {
        self.admit(room)?;
        // A relayed copy takes its origin's publisher id: one that could not be one is refused
        // (dropping the origin instead would make the copy look local and be relayed onwards).
        if origin.as_ref().is_some_and(|o| !super::valid_name(&o.id)) {
            return Err(SessionError::new(
                400,
                "bad_origin",
                "a relayed publisher needs its origin's publisher id",
            ));
        }
        let max_tracks = self.config.limits.max_tracks_per_participant;
        if tracks.len() > max_tracks {
            // The limit every way in has (WHIP, the room protocol).
            return Err(Full::Tracks(max_tracks).refusal(room));
        }
        if tracks.is_empty() {
            return Err(SessionError::new(
                400,
                "bad_tracks",
                "publish at least one track",
            ));
        }
        let mut specs = Vec::new();
        let mut published = Vec::new();
        let ext = if origin.is_some() {
            relay_extensions()
        } else {
            ExtMap::default()
        };
        for (i, t) in tracks.iter().enumerate() {
            let kind = kind_of(t).ok_or_else(|| {
                SessionError::new(
                    400,
                    "bad_tracks",
                    format!("track {i}: kind must be audio or video"),
                )
            })?;
            let codec = Codec::from_name(&t.codec)
                .filter(|c| c.is_video() == (kind == MediaKind::Video))
                .ok_or_else(|| {
                    SessionError::new(
                        400,
                        "bad_tracks",
                        format!(
                            "track {i}: codec {} is not forwarded for {}",
                            t.codec, t.kind
                        ),
                    )
                })?;
            if t.payload_type > 127 || t.clock_rate == 0 {
                return Err(SessionError::new(
                    400,
                    "bad_tracks",
                    format!("track {i}: bad payload type or clock rate"),
                ));
            }
            // RTP and RTCP share the flow (RFC 5761 §4): with the marker bit, these payload
            // types read as RTCP packet types.
            if (64..=95).contains(&t.payload_type) {
                return Err(SessionError::new(
                    400,
                    "bad_tracks",
                    format!(
                        "track {i}: payload type {} is taken for RTCP, use 96-127",
                        t.payload_type
                    ),
                ));
            }
            // Packets go to tracks by SSRC: a shared one would silence all but the first.
            super::link_layers::check_ssrcs(tracks, i)?;
            let mid = i.to_string();
            specs.push(TrackSpec {
                kind,
                mid: mid.clone(),
                codec,
                payload_type: t.payload_type,
                clock_rate: t.clock_rate,
                // Simulcast layers' SSRCs are bound once the publisher exists.
                ssrc: t.layers.is_empty().then_some(t.ssrc),
                ext: ext.clone(),
                rids: t.layers.iter().map(|l| l.rid.clone()).collect(),
                // Native clients answer NACK and PLI; there is no REMB on QUIC (its congestion
                // controller paces the connection).
                feedback: crate::core::room::Feedback {
                    nack: true,
                    pli: true,
                    fir: false,
                    remb: false,
                },
            });
            let offered = OfferedCodec {
                payload_type: t.payload_type,
                codec: Some(codec),
                name: t.codec.clone(),
                clock_rate: t.clock_rate,
                channels: t.channels.map(|c| c.to_string()).unwrap_or_default(),
                fmtp: t.fmtp.clone(),
                feedback: vec!["nack".into(), "nack pli".into()],
            };
            published.push((kind, offered, mid));
        }
        let mut s = self
            .new_session(now, Role::Publisher, room, None)
            .map_err(SessionError::internal)?;
        s.quic_flow = Some(flow);
        s.published = published;
        if let Some(o) = origin {
            s.public_id = o.id.clone();
            s.origin = Some(Box::new(o));
        }
        self.relay
            .add_publisher(s.id, room, s.rtcp_ssrc, specs)
            .map_err(SessionError::internal)?;
        for (i, t) in tracks.iter().enumerate() {
            if t.kind == "video" && t.content.as_deref() == Some("slides") {
                self.relay.set_slides(s.id, i, true);
            }
        }
        let relayed = s.origin.is_some();
        for (i, t) in tracks
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.layers.is_empty())
        {
            let ssrcs: Vec<u32> = t.layers.iter().map(|l| l.ssrc).collect();
            self.relay.bind_layers(s.id, i, &ssrcs, relayed);
        }
        let (id, public) = (s.id, s.public_id.clone());
        info!(session = id, room, publisher = %public, "QUIC publisher created");
        self.register(s);
        self.publisher_appeared(now, id);
        Ok((id, public))
    }

    /// A QUIC client subscribes, on flow `flow`, to one publisher of the room (the most recent
    /// when `publisher` is `None`). Returns the tracks as they will arrive. A `relay` subscriber
    /// (another node of the cluster) gets the header extensions of [`relay_extensions`].
    pub fn quic_subscribe(
        &mut self,
        now: Instant,
        room: &str,
        publisher: Option<&str>,
        flow: u64,
        relay: bool,
    ) -> Result<(SessionId, String, Vec<QuicTrack>), SessionError> {
        let pub_id = self.find_publisher(room, publisher)?;
        self.admit(room)?;
        let (public, published) = {
            let p = &self.sessions[&pub_id];
            (p.public_id.clone(), p.published.clone())
        };
        let mut s = self
            .new_session(now, Role::Viewer, room, None)
            .map_err(SessionError::internal)?;
        s.quic_flow = Some(flow);
        let sid = s.id;
        self.register(s);
        // A relay link gets each simulcast layer as a stream of its own (the other node picks
        // for its viewers); anyone else one stream per track, the best layer its link carries.
        let rids: Vec<Vec<String>> = match self.relay.publisher_tracks(pub_id) {
            Some(t) if relay => t.map(|t| t.rids.clone()).collect(),
            _ => Vec::new(),
        };
        let mut specs = Vec::with_capacity(published.len());
        // Per track: the index in `specs` of its copy of each layer (one without layers).
        let mut per_track = Vec::with_capacity(published.len());
        for (i, (_, codec, mid)) in published.iter().enumerate() {
            let layers = rids.get(i).map_or(0, |r| r.len().min(MAX_LAYERS));
            let mut copies = Vec::new();
            for layer in (0..layers.max(1)).map(|l| (layers > 1).then_some(l as u8)) {
                let (initial_seq, initial_ts) = self.viewer_numbering();
                copies.push(specs.len());
                specs.push(ViewerTrackSpec {
                    source: TrackRef {
                        publisher: pub_id,
                        track: i,
                    },
                    mid: mid.clone(),
                    ssrc: self.rng.gen(),
                    payload_type: codec.payload_type,
                    ext: if relay {
                        relay_extensions()
                    } else {
                        ExtMap::default()
                    },
                    initial_seq,
                    initial_ts,
                    rtx: None,
                    red: None,
                    layer,
                });
            }
            per_track.push(copies);
        }
        let ssrcs: Vec<u32> = specs.iter().map(|s| s.ssrc).collect();
        let started = self.start_viewing(now, sid, specs);
        let mut tracks = Vec::with_capacity(published.len());
        let mut link_copies = Vec::with_capacity(published.len());
        for (i, ((kind, codec, _), copies)) in published.iter().zip(per_track).enumerate() {
            let Some(indices) = copies
                .iter()
                .map(|&k| started[k])
                .collect::<Option<Vec<_>>>()
            else {
                continue;
            };
            let layers = match rids.get(i) {
                Some(r) if copies.len() > 1 => {
                    // The publisher's RIDs where the other node takes them all (any RFC 8851
                    // RID fits a QUIC track's rule but a long one), else the layers' indices.
                    let usable = r.iter().all(|rid| super::link_layers::valid_rid(rid));
                    r.iter()
                        .zip(&copies)
                        .enumerate()
                        .map(|(l, (rid, &k))| QuicLayer {
                            rid: if usable { rid.clone() } else { l.to_string() },
                            ssrc: ssrcs[k],
                        })
                        .collect()
                }
                _ => Vec::new(),
            };
            link_copies.push(if layers.is_empty() {
                Vec::new()
            } else {
                indices
            });
            tracks.push(QuicTrack {
                kind: match kind {
                    MediaKind::Audio => "audio".into(),
                    MediaKind::Video => "video".into(),
                },
                codec: codec.name.clone(),
                payload_type: codec.payload_type,
                clock_rate: codec.clock_rate,
                channels: codec.channels.parse().ok(),
                fmtp: codec.fmtp.clone(),
                ssrc: ssrcs[copies[0]],
                content: self
                    .relay
                    .track_is_slides(pub_id, i)
                    .then(|| "slides".into()),
                layers,
            });
        }
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.link_layers.copies = link_copies;
        }
        info!(session = sid, room, publisher = %public, "QUIC subscriber created");
        Ok((sid, public, tracks))
    }

    /// The room's publishers that publish to this node (not relayed from another), each with
    /// the identity and name the room shows for it: what other nodes of the cluster relay.
    pub fn relay_sources(&self, room: &str) -> Vec<RelaySource> {
        let Some(list) = self.relay.room_publishers(room) else {
            return Vec::new();
        };
        list.iter()
            .filter_map(|id| self.sessions.get(id))
            .filter(|s| s.origin.is_none())
            .map(|s| {
                let owner = s.participant.and_then(|p| self.participants.get(&p));
                let (identity, name) = match owner {
                    Some(p) => (p.identity.clone(), p.name.clone()),
                    None => {
                        let m = super::events::standalone(s);
                        (m.identity, m.name)
                    }
                };
                let muted = s
                    .published
                    .iter()
                    .enumerate()
                    .filter(|(i, (_, _, mid))| {
                        self.relay.track_is_blocked(s.id, *i)
                            || owner.is_some_and(|p| {
                                let id = format!("{}-{mid}", p.public_id);
                                p.muted.get(&id).copied().unwrap_or(false)
                            })
                    })
                    .map(|(_, (_, _, mid))| mid.clone())
                    .collect();
                RelaySource {
                    publisher: s.public_id.clone(),
                    identity,
                    name,
                    muted,
                }
            })
            .collect()
    }

    /// Rooms with members that came to this node (participants, sessions not relayed from
    /// another node): the rooms it serves in the cluster.
    pub fn local_rooms(&self) -> Vec<String> {
        let mut rooms: Vec<String> = self
            .participants
            .values()
            .map(|p| p.room.clone())
            .chain(
                self.sessions
                    .values()
                    .filter(|s| s.origin.is_none())
                    .map(|s| s.room.clone()),
            )
            .collect();
        rooms.sort();
        rooms.dedup();
        rooms
    }

    /// One RoQ datagram of a QUIC session (the worker matched its flow to `session`).
    pub fn quic_datagram(&mut self, now: Instant, session: SessionId, data: &Bytes) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        let role = s.role;
        let Ok((_, packet)) = split_datagram(data) else {
            self.count_junk();
            return;
        };
        s.last_rx = now;
        if is_rtcp(packet) {
            self.relay_rtcp(now, session, role, packet);
            return;
        }
        if role != Role::Publisher {
            self.count_junk();
            return;
        }
        // The packet stays a view into the datagram, shared with the retransmit cache.
        let packet = data.slice(data.len() - packet.len()..);
        match RtpView::parse(&packet) {
            Ok(view) => self.relay_rtp(now, session, &packet, &view),
            Err(_) => self.count_junk(),
        }
    }

    /// Which of a QUIC connection's `sessions` still run (the rest ended on their own: a
    /// subscription whose publisher left).
    pub fn quic_live(&self, sessions: &[SessionId]) -> Vec<SessionId> {
        sessions
            .iter()
            .copied()
            .filter(|s| self.sessions.contains_key(s))
            .collect()
    }

    /// A QUIC connection ended: its sessions end.
    pub fn quic_closed(&mut self, now: Instant, sessions: &[SessionId]) {
        for s in sessions {
            self.close(now, *s, CloseCause::PeerClosed);
        }
    }

    /// The next datagram for a QUIC session.
    pub fn poll_quic_transmit(&mut self) -> Option<(SessionId, Bytes)> {
        self.quic_queue.pop_front()
    }
}
