//! DNS names as they may appear in X509-SVID subject alternative names.

/// Check a DNS name: labels of letters, digits and `-` (not at either end), 1–63 bytes
/// each, at most 253 bytes in all; a leading `*.` wildcard label is allowed.
pub fn validate_dns_name(name: &str) -> Result<(), String> {
    let bare = name.strip_prefix("*.").unwrap_or(name);
    if bare.is_empty() {
        return Err(format!("{name:?} is not a DNS name: it is empty"));
    }
    if name.len() > 253 {
        return Err(format!("{name:?} is longer than 253 bytes"));
    }
    for label in bare.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "{name:?} is not a DNS name: every label must be 1 to 63 characters"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "{name:?} is not a DNS name: labels may only hold letters, digits and \"-\""
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "{name:?} is not a DNS name: a label must not start or end with \"-\""
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        for ok in [
            "web",
            "web.local",
            "a-b.example.org",
            "*.example.org",
            "x1.y2",
        ] {
            assert!(validate_dns_name(ok).is_ok(), "{ok}");
        }
        let long_label = "a".repeat(64);
        let long_name = vec!["abc"; 64].join(".");
        for bad in [
            "",
            "*.",
            "bad name",
            "a..b",
            "-a.b",
            "a-.b",
            "a_b",
            "a.b.",
            long_label.as_str(),
            long_name.as_str(),
            "*.*.a",
            "é.org",
        ] {
            assert!(validate_dns_name(bad).is_err(), "{bad}");
        }
    }
}
