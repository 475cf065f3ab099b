//! Sizes (`8G`, `512M`) and durations (`45m`, `1h30m`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

/// A size in bytes, written in recipes with a binary unit: `512M`, `8G`, `25GiB`, `1T`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ByteSize(u64);

const UNITS: [(char, u32); 4] = [('T', 40), ('G', 30), ('M', 20), ('K', 10)];

impl ByteSize {
    /// From a number of bytes.
    pub const fn bytes(n: u64) -> ByteSize {
        ByteSize(n)
    }
    /// From a number of MiB.
    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n << 20)
    }
    /// From a number of GiB.
    pub const fn gib(n: u64) -> ByteSize {
        ByteSize(n << 30)
    }
    /// The size in bytes.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

/// Why a size could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// No unit: ambiguous (QEMU reads bare numbers as MiB for memory, bytes for disks).
    #[error("size `{0}` has no unit")]
    NoUnit(String),
    /// Decimal units are not accepted.
    #[error("size `{0}` uses a decimal unit")]
    DecimalUnit(String),
    /// Not a number with a unit.
    #[error("`{0}` is not a size")]
    Malformed(String),
    /// Too big for 64 bits.
    #[error("size `{0}` is too large")]
    Overflow(String),
}

impl FromStr for ByteSize {
    type Err = SizeError;

    /// Accepts a whole number followed by `K`, `M`, `G`, `T` (binary, powers of 1024; `KiB`
    /// style and lower case also accepted) or `B` for bytes.
    fn from_str(s: &str) -> Result<Self, SizeError> {
        let text = s.trim();
        let digits_end = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(digits_end);
        if number.is_empty() {
            return Err(SizeError::Malformed(s.to_owned()));
        }
        let value: u64 = number
            .parse()
            .map_err(|_| SizeError::Overflow(s.to_owned()))?;
        let unit = unit.trim_start();
        if unit.is_empty() {
            return Err(SizeError::NoUnit(s.to_owned()));
        }
        if unit.eq_ignore_ascii_case("b") {
            return Ok(ByteSize(value));
        }
        let mut chars = unit.chars();
        let letter = chars.next().map(|c| c.to_ascii_uppercase());
        let rest = chars.as_str();
        let Some(&(_, shift)) = UNITS.iter().find(|(u, _)| Some(*u) == letter) else {
            return Err(SizeError::Malformed(s.to_owned()));
        };
        match rest {
            "" | "iB" | "ib" | "IB" => {}
            "B" | "b" => return Err(SizeError::DecimalUnit(s.to_owned())),
            _ => return Err(SizeError::Malformed(s.to_owned())),
        }
        value
            .checked_mul(1u64 << shift)
            .map(ByteSize)
            .ok_or_else(|| SizeError::Overflow(s.to_owned()))
    }
}

impl fmt::Display for ByteSize {
    /// The largest unit that divides the size exactly: `25G`, `1536M`, `100B`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, shift) in UNITS {
            let scale = 1u64 << shift;
            if self.0 != 0 && self.0.is_multiple_of(scale) {
                return write!(f, "{}{unit}", self.0 / scale);
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// Reads a duration like `45m`, `1h30m`, `90s` (humantime syntax).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s.trim())
}

/// Writes a duration the way recipes spell it (`45m`, `1h 30m`).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!("8G".parse(), Ok(ByteSize::gib(8)));
        assert_eq!("512M".parse(), Ok(ByteSize::mib(512)));
        assert_eq!("25GiB".parse(), Ok(ByteSize::gib(25)));
        assert_eq!("2k".parse(), Ok(ByteSize::bytes(2048)));
        assert_eq!("1T".parse(), Ok(ByteSize::gib(1024)));
        assert_eq!("100B".parse(), Ok(ByteSize::bytes(100)));
    }

    #[test]
    fn bad_sizes_say_why() {
        assert!(matches!("8".parse::<ByteSize>(), Err(SizeError::NoUnit(_))));
        assert!(matches!(
            "8GB".parse::<ByteSize>(),
            Err(SizeError::DecimalUnit(_))
        ));
        assert!(matches!(
            "eight".parse::<ByteSize>(),
            Err(SizeError::Malformed(_))
        ));
        assert!(matches!(
            "8X".parse::<ByteSize>(),
            Err(SizeError::Malformed(_))
        ));
        assert!(matches!(
            "1.5G".parse::<ByteSize>(),
            Err(SizeError::Malformed(_))
        ));
        assert!(matches!(
            "99999999999T".parse::<ByteSize>(),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(
            "".parse::<ByteSize>(),
            Err(SizeError::Malformed(_))
        ));
    }

    #[test]
    fn sizes_display_in_the_largest_exact_unit() {
        assert_eq!(ByteSize::gib(25).to_string(), "25G");
        assert_eq!(ByteSize::mib(1536).to_string(), "1536M");
        assert_eq!(ByteSize::bytes(100).to_string(), "100B");
        assert_eq!(ByteSize::bytes(0).to_string(), "0B");
    }

    #[test]
    fn durations_round_trip() {
        assert_eq!(parse_duration("45m").unwrap(), Duration::from_secs(2700));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("soon").is_err());
        assert_eq!(format_duration(Duration::from_secs(2700)), "45m");
    }
}
