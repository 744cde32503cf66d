//! RTCP (RFC 3550 §6, RFC 4585, RFC 5104): compound packets walked in place, one file per message
//! for the ones volna reads or writes.

pub mod bye;
pub mod fir;
pub mod nack;
pub mod pli;
pub mod remb;
pub mod rr;
pub mod sr;
pub mod twcc;

pub use fir::Fir;
pub use nack::Nack;
pub use pli::Pli;
pub use remb::Remb;
pub use rr::{ReceiverReport, ReportBlock};
pub use sr::SenderReport;

pub const PT_SR: u8 = 200;
pub const PT_RR: u8 = 201;
pub const PT_SDES: u8 = 202;
pub const PT_BYE: u8 = 203;
pub const PT_RTPFB: u8 = 205;
pub const PT_PSFB: u8 = 206;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtcpError {
    #[error("RTCP packet too short")]
    TooShort,
    #[error("unsupported RTCP version")]
    Version,
    #[error("RTCP length field runs past the datagram")]
    Length,
    #[error("output buffer too small")]
    BufferTooSmall,
    #[error("malformed RTCP: {0}")]
    Malformed(&'static str),
}

/// One packet of a compound datagram, still borrowing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcpPacket<'a> {
    SenderReport(SenderReport),
    ReceiverReport(ReceiverReport<'a>),
    Pli(Pli),
    Fir(Fir<'a>),
    Nack(Nack<'a>),
    Remb(Remb),
    Bye(bye::Bye<'a>),
    /// Transport-wide congestion control feedback: the whole packet, for `twcc::parse`.
    TransportCc(&'a [u8]),
    /// A packet volna does not act on (SDES, APP, ...): its type and format.
    Other {
        packet_type: u8,
        format: u8,
    },
}

/// Walks a compound RTCP datagram. Stops with an error at the first malformed packet.
pub struct Compound<'a> {
    buf: &'a [u8],
}

impl<'a> Compound<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }
}

impl<'a> Iterator for Compound<'a> {
    type Item = Result<RtcpPacket<'a>, RtcpError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let r = split_one(self.buf);
        match r {
            Ok((pkt, rest)) => {
                self.buf = rest;
                Some(Ok(pkt))
            }
            Err(e) => {
                self.buf = &[];
                Some(Err(e))
            }
        }
    }
}

fn split_one(buf: &[u8]) -> Result<(RtcpPacket<'_>, &[u8]), RtcpError> {
    if buf.len() < 4 {
        return Err(RtcpError::TooShort);
    }
    if buf[0] >> 6 != 2 {
        return Err(RtcpError::Version);
    }
    let count = buf[0] & 0x1f;
    let pt = buf[1];
    let len = 4 * (u16::from_be_bytes([buf[2], buf[3]]) as usize + 1);
    if buf.len() < len {
        return Err(RtcpError::Length);
    }
    let mut body = &buf[4..len];
    if buf[0] & 0x20 != 0 {
        // Padding: the last octet counts the padding octets, itself included.
        let pad = *body.last().ok_or(RtcpError::Length)? as usize;
        if pad == 0 || pad > body.len() {
            return Err(RtcpError::Length);
        }
        body = &body[..body.len() - pad];
    }
    let pkt = match (pt, count) {
        (PT_SR, _) => RtcpPacket::SenderReport(SenderReport::parse(body)?),
        (PT_RR, _) => RtcpPacket::ReceiverReport(ReceiverReport::parse(count, body)?),
        (PT_BYE, _) => RtcpPacket::Bye(bye::Bye::parse(count, body)?),
        (PT_RTPFB, nack::FMT) => RtcpPacket::Nack(Nack::parse(body)?),
        (PT_RTPFB, twcc::FMT) => RtcpPacket::TransportCc(&buf[..len]),
        (PT_PSFB, pli::FMT) => RtcpPacket::Pli(Pli::parse(body)?),
        (PT_PSFB, fir::FMT) => RtcpPacket::Fir(Fir::parse(body)?),
        (PT_PSFB, remb::FMT) => match Remb::parse(body) {
            Ok(r) => RtcpPacket::Remb(r),
            // Other application-layer feedback shares the format number.
            Err(_) => RtcpPacket::Other {
                packet_type: pt,
                format: count,
            },
        },
        _ => RtcpPacket::Other {
            packet_type: pt,
            format: count,
        },
    };
    Ok((pkt, &buf[len..]))
}

pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Writes the 4-byte common header for a packet of `total` bytes (a multiple of 4).
pub(crate) fn write_common_header(out: &mut [u8], count: u8, pt: u8, total: usize) {
    out[0] = 0x80 | (count & 0x1f);
    out[1] = pt;
    out[2..4].copy_from_slice(&((total / 4 - 1) as u16).to_be_bytes());
}

pub(crate) fn check_room(out: &[u8], need: usize) -> Result<(), RtcpError> {
    if out.len() < need {
        Err(RtcpError::BufferTooSmall)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_compound_and_stops_on_error() {
        let mut buf = [0u8; 64];
        let a = SenderReport {
            ssrc: 5,
            ntp: 7,
            rtp_timestamp: 9,
            packets: 1,
            octets: 2,
        }
        .write(&mut buf)
        .unwrap();
        let b = Pli {
            sender_ssrc: 1,
            media_ssrc: 2,
        }
        .write(&mut buf[a..])
        .unwrap();
        let mut v = buf[..a + b].to_vec();
        let got: Vec<_> = Compound::new(&v).collect();
        assert_eq!(got.len(), 2);
        assert!(matches!(
            got[0],
            Ok(RtcpPacket::SenderReport(SenderReport { ssrc: 5, .. }))
        ));
        assert_eq!(
            got[1],
            Ok(RtcpPacket::Pli(Pli {
                sender_ssrc: 1,
                media_ssrc: 2
            }))
        );

        v.extend_from_slice(&[0x80, 201, 0, 9]);
        let got: Vec<_> = Compound::new(&v).collect();
        assert_eq!(got.last(), Some(&Err(RtcpError::Length)));
    }

    #[test]
    fn malformed_table() {
        let cases: &[(&str, &[u8], RtcpError)] = &[
            ("short", &[0x80, 200], RtcpError::TooShort),
            ("version", &[0x40, 200, 0, 0], RtcpError::Version),
            ("length", &[0x80, 200, 0, 5, 0, 0, 0, 0], RtcpError::Length),
            (
                "sr body short",
                &[0x80, 200, 0, 1, 0, 0, 0, 1],
                RtcpError::TooShort,
            ),
            (
                "bad padding",
                &[0xa0, 206, 0, 2, 0, 0, 0, 1, 0, 0, 0, 9],
                RtcpError::Length,
            ),
        ];
        for (name, b, want) in cases {
            assert_eq!(Compound::new(b).next(), Some(Err(want.clone())), "{name}");
        }
    }

    #[test]
    fn unknown_types_are_other() {
        let b = [0x81, 202, 0, 0];
        assert_eq!(
            Compound::new(&b).next(),
            Some(Ok(RtcpPacket::Other {
                packet_type: 202,
                format: 1
            }))
        );
    }
}
