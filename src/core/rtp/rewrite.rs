//! Per-viewer header rewrite: a new fixed header (SSRC, sequence, timestamp, payload type), the
//! publisher's CSRCs, and the header extensions translated to the viewer's negotiated ids.

use super::ext::{ExtKind, ExtMap, ExtWriter};
use super::{RtpError, RtpView};

/// Values that replace the publisher's in one forwarded packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrite {
    pub ssrc: u32,
    pub sequence: u16,
    pub timestamp: u32,
    pub payload_type: u8,
    pub marker: bool,
}

/// How extensions are translated from one publisher m-line to one viewer m-line.
#[derive(Debug, Clone, Copy)]
pub struct ExtTranslation<'a> {
    pub from: &'a ExtMap,
    pub to: &'a ExtMap,
    /// The viewer's MID for this m-line, written when the viewer negotiated the MID extension.
    pub mid: &'a [u8],
    /// The viewer transport's next transport-wide sequence number, written when it negotiated
    /// transport-cc.
    pub transport_seq: Option<u16>,
}

/// Writes the rewritten RTP header for `view` (parsed from `src`) into `out`; returns its length.
/// The payload is not touched: the caller appends `view.payload(src)` after the header.
pub fn write_header(
    out: &mut [u8],
    src: &[u8],
    view: &RtpView,
    rw: &Rewrite,
    ext: ExtTranslation<'_>,
) -> Result<usize, RtpError> {
    write_header_marked(out, src, view, rw, ext).map(|w| w.len)
}

/// A header [`write_header_marked`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub len: usize,
    /// Where the transport-wide sequence number's two bytes are, when one was written: a sender
    /// that numbers packets as they leave writes it there later.
    pub transport_seq_at: Option<usize>,
}

/// [`write_header`], also telling where the transport-wide sequence number went.
pub fn write_header_marked(
    out: &mut [u8],
    src: &[u8],
    view: &RtpView,
    rw: &Rewrite,
    ext: ExtTranslation<'_>,
) -> Result<Written, RtpError> {
    let csrcs = view.csrcs(src);
    let fixed = 12 + csrcs.len();
    if out.len() < fixed {
        return Err(RtpError::BufferTooSmall);
    }
    out[1] = (u8::from(rw.marker) << 7) | (rw.payload_type & 0x7f);
    out[2..4].copy_from_slice(&rw.sequence.to_be_bytes());
    out[4..8].copy_from_slice(&rw.timestamp.to_be_bytes());
    out[8..12].copy_from_slice(&rw.ssrc.to_be_bytes());
    out[12..fixed].copy_from_slice(csrcs);

    // Two-byte form only when some element cannot be written in the one-byte form.
    let mid_id = ext.to.id(ExtKind::Mid);
    let twcc = ext
        .transport_seq
        .and_then(|seq| Some((ext.to.id(ExtKind::TransportWideCc)?, seq.to_be_bytes())));
    let mut two_byte = mid_id.is_some_and(|id| !ExtWriter::fits_one_byte(id, ext.mid.len()))
        || twcc.is_some_and(|(id, _)| !ExtWriter::fits_one_byte(id, 2));
    for (id, data) in view.extensions(src) {
        if let Some(to_id) = translated(ext, id) {
            two_byte |= !ExtWriter::fits_one_byte(to_id, data.len());
        }
    }
    let mut w = ExtWriter::new(&mut out[fixed..], two_byte);
    if let Some(id) = mid_id {
        if !ext.mid.is_empty() && !w.push(id, ext.mid) {
            return Err(RtpError::BufferTooSmall);
        }
    }
    let mut transport_seq_at = None;
    if let Some((id, seq)) = twcc {
        let at = fixed + w.written() + if two_byte { 2 } else { 1 };
        if !w.push(id, &seq) {
            return Err(RtpError::BufferTooSmall);
        }
        transport_seq_at = Some(at);
    }
    for (id, data) in view.extensions(src) {
        if let Some(to_id) = translated(ext, id) {
            if !w.push(to_id, data) {
                return Err(RtpError::BufferTooSmall);
            }
        }
    }
    let ext_len = w.finish();
    out[0] = 0x80 | (u8::from(ext_len > 0) << 4) | view.csrc_count;
    Ok(Written {
        len: fixed + ext_len,
        transport_seq_at,
    })
}

