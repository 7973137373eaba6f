//! Chunking parameters (min/avg/max chunk size) and the FastCDC 2020 cut they drive.

use fastcdc::v2020;

/// Why chunking parameters were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamsError {
    /// A size is outside the range FastCDC 2020 supports.
    #[error("{which} chunk size {value} is outside {lo}..={hi}")]
    OutOfRange {
        /// Which size: "min", "avg" or "max".
        which: &'static str,
        /// The value given.
        value: u32,
        /// Smallest allowed value.
        lo: u32,
        /// Largest allowed value.
        hi: u32,
    },
    /// A size is odd: FastCDC 2020 tests cut points in pairs and would shift them.
    #[error("{which} chunk size {value} is odd")]
    Odd {
        /// Which size: "min", "avg" or "max".
        which: &'static str,
        /// The value given.
        value: u32,
    },
    /// The sizes are not ordered min <= avg <= max.
    #[error("chunk sizes must satisfy min <= avg <= max, got {min}/{avg}/{max}")]
    Unordered {
        /// Minimum size given.
        min: u32,
        /// Average size given.
        avg: u32,
        /// Maximum size given.
        max: u32,
    },
}

/// Largest chunk any parameters can produce; decoders refuse longer chunks.
pub const MAX_CHUNK_LEN: u32 = v2020::MAXIMUM_MAX as u32;

/// FastCDC 2020 chunk sizes, validated. Fixed per volume: changing them moves every boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "RawParams", into = "RawParams")]
pub struct ChunkerParams {
    min: u32,
    avg: u32,
    max: u32,
}

/// Serde form of [`ChunkerParams`]; deserializing goes through validation.
#[derive(serde::Serialize, serde::Deserialize)]
struct RawParams {
    min: u32,
    avg: u32,
    max: u32,
}

impl TryFrom<RawParams> for ChunkerParams {
    type Error = ParamsError;

    fn try_from(raw: RawParams) -> Result<Self, Self::Error> {
        Self::new(raw.min, raw.avg, raw.max)
    }
}

impl From<ChunkerParams> for RawParams {
    fn from(p: ChunkerParams) -> Self {
        Self {
            min: p.min,
            avg: p.avg,
            max: p.max,
        }
    }
}

impl Default for ChunkerParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

fn check(which: &'static str, value: u32, lo: usize, hi: usize) -> Result<(), ParamsError> {
    // The fastcdc bounds all fit in u32 (largest is 16 MiB).
    let (lo, hi) = (lo as u32, hi as u32);
    if !(lo..=hi).contains(&value) {
        return Err(ParamsError::OutOfRange {
            which,
            value,
            lo,
            hi,
        });
    }
    if !value.is_multiple_of(2) {
        return Err(ParamsError::Odd { which, value });
    }
    Ok(())
}

impl ChunkerParams {
    /// 4/16/64 KiB: small chunks keep small edits cheap (docs/ARCHITECTURE.md, "Data model").
    pub const DEFAULT: Self = Self {
        min: 4 * 1024,
        avg: 16 * 1024,
        max: 64 * 1024,
    };

    /// Validated parameters: each size in FastCDC 2020's range, even, and min <= avg <= max.
    pub fn new(min: u32, avg: u32, max: u32) -> Result<Self, ParamsError> {
        check("min", min, v2020::MINIMUM_MIN, v2020::MINIMUM_MAX)?;
        check("avg", avg, v2020::AVERAGE_MIN, v2020::AVERAGE_MAX)?;
        check("max", max, v2020::MAXIMUM_MIN, v2020::MAXIMUM_MAX)?;
        if !(min <= avg && avg <= max) {
            return Err(ParamsError::Unordered { min, avg, max });
        }
        Ok(Self { min, avg, max })
    }

    /// Smallest chunk (except a file's last).
    pub fn min(&self) -> u32 {
        self.min
    }

    /// Target average chunk size.
    pub fn avg(&self) -> u32 {
        self.avg
    }

    /// Largest chunk.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// The cutter for these parameters (normalization level 1, unseeded gear table).
    pub(crate) fn cutter(&self) -> Cutter {
        let (mask_s, mask_l) = v2020::select_masks(self.avg as usize, v2020::Normalization::Level1);
        Cutter {
            min: self.min as usize,
            avg: self.avg as usize,
            max: self.max as usize,
            mask_s,
            mask_l,
        }
    }
}

/// FastCDC 2020 with precomputed masks: finds where the chunk starting a window ends.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cutter {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
}

impl Cutter {
    /// Largest chunk, as a window size.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Length of the chunk starting at `window[0]`.
    ///
    /// `window` must hold the next `min(max, bytes left in the file)` bytes: exactly what
    /// `fastcdc::v2020::FastCDC` sees at that point, so the cut is the same as its.
    pub(crate) fn cut(&self, window: &[u8]) -> usize {
        debug_assert!(window.len() <= self.max);
        let (_hash, len) = v2020::cut(
            window,
            self.min,
            self.avg,
            self.max,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_4_16_64_kib_and_valid() {
        let d = ChunkerParams::default();
        assert_eq!((d.min(), d.avg(), d.max()), (4096, 16384, 65536));
        assert_eq!(ChunkerParams::new(4096, 16384, 65536), Ok(d));
    }

    #[test]
    fn bad_params_are_refused_with_a_typed_error() {
        assert!(matches!(
            ChunkerParams::new(32, 16384, 65536),
            Err(ParamsError::OutOfRange { which: "min", .. })
        ));
        assert!(matches!(
            ChunkerParams::new(4096, 16384, 32 << 20),
            Err(ParamsError::OutOfRange { which: "max", .. })
        ));
        assert!(matches!(
            ChunkerParams::new(4097, 16384, 65536),
            Err(ParamsError::Odd { which: "min", .. })
        ));
        assert!(matches!(
            ChunkerParams::new(8192, 4096, 65536),
            Err(ParamsError::Unordered { .. })
        ));
    }

    #[test]
    fn serde_validates() {
        let ok: ChunkerParams = serde_json::from_str(r#"{"min":64,"avg":256,"max":1024}"#).unwrap();
        assert_eq!(ok, ChunkerParams::new(64, 256, 1024).unwrap());
        assert!(
            serde_json::from_str::<ChunkerParams>(r#"{"min":65,"avg":256,"max":1024}"#).is_err()
        );
    }

    #[test]
    fn cut_matches_fastcdc_iterator() {
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        let p = ChunkerParams::new(256, 1024, 4096).unwrap();
        let cutter = p.cutter();
        let mut ours = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            let end = (pos + cutter.max()).min(data.len());
            let len = cutter.cut(&data[pos..end]);
            ours.push((pos, len));
            pos += len;
        }
        let theirs: Vec<_> = v2020::FastCDC::new(&data, 256, 1024, 4096)
            .map(|c| (c.offset, c.length))
            .collect();
        assert!(theirs.len() > 50);
        assert_eq!(ours, theirs);
    }
}
