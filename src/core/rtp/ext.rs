//! RTP header extensions (RFC 8285): reading one- and two-byte forms, and the mapping of negotiated
//! ids to the extensions volna understands.

/// Header extensions volna reads or forwards. Anything else is dropped on forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExtKind {
    Mid = 0,
    AudioLevel,
    AbsSendTime,
    TransmissionOffset,
    VideoOrientation,
    PlayoutDelay,
    RtpStreamId,
    RepairedRtpStreamId,
    /// Transport-wide sequence number (draft-holmer-rmcat-transport-wide-cc-extensions-01): volna
    /// numbers what it sends to each viewer and reads the viewer's feedback on it.
    TransportWideCc,
    /// AV1 dependency descriptor (AV1 RTP specification, appendix A): read from publishers for
    /// the layers of SVC frames, and passed on to viewers of single-stream AV1 (only they
    /// negotiate it: across simulcast switches its frame numbers would not go on).
    DependencyDescriptor,
}

impl ExtKind {
    pub const ALL: [ExtKind; 10] = [
        ExtKind::Mid,
        ExtKind::AudioLevel,
        ExtKind::AbsSendTime,
        ExtKind::TransmissionOffset,
        ExtKind::VideoOrientation,
        ExtKind::PlayoutDelay,
        ExtKind::RtpStreamId,
        ExtKind::RepairedRtpStreamId,
        ExtKind::TransportWideCc,
        ExtKind::DependencyDescriptor,
    ];

    pub fn uri(self) -> &'static str {
        match self {
            ExtKind::Mid => "urn:ietf:params:rtp-hdrext:sdes:mid",
            ExtKind::AudioLevel => "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            ExtKind::AbsSendTime => "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
            ExtKind::TransmissionOffset => "urn:ietf:params:rtp-hdrext:toffset",
            ExtKind::VideoOrientation => "urn:3gpp:video-orientation",
            ExtKind::PlayoutDelay => "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay",
            ExtKind::RtpStreamId => "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
            ExtKind::RepairedRtpStreamId => {
                "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
            }
            ExtKind::TransportWideCc => {
                "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
            }
            ExtKind::DependencyDescriptor => {
                "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension"
            }
        }
    }

    pub fn from_uri(uri: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.uri() == uri)
    }

    /// Whether a forwarded packet carries the publisher's value of this extension to viewers.
    /// MID and RIDs name the publisher's own m-line and layer, and the transport-wide sequence
    /// number belongs to the publisher's own transport, so they are never passed on.
    pub fn forwarded(self) -> bool {
        !matches!(
            self,
            ExtKind::Mid
                | ExtKind::RtpStreamId
                | ExtKind::RepairedRtpStreamId
                | ExtKind::TransportWideCc
        )
    }
}

/// The negotiated ids of one m-line: id → kind and kind → id, both fixed-size tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtMap {
    by_id: [Option<ExtKind>; 256],
    by_kind: [u8; ExtKind::ALL.len()],
}

impl Default for ExtMap {
    fn default() -> Self {
        Self {
            by_id: [None; 256],
            by_kind: [0; ExtKind::ALL.len()],
        }
    }
}

impl ExtMap {
    /// A map of the given `(id, kind)` pairs.
    pub fn from_pairs(pairs: &[(u8, ExtKind)]) -> Self {
        let mut m = Self::default();
        for (id, kind) in pairs {
            m.insert(*id, *kind);
        }
        m
    }

    pub fn insert(&mut self, id: u8, kind: ExtKind) {
        if id == 0 {
            return;
        }
        self.by_id[id as usize] = Some(kind);
        self.by_kind[kind as usize] = id;
    }

    pub fn kind(&self, id: u8) -> Option<ExtKind> {
        self.by_id[id as usize]
    }

    pub fn id(&self, kind: ExtKind) -> Option<u8> {
        match self.by_kind[kind as usize] {
            0 => None,
            id => Some(id),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (u8, ExtKind)> + '_ {
        ExtKind::ALL
            .into_iter()
            .filter_map(|k| self.id(k).map(|id| (id, k)))
    }
}

/// Iterates `(id, data)` elements of an extension block, stopping quietly at malformed input.
pub struct ExtIter<'a> {
    two_byte: bool,
    valid: bool,
    buf: &'a [u8],
}

impl<'a> ExtIter<'a> {
    pub fn new(profile: u16, buf: &'a [u8]) -> Self {
        let two_byte = profile & 0xfff0 == 0x1000;
        Self {
            two_byte,
            valid: profile == 0xbede || two_byte,
            buf,
        }
    }
}