fn translated(ext: ExtTranslation<'_>, id: u8) -> Option<u8> {
    let kind = ext.from.kind(id)?;
    if !kind.forwarded() {
        return None;
    }
    ext.to.id(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maps() -> (ExtMap, ExtMap) {
        let from = ExtMap::from_pairs(&[
            (1, ExtKind::AudioLevel),
            (4, ExtKind::Mid),
            (10, ExtKind::RtpStreamId),
        ]);
        let to = ExtMap::from_pairs(&[(3, ExtKind::AudioLevel), (9, ExtKind::Mid)]);
        (from, to)
    }

    fn source() -> Vec<u8> {
        // marker, pt 111, seq 7, ts 1000, ssrc 0x11, ext: id1 [0x85], id4 "0", id10 "h"
        let mut p = vec![0x90, 0x80 | 111, 0, 7, 0, 0, 0x03, 0xe8, 0, 0, 0, 0x11];
        p.extend_from_slice(&[0xbe, 0xde, 0, 2, 0x10, 0x85, 0x40, b'0', 0xa0, b'h', 0, 0]);
        p.extend_from_slice(&[1, 2, 3, 4]);
        p
    }

    #[test]
    fn rewrites_fields_and_translates_extensions() {
        let (from, to) = maps();
        let src = source();
        let view = RtpView::parse(&src).unwrap();
        let rw = Rewrite {
            ssrc: 0xabcd,
            sequence: 500,
            timestamp: 9,
            payload_type: 109,
            marker: true,
        };
        let mut out = [0u8; 64];
        let n = write_header(
            &mut out,
            &src,
            &view,
            &rw,
            ExtTranslation {
                transport_seq: None,
                from: &from,
                to: &to,
                mid: b"1",
            },
        )
        .unwrap();
        let mut pkt = out[..n].to_vec();
        pkt.extend_from_slice(view.payload(&src));
        let got = RtpView::parse(&pkt).unwrap();
        assert_eq!(
            (got.ssrc, got.sequence, got.timestamp, got.payload_type),
            (0xabcd, 500, 9, 109)
        );
        assert!(got.marker);
        assert_eq!(got.payload(&pkt), &[1, 2, 3, 4]);
        let exts: Vec<_> = got.extensions(&pkt).collect();
        // Our MID first, the level under its new id, the RID dropped.
        assert_eq!(exts, vec![(9, &b"1"[..]), (3, &[0x85][..])]);
    }

    #[test]
    fn no_extensions_when_viewer_negotiated_none() {
        let (from, _) = maps();
        let to = ExtMap::default();
        let src = source();
        let view = RtpView::parse(&src).unwrap();
        let rw = Rewrite {
            ssrc: 1,
            sequence: 1,
            timestamp: 1,
            payload_type: 111,
            marker: false,
        };
        let mut out = [0u8; 64];
        let n = write_header(
            &mut out,
            &src,
            &view,
            &rw,
            ExtTranslation {
                transport_seq: None,
                from: &from,
                to: &to,
                mid: b"0",
            },
        )
        .unwrap();
        assert_eq!(n, 12);
        assert_eq!(out[0], 0x80);
    }

    #[test]
    fn large_ids_use_two_byte_form() {
        let (from, _) = maps();
        let mut to = ExtMap::default();
        to.insert(20, ExtKind::AudioLevel);
        let src = source();
        let view = RtpView::parse(&src).unwrap();
        let rw = Rewrite {
            ssrc: 1,
            sequence: 1,
            timestamp: 1,
            payload_type: 111,
            marker: false,
        };
        let mut out = [0u8; 64];
        let n = write_header(
            &mut out,
            &src,
            &view,
            &rw,
            ExtTranslation {
                transport_seq: None,
                from: &from,
                to: &to,
                mid: b"",
            },
        )
        .unwrap();
        let got = RtpView::parse(&out[..n]).unwrap();
        assert_eq!(got.ext_profile, 0x1000);
        assert_eq!(
            got.extensions(&out[..n]).collect::<Vec<_>>(),
            vec![(20, &[0x85][..])]
        );
    }

    #[test]
    fn small_buffer_is_an_error() {
        let (from, to) = maps();
        let src = source();
        let view = RtpView::parse(&src).unwrap();
        let rw = Rewrite {
            ssrc: 1,
            sequence: 1,
            timestamp: 1,
            payload_type: 111,
            marker: false,
        };
        let mut out = [0u8; 14];
        let r = write_header(
            &mut out,
            &src,
            &view,
            &rw,
            ExtTranslation {
                transport_seq: None,
                from: &from,
                to: &to,
                mid: b"0",
            },
        );
        assert_eq!(r, Err(RtpError::BufferTooSmall));
    }

    #[test]
    fn marks_where_the_transport_wide_number_is() {
        // (twcc id, mid id, mid): one-byte and two-byte forms, with and without a MID.
        let cases: &[(u8, Option<u8>, &[u8])] = &[
            (5, None, b""),
            (5, Some(9), b"1"),
            (5, Some(9), b"a-long-mid-of-20-bytes"),
            (20, Some(9), b"0"),
        ];
        let src = source();
        let view = RtpView::parse(&src).unwrap();
        let from = maps().0;
        let rw = Rewrite {
            ssrc: 1,
            sequence: 1,
            timestamp: 1,
            payload_type: 111,
            marker: false,
        };
        for &(twcc, mid_id, mid) in cases {
            let mut pairs = vec![(twcc, ExtKind::TransportWideCc)];
            pairs.extend(mid_id.map(|id| (id, ExtKind::Mid)));
            let to = ExtMap::from_pairs(&pairs);
            let ext = ExtTranslation {
                transport_seq: Some(0xbeef),
                from: &from,
                to: &to,
                mid,
            };
            let mut out = [0u8; 128];
            let w = write_header_marked(&mut out, &src, &view, &rw, ext).unwrap();
            let at = w
                .transport_seq_at
                .expect("a transport-wide number was written");
            assert_eq!(out[at..at + 2], [0xbe, 0xef], "twcc id {twcc}, mid {mid:?}");
            let got = RtpView::parse(&out[..w.len]).unwrap();
            let (_, data) = got
                .extensions(&out[..w.len])
                .find(|(i, _)| *i == twcc)
                .unwrap();
            assert_eq!(data.as_ptr() as usize - out.as_ptr() as usize, at);
            let none = ExtTranslation {
                transport_seq: None,
                ..ext
            };
            let w = write_header_marked(&mut out, &src, &view, &rw, none).unwrap();
            assert_eq!(w.transport_seq_at, None);
        }
    }
}
