//! RTCP between viewers and publishers. From a viewer: transport-cc feedback, REMB and receiver
//! reports feed its estimator; a NACK is answered from the cache (on the RTX stream where
//! negotiated, else as the same bytes again) within the viewer's resend budget, and what the
//! cache lacks is asked of the publisher; PLI and FIR become key-frame requests. From a
//! publisher: each sender report is translated into every viewer's SSRC and timestamps.

use std::collections::HashMap;
use std::time::Instant;

use super::histogram;
use super::pacer::Waiting;
use super::publisher::Publisher;
use super::send::{self, Number, Scratch, Sent};
use super::track::{ViewerTrack, SENT_TRANSPORT_SEQ};
use super::viewer::Viewer;
use super::{RelayCounters, SessionId, Sink, TrackRef};
use crate::core::rtcp::{self, twcc, Compound, Nack, ReportBlock, RtcpPacket, SenderReport};
use crate::core::rtp::Rewrite;

/// Sequence numbers one NACK passes on to the publisher, at most.
const MAX_UPSTREAM_NACKS: usize = 64;

/// Transport-cc messages read from one RTCP compound packet (each yields at most
/// [`twcc::MAX_RESULTS`] results).
const MAX_TWCC_PER_COMPOUND: usize = 2;

/// A viewer's RTCP compound packet: its estimator fed, NACKs answered; returns the source
/// layers to ask for a key frame (each once).
#[allow(clippy::too_many_arguments)]
pub(super) fn from_viewer(
    now: Instant,
    (vid, v): (SessionId, &mut Viewer),
    publishers: &HashMap<SessionId, Publisher>,
    buf: &[u8],
    scratch: &mut Scratch,
    counters: &mut RelayCounters,
    sink: &mut impl Sink,
) -> Vec<(TrackRef, u8)> {
    let live = |v: &Viewer, ssrc: u32| v.tracks.iter().position(|t| t.live && t.fwd.ssrc() == ssrc);
    let mut keyframes: Vec<(TrackRef, u8)> = Vec::new();
    let mut feedbacks = 0;
    for pkt in Compound::new(buf) {
        let media = match pkt {
            Ok(RtcpPacket::TransportCc(fb)) => {
                // Receivers send one per compound; more is work asked for, not news.
                feedbacks += 1;
                let cc = &mut v.cc;
                if feedbacks <= MAX_TWCC_PER_COMPOUND && twcc::parse(fb, &mut cc.results).is_ok() {
                    cc.bwe.on_feedback(now, &cc.results);
                }
                continue;
            }
            Ok(RtcpPacket::Remb(remb)) => {
                v.cc.bwe.on_remb(now, remb.bitrate_bps);
                continue;
            }
            Ok(RtcpPacket::ReceiverReport(rr)) => {
                if let Some(block) = rr.blocks().next() {
                    v.cc.bwe.on_receiver_report(now, block.fraction_lost);
                }
                for block in rr.blocks() {
                    if let Some(i) = live(v, block.ssrc) {
                        observe_report(now, &v.tracks[i], publishers, &block, counters);
                    }
                }
                continue;
            }
            Ok(RtcpPacket::Pli(pli)) => {
                counters.plis_received += 1;
                pli.media_ssrc
            }
            Ok(RtcpPacket::Fir(fir)) => match fir.entries().next() {
                Some((ssrc, _)) => {
                    counters.firs_received += 1;
                    ssrc
                }
                None => continue,
            },
            Ok(RtcpPacket::Nack(nack)) => {
                counters.nacks_received += 1;
                if let Some(index) = live(v, nack.media_ssrc) {
                    resend(
                        now,
                        (vid, v, index),
                        publishers,
                        &nack,
                        scratch,
                        counters,
                        sink,
                    );
                }
                continue;
            }
            _ => continue,
        };
        // The layer the viewer follows, or the one it waits to switch to.
        if let Some(k) = live(v, media)
            .map(|i| &v.tracks[i])
            .and_then(|vt| Some((vt.spec.source, vt.fwd.target()?)))
        {
            if !keyframes.contains(&k) {
                keyframes.push(k);
            }
        }
    }
    keyframes
}

