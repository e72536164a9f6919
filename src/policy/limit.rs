//! Budgets: the `limit` label (`egressd.limit=conn:60/minute,bytes:50MB/hour`).
//!
//! ```text
//! list    = budget *( "," budget )             ; whitespace around tokens is trimmed
//! budget  = "conn:" count "/" period           ; new outbound flows (not DNS, port 53)
//!         / "bytes:" size "/" period           ; bytes leaving the namespace (not loopback)
//! count   = 1-1000000
//! size    = digits [ unit ]                     ; 256kB to 4GiB
//! unit    = "B" / "kB" / "KB" / "MB" / "GB"      ; powers of 1000
//!         / "KiB" / "MiB" / "GiB"               ; powers of 1024
//! period  = "second" / "minute" / "hour" / "day"
//! ```
//!
//! Each kind may appear once. The kernel enforces both as token buckets (see docs/rules.md):
//! a budget of N per period may be spent at once, and refills at N per period.

use std::fmt;

use super::rule::split_tokens;

/// Most new flows a `conn` budget may allow per period.
pub const MAX_CONN: u32 = 1_000_000;
/// Smallest `bytes` budget: the kernel's token bucket must hold at least two of the largest
/// packets the output hook sees (64 KiB GSO segments), or a large write could never pass.
pub const MIN_BYTES: u64 = 256_000;
/// Largest `bytes` budget: the kernel takes the burst as a 32-bit number of bytes (and
/// computes the bucket size as nanoseconds times bytes in 64 bits, which overflows beyond
/// about 18 GB).
pub const MAX_BYTES: u64 = 4 << 30;

/// The time a budget refills over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    Second,
    Minute,
    Hour,
    Day,
}

impl Period {
    pub const ALL: [Period; 4] = [Period::Second, Period::Minute, Period::Hour, Period::Day];

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Second => "second",
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
        }
    }

    pub fn seconds(self) -> u64 {
        match self {
            Period::Second => 1,
            Period::Minute => 60,
            Period::Hour => 3600,
            Period::Day => 86_400,
        }
    }
}

/// At most `count` new flows per `per` (burst `count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnBudget {
    pub count: u32,
    pub per: Period,
}

/// At most `bytes` bytes per `per` (burst `bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ByteBudget {
    pub bytes: u64,
    pub per: Period,
}

impl ByteBudget {
    /// The kernel's form: a rate in bytes per second and a burst in bytes, so that the bucket
    /// holds exactly `bytes` (the kernel's byte bucket holds rate + burst) and refills at
    /// `bytes / period` (rounded down, at least 1 byte per second).
    pub fn per_second(&self) -> (u64, u32) {
        let rate = (self.bytes / self.per.seconds()).max(1);
        // At most MAX_BYTES - 1 = u32::MAX for a valid budget.
        let burst = u32::try_from(self.bytes.saturating_sub(rate)).unwrap_or(u32::MAX);
        (rate, burst)
    }
}

/// The budgets of one container. Empty (the default): no budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Limits {
    pub conn: Option<ConnBudget>,
    pub bytes: Option<ByteBudget>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.conn.is_none() && self.bytes.is_none()
    }
}

/// Why a budget token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("empty budget (two commas in a row, or a leading or trailing comma)")]
    Empty,
    #[error("expected KIND:AMOUNT/PERIOD, as in conn:60/minute or bytes:50MB/hour")]
    Shape,
    #[error("unknown budget kind \"{0}\"; use conn or bytes")]
    Kind(String),
    #[error("a {0} budget is given twice")]
    Duplicate(&'static str),
    #[error("unknown period \"{0}\"; use second, minute, hour or day")]
    Period(String),
    #[error("\"{0}\" is not a number of connections from 1 to {MAX_CONN}")]
    Count(String),
    #[error(
        "\"{0}\" is not a size: digits and an optional unit (B, kB, KB, MB, GB, KiB, MiB, GiB)"
    )]
    Size(String),
    #[error("unknown size unit \"{0}\"; use B, kB, KB, MB, GB, KiB, MiB or GiB")]
    Unit(String),
    #[error("{0} bytes is outside the allowed range 256kB to 4GiB")]
    SizeRange(u64),
}

/// A [`LimitError`] at a column of the label value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitTokenError {
    /// 1-based column (in characters) of the token.
    pub column: usize,
    /// The comma-separated token, trimmed.
    pub token: String,
    pub error: LimitError,
}

