//! Human durations for configuration and flags: `30s`, `10m`, `1h`, `2d`, `1h30m`.

use std::time::Duration;

/// Parse `<n><unit>` groups (units `s`, `m`, `h`, `d`); a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration; write e.g. 30s, 10m, 1h or 2d".to_string());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("{s:?} is too large"));
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let mult = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => {
                return Err(format!(
                    "{s:?} is not a duration: unknown unit {c:?}; use s, m, h or d (e.g. 10m, 1h30m)"
                ));
            }
        };
        if num.is_empty() {
            return Err(format!(
                "{s:?} is not a duration: a number must precede {c:?}"
            ));
        }
        let n: u64 = num.parse().map_err(|_| format!("{s:?} is too large"))?;
        total = n
            .checked_mul(mult)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{s:?} is too large"))?;
        num.clear();
    }
    if !num.is_empty() {
        return Err(format!(
            "{s:?} is not a duration: the trailing number {num} has no unit (s, m, h, d)"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// Format a duration compactly (`1h30m`, `5m`, `45s`).
pub fn format_duration(d: Duration) -> String {
    let mut s = d.as_secs();
    if s == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= size {
            out.push_str(&format!("{}{unit}", s / size));
            s %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        for (s, secs) in [
            ("30s", 30),
            ("10m", 600),
            ("1h", 3600),
            ("2d", 172_800),
            ("1h30m", 5400),
            ("90", 90),
        ] {
            assert_eq!(parse_duration(s).unwrap(), Duration::from_secs(secs), "{s}");
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(86_400)), "1d");
        for bad in ["", "h", "10x", "1h5", "-5m", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
