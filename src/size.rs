//! Human-readable byte sizes, for `--quota` and friends.
//!
//! All units are binary: `K`, `KB` and `KiB` all mean 1024 bytes, `M` means
//! 1024², and so on up to `T`. Disk quotas are nearly always thought of in
//! these units, and one meaning per letter avoids a 2.4 % surprise at `G`.

/// Bytes in one unit, by the unit's letter.
const UNITS: [(char, u64); 4] = [
    ('K', 1 << 10),
    ('M', 1 << 20),
    ('G', 1 << 30),
    ('T', 1 << 40),
];

/// Units [`format_size`] prints, from small to large.
const FORMAT_UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// Parses a size such as `1048576`, `512K`, `10 MB`, `1.5GiB` or `2t`.
///
/// Units are case-insensitive and binary (`1K` = 1024 bytes); decimals are
/// allowed with a unit and rounded down to whole bytes. A size that is not
/// a number, has an unknown unit or does not fit in a `u64` is an error with
/// a message meant for the user.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let invalid = || format!("invalid size {s:?}: expected bytes or a number with K, M, G or T");
    let text = s.trim();
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_end);
    let unit = unit.trim_start();
    let multiplier = unit_multiplier(unit).ok_or_else(invalid)?;

    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(invalid());
    }
    if multiplier == 1 && number.contains('.') {
        return Err(format!(
            "invalid size {s:?}: a byte count must be a whole number"
        ));
    }

    let too_large = || format!("invalid size {s:?}: too large");
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        // Only digits are left, so the one failure is overflow.
        whole.parse().map_err(|_| too_large())?
    };
    let mut bytes = whole.checked_mul(multiplier).ok_or_else(too_large)?;

    // The fraction is worked out in integers so that "1.1G" is exact; digits
    // past the 18th change less than a byte even at T and are ignored.
    let fraction = &fraction[..fraction.len().min(18)];
    if !fraction.is_empty() {
        let digits: u128 = fraction.parse().map_err(|_| invalid())?;
        let scale = 10u128.pow(fraction.len() as u32);
        let part = digits * u128::from(multiplier) / scale;
        let part = u64::try_from(part).map_err(|_| too_large())?;
        bytes = bytes.checked_add(part).ok_or_else(too_large)?;
    }
    Ok(bytes)
}

/// Bytes per unit for a unit suffix (`""`, `B`, `K`, `KB`, `KiB`, ...).
fn unit_multiplier(unit: &str) -> Option<u64> {
    let upper = unit.to_ascii_uppercase();
    if upper.is_empty() || upper == "B" {
        return Some(1);
    }
    let mut chars = upper.chars();
    let letter = chars.next()?;
    let rest = chars.as_str();
    if !matches!(rest, "" | "B" | "IB") {
        return None;
    }
    UNITS
        .iter()
        .find(|(l, _)| *l == letter)
        .map(|&(_, bytes)| bytes)
}

/// Formats a byte count for people: `"512 B"`, `"1.0 KiB"`, `"1.1 GiB"`.
///
/// One decimal, binary units, rounded to the nearest tenth.
pub fn format_size(n: u64) -> String {
    if n < 1024 {
        return format!("{n} B");
    }
    let mut unit_bytes: u128 = 1024;
    for (i, name) in FORMAT_UNITS.iter().enumerate() {
        let tenths = (u128::from(n) * 10 + unit_bytes / 2) / unit_bytes;
        // Move up when rounding would print "1024.0" of this unit.
        if tenths < 10 * 1024 || i + 1 == FORMAT_UNITS.len() {
            return format!("{}.{} {name}", tenths / 10, tenths % 10);
        }
        unit_bytes *= 1024;
    }
    // The loop always returns at its last unit.
    format!("{n} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_bytes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1048576"), Ok(1_048_576));
        assert_eq!(parse_size("  42 "), Ok(42));
        assert_eq!(parse_size("42B"), Ok(42));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn units_are_binary_and_case_insensitive() {
        for unit in ["K", "k", "KB", "kb", "KiB", "kib", "KIB"] {
            assert_eq!(parse_size(&format!("2{unit}")), Ok(2048), "{unit}");
        }
        assert_eq!(parse_size("10M"), Ok(10 << 20));
        assert_eq!(parse_size("10 MB"), Ok(10 << 20));
        assert_eq!(parse_size("3GiB"), Ok(3 << 30));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
        assert_eq!(parse_size("1 TiB"), Ok(1 << 40));
    }

    #[test]
    fn decimals() {
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("0.5K"), Ok(512));
        assert_eq!(parse_size(".5K"), Ok(512));
        assert_eq!(parse_size("1.K"), Ok(1024));
        // 1.1 * 1024 = 1126.4, rounded down.
        assert_eq!(parse_size("1.1K"), Ok(1126));
        assert_eq!(parse_size("1.000000000000000000000001K"), Ok(1024));
    }

    #[test]
    fn garbage_is_refused_with_a_readable_message() {
        assert_eq!(
            parse_size("12Q"),
            Err(r#"invalid size "12Q": expected bytes or a number with K, M, G or T"#.into())
        );
        for s in [
            "", " ", "abc", "-1", "+1", "1.2.3", ".", "K", "1KK", "1KiBB", "1 K B", "1e3", "1_000",
            "1.5", "1.5B", "0x10",
        ] {
            assert!(parse_size(s).is_err(), "{s:?} should be refused");
        }
    }

    #[test]
    fn overflow_is_refused() {
        assert!(parse_size("18446744073709551616").is_err());
        assert!(parse_size("99999999999999999999999999T").is_err());
        assert!(parse_size("16777216T").is_err());
        assert_eq!(parse_size("16777215T"), Ok(16_777_215 << 40));
    }

    #[test]
    fn formatting() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1024), "1.0 KiB");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(2 << 20), "2.0 MiB");
        assert_eq!(format_size(1_181_116_006), "1.1 GiB");
        assert_eq!(format_size(1 << 30), "1.0 GiB");
        assert_eq!(format_size((1 << 20) - 1), "1.0 MiB");
        assert_eq!(format_size(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn format_then_parse_round_trips_whole_units() {
        for n in [1u64 << 10, 5 << 20, 7 << 30, 3 << 40] {
            assert_eq!(parse_size(&format_size(n)), Ok(n));
        }
    }
}
