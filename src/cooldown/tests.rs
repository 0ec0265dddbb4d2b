use super::*;
use crate::classify::RetryHint;

fn store() -> Cooldowns {
    Cooldowns::new(Ladders {
        backoff: vec![
            Duration::from_secs(30),
            Duration::from_secs(60),
            Duration::from_secs(300),
        ],
        billing: vec![
            Duration::from_secs(5 * 3600),
            Duration::from_secs(10 * 3600),
            Duration::from_secs(20 * 3600),
            Duration::from_secs(24 * 3600),
        ],
    })
}

fn v(reason: Reason, hint: Option<u64>) -> Verdict {
    Verdict {
        reason,
        hint: hint.map(|s| RetryHint {
            after: Duration::from_secs(s),
            source: "retry-after",
        }),
    }
}

const FP: u64 = 7;

/// A credential (fingerprint `FP`) and model in a store.
struct Key<'a>(&'a Cooldowns, &'a str, Option<&'a str>);

impl Key<'_> {
    /// Records a failure with `reason` and a hint of `hint` seconds, as the proxy does.
    fn fail(
        &self,
        reason: Reason,
        hint: Option<u64>,
        status: Option<u16>,
        now: Instant,
    ) -> Option<(Instant, Cow<'static, str>)> {
        self.0
            .record_failure(self.1, FP, self.2, &v(reason, hint), status, now)
    }
}

#[tokio::test(start_paused = true)]
async fn rate_limit_is_model_scoped_and_honours_the_hint() {
    let c = store();
    let now = Instant::now();
    let (until, src) = Key(&c, "a", Some("m1"))
        .fail(Reason::RateLimit, Some(20), Some(429), now)
        .expect("window");
    assert_eq!(until, now + Duration::from_secs(20));
    assert_eq!(src, "retry-after");
    assert_eq!(c.blocked_until("a", FP, Some("m1"), now), Some(until));
    assert_eq!(
        c.blocked_until("a", FP, Some("m2"), now),
        None,
        "other models still served"
    );
    assert_eq!(c.blocked_until("b", FP, Some("m1"), now), None);
    tokio::time::advance(Duration::from_secs(21)).await;
    assert_eq!(
        c.blocked_until("a", FP, Some("m1"), Instant::now()),
        None,
        "window ended"
    );
}

#[tokio::test(start_paused = true)]
async fn ladder_climbs_and_active_windows_are_never_extended() {
    let c = store();
    let t0 = Instant::now();
    let am = Key(&c, "a", Some("m"));
    let (u1, s1) = am.fail(Reason::RateLimit, None, Some(429), t0).expect("w1");
    assert_eq!(
        (u1 - t0, s1.as_ref()),
        (Duration::from_secs(30), "backoff[0]")
    );
    // A failure inside the window (an in-flight burst) changes nothing.
    assert!(am
        .fail(
            Reason::RateLimit,
            Some(3600),
            Some(429),
            t0 + Duration::from_secs(1)
        )
        .is_none());
    assert_eq!(c.blocked_until("a", FP, Some("m"), t0), Some(u1));
    tokio::time::advance(Duration::from_secs(31)).await;
    let (u2, s2) = am
        .fail(Reason::RateLimit, None, Some(429), Instant::now())
        .expect("w2");
    assert_eq!(
        (u2 - Instant::now(), s2.as_ref()),
        (Duration::from_secs(60), "backoff[1]")
    );
    tokio::time::advance(Duration::from_secs(61)).await;
    let (_, s3) = am
        .fail(Reason::RateLimit, None, None, Instant::now())
        .expect("w3");
    assert_eq!(s3, "backoff[2]");
    tokio::time::advance(Duration::from_secs(301)).await;
    let (_, s4) = am
        .fail(Reason::RateLimit, None, None, Instant::now())
        .expect("w4");
    assert_eq!(s4, "backoff[2]", "the last step repeats");
    // A success after the window resets the counter.
    tokio::time::advance(Duration::from_secs(301)).await;
    c.record_success("a", FP, Some("m"), Instant::now());
    let (_, s5) = am
        .fail(Reason::RateLimit, None, None, Instant::now())
        .expect("w5");
    assert_eq!(s5, "backoff[0]");
}

#[tokio::test(start_paused = true)]
async fn counters_reset_after_a_day_without_failures() {
    let c = store();
    let a = Key(&c, "a", None);
    a.fail(Reason::Auth, None, Some(401), Instant::now());
    tokio::time::advance(Duration::from_secs(31)).await;
    let (_, s) = a
        .fail(Reason::Auth, None, Some(401), Instant::now())
        .expect("w");
    assert_eq!(s, "backoff[1]");
    tokio::time::advance(COUNTER_RESET + Duration::from_secs(1)).await;
    let (_, s) = a
        .fail(Reason::Auth, None, Some(401), Instant::now())
        .expect("w");
    assert_eq!(s, "backoff[0]");
}

