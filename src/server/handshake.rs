//! The start of a connection on a TLS listener (SPEC §12).
//!
//! Owns the TLS handshake under the header deadline (a client that opens TCP or TLS and then
//! stalls is closed like a slow HTTP one), the protocol choice by ALPN (h2 when the client
//! offered it, else HTTP/1.1), a short plain-HTTP answer for a client that sent clear text to
//! the TLS port, and [`Started`], which lets the caller close an h2 connection whose preface
//! has not arrived by the deadline (hyper's h2 handshake has no timeout of its own). It does
//! not own the certificate (see `tls`) nor serving requests (see `server`).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

/// The first byte of a TLS record carrying a handshake message (RFC 8446 §5.1).
const TLS_HANDSHAKE: u8 = 0x16;

/// The answer to clear-text HTTP on the TLS port, as nginx gives one: the client learns why
/// instead of seeing a reset.
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 114\r\n\r\n{\"error\":{\"message\":\"this port speaks HTTPS: use an https:// base URL\",\"type\":\"invalid_request_error\",\"code\":400}}";

pin_project_lite::pin_project! {
    /// A TLS stream that counts the bytes read from it, so that a stalled h2 start can be
    /// told from a started one.
    pub(super) struct Started {
        #[pin]
        inner: TlsStream<TcpStream>,
        read: Arc<AtomicUsize>,
    }
}

/// Handshakes by `deadline`. Returns the stream, whether ALPN chose h2, and the counter of
/// bytes read; `None` when the client went away, sent clear text, failed the handshake (a
/// client certificate missing or refused, too) or stalled past the deadline.
pub(super) async fn accept(
    config: Arc<rustls::ServerConfig>,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    deadline: Instant,
) -> Option<(Started, bool, Arc<AtomicUsize>)> {
    let mut first = [0u8; 1];
    let n = match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(n)) => n,
        Ok(Err(_)) => return None,
        Err(_) => {
            tracing::debug!(%peer, "TLS client silent past the header timeout: closed");
            return None;
        }
    };
    if n == 0 {
        return None;
    }
    if first[0] != TLS_HANDSHAKE {
        if first[0].is_ascii_uppercase() {
            let mut stream = stream;
            // Best effort and bounded: a client that does not read gets nothing more.
            let _ = tokio::time::timeout_at(deadline, async {
                stream.write_all(PLAIN_HTTP_ANSWER).await?;
                stream.shutdown().await
            })
            .await;
        }
        tracing::debug!(%peer, "clear text on the TLS port: closed");
        return None;
    }
    let handshake = tokio_rustls::TlsAcceptor::from(config).accept(stream);
    let tls = match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            // rustls errors name the failed check, never key material.
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake not done by the header timeout: closed");
            return None;
        }
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let read = Arc::new(AtomicUsize::new(0));
    let started = Started {
        inner: tls,
        read: read.clone(),
    };
    Some((started, h2, read))
}

/// Resolves at `deadline` if fewer than `need` bytes have been read by then; never otherwise.
pub(super) async fn stalled(read: Arc<AtomicUsize>, need: usize, deadline: Instant) {
    tokio::time::sleep_until(deadline).await;
    if read.load(Ordering::Relaxed) >= need {
        std::future::pending::<()>().await;
    }
}

// === impl Started ===

impl AsyncRead for Started {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        let got = buf.filled().len() - before;
        if got > 0 {
            this.read.fetch_add(got, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Started {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
