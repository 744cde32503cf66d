//! Sender report (RFC 3550 §6.4.1). Report blocks inside an SR are not read: volna takes loss
//! figures from receiver reports.

use super::{check_room, u32_at, write_common_header, RtcpError, PT_SR};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderReport {
    pub ssrc: u32,
    /// NTP timestamp, 32.32 fixed point.
    pub ntp: u64,
    pub rtp_timestamp: u32,
    pub packets: u32,
    pub octets: u32,
}

impl SenderReport {
    pub const LEN: usize = 28;

    pub fn parse(body: &[u8]) -> Result<Self, RtcpError> {
        if body.len() < 24 {
            return Err(RtcpError::TooShort);
        }
        Ok(Self {
            ssrc: u32_at(body, 0),
            ntp: (u64::from(u32_at(body, 4)) << 32) | u64::from(u32_at(body, 8)),
            rtp_timestamp: u32_at(body, 12),
            packets: u32_at(body, 16),
            octets: u32_at(body, 20),
        })
    }

    /// Writes an SR without report blocks.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, RtcpError> {
        check_room(out, Self::LEN)?;
        write_common_header(out, 0, PT_SR, Self::LEN);
        out[4..8].copy_from_slice(&self.ssrc.to_be_bytes());
        out[8..16].copy_from_slice(&self.ntp.to_be_bytes());
        out[16..20].copy_from_slice(&self.rtp_timestamp.to_be_bytes());
        out[20..24].copy_from_slice(&self.packets.to_be_bytes());
        out[24..28].copy_from_slice(&self.octets.to_be_bytes());
        Ok(Self::LEN)
    }

    /// The middle 32 bits of the NTP time, as echoed in LSR (RFC 3550 §6.4.1).
    pub fn ntp_middle(&self) -> u32 {
        (self.ntp >> 16) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let sr = SenderReport {
            ssrc: 1,
            ntp: 0x0102_0304_0506_0708,
            rtp_timestamp: 3,
            packets: 4,
            octets: 5,
        };
        let mut buf = [0u8; 28];
        assert_eq!(sr.write(&mut buf), Ok(28));
        assert_eq!(SenderReport::parse(&buf[4..]), Ok(sr));
        assert_eq!(sr.ntp_middle(), 0x0304_0506);
        assert_eq!(sr.write(&mut [0u8; 27]), Err(RtcpError::BufferTooSmall));
    }
}
