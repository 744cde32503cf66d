//! A viewer and its tracks: what each is sent of a publisher packet (the forwarder's decision,
//! RED or re-encoded audio, the VP8 descriptor shift), its video paced, and a starting track's
//! key frame replayed from the cache. Every packet leaves through [`send::Out`].

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::publisher::PubTrack;
use super::send::{self, Number, Out, Scratch, Sent, MAX_PACKET};
use super::track::{ViewerCc, ViewerTrack};
use super::{pacer, MediaKind, RelayCounters, SessionId, Sink};
use crate::core::bwe::ProbeCluster;
use crate::core::cache::RetransmitCache;
use crate::core::forward::{Decision, DropReason, LayerFrame};
use crate::core::rtp::{ExtMap, Rewrite, RtpView};

/// Video is paced at this multiple of the viewer's estimate (as GCC senders do): bursts are
/// spread out, and the estimate can still be exceeded enough to be tested.
const PACING_FACTOR: f64 = 2.5;

/// A viewer starting on a layer is sent its last key frame and what followed from the cache when
/// the key frame is at most this old and that many packets back; otherwise the publisher is
/// asked for a new one.
const KEYFRAME_REPLAY_AGE: Duration = Duration::from_millis(1000);
const KEYFRAME_REPLAY_PACKETS: u16 = 256;

/// A probe cluster being sent, paced over its duration.
pub(super) struct ProbeOut {
    pub cluster: ProbeCluster,
    pub left: u32,
    pub next_at: Instant,
    pub gap: Duration,
}

impl ProbeOut {
    pub fn new(now: Instant, cluster: ProbeCluster) -> Self {
        ProbeOut {
            cluster,
            left: cluster.packets,
            next_at: now,
            gap: cluster.duration / cluster.packets.max(1),
        }
    }
}

pub(super) struct Viewer {
    pub room: String,
    pub tracks: Vec<ViewerTrack>,
    pub cc: ViewerCc,
    pub probe_out: Option<ProbeOut>,
    /// Audio goes as RED (where negotiated) until then: set while the link loses packets.
    pub red_until: Option<Instant>,
    /// A relay link's share of the link's estimate (from its QUIC congestion controller), which
    /// stands for the viewer's own where set.
    pub link_bps: Option<u64>,
    /// Its video, waiting to leave at the pacing rate.
    pacer: pacer::Pacer,
}

/// One publisher packet, as read once for every viewer of its track.
pub(super) struct Incoming<'a> {
    pub packet: &'a Bytes,
    pub view: &'a RtpView,
    /// The simulcast layer it belongs to, and the AV1 frame's layers where it has a descriptor.
    pub layer: u8,
    pub frame: Option<&'a LayerFrame>,
    pub kind: MediaKind,
    /// The source's extensions, and its layer's cache (for RED's previous frame).
    pub ext: &'a ExtMap,
    pub cache: &'a RetransmitCache,
    /// The packet re-encoded at a low bitrate, where some viewer needs it.
    pub low: Option<&'a [u8]>,
}

impl Viewer {
    pub fn new(room: &str) -> Self {
        Viewer {
            room: room.to_owned(),
            tracks: Vec::new(),
            cc: ViewerCc::new(),
            probe_out: None,
            red_until: None,
            link_bps: None,
            pacer: pacer::Pacer::new(),
        }
    }

