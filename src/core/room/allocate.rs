//! The allocation round, every [`policy::ALLOCATION_INTERVAL`]: each viewer's estimate split
//! over its tracks by [`alloc`], each video set to the best layer that fits (switched at the
//! layer's next key frame: the cache's, or one asked for), video that cannot fit paused and
//! resumed from a key frame when it can, audio re-encoded or sent as RED on weak links, probes
//! started to find room. Then publishers are told which simulcast layers anyone needs, and each
//! audio track some viewer needs re-encoded gets a transcoder.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::publisher::Publisher;
use super::speaker::RoomState;
use super::viewer::{ProbeOut, Viewer};
use super::{alloc, policy, probe, svc};
use super::{MediaKind, RelayCounters, RelayEvent, Scratch, SessionId, Sink, TrackRef};
use crate::core::audio::OpusTranscoder;
use crate::core::forward::SvcLayers;
use crate::core::rtp::Codec;

/// Tracks of one viewer the round considers, at most.
const MAX: usize = 32;

/// How long a simulcast layer must go unneeded before its publisher is told it may stop it.
const LAYER_OFF_AFTER: Duration = Duration::from_secs(5);

/// The same for a layer relayed from another node (`PubTrack::relayed`).
const RELAYED_LAYER_OFF_AFTER: Duration = Duration::from_millis(500);

/// A relay link's copy of layer `slot` of `src` as the allocator sees it: a video of one layer,
/// ranked by the layer's quality (the lowest goes first), on while it forwards; `None` while
/// the other node does not want it (it stays paused).
fn link_demand(
    now: Instant,
    src: &super::publisher::PubTrack,
    slot: u8,
    vt: &super::track::ViewerTrack,
) -> Option<alloc::Demand> {
    if !vt.wanted {
        return None;
    }
    let layer = src.layers.get(usize::from(slot))?;
    let mut ranked = [0usize; alloc::MAX_LAYERS];
    let n = src.ranked(|l| l.known_bps.max(l.rate.bps(now)), &mut ranked);
    let rank = ranked[..n]
        .iter()
        .position(|&s| s == usize::from(slot))
        .unwrap_or(n);
    let bps = layer.rate.bps(now).max(layer.known_bps);
    let priority = (alloc::MAX_LAYERS - rank.min(alloc::MAX_LAYERS)) as u8;
    Some(alloc::Demand::single(
        MediaKind::Video,
        bps,
        priority,
        !vt.fwd.is_paused(),
    ))
}

/// What a round leaves to do, and its reused lists.
pub(super) struct Round {
    /// Per source track, the layers (bit per slot) some viewer would take.
    wanted: Vec<(TrackRef, u8)>,
    /// Audio tracks some viewer gets re-encoded at a low bitrate.
    low_sources: Vec<TrackRef>,
    /// Viewer tracks (viewer, index, source, layer) waiting for a key frame to start on: sent
    /// from the cache where it can, else asked for in `resumed`.
    pub starting: Vec<(SessionId, usize, TrackRef, u8)>,
    /// Source layers to ask for a key frame.
    pub resumed: Vec<(TrackRef, u8)>,
}

/// The relay's state a round reads and changes.
pub(super) struct Parts<'a> {
    pub viewers: &'a mut HashMap<SessionId, Viewer>,
    pub publishers: &'a mut HashMap<SessionId, Publisher>,
    pub rooms: &'a HashMap<String, RoomState>,
    pub scratch: &'a mut Scratch,
    pub counters: &'a mut RelayCounters,
}

impl Round {
    pub fn new() -> Self {
        Round {
            wanted: Vec::new(),
            low_sources: Vec::new(),
            // Room for a round of switches, so that a round does not allocate.
            starting: Vec::with_capacity(64),
            resumed: Vec::new(),
        }
    }

