//! The dependency descriptor RTP header extension (AV1 RTP specification, appendix A): the
//! spatial and temporal layer of each frame and where a receiver may switch between layers.
//! The template dependency structure comes with key frames; later descriptors name a template
//! of it. Read as far as forwarding needs: frame fdiffs and chains are skipped.

/// Limits of the format: template ids are 6 bits, decode target counts 5.
pub const MAX_TEMPLATES: usize = 64;
pub const MAX_DECODE_TARGETS: usize = 32;

/// Decode target indication: the frame is a switching point for the decode target.
pub const DTI_SWITCH: u8 = 2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DdError {
    #[error("dependency descriptor cut short")]
    Truncated,
    #[error("no template dependency structure received yet")]
    NoStructure,
    #[error("template {0} not in the structure")]
    UnknownTemplate(u8),
    #[error("more than {MAX_TEMPLATES} templates")]
    TooManyTemplates,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Template {
    pub spatial: u8,
    pub temporal: u8,
    /// Decode target indications, two bits per decode target (target 0 lowest).
    pub dtis: u64,
}

/// A template dependency structure, as a key frame's descriptor carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Structure {
    pub template_id_offset: u8,
    pub decode_targets: u8,
    pub template_count: u8,
    pub templates: [Template; MAX_TEMPLATES],
    /// The highest (spatial, temporal) layer each decode target uses.
    pub target_layers: [(u8, u8); MAX_DECODE_TARGETS],
}

impl Default for Structure {
    fn default() -> Self {
        Structure {
            template_id_offset: 0,
            decode_targets: 0,
            template_count: 0,
            templates: [Template::default(); MAX_TEMPLATES],
            target_layers: [(0, 0); MAX_DECODE_TARGETS],
        }
    }
}

/// What one descriptor says of its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub start: bool,
    pub end: bool,
    pub frame_number: u16,
    pub spatial: u8,
    pub temporal: u8,
    /// Decode target indications, two bits per decode target.
    pub dtis: u64,
    /// The descriptor carried a (new) template dependency structure: a key frame.
    pub new_structure: bool,
}

impl Frame {
    pub fn dti(&self, target: usize) -> u8 {
        ((self.dtis >> (2 * target)) & 3) as u8
    }
}

/// MSB-first bit reader.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn f(&mut self, n: u32) -> Result<u32, DdError> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self.data.get(self.pos / 8).ok_or(DdError::Truncated)?;
            let bit = (byte >> (7 - self.pos % 8)) & 1;
            v = (v << 1) | u32::from(bit);
            self.pos += 1;
        }
        Ok(v)
    }

    fn flag(&mut self) -> Result<bool, DdError> {
        Ok(self.f(1)? == 1)
    }

    /// Non-symmetric unsigned value below `n`.
    fn ns(&mut self, n: u32) -> Result<u32, DdError> {
        if n <= 1 {
            return Ok(0);
        }
        let w = 32 - n.leading_zeros();
        let m = (1u32 << w) - n;
        let v = self.f(w - 1)?;
        if v < m {
            return Ok(v);
        }
        Ok((v << 1) - m + self.f(1)?)
    }
}

/// Reads one descriptor. A structure it carries replaces `structure` (and `has_structure` is
/// set); otherwise the frame is read against the one kept.
pub fn parse(
    data: &[u8],
    structure: &mut Structure,
    has_structure: &mut bool,
) -> Result<Frame, DdError> {
    let mut b = Bits { data, pos: 0 };
    let start = b.flag()?;
    let end = b.flag()?;
    let template_id = b.f(6)? as u8;
    let frame_number = b.f(16)? as u16;
    let (mut new_structure, mut custom_dtis) = (false, false);
    if data.len() > 3 {
        let structure_present = b.flag()?;
        let active_targets_present = b.flag()?;
        custom_dtis = b.flag()?;
        let _custom_fdiffs = b.flag()?;
        let _custom_chains = b.flag()?;
        if structure_present {
            let mut s = Structure::default();
            read_structure(&mut b, &mut s)?;
            *structure = s;
            *has_structure = true;
            new_structure = true;
        }
        if active_targets_present {
            if !*has_structure {
                return Err(DdError::NoStructure);
            }
            // Which decode targets the sender still serves: not needed to forward.
            b.f(u32::from(structure.decode_targets))?;
        }
    }
    if !*has_structure {
        return Err(DdError::NoStructure);
    }
    let index = (usize::from(template_id) + MAX_TEMPLATES
        - usize::from(structure.template_id_offset))
        % MAX_TEMPLATES;
    if index >= usize::from(structure.template_count) {
        return Err(DdError::UnknownTemplate(template_id));
    }
    let t = structure.templates[index];
    let mut dtis = t.dtis;
    if custom_dtis {
        dtis = 0;
        for dt in 0..u32::from(structure.decode_targets) {
            dtis |= u64::from(b.f(2)?) << (2 * dt);
        }
    }
    Ok(Frame {
        start,
        end,
        frame_number,
        spatial: t.spatial,
        temporal: t.temporal,
        dtis,
        new_structure,
    })
}

