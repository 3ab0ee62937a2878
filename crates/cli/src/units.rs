//! Byte sizes (and row ranges) as people write and read them.

/// Parses `16GiB`, `512MiB`, `1.5GB`, `4096` (bytes). Binary (KiB, MiB, GiB,
/// TiB) and decimal (KB, MB, GB, TB) units; a bare `K`/`M`/`G`/`T` is binary.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown unit {other:?}: use B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB)"
            ));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 16GiB or 512MiB"))?;
    let bytes = value * scale as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes >= u64::MAX as f64 {
        return Err(format!("{text:?} is not a usable size"));
    }
    Ok(bytes as u64)
}

/// Parses a row range `FIRST:END` (end exclusive), as `--sweep-rows` takes it.
pub fn parse_row_range(text: &str) -> Result<std::ops::Range<u64>, String> {
    let bad = || format!("{text:?} is not a row range like 0:4 (first row, end row exclusive)");
    let (first, end) = text.split_once(':').ok_or_else(bad)?;
    let first: u64 = first.trim().parse().map_err(|_| bad())?;
    let end: u64 = end.trim().parse().map_err(|_| bad())?;
    if end <= first {
        return Err(format!("{text:?}: the end row must be past the first"));
    }
    Ok(first..end)
}

/// Formats a byte count with a binary unit and three significant digits.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ if value >= 100.0 => format!("{value:.0} {}", UNITS[unit]),
        _ if value >= 10.0 => format!("{value:.1} {}", UNITS[unit]),
        _ => format!("{value:.2} {}", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_row_range_is_first_colon_end_with_end_past_first() {
        assert_eq!(parse_row_range("0:4"), Ok(0..4));
        assert_eq!(parse_row_range(" 7 : 9 "), Ok(7..9));
        for bad in [
            "5:3",
            "3:3",
            "a:1",
            "1:",
            "4",
            "0:99999999999999999999",
            "-1:2",
        ] {
            assert!(parse_row_range(bad).is_err(), "{bad}");
        }
    }

    use super::*;

    #[test]
    fn binary_and_decimal_units_parse_to_their_byte_counts() {
        assert_eq!(parse_size("16GiB"), Ok(16 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2 G"), Ok(2 << 30));
    }

    #[test]
    fn nonsense_sizes_are_refused() {
        for bad in ["", "GiB", "12 parsecs", "-1GiB", "0", "1e400"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_print_with_a_binary_unit() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(16 << 30), "16.0 GiB");
        assert_eq!(human(98_362_432), "93.8 MiB");
    }
}
