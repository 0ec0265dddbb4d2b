//! Accepting connections without spinning and without running out of descriptors.
//!
//! Owns the open-connection cap (`[server] max_connections`: a semaphore whose permit each
//! connection task holds until it ends; at the cap, new connections wait in the kernel's
//! listen backlog) and the back-off when `accept` fails for lack of resources (EMFILE,
//! ENFILE, ENOBUFS, ENOMEM): tokio's listener stays readable while the backlog is full, so
//! retrying at once would spin a core. Each episode (cap reached, accepts failing) is logged
//! once when it starts and once when it ends. It does not own what a connection does.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors kept back from the connection budget: state files, the admin listener, DNS,
/// `exec` SecretRefs, logs.
const RESERVED_FDS: u64 = 64;

/// The largest default cap, whatever the descriptor limit.
const MAX_DEFAULT_CONNECTIONS: u64 = 1 << 20;

/// First pause after a failed accept, doubled up to [`MAX_BACKOFF`] (Go's `net/http`
/// uses the same 5 ms → 1 s ladder).
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Raises the soft open-file limit to the hard one (best effort), as Go's runtime and
/// nginx's `worker_rlimit_nofile` do: Debian's soft default of 1024 would otherwise cap a
/// proxy at a few hundred connections. Returns the soft limit now in force.
pub fn raise_nofile_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if let (Some(cur), Some(max)) = (lim.current, lim.maximum) {
        if cur < max {
            lim.current = Some(max);
            if setrlimit(Resource::Nofile, lim).is_err() {
                lim.current = Some(cur);
            }
        }
    }
    lim.current
}

/// The default `max_connections` for an open-file limit of `nofile` (`None`: unlimited):
/// half of what is left after [`RESERVED_FDS`] (a client connection may need an upstream
/// one), at least 8.
pub fn default_max_connections(nofile: Option<u64>) -> usize {
    let Some(nofile) = nofile else {
        return MAX_DEFAULT_CONNECTIONS as usize;
    };
    let reserved = RESERVED_FDS.min(nofile / 4);
    let n = (nofile.saturating_sub(reserved) / 2).clamp(8, MAX_DEFAULT_CONNECTIONS);
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The cap in force: configured, or sized from the current soft limit.
pub fn max_connections(configured: Option<usize>) -> usize {
    configured.unwrap_or_else(|| {
        default_max_connections(
            rustix::process::getrlimit(rustix::process::Resource::Nofile).current,
        )
    })
}

/// An accepted connection and the `max_connections` slot it holds until it ends.
pub(super) struct Accepted {
    pub(super) stream: TcpStream,
    pub(super) peer: SocketAddr,
    pub(super) slot: OwnedSemaphorePermit,
}

/// One listener's accept loop state.
pub(super) struct Acceptor {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    max: usize,
    name: &'static str,
    /// Consecutive failed accepts of the current episode (0: none).
    failures: u64,
    backoff: Duration,
    /// The cap was reached and not yet left.
    capped: bool,
}

impl Acceptor {
    pub(super) fn new(listener: TcpListener, max: usize, name: &'static str) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(max)),
            max,
            name,
            failures: 0,
            backoff: FIRST_BACKOFF,
            capped: false,
        }
    }

    /// The next connection and the slot it holds until it ends. Cancel-safe: dropping the
    /// future loses no connection (tokio's `accept` is cancel-safe) and keeps the episode
    /// state.
    pub(super) async fn next(&mut self) -> Accepted {
        loop {
            let slot = match self.slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    // Left the cap once a tenth of the slots are free again: a pool that
                    // hovers at its cap logs one episode, not one line per connection.
                    if self.capped && self.slots.available_permits() >= self.max / 10 {
                        self.capped = false;
                        tracing::info!(
                            listener = self.name,
                            max_connections = self.max,
                            "open connections below max_connections again"
                        );
                    }
                    slot
                }
                Err(_) => {
                    if !self.capped {
                        self.capped = true;
                        tracing::warn!(
                            listener = self.name,
                            max_connections = self.max,
                            "max_connections reached: new connections wait in the listen backlog until one closes ([server] max_connections)"
                        );
                    }
                    match self.slots.clone().acquire_owned().await {
                        Ok(slot) => slot,
                        // Never closed; if it were, waiting beats spinning.
                        Err(_) => std::future::pending().await,
                    }
                }
            };
            if self.failures > 0 {
                tokio::time::sleep(self.backoff).await;
            }
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    if self.failures > 0 {
                        tracing::info!(
                            listener = self.name,
                            failed_accepts = self.failures,
                            "accepting connections again"
                        );
                        self.failures = 0;
                        self.backoff = FIRST_BACKOFF;
                    }
                    return Accepted { stream, peer, slot };
                }
                // The peer gave up between SYN and accept: nothing wrong here.
                Err(e) if per_connection(&e) => {}
                Err(e) => {
                    if self.failures == 0 {
                        tracing::warn!(
                            listener = self.name,
                            error = %e,
                            max_connections = self.max,
                            "accept failed: backing off until descriptors or memory free up (lower [server] max_connections or raise the open-file limit)"
                        );
                    } else {
                        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    }
                    self.failures += 1;
                }
            }
        }
    }
}

/// Errors that concern one incoming connection only, retried at once.
fn per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_cap_leaves_room_for_upstream_connections_and_files() {
        assert_eq!(default_max_connections(Some(1024)), 480);
        assert_eq!(default_max_connections(Some(64)), 24);
        assert_eq!(default_max_connections(Some(10)), 8);
        assert_eq!(default_max_connections(Some(1 << 40)), 1 << 20);
        assert_eq!(default_max_connections(None), 1 << 20);
    }

    #[test]
    fn only_peer_errors_are_retried_at_once() {
        assert!(per_connection(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
        assert!(!per_connection(&io::Error::from_raw_os_error(24))); // EMFILE
        assert!(!per_connection(&io::Error::from_raw_os_error(23))); // ENFILE
    }
}
