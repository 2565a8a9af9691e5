//! Certificates that renew themselves while listeners and clients run.
//!
//! [`RenewingCertificate`] keeps the current leaf behind an [`ArcSwap`].
//! rustls asks its resolver for a certificate at each handshake, so a
//! swapped leaf is used by the next handshake while connections already
//! open keep the keys they negotiated: nothing restarts and nothing drops.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::IdentityError;
use crate::issue::IssuedLeaf;

/// Shortest wait between two renewal attempts: 1 s.
const MIN_RETRY: Duration = Duration::from_secs(1);
/// Longest wait between two failed renewal attempts: 30 s.
const MAX_RETRY: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Active {
    key: Arc<CertifiedKey>,
    serial: String,
    not_before: SystemTime,
    not_after: SystemTime,
}

/// The current leaf of a listener or client, replaceable at any time.
#[derive(Debug)]
pub struct RenewingCertificate {
    current: ArcSwap<Active>,
}

impl RenewingCertificate {
    /// Starts with `leaf`.
    pub fn new(leaf: &IssuedLeaf) -> Result<Arc<Self>, IdentityError> {
        Ok(Arc::new(Self { current: ArcSwap::from_pointee(active(leaf)?) }))
    }

    /// Replaces the current leaf; the next handshake uses `leaf`.
    pub fn replace(&self, leaf: &IssuedLeaf) -> Result<(), IdentityError> {
        let next = active(leaf)?;
        let previous = self.current.swap(Arc::new(next));
        tracing::info!(identity = %leaf.identity(), serial = %leaf.serial(), previous = %previous.serial, "certificate replaced");
        Ok(())
    }

    /// Serial of the current leaf, lowercase hex.
    pub fn serial(&self) -> String {
        self.current.load().serial.clone()
    }

    /// The time at which the current leaf is due for renewal: `renew_at`
    /// (a fraction in 0..1) of the way from its validity start to its end.
    pub fn renewal_due(&self, renew_at: f64) -> SystemTime {
        let current = self.current.load();
        let life = current.not_after.duration_since(current.not_before).unwrap_or_default();
        current.not_before + life.mul_f64(renew_at.clamp(0.0, 1.0))
    }

    /// Starts a task that renews the leaf at `renew_at` of each leaf's
    /// lifetime by calling `issue` (for example a closure around
    /// [`crate::PlatformCa::issue_and_record`]), until the returned guard
    /// is dropped. A failed attempt is retried after a tenth of the time
    /// left, between 1 s and 30 s, so the old leaf is not allowed to lapse
    /// quietly; every failure is logged.
    pub fn spawn_renewal<F, Fut>(self: &Arc<Self>, renew_at: f64, issue: F) -> RenewalGuard
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<IssuedLeaf, IdentityError>> + Send,
    {
        let this = Arc::clone(self);
        let task = tokio::spawn(async move {
            loop {
                let due = this.renewal_due(renew_at);
                let wait = due.duration_since(SystemTime::now()).unwrap_or_default();
                tokio::time::sleep(wait).await;

                let mut attempt: u32 = 0;
                loop {
                    attempt += 1;
                    match issue().await.and_then(|leaf| this.replace(&leaf)) {
                        Ok(()) => break,
                        Err(error) => {
                            let left =
                                this.current.load().not_after.duration_since(SystemTime::now()).unwrap_or_default();
                            let retry = (left / 10).clamp(MIN_RETRY, MAX_RETRY);
                            tracing::warn!(%error, attempt, serial = %this.serial(), retry_in_s = retry.as_secs(), "certificate renewal failed");
                            tokio::time::sleep(retry).await;
                        }
                    }
                }
            }
        });
        RenewalGuard { task }
    }
}

fn active(leaf: &IssuedLeaf) -> Result<Active, IdentityError> {
    Ok(Active {
        key: Arc::new(leaf.certified_key()?),
        serial: leaf.serial().to_owned(),
        not_before: leaf.not_before(),
        not_after: leaf.not_after(),
    })
}

impl ResolvesServerCert for RenewingCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.load().key))
    }
}

impl ResolvesClientCert for RenewingCertificate {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.load().key))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Stops the renewal task when dropped.
#[derive(Debug)]
pub struct RenewalGuard {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RenewalGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}
