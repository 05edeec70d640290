//! Durations as users write them in an MCPServer: `300s`, `5m`, `1h30m`, `250ms`,
//! or a bare number of seconds. `0` means "never" where a field allows it.

use std::time::Duration;

/// Parses `1h30m`, `5m`, `300s`, `250ms`, `300` (seconds).
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(|| format!("'{text}': number without unit (use s, m, h or ms)"))?;
        if digits == 0 {
            return Err(format!("'{text}': expected a number, e.g. 300s or 5m"));
        }
        let value: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("'{text}': bad number '{}'", &rest[..digits]))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_seconds = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => {
                return Err(format!(
                    "'{text}': unknown unit '{other}' (use ms, s, m or h)"
                ))
            }
        };
        total += Duration::from_secs_f64(value * unit_seconds);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Formats a duration the way [`parse`] reads it back (`1m30s`, `250ms`).
pub fn format(duration: Duration) -> String {
    let millis = duration.as_millis();
    if !millis.is_multiple_of(1000) {
        return format!("{millis}ms");
    }
    let seconds = duration.as_secs();
    match (seconds / 60, seconds % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_users_write() {
        assert_eq!(parse("300s"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_nonsense_with_a_reason() {
        assert!(parse("").is_err());
        assert!(parse("5 minutes").unwrap_err().contains("unknown unit"));
        assert!(parse("m5").unwrap_err().contains("expected a number"));
        assert!(parse("5d").unwrap_err().contains("unknown unit 'd'"));
    }

    #[test]
    fn formats_round_trip() {
        for text in ["300s", "5m", "1m30s", "250ms"] {
            let parsed = parse(text).unwrap();
            assert_eq!(parse(&format(parsed)).unwrap(), parsed);
        }
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
    }
}
