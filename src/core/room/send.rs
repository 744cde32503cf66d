//! The one way a packet leaves for a viewer. Whatever it is (a forwarded packet sent at once or
//! from the pacer, a replayed key frame, a resend plain or on the RTX stream, a probe), it goes
//! through [`Out::write`] (the header rewritten for the viewer track, with a place kept for the
//! transport-wide number) and [`Out::send`] (numbered, handed to the sink, the number
//! remembered for resends, the estimator and the resend budget told, counted).
//!
//! Also here: what a payload becomes for one viewer ([`payload_prefix`], [`red_prefix`]) and a
//! packet made ready to wait in a pacer ([`queue_entry`], [`queued`]).

use std::time::Instant;

use bytes::Bytes;

use super::histogram;
use super::pacer;
use super::track::{ViewerCc, ViewerTrack, SENT_TRANSPORT_SEQ};
use super::{RelayCounters, SessionId, Sink};
use crate::core::cache::RetransmitCache;
use crate::core::forward::Forwarder;
use crate::core::rtp::codec::vp8;
use crate::core::rtp::{write_header_marked, ExtKind, ExtMap, Rewrite, RtpView, Written};

/// The largest packet volna makes itself (RED): well under a path MTU, SRTP's tag included.
pub(super) const MAX_PACKET: usize = 1200;

/// Bytes SRTP adds to each packet (the AES-GCM tag; HMAC-SHA1-80 adds 10).
const SRTP_OVERHEAD: usize = 16;

/// The buffers a worker writes outgoing packets into, reused for every packet.
pub(super) struct Scratch {
    pub header: [u8; 512],
    /// A rewritten VP8 payload descriptor, sent ahead of the rest of the shared payload.
    pub prefix: [u8; 16],
    /// An RTX packet's payload (original sequence number, then the payload) or a probe's padding.
    pub body: [u8; 1500],
    /// RED headers and the redundant frame, sent ahead of the shared primary frame.
    pub red: [u8; MAX_PACKET],
    pub rtcp: [u8; 1500],
}

impl Scratch {
    pub fn new() -> Self {
        Scratch {
            header: [0; 512],
            prefix: [0; 16],
            body: [0; 1500],
            red: [0; MAX_PACKET],
            rtcp: [0; 1500],
        }
    }
}

/// What a send is: what it counts as, and what the estimator and resend budget are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sent {
    /// Media sent for the first time: counted as forwarded, its transport-wide number kept for
    /// a resend of the same bytes.
    Media,
    /// Media leaving a pacer: counted when it was queued.
    Paced,
    /// A resend from the cache.
    Resend,
    /// Padding of a probe cluster.
    Probe(u32),
}

/// How a packet's transport-wide number is chosen (where the track negotiated transport-cc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Number {
    /// The viewer transport's next.
    Next,
    /// The one a resend's original went with (same bytes, same SRTP index).
    Same(u16),
}

/// One viewer track's way out, borrowed from its viewer.
pub(super) struct Out<'a> {
    pub vid: SessionId,
    pub cc: &'a mut ViewerCc,
    pub track: &'a mut ViewerTrack,
}

impl Out<'_> {
    /// Writes the header of a packet of the source (its extensions in `from`) for this track
    /// into `header`, rewritten by `rw`; where the track negotiated transport-cc, a place is
    /// kept for the number [`Out::send`] writes.
    #[inline]
    pub fn write(
        &self,
        header: &mut [u8],
        (packet, view): (&[u8], &RtpView),
        from: &ExtMap,
        rw: &Rewrite,
    ) -> Option<Written> {
        let twcc = self.track.spec.ext.id(ExtKind::TransportWideCc).map(|_| 0);
        write_header_marked(header, packet, view, rw, self.track.translation(from, twcc)).ok()
    }

    /// Sends a packet whose header [`Out::write`] wrote: numbered, handed to the sink with its
    /// payload (`prefix`, then `payload`), its number kept, the estimator told, counted.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn send(
        &mut self,
        now: Instant,
        (header, at): (&mut [u8], Option<usize>),
        number: Number,
        (prefix, payload): (&[u8], &[u8]),
        sent: Sent,
        counters: &mut RelayCounters,
        sink: &mut impl Sink,
    ) {
        let transport_seq = at.map(|at| {
            let seq = match number {
                Number::Next => {
                    let s = self.cc.next_seq;
                    self.cc.next_seq = s.wrapping_add(1);
                    s
                }
                Number::Same(s) => s,
            };
            header[at..at + 2].copy_from_slice(&seq.to_be_bytes());
            seq
        });
        sink.rtp(self.vid, header, prefix, payload);
        if let Some(from) = self.cc.join_from.take() {
            let us = now.saturating_duration_since(from).as_micros() as u64;
            counters.join_us.observe(histogram::JOIN_US, us);
        }
        let len = header.len() + prefix.len() + payload.len();
        match sent {
            Sent::Media | Sent::Paced => {
                if let Some(t) = transport_seq {
                    let sequence = u16::from_be_bytes([header[2], header[3]]);
                    if let Some(slot) = self
                        .track
                        .sent_transport_seq
                        .get_mut(usize::from(sequence) % SENT_TRANSPORT_SEQ)
                    {
                        *slot = (sequence, t);
                    }
                }
                self.cc.budget.on_sent(now, len);
                if sent == Sent::Media {
                    counters.forwarded_packets += 1;
                    counters.forwarded_bytes += len as u64;
                }
            }
            Sent::Resend => counters.retransmitted_packets += 1,
            Sent::Probe(_) => {}
        }
        if let Some(t) = transport_seq {
            let cluster = match sent {
                Sent::Probe(id) => Some(id),
                _ => None,
            };
            // SRTP adds its tag on the wire; the estimate counts what the path carries.
            self.cc.bwe.on_sent(now, t, len + SRTP_OVERHEAD, cluster);
        }
    }
}

