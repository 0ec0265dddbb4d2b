//! Response bodies: keygate's own small answers, and upstream streams passed through.
//!
//! Owns [`ProxyBody`]: a full body for local answers, or an upstream `Incoming` passed on
//! frame by frame (never collected), bounded by the request deadline. Frames held back
//! while deciding whether to retry (the stream commit point) are replayed first. When the
//! upstream breaks after bytes have reached the client, the stream ends with a
//! protocol-correct error event followed by a body error, never a clean end of stream.
//! It does not own classification (see `classify`); it only hands frames to an observer.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// The boxed error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a passed-through stream ended, reported once to its [`Observer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The upstream finished the body.
    Complete,
    /// The upstream broke (reset, read error).
    UpstreamError,
    /// `request_timeout` elapsed mid-stream.
    Deadline,
    /// The client went away before the end.
    ClientGone,
}

/// Watches a passed-through stream without copying it.
pub trait Observer: Send + 'static {
    /// Sees each data frame by reference.
    fn frame(&mut self, data: &Bytes);
    /// Called exactly once, when the stream ends or is dropped.
    fn end(&mut self, end: StreamEnd);
}

pin_project! {
    /// The body of every response keygate sends.
    pub struct ProxyBody {
        #[pin]
        kind: Kind,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind {
        Full { data: Option<Bytes> },
        Upstream { #[pin] inner: Passthrough },
    }
}

pin_project! {
    /// An upstream body passed on frame by frame until a deadline.
    pub struct Passthrough {
        held: VecDeque<Bytes>,
        #[pin]
        inner: Incoming,
        #[pin]
        deadline: Sleep,
        // Sent to the client when the upstream breaks after commit (no silent truncation).
        error_event: Option<Bytes>,
        observer: Option<Box<dyn Observer>>,
        state: State,
    }

    impl PinnedDrop for Passthrough {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(mut o) = this.observer.take() {
                o.end(StreamEnd::ClientGone);
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Streaming,
    // The error event has been handed to hyper; yield once so it is flushed to the socket
    // before the body fails (a failing body makes hyper drop the connection at once).
    Flushing(StreamEnd),
    // The next poll fails the body.
    Failing(StreamEnd),
    Done,
}

// === impl ProxyBody ===

impl ProxyBody {
    /// A complete body.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        ProxyBody {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        ProxyBody {
            kind: Kind::Full { data: None },
        }
    }

    /// An upstream stream: `held` frames first, then the rest of `inner`, until `deadline`.
    /// `error_event` is sent if the upstream breaks (SSE streams); `observer` sees frames.
    pub fn upstream(
        held: VecDeque<Bytes>,
        inner: Incoming,
        deadline: Instant,
        error_event: Option<Bytes>,
        observer: Option<Box<dyn Observer>>,
    ) -> Self {
        ProxyBody {
            kind: Kind::Upstream {
                inner: Passthrough {
                    held,
                    inner,
                    deadline: tokio::time::sleep_until(deadline),
                    error_event,
                    observer,
                    state: State::Streaming,
                },
            },
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Upstream { inner } => inner.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data } => data.is_none(),
            Kind::Upstream { inner } => inner.state == State::Done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Upstream { inner } => {
                if inner.state != State::Streaming || !inner.held.is_empty() {
                    SizeHint::default()
                } else {
                    inner.inner.size_hint()
                }
            }
        }
    }
}

// === impl Passthrough ===

impl Passthrough {
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match *this.state {
            State::Done => return Poll::Ready(None),
            State::Flushing(end) => {
                *this.state = State::Failing(end);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            State::Failing(end) => {
                *this.state = State::Done;
                return Poll::Ready(Some(Err(match end {
                    StreamEnd::Deadline => "request_timeout elapsed mid-stream".into(),
                    _ => "upstream stream broke".into(),
                })));
            }
            State::Streaming => {}
        }
        if let Some(data) = this.held.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        let failure = match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(o)) = (frame.data_ref(), this.observer.as_mut()) {
                    o.frame(data);
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(None) => {
                *this.state = State::Done;
                if let Some(mut o) = this.observer.take() {
                    o.end(StreamEnd::Complete);
                }
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(_))) => StreamEnd::UpstreamError,
            Poll::Pending => {
                ready!(this.deadline.as_mut().poll(cx));
                StreamEnd::Deadline
            }
        };
        if let Some(mut o) = this.observer.take() {
            o.end(failure);
        }
        match this.error_event.take() {
            Some(event) => {
                *this.state = State::Flushing(failure);
                Poll::Ready(Some(Ok(Frame::data(event))))
            }
            None => {
                *this.state = State::Done;
                Poll::Ready(Some(Err("upstream stream broke".into())))
            }
        }
    }
}
