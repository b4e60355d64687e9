//! Offline inspection commands: `id check`, `svid inspect`, `bundle inspect`.
//!
//! Exit codes: 0 when the input is valid, 1 when it is not (the reason is printed),
//! 2 when the command itself could not run (e.g. a file cannot be read).

use std::path::Path;
use std::process::ExitCode;

use lanyard_core::bundle::pem_certificates;
use lanyard_core::x509::{self, RuleCheck, Severity};
use lanyard_core::{Bundle, BundleSet, Clock, SpiffeId, SystemClock, TrustDomain, X509Svid};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::Output;

const INVALID: u8 = 1;

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

fn rfc3339(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{t} (unix seconds)"))
}

fn human_duration(secs: i64) -> String {
    let s = secs.unsigned_abs();
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {sec}s")
    } else {
        format!("{sec}s")
    }
}

fn validity_note(not_before: i64, not_after: i64, now: i64) -> (bool, String) {
    if now < not_before {
        (
            false,
            format!(
                "NOT YET VALID (starts in {})",
                human_duration(not_before - now)
            ),
        )
    } else if now > not_after {
        (
            false,
            format!("EXPIRED {} ago", human_duration(now - not_after)),
        )
    } else {
        (
            true,
            format!("expires in {}", human_duration(not_after - now)),
        )
    }
}