/// Splits a payload for one viewer: its VP8 descriptor rewritten into `buf` when the viewer's
/// picture ids are shifted (after a layer switch), and the shared rest.
#[inline]
pub(super) fn payload_prefix<'a, 'b>(
    fwd: &Forwarder,
    payload: &'a [u8],
    buf: &'b mut [u8; 16],
) -> (&'b [u8], &'a [u8]) {
    let shift = fwd.vp8_shift();
    if shift.is_zero() {
        return (&[], payload);
    }
    let Some(d) = vp8::Descriptor::parse(payload) else {
        return (&[], payload);
    };
    match d.write_shifted(payload, shift.picture_id, shift.tl0, buf) {
        Some(n) => (&buf[..n], &payload[n..]),
        None => (&[], payload),
    }
}

/// A forwarded video packet made ready to wait in the viewer's pacer: its header written (with
/// the place of the transport-wide number, filled when it leaves) and payload prefix copied, the
/// payload shared. `None` where it does not fit the queue's slots (it is then sent at once).
pub(super) fn queue_entry(
    now: Instant,
    (out, index): (&Out<'_>, usize),
    from: &ExtMap,
    (packet, view): (&Bytes, &RtpView),
    rw: &Rewrite,
    scratch: &mut Scratch,
) -> Option<pacer::Queued> {
    let w = out.write(&mut scratch.header, (packet, view), from, rw)?;
    let (prefix, payload) =
        payload_prefix(&out.track.fwd, view.payload(packet), &mut scratch.prefix);
    let header = (&scratch.header[..w.len], w.transport_seq_at);
    queued(
        now,
        index,
        pacer::Waiting::Media,
        header,
        &[prefix],
        (packet, payload),
    )
}

/// A packet made ready to wait in a pacer: `header` (and where its transport-wide number goes)
/// and the `prefix` parts copied, `payload` (a part of `packet`) shared. `None` where it does not
/// fit the queue's slots.
pub(super) fn queued(
    now: Instant,
    track: usize,
    waiting: pacer::Waiting,
    (header, transport_seq_at): (&[u8], Option<usize>),
    prefix: &[&[u8]],
    (packet, payload): (&Bytes, &[u8]),
) -> Option<pacer::Queued> {
    let start = (payload.as_ptr() as usize).checked_sub(packet.as_ptr() as usize)?;
    let end = start + payload.len();
    if end > packet.len() || header.len() > pacer::HEADER_MAX {
        return None;
    }
    let mut q = pacer::Queued {
        waiting,
        track,
        header: [0; pacer::HEADER_MAX],
        header_len: header.len(),
        transport_seq_at,
        prefix: [0; pacer::PREFIX_MAX],
        prefix_len: 0,
        packet: packet.clone(),
        payload: (start, end),
        queued_at: now,
    };
    q.header[..header.len()].copy_from_slice(header);
    for part in prefix {
        let at = q.prefix_len;
        q.prefix.get_mut(at..at + part.len())?.copy_from_slice(part);
        q.prefix_len += part.len();
    }
    Some(q)
}

/// The start of a RED payload (RFC 2198 §3) for a packet forwarded as `pt`: one redundant
/// block, the previous packet's frame, then the primary's header; the primary frame follows.
/// Returns its length, or `None` when the previous frame is not at hand or does not fit.
pub(super) fn red_prefix(
    now: Instant,
    cache: &RetransmitCache,
    view: &RtpView,
    fwd: &Forwarder,
    pt: u8,
    out: &mut [u8],
) -> Option<usize> {
    let prev_seq = view.sequence.wrapping_sub(1);
    if !fwd.covers(prev_seq) {
        return None;
    }
    let (pkt, prev) = cache.get(now, prev_seq)?;
    let data = prev.payload(pkt);
    // Timestamp offset: 14 bits; block length: 10 bits.
    let offset = view.timestamp.wrapping_sub(prev.timestamp);
    if offset == 0 || offset >= 1 << 14 || data.len() >= 1 << 10 || 5 + data.len() > out.len() {
        return None;
    }
    let pt = pt & 0x7f;
    out[0] = 0x80 | pt;
    out[1] = (offset >> 6) as u8;
    out[2] = (((offset & 0x3f) << 2) as u8) | (data.len() >> 8) as u8;
    out[3] = data.len() as u8;
    out[4] = pt;
    out[5..5 + data.len()].copy_from_slice(data);
    Some(5 + data.len())
}
