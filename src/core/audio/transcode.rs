//! One publisher Opus track re-encoded at a low bitrate, for viewers whose estimate is below
//! what the original needs. Each packet is decoded and encoded again, mono, at `bitrate_bps`;
//! frame durations stay as they were, so the forwarded packet keeps its sequence number and
//! timestamp. Buffers are fixed when the transcoder is made: nothing is allocated per packet.

use opus::{Application, Bitrate, Channels, Decoder, Encoder};

/// Longest Opus frame (120 ms at 48 kHz), per channel.
const MAX_SAMPLES: usize = 5760;
/// Largest encoded packet kept (RFC 6716 allows 1275 bytes per frame).
const MAX_PACKET: usize = 1275;

#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error("opus: {0}")]
    Opus(#[from] opus::Error),
    #[error("frame of {0} samples cannot be encoded again")]
    FrameSize(usize),
}

pub struct OpusTranscoder {
    decoder: Decoder,
    encoder: Encoder,
    stereo: Vec<i16>,
    mono: Vec<i16>,
    out: Vec<u8>,
}

impl OpusTranscoder {
    /// Input at 48 kHz (any channel count: it is decoded as stereo and mixed down).
    pub fn new(bitrate_bps: i32) -> Result<Self, TranscodeError> {
        let decoder = Decoder::new(48_000, Channels::Stereo)?;
        let mut encoder = Encoder::new(48_000, Channels::Mono, Application::Voip)?;
        encoder.set_bitrate(Bitrate::Bits(bitrate_bps))?;
        // The links this serves lose packets: let the encoder protect itself in-band.
        encoder.set_inband_fec(true)?;
        encoder.set_packet_loss_perc(10)?;
        Ok(Self {
            decoder,
            encoder,
            stereo: vec![0; MAX_SAMPLES * 2],
            mono: vec![0; MAX_SAMPLES],
            out: vec![0; MAX_PACKET],
        })
    }

    /// Re-encodes one Opus packet; returns the new payload.
    pub fn transcode(&mut self, payload: &[u8]) -> Result<&[u8], TranscodeError> {
        let n = self.decoder.decode(payload, &mut self.stereo, false)?;
        // Opus encodes 2.5, 5, 10, 20, 40 or 60 ms frames.
        if ![120, 240, 480, 960, 1920, 2880].contains(&n) {
            return Err(TranscodeError::FrameSize(n));
        }
        for (m, lr) in self.mono[..n].iter_mut().zip(self.stereo.chunks_exact(2)) {
            *m = ((i32::from(lr[0]) + i32::from(lr[1])) / 2) as i16;
        }
        let len = self.encoder.encode(&self.mono[..n], &mut self.out)?;
        Ok(&self.out[..len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64 kbps stereo tone comes out at about the asked bitrate, as valid Opus that decodes
    /// to a tone again; junk is an error, not a panic.
    #[test]
    fn a_tone_survives_at_a_fifth_of_the_rate() {
        let mut enc = Encoder::new(48_000, Channels::Stereo, Application::Audio).unwrap();
        enc.set_bitrate(Bitrate::Bits(64_000)).unwrap();
        let mut t = OpusTranscoder::new(12_000).unwrap();
        let mut dec = Decoder::new(48_000, Channels::Mono).unwrap();
        let (mut bytes_in, mut bytes_out, mut energy) = (0usize, 0usize, 0f64);
        let mut pcm = vec![0i16; 1920];
        let mut pkt = vec![0u8; 1275];
        let mut back = vec![0i16; 960];
        for frame in 0..100 {
            for i in 0..960 {
                let s = ((frame * 960 + i) as f64 * 440.0 * std::f64::consts::TAU / 48_000.0).sin();
                pcm[2 * i] = (s * 8000.0) as i16;
                pcm[2 * i + 1] = (s * 8000.0) as i16;
            }
            let n = enc.encode(&pcm, &mut pkt).unwrap();
            bytes_in += n;
            let low = t.transcode(&pkt[..n]).unwrap();
            bytes_out += low.len();
            let m = dec.decode(low, &mut back, false).unwrap();
            assert_eq!(m, 960);
            if frame >= 50 {
                energy += back.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>();
            }
        }
        let kbps = |b: usize| b as f64 * 8.0 / 2.0 / 1000.0;
        assert!(kbps(bytes_in) > 50.0, "input {} kbps", kbps(bytes_in));
        assert!(kbps(bytes_out) < 16.0, "output {} kbps", kbps(bytes_out));
        let rms = (energy / (50.0 * 960.0)).sqrt();
        assert!(rms > 2000.0, "the tone is still there: rms {rms}");
        // A code-3 packet that claims more frames than it holds is refused, and the transcoder
        // goes on.
        assert!(t.transcode(&[0x03, 0xff, 0x00]).is_err());
        let n = enc.encode(&pcm, &mut pkt).unwrap();
        assert!(t.transcode(&pkt[..n]).is_ok());
    }
}
