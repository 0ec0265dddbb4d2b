//! Raw HTTP/1.1 on both sides of keygate, for bytes a well-behaved HTTP library will not
//! write.
//!
//! Upstream side, [`RawUpstream`]: answers each request with scripted bytes, written as
//! they are, for answers a library refuses to produce (a `101` to a plain request, a `204`
//! with `content-length: 5`). Each request (head plus a `content-length` body) gets the next
//! scripted answer, the last one repeating; connections stay open (keep-alive) until the
//! peer closes them. The server task is aborted on drop.
//!
//! Client side: a request written by hand ([`raw_get`], [`read_to_close`]) and a connection
//! that has sent only the first byte of its request ([`connect_and_send_p`],
//! [`FirstByteSent`]). Every wait is bounded.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use super::keygate::Keygate;

/// A running raw upstream.
pub struct RawUpstream {
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    task: AbortHandle,
}

impl RawUpstream {
    /// Binds `127.0.0.1:0`; request `n` (0-based, across connections) gets
    /// `script[min(n, len - 1)]`.
    pub async fn start(script: Vec<Vec<u8>>) -> RawUpstream {
        Self::spawn(script, false).await
    }

    /// [`RawUpstream::start`], closing each connection right after its answer (an answer
    /// shorter than its `content-length` then reaches the client as a broken body).
    pub async fn start_closing(script: Vec<Vec<u8>>) -> RawUpstream {
        Self::spawn(script, true).await
    }

    async fn spawn(script: Vec<Vec<u8>>, close: bool) -> RawUpstream {
        assert!(!script.is_empty(), "raw upstream needs an answer");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("raw: bind");
        let addr = listener.local_addr().expect("raw: addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(script);
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        conns.spawn(serve(stream, script.clone(), counter.clone(), close));
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        RawUpstream {
            addr,
            requests,
            task: task.abort_handle(),
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut s: TcpStream,
    script: Arc<Vec<Vec<u8>>>,
    counter: Arc<AtomicUsize>,
    close: bool,
) {
    let mut buf = Vec::new();
    loop {
        let Some(head_end) = read_until_head(&mut s, &mut buf).await else {
            return;
        };
        let len = content_length(&buf[..head_end]);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        }
        buf.drain(..head_end + len);
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let answer = &script[n.min(script.len() - 1)];
        if s.write_all(answer).await.is_err() || close {
            return;
        }
    }
}

/// Reads until `buf` holds a complete head; returns the offset just past it. `None` when
/// the peer closed (or nothing came within 30 s).
async fn read_until_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(Duration::from_secs(30), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// The `content-length` of a head (0 when absent).
pub fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Reads until the peer closes (bounded to 10 s); the bytes as text.
pub async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET path` with `token` as `x-api-key`, written as it is (no client normalises the path),
/// `connection: close`; the whole answer as text.
pub async fn raw_get(addr: SocketAddr, path: &str, token: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: x\r\nx-api-key: {token}\r\nconnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    read_to_close(&mut s).await
}

/// A connection to keygate that has sent only `P`, which could begin either an HTTP/1.1
/// `POST` or the HTTP/2 preface (`PRI * HTTP/2.0`): keygate must wait for more before it
/// chooses.
pub async fn connect_and_send_p(kg: &Keygate) -> TcpStream {
    let mut s = TcpStream::connect(kg.addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.write_all(b"P").await.expect("write");
    tokio::time::sleep(Duration::from_millis(30)).await;
    s
}

/// A connection whose first byte has already been written by hand: the HTTP/2 client's
/// own first byte (the `P` of its preface) is swallowed instead of sent twice.
pub struct FirstByteSent {
    pub inner: TcpStream,
    pub skipped: bool,
}

impl tokio::io::AsyncRead for FirstByteSent {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for FirstByteSent {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.skipped || buf.is_empty() {
            return std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        assert_eq!(buf[0], b'P', "the HTTP/2 preface starts with P");
        if buf.len() == 1 {
            self.skipped = true;
            return std::task::Poll::Ready(Ok(1));
        }
        match std::pin::Pin::new(&mut self.inner).poll_write(cx, &buf[1..]) {
            std::task::Poll::Ready(Ok(n)) => {
                self.skipped = true;
                std::task::Poll::Ready(Ok(n + 1))
            }
            other => other,
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