    /// One round over every viewer; returns when a probe packet is next due.
    pub fn run(
        &mut self,
        now: Instant,
        pause_video: bool,
        parts: Parts<'_>,
        sink: &mut impl Sink,
    ) -> Option<Instant> {
        let Parts {
            viewers,
            publishers,
            rooms,
            scratch,
            counters,
        } = parts;
        self.wanted.clear();
        self.low_sources.clear();
        for l in publishers
            .values_mut()
            .flat_map(|p| p.tracks.iter_mut())
            .flat_map(|t| t.layers.iter_mut())
        {
            let bps = l.rate.bps(now);
            if bps > 0 {
                l.known_bps = bps;
            }
        }
        let mut next_probe: Option<Instant> = None;
        for (&vid, v) in viewers.iter_mut() {
            let speaker = rooms.get(&v.room).and_then(|r| r.speaker);
            if !self.viewer(now, (vid, v), publishers, speaker, pause_video, counters) {
                continue;
            }
            if let Some(due) = probe::send_due(now, (vid, v), publishers, scratch, counters, sink) {
                next_probe = Some(next_probe.map_or(due, |n| n.min(due)));
            }
        }
        next_probe
    }

    /// One viewer's share of the round; returns whether it can be probed.
    fn viewer(
        &mut self,
        now: Instant,
        (vid, v): (SessionId, &mut Viewer),
        publishers: &HashMap<SessionId, Publisher>,
        speaker: Option<SessionId>,
        pause_video: bool,
        counters: &mut RelayCounters,
    ) -> bool {
        v.red_until = policy::red_until(v.cc.bwe.loss_fraction(), now, v.red_until);
        // A viewer that can tell nothing about its link gets the best of everything; one that
        // negotiated transport-cc starts from the initial estimate.
        let signal = v.cc.has_signal()
            || v.tracks
                .iter()
                .any(|t| t.live && !t.sent_transport_seq.is_empty());
        let estimate = v
            .link_bps
            .unwrap_or_else(|| policy::budget(signal, v.cc.bwe.estimate_bps()));
        // Pausing is safe only where probes can find the way back: transport-cc negotiated, an
        // RTX stream to carry them, and the viewer heard from (feedback or REMB).
        let can_probe = v.cc.has_signal()
            && v.tracks
                .iter()
                .any(|t| t.live && t.spec.rtx.is_some() && !t.sent_transport_seq.is_empty());
        let mut demands = [alloc::Demand::single(MediaKind::Audio, 0, 0, true); MAX];
        let mut wishes = demands;
        let mut wish_index = [[0usize; alloc::MAX_LAYERS]; MAX];
        // Per demand: the viewer track, and its source's layers lowest quality first.
        let mut index = [(0usize, [0usize; alloc::MAX_LAYERS]); MAX];
        // Per demand of an SVC track: its choices (none for other tracks).
        let mut svc_choices = [(0usize, [(SvcLayers::ALL, 0); alloc::MAX_LAYERS]); MAX];
        let mut n = 0;
        for (i, vt) in v.tracks.iter().enumerate().filter(|(_, t)| t.live) {
            let Some(p) = publishers.get(&vt.spec.source.publisher) else {
                continue;
            };
            let src = &p.tracks[vt.spec.source.track];
            if n == MAX {
                break;
            }
            if let Some(slot) = vt.spec.layer {
                // A relay link's copy of one layer: on or off as a whole, lower layers first.
                let Some(d) = link_demand(now, src, slot, vt) else {
                    continue;
                };
                let mut ranked = [0; alloc::MAX_LAYERS];
                ranked[0] = usize::from(slot);
                (demands[n], wishes[n], index[n], wish_index[n]) = (d, d, (i, ranked), ranked);
                n += 1;
                continue;
            }
            let speaking = speaker == Some(vt.spec.source.publisher);
            let priority = policy::priority(vt.pinned, src.slides, speaking);
            let target = vt.fwd.target();
            let mut choices = [(SvcLayers::ALL, 0); alloc::MAX_LAYERS];
            let n_choices = src.svc.as_ref().map_or(0, |s| s.choices(now, &mut choices));
            let svc_on = vt
                .fwd
                .svc_layers()
                .map(|l| l.0)
                .filter(|_| target.is_some());
            let measured = if n_choices > 0 {
                // One stream: its layers are the choices; the publisher is told nothing.
                let d = svc::demand(&choices[..n_choices], priority, svc_on);
                Some((d, [0; alloc::MAX_LAYERS]))
            } else {
                src.demand(|l| l.rate.bps(now), priority, target)
            };
            let Some((mut d, ranked)) = measured else {
                continue;
            };
            if d.on.is_none() && !vt.fwd.is_paused() {
                // Following a layer no longer sent: count it as the lowest.
                d.on = Some(0);
            }
            // What the viewer would take if every layer the publisher has sent were there: the
            // layers worth asking the publisher for.
            let (w, w_ranked) = src
                .demand(|l| l.known_bps, priority, target)
                .filter(|_| n_choices == 0)
                .unwrap_or((d, ranked));
            demands[n] = d;
            wishes[n] = w;
            index[n] = (i, ranked);
            svc_choices[n] = (n_choices, choices);
            wish_index[n] = w_ranked;
            n += 1;
        }
        let mut out = [None; MAX];
        alloc::allocate(estimate, &demands[..n], &mut out[..n]);
        // Audio never stops, but a link that cannot carry even the publishers' audio gets it
        // re-encoded at a low bitrate; back to the original with twice the room.
        let audio_bps: u64 = demands[..n]
            .iter()
            .filter(|d| d.kind == MediaKind::Audio)
            .map(|d| d.layers[0])
            .sum();
        let low = policy::low_audio(v.cc.has_signal(), estimate, audio_bps);
        for k in (0..n).filter(|&k| demands[k].kind == MediaKind::Audio) {
            let vt = &mut v.tracks[index[k].0];
            if let Some(low) = low {
                vt.low_audio = policy::track_low_audio(low, demands[k].layers[0]);
                vt.ever_low |= vt.low_audio;
            }
            if vt.low_audio && !self.low_sources.contains(&vt.spec.source) {
                self.low_sources.push(vt.spec.source);
            }
        }
        let mut wish_out = [None; MAX];
        alloc::allocate(estimate, &wishes[..n], &mut wish_out[..n]);
        for k in 0..n {
            let (i, _) = index[k];
            // Up to the layer wished for (the lowest when none fits): lower layers stay, so
            // stepping down needs no one to start encoding.
            let top = wish_out[k].unwrap_or(0);
            let mask = wish_index[k][..=top.min(wishes[k].n_layers - 1)]
                .iter()
                .fold(0u8, |m, &slot| m | (1 << slot));
            let source = v.tracks[i].spec.source;
            match self.wanted.iter_mut().find(|(s, _)| *s == source) {
                Some((_, m)) => *m |= mask,
                None => self.wanted.push((source, mask)),
            }
        }
        let mut want = 0u64;
        for k in 0..n {
            let (i, ranked) = index[k];
            let vt = &mut v.tracks[i];
            // Probes aim at what every track would take at its best, counting layers the
            // publisher was told it may stop: room for them is what brings them back.
            let w = &wishes[k];
            want += w.layers[w.n_layers - 1];
            let may_pause = pause_video && can_probe;
            let (choice, short_since) = match vt.spec.layer {
                // The link's budget decides at once: its other layers and audio go on.
                Some(_) => (out[k], None),
                None => {
                    policy::video_choice(out[k], may_pause, vt.fwd.is_paused(), vt.short_since, now)
                }
            };
            vt.short_since = short_since;
            let Some(layer) = choice else {
                if !vt.fwd.is_paused() {
                    vt.fwd.pause();
                    counters.paused_tracks += 1;
                }
                continue;
            };
            let (n_choices, choices) = svc_choices[k];
            let slot = if n_choices > 0 {
                0
            } else {
                ranked[layer] as u8
            };
            if vt.fwd.target() != Some(slot) {
                vt.fwd.set_target(slot);
            }
            // A switch (or resume) waits for a key frame of the layer: the cache's, or one
            // asked for each round until it comes (rate-limited per layer).
            let mut larger = false;
            if n_choices > 0 {
                // Within an SVC stream, a larger picture starts at a key picture; smaller ones
                // and frame rates change without one.
                let want = choices[layer].0;
                vt.fwd.set_svc_target(want);
                larger = vt
                    .fwd
                    .svc_layers()
                    .is_some_and(|(_, cur)| cur.spatial < want.spatial);
            }
            let key = (vt.spec.source, slot);
            if vt.fwd.current() != Some(slot) {
                self.starting.push((vid, i, key.0, key.1));
            } else if larger && !self.resumed.contains(&key) {
                self.resumed.push(key);
            }
        }
        if !can_probe {
            return false;
        }
        if v.probe_out.is_none() {
            if let Some(cluster) = v.cc.bwe.poll_probe(now, policy::probe_target(want)) {
                v.probe_out = Some(ProbeOut::new(now, cluster));
                counters.probes += 1;
            }
        }
        true
    }

