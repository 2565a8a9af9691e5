//! Connecting to the addresses a decision checked, and to nothing else.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use crate::decision::CheckedTarget;
use crate::error::EgressError;

/// Opens a TCP connection to the first of the target's checked addresses
/// that accepts, trying them in order, and returns it with that address,
/// which saves asking the kernel for the peer address again. `timeout` (the configured
/// `egress.connect_timeout`) bounds all attempts together. Each attempt
/// gets an equal share of the time left, so an address that drops SYN
/// packets cannot use up the whole timeout before the others are tried.
///
/// No name is resolved here: the addresses are those the engine checked,
/// so a DNS answer that changes after the decision (DNS rebinding) cannot
/// change where the connection goes.
pub async fn connect(target: &CheckedTarget, timeout: Duration) -> Result<(TcpStream, SocketAddr), EgressError> {
    let deadline = Instant::now() + timeout;
    let addresses = target.addresses();
    let mut last_error = None;

    for (index, &address) in addresses.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempts_left = (addresses.len() - index) as u32;
        let attempt_deadline = Instant::now() + left / attempts_left;
        match timeout_at(attempt_deadline, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => return Ok((stream, address)),
            Ok(Err(source)) => last_error = Some(EgressError::Connect { address, source }),
            Err(_) => last_error = Some(EgressError::ConnectTimeout { address, timeout }),
        }
    }

    Err(last_error.expect("a checked target has at least one address"))
}
