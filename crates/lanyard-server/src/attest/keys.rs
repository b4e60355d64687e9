//! An issuer's signing keys for the token attestors (`jwt`, `k8s_psat`): from a
//! JWKS file, or fetched over HTTPS through the issuer's OIDC discovery document.
//!
//! Keys are cached in memory. A token naming a key the cache lacks refreshes it,
//! at most once per [`JwksRefreshGate`] interval (so made-up key IDs cannot cause a
//! refresh storm); fetched keys are also refreshed on a schedule. A failed refresh
//! keeps the last good keys; an issuer that never answered has no keys, so its
//! tokens are refused (fail closed) with the fetch error in the message.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use lanyard_core::Clock;
use lanyard_nodeattest::discovery::{DEFAULT_REFRESH_INTERVAL, check_url, discovery_url};
use lanyard_nodeattest::jwks::MAX_JWKS_BYTES;
use lanyard_nodeattest::{DiscoveryDocument, Jwks, JwksRefreshGate, UrlPolicy};
use lanyard_tls::http::{HttpClient, HttpRequest};

use super::AttestError;
use crate::state::ServerError;

/// How often fetched keys are refreshed without being asked (config
/// `jwks_refresh_interval`).
pub const DEFAULT_SCHEDULED_REFRESH: Duration = Duration::from_secs(5 * 60);

/// Where the keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A JWKS file, re-read on refresh.
    File(PathBuf),
    /// The issuer's discovery document (`discovery_url`), then its `jwks_uri`.
    Discovery {
        issuer: String,
        discovery_url: String,
        http: HttpClient,
    },
}

impl KeySource {
    /// OIDC discovery of `issuer` (at `discovery_url`, default the issuer's
    /// well-known URL), over HTTPS only.
    pub fn discovery(
        issuer: &str,
        discovery_url_override: Option<&str>,
        http: HttpClient,
    ) -> Result<Self, String> {
        let url = match discovery_url_override {
            Some(u) => {
                check_url("discovery_url", u, UrlPolicy::HttpsOnly).map_err(|e| e.to_string())?;
                u.to_string()
            }
            None => discovery_url(issuer, UrlPolicy::HttpsOnly).map_err(|e| e.to_string())?,
        };
        Ok(Self::Discovery {
            issuer: issuer.to_string(),
            discovery_url: url,
            http,
        })
    }

    fn describe(&self) -> String {
        match self {
            Self::File(p) => format!("the JWKS file {}", p.display()),
            Self::Discovery { discovery_url, .. } => format!("discovery at {discovery_url}"),
        }
    }
}

#[derive(Debug)]
struct State {
    jwks: Arc<Jwks>,
    gate: JwksRefreshGate,
    /// Why the last fetch failed, while it keeps failing.
    last_error: Option<String>,
    /// Whether keys were ever loaded.
    loaded: bool,
}

