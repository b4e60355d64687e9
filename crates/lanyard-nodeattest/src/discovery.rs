//! OIDC discovery (`/.well-known/openid-configuration`) documents, the URL rules for
//! issuers and JWKS locations, and [`JwksRefreshGate`], which keeps tokens with
//! unknown key IDs from causing a storm of JWKS fetches.
//!
//! Fetching is the server's job; this module decides what a fetched document means
//! and when a fetch is allowed.

use std::time::Duration;

use serde_json::Value;

/// Largest discovery document accepted, in bytes.
pub const MAX_DISCOVERY_BYTES: usize = 64 * 1024;

/// The default least time between two JWKS refreshes caused by unknown key IDs.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// The path of the discovery document below an issuer.
pub const WELL_KNOWN_PATH: &str = "/.well-known/openid-configuration";

/// Whether plain `http://` is allowed for loopback addresses (test issuers only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UrlPolicy {
    /// Only `https://` URLs (the default, and the only choice in production).
    #[default]
    HttpsOnly,
    /// Also `http://` to `localhost`, `127.0.0.0/8` or `[::1]`: for tests against a
    /// local issuer, never for a real one.
    AllowInsecureLoopback,
}

/// Why a URL, or a discovery document, is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The document is larger than [`MAX_DISCOVERY_BYTES`].
    #[error("the discovery document is {len} bytes; at most {MAX_DISCOVERY_BYTES} are accepted")]
    TooLarge {
        /// Its size.
        len: usize,
    },
    /// The document is not a JSON object.
    #[error(
        "the discovery document is not a JSON object ({0}); is the URL the issuer's /.well-known/openid-configuration?"
    )]
    NotJson(String),
    /// A required member is missing or not a string.
    #[error(
        "the discovery document has no {0:?} string; it is not an OpenID Provider configuration"
    )]
    Missing(&'static str),
    /// The document names another issuer.
    #[error(
        "the discovery document is for issuer {got:?}, not the configured {want:?}; the issuer setting must be exactly the issuer's URL (scheme, host, path and trailing slash included)"
    )]
    IssuerMismatch {
        /// The configured issuer.
        want: String,
        /// The document's issuer.
        got: String,
    },
    /// A URL is not acceptable.
    #[error("the {what} {url:?} is not acceptable: {reason}")]
    BadUrl {
        /// Which URL (e.g. `jwks_uri`).
        what: &'static str,
        /// The URL.
        url: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
}

/// The parts of an OpenID Provider configuration that token verification needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryDocument {
    /// `issuer`, equal to the configured issuer.
    pub issuer: String,
    /// `jwks_uri`, checked against the [`UrlPolicy`].
    pub jwks_uri: String,
    /// `id_token_signing_alg_values_supported`, if published (informational).
    pub signing_algs: Vec<String>,
}

impl DiscoveryDocument {
    /// Parse a discovery document fetched for `expected_issuer`.
    pub fn parse(
        bytes: &[u8],
        expected_issuer: &str,
        policy: UrlPolicy,
    ) -> Result<Self, DiscoveryError> {
        if bytes.len() > MAX_DISCOVERY_BYTES {
            return Err(DiscoveryError::TooLarge { len: bytes.len() });
        }
        let doc: Value =
            serde_json::from_slice(bytes).map_err(|e| DiscoveryError::NotJson(e.to_string()))?;
        let Value::Object(doc) = doc else {
            return Err(DiscoveryError::NotJson("not an object".to_string()));
        };
        let issuer = doc
            .get("issuer")
            .and_then(Value::as_str)
            .ok_or(DiscoveryError::Missing("issuer"))?;
        if issuer != expected_issuer {
            return Err(DiscoveryError::IssuerMismatch {
                want: expected_issuer.to_string(),
                got: issuer.to_string(),
            });
        }
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or(DiscoveryError::Missing("jwks_uri"))?;
        check_url("jwks_uri", jwks_uri, policy)?;
        let signing_algs = doc
            .get("id_token_signing_alg_values_supported")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            issuer: issuer.to_string(),
            jwks_uri: jwks_uri.to_string(),
            signing_algs,
        })
    }
}