/// `lanyard id check ID`
pub fn id_check(input: &str, output: Output) -> Result<ExitCode, String> {
    match SpiffeId::new(input) {
        Ok(id) => {
            match output {
                Output::Text => println!("{id}"),
                Output::Json => print_json(&json!({
                    "valid": true,
                    "id": id.to_string(),
                    "trust_domain": id.trust_domain().name(),
                    "path": id.path(),
                })),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            match output {
                Output::Text => eprintln!("invalid SPIFFE ID {input:?}: {e}"),
                Output::Json => print_json(&json!({
                    "valid": false,
                    "input": input,
                    "error": e.to_string(),
                })),
            }
            Ok(ExitCode::from(INVALID))
        }
    }
}

fn rule_json(c: &RuleCheck) -> Value {
    json!({
        "rule": format!("{:?}", c.rule),
        "description": c.rule.description(),
        "severity": match c.rule.severity() { Severity::Must => "must", Severity::Should => "should" },
        "passed": c.passed,
        "detail": c.detail,
    })
}

fn rule_lines(checks: &[RuleCheck]) -> Vec<String> {
    let mut out = Vec::new();
    for c in checks {
        let tag = match (c.passed, c.rule.severity()) {
            (true, _) => "[ok]  ",
            (false, Severity::Must) => "[FAIL]",
            (false, Severity::Should) => "[warn]",
        };
        out.push(format!("  {tag} {}: {}", c.rule.description(), c.detail));
        if !c.passed {
            out.push(format!("         fix: {}", c.rule.fix()));
        }
    }
    out
}

fn load_bundle(path: &Path, td: &TrustDomain) -> Result<Bundle, String> {
    Bundle::parse_json_or_pem(td.clone(), &read(path)?).map_err(|e| {
        format!(
            "the bundle {} is not a valid SPIFFE bundle (JSON) or PEM CA certificates: {e}",
            path.display()
        )
    })
}

/// `lanyard svid inspect FILE [--bundle FILE]`
pub fn svid_inspect(
    path: &Path,
    bundle: Option<&Path>,
    output: Output,
) -> Result<ExitCode, String> {
    let bytes = read(path)?;
    let chain = match pem_certificates(&bytes) {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("{}: {e}", path.display());
            match output {
                Output::Text => eprintln!("invalid X509-SVID: {msg}"),
                Output::Json => print_json(&json!({"valid": false, "error": msg})),
            }
            return Ok(ExitCode::from(INVALID));
        }
    };
    let now = SystemClock.unix_seconds();
    let mut lines = vec![format!(
        "file:        {} ({} certificate{})",
        path.display(),
        chain.len(),
        if chain.len() == 1 { "" } else { "s" }
    )];
    let mut certs_json = Vec::new();
    let mut first_error: Option<String> = None;

    // Per-certificate facts and rule reports.
    for (i, der) in chain.iter().enumerate() {
        let role = if i == 0 { "leaf" } else { "intermediate CA" };
        let summary = match x509::summarize(der) {
            Ok(s) => s,
            Err(e) => {
                first_error.get_or_insert_with(|| e.to_string());
                lines.push(format!("certificate #{i} ({role}): {e}"));
                certs_json.push(json!({"index": i, "role": role, "error": e.to_string()}));
                continue;
            }
        };
        let checks = x509::rule_report(der, i == 0).unwrap_or_default();
        let (time_ok, note) = validity_note(summary.not_before, summary.not_after, now);
        if i == 0 {
            lines.push(format!(
                "SPIFFE ID:   {}",
                summary
                    .uri_sans
                    .first()
                    .map(String::as_str)
                    .unwrap_or("(none)")
            ));
        }
        lines.push(format!("certificate #{i} ({role})"));
        lines.push(format!("  subject:     {}", summary.subject));
        lines.push(format!("  issuer:      {}", summary.issuer));
        lines.push(format!("  serial:      {}", summary.serial));
        lines.push(format!("  public key:  {}", summary.public_key));
        lines.push(format!("  not before:  {}", rfc3339(summary.not_before)));
        lines.push(format!(
            "  not after:   {} ({note})",
            rfc3339(summary.not_after)
        ));
        if !summary.dns_sans.is_empty() {
            lines.push(format!("  DNS names:   {}", summary.dns_sans.join(", ")));
        }
        if summary.uri_sans.len() > 1 || i > 0 && !summary.uri_sans.is_empty() {
            lines.push(format!("  URI SANs:    {}", summary.uri_sans.join(", ")));
        }
        lines.push("  rules:".to_string());
        lines.extend(rule_lines(&checks).into_iter().map(|l| format!("  {l}")));
        if !time_ok {
            first_error.get_or_insert_with(|| format!("certificate #{i} is {note}"));
        }
        if let Some(c) = checks
            .iter()
            .find(|c| !c.passed && c.rule.severity() == Severity::Must)
        {
            first_error.get_or_insert_with(|| {
                format!(
                    "certificate #{i} ({role}) breaks a SPIFFE rule: {}: {}; to fix: {}",
                    c.rule.description(),
                    c.detail,
                    c.rule.fix()
                )
            });
        }
        certs_json.push(json!({
            "index": i,
            "role": role,
            "subject": summary.subject,
            "issuer": summary.issuer,
            "serial": summary.serial,
            "public_key": summary.public_key,
            "not_before": rfc3339(summary.not_before),
            "not_after": rfc3339(summary.not_after),
            "uri_sans": summary.uri_sans,
            "dns_sans": summary.dns_sans,
            "rules": checks.iter().map(rule_json).collect::<Vec<_>>(),
        }));
    }

    // Structural parse (leaf rules and SPIFFE ID) and, with a bundle, path validation.
    let parsed = X509Svid::parse(chain.clone());
    let spiffe_id = parsed.as_ref().ok().map(|s| s.spiffe_id().clone());
    if let Err(e) = &parsed {
        first_error.get_or_insert_with(|| e.to_string());
    }
    let chain_verified: Option<bool> = match (bundle, &spiffe_id) {
        (None, _) => {
            lines.push("chain:       not verified (pass --bundle FILE to verify it)".to_string());
            None
        }
        (Some(_), None) => {
            lines.push("chain:       not verified (the leaf has no valid SPIFFE ID)".to_string());
            Some(false)
        }
        (Some(bpath), Some(id)) => {
            let b = load_bundle(bpath, id.trust_domain())?;
            let set: BundleSet = [b].into_iter().collect();
            match X509Svid::validate(chain, &set, &SystemClock) {
                Ok(_) => {
                    lines.push(format!(
                        "chain:       verified against the bundle of {} ({})",
                        id.trust_domain(),
                        bpath.display()
                    ));
                    Some(true)
                }
                Err(e) => {
                    lines.push(format!("chain:       NOT VERIFIED: {e}"));
                    first_error.get_or_insert_with(|| e.to_string());
                    Some(false)
                }
            }
        }
    };
    let valid = first_error.is_none();
    match &first_error {
        None => lines.push("result:      valid X509-SVID".to_string()),
        Some(e) => lines.push(format!("result:      INVALID: {e}")),
    }
    match output {
        Output::Text => println!("{}", lines.join("\n")),
        Output::Json => print_json(&json!({
            "file": path.display().to_string(),
            "spiffe_id": spiffe_id.map(|i| i.to_string()),
            "certificates": certs_json,
            "chain_verified": chain_verified,
            "valid": valid,
            "error": first_error,
        })),
    }
    Ok(if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(INVALID)
    })
}

/// The trust domain named by the CA certificates' URI SANs, if any.
fn infer_trust_domain(bundle: &Bundle) -> Option<TrustDomain> {
    bundle.x509_authorities().iter().find_map(|a| {
        x509::summarize(a.der()).ok().and_then(|s| {
            s.uri_sans
                .iter()
                .find_map(|u| SpiffeId::new(u).ok())
                .map(|id| id.trust_domain().clone())
        })
    })
}

