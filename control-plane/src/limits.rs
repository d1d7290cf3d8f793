//! Connection limits: how many TCP connections the server holds in all and per client
//! address. A connection over a limit is closed as soon as it is accepted, before its TLS
//! handshake, so clients that open connections and never finish a request cannot use up
//! the process's file descriptors; connections already held (agents' long polls) are not
//! affected. Time limits (TLS handshake, request head, body) are set where the server is
//! built ([`crate::server::Server::run`]).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Descriptors kept free for everything that is not a client connection: the store, its
/// journal, log output, the listener, a burst of accepts being refused.
pub const RESERVED_FDS: u64 = 256;

/// The default total: below the open-files limit by [`RESERVED_FDS`], at least 64.
pub fn default_max_connections(open_files_limit: u64) -> usize {
    open_files_limit.saturating_sub(RESERVED_FDS).max(64) as usize
}

/// Counts of connections held, in all and per client address.
#[derive(Debug)]
pub struct Limits {
    max_total: usize,
    max_per_peer: usize,
    held: Mutex<Held>,
    refused: AtomicU64,
    last_warned: Mutex<Option<Instant>>,
    start: Instant,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

impl Limits {
    /// Limits of `max_total` connections, `max_per_peer` of them from one address.
    pub fn new(max_total: usize, max_per_peer: usize) -> Arc<Limits> {
        Arc::new(Limits {
            max_total: max_total.max(1),
            max_per_peer: max_per_peer.max(1),
            held: Mutex::new(Held::default()),
            refused: AtomicU64::new(0),
            last_warned: Mutex::new(None),
            start: Instant::now(),
        })
    }

    /// The total limit.
    pub fn max_total(&self) -> usize {
        self.max_total
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    /// Connections refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Take a place for a connection from `peer`, or say which limit it is over.
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, &'static str> {
        let mut h = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if h.total >= self.max_total {
            return Err("total");
        }
        let n = h.per_peer.entry(peer).or_insert(0);
        if *n >= self.max_per_peer {
            return Err("per-peer");
        }
        *n += 1;
        h.total += 1;
        Ok(Slot {
            limits: self.clone(),
            peer,
        })
    }

    fn release(&self, peer: IpAddr) {
        let mut h = self.held.lock().unwrap_or_else(|p| p.into_inner());
        h.total = h.total.saturating_sub(1);
        if let Some(n) = h.per_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                h.per_peer.remove(&peer);
            }
        }
    }

    /// One warning per second at most, with the count refused since the last one.
    fn warn_refused(&self, peer: SocketAddr, which: &str) {
        let total = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_warned.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t).as_secs() < 1) {
            return;
        }
        *last = Some(now);
        let (limit, held) = match which {
            "total" => (self.max_total, self.held()),
            _ => (self.max_per_peer, {
                let h = self.held.lock().unwrap_or_else(|p| p.into_inner());
                h.per_peer.get(&peer.ip()).copied().unwrap_or(0)
            }),
        };
        tracing::warn!(
            %peer,
            limit_kind = which,
            limit,
            held,
            refused_since_start = total,
            uptime_s = self.start.elapsed().as_secs(),
            "connection refused: over the {which} connection limit"
        );
    }
}

/// A connection's place; given back when the connection is dropped.
#[derive(Debug)]
struct Slot {
    limits: Arc<Limits>,
    peer: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.release(self.peer);
    }
}

/// A TCP stream that holds its place in the [`Limits`] for as long as it lives.
#[derive(Debug)]
pub struct Counted {
    inner: TcpStream,
    _slot: Slot,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The acceptor that applies [`Limits`] (inside the TLS acceptor: before the handshake).
#[derive(Debug, Clone)]
pub struct LimitAcceptor(pub Arc<Limits>);

impl<S> axum_server::accept::Accept<TcpStream, S> for LimitAcceptor {
    type Stream = Counted;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Counted, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let peer = match stream.peer_addr() {
            Ok(p) => p,
            Err(e) => return std::future::ready(Err(e)),
        };
        std::future::ready(match self.0.admit(peer.ip()) {
            Ok(slot) => {
                let _ = stream.set_nodelay(true);
                Ok((
                    Counted {
                        inner: stream,
                        _slot: slot,
                    },
                    service,
                ))
            }
            Err(which) => {
                self.0.warn_refused(peer, which);
                Err(io::Error::other(format!(
                    "over the {which} connection limit"
                )))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_and_given_back() {
        let l = Limits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = l.admit(a).unwrap();
        let _a2 = l.admit(a).unwrap();
        assert_eq!(l.admit(a).unwrap_err(), "per-peer");
        let b1 = l.admit(b).unwrap();
        assert_eq!(l.admit(b).unwrap_err(), "total");
        assert_eq!(l.held(), 3);
        drop(a1);
        let _a3 = l.admit(a).unwrap();
        drop(b1);
        assert_eq!(l.held(), 2);
        assert!(!l.held.lock().unwrap().per_peer.contains_key(&b));
    }

    #[test]
    fn the_default_total_stays_below_the_open_files_limit() {
        assert_eq!(default_max_connections(1024), 768);
        assert_eq!(default_max_connections(100), 64);
        assert_eq!(default_max_connections(1 << 20), (1 << 20) - 256);
    }
}