/// Parses the value of the `limit` label. Returns every error with its column.
pub fn parse_limits(value: &str) -> Result<Limits, Vec<LimitTokenError>> {
    let mut limits = Limits::default();
    let mut errors = Vec::new();
    for (column, token) in split_tokens(value) {
        let mut err = |error| {
            errors.push(LimitTokenError {
                column,
                token: token.to_string(),
                error,
            })
        };
        match parse_budget(token) {
            Ok(Budget::Conn(_)) if limits.conn.is_some() => err(LimitError::Duplicate("conn")),
            Ok(Budget::Bytes(_)) if limits.bytes.is_some() => err(LimitError::Duplicate("bytes")),
            Ok(Budget::Conn(c)) => limits.conn = Some(c),
            Ok(Budget::Bytes(b)) => limits.bytes = Some(b),
            Err(e) => err(e),
        }
    }
    if errors.is_empty() {
        Ok(limits)
    } else {
        Err(errors)
    }
}

enum Budget {
    Conn(ConnBudget),
    Bytes(ByteBudget),
}

fn parse_budget(token: &str) -> Result<Budget, LimitError> {
    if token.is_empty() {
        return Err(LimitError::Empty);
    }
    let (kind, rest) = token.split_once(':').ok_or(LimitError::Shape)?;
    let (amount, period) = rest.split_once('/').ok_or(LimitError::Shape)?;
    let per = parse_period(period)?;
    match kind {
        "conn" => {
            let count = amount
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_CONN).contains(n) && is_digits(amount))
                .ok_or_else(|| LimitError::Count(amount.to_string()))?;
            Ok(Budget::Conn(ConnBudget { count, per }))
        }
        "bytes" => {
            let bytes = parse_size(amount)?;
            if !(MIN_BYTES..=MAX_BYTES).contains(&bytes) {
                return Err(LimitError::SizeRange(bytes));
            }
            Ok(Budget::Bytes(ByteBudget { bytes, per }))
        }
        other => Err(LimitError::Kind(other.to_string())),
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// `second`, `minute`, `hour` or `day`.
pub fn parse_period(s: &str) -> Result<Period, LimitError> {
    Period::ALL
        .into_iter()
        .find(|p| p.as_str() == s)
        .ok_or_else(|| LimitError::Period(s.to_string()))
}

/// A size: digits and an optional unit, `B` (or none), `kB`/`KB`/`MB`/`GB` (powers of 1000),
/// `KiB`/`MiB`/`GiB` (powers of 1024). Exact: no fractions, no spaces, case as written here.
pub fn parse_size(s: &str) -> Result<u64, LimitError> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return Err(LimitError::Size(s.to_string()));
    }
    let factor: u64 = match unit {
        "" | "B" => 1,
        "kB" | "KB" => 1000,
        "MB" => 1000 * 1000,
        "GB" => 1000 * 1000 * 1000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(LimitError::Unit(other.to_string())),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| LimitError::Size(s.to_string()))
}

/// A byte count the way people write it: `50MB`, `1GiB`, `300000B`.
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (factor, unit) in [
            (1u64 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
            (1_000_000_000, "GB"),
            (1_000_000, "MB"),
            (1000, "kB"),
        ] {
            if n >= factor && n % factor == 0 {
                return write!(f, "{}{unit}", n / factor);
            }
        }
        write!(f, "{n}B")
    }
}