/// The discovery document URL of `issuer` (OpenID Connect Discovery 1.0 §4): the
/// issuer without a trailing `/`, then [`WELL_KNOWN_PATH`]. The issuer itself must
/// pass [`check_url`].
pub fn discovery_url(issuer: &str, policy: UrlPolicy) -> Result<String, DiscoveryError> {
    check_url("issuer", issuer, policy)?;
    if issuer.contains('?') || issuer.contains('#') {
        return Err(DiscoveryError::BadUrl {
            what: "issuer",
            url: issuer.to_string(),
            reason: "an issuer has no query or fragment".to_string(),
        });
    }
    Ok(format!("{}{WELL_KNOWN_PATH}", issuer.trim_end_matches('/')))
}

fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") || host == "[::1]" {
        return true;
    }
    let octets: Vec<&str> = host.split('.').collect();
    octets.len() == 4
        && octets[0] == "127"
        && octets
            .iter()
            .all(|o| !o.is_empty() && o.len() <= 3 && o.bytes().all(|b| b.is_ascii_digit()))
}

/// Check that `url` is an absolute `https://` URL with a host (or, when `policy`
/// allows it, `http://` to a loopback address), without user info, spaces or
/// control characters. `what` names the URL in the error.
pub fn check_url(what: &'static str, url: &str, policy: UrlPolicy) -> Result<(), DiscoveryError> {
    let bad = |reason: &str| DiscoveryError::BadUrl {
        what,
        url: url.to_string(),
        reason: reason.to_string(),
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it contains whitespace or control characters"));
    }
    let (secure, rest) = if let Some(rest) = strip_prefix_ci(url, "https://") {
        (true, rest)
    } else if let Some(rest) = strip_prefix_ci(url, "http://") {
        (false, rest)
    } else {
        return Err(bad("it must be an absolute https:// URL"));
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    if authority.contains('@') {
        return Err(bad("user info (user@host) is not allowed in the URL"));
    }
    let host = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => {
                let port = &authority[end + 1..];
                if !(port.is_empty()
                    || (port.len() > 1
                        && port.starts_with(':')
                        && port[1..].bytes().all(|b| b.is_ascii_digit())))
                {
                    return Err(bad("the port is not a number"));
                }
                &authority[..=end]
            }
            None => return Err(bad("the IPv6 address has no closing ']'")),
        }
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if let Some(p) = port
            && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(bad("the port is not a number"));
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(bad("the host name has characters a DNS name cannot have"));
        }
        host
    };
    if host.is_empty() || host == "[]" {
        return Err(bad("it has no host"));
    }
    if !secure {
        let allowed = policy == UrlPolicy::AllowInsecureLoopback && is_loopback(host);
        if !allowed {
            return Err(bad(if policy == UrlPolicy::AllowInsecureLoopback {
                "plain http:// is allowed only to a loopback address (localhost, 127.0.0.1, [::1])"
            } else {
                "it must use https://; plain http:// would let anyone on the path swap the issuer's keys"
            }));
        }
    }
    Ok(())
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix)
    {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

/// A refresh was not allowed yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the issuer's JWKS was refreshed {since}s ago; the next refresh for an unknown key ID is allowed in {retry_after}s (at most one every {interval}s, so unknown key IDs cannot cause a refresh storm)"
)]
pub struct RefreshDenied {
    /// Seconds since the last refresh.
    pub since: i64,
    /// Seconds until a refresh is allowed.
    pub retry_after: i64,
    /// The configured least interval, seconds.
    pub interval: i64,
}

/// Decides when a token with an unknown `kid` may cause a JWKS refresh: at most one
/// refresh per interval (default [`DEFAULT_REFRESH_INTERVAL`]), so a flood of tokens
/// with made-up key IDs costs the issuer at most one fetch per interval. Scheduled
/// refreshes are recorded with [`JwksRefreshGate::record_refresh`] and count too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksRefreshGate {
    interval: i64,
    last_refresh: Option<i64>,
}

