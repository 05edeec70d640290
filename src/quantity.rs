//! Kubernetes resource quantities, as far as MCPServer limits need them:
//! memory (`512Mi`, `1G`, `1048576`) and CPU (`1`, `0.5`, `500m`).

/// Memory quantity in bytes: binary (`Ki Mi Gi Ti`) and decimal (`k M G T`) suffixes.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a memory quantity (e.g. 512Mi, 1Gi)"))?;
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "'{text}': unknown suffix '{other}' (use Ki, Mi, Gi, Ti, k, M, G or T)"
            ))
        }
    };
    let bytes = (value * multiplier).round();
    if bytes < 4.0 * 1024.0 * 1024.0 {
        return Err(format!("'{text}' is below the 4Mi a container needs"));
    }
    Ok(bytes as u64)
}

/// Bytes as the shortest exact binary quantity: `536870912` → `512Mi`, `1536` → `1536`
pub fn format_memory(bytes: u64) -> String {
    for (suffix, unit) in [
        ("Ti", 1u64 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// CPU quantity in millicores: `1` → 1000, `0.5` → 500, `250m` → 250.
pub fn parse_cpu_millis(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let millis = match text.strip_suffix('m') {
        Some(number) => number.parse::<f64>(),
        None => text.parse::<f64>().map(|cores| cores * 1000.0),
    }
    .map_err(|_| format!("'{text}' is not a CPU quantity (e.g. 1, 0.5, 500m)"))?;
    if millis.is_nan() || millis < 1.0 {
        return Err(format!("'{text}' must be at least 1m"));
    }
    Ok(millis.round() as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_formats_as_the_shortest_exact_quantity() {
        assert_eq!(super::format_memory(512 * 1024 * 1024), "512Mi");
        assert_eq!(super::format_memory(2 << 30), "2Gi");
        assert_eq!(super::format_memory(1536), "1536");
        assert_eq!(super::format_memory(1_000_000), "1000000");
    }

    use super::*;

    #[test]
    fn memory() {
        assert_eq!(parse_memory("512Mi"), Ok(512 * 1024 * 1024));
        assert_eq!(parse_memory("1Gi"), Ok(1 << 30));
        assert_eq!(parse_memory("512M"), Ok(512_000_000));
        assert_eq!(parse_memory("1.5Gi"), Ok(3 << 29));
        assert!(parse_memory("512MB")
            .unwrap_err()
            .contains("unknown suffix 'MB'"));
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("1Ki").unwrap_err().contains("below"));
    }

    #[test]
    fn cpu() {
        assert_eq!(parse_cpu_millis("1"), Ok(1000));
        assert_eq!(parse_cpu_millis("1.0"), Ok(1000));
        assert_eq!(parse_cpu_millis("0.5"), Ok(500));
        assert_eq!(parse_cpu_millis("250m"), Ok(250));
        assert!(parse_cpu_millis("0").is_err());
        assert!(parse_cpu_millis("fast").is_err());
    }
}
