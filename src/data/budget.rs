//! How much array data one load may read, and checked byte sizes of declared shapes.

/// The most array data (headers included, and a sample's converted copy) one `read_arrays` or
/// `load_dataset` call inflates, reads or converts: far above any sample an audit needs, well below
/// what would take a machine down.
pub const MAX_DATA_BYTES: u64 = 1 << 30;

/// Bytes still allowed to be read in one load.
pub struct Budget {
    limit: u64,
    used: u64,
}

/// Reading would pass the budget: `needed` bytes in all, over `limit`.
#[derive(Debug)]
pub struct OverBudget {
    pub needed: u64,
    pub limit: u64,
}

impl Budget {
    pub fn new(limit: u64) -> Self {
        Budget { limit, used: 0 }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether `bytes` more would stay within the budget, without accounting for them.
    pub fn check(&self, bytes: u64) -> Result<(), OverBudget> {
        let needed = self.used.saturating_add(bytes);
        if needed > self.limit {
            return Err(OverBudget {
                needed,
                limit: self.limit,
            });
        }
        Ok(())
    }

    /// Account for `bytes` about to be read, before reading them.
    pub fn charge(&mut self, bytes: u64) -> Result<(), OverBudget> {
        let needed = self.used.saturating_add(bytes);
        if needed > self.limit {
            return Err(OverBudget {
                needed,
                limit: self.limit,
            });
        }
        self.used = needed;
        Ok(())
    }
}

/// Why a shape has no byte size libtorch can index ([`byte_size`]).
#[derive(Debug, thiserror::Error)]
pub enum ShapeSizeError {
    #[error("shape {0:?} has a negative dimension")]
    NegativeDimension(Vec<i64>),
    #[error("shape {0:?} is too large (its byte size overflows 64 bits)")]
    TooLarge(Vec<i64>),
}

/// The byte size of `shape` with `elem`-byte elements, refusing negative dimensions and sizes
/// that do not fit 63 bits (what libtorch can index).
pub fn byte_size(shape: &[i64], elem: u64) -> Result<u64, ShapeSizeError> {
    if shape.iter().any(|&d| d < 0) {
        return Err(ShapeSizeError::NegativeDimension(shape.to_vec()));
    }
    shape
        .iter()
        .try_fold(elem, |acc, &d| acc.checked_mul(d as u64))
        .filter(|&b| b <= i64::MAX as u64)
        .ok_or_else(|| ShapeSizeError::TooLarge(shape.to_vec()))
}

/// `2 GiB`, `1.5 MiB`, `512 bytes`.
pub fn bytes_text(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size {
            let value = bytes as f64 / size as f64;
            let text = format!("{value:.1}");
            return format!("{} {unit}", text.trim_end_matches(".0"));
        }
    }
    format!("{bytes} bytes")
}