/// What one report block of a viewer says about a track it receives, into the relay's
/// distributions: the loss since its last report, the interarrival jitter (in the track's clock
/// units on the wire), and the round-trip time when it echoes the last sender report sent.
fn observe_report(
    now: Instant,
    vt: &ViewerTrack,
    publishers: &HashMap<SessionId, Publisher>,
    block: &ReportBlock,
    counters: &mut RelayCounters,
) {
    let loss = u64::from(block.fraction_lost) * 1000 / 256;
    counters
        .loss_per_mille
        .observe(histogram::LOSS_PER_MILLE, loss);
    let clock = publishers
        .get(&vt.spec.source.publisher)
        .and_then(|p| p.tracks.get(vt.spec.source.track))
        .map_or(0, |t| u64::from(t.spec.clock_rate));
    if let Some(us) = (u64::from(block.jitter) * 1_000_000).checked_div(clock) {
        counters.jitter_us.observe(histogram::JITTER_US, us);
    }
    if let Some((_, at)) = vt
        .sr_sent
        .filter(|(ntp, _)| block.last_sr != 0 && *ntp == block.last_sr)
    {
        // The delay since the report is in 1/65536 s.
        let held = u64::from(block.delay_since_last_sr) * 1_000_000 / 65_536;
        let us = (now.saturating_duration_since(at).as_micros() as u64).saturating_sub(held);
        counters.rtt_us.observe(histogram::RTT_US, us);
    }
}

/// Answers one NACK for track `index`: from the cache what it holds, each packet at most once
/// per interval and within the viewer's budget (see `resend`); the publisher is asked for the
/// rest, each once.
#[allow(clippy::too_many_arguments)]
fn resend(
    now: Instant,
    (vid, v, index): (SessionId, &mut Viewer, usize),
    publishers: &HashMap<SessionId, Publisher>,
    nack: &Nack<'_>,
    scratch: &mut Scratch,
    counters: &mut RelayCounters,
    sink: &mut impl Sink,
) {
    let source = v.tracks[index].spec.source;
    let Some(p) = publishers.get(&source.publisher) else {
        return;
    };
    let src = &p.tracks[source.track];
    // NACKs name the viewer's numbering of the layer it follows now.
    let Some(layer) = v.tracks[index]
        .fwd
        .current()
        .and_then(|l| src.layers.get(usize::from(l)))
    else {
        return;
    };
    let mut upstream: Vec<u16> = Vec::new();
    // Where the viewer's link rate is known, resends wait in its pacer (ahead of video).
    let paced = v.paced();
    for (first, blp) in nack.pairs() {
        let lost = std::iter::once(first).chain(
            (0..16u16)
                .filter(|b| blp & (1 << b) != 0)
                .map(|b| first.wrapping_add(b + 1)),
        );
        for viewer_seq in lost {
            let out = v.out(vid, index);
            let vt = &out.track;
            let Some(seq) = vt.fwd.source_sequence(viewer_seq) else {
                continue;
            };
            // Paused, or from before a resume: nothing the viewer can get.
            if !vt.fwd.covers(seq) {
                continue;
            }
            let cached = layer
                .cache
                .get(now, seq)
                .and_then(|(pkt, view)| Some((pkt, view, vt.fwd.rewrite_again(view)?)));
            let Some((pkt, view, rw)) = cached else {
                if !upstream.contains(&seq) && upstream.len() < MAX_UPSTREAM_NACKS {
                    upstream.push(seq);
                }
                continue;
            };
            if !out.track.resends.allow(now, seq) {
                continue;
            }
            if !out.cc.budget.try_resend(now, pkt.len() + 2) {
                counters.resends_refused += 1;
                continue;
            }
            let (prefix, payload) =
                send::payload_prefix(&out.track.fwd, view.payload(pkt), &mut scratch.prefix);
            let (rw, osn, same) = match out.track.spec.rtx {
                // RFC 4588: on the repair stream, under a sequence number of its own, the
                // original number first in the payload.
                Some(rtx) => {
                    let rtx_rw = Rewrite {
                        ssrc: rtx.ssrc,
                        sequence: out.track.next_rtx_seq(),
                        payload_type: rtx.payload_type,
                        ..rw
                    };
                    (rtx_rw, Some(rw.sequence.to_be_bytes()), None)
                }
                // The same transport-wide number as the original, so the resend is the same
                // bytes under the same SRTP index; if it is no longer known, the packet is not
                // resent. Nor is audio that may have gone as RED or re-encoded: its bytes cannot
                // be made again.
                None => {
                    let vt = &out.track;
                    if vt.spec.red.is_some() || vt.ever_low {
                        continue;
                    }
                    let same = if vt.sent_transport_seq.is_empty() {
                        None
                    } else {
                        let slot = vt.sent_transport_seq[rw.sequence as usize % SENT_TRANSPORT_SEQ];
                        if slot.0 != rw.sequence {
                            continue;
                        }
                        Some(slot.1)
                    };
                    (rw, None, same)
                }
            };
            let Some(w) = out.write(&mut scratch.header, (pkt, view), &src.spec.ext, &rw) else {
                continue;
            };
            let osn = osn.as_ref().map_or(&[][..], |o| &o[..]);
            if paced {
                let header = (&scratch.header[..w.len], w.transport_seq_at);
                let waiting = Waiting::Resend(same);
                let body = (pkt, payload);
                if let Some(q) = send::queued(now, index, waiting, header, &[osn, prefix], body) {
                    v.queue_resend(now, vid, q, counters, sink);
                    continue;
                }
            }
            let number = same.map_or(Number::Next, Number::Same);
            let len = osn.len() + prefix.len() + payload.len();
            let (prefix, payload) = if osn.is_empty() {
                (prefix, payload)
            } else {
                let Some(body) = scratch.body.get_mut(..len) else {
                    continue;
                };
                body[..2].copy_from_slice(osn);
                body[2..2 + prefix.len()].copy_from_slice(prefix);
                body[2 + prefix.len()..].copy_from_slice(payload);
                (&[][..], &scratch.body[..len])
            };
            let header = (&mut scratch.header[..w.len], w.transport_seq_at);
            v.out(vid, index).send(
                now,
                header,
                number,
                (prefix, payload),
                Sent::Resend,
                counters,
                sink,
            );
        }
    }
    let (Some(ssrc), true) = (layer.ssrc, src.spec.feedback.nack) else {
        return;
    };
    if let Ok(n) = rtcp::nack::write_list(p.rtcp_ssrc, ssrc, &upstream, &mut scratch.rtcp) {
        if n > 0 {
            sink.rtcp(source.publisher, &scratch.rtcp[..n]);
        }
    }
}

