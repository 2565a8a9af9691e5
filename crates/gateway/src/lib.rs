//! The API gateway of Portcullis: the only way from apps to platform
//! services.
//!
//! Every request arrives over mutual TLS from an app certificate the
//! platform issued and pinned, carries an `Authorization: Bearer` token
//! bound to that certificate and issued for the routed service, and must
//! hold the scope of the matched route. The gateway then forwards it over
//! mutual TLS, with its own certificate, to the service.
//!
//! - [`Gateway::new`] and [`Gateway::start`] build and run it;
//!   [`RunningGateway::reload`] swaps routes and limits;
//!   [`RunningGateway::shutdown`] drains it.
//! - [`path`] is the one path rule used for routing, authorisation and the
//!   upstream request.
//! - [`framing`] lists what hyper refuses and what the gateway adds.
//! - [`events`] carries one access event per request to the guard and to
//!   a JSON-lines file.
//!
//! Not provided: WebSocket or other upgrades, `CONNECT`, HTTP/2 without TLS
//! (h2c) to upstreams, response body limits, and a check that an upstream
//! presents the SPIFFE id of the service it is configured for (any
//! certificate from the platform CA is accepted).

mod body;
mod busy_poll;
mod error;
pub mod events;
pub mod framing;
mod h2_watch;
mod head;
mod limits;
pub mod path;
mod pool;
mod proxy;
mod routes;
mod server;
mod spaces;
mod timer;

pub use error::{ErrorSource, GatewayError};
pub use events::{AccessEvent, EventSinks, FLUSH_INTERVAL, FileSink, FileWriter};
pub use limits::{Exceeded, Rate, RateLimits};
pub use pool::DEFAULT_CONNECT_TIMEOUT;
pub use routes::{Route, RouteTable, Upstream};
pub use server::{Gateway, GatewayTls, RunningGateway, ShutdownOutcome};
pub use spaces::AppServices;
