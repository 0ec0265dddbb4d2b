//! One bound on the request bodies held in memory at once, over every connection and stream.
//!
//! Owns [`BodyBudget`]: a semaphore counted in KiB (`[server] max_buffered_bodies`). A
//! request reserves its declared `Content-Length` before reading a byte, or, without one,
//! grows its reservation as frames arrive; the [`Reservation`] is held until the exchange
//! ends (the body is kept for retries). Over the budget the request gets 503 with
//! `retry-after: 1` instead of waiting: a client that retries beats a proxy whose memory
//! grows with the number of uploads. `max_request_body` bounds one body; this bounds their
//! sum. Costs one atomic compare-and-swap per reservation step.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Reservation granularity: one permit per KiB keeps permit counts small (a 256 MiB budget
/// is 262 144 permits, well inside what one `try_acquire_many` can take).
const UNIT: usize = 1024;

/// Bodies without a `Content-Length` grow their reservation by at least this much at a time.
const STEP: usize = 64 * UNIT;

/// The budget shared by every request.
#[derive(Clone, Debug)]
pub struct BodyBudget {
    sem: Arc<Semaphore>,
}

/// Bytes one request holds; released when dropped.
#[derive(Debug, Default)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
}

/// The budget has no room for this body now.
#[derive(Debug, PartialEq, Eq)]
pub struct OverBudget;

impl BodyBudget {
    /// A budget of `bytes` (rounded up to whole KiB).
    pub fn new(bytes: usize) -> Self {
        let units = bytes.div_ceil(UNIT).min(Semaphore::MAX_PERMITS);
        Self {
            sem: Arc::new(Semaphore::new(units)),
        }
    }

    /// Bytes still free (for tests and status).
    pub fn available(&self) -> usize {
        self.sem.available_permits().saturating_mul(UNIT)
    }

    /// Grows `r` to cover `bytes` (a declared length: exactly; a running total: in
    /// [`STEP`]s, at most `cap`). Never waits.
    pub fn reserve(&self, r: &mut Reservation, bytes: usize, cap: usize) -> Result<(), OverBudget> {
        let have = r.permit.as_ref().map_or(0, |p| p.num_permits());
        let need = bytes.div_ceil(UNIT);
        if need <= have {
            return Ok(());
        }
        // Grow ahead of a streaming body, so a 32 MiB chunked upload takes ~500 steps,
        // not one per frame; never past `cap` (the body limit).
        let want = need
            .max(have + STEP / UNIT)
            .min(cap.div_ceil(UNIT).max(need));
        let more = u32::try_from(want - have).map_err(|_| OverBudget)?;
        let extra = self.sem.clone().try_acquire_many_owned(more).or_else(|_| {
            // Not room for the step ahead: take exactly what is needed now.
            let exact = u32::try_from(need - have).map_err(|_| OverBudget)?;
            self.sem
                .clone()
                .try_acquire_many_owned(exact)
                .map_err(|_| OverBudget)
        })?;
        match &mut r.permit {
            Some(p) => p.merge(extra),
            None => r.permit = Some(extra),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_add_up_and_are_released_on_drop() {
        let b = BodyBudget::new(1024 * 1024);
        let mut a = Reservation::default();
        b.reserve(&mut a, 600 * 1024, 600 * 1024).expect("room");
        let mut c = Reservation::default();
        assert_eq!(b.reserve(&mut c, 600 * 1024, 600 * 1024), Err(OverBudget));
        assert_eq!(b.available(), 424 * 1024);
        drop(a);
        assert_eq!(b.available(), 1024 * 1024);
        b.reserve(&mut c, 600 * 1024, 600 * 1024)
            .expect("room after release");
    }

    #[test]
    fn a_growing_body_reserves_in_steps_but_never_past_its_cap() {
        let b = BodyBudget::new(1024 * 1024);
        let mut r = Reservation::default();
        b.reserve(&mut r, 10, 1024 * 1024).expect("room");
        assert_eq!(b.available(), 1024 * 1024 - STEP);
        b.reserve(&mut r, STEP, 1024 * 1024)
            .expect("inside the step");
        assert_eq!(b.available(), 1024 * 1024 - STEP);
        b.reserve(&mut r, 100, 100)
            .expect("shrinking never releases");
        let mut small = Reservation::default();
        b.reserve(&mut small, 1, 3000).expect("room");
        // The step is capped at the body limit, rounded up to a KiB.
        assert_eq!(b.available(), 1024 * 1024 - STEP - 3 * 1024);
    }

    #[test]
    fn near_the_end_of_the_budget_the_exact_amount_is_taken() {
        let b = BodyBudget::new(STEP + 2 * 1024);
        let mut big = Reservation::default();
        b.reserve(&mut big, STEP, STEP).expect("room");
        let mut r = Reservation::default();
        b.reserve(&mut r, 1500, 1024 * 1024)
            .expect("2 KiB left, step does not fit");
        assert_eq!(b.available(), 0);
        assert_eq!(b.reserve(&mut r, 3000, 1024 * 1024), Err(OverBudget));
    }
}
