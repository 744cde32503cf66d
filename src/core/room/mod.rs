//! Rooms, publishers, viewers and the tracks between them: the sans-IO heart of the relay.
//!
//! The caller (a transport) feeds decrypted RTP and RTCP in with `handle_*`, calls
//! [`Relay::handle_timeout`] when [`Relay::poll_timeout`] says, and receives everything to send
//! through a [`Sink`]: rewritten RTP headers with the shared payload, and RTCP, per session.
//! Nothing here reads a clock or touches a socket.
//!
//! This file holds the relay's tables and dispatches to the parts, one concern each:
//! `publisher` (ingest, key-frame requests, reports), `viewer` (what each viewer is sent),
//! `send` (the one path every packet to a viewer leaves by), `feedback` (NACK, PLI, sender
//! reports), `allocate` with `policy` and `alloc` (layer choice), `probe`, `speaker`,
//! and `timers`.

pub mod alloc;
mod allocate;
mod feedback;
pub mod histogram;
mod pacer;
mod policy;
mod probe;
mod publisher;
mod resend;
mod send;
mod speaker;
mod spec;
mod stats;
mod svc;
mod timers;
mod track;
pub mod twcc_rx;
mod viewer;

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;

use crate::core::forward::Forwarder;
use crate::core::rtcp;
use crate::core::rtp::RtpView;
use allocate::Round;
use publisher::{PubTrack, Publisher, RateMeter};
use send::Scratch;
use speaker::RoomState;
use timers::{Timer, Timers};
use track::ViewerTrack;
use viewer::{Incoming, Viewer};

pub use spec::{
    Feedback, MediaKind, RelayConfig, RelayCounters, RelayEvent, RoomError, Rtx, SessionId, Sink,
    TrackRef, TrackSpec, ViewerTrackSpec,
};
pub use stats::ReceiveStats;

/// All rooms of one worker.
pub struct Relay {
    config: RelayConfig,
    rooms: HashMap<String, RoomState>,
    publishers: HashMap<SessionId, Publisher>,
    viewers: HashMap<SessionId, Viewer>,
    scratch: Box<Scratch>,
    counters: RelayCounters,
    events: VecDeque<RelayEvent>,
    timers: Timers,
    /// Origin of the arrival times in transport-cc feedback to publishers.
    epoch: Option<Instant>,
    /// The allocation round's lists (reused) and what it leaves to do.
    round: Round,
    /// Viewers with video waiting in their pacers (the earliest due is [`Timer::Pace`]).
    pacing: Vec<SessionId>,
    /// Publisher tracks with simulcast layers.
    simulcast_tracks: usize,
}

/// Notes that viewer `vid`'s pacer has work at `due`.
fn pace_later(timers: &mut Timers, pacing: &mut Vec<SessionId>, vid: SessionId, due: Instant) {
    timers.at_most(Timer::Pace, due);
    if !pacing.contains(&vid) {
        pacing.push(vid);
    }
}

impl Relay {
    pub fn new(config: RelayConfig) -> Self {
        Self {
            config,
            rooms: HashMap::new(),
            publishers: HashMap::new(),
            viewers: HashMap::new(),
            scratch: Box::new(Scratch::new()),
            counters: RelayCounters::default(),
            // Room for a burst of events, so emitting one on the packet path does not allocate.
            events: VecDeque::with_capacity(64),
            timers: Timers::default(),
            epoch: None,
            round: Round::new(),
            pacing: Vec::with_capacity(64),
            simulcast_tracks: 0,
        }
    }

