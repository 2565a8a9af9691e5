//! The Portcullis egress proxy: its decision engine and its server.
//!
//! Given an app, a requested host and a port, [`Engine::decide`] returns a
//! [`Decision`]. It holds a verdict, a stable reason code with a message and
//! the id of the rule that decided. For a permitted connection it also holds
//! the exact socket addresses that were checked. [`connect`] connects only to those
//! addresses, so a second DNS answer cannot redirect the connection.
//!
//! What the engine does:
//! - parses hosts as HTTP clients do, including IPv4 literals such as
//!   `0x7f.1` or `2130706433` and bracketed IPv6 with a zone id
//!   ([`Host::parse`]);
//! - matches names against the platform's, the space's and the app's
//!   allow-lists and the platform's deny-list ([`EgressRules`],
//!   [`AppRules`]);
//! - resolves names itself through an injectable [`Resolve`], refusing the
//!   whole answer if any address is special-purpose ([`special`]);
//! - applies an optional country rule from a MaxMind-format database;
//! - counts tunnels and bytes per app and caps bytes per hour
//!   ([`TunnelCounter`], [`ByteCounter`], [`ByteCap`]);
//! - describes each decision as an [`EgressEvent`];
//! - counts decisions and bytes for Prometheus ([`EgressMetrics`]).
//!
//! The server in [`proxy`] accepts CONNECT and absolute-form HTTP requests,
//! identifies the calling app by its proxy secret, asks the engine, and
//! copies bytes only to the addresses the engine checked.

mod connect;
mod country;
mod decision;
mod engine;
mod error;
mod event;
mod host;
mod limits;
mod metrics;
mod pattern;
pub mod proxy;
mod resolve;
mod rules;
pub mod special;

pub use connect::connect;
pub use country::CountryDb;
pub use decision::{
    BANNED_RULE, BYTE_LIMIT_RULE, CheckedTarget, Decision, INVALID_TARGET_RULE, NO_RULES_RULE, ReasonCode,
    TUNNEL_LIMIT_RULE, Verdict,
};
pub use engine::Engine;
pub use error::{EgressError, HostError};
pub use event::EgressEvent;
pub use host::{Host, MAX_LABEL_LEN, MAX_NAME_LEN, split_authority};
pub use limits::{
    AppBytes, AppUsage, BYTE_CAP_PERIOD, ByteAccounting, ByteCap, ByteCounter, CapWatch, Direction, TunnelCounter,
    TunnelGuard,
};
pub use metrics::{ByteLabels, DecisionLabels, EgressMetrics};
pub use pattern::{covers, matches, parse_pattern};
pub use resolve::{HickoryResolver, PinnedResolver, Resolve, ResolveFuture, StaticResolver};
pub use rules::{AppRules, EgressRules};
