//! Runtime authorization, transport-free, shared by the Lanyard server (AuthZEN,
//! Envoy ext_authz, the token endpoint) and the agent (AuthZEN for local decisions):
//!
//! * [`decision`]: the question and its answer, one evaluation over the facts a
//!   decision point has ([`decision::Sources`]), caller authentication by JWT-SVID,
//!   and the evidence-log event that records a decision.
//! * [`token`]: verification of the tokens the server's token endpoint signs (task
//!   and exchanged tokens) with the public token key.
//! * [`http`]: the OpenID AuthZEN 1.0 evaluation API over any [`http::Pdp`].
//!
//! The server and the agent differ only in where the facts come from (the
//! datastore, or what the server synced to the agent) and where the evidence goes.

pub mod decision;
pub mod http;
pub mod token;

pub use decision::{
    AuthnError, Callers, DecideError, DecisionOut, DecisionRecord, Question, Sources, TaskError,
    Unavailable, WorkloadIndex, decide,
};
pub use token::{TokenError, TokenVerifier, verify_task};