    pub fn counters(&self) -> &RelayCounters {
        &self.counters
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// A viewer's bandwidth estimate in bps, and whether transport-cc feedback has shaped it.
    pub fn viewer_estimate(&self, id: SessionId) -> Option<(u64, bool)> {
        let v = self.viewers.get(&id)?;
        Some((v.cc.bwe.estimate_bps(), v.cc.bwe.last_feedback().is_some()))
    }

    pub fn publisher_count(&self) -> usize {
        self.publishers.len()
    }

    /// Tracks of every publisher.
    pub fn track_count(&self) -> usize {
        self.publishers.values().map(|p| p.tracks.len()).sum()
    }

    pub fn viewer_count(&self) -> usize {
        self.viewers.len()
    }

    /// Publishers of a room, oldest first.
    pub fn room_publishers(&self, room: &str) -> Option<&[SessionId]> {
        self.rooms.get(room).map(|r| r.publishers.as_slice())
    }

    pub fn publisher_tracks(&self, id: SessionId) -> Option<impl Iterator<Item = &TrackSpec>> {
        self.publishers
            .get(&id)
            .map(|p| p.tracks.iter().map(|t| &t.spec))
    }

    pub fn add_publisher(
        &mut self,
        id: SessionId,
        room: &str,
        rtcp_ssrc: u32,
        tracks: Vec<TrackSpec>,
    ) -> Result<(), RoomError> {
        if self.publishers.contains_key(&id) || self.viewers.contains_key(&id) {
            return Err(RoomError::Exists(id));
        }
        let p = Publisher::new(room, rtcp_ssrc, tracks);
        self.simulcast_tracks += p.simulcast_tracks();
        self.publishers.insert(id, p);
        self.rooms
            .entry(room.to_owned())
            .or_insert_with(|| RoomState::new(room))
            .publishers
            .push(id);
        Ok(())
    }

    /// Adds a viewer (a session that receives) to a room, with no tracks yet.
    pub fn add_viewer(&mut self, id: SessionId, room: &str) -> Result<(), RoomError> {
        if self.publishers.contains_key(&id) || self.viewers.contains_key(&id) {
            return Err(RoomError::Exists(id));
        }
        self.rooms
            .entry(room.to_owned())
            .or_insert_with(|| RoomState::new(room));
        self.viewers.insert(id, Viewer::new(room));
        Ok(())
    }

    /// Starts forwarding a publisher track to a viewer; returns the viewer track's index.
    /// Video starts from the cached key frame where it can, else asks the publisher for one at
    /// once (rate-limited per publisher track).
    pub fn add_viewer_track(
        &mut self,
        now: Instant,
        viewer: SessionId,
        spec: ViewerTrackSpec,
        sink: &mut impl Sink,
    ) -> Result<usize, RoomError> {
        let v = self.viewers.get_mut(&viewer).ok_or(RoomError::NoViewer)?;
        let p = self
            .publishers
            .get_mut(&spec.source.publisher)
            .ok_or(RoomError::NoPublisher)?;
        let src = p
            .tracks
            .get_mut(spec.source.track)
            .ok_or(RoomError::BadSource)?;
        let index = v.tracks.len();
        src.viewers.push((viewer, index));
        let fwd = Forwarder::new(
            src.spec.codec,
            src.spec.clock_rate,
            spec.ssrc,
            spec.payload_type,
            spec.initial_seq,
            spec.initial_ts,
        );
        let (source, slot) = (spec.source, spec.layer.unwrap_or(0));
        let mut track = ViewerTrack::new(spec, fwd);
        track.fwd.set_target(slot);
        v.tracks.push(track);
        if !self.replay_keyframe(now, viewer, index, sink) {
            self.request_keyframe(now, source.publisher, source.track, slot, sink);
        }
        Ok(index)
    }

    /// Binds the simulcast layers of a publisher's track to the SSRCs it announced (in its
    /// RID order): a QUIC publisher's, which carry no RID extension. A `relayed` track (from
    /// another node, whose link brings a layer back with a key frame from the origin's cache)
    /// has a layer no viewer here wants let go sooner than a browser's encoding is.
    pub fn bind_layers(
        &mut self,
        publisher: SessionId,
        track: usize,
        ssrcs: &[u32],
        relayed: bool,
    ) {
        if let Some(t) = self.pub_track_mut(publisher, track) {
            for (l, ssrc) in t.layers.iter_mut().zip(ssrcs) {
                l.ssrc = Some(*ssrc);
            }
            t.relayed = relayed;
        }
    }

    /// Which layer copies (see [`ViewerTrackSpec::layer`]) of viewer `viewer` the other node
    /// wants: `wanted(index)` for each of them (`None`: as it was); those it no longer wants
    /// stop at once, the others start at the next allocation round (from a key frame).
    pub fn set_link_layers(&mut self, viewer: SessionId, wanted: impl Fn(usize) -> Option<bool>) {
        let Some(v) = self.viewers.get_mut(&viewer) else {
            return;
        };
        for (i, t) in v.tracks.iter_mut().enumerate() {
            if !t.live || t.spec.layer.is_none() {
                continue;
            }
            if let Some(w) = wanted(i) {
                t.wanted = w;
                if !w {
                    t.fwd.pause();
                }
            }
        }
    }

    /// A relay link's budget for viewer `viewer` (its share of the link's estimate): its
    /// allocation keeps audio and the lowest layers within it and pauses top layers first.
    pub fn set_link_budget(&mut self, viewer: SessionId, bps: u64) {
        if let Some(v) = self.viewers.get_mut(&viewer) {
            v.link_bps = Some(bps);
        }
    }

    /// What a relay link carries for a viewer: its streams on (tracks, and layer copies
    /// forwarding or about to), and the bps of what it would send with room for it all (each
    /// live track at its source's rate; a layer copy only while the other node wants it).
    pub fn link_streams(&self, viewer: SessionId) -> (usize, u64) {
        let Some(v) = self.viewers.get(&viewer) else {
            return (0, 0);
        };
        let live = v.tracks.iter().filter(|t| t.live);
        let on = live
            .clone()
            .filter(|t| t.spec.layer.is_none() || !t.fwd.is_paused())
            .count();
        let want = live
            .filter(|t| t.wanted)
            .filter_map(|t| {
                let src = self.publishers.get(&t.spec.source.publisher)?;
                let layers = &src.tracks.get(t.spec.source.track)?.layers;
                // Each layer's rate as the last allocation round measured it.
                Some(match t.spec.layer {
                    Some(slot) => layers.get(usize::from(slot)).map_or(0, |l| l.known_bps),
                    None => layers.iter().map(|l| l.known_bps).max().unwrap_or(0),
                })
            })
            .sum();
        (on, want)
    }

    /// Starts a viewer track that waits for a key frame from the cache (see
    /// [`Viewer::replay`]); returns whether it did.
    fn replay_keyframe(
        &mut self,
        now: Instant,
        viewer: SessionId,
        index: usize,
        sink: &mut impl Sink,
    ) -> bool {
        let Some(v) = self.viewers.get_mut(&viewer) else {
            return false;
        };
        let Some(source) = v.tracks.get(index).map(|t| t.spec.source) else {
            return false;
        };
        let Some(src) = self
            .publishers
            .get(&source.publisher)
            .and_then(|p| p.tracks.get(source.track))
        else {
            return false;
        };
        let scratch = &mut self.scratch;
        let (started, due) = v.replay(now, (viewer, index), src, scratch, &mut self.counters, sink);
        if let Some(due) = due {
            pace_later(&mut self.timers, &mut self.pacing, viewer, due);
        }
        started
    }

    /// Marks a publisher track as a presentation (a screen share, RFC 4796 `a=content:slides`):
    /// its video goes before cameras' when a viewer's link is short.
    pub fn set_slides(&mut self, publisher: SessionId, track: usize, slides: bool) {
        if let Some(t) = self.pub_track_mut(publisher, track) {
            t.slides = slides;
        }
    }

    /// Whether a publisher track is a presentation (see [`Relay::set_slides`]).
    pub fn track_is_slides(&self, publisher: SessionId, track: usize) -> bool {
        self.publishers
            .get(&publisher)
            .and_then(|p| p.tracks.get(track))
            .is_some_and(|t| t.slides)
    }

    /// Stops (or resumes) forwarding a publisher track to every viewer, as a moderator's mute:
    /// its packets are still taken in, so rates and the key-frame cache stay current. A video
    /// track that resumes asks its publisher for a key frame, for viewers to decode from.
    /// Returns whether the track exists.
    pub fn set_blocked(
        &mut self,
        now: Instant,
        publisher: SessionId,
        track: usize,
        blocked: bool,
        sink: &mut impl Sink,
    ) -> bool {
        let Some(t) = self.pub_track_mut(publisher, track) else {
            return false;
        };
        let resumed = t.blocked && !blocked && t.spec.kind == MediaKind::Video;
        t.blocked = blocked;
        let layers = t.layers.len();
        if resumed {
            for layer in 0..layers {
                self.request_keyframe(now, publisher, track, layer as u8, sink);
            }
        }
        true
    }

    /// Times the viewer's first media packet from `since` (its session's start) into the
    /// time-to-first-media distribution. Returns whether the viewer exists.
    pub fn time_first_media(&mut self, viewer: SessionId, since: Instant) -> bool {
        let Some(v) = self.viewers.get_mut(&viewer) else {
            return false;
        };
        v.cc.join_from = Some(since);
        true
    }

    /// Whether a publisher track is muted by the server (see [`Relay::set_blocked`]).
    pub fn track_is_blocked(&self, publisher: SessionId, track: usize) -> bool {
        self.publishers
            .get(&publisher)
            .and_then(|p| p.tracks.get(track))
            .is_some_and(|t| t.blocked)
    }

    fn pub_track_mut(&mut self, publisher: SessionId, track: usize) -> Option<&mut PubTrack> {
        self.publishers
            .get_mut(&publisher)
            .and_then(|p| p.tracks.get_mut(track))
    }

    /// Pins a viewer track (the viewer shows it large): its video goes first when the viewer's
    /// link is short. Returns whether the track exists.
    pub fn set_pinned(&mut self, viewer: SessionId, index: usize, pinned: bool) -> bool {
        let Some(t) = self
            .viewers
            .get_mut(&viewer)
            .and_then(|v| v.tracks.get_mut(index))
        else {
            return false;
        };
        t.pinned = pinned;
        true
    }

    /// Stops forwarding one viewer track (its slot stays, so other indices do not move).
    pub fn remove_viewer_track(&mut self, viewer: SessionId, index: usize) -> bool {
        let Some(t) = self
            .viewers
            .get_mut(&viewer)
            .and_then(|v| v.tracks.get_mut(index))
        else {
            return false;
        };
        let was_live = std::mem::replace(&mut t.live, false);
        let source = t.spec.source;
        if let Some(src) = self.pub_track_mut(source.publisher, source.track) {
            src.viewers.retain(|&(v, i)| (v, i) != (viewer, index));
        }
        was_live
    }

    /// How many of a viewer's tracks still forward.
    pub fn live_viewer_tracks(&self, viewer: SessionId) -> usize {
        self.viewers
            .get(&viewer)
            .map_or(0, |v| v.tracks.iter().filter(|t| t.live).count())
    }

    pub fn remove_viewer(&mut self, id: SessionId) -> bool {
        let Some(v) = self.viewers.remove(&id) else {
            return false;
        };
        for t in v.tracks.iter().filter(|t| t.live) {
            let source = t.spec.source;
            if let Some(src) = self.pub_track_mut(source.publisher, source.track) {
                src.viewers.retain(|(vid, _)| *vid != id);
            }
        }
        self.drop_room_if_empty(&v.room);
        true
    }

    /// Removes a publisher. Each viewer of its tracks gets an RTCP BYE for those streams; the
    /// viewers and the indices of their ended tracks are returned, so the transport can
    /// renegotiate them away or end a viewer left with nothing.
    pub fn remove_publisher(
        &mut self,
        id: SessionId,
        sink: &mut impl Sink,
    ) -> Vec<(SessionId, Vec<usize>)> {
        let Some(p) = self.publishers.remove(&id) else {
            return Vec::new();
        };
        self.simulcast_tracks -= p.simulcast_tracks();
        if let Some(r) = self.rooms.get_mut(&p.room) {
            r.publishers.retain(|x| *x != id);
            if r.speaker == Some(id) {
                r.speaker = None;
                self.events.push_back(RelayEvent::ActiveSpeaker {
                    room: r.name.clone(),
                    publisher: None,
                });
            }
        }
        let mut ended: Vec<(SessionId, Vec<usize>)> = Vec::new();
        for &(vid, index) in p.tracks.iter().flat_map(|t| t.viewers.iter()) {
            match ended.iter_mut().find(|(v, _)| *v == vid) {
                Some((_, list)) => list.push(index),
                None => ended.push((vid, vec![index])),
            }
        }
        for (vid, indices) in &mut ended {
            indices.sort_unstable();
            let Some(v) = self.viewers.get_mut(vid) else {
                continue;
            };
            let mut ssrcs = Vec::with_capacity(indices.len());
            for &i in indices.iter() {
                if let Some(t) = v.tracks.get_mut(i) {
                    t.live = false;
                    ssrcs.push(t.fwd.ssrc());
                }
            }
            let buf = &mut self.scratch.rtcp;
            if let Ok(n) = rtcp::bye::Bye::write(&ssrcs, buf) {
                sink.rtcp(*vid, &buf[..n]);
            }
        }
        self.drop_room_if_empty(&p.room);
        ended
    }

    fn drop_room_if_empty(&mut self, room: &str) {
        let has_publishers = self
            .rooms
            .get(room)
            .is_some_and(|r| !r.publishers.is_empty());
        let has_viewers = self.viewers.values().any(|v| v.room == room);
        if !has_publishers && !has_viewers {
            self.rooms.remove(room);
        }
    }

    /// The next event, if any. Poll after each `handle_*` call.
    pub fn poll_event(&mut self) -> Option<RelayEvent> {
        self.events.pop_front()
    }

    /// A room's current active speaker.
    pub fn active_speaker(&self, room: &str) -> Option<SessionId> {
        self.rooms.get(room).and_then(|r| r.speaker)
    }

    /// One decrypted RTP packet from a publisher: forwarded to every viewer of its track, and
    /// kept (shared, not copied) for answering NACKs.
    pub fn handle_rtp(
        &mut self,
        now: Instant,
        from: SessionId,
        packet: &Bytes,
        view: &RtpView,
        sink: &mut impl Sink,
    ) {
        let buf: &[u8] = packet;
        let Some(p) = self.publishers.get_mut(&from) else {
            self.counters.dropped_packets += 1;
            return;
        };
        let epoch = &mut self.epoch;
        let us = || {
            now.saturating_duration_since(*epoch.get_or_insert(now))
                .as_micros() as i64
        };
        if p.note_arrival(us, buf, view) {
            self.timers
                .unless_set(Timer::TwccFeedback, now + publisher::TWCC_FEEDBACK_INTERVAL);
        }
        let Some((ti, li)) = p.find_track(buf, view) else {
            self.counters.dropped_packets += 1;
            return;
        };
        let track = &mut p.tracks[ti];
        let Some(ingested) = track.ingest(now, li, packet, view) else {
            return;
        };
        if track.blocked {
            return;
        }
        let payload = view.payload(buf);
        let low = match track.transcoder.as_deref_mut() {
            Some(t) => t.transcode(payload).ok(),
            None => None,
        };
        let inc = Incoming {
            packet,
            view,
            layer: li as u8,
            frame: ingested.frame.as_ref(),
            kind: track.spec.kind,
            ext: &track.spec.ext,
            cache: &track.layers[li].cache,
            low,
        };
        for &(vid, vti) in &track.viewers {
            let Some(v) = self.viewers.get_mut(&vid) else {
                continue;
            };
            let scratch = &mut self.scratch;
            let counters = &mut self.counters;
            if let Some(due) = v.forward(now, (vid, vti), &inc, scratch, counters, sink) {
                pace_later(&mut self.timers, &mut self.pacing, vid, due);
            }
        }
    }

    /// A decrypted RTCP compound packet from a publisher.
    pub fn handle_publisher_rtcp(
        &mut self,
        now: Instant,
        from: SessionId,
        buf: &[u8],
        sink: &mut impl Sink,
    ) {
        if let Some(p) = self.publishers.get_mut(&from) {
            feedback::from_publisher(now, p, &mut self.viewers, buf, &mut self.scratch.rtcp, sink);
        }
    }

    /// A viewer's path moved (a network change): what was sent meanwhile went to the old
    /// address, so its video starts again from a key frame, asked for now rather than after the
    /// viewer's own request.
    pub fn viewer_moved(&mut self, now: Instant, id: SessionId, sink: &mut impl Sink) {
        let Some(v) = self.viewers.get(&id) else {
            return;
        };
        let wanted: Vec<(TrackRef, u8)> = v
            .tracks
            .iter()
            .filter(|t| t.live)
            .filter_map(|t| Some((t.spec.source, t.fwd.target()?)))
            .collect();
        for (src, layer) in wanted {
            self.request_keyframe(now, src.publisher, src.track, layer, sink);
        }
    }

    /// A decrypted RTCP compound packet from a viewer: keyframe requests and NACKs go upstream.
    pub fn handle_viewer_rtcp(
        &mut self,
        now: Instant,
        from: SessionId,
        buf: &[u8],
        sink: &mut impl Sink,
    ) {
        let Some(v) = self.viewers.get_mut(&from) else {
            return;
        };
        let keyframes = feedback::from_viewer(
            now,
            (from, v),
            &self.publishers,
            buf,
            &mut self.scratch,
            &mut self.counters,
            sink,
        );
        // Resends wait in the pacer.
        if let Some(due) = v.pace(now, from, &mut self.counters, sink) {
            pace_later(&mut self.timers, &mut self.pacing, from, due);
        }
        for (src, layer) in keyframes {
            self.request_keyframe(now, src.publisher, src.track, layer, sink);
        }
    }

    /// One allocation round (see [`allocate`]), then the key frames it leaves to start on:
    /// replayed from the cache where they can be, else asked for.
    fn allocate(&mut self, now: Instant, sink: &mut impl Sink) {
        let parts = allocate::Parts {
            viewers: &mut self.viewers,
            publishers: &mut self.publishers,
            rooms: &self.rooms,
            scratch: &mut self.scratch,
            counters: &mut self.counters,
        };
        if let Some(due) = self.round.run(now, self.config.pause_video, parts, sink) {
            self.timers.at_most(Timer::Probe, due);
        }
        self.round
            .report_layers(now, &mut self.publishers, &mut self.events);
        self.round.transcoders(&mut self.publishers);
        let mut starting = std::mem::take(&mut self.round.starting);
        for (vid, i, src, layer) in starting.drain(..) {
            let key = (src, layer);
            if !self.replay_keyframe(now, vid, i, sink) && !self.round.resumed.contains(&key) {
                self.round.resumed.push(key);
            }
        }
        self.round.starting = starting;
        let mut list = std::mem::take(&mut self.round.resumed);
        for (src, layer) in list.drain(..) {
            self.request_keyframe(now, src.publisher, src.track, layer, sink);
        }
        self.round.resumed = list;
    }

    /// Asks a publisher track for a keyframe, at most once per configured interval; a request
    /// inside the interval is remembered and sent when the interval ends.
    pub fn request_keyframe(
        &mut self,
        now: Instant,
        publisher: SessionId,
        track: usize,
        layer: u8,
        sink: &mut impl Sink,
    ) {
        let Some(p) = self.publishers.get_mut(&publisher) else {
            return;
        };
        let interval = self.config.keyframe_request_interval;
        let buf = &mut self.scratch.rtcp;
        if p.request_keyframe((publisher, now), track, layer, interval, buf, sink) {
            self.counters.keyframe_requests += 1;
        }
    }

    /// Whether allocation rounds run: for viewers, and for simulcast publishers alone (their
    /// unwatched layers are let go).
    fn rounds(&self) -> bool {
        !self.viewers.is_empty() || self.simulcast_tracks > 0
    }

    /// When [`Relay::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let (rooms, rounds) = (!self.rooms.is_empty(), self.rounds());
        let mut next = self.timers.earliest(|t| match t {
            Timer::Speakers => rooms,
            Timer::Allocation => rounds,
            _ => true,
        });
        for p in self.publishers.values() {
            p.next_timeout(&mut next);
        }
        next
    }

