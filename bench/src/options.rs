//! The value parsers the scenarios' command-line options share: counts
//! accept `_` separators and `k`/`m` suffixes.
//!
//! Each scenario declares its options as a clap `Args` struct named
//! `Options` (a subcommand of [`crate::Bench`]), with `Option` fields where
//! the default depends on `--quick`, and resolves them into its `Config`
//! (the defaults, and the checks that involve more than one option).

/// A count: `100000`, `100_000`, `100k` or `1m`.
pub(crate) fn count(text: &str) -> Result<usize, String> {
    let digits: String = text.chars().filter(|c| *c != '_').collect();
    let (digits, scale) = match digits.char_indices().last() {
        Some((i, 'k' | 'K')) => (&digits[..i], 1_000),
        Some((i, 'm' | 'M')) => (&digits[..i], 1_000_000),
        _ => (digits.as_str(), 1),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| "needs a non-negative integer (100_000, 10k and 1m are accepted)".to_string())
}

/// A count of at least 1 (see [`count`]).
pub(crate) fn positive(text: &str) -> Result<usize, String> {
    match count(text) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("needs a positive integer (100_000, 10k and 1m are accepted)".to_string()),
    }
}

/// A [`count`] as a `u64` (seeds, seconds).
pub(crate) fn count_u64(text: &str) -> Result<u64, String> {
    count(text).map(|n| n as u64)
}

/// A [`positive`] count as a `u64` (seconds, seeds).
pub(crate) fn positive_u64(text: &str) -> Result<u64, String> {
    positive(text).map(|n| n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_take_separators_and_suffixes() {
        assert_eq!(count("100_000"), Ok(100_000));
        assert_eq!(count("10k"), Ok(10_000));
        assert_eq!(count("1M"), Ok(1_000_000));
        assert_eq!(count("0"), Ok(0));
        assert!(count("ten").is_err());
        assert!(count("-1").is_err());
        assert!(positive("0").unwrap_err().contains("positive integer"));
        assert_eq!(positive_u64("1_5"), Ok(15));
    }
}