/// A publisher's RTCP compound packet: each sender report noted for its layer's receive
/// statistics and sent on to every viewer in its own SSRC and timestamp space, so their clock
/// mapping (lip sync) and stats stay right.
pub(super) fn from_publisher(
    now: Instant,
    p: &mut Publisher,
    viewers: &mut HashMap<SessionId, Viewer>,
    buf: &[u8],
    rtcp_buf: &mut [u8],
    sink: &mut impl Sink,
) {
    for pkt in Compound::new(buf) {
        let Ok(RtcpPacket::SenderReport(sr)) = pkt else {
            continue;
        };
        let found = p.tracks.iter_mut().find_map(|t| {
            let li = t.layers.iter().position(|l| l.ssrc == Some(sr.ssrc))?;
            Some((t, li))
        });
        let Some((track, li)) = found else {
            continue;
        };
        track.layers[li]
            .stats
            .on_sender_report(now, sr.ntp_middle());
        for &(vid, vti) in &track.viewers {
            let Some(v) = viewers.get_mut(&vid) else {
                continue;
            };
            v.tracks[vti].sr_sent = Some((sr.ntp_middle(), now));
            let fwd = &v.tracks[vti].fwd;
            let Some(ts) = fwd.viewer_timestamp(li as u8, sr.rtp_timestamp) else {
                continue;
            };
            let (packets, octets) = fwd.counts();
            let out = SenderReport {
                ssrc: fwd.ssrc(),
                ntp: sr.ntp,
                rtp_timestamp: ts,
                packets,
                octets,
            };
            if let Ok(n) = out.write(rtcp_buf) {
                sink.rtcp(vid, &rtcp_buf[..n]);
            }
        }
    }
}