/// `lanyard bundle inspect FILE`
pub fn bundle_inspect(
    path: &Path,
    trust_domain: Option<&str>,
    output: Output,
) -> Result<ExitCode, String> {
    let bytes = read(path)?;
    let given = match trust_domain.map(TrustDomain::new).transpose() {
        Ok(td) => td,
        Err(e) => return Err(format!("--trust-domain: {e}")),
    };
    let placeholder = TrustDomain::new("unknown").map_err(|e| e.to_string())?;
    let bundle = match Bundle::parse(given.clone().unwrap_or(placeholder), &bytes) {
        Ok(b) => b,
        Err(e) => {
            let msg = format!("{}: {e}", path.display());
            match output {
                Output::Text => eprintln!("invalid SPIFFE bundle: {msg}"),
                Output::Json => print_json(&json!({"valid": false, "error": msg})),
            }
            return Ok(ExitCode::from(INVALID));
        }
    };
    let td = given.or_else(|| infer_trust_domain(&bundle));
    let now = SystemClock.unix_seconds();
    let mut problems = Vec::new();
    let mut lines = vec![
        format!("file:            {}", path.display()),
        format!(
            "trust domain:    {}",
            td.as_ref()
                .map(|t| t.to_string())
                .unwrap_or_else(|| "(unknown: pass --trust-domain)".to_string())
        ),
        format!(
            "sequence:        {}",
            bundle
                .sequence()
                .map(|s| s.to_string())
                .unwrap_or_else(|| "(none)".to_string())
        ),
        format!(
            "refresh hint:    {}",
            bundle
                .refresh_hint()
                .map(|s| format!("{s}s"))
                .unwrap_or_else(|| "(none)".to_string())
        ),
        format!("X.509 authorities: {}", bundle.x509_authorities().len()),
    ];
    let mut x509_json = Vec::new();
    for (i, a) in bundle.x509_authorities().iter().enumerate() {
        let s = x509::summarize(a.der()).map_err(|e| e.to_string())?;
        let checks = x509::rule_report(a.der(), false).unwrap_or_default();
        let (time_ok, note) = validity_note(s.not_before, s.not_after, now);
        lines.push(format!("  #{i} {} ({})", s.subject, s.public_key));
        lines.push(format!("     serial {}", s.serial));
        lines.push(format!(
            "     valid {} .. {} ({note})",
            rfc3339(s.not_before),
            rfc3339(s.not_after)
        ));
        if !s.uri_sans.is_empty() {
            lines.push(format!("     URI SANs {}", s.uri_sans.join(", ")));
        }
        if !time_ok {
            problems.push(format!("X.509 authority #{i} is {note}"));
        }
        for c in checks.iter().filter(|c| !c.passed) {
            lines.push(format!(
                "     [{}] {}: {}",
                if c.rule.severity() == Severity::Must {
                    "FAIL"
                } else {
                    "warn"
                },
                c.rule.description(),
                c.detail
            ));
            if c.rule.severity() == Severity::Must {
                problems.push(format!(
                    "X.509 authority #{i} is not a valid SPIFFE CA: {}: {}",
                    c.rule.description(),
                    c.detail
                ));
            }
        }
        x509_json.push(json!({
            "subject": s.subject,
            "serial": s.serial,
            "public_key": s.public_key,
            "not_before": rfc3339(s.not_before),
            "not_after": rfc3339(s.not_after),
            "uri_sans": s.uri_sans,
            "rules": checks.iter().map(rule_json).collect::<Vec<_>>(),
        }));
    }
    let jwt: Vec<_> = bundle.jwt_authorities().collect();
    lines.push(format!("JWT authorities: {}", jwt.len()));
    for a in &jwt {
        lines.push(format!("  kid {} ({})", a.kid(), a.key().describe()));
    }
    if bundle.ignored_keys() > 0 {
        lines.push(format!(
            "ignored keys:    {} (unknown \"use\")",
            bundle.ignored_keys()
        ));
    }
    let valid = problems.is_empty();
    match problems.first() {
        None => lines.push("result:          valid SPIFFE bundle".to_string()),
        Some(p) => lines.push(format!("result:          INVALID: {p}")),
    }
    match output {
        Output::Text => println!("{}", lines.join("\n")),
        Output::Json => print_json(&json!({
            "file": path.display().to_string(),
            "trust_domain": td.map(|t| t.to_string()),
            "spiffe_sequence": bundle.sequence(),
            "spiffe_refresh_hint": bundle.refresh_hint(),
            "x509_authorities": x509_json,
            "jwt_authorities": jwt.iter().map(|a| json!({"kid": a.kid(), "key": a.key().describe()})).collect::<Vec<_>>(),
            "ignored_keys": bundle.ignored_keys(),
            "valid": valid,
            "problems": problems,
        })),
    }
    Ok(if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(INVALID)
    })
}
