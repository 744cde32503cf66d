//! Probes: padding sent above a viewer's estimate to learn whether its link has room. A
//! cluster's packets go on a viewer track's RTX stream, padding only (RFC 3550 §5.1, as RTX
//! senders pad), each with a transport-wide number so the feedback times them; the receiver's
//! RTX stream discards them.

use std::collections::HashMap;
use std::time::Instant;

use super::publisher::Publisher;
use super::send::{Number, Scratch, Sent};
use super::viewer::Viewer;
use super::{MediaKind, RelayCounters, SessionId, Sink};
use crate::core::rtp::Rewrite;

/// Sends the packets of a viewer's probe cluster that are due; returns when its next one is.
pub(super) fn send_due(
    now: Instant,
    (vid, v): (SessionId, &mut Viewer),
    publishers: &HashMap<SessionId, Publisher>,
    scratch: &mut Scratch,
    counters: &mut RelayCounters,
    sink: &mut impl Sink,
) -> Option<Instant> {
    let out = v.probe_out.as_ref()?;
    if out.next_at > now {
        return Some(out.next_at);
    }
    // A track with an RTX stream and a packet to take the header extensions from (video first).
    let pick = v
        .tracks
        .iter()
        .enumerate()
        .filter(|(_, t)| t.live && !t.sent_transport_seq.is_empty())
        .filter_map(|(i, t)| {
            let rtx = t.spec.rtx?;
            let p = publishers.get(&t.spec.source.publisher)?;
            let src = &p.tracks[t.spec.source.track];
            // Any recent packet of the source serves as the template, also while paused.
            let (pkt, view) = src
                .layers
                .iter()
                .find_map(|l| l.cache.get(now, l.last_seq?))?;
            Some((i, rtx, src, pkt, view))
        })
        .max_by_key(|(_, _, src, ..)| src.spec.kind == MediaKind::Video);
    let Some((index, rtx, src, pkt, view)) = pick else {
        v.probe_out = None;
        return None;
    };
    // The padding that makes up the rest of the probe packet size.
    let pad = crate::core::bwe::PROBE_PACKET_BYTES
        .saturating_sub(40)
        .clamp(1, 255);
    scratch.body[..pad].fill(0);
    scratch.body[pad - 1] = pad as u8;
    while let Some(cluster) = v
        .probe_out
        .as_mut()
        .filter(|o| o.left > 0 && o.next_at <= now)
    {
        cluster.left -= 1;
        cluster.next_at += cluster.gap;
        let id = cluster.cluster.id;
        let mut out = v.out(vid, index);
        let rw = Rewrite {
            ssrc: rtx.ssrc,
            sequence: out.track.next_rtx_seq(),
            timestamp: out.track.fwd.timestamp_now(view.timestamp),
            payload_type: rtx.payload_type,
            marker: false,
        };
        let Some(w) = out.write(&mut scratch.header, (pkt, view), &src.spec.ext, &rw) else {
            break;
        };
        // The padding bit: the payload is padding only.
        scratch.header[0] |= 0x20;
        let header = (&mut scratch.header[..w.len], w.transport_seq_at);
        let body = (&[][..], &scratch.body[..pad]);
        out.send(
            now,
            header,
            Number::Next,
            body,
            Sent::Probe(id),
            counters,
            sink,
        );
    }
    match &v.probe_out {
        Some(o) if o.left > 0 => Some(o.next_at),
        _ => {
            v.probe_out = None;
            None
        }
    }
}
