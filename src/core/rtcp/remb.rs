//! Receiver estimated maximum bitrate (draft-alvestrand-rmcat-remb): the cap volna asks publishers
//! to respect.

use super::{check_room, u32_at, write_common_header, RtcpError, PT_PSFB};

pub const FMT: u8 = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remb {
    pub sender_ssrc: u32,
    pub bitrate_bps: u64,
    /// The first SSRC the estimate applies to (volna writes one).
    pub ssrc: u32,
}

impl Remb {
    pub const LEN: usize = 24;

    pub fn parse(body: &[u8]) -> Result<Self, RtcpError> {
        if body.len() < 16 || &body[8..12] != b"REMB" {
            return Err(RtcpError::TooShort);
        }
        let n = body[12] as usize;
        if body.len() < 16 + 4 * n {
            return Err(RtcpError::TooShort);
        }
        let exp = body[13] >> 2;
        let mantissa =
            (u64::from(body[13] & 0x03) << 16) | (u64::from(body[14]) << 8) | u64::from(body[15]);
        Ok(Self {
            sender_ssrc: u32_at(body, 0),
            bitrate_bps: mantissa << exp,
            ssrc: if n > 0 { u32_at(body, 16) } else { 0 },
        })
    }

    pub fn write(&self, out: &mut [u8]) -> Result<usize, RtcpError> {
        check_room(out, Self::LEN)?;
        write_common_header(out, FMT, PT_PSFB, Self::LEN);
        out[4..8].copy_from_slice(&self.sender_ssrc.to_be_bytes());
        out[8..12].fill(0);
        out[12..16].copy_from_slice(b"REMB");
        let mut exp = 0u8;
        let mut mantissa = self.bitrate_bps;
        while mantissa > 0x3_ffff {
            mantissa >>= 1;
            exp += 1;
        }
        out[16] = 1;
        out[17] = (exp << 2) | ((mantissa >> 16) as u8 & 0x03);
        out[18] = (mantissa >> 8) as u8;
        out[19] = mantissa as u8;
        out[20..24].copy_from_slice(&self.ssrc.to_be_bytes());
        Ok(Self::LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_table() {
        for bps in [0u64, 1000, 300_000, 2_500_000, 1 << 40] {
            let r = Remb {
                sender_ssrc: 1,
                bitrate_bps: bps,
                ssrc: 42,
            };
            let mut buf = [0u8; 24];
            r.write(&mut buf).unwrap();
            let back = Remb::parse(&buf[4..]).unwrap();
            assert_eq!(back.ssrc, 42);
            // The 18-bit mantissa loses low bits of large values; never rounds up.
            assert!(
                back.bitrate_bps <= bps && bps - back.bitrate_bps <= bps >> 17,
                "{bps}"
            );
        }
    }

    #[test]
    fn not_remb() {
        assert_eq!(Remb::parse(&[0u8; 16]), Err(RtcpError::TooShort));
    }
}
