//! Flag values checked before any work: dates, ratios, sizes, and the usage error that carries
//! a mistake to exit status 2, shared by the subcommands.

use anyhow::Result;
use chrono::NaiveDate;

/// A mistake in how regtally was called: exit status 2, reported before any log is read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Fails with a [`UsageError`].
pub fn usage<T>(msg: impl Into<String>) -> Result<T> {
    Err(UsageError(msg.into()).into())
}

/// Parses `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .filter(|_| s.len() == 10)
        .ok_or_else(|| format!("{s:?} is not a date of the form YYYY-MM-DD"))
}

/// Parses a number from 0 to 1.
pub fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?} is not a number from 0 to 1")),
    }
}

/// Parses a size in bytes: a whole number with an optional binary suffix `K`, `M`, `G` or
/// `T` (powers of 1024; a trailing `B` or `iB` is allowed), e.g. `512M`, `4G`, `1500K`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || {
        format!("{s:?} is not a size such as 512M or 4G (a whole number of bytes, K, M, G or T)")
    };
    let upper = s.trim().to_ascii_uppercase();
    let body = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (digits, shift) = match body.as_bytes().last() {
        Some(b'K') => (&body[..body.len() - 1], 10),
        Some(b'M') => (&body[..body.len() - 1], 20),
        Some(b'G') => (&body[..body.len() - 1], 30),
        Some(b'T') => (&body[..body.len() - 1], 40),
        _ => (body, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    match n.checked_mul(1 << shift) {
        Some(0) => Err(format!("{s:?}: the size must be more than 0")),
        Some(v) => Ok(v),
        None => Err(bad()),
    }
}

/// Checks that `--since` comes before `--until`.
pub fn check_range(since: Option<NaiveDate>, until: Option<NaiveDate>) -> Result<()> {
    match (since, until) {
        (Some(s), Some(u)) if s >= u => usage(format!("--since {s} must be before --until {u}")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes_and_refuse_anything_else() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("4g"), Ok(4 << 30));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("1500K"), Ok(1500 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        for bad in [
            "",
            "M",
            "1.5G",
            "-1G",
            "12Q",
            "0",
            "0M",
            "99999999999T",
            "1 G",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
