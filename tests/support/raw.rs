//! A raw HTTP/1.1 upstream: answers each request with scripted bytes, written as they are.
//!
//! For answers a well-behaved HTTP library refuses to produce (a `101` to a plain request,
//! a `204` with `content-length: 5`). Each request (head plus a `content-length` body) gets
//! the next scripted answer, the last one repeating; connections stay open (keep-alive)
//! until the peer closes them. Every wait is bounded; the server task is aborted on drop.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

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