#[tokio::test(start_paused = true)]
async fn billing_and_auth_permanent_disable_every_model() {
    let c = store();
    let now = Instant::now();
    let (u, s) = Key(&c, "a", Some("m1"))
        .fail(Reason::Billing, Some(10), Some(402), now)
        .expect("w");
    assert_eq!(
        (u - now, s.as_ref()),
        (Duration::from_secs(5 * 3600), "billing_backoff[0]"),
        "billing ignores short hints"
    );
    assert!(c.blocked_until("a", FP, Some("other"), now).is_some());
    assert!(c.blocked_until("a", FP, None, now).is_some());
    let b = Key(&c, "b", None);
    let (u, s) = b
        .fail(Reason::AuthPermanent, None, Some(403), now)
        .expect("w");
    assert_eq!(
        (u - now, s.as_ref()),
        (Duration::from_secs(600), "auth_permanent[0]")
    );
    tokio::time::advance(Duration::from_secs(601)).await;
    let (u, _) = b
        .fail(Reason::AuthPermanent, None, Some(403), Instant::now())
        .expect("w");
    assert_eq!(u - Instant::now(), Duration::from_secs(1200));
}

#[tokio::test(start_paused = true)]
async fn reasons_that_mark_nothing() {
    let c = store();
    let am = Key(&c, "a", Some("m"));
    for r in [
        Reason::Overloaded,
        Reason::ModelNotFound,
        Reason::Timeout,
        Reason::Format,
        Reason::Unknown,
    ] {
        assert!(am.fail(r, Some(60), Some(500), Instant::now()).is_none());
    }
    assert!(c.is_empty());
}

#[tokio::test(start_paused = true)]
async fn hints_are_capped_at_a_day() {
    let c = store();
    let now = Instant::now();
    let (u, _) = Key(&c, "a", Some("m"))
        .fail(Reason::RateLimit, Some(10 * 86_400), Some(429), now)
        .expect("w");
    assert_eq!(u - now, MAX_COOLDOWN);
}

#[tokio::test(start_paused = true)]
async fn a_changed_secret_clears_the_state() {
    let c = store();
    let now = Instant::now();
    Key(&c, "a", Some("m")).fail(Reason::RateLimit, Some(60), Some(429), now);
    assert!(c.blocked_until("a", FP, Some("m"), now).is_some());
    assert!(c.blocked_until("a", FP + 1, Some("m"), now).is_none());
    c.record_failure(
        "a",
        FP + 1,
        Some("x"),
        &v(Reason::RateLimit, Some(60)),
        Some(429),
        now,
    );
    assert_eq!(c.len(), 1, "the old fingerprint's entries were dropped");
}

#[tokio::test(start_paused = true)]
async fn steering_cools_without_counting() {
    let c = store();
    let now = Instant::now();
    c.steer(
        "a",
        FP,
        Some("m"),
        Some(RetryHint {
            after: Duration::from_secs(5),
            source: "x-ratelimit-reset-requests",
        }),
        now,
    );
    assert_eq!(
        c.blocked_until("a", FP, Some("m"), now),
        Some(now + Duration::from_secs(5))
    );
    let w = c.windows(now);
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].source, "x-ratelimit-reset-requests");
    assert_eq!(w[0].failures, 0);
}

/// A spent credential whose reset cannot be right (none, or zero) still cools: the
/// `backoff` ladder at the step the next failure would take, never a zero-length window.
#[tokio::test(start_paused = true)]
async fn steering_without_a_usable_reset_cools_on_the_ladder() {
    let c = store();
    let now = Instant::now();
    let zero = RetryHint {
        after: Duration::ZERO,
        source: "x-ratelimit-reset",
    };
    for (hint, model) in [(None, "m"), (Some(zero), "n")] {
        let got = c.steer("a", FP, Some(model), hint, now);
        assert_eq!(
            got.as_ref().map(|(d, s)| (*d, s.as_ref())),
            Some((Duration::from_secs(30), "backoff[0]")),
            "{model}"
        );
        assert_eq!(
            c.blocked_until("a", FP, Some(model), now),
            Some(now + Duration::from_secs(30))
        );
    }
    // After two failures the ladder's next step, still without counting one.
    let t = now + Duration::from_secs(10);
    Key(&c, "b", Some("m")).fail(Reason::RateLimit, None, Some(429), now);
    let t2 = t + Duration::from_secs(30);
    Key(&c, "b", Some("m")).fail(Reason::RateLimit, None, Some(429), t2);
    let t3 = t2 + Duration::from_secs(61);
    let got = c.steer("b", FP, Some("m"), None, t3);
    assert_eq!(
        got.map(|(d, s)| (d, s.into_owned())),
        Some((Duration::from_secs(300), "backoff[2]".to_owned()))
    );
    // A zero hint on a failure is the ladder too.
    let v = Verdict {
        reason: Reason::RateLimit,
        hint: Some(zero),
    };
    let (until, source) = c
        .record_failure("z", FP, Some("m"), &v, Some(429), now)
        .expect("a window opens");
    assert_eq!(
        (until, source.as_ref()),
        (now + Duration::from_secs(30), "backoff[0]")
    );
}