/// One issuer's keys.
#[derive(Debug)]
pub struct IssuerKeys {
    source: KeySource,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

async fn fetch_json(http: &HttpClient, what: &str, url: &str) -> Result<Vec<u8>, String> {
    let r = http
        .send(HttpRequest::get(url).header("Accept", "application/json"))
        .await
        .map_err(|e| format!("fetching the {what}: {e}"))?;
    if !r.is_success() {
        return Err(format!(
            "fetching the {what} from {url}: HTTP {} ({})",
            r.status,
            r.snippet()
        ));
    }
    Ok(r.body)
}

impl IssuerKeys {
    /// Keys from `source`. A file is read now (an unreadable or invalid file stops
    /// the server, naming it); discovery is fetched in the background (see
    /// [`IssuerKeys::spawn_refresh`]), so a server starts while an issuer is down.
    pub fn new(source: KeySource, clock: Arc<dyn Clock>) -> Result<Self, ServerError> {
        let (jwks, loaded) = match &source {
            KeySource::File(path) => (super::jwt::read_jwks(path)?, true),
            KeySource::Discovery { .. } => (Jwks::from_keys(Vec::new()), false),
        };
        let mut gate = JwksRefreshGate::new(DEFAULT_REFRESH_INTERVAL);
        if loaded {
            gate.record_refresh(clock.unix_seconds());
        }
        Ok(Self {
            source,
            clock,
            state: Mutex::new(State {
                jwks: Arc::new(jwks),
                gate,
                last_error: None,
                loaded,
            }),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, AttestError> {
        self.state
            .lock()
            .map_err(|_| AttestError::Internal("the key cache lock is poisoned".into()))
    }

    /// The cached keys.
    pub fn current(&self) -> Result<Arc<Jwks>, AttestError> {
        Ok(self.lock()?.jwks.clone())
    }

    /// Why there are no keys (the issuer never answered), if so — for refusals.
    pub fn unavailable(&self) -> Option<String> {
        let s = self.state.lock().ok()?;
        if s.loaded {
            return None;
        }
        Some(match &s.last_error {
            Some(e) => {
                format!("the issuer's keys could not be fetched ({e}); the server keeps trying")
            }
            None => format!(
                "the issuer's keys are not fetched yet ({}); try again shortly",
                self.source.describe()
            ),
        })
    }

    async fn fetch(&self) -> Result<Jwks, String> {
        match &self.source {
            KeySource::File(path) => super::jwt::read_jwks(path).map_err(|e| e.to_string()),
            KeySource::Discovery {
                issuer,
                discovery_url,
                http,
            } => {
                let body = fetch_json(http, "discovery document", discovery_url).await?;
                let doc = DiscoveryDocument::parse(&body, issuer, UrlPolicy::HttpsOnly)
                    .map_err(|e| format!("the discovery document at {discovery_url}: {e}"))?;
                let body = fetch_json(
                    &http.clone().with_max_body(MAX_JWKS_BYTES + 1),
                    "JWKS",
                    &doc.jwks_uri,
                )
                .await?;
                Jwks::parse(&body).map_err(|e| format!("the JWKS at {}: {e}", doc.jwks_uri))
            }
        }
    }

    /// Fetch now and keep the result (or the last good keys, logging why).
    async fn refresh_now(&self) -> bool {
        let _one = self.fetching.lock().await;
        match self.fetch().await {
            Ok(jwks) => {
                if let Ok(mut s) = self.state.lock() {
                    if !s.loaded || s.last_error.is_some() {
                        tracing::info!(source = %self.source.describe(), keys = jwks.keys().len(), "token attestor keys loaded");
                    }
                    s.jwks = Arc::new(jwks);
                    s.loaded = true;
                    s.last_error = None;
                }
                true
            }
            Err(e) => {
                tracing::warn!(source = %self.source.describe(), error = %e, "token attestor: key refresh failed; keeping the last good keys");
                if let Ok(mut s) = self.state.lock() {
                    s.last_error = Some(e);
                }
                false
            }
        }
    }

    /// A token named key `kid`, which the cache lacks: refresh if the gate allows;
    /// whether new keys were loaded.
    pub async fn refresh_for_unknown_kid(&self, kid: Option<&str>) -> Result<bool, AttestError> {
        let now = self.clock.unix_seconds();
        if self.lock()?.gate.allow_refresh(kid, now).is_err() {
            return Ok(false);
        }
        Ok(self.refresh_now().await)
    }

    /// Run `attempt` with the cached keys; when it fails for a key the cache lacks
    /// (`wants_refresh`), refresh once if the gate allows and try again. The
    /// verifier's own result, or (outer error) the refusal `keys_unavailable` when
    /// the issuer's keys were never fetched.
    pub async fn verify_with<T, E>(
        &self,
        method: &str,
        kid: Option<&str>,
        wants_refresh: impl Fn(&E) -> bool,
        attempt: impl Fn(&Jwks) -> Result<T, E>,
    ) -> Result<Result<T, E>, AttestError> {
        match attempt(self.current()?.as_ref()) {
            Err(e) if wants_refresh(&e) => {
                if self.refresh_for_unknown_kid(kid).await? {
                    return Ok(attempt(self.current()?.as_ref()));
                }
                match self.unavailable() {
                    Some(why) => Err(AttestError::Evidence {
                        code: "keys_unavailable",
                        message: format!("{method} attestation refused: {why}"),
                        malformed: false,
                    }),
                    None => Ok(Err(e)),
                }
            }
            other => Ok(other),
        }
    }

    /// Refresh on a schedule while `keys` lives: at once, then every `every`
    /// (retrying failures sooner, every 10 s until the first success). Files are
    /// only re-read on unknown key IDs, so this is for fetched keys.
    pub fn spawn_refresh(keys: &Arc<Self>, every: Duration) {
        if matches!(keys.source, KeySource::File(_)) {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(keys);
        tokio::spawn(async move {
            loop {
                let Some(k) = weak.upgrade() else { return };
                let ok = k.refresh_now().await;
                if let Ok(mut s) = k.state.lock() {
                    s.gate.record_refresh(k.clock.unix_seconds());
                }
                let loaded = k.state.lock().map(|s| s.loaded).unwrap_or(false);
                drop(k);
                let wait = if ok || loaded {
                    every
                } else {
                    every.min(Duration::from_secs(10))
                };
                tokio::time::sleep(wait).await;
            }
        });
    }
}

/// The key settings every token attestor table shares, as written: `jwks_file`,
/// or OIDC discovery of the issuer (`discovery_url` overrides where the document
/// is; `ca_file` replaces the system roots for it), and `jwks_refresh_interval`.
#[derive(Debug, Clone, Copy)]
pub struct KeySettings<'a> {
    pub issuer: &'a str,
    pub jwks_file: Option<&'a std::path::Path>,
    pub discovery_url: Option<&'a str>,
    pub ca_file: Option<&'a std::path::Path>,
    pub refresh_interval: Option<&'a str>,
}

/// Validate [`KeySettings`] of table `key`: where keys come from and how often
/// fetched keys are refreshed.
pub fn key_source(
    key: &'static str,
    k: KeySettings<'_>,
) -> Result<(KeySource, Duration), crate::config::ConfigError> {
    let invalid = |reason: String| crate::config::ConfigError::Invalid { key, reason };
    let refresh = match k.refresh_interval {
        Some(text) => {
            let d = lanyard_core::duration::parse_duration(text)
                .map_err(|e| invalid(format!("jwks_refresh_interval: {e}")))?;
            if d < Duration::from_secs(30) || d > Duration::from_secs(24 * 3600) {
                return Err(invalid(format!(
                    "jwks_refresh_interval {text:?} is outside 30s..24h"
                )));
            }
            d
        }
        None => DEFAULT_SCHEDULED_REFRESH,
    };
    match (k.jwks_file, k.discovery_url) {
        (Some(_), Some(_)) => Err(invalid(
            "give `jwks_file` or `discovery_url`, not both".into(),
        )),
        (Some(_), None) if k.ca_file.is_some() => Err(invalid(
            "`ca_file` is for fetching keys over HTTPS; a `jwks_file` needs none".into(),
        )),
        (Some(path), None) => Ok((KeySource::File(path.to_path_buf()), refresh)),
        (None, url) => {
            let roots = match k.ca_file {
                Some(p) => lanyard_tls::http::Roots::PemFile(p.to_path_buf()),
                None => lanyard_tls::http::Roots::System,
            };
            let http = HttpClient::new(&roots).map_err(|e| {
                invalid(format!(
                    "keys are fetched by OIDC discovery (no `jwks_file`), but {e}"
                ))
            })?;
            let source = KeySource::discovery(k.issuer, url, http).map_err(|e| {
                invalid(format!(
                    "keys are fetched by OIDC discovery of the issuer (no `jwks_file`): {e}"
                ))
            })?;
            Ok((source, refresh))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn discovery_is_https_only_and_derives_the_well_known_url() {
        let http = HttpClient::new(&lanyard_tls::http::Roots::Pem(Vec::new()));
        // An empty root set is refused by the client already; build one properly.
        assert!(http.is_err());
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = p.self_signed(&key).unwrap().pem().into_bytes();
        let http = HttpClient::new(&lanyard_tls::http::Roots::Pem(pem)).unwrap();
        let KeySource::Discovery { discovery_url, .. } =
            KeySource::discovery("https://issuer.example/gha/", None, http.clone()).unwrap()
        else {
            unreachable!()
        };
        assert_eq!(
            discovery_url,
            "https://issuer.example/gha/.well-known/openid-configuration"
        );
        let e = KeySource::discovery("http://issuer.example", None, http.clone()).unwrap_err();
        assert!(e.contains("https"), "{e}");
        let e = KeySource::discovery("https://i.example", Some("http://x.example/d"), http)
            .unwrap_err();
        assert!(e.contains("discovery_url"), "{e}");
    }
}