impl fmt::Display for Limits {
    /// The label syntax: `conn:60/minute,bytes:50MB/hour`; empty when there is no budget.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(c) = self.conn {
            parts.push(format!("conn:{}/{}", c.count, c.per.as_str()));
        }
        if let Some(b) = self.bytes {
            parts.push(format!("bytes:{}/{}", Size(b.bytes), b.per.as_str()));
        }
        write!(f, "{}", parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(v: &str) -> Vec<(usize, String, String)> {
        parse_limits(v)
            .unwrap_err()
            .into_iter()
            .map(|e| (e.column, e.token, e.error.to_string()))
            .collect()
    }

    #[test]
    fn both_kinds_parse() {
        let l = parse_limits("conn:60/minute, bytes:50MB/hour").unwrap();
        assert_eq!(
            l.conn,
            Some(ConnBudget {
                count: 60,
                per: Period::Minute
            })
        );
        assert_eq!(
            l.bytes,
            Some(ByteBudget {
                bytes: 50_000_000,
                per: Period::Hour
            })
        );
        assert_eq!(l.to_string(), "conn:60/minute,bytes:50MB/hour");
        assert!(!l.is_empty());
        assert!(Limits::default().is_empty());
    }

    #[test]
    fn sizes_and_units() {
        assert_eq!(parse_size("300000"), Ok(300_000));
        assert_eq!(parse_size("300000B"), Ok(300_000));
        assert_eq!(parse_size("256kB"), Ok(256_000));
        assert_eq!(parse_size("256KB"), Ok(256_000));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("3GB"), Ok(3_000_000_000));
        assert_eq!(parse_size("1mb"), Err(LimitError::Unit("mb".into())));
        assert_eq!(parse_size("1.5MB"), Err(LimitError::Unit(".5MB".into())));
        assert_eq!(parse_size("MB"), Err(LimitError::Size("MB".into())));
        assert_eq!(
            parse_size("99999999999999999999"),
            Err(LimitError::Size("99999999999999999999".into()))
        );
        assert_eq!(
            parse_size("99999999999GiB"),
            Err(LimitError::Size("99999999999GiB".into()))
        );
        assert_eq!(Size(50_000_000).to_string(), "50MB");
        assert_eq!(Size(2 << 20).to_string(), "2MiB");
        assert_eq!(Size(300_001).to_string(), "300001B");
    }

    #[test]
    fn errors_name_column_and_token() {
        assert_eq!(
            errs("conn:60/minute,bytes:50XB/hour"),
            vec![(
                16,
                "bytes:50XB/hour".into(),
                "unknown size unit \"XB\"; use B, kB, KB, MB, GB, KiB, MiB or GiB".into()
            )]
        );
        let all = errs("conn:0/minute, pkts:5/second,conn:5/fortnight,,bytes:1kB/hour,conn");
        let got: Vec<(usize, &str)> = all.iter().map(|(c, t, _)| (*c, t.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (1, "conn:0/minute"),
                (16, "pkts:5/second"),
                (30, "conn:5/fortnight"),
                (47, ""),
                (48, "bytes:1kB/hour"),
                (63, "conn"),
            ]
        );
        assert!(all[0].2.contains("from 1 to 1000000"), "{all:?}");
        assert!(all[1].2.contains("unknown budget kind \"pkts\""), "{all:?}");
        assert!(all[2].2.contains("unknown period \"fortnight\""), "{all:?}");
        assert!(all[3].2.starts_with("empty budget"), "{all:?}");
        assert!(all[4].2.contains("outside the allowed range"), "{all:?}");
        assert!(
            all[5].2.starts_with("expected KIND:AMOUNT/PERIOD"),
            "{all:?}"
        );
    }

    #[test]
    fn duplicates_and_strict_numbers() {
        assert_eq!(
            errs("conn:5/second,conn:6/second")[0],
            (
                15,
                "conn:6/second".into(),
                "a conn budget is given twice".into()
            )
        );
        assert_eq!(errs("bytes:1MB/hour,bytes:2MB/day")[0].0, 16);
        for bad in [
            "conn:+5/second",
            "conn:5 /second",
            "conn:1000001/second",
            "conn:-1/day",
            "Conn:5/second",
            "conn:5/Second",
            "conn:5/seconds",
            "bytes:5GiB/day",
            "",
        ] {
            assert!(parse_limits(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn byte_budget_in_kernel_form_holds_the_whole_budget() {
        let b = ByteBudget {
            bytes: 50_000_000,
            per: Period::Hour,
        };
        let (rate, burst) = b.per_second();
        assert_eq!(rate, 13_888);
        assert_eq!(rate + u64::from(burst), 50_000_000);
        for per in Period::ALL {
            let max = ByteBudget {
                bytes: MAX_BYTES,
                per,
            };
            let (rate, burst) = max.per_second();
            assert_eq!(rate + u64::from(burst), MAX_BYTES, "{per:?}");
            // The kernel's bucket size, nanoseconds × (rate + burst), must fit in 64 bits.
            assert!(
                1_000_000_000u64
                    .checked_mul(rate + u64::from(burst))
                    .is_some()
            );
        }
        let tiny = ByteBudget {
            bytes: MIN_BYTES,
            per: Period::Day,
        };
        assert_eq!(tiny.per_second(), (2, 255_998));
    }
}