#[tokio::test(start_paused = true)]
async fn distinct_model_names_cannot_grow_the_map_past_its_cap() {
    let c = store();
    let now = Instant::now();
    for i in 0..100_000u32 {
        let model = format!("model-{i}");
        Key(&c, "a", Some(&model)).fail(Reason::RateLimit, Some(60), Some(429), now);
        assert!(c.len() <= MAX_ENTRIES, "grew to {} at {i}", c.len());
    }
    assert!(c.len() > MAX_ENTRIES / 2);
}

fn learned(scope: Scope, until: Instant, failures: u32) -> Window {
    Window {
        scope,
        until,
        reason: Reason::RateLimit,
        source: Cow::Borrowed("retry-after"),
        failures,
        last_status: Some(429),
    }
}

#[tokio::test(start_paused = true)]
async fn learned_windows_merge_by_their_end_and_are_not_reported_back() {
    let c = store();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    c.observe(Box::new(move |o| {
        sink.lock()
            .unwrap()
            .push((o.credential.to_owned(), o.window.until))
    }));
    let now = Instant::now();
    let m = || Scope::Model(Arc::from("m1"));
    // A local window is reported to the observer.
    let (local, _) = Key(&c, "a", Some("m1"))
        .fail(Reason::RateLimit, Some(20), Some(429), now)
        .expect("window");
    assert_eq!(*seen.lock().unwrap(), [("a".to_owned(), local)]);

    // An earlier end from another replica loses; a later one wins and is not echoed.
    assert!(!c.learn("a", FP, learned(m(), now + Duration::from_secs(10), 1), now));
    assert_eq!(c.blocked_until("a", FP, Some("m1"), now), Some(local));
    let later = now + Duration::from_secs(40);
    assert!(c.learn("a", FP, learned(m(), later, 3), now));
    assert_eq!(c.blocked_until("a", FP, Some("m1"), now), Some(later));
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "a learned window went back out"
    );
    // The ladder position is the larger count; other models stay free.
    assert_eq!(c.windows(now)[0].failures, 3);
    assert_eq!(c.blocked_until("a", FP, Some("m2"), now), None);
    // Another value of the credential (fingerprint) is not blocked; an ended window is ignored.
    assert_eq!(c.blocked_until("a", FP + 1, Some("m1"), now), None);
    assert!(!c.learn("b", FP, learned(Scope::Disabled, now, 1), now));

    // It expires with its end like any window.
    tokio::time::advance(Duration::from_secs(41)).await;
    assert_eq!(c.blocked_until("a", FP, Some("m1"), Instant::now()), None);
}

#[tokio::test(start_paused = true)]
async fn a_shared_window_copies_the_origin_and_never_extends_a_sibling() {
    let c = store();
    let now = Instant::now();
    let (until, src) = Key(&c, "a", Some("m1"))
        .fail(Reason::RateLimit, Some(20), Some(429), now)
        .expect("window");
    // "c" already cools for m1 until later: it keeps its own window.
    let (c_until, _) = Key(&c, "c", Some("m1"))
        .fail(Reason::RateLimit, Some(90), Some(429), now)
        .expect("window");
    let scope = Scope::of_failure(Reason::RateLimit, Some("m1")).expect("scope");
    let cooled = c.share("a", FP, &scope, [("a", FP), ("b", FP), ("c", FP)], now);
    assert_eq!(
        cooled,
        ["b"],
        "the origin and an active window are left alone"
    );
    assert_eq!(c.blocked_until("b", FP, Some("m1"), now), Some(until));
    assert_eq!(
        c.blocked_until("b", FP, Some("m2"), now),
        None,
        "model-scoped"
    );
    assert_eq!(c.blocked_until("c", FP, Some("m1"), now), Some(c_until));
    let b = c
        .windows(now)
        .into_iter()
        .find(|w| w.credential == "b")
        .expect("b's window");
    assert_eq!(
        (b.source, b.reason, b.failures),
        (src, Reason::RateLimit, 1)
    );
    assert_eq!(b.last_status, Some(429));

    // Billing: the disabled lane, every model.
    let _ = Key(&c, "a", None).fail(Reason::Billing, None, Some(402), now);
    assert_eq!(c.share("a", FP, &Scope::Disabled, [("b", FP)], now), ["b"]);
    assert!(c.blocked_until("b", FP, Some("m9"), now).is_some());

    // Nothing to copy once the origin's window ended.
    tokio::time::advance(Duration::from_secs(21)).await;
    assert!(c
        .share("a", FP, &scope, [("d", FP)], Instant::now())
        .is_empty());
}