    /// How long a layer must go unneeded before its publisher is told it may stop it: a
    /// relayed layer is brought back with a key frame from the origin's cache, a browser's has
    /// to start encoding again.
    fn layer_off_after(relayed: bool) -> Duration {
        if relayed {
            RELAYED_LAYER_OFF_AFTER
        } else {
            LAYER_OFF_AFTER
        }
    }

    /// Tells publishers which simulcast layers viewers need (see [`RelayEvent::Layers`]): a
    /// layer some viewer would take is asked for at once; one none would take is let go after
    /// [`LAYER_OFF_AFTER`]. The lowest layer stays, and layers never seen are left alone.
    pub fn report_layers(
        &self,
        now: Instant,
        publishers: &mut HashMap<SessionId, Publisher>,
        events: &mut VecDeque<RelayEvent>,
    ) {
        for (&pid, p) in publishers.iter_mut() {
            for (ti, t) in p.tracks.iter_mut().enumerate() {
                if t.layers.len() < 2 {
                    continue;
                }
                let mut ranked = [0usize; alloc::MAX_LAYERS];
                if t.ranked(|l| l.known_bps, &mut ranked) == 0 {
                    continue;
                }
                let source = TrackRef {
                    publisher: pid,
                    track: ti,
                };
                let wanted = self
                    .wanted
                    .iter()
                    .find(|(s, _)| *s == source)
                    .map_or(0, |(_, m)| *m);
                let unseen = t
                    .layers
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.known_bps == 0)
                    .fold(0u8, |m, (i, _)| m | (1 << i));
                let need = wanted | unseen | (1 << ranked[0]);
                let before = t.active;
                let off_after = Self::layer_off_after(t.relayed);
                t.active |= need;
                for (i, l) in t.layers.iter_mut().enumerate() {
                    let bit = 1u8 << i;
                    if need & bit != 0 || t.active & bit == 0 {
                        l.unneeded_since = None;
                    } else if now.saturating_duration_since(*l.unneeded_since.get_or_insert(now))
                        >= off_after
                    {
                        t.active &= !bit;
                        l.unneeded_since = None;
                    }
                }
                if t.active != before {
                    events.push_back(RelayEvent::Layers {
                        publisher: pid,
                        track: ti,
                        active: t.active,
                    });
                }
            }
        }
    }

    /// A transcoder per audio track some viewer needs it for; none for the rest.
    pub fn transcoders(&self, publishers: &mut HashMap<SessionId, Publisher>) {
        for (&pid, p) in publishers.iter_mut() {
            for (ti, t) in p.tracks.iter_mut().enumerate() {
                let source = TrackRef {
                    publisher: pid,
                    track: ti,
                };
                let needed = t.spec.codec == Codec::Opus && self.low_sources.contains(&source);
                if needed && t.transcoder.is_none() {
                    let bps = policy::LOW_AUDIO_BPS as i32;
                    t.transcoder = OpusTranscoder::new(bps).ok().map(Box::new);
                } else if !needed {
                    t.transcoder = None;
                }
            }
        }
    }
}