impl<'a> Iterator for ExtIter<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if !self.valid {
            return None;
        }
        loop {
            let (&first, rest) = self.buf.split_first()?;
            if first == 0 {
                // Padding between elements.
                self.buf = rest;
                continue;
            }
            let (id, len, hdr) = if self.two_byte {
                let (&len, _) = rest.split_first()?;
                (first, len as usize, 2)
            } else {
                let id = first >> 4;
                if id == 15 {
                    // RFC 8285 §4.2: id 15 ends processing of the block.
                    return None;
                }
                (id, (first & 0x0f) as usize + 1, 1)
            };
            if self.buf.len() < hdr + len {
                self.buf = &[];
                return None;
            }
            let data = &self.buf[hdr..hdr + len];
            self.buf = &self.buf[hdr + len..];
            return Some((id, data));
        }
    }
}

/// Writes extension elements into `out` as one block with its 4-byte header, padded to 32 bits.
/// Uses the one-byte form when every element fits it, else the two-byte form. Returns bytes written.
pub struct ExtWriter<'a> {
    out: &'a mut [u8],
    len: usize,
    two_byte: bool,
}

impl<'a> ExtWriter<'a> {
    pub fn new(out: &'a mut [u8], two_byte: bool) -> Self {
        Self {
            out,
            len: 4,
            two_byte,
        }
    }

    /// Bytes written so far, the block's header included.
    pub fn written(&self) -> usize {
        self.len
    }

    /// Whether an element can use the one-byte form.
    pub fn fits_one_byte(id: u8, len: usize) -> bool {
        (1..=14).contains(&id) && (1..=16).contains(&len)
    }

    /// Appends one element; returns false (and writes nothing) when `out` has no room.
    pub fn push(&mut self, id: u8, data: &[u8]) -> bool {
        let hdr = if self.two_byte { 2 } else { 1 };
        if self.len + hdr + data.len() + 3 > self.out.len() || data.is_empty() && !self.two_byte {
            return false;
        }
        if self.two_byte {
            self.out[self.len] = id;
            self.out[self.len + 1] = data.len() as u8;
        } else {
            self.out[self.len] = (id << 4) | (data.len() as u8 - 1);
        }
        self.len += hdr;
        self.out[self.len..self.len + data.len()].copy_from_slice(data);
        self.len += data.len();
        true
    }

    /// Closes the block: writes its header and padding. Returns 0 when no element was pushed.
    pub fn finish(self) -> usize {
        if self.len == 4 {
            return 0;
        }
        let padded = self.len.div_ceil(4) * 4;
        self.out[self.len..padded].fill(0);
        let profile: u16 = if self.two_byte { 0x1000 } else { 0xbede };
        self.out[0..2].copy_from_slice(&profile.to_be_bytes());
        self.out[2..4].copy_from_slice(&(((padded - 4) / 4) as u16).to_be_bytes());
        padded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterates_one_byte_form() {
        // id 1 len 1 [0xaa], padding, id 3 len 3 [1,2,3], id 15 stops.
        let block = [0x10, 0xaa, 0x00, 0x32, 1, 2, 3, 0xf0, 9, 9];
        let got: Vec<_> = ExtIter::new(0xbede, &block).collect();
        assert_eq!(got, vec![(1, &[0xaa][..]), (3, &[1, 2, 3][..])]);
    }

    #[test]
    fn iterates_two_byte_form_and_stops_on_overrun() {
        let block = [20, 2, 7, 8, 0, 21, 0, 22, 9, 1];
        let got: Vec<_> = ExtIter::new(0x1000, &block).collect();
        assert_eq!(got, vec![(20, &[7, 8][..]), (21, &[][..])]);
    }

    #[test]
    fn unknown_profile_yields_nothing() {
        assert_eq!(ExtIter::new(0x1234, &[0x10, 1]).count(), 0);
    }

    #[test]
    fn writer_round_trips() {
        for two_byte in [false, true] {
            let mut buf = [0u8; 64];
            let mut w = ExtWriter::new(&mut buf, two_byte);
            assert!(w.push(1, b"0"));
            assert!(w.push(3, &[0x80, 1, 2]));
            let n = w.finish();
            assert_eq!(n % 4, 0);
            let profile = u16::from_be_bytes([buf[0], buf[1]]);
            let got: Vec<_> = ExtIter::new(profile, &buf[4..n]).collect();
            assert_eq!(
                got,
                vec![(1, &b"0"[..]), (3, &[0x80, 1, 2][..])],
                "two_byte={two_byte}"
            );
        }
    }

    #[test]
    fn writer_without_elements_writes_nothing() {
        let mut buf = [0u8; 8];
        assert_eq!(ExtWriter::new(&mut buf, false).finish(), 0);
    }

    #[test]
    fn map_lookups() {
        let mut m = ExtMap::default();
        m.insert(4, ExtKind::Mid);
        m.insert(1, ExtKind::AudioLevel);
        assert_eq!(m.kind(4), Some(ExtKind::Mid));
        assert_eq!(m.id(ExtKind::AudioLevel), Some(1));
        assert_eq!(m.id(ExtKind::AbsSendTime), None);
        assert_eq!(
            ExtKind::from_uri("urn:3gpp:video-orientation"),
            Some(ExtKind::VideoOrientation)
        );
        assert_eq!(m.iter().count(), 2);
    }
}
