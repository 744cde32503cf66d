//! Full intra request (RFC 5104 §4.3.1).

use super::{check_room, u32_at, write_common_header, RtcpError, PT_PSFB};

pub const FMT: u8 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fir<'a> {
    pub sender_ssrc: u32,
    entries: &'a [u8],
}

impl<'a> Fir<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, RtcpError> {
        if body.len() < 8 || !(body.len() - 8).is_multiple_of(8) {
            return Err(RtcpError::TooShort);
        }
        Ok(Self {
            sender_ssrc: u32_at(body, 0),
            entries: &body[8..],
        })
    }

    /// The (media SSRC, command sequence number) pairs of the request.
    pub fn entries(&self) -> impl Iterator<Item = (u32, u8)> + 'a {
        self.entries.chunks_exact(8).map(|e| (u32_at(e, 0), e[4]))
    }

    /// Writes a FIR with one entry.
    pub fn write(
        sender_ssrc: u32,
        media_ssrc: u32,
        seq: u8,
        out: &mut [u8],
    ) -> Result<usize, RtcpError> {
        const LEN: usize = 20;
        check_room(out, LEN)?;
        write_common_header(out, FMT, PT_PSFB, LEN);
        out[4..8].copy_from_slice(&sender_ssrc.to_be_bytes());
        out[8..12].fill(0);
        out[12..16].copy_from_slice(&media_ssrc.to_be_bytes());
        out[16] = seq;
        out[17..20].fill(0);
        Ok(LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut buf = [0u8; 20];
        Fir::write(3, 0xabc, 7, &mut buf).unwrap();
        let f = Fir::parse(&buf[4..]).unwrap();
        assert_eq!(f.sender_ssrc, 3);
        assert_eq!(f.entries().collect::<Vec<_>>(), vec![(0xabc, 7)]);
        assert_eq!(Fir::parse(&buf[4..15]), Err(RtcpError::TooShort));
    }
}
