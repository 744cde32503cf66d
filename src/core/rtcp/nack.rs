//! Generic NACK (RFC 4585 §6.2.1).

use super::{check_room, u32_at, write_common_header, RtcpError, PT_RTPFB};

pub const FMT: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nack<'a> {
    pub sender_ssrc: u32,
    pub media_ssrc: u32,
    fci: &'a [u8],
}

impl<'a> Nack<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, RtcpError> {
        if body.len() < 12 || !body.len().is_multiple_of(4) {
            return Err(RtcpError::TooShort);
        }
        Ok(Self {
            sender_ssrc: u32_at(body, 0),
            media_ssrc: u32_at(body, 4),
            fci: &body[8..],
        })
    }

    /// The (packet id, bitmask of following lost packets) pairs.
    pub fn pairs(&self) -> impl Iterator<Item = (u16, u16)> + 'a {
        self.fci.chunks_exact(4).map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u16::from_be_bytes([c[2], c[3]]),
            )
        })
    }

    /// Writes a NACK whose pairs come from `pairs`, rewritten by `map` (used to translate
    /// sequence numbers from a viewer's numbering to the publisher's).
    pub fn write_mapped(
        &self,
        sender_ssrc: u32,
        media_ssrc: u32,
        map: impl Fn(u16) -> u16,
        out: &mut [u8],
    ) -> Result<usize, RtcpError> {
        let total = 12 + self.fci.len();
        check_room(out, total)?;
        write_common_header(out, FMT, PT_RTPFB, total);
        out[4..8].copy_from_slice(&sender_ssrc.to_be_bytes());
        out[8..12].copy_from_slice(&media_ssrc.to_be_bytes());
        for (i, (pid, blp)) in self.pairs().enumerate() {
            let o = 12 + 4 * i;
            out[o..o + 2].copy_from_slice(&map(pid).to_be_bytes());
            out[o + 2..o + 4].copy_from_slice(&blp.to_be_bytes());
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_map() {
        let body = [0, 0, 0, 1, 0, 0, 0, 2, 0, 10, 0, 3, 0xff, 0xff, 0, 0];
        let n = Nack::parse(&body).unwrap();
        assert_eq!(n.pairs().collect::<Vec<_>>(), vec![(10, 3), (0xffff, 0)]);
        let mut out = [0u8; 32];
        let len = n
            .write_mapped(5, 6, |s| s.wrapping_add(2), &mut out)
            .unwrap();
        let back = Nack::parse(&out[4..len]).unwrap();
        assert_eq!((back.sender_ssrc, back.media_ssrc), (5, 6));
        assert_eq!(back.pairs().collect::<Vec<_>>(), vec![(12, 3), (1, 0)]);
        assert_eq!(Nack::parse(&body[..8]), Err(RtcpError::TooShort));
    }
}