fn read_structure(b: &mut Bits<'_>, s: &mut Structure) -> Result<(), DdError> {
    s.template_id_offset = b.f(6)? as u8;
    s.decode_targets = b.f(5)? as u8 + 1;
    let targets = usize::from(s.decode_targets);
    // Template layers: each template is in the layer of the one before, or the next temporal
    // layer up, or the next spatial layer (temporal 0), until the last.
    let (mut spatial, mut temporal, mut count) = (0u8, 0u8, 0usize);
    loop {
        let t = s
            .templates
            .get_mut(count)
            .ok_or(DdError::TooManyTemplates)?;
        t.spatial = spatial;
        t.temporal = temporal;
        count += 1;
        match b.f(2)? {
            1 => temporal += 1,
            2 => {
                temporal = 0;
                spatial += 1;
            }
            3 => break,
            _ => {}
        }
    }
    s.template_count = count as u8;
    for t in &mut s.templates[..count] {
        for dt in 0..targets {
            t.dtis |= u64::from(b.f(2)?) << (2 * dt);
        }
    }
    // Frame diffs per template: skipped.
    for _ in 0..count {
        while b.flag()? {
            b.f(4)?;
        }
    }
    let chains = b.ns(targets as u32 + 1)?;
    if chains > 0 {
        for _ in 0..targets {
            b.ns(chains)?;
        }
        for _ in 0..count * chains as usize {
            b.f(4)?;
        }
    }
    for dt in 0..targets {
        let mut layers = (0, 0);
        for t in s.templates[..count]
            .iter()
            .filter(|t| (t.dtis >> (2 * dt)) & 3 != 0)
        {
            layers = (layers.0.max(t.spatial), layers.1.max(t.temporal));
        }
        s.target_layers[dt] = layers;
    }
    if b.flag()? {
        // Render resolutions, one per spatial layer: not needed.
        for _ in 0..=spatial {
            b.f(32)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MSB-first bit writer for building descriptors.
    #[derive(Default)]
    struct W {
        bytes: Vec<u8>,
        bits: usize,
    }

    impl W {
        fn put(&mut self, n: u32, v: u32) -> &mut Self {
            for i in (0..n).rev() {
                if self.bits.is_multiple_of(8) {
                    self.bytes.push(0);
                }
                let bit = ((v >> i) & 1) as u8;
                *self.bytes.last_mut().unwrap() |= bit << (7 - self.bits % 8);
                self.bits += 1;
            }
            self
        }
    }

    /// L2T2 with a key template per spatial layer: templates (S0T0 key, S0T0, S0T1, S1T0,
    /// S1T1); decode targets S0T0, S0T1, S1T0, S1T1; one chain per spatial layer.
    fn with_structure(template_id: u32, resolutions: bool) -> Vec<u8> {
        let mut w = W::default();
        w.put(1, 1).put(1, 0).put(6, template_id).put(16, 0x1234);
        // structure present; active targets, custom dtis, fdiffs, chains absent
        w.put(1, 1).put(1, 0).put(1, 0).put(1, 0).put(1, 0);
        w.put(6, 10).put(5, 3);
        // layers: S0T0, S0T0 (same), S0T1 (next temporal), S1T0 (next spatial), S1T1, end
        for idc in [0, 1, 2, 1, 3] {
            w.put(2, idc);
        }
        // dtis per template, decode targets 0..4 (S: switch 2, R: required 3, D: 1, -: 0)
        let dtis: [[u32; 4]; 5] = [
            [2, 2, 2, 2],
            [3, 3, 3, 3],
            [0, 1, 0, 3],
            [0, 0, 2, 2],
            [0, 0, 0, 1],
        ];
        for t in dtis {
            for d in t {
                w.put(2, d);
            }
        }
        // fdiffs: none, 1, 1, (1, 3), (1)
        let fdiffs: [&[u32]; 5] = [&[], &[1], &[1], &[1, 3], &[1]];
        for f in fdiffs {
            for d in f {
                w.put(1, 1).put(4, d - 1);
            }
            w.put(1, 0);
        }
        // chain_cnt = 2 as ns(5): w = 3, m = 3, 2 < 3 → two bits "10"
        w.put(2, 2);
        // decode_target_protected_by: ns(2) each: 0, 0, 1, 1 (one bit)
        for c in [0, 0, 1, 1] {
            w.put(1, c);
        }
        // template chain fdiffs: 2 per template
        for _ in 0..10 {
            w.put(4, 1);
        }
        w.put(1, u32::from(resolutions));
        if resolutions {
            for (wd, h) in [(319, 179), (639, 359)] {
                w.put(16, wd).put(16, h);
            }
        }
        w.bytes
    }

    fn plain(template_id: u32, start: bool, end: bool) -> Vec<u8> {
        let mut w = W::default();
        w.put(1, u32::from(start))
            .put(1, u32::from(end))
            .put(6, template_id)
            .put(16, 7);
        w.bytes
    }

    #[test]
    fn structure_then_frames() {
        let mut s = Structure::default();
        let mut has = false;
        assert_eq!(
            parse(&plain(10, true, true), &mut s, &mut has),
            Err(DdError::NoStructure)
        );
        for resolutions in [false, true] {
            let f = parse(&with_structure(10, resolutions), &mut s, &mut has).unwrap();
            assert!(has && f.new_structure && f.start && !f.end);
            assert_eq!((f.frame_number, f.spatial, f.temporal), (0x1234, 0, 0));
            assert_eq!((0..4).map(|d| f.dti(d)).collect::<Vec<_>>(), [2, 2, 2, 2]);
            assert_eq!(s.template_count, 5);
            assert_eq!(s.decode_targets, 4);
            assert_eq!(&s.target_layers[..4], &[(0, 0), (0, 1), (1, 0), (1, 1)]);
        }
        // (template id, expected (spatial, temporal, dti of S1T1)); ids count from offset 10.
        let cases = [
            (11, Ok((0, 0, 3))),
            (12, Ok((0, 1, 3))),
            (13, Ok((1, 0, 2))),
            (14, Ok((1, 1, 1))),
            (15, Err(DdError::UnknownTemplate(15))),
            (9, Err(DdError::UnknownTemplate(9))),
        ];
        for (id, want) in cases {
            let got = parse(&plain(id, true, false), &mut s, &mut has)
                .map(|f| (f.spatial, f.temporal, f.dti(3)));
            assert_eq!(got, want, "template {id}");
        }
    }

    #[test]
    fn custom_dtis_and_cut_short() {
        let mut s = Structure::default();
        let mut has = false;
        parse(&with_structure(10, false), &mut s, &mut has).unwrap();
        // Extended fields: custom dtis only, then four indications.
        let mut w = W::default();
        w.put(1, 1).put(1, 1).put(6, 12).put(16, 9);
        w.put(1, 0).put(1, 0).put(1, 1).put(1, 0).put(1, 0);
        for d in [0, 2, 0, 2] {
            w.put(2, d);
        }
        let f = parse(&w.bytes, &mut s, &mut has).unwrap();
        assert_eq!((f.spatial, f.temporal, f.dti(1), f.dti(3)), (0, 1, 2, 2));
        let whole = with_structure(10, true);
        for len in [0, 1, 2, 5, whole.len() - 1] {
            let mut s2 = Structure::default();
            let mut has2 = false;
            assert_eq!(
                parse(&whole[..len], &mut s2, &mut has2),
                Err(DdError::Truncated),
                "{len} bytes"
            );
        }
    }
}
