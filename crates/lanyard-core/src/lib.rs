//! Lanyard's SPIFFE core: identifiers, selectors, SVID validation and trust bundles.
//!
//! This crate does no I/O and has no async runtime: every function is a pure check or
//! conversion, with time supplied through [`clock::Clock`].

pub mod agent_id;
pub mod bundle;
pub mod clock;
pub mod dns;
pub mod duration;
pub mod id;
pub mod jwt;
pub mod selector;
pub mod x509;

pub use agent_id::{AGENT_PATH_PREFIX, AgentIdError, check_agent_id};
pub use bundle::{Bundle, BundleError, BundleSet, JwtAuthority, PublicJwk, X509Authority};
pub use clock::{Clock, FakeClock, SystemClock};
pub use id::{IdError, SpiffeId, TrustDomain};
pub use jwt::{JwtError, JwtSvid};
pub use selector::{Selector, SelectorError};
pub use x509::{Rule, RuleCheck, Severity, X509Error, X509Svid};