impl Default for JwksRefreshGate {
    fn default() -> Self {
        Self::new(DEFAULT_REFRESH_INTERVAL)
    }
}

impl JwksRefreshGate {
    /// A gate allowing one refresh per `interval` (rounded down to whole seconds).
    pub fn new(interval: Duration) -> Self {
        Self {
            interval: i64::try_from(interval.as_secs()).unwrap_or(i64::MAX),
            last_refresh: None,
        }
    }

    /// The configured interval, seconds.
    pub fn interval_secs(&self) -> i64 {
        self.interval
    }

    /// A token named key `kid`, which the cached JWKS does not have: may the JWKS be
    /// refreshed now? When allowed, the refresh is recorded as happening at `now`
    /// (whatever the fetch's outcome, so a failing issuer is not hammered either).
    /// The `kid` is only for the caller's log; the limit is per issuer, not per key,
    /// because key IDs are chosen by whoever sends the token.
    pub fn allow_refresh(&mut self, _kid: Option<&str>, now: i64) -> Result<(), RefreshDenied> {
        if let Some(last) = self.last_refresh {
            let since = now.saturating_sub(last);
            // A clock that went backwards does not block refreshes forever.
            if (0..self.interval).contains(&since) {
                return Err(RefreshDenied {
                    since,
                    retry_after: self.interval - since,
                    interval: self.interval,
                });
            }
        }
        self.last_refresh = Some(now);
        Ok(())
    }

    /// Record a refresh made for another reason (start-up, schedule, cache expiry).
    pub fn record_refresh(&mut self, now: i64) {
        self.last_refresh = Some(now);
    }