    /// Periodic work: speakers, allocation rounds, pacing, probes, feedback, receiver reports
    /// and bitrate caps to publishers, deferred keyframe requests.
    pub fn handle_timeout(&mut self, now: Instant, sink: &mut impl Sink) {
        if self
            .timers
            .periodic(Timer::Speakers, now, self.config.speaker_interval)
        {
            let publishers = &self.publishers;
            let loudness = |id: &SessionId| publishers.get(id).map_or(0.0, Publisher::loudness);
            speaker::update_speakers(now, &mut self.rooms, loudness, &mut self.events);
        }
        if self.rounds()
            && self
                .timers
                .periodic(Timer::Allocation, now, policy::ALLOCATION_INTERVAL)
        {
            self.allocate(now, sink);
        }
        if self.timers.take_due(Timer::Pace, now) {
            let mut pacing = std::mem::take(&mut self.pacing);
            pacing.retain(|vid| {
                let Some(v) = self.viewers.get_mut(vid) else {
                    return false;
                };
                let due = v.pace(now, *vid, &mut self.counters, sink);
                if let Some(due) = due {
                    self.timers.at_most(Timer::Pace, due);
                }
                due.is_some()
            });
            self.pacing = pacing;
        }
        if self.timers.take_due(Timer::Probe, now) {
            for (&vid, v) in self
                .viewers
                .iter_mut()
                .filter(|(_, v)| v.probe_out.is_some())
            {
                let (scratch, counters) = (&mut self.scratch, &mut self.counters);
                let due = probe::send_due(now, (vid, v), &self.publishers, scratch, counters, sink);
                if let Some(due) = due {
                    self.timers.at_most(Timer::Probe, due);
                }
            }
        }
        if self.timers.take_due(Timer::TwccFeedback, now) {
            for (&pid, p) in self.publishers.iter_mut() {
                if let Some(fb) = p.twcc_feedback() {
                    sink.rtcp(pid, fb);
                }
            }
        }
        let report = (
            self.config.report_interval,
            self.config.publisher_max_bitrate_bps,
        );
        for (&pid, p) in self.publishers.iter_mut() {
            let buf = &mut self.scratch.rtcp;
            self.counters.keyframe_requests += p.handle_timeout((pid, now), report, buf, sink);
        }
    }
}
