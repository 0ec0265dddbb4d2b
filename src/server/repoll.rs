//! A connection woken during its own poll is polled again at once, not rescheduled.
//!
//! Why: keygate's service reads the request body inside the connection's task (it needs the
//! model before it picks a credential). hyper's body channel wakes the dispatcher each time
//! a chunk is taken, so the connection's task is woken while it is running. tokio takes such
//! a wake as a yield: the task goes to the back of the run queue and an idle worker thread
//! is woken to steal it. That cost three futex calls and a thread wake-up per request
//! (`strace -c`: 2.1 futex calls per POST against 0.08 per GET), which is kernel time the
//! bare forwarder, streaming the body to the upstream, never pays.
//!
//! [`Repoll`] gives the connection a waker of its own. A wake that arrives while the
//! connection is being polled only marks it, and the connection is polled again before
//! `poll` returns (a few rounds at most, then the task yields as before, so a connection
//! that keeps waking itself cannot starve others). A spent cooperative budget does not
//! spin here: tokio defers those wakes until the task's poll has returned. A wake at any other time goes to the
//! task's waker. Written here because it is this server's scheduling policy; the waker is
//! `std::task::Wake` on an `Arc`, no unsafe code.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

/// Extra polls in one `poll` call before the task yields to the scheduler.
const MAX_ROUNDS: usize = 4;

/// The connection is not being polled: a wake goes to the task.
const IDLE: u8 = 0;
/// The connection is being polled.
const POLLING: u8 = 1;
/// Woken while being polled: poll again.
const WOKEN: u8 = 2;

pin_project_lite::pin_project! {
    /// `inner`, polled again when it wakes itself during a poll (see the module docs).
    pub(crate) struct Repoll<F> {
        #[pin]
        inner: F,
        shared: Arc<Shared>,
        waker: Waker,
    }
}

struct Shared {
    state: AtomicU8,
    task: AtomicWaker,
}

impl<F> Repoll<F> {
    pub(crate) fn new(inner: F) -> Self {
        let shared = Arc::new(Shared {
            state: AtomicU8::new(IDLE),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(shared.clone());
        Repoll {
            inner,
            shared,
            waker,
        }
    }
}

impl<F: Future> Future for Repoll<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        this.shared.task.register(cx.waker());
        let mut own = Context::from_waker(this.waker);
        for _ in 0..MAX_ROUNDS {
            this.shared.state.store(POLLING, Ordering::Release);
            if let Poll::Ready(out) = this.inner.as_mut().poll(&mut own) {
                this.shared.state.store(IDLE, Ordering::Release);
                return Poll::Ready(out);
            }
            // Not woken meanwhile: from now on a wake goes to the task. Woken: what woke
            // us may have made progress possible, so poll again.
            if this
                .shared
                .state
                .compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Poll::Pending;
            }
        }
        // Woken in every round: let the scheduler run other tasks first.
        this.shared.state.store(IDLE, Ordering::Release);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Being polled: mark it (or it is marked already). Otherwise wake the task.
        match self
            .state
            .compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) | Err(WOKEN) => {}
            Err(_) => self.task.wake(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Counts how often the task was woken.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn wakes(c: &Arc<Count>) -> usize {
        c.0.load(Ordering::SeqCst)
    }

    /// Ready after `n` polls; wakes itself during each of the first `self_wakes`, and keeps
    /// the last waker it was given (as an I/O registration would).
    struct Script {
        polls: usize,
        n: usize,
        self_wakes: usize,
        kept: Option<Waker>,
    }

    impl Future for Script {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            if self.polls >= self.n {
                return Poll::Ready(self.polls);
            }
            if self.polls <= self.self_wakes {
                cx.waker().wake_by_ref();
            }
            self.kept = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    fn script(n: usize, self_wakes: usize) -> Script {
        Script {
            polls: 0,
            n,
            self_wakes,
            kept: None,
        }
    }

    #[test]
    fn a_wake_during_the_poll_polls_again_without_waking_the_task() {
        let count = Arc::new(Count::default());
        let task = Waker::from(count.clone());
        let mut cx = Context::from_waker(&task);
        let mut f = Box::pin(Repoll::new(script(3, 1)));
        // Poll 1 wakes itself, poll 2 is done at once, in the same call; poll 2 does not
        // wake itself, so the call returns Pending.
        assert!(f.as_mut().poll(&mut cx).is_pending());
        assert_eq!(f.inner.polls, 2);
        assert_eq!(wakes(&count), 0, "the task was not woken");
        // A later wake (say, from the I/O driver) reaches the task.
        f.inner.kept.as_ref().unwrap().wake_by_ref();
        assert_eq!(wakes(&count), 1);
        assert_eq!(f.as_mut().poll(&mut cx), Poll::Ready(3));
    }

    #[test]
    fn a_future_that_keeps_waking_itself_yields_after_a_few_rounds() {
        let count = Arc::new(Count::default());
        let task = Waker::from(count.clone());
        let mut cx = Context::from_waker(&task);
        let mut f = Box::pin(Repoll::new(script(100, 100)));
        assert!(f.as_mut().poll(&mut cx).is_pending());
        assert_eq!(f.inner.polls, MAX_ROUNDS);
        assert_eq!(
            wakes(&count),
            1,
            "the task yields: woken to run again later"
        );
        assert!(f.as_mut().poll(&mut cx).is_pending());
        assert_eq!(f.inner.polls, 2 * MAX_ROUNDS);
        assert_eq!(wakes(&count), 2);
    }

    /// Counts the polls of the future it wraps.
    struct Counted<F>(Pin<Box<F>>, Arc<AtomicUsize>);

    impl<F: Future> Future for Counted<F> {
        type Output = F::Output;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.as_mut().poll(cx)
        }
    }

    #[test]
    fn a_spent_cooperative_budget_does_not_make_it_spin() {
        // tokio gives a task 128 units per poll; each `consume_budget` spends one, and a
        // spent budget is refilled only by the scheduler, so polling again at once would be
        // wasted work. tokio wakes such a task only after its poll has returned, which goes
        // to the scheduler: about one poll per budget.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let polls = Arc::new(AtomicUsize::new(0));
        let counted = Counted(
            Box::pin(async {
                for _ in 0..1280 {
                    tokio::task::coop::consume_budget().await;
                }
            }),
            polls.clone(),
        );
        rt.block_on(async { tokio::spawn(Repoll::new(counted)).await })
            .unwrap();
        let polls = polls.load(Ordering::SeqCst);
        assert!(polls <= 12, "{polls} polls for 10 budgets' worth of work");
    }

    #[test]
    fn wakes_from_another_thread_are_never_lost() {
        // A wake racing with the end of a poll either makes that poll go round again or
        // reaches the task: the future always gets to finish.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for _ in 0..2000 {
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                let waiter = tokio::spawn(Repoll::new(async move {
                    tokio::task::yield_now().await;
                    rx.await.is_ok()
                }));
                tokio::spawn(async move {
                    let _ = tx.send(());
                });
                let got = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
                    .await
                    .expect("a wake was lost")
                    .unwrap();
                assert!(got);
            }
        });
    }
}