    /// When the last refresh happened, unix seconds.
    pub fn last_refresh(&self) -> Option<i64> {
        self.last_refresh
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ISS: &str = "https://token.actions.githubusercontent.com";

    fn doc(iss: &str, jwks: &str) -> Vec<u8> {
        serde_json::json!({"issuer": iss, "jwks_uri": jwks,
            "id_token_signing_alg_values_supported": ["RS256"]})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn parses_a_discovery_document() {
        let d = DiscoveryDocument::parse(
            &doc(ISS, &format!("{ISS}/.well-known/jwks")),
            ISS,
            UrlPolicy::HttpsOnly,
        )
        .unwrap();
        assert_eq!(d.issuer, ISS);
        assert_eq!(d.jwks_uri, format!("{ISS}/.well-known/jwks"));
        assert_eq!(d.signing_algs, ["RS256"]);
    }

    #[test]
    fn the_issuer_must_match_exactly() {
        for other in [
            "https://token.actions.githubusercontent.com/",
            "https://evil.example",
            "HTTPS://token.actions.githubusercontent.com",
        ] {
            let e =
                DiscoveryDocument::parse(&doc(other, "https://x/jwks"), ISS, UrlPolicy::HttpsOnly)
                    .unwrap_err();
            assert!(
                matches!(e, DiscoveryError::IssuerMismatch { .. }),
                "{other}"
            );
        }
    }

    #[test]
    fn refuses_missing_members_and_non_json() {
        assert!(matches!(
            DiscoveryDocument::parse(b"nope", ISS, UrlPolicy::HttpsOnly),
            Err(DiscoveryError::NotJson(_))
        ));
        assert!(matches!(
            DiscoveryDocument::parse(b"[]", ISS, UrlPolicy::HttpsOnly),
            Err(DiscoveryError::NotJson(_))
        ));
        assert_eq!(
            DiscoveryDocument::parse(br#"{"jwks_uri":"https://x"}"#, ISS, UrlPolicy::HttpsOnly),
            Err(DiscoveryError::Missing("issuer"))
        );
        let no_jwks = serde_json::json!({ "issuer": ISS }).to_string();
        assert_eq!(
            DiscoveryDocument::parse(no_jwks.as_bytes(), ISS, UrlPolicy::HttpsOnly),
            Err(DiscoveryError::Missing("jwks_uri"))
        );
        let big = vec![b' '; MAX_DISCOVERY_BYTES + 1];
        assert!(matches!(
            DiscoveryDocument::parse(&big, ISS, UrlPolicy::HttpsOnly),
            Err(DiscoveryError::TooLarge { .. })
        ));
    }

    #[test]
    fn jwks_uri_must_be_https_unless_loopback_is_allowed() {
        let parse = |jwks: &str, p| DiscoveryDocument::parse(&doc(ISS, jwks), ISS, p);
        assert!(parse("http://keys.example/jwks", UrlPolicy::HttpsOnly).is_err());
        assert!(parse("http://127.0.0.1:8080/jwks", UrlPolicy::HttpsOnly).is_err());
        assert!(
            parse(
                "http://127.0.0.1:8080/jwks",
                UrlPolicy::AllowInsecureLoopback
            )
            .is_ok()
        );
        assert!(parse("http://localhost/jwks", UrlPolicy::AllowInsecureLoopback).is_ok());
        assert!(parse("http://[::1]:9/jwks", UrlPolicy::AllowInsecureLoopback).is_ok());
        let e = parse("http://keys.example/jwks", UrlPolicy::AllowInsecureLoopback).unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        let e = parse("http://keys.example/jwks", UrlPolicy::HttpsOnly).unwrap_err();
        assert!(e.to_string().contains("https://"), "{e}");
    }

    #[test]
    fn url_checks() {
        let ok = |u: &str| check_url("u", u, UrlPolicy::HttpsOnly).is_ok();
        assert!(ok("https://example.com"));
        assert!(ok("https://example.com:8443/a/b?c#d"));
        assert!(ok("HTTPS://Example.COM/x"));
        assert!(ok("https://[2001:db8::1]:443/x"));
        for bad in [
            "ftp://example.com",
            "example.com/jwks",
            "https://",
            "https:///path",
            "https://user@example.com/",
            "https://good.example@evil.example/",
            "https://exa mple.com/",
            "https://example.com:abc/",
            "https://example.com:/",
            "https://[::1/",
            "https://ex_ample.com/",
            "https://example.com/\n",
            "//example.com",
        ] {
            assert!(!ok(bad), "{bad}");
        }
        assert!(!is_loopback("127.0.0.1.evil.com"));
        assert!(!is_loopback("128.0.0.1"));
        assert!(is_loopback("127.1.2.3"));
    }

    #[test]
    fn discovery_urls() {
        assert_eq!(
            discovery_url(ISS, UrlPolicy::HttpsOnly).unwrap(),
            format!("{ISS}/.well-known/openid-configuration")
        );
        assert_eq!(
            discovery_url("https://sts.windows.net/t/", UrlPolicy::HttpsOnly).unwrap(),
            "https://sts.windows.net/t/.well-known/openid-configuration"
        );
        assert!(discovery_url("http://gitlab.example", UrlPolicy::HttpsOnly).is_err());
        assert!(discovery_url("https://a.example?x=1", UrlPolicy::HttpsOnly).is_err());
    }

    #[test]
    fn refresh_gate_allows_one_refresh_per_interval() {
        let mut g = JwksRefreshGate::default();
        assert_eq!(g.interval_secs(), 30);
        assert!(g.allow_refresh(Some("a"), 1000).is_ok());
        let denied = g.allow_refresh(Some("b"), 1010).unwrap_err();
        assert_eq!(
            denied,
            RefreshDenied {
                since: 10,
                retry_after: 20,
                interval: 30
            }
        );
        assert!(denied.to_string().contains("20s"));
        // A storm of different unknown kids inside the interval: all denied.
        for i in 0..100 {
            assert!(g.allow_refresh(Some(&format!("k{i}")), 1029).is_err());
        }
        assert!(g.allow_refresh(None, 1030).is_ok());
        assert_eq!(g.last_refresh(), Some(1030));
        g.record_refresh(2000);
        assert!(g.allow_refresh(Some("c"), 2001).is_err());
        // Clock moved backwards: do not block forever.
        assert!(g.allow_refresh(Some("c"), 1500).is_ok());
        let mut g = JwksRefreshGate::new(Duration::ZERO);
        assert!(g.allow_refresh(None, 1).is_ok());
        assert!(g.allow_refresh(None, 1).is_ok());
    }
}
