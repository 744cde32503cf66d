//! A parsed view of one RTP packet (RFC 3550 §5.1): offsets into the caller's buffer, nothing copied.

use super::RtpError;

/// Where the parts of an RTP packet lie in its buffer. `Copy`, so the forward path passes it by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpView {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// Number of CSRC entries (0..=15) following the fixed header.
    pub csrc_count: u8,
    /// Header-extension profile (0xBEDE one-byte, 0x100X two-byte), 0 when absent.
    pub ext_profile: u16,
    /// Offset and length of the header-extension body (after its 4-byte header).
    pub ext_start: usize,
    pub ext_len: usize,
    /// Payload bounds, padding excluded.
    pub payload_start: usize,
    pub payload_end: usize,
}

impl RtpView {
    /// Parses the fixed header, CSRCs, extension and padding of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, RtpError> {
        if buf.len() < 12 {
            return Err(RtpError::TooShort(buf.len()));
        }
        let b0 = buf[0];
        if b0 >> 6 != 2 {
            return Err(RtpError::Version(b0 >> 6));
        }
        let padding = b0 & 0x20 != 0;
        let has_ext = b0 & 0x10 != 0;
        let csrc_count = b0 & 0x0f;
        let mut off = 12 + 4 * csrc_count as usize;
        if buf.len() < off {
            return Err(RtpError::TooShort(buf.len()));
        }
        let (mut ext_profile, mut ext_start, mut ext_len) = (0, 0, 0);
        if has_ext {
            if buf.len() < off + 4 {
                return Err(RtpError::TooShort(buf.len()));
            }
            ext_profile = u16::from_be_bytes([buf[off], buf[off + 1]]);
            ext_len = 4 * u16::from_be_bytes([buf[off + 2], buf[off + 3]]) as usize;
            ext_start = off + 4;
            off = ext_start + ext_len;
            if buf.len() < off {
                return Err(RtpError::ExtensionOverrun);
            }
        }
        let mut end = buf.len();
        if padding {
            let pad = buf[end - 1] as usize;
            if pad == 0 || end - off < pad {
                return Err(RtpError::Padding);
            }
            end -= pad;
        }
        Ok(Self {
            marker: buf[1] & 0x80 != 0,
            payload_type: buf[1] & 0x7f,
            sequence: u16::from_be_bytes([buf[2], buf[3]]),
            timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
            csrc_count,
            ext_profile,
            ext_start,
            ext_len,
            payload_start: off,
            payload_end: end,
        })
    }

    pub fn payload<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.payload_start..self.payload_end]
    }

    pub fn csrcs<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[12..12 + 4 * self.csrc_count as usize]
    }

    pub fn extensions<'a>(&self, buf: &'a [u8]) -> super::ext::ExtIter<'a> {
        super::ext::ExtIter::new(
            self.ext_profile,
            &buf[self.ext_start..self.ext_start + self.ext_len],
        )
    }
}

/// Length of the header alone (fixed part, CSRCs, extension): what SRTP authenticates but does
/// not encrypt, so it is read before decryption, when the padding count is still ciphertext.
pub fn header_len(buf: &[u8]) -> Result<usize, RtpError> {
    if buf.len() < 12 {
        return Err(RtpError::TooShort(buf.len()));
    }
    if buf[0] >> 6 != 2 {
        return Err(RtpError::Version(buf[0] >> 6));
    }
    let mut off = 12 + 4 * (buf[0] & 0x0f) as usize;
    if buf[0] & 0x10 != 0 {
        let len = buf
            .get(off + 2..off + 4)
            .ok_or(RtpError::TooShort(buf.len()))?;
        off += 4 + 4 * u16::from_be_bytes([len[0], len[1]]) as usize;
    }
    if buf.len() < off {
        return Err(RtpError::ExtensionOverrun);
    }
    Ok(off)
}

/// True when a datagram's second byte says RTCP rather than RTP (RFC 5761 §4: PT 192..=223).
pub fn is_rtcp(buf: &[u8]) -> bool {
    buf.len() >= 2 && (192..=223).contains(&buf[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(b0: u8, extra: &[u8], tail: &[u8]) -> Vec<u8> {
        let mut v = vec![
            b0,
            0x80 | 96,
            0x12,
            0x34,
            0,
            0,
            0x10,
            0,
            0xde,
            0xad,
            0xbe,
            0xef,
        ];
        v.extend_from_slice(extra);
        v.extend_from_slice(tail);
        v
    }

    type Case = (&'static str, Vec<u8>, Result<(usize, usize), RtpError>);

    #[test]
    fn parses_table() {
        // (name, bytes, expected payload range or error)
        let ext = [0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0];
        let cases: Vec<Case> = vec![
            ("plain", packet(0x80, &[], &[1, 2, 3]), Ok((12, 15))),
            ("empty payload", packet(0x80, &[], &[]), Ok((12, 12))),
            ("one csrc", packet(0x81, &[0, 0, 0, 7], &[9]), Ok((16, 17))),
            ("extension", packet(0x90, &ext, &[5, 6]), Ok((20, 22))),
            ("padding", packet(0xa0, &[], &[1, 2, 0, 3]), Ok((12, 13))),
            ("short", vec![0x80, 0, 0], Err(RtpError::TooShort(3))),
            (
                "version 1",
                packet(0x40, &[], &[]),
                Err(RtpError::Version(1)),
            ),
            (
                "csrc overrun",
                packet(0x82, &[0, 0, 0, 1], &[]),
                Err(RtpError::TooShort(16)),
            ),
            (
                "ext overrun",
                packet(0x90, &[0xbe, 0xde, 0, 9], &[]),
                Err(RtpError::ExtensionOverrun),
            ),
            (
                "zero padding",
                packet(0xa0, &[], &[1, 0]),
                Err(RtpError::Padding),
            ),
            (
                "padding overrun",
                packet(0xa0, &[], &[1, 9]),
                Err(RtpError::Padding),
            ),
        ];
        for (name, bytes, want) in cases {
            let got = RtpView::parse(&bytes).map(|v| (v.payload_start, v.payload_end));
            assert_eq!(got, want, "case {name}");
        }
    }

    #[test]
    fn header_fields() {
        let p = packet(0x80, &[], &[1]);
        let v = RtpView::parse(&p).unwrap();
        assert!(v.marker);
        assert_eq!(
            (v.payload_type, v.sequence, v.timestamp, v.ssrc),
            (96, 0x1234, 0x1000, 0xdeadbeef)
        );
        assert_eq!(v.payload(&p), &[1]);
    }

    #[test]
    fn rtcp_demux() {
        assert!(is_rtcp(&[0x80, 200]));
        assert!(is_rtcp(&[0x81, 206]));
        assert!(!is_rtcp(&[0x80, 96]));
        assert!(!is_rtcp(&[0x80, 0x80 | 111]));
        assert!(!is_rtcp(&[0x80]));
    }
}