    /// Track `index`'s way out.
    pub fn out(&mut self, vid: SessionId, index: usize) -> Out<'_> {
        Out {
            vid,
            cc: &mut self.cc,
            track: &mut self.tracks[index],
        }
    }

    /// The rate its video leaves at, a margin above its estimate; `None` (not paced) while
    /// nothing tells about its link.
    pub fn pacing_rate(&self) -> Option<u64> {
        self.cc
            .has_signal()
            .then(|| (self.cc.bwe.estimate_bps() as f64 * PACING_FACTOR) as u64)
    }

    /// A publisher packet for track `index`: sent at once, queued in the pacer (video, on a link
    /// the viewer tells about), or dropped. Returns when the pacer next has work, if it queued.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn forward(
        &mut self,
        now: Instant,
        (vid, index): (SessionId, usize),
        inc: &Incoming<'_>,
        scratch: &mut Scratch,
        counters: &mut RelayCounters,
        sink: &mut impl Sink,
    ) -> Option<Instant> {
        let (packet, view) = (inc.packet, inc.view);
        let payload = view.payload(packet);
        let vt = &mut self.tracks[index];
        let rw = match vt
            .fwd
            .decide_frame(now, inc.layer, view, payload, inc.frame)
        {
            Decision::Forward(rw) => rw,
            // A relay link's copy of this very layer, off: bytes the link did not carry.
            Decision::Drop(DropReason::Paused) if vt.spec.layer == Some(inc.layer) => {
                counters.link_bytes_held += packet.len() as u64;
                return None;
            }
            // Layers the viewer does not follow and paused video are not losses.
            Decision::Drop(DropReason::OtherLayer | DropReason::Paused | DropReason::Thinned) => {
                return None
            }
            Decision::Drop(_) => {
                counters.dropped_packets += 1;
                return None;
            }
        };
        if inc.kind == MediaKind::Video && self.cc.has_signal() {
            if let Ok(due) = self.queue(
                now,
                (vid, index),
                inc.ext,
                (packet, view),
                &rw,
                scratch,
                counters,
                sink,
            ) {
                return due;
            }
        }
        let red_on = self.red_until.is_some_and(|t| now < t);
        let mut out = self.out(vid, index);
        let Some(w) = out.write(&mut scratch.header, (packet, view), inc.ext, &rw) else {
            counters.dropped_packets += 1;
            return None;
        };
        let low = inc.low.filter(|_| out.track.low_audio);
        let red = out
            .track
            .spec
            .red
            .filter(|_| low.is_none() && red_on)
            .and_then(|red_pt| {
                let room = MAX_PACKET.checked_sub(w.len + payload.len())?;
                let buf = &mut scratch.red[..room];
                let k =
                    send::red_prefix(now, inc.cache, view, &out.track.fwd, rw.payload_type, buf)?;
                Some((red_pt, k))
            });
        let (prefix, payload) = match (low, red) {
            (Some(low), _) => {
                counters.transcoded_packets += 1;
                (&[][..], low)
            }
            (None, Some((red_pt, k))) => {
                // The RTP payload type becomes RED's; the marker bit stays.
                scratch.header[1] = (scratch.header[1] & 0x80) | (red_pt & 0x7f);
                counters.red_packets += 1;
                (&scratch.red[..k], payload)
            }
            (None, None) => send::payload_prefix(&out.track.fwd, payload, &mut scratch.prefix),
        };
        let header = (&mut scratch.header[..w.len], w.transport_seq_at);
        out.send(
            now,
            header,
            Number::Next,
            (prefix, payload),
            Sent::Media,
            counters,
            sink,
        );
        None
    }

    /// Queues a forwarded video packet for track `index`; `Err` where it cannot wait, after
    /// sending what waits (so one stream stays in order): the caller then sends it at once.
    /// Returns when the pacer next has work.
    #[allow(clippy::too_many_arguments)]
    fn queue(
        &mut self,
        now: Instant,
        (vid, index): (SessionId, usize),
        from: &ExtMap,
        packet: (&Bytes, &RtpView),
        rw: &Rewrite,
        scratch: &mut Scratch,
        counters: &mut RelayCounters,
        sink: &mut impl Sink,
    ) -> Result<Option<Instant>, ()> {
        let out = self.out(vid, index);
        let Some(q) = send::queue_entry(now, (&out, index), from, packet, rw, scratch) else {
            self.flush(now, vid, counters, sink);
            return Err(());
        };
        counters.forwarded_packets += 1;
        counters.forwarded_bytes += q.len() as u64;
        if let Some(mut oldest) = self.pacer.push(q) {
            self.send_queued(now, vid, &mut oldest, counters, sink);
        }
        Ok(self.pace(now, vid, counters, sink))
    }

    /// Sends everything queued, now.
    fn flush(
        &mut self,
        now: Instant,
        vid: SessionId,
        counters: &mut RelayCounters,
        sink: &mut impl Sink,
    ) {
        while let Some(mut q) = self.pacer.force_front() {
            self.send_queued(now, vid, &mut q, counters, sink);
        }
    }

    /// Sends the queued video that is due; returns when more will be.
    pub fn pace(
        &mut self,
        now: Instant,
        vid: SessionId,
        counters: &mut RelayCounters,
        sink: &mut impl Sink,
    ) -> Option<Instant> {
        // Without a rate (the signal went away), what waits goes at once.
        let rate = self.pacing_rate().unwrap_or(u64::MAX / 2);
        while let Some(mut q) = self.pacer.pop(now, rate) {
            self.send_queued(now, vid, &mut q, counters, sink);
        }
        self.pacer.next_due(rate)
    }

    /// One queued packet out (dropped if its track was removed meanwhile).
    fn send_queued(
        &mut self,
        now: Instant,
        vid: SessionId,
        q: &mut pacer::Queued,
        counters: &mut RelayCounters,
        sink: &mut impl Sink,
    ) {
        if !self.tracks.get(q.track).is_some_and(|t| t.live) {
            return;
        }
        let payload = &q.packet[q.payload.0..q.payload.1];
        let header = (&mut q.header[..q.header_len], q.transport_seq_at);
        let prefix = &q.prefix[..q.prefix_len];
        let (number, sent) = match q.waiting {
            pacer::Waiting::Media => (Number::Next, Sent::Paced),
            pacer::Waiting::Resend(same) => (same.map_or(Number::Next, Number::Same), Sent::Resend),
        };
        self.out(vid, q.track)
            .send(now, header, number, (prefix, payload), sent, counters, sink);
    }

    /// Whether what is sent to this viewer is paced (its link's rate is known).
    pub fn paced(&self) -> bool {
        self.cc.has_signal()
    }

    /// Queues a resend ahead of the video waiting (see [`pacer::Pacer::push_resend`]); what a
    /// full queue lets out goes now. [`Viewer::pace`] sends it when due.
    pub fn queue_resend(
        &mut self,
        now: Instant,
        vid: SessionId,
        q: pacer::Queued,
        counters: &mut RelayCounters,
        sink: &mut impl Sink,
    ) {
        if let Some(mut oldest) = self.pacer.push_resend(q) {
            self.send_queued(now, vid, &mut oldest, counters, sink);
        }
    }

    /// Starts track `index`, waiting for a key frame, from the cache: the layer's last key frame
    /// and every packet since, sent now, so the publisher need not make another. Only where the
    /// key frame came after what the viewer was last sent (its timestamps go on from there), is
    /// recent, and every packet since is at hand. Returns whether it did, and when the pacer
    /// next has work.
    pub fn replay(
        &mut self,
        now: Instant,
        (vid, index): (SessionId, usize),
        src: &PubTrack,
        scratch: &mut Scratch,
        counters: &mut RelayCounters,
        sink: &mut impl Sink,
    ) -> (bool, Option<Instant>) {
        let Some(vt) = self.tracks.get(index).filter(|t| t.live) else {
            return (false, None);
        };
        let Some(slot) = vt.fwd.target().filter(|&t| vt.fwd.current() != Some(t)) else {
            return (false, None);
        };
        // (AV1 frames' layers are in descriptors not kept with the packets.)
        let Some(layer) = src
            .layers
            .get(usize::from(slot))
            .filter(|_| src.dd.is_none())
        else {
            return (false, None);
        };
        let (Some((first, key_at, _)), Some(last)) = (layer.key_start, layer.last_seq) else {
            return (false, None);
        };
        let count = last.wrapping_sub(first).wrapping_add(1);
        if now.saturating_duration_since(key_at) > KEYFRAME_REPLAY_AGE
            || count > KEYFRAME_REPLAY_PACKETS
            || vt.fwd.last_sent_at().is_some_and(|at| at >= key_at)
        {
            return (false, None);
        }
        let mut bytes = 0usize;
        for k in 0..count {
            match layer.cache.get(now, first.wrapping_add(k)) {
                Some((pkt, _)) => bytes += pkt.len(),
                None => return (false, None),
            }
        }
        // No more than the pacer spreads within its longest wait: a bigger burst would overrun
        // the viewer's link, and a fresh key frame from the publisher costs less.
        let paced = self.cc.has_signal();
        if let Some(rate) = self.pacing_rate() {
            if bytes as f64 * 8.0 > rate as f64 * pacer::MAX_QUEUE_DELAY.as_secs_f64() {
                return (false, None);
            }
        }
        let mut due: Option<Instant> = None;
        for k in 0..count {
            let Some((pkt, view)) = layer.cache.get(now, first.wrapping_add(k)) else {
                continue;
            };
            // Decided as of the key frame's arrival, so timestamps count from then.
            let decision = self.tracks[index]
                .fwd
                .decide(key_at, slot, view, view.payload(pkt));
            let Decision::Forward(rw) = decision else {
                continue;
            };
            counters.replayed_packets += 1;
            // Up to a second of video at once: it leaves at the viewer's pace.
            if paced {
                let (packet, ext) = ((pkt, view), &src.spec.ext);
                let queued =
                    self.queue(now, (vid, index), ext, packet, &rw, scratch, counters, sink);
                if let Ok(d) = queued {
                    due = match (due, d) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    continue;
                }
            }
            let mut out = self.out(vid, index);
            let Some(w) = out.write(&mut scratch.header, (pkt, view), &src.spec.ext, &rw) else {
                continue;
            };
            let body = send::payload_prefix(&out.track.fwd, view.payload(pkt), &mut scratch.prefix);
            let header = (&mut scratch.header[..w.len], w.transport_seq_at);
            out.send(now, header, Number::Next, body, Sent::Media, counters, sink);
        }
        (self.tracks[index].fwd.current() == Some(slot), due)
    }
}
