//! Response bodies: keygate's own small answers, and upstream streams passed through.
//!
//! Owns [`ProxyBody`]: a full body for local answers, or an upstream `Incoming` passed on
//! frame by frame (never collected), bounded by the request deadline. Frames held back
//! while deciding whether to retry (an error body being classified, or a stream before its
//! commit point) are replayed first. When the upstream breaks after bytes have reached the
//! client, or ends without its terminal event, the stream ends with a protocol-correct
//! error event followed by a body error, never a clean end of stream. An error answer may
//! carry a [`Redactor`] that replaces the injected secret in every frame (SPEC §8); a
//! success never does. It does not own classification: it hands every frame, by reference,
//! to an [`Observer`].

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::cluster::Lease;
use crate::pool::InFlightSlot;
use crate::redact::Redactor;

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
    /// Called exactly once, when the stream ends or is dropped. For
    /// [`StreamEnd::Complete`], returning `true` says the answer is incomplete (no terminal
    /// event), so the client must get the error event instead of a clean end.
    fn end(&mut self, end: StreamEnd) -> bool;
}

pin_project! {
    /// The body of every response keygate sends.
    pub struct ProxyBody {
        #[pin]
        kind: Kind,
        // The credential's `max_in_flight` slot (SPEC §11): released when the body is
        // dropped, i.e. when the answer ends in any way (end, break, client gone).
        slot: Option<InFlightSlot>,
        // Its cluster-wide lease (cluster mode), given back when dropped.
        lease: Option<Box<Lease>>,
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
        // `None` once the upstream has ended (possibly while frames were being held).
        inner: Option<Incoming>,
        deadline: Instant,
        // Armed the first time the upstream has nothing ready: a body that is already
        // buffered when it is read (most non-streaming answers) never touches the timer.
        #[pin]
        timer: Option<Sleep>,
        // Sent to the client when the upstream breaks after commit (no silent truncation).
        error_event: Option<Bytes>,
        observer: Option<Box<dyn Observer>>,
        // Error answers only (SPEC §8): the injected secret replaced in every data frame
        // (the error event, keygate's own text, is not scanned). `None` on every success.
        redact: Option<Box<Redactor>>,
        // The upstream broke while `held` was being read: once `held` is out, the body
        // ends as a break, not a clean end.
        broken: bool,
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
    Flushing,
    // The next poll fails the body.
    Failing,
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
            slot: None,
            lease: None,
        }
    }

    /// An upstream stream: `held` frames first, then the rest of `inner` (`None` when it
    /// already ended), until `deadline`. `error_event` is sent if the upstream breaks (SSE
    /// streams); `observer` sees the frames that follow `held`.
    pub fn upstream(
        held: VecDeque<Bytes>,
        inner: Option<Incoming>,
        deadline: Instant,
        error_event: Option<Bytes>,
        observer: Option<Box<dyn Observer>>,
    ) -> Self {
        ProxyBody {
            kind: Kind::Upstream {
                inner: Passthrough {
                    held,
                    inner,
                    deadline,
                    timer: None,
                    error_event,
                    observer,
                    redact: None,
                    broken: false,
                    state: State::Streaming,
                },
            },
            slot: None,
            lease: None,
        }
    }

    /// [`ProxyBody::upstream`] for an error answer passed on with every occurrence of a
    /// secret replaced (`held` frames included). Its length is not known in advance, so the
    /// caller drops `content-length`.
    pub fn redacted(
        held: VecDeque<Bytes>,
        inner: Option<Incoming>,
        deadline: Instant,
        error_event: Option<Bytes>,
        redactor: Redactor,
    ) -> Self {
        let mut body = Self::upstream(held, inner, deadline, error_event, None);
        if let Kind::Upstream { inner } = &mut body.kind {
            inner.redact = Some(Box::new(redactor));
        }
        body
    }

    /// Holds a credential's in-flight slot until this body is dropped.
    pub fn hold(mut self, slot: Option<InFlightSlot>) -> Self {
        if slot.is_some() {
            self.slot = slot;
        }
        self
    }

    /// Gives the in-flight slot and lease back now: a failed answer kept in case every
    /// other candidate fails too is no longer a request in flight on its credential.
    pub fn release(&mut self) {
        self.slot = None;
        self.lease = None;
    }

    /// Holds a cluster-wide in-flight lease until this body is dropped.
    pub fn hold_lease(mut self, lease: Option<Box<Lease>>) -> Self {
        if lease.is_some() {
            self.lease = lease;
        }
        self
    }

    /// Marks an upstream body that broke while its first frames were held (`inner` is
    /// `None`): after them the client sees a body error, never a clean end (SPEC §7).
    pub fn broken(mut self) -> Self {
        if let Kind::Upstream { inner } = &mut self.kind {
            inner.broken = true;
        }
        self
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
            Kind::Upstream { inner } => match (&inner.inner, inner.state) {
                (Some(i), State::Streaming) if inner.held.is_empty() && inner.redact.is_none() => {
                    i.size_hint()
                }
                _ => SizeHint::default(),
            },
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
            State::Flushing => {
                *this.state = State::Failing;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            State::Failing => {
                *this.state = State::Done;
                return Poll::Ready(Some(Err("upstream stream did not complete".into())));
            }
            State::Streaming => {}
        }
        let end = loop {
            if let Some(data) = this.held.pop_front() {
                match this.redact.as_mut() {
                    None => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Some(r) => {
                        let out = r.push(&data);
                        if out.is_empty() {
                            continue;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
            }
            let polled = match this.inner.as_mut() {
                Some(inner) => Pin::new(inner).poll_frame(cx),
                None if *this.broken => break StreamEnd::UpstreamError,
                None => Poll::Ready(None),
            };
            break match polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let (Some(data), Some(o)) = (frame.data_ref(), this.observer.as_mut()) {
                        o.frame(data);
                    }
                    let Some(r) = this.redact.as_mut() else {
                        return Poll::Ready(Some(Ok(frame)));
                    };
                    match frame.into_data() {
                        Ok(data) => {
                            let out = r.push(&data);
                            if out.is_empty() {
                                continue;
                            }
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                        Err(frame) => return Poll::Ready(Some(Ok(frame))),
                    }
                }
                Poll::Ready(None) => StreamEnd::Complete,
                Poll::Ready(Some(Err(_))) => StreamEnd::UpstreamError,
                Poll::Pending => {
                    if this.timer.is_none() {
                        this.timer
                            .set(Some(tokio::time::sleep_until(*this.deadline)));
                    }
                    if let Some(timer) = this.timer.as_mut().as_pin_mut() {
                        ready!(timer.poll(cx));
                    }
                    StreamEnd::Deadline
                }
            };
        };
        *this.inner = None;
        let incomplete = match this.observer.take() {
            Some(mut o) => o.end(end),
            None => false,
        };
        if end == StreamEnd::Complete && !incomplete {
            // The redacted tail held back for an occurrence that did not come.
            if let Some(tail) = this.redact.take().map(|mut r| r.finish()) {
                if !tail.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(tail))));
                }
            }
            *this.state = State::Done;
            return Poll::Ready(None);
        }
        if let Some(r) = this.redact.as_mut() {
            r.discard();
        }
        match this.error_event.take() {
            Some(event) => {
                *this.state = State::Flushing;
                Poll::Ready(Some(Ok(Frame::data(event))))
            }
            None => {
                // Yield once first, so what was already handed to hyper (the head, the
                // frames before the break) reaches the client before the body fails.
                *this.state = State::Failing;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
}
