use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};

use super::*;

fn ms(n: u64) -> Option<Duration> {
    Some(Duration::from_millis(n))
}

fn secs(n: u64) -> Option<Duration> {
    Some(Duration::from_secs(n))
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_static(v));
    }
    h
}

#[test]
fn go_durations() {
    let table: &[(&str, Option<Duration>)] = &[
        ("20ms", ms(20)),
        ("1s", secs(1)),
        ("6m0s", secs(360)),
        ("1m26.4s", ms(86_400)),
        ("2h31m16.752s", ms(9_076_752)),
        ("9m38.016s", ms(578_016)),
        ("39.418973511s", Some(Duration::from_nanos(39_418_973_511))),
        ("0s", secs(0)),
        ("1.5h", secs(5400)),
        ("300us", Some(Duration::from_micros(300))),
        ("300µs", Some(Duration::from_micros(300))),
        ("10ns", Some(Duration::from_nanos(10))),
        (" 4.77s ", ms(4770)),
        // Capped at 24 h.
        ("25h", Some(MAX_HINT)),
        ("99999999999999999999999s", Some(MAX_HINT)),
        // Garbage.
        ("", None),
        ("s", None),
        ("10", None),
        ("-1s", None),
        ("+1s", None),
        ("1x", None),
        ("1s garbage", None),
        ("5m30", None),
        ("1..2s", None),
        ("NaNs", None),
        ("infs", None),
        ("REDACTED", None),
    ];
    for (input, want) in table {
        assert_eq!(parse_go_duration(input), *want, "{input:?}");
    }
}

#[test]
fn retry_after_values() {
    let base = UNIX_EPOCH + Duration::from_secs(1_711_483_199); // Tue, 26 Mar 2024 19:59:59 GMT
    let table: &[(&str, Option<Duration>)] = &[
        ("37", secs(37)),
        ("0", secs(0)),
        ("1.5", ms(1500)),
        (" 5 ", secs(5)),
        ("86400", secs(86_400)),
        ("86401", Some(MAX_HINT)),
        ("18446744073709551616", Some(MAX_HINT)),
        ("Tue, 26 Mar 2024 20:00:09 GMT", secs(10)),
        // A date not after the base cannot be right (the ladder), nor one years away.
        ("Tue, 26 Mar 2024 19:00:00 GMT", None),
        ("Tue, 26 Mar 2024 19:59:59 GMT", None),
        ("Wed, 27 Mar 2024 20:00:00 GMT", Some(MAX_HINT)),
        ("Fri, 26 Mar 2027 20:00:00 GMT", None),
        ("-1", None),
        ("", None),
        ("soon", None),
        ("1e3", None),
        ("inf", None),
        ("NaN", None),
        ("37s", None),
        ("Tue, 32 Mar 2024 20:00:09 GMT", None),
    ];
    for (input, want) in table {
        assert_eq!(parse_retry_after(input, base), *want, "{input:?}");
    }
}

#[test]
fn message_sentences() {
    let table: &[(&str, Option<Duration>)] = &[
        ("please try again in 1.574s. visit", ms(1574)),
        (
            "please try again in 9m38.016s. need more tokens?",
            ms(578_016),
        ),
        ("please try again in 480ms.", ms(480)),
        ("please retry after 37 seconds. please contact", secs(37)),
        ("please retry after 86400 seconds.", secs(86_400)),
        (
            "please retry in 39.418973511s.",
            Some(Duration::from_nanos(39_418_973_511)),
        ),
        ("try again in about 2 minutes", secs(120)),
        ("retry after 1 second", secs(1)),
        ("please wait 30 sec before retrying", secs(30)),
        ("try again in 100 hours", Some(MAX_HINT)),
        // No number, or no unit: nothing.
        ("please try again later.", None),
        ("too many requests, please wait before trying again.", None),
        ("retry after 37", None),
        ("try again in -5s", None),
        ("retry in 2024-01-01", None),
        ("", None),
        // The first stated wait wins.
        (
            "wait before trying again; try again in 3s or retry after 9s",
            secs(3),
        ),
    ];
    for (input, want) in table {
        assert_eq!(parse_message_hint(input), *want, "{input:?}");
    }
}

#[test]
fn reset_values() {
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let table: &[(&str, Option<Duration>)] = &[
        ("6m0s", secs(360)),
        ("20ms", ms(20)),
        ("2m59.56s", ms(179_560)),
        ("60", secs(60)),
        ("0.5", ms(500)),
        // Epoch milliseconds (OpenRouter) and seconds.
        ("1700000030000", secs(30)),
        ("1700000045", secs(45)),
        // Already past, or years away (epoch microseconds read as milliseconds): none.
        ("1600000000000", None),
        ("1699999999", None),
        ("1700000000", None),
        ("1700000000000000", None),
        ("2023-11-14T22:13:00Z", None),
        ("Tue, 14 Nov 2023 22:14:00 GMT", secs(40)),
        ("Tue, 14 Nov 2023 22:13:00 GMT", None),
        ("2023-11-14T22:14:00Z", secs(40)),
        ("2023-11-14T22:14:00.500Z", ms(40_500)),
        ("2023-11-14T23:14:00+01:00", secs(40)),
        ("2023-11-14T21:14:00-01:00", secs(40)),
        ("2023-11-16T00:00:00Z", Some(MAX_HINT)),
        ("2099-01-01T00:00:00Z", None),
        ("REDACTED", None),
        ("", None),
        ("-5", None),
        ("2023-13-45T99:00:00Z", None),
    ];
    for (input, want) in table {
        assert_eq!(parse_reset(input, now), *want, "{input:?}");
    }
}

#[test]
fn rfc3339_is_relative_to_the_date_header() {
    let h = headers(&[
        ("date", "Tue, 26 Mar 2024 19:59:59 GMT"),
        ("anthropic-ratelimit-requests-remaining", "0"),
        ("anthropic-ratelimit-requests-reset", "2024-03-26T20:00:00Z"),
        ("anthropic-ratelimit-tokens-remaining", "16000"),
        ("anthropic-ratelimit-tokens-reset", "2024-03-26T21:00:00Z"),
    ]);
    // `now` far away: the Date header is the base.
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    let hint = steering_hint(&h, now).expect("requests are spent");
    assert_eq!(hint.after, secs(1).unwrap_or_default());
    assert_eq!(hint.source, "anthropic-ratelimit-requests-reset");
}

#[test]
fn steering_only_for_spent_dimensions() {
    let now = UNIX_EPOCH;
    let h = headers(&[
        ("x-ratelimit-remaining-requests", "14370"),
        ("x-ratelimit-reset-requests", "2m59.56s"),
        ("x-ratelimit-remaining-tokens", "12"),
        ("x-ratelimit-reset-tokens", "4.77s"),
    ]);
    assert_eq!(steering_hint(&h, now), None);
    let h = headers(&[
        ("x-ratelimit-remaining-requests", "14370"),
        ("x-ratelimit-reset-requests", "2m59.56s"),
        ("x-ratelimit-remaining-tokens", "0"),
        ("x-ratelimit-reset-tokens", "4.77s"),
    ]);
    let hint = steering_hint(&h, now).expect("tokens are spent");
    assert_eq!(
        (hint.after, hint.source),
        (Duration::from_millis(4770), "x-ratelimit-reset-tokens")
    );
    // Azure's spelling of the reset header.
    let h = headers(&[
        ("x-ratelimit-remaining-tokens", "0"),
        ("x-rate-limit-reset-tokens", "12s"),
    ]);
    assert_eq!(
        steering_hint(&h, now).map(|h| h.source),
        Some("x-rate-limit-reset-tokens")
    );
    // Both spent: the later reset.
    let h = headers(&[
        ("x-ratelimit-remaining-requests", "0"),
        ("x-ratelimit-reset-requests", "1s"),
        ("x-ratelimit-remaining-tokens", "0"),
        ("x-ratelimit-reset-tokens", "6m0s"),
    ]);
    assert_eq!(steering_hint(&h, now).map(|h| h.after), secs(360));
    // Spent but no usable reset, or garbage remaining.
    let h = headers(&[
        ("x-ratelimit-remaining-requests", "0"),
        ("x-ratelimit-reset-requests", "soon"),
    ]);
    assert_eq!(steering_hint(&h, now), None);
    // ... is still spent: it cools on the ladder.
    assert_eq!(steering(&h, now), Some(Spent { hint: None }));
    let h = headers(&[
        ("x-ratelimit-remaining-requests", "REDACTED"),
        ("x-ratelimit-reset-requests", "1s"),
    ]);
    assert_eq!(steering_hint(&h, now), None);
    // OpenRouter epoch milliseconds.
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let h = headers(&[
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "1700000060000"),
    ]);
    assert_eq!(
        steering_hint(&h, now).map(|h| (h.after, h.source)),
        Some((Duration::from_secs(60), "x-ratelimit-reset"))
    );
}

#[test]
fn header_order() {
    let now = UNIX_EPOCH;
    let f = ErrorFields::from_body(br#"{"error":{"message":"Please try again in 4.77s."}}"#);
    let h = headers(&[
        ("retry-after", "5"),
        ("x-ratelimit-remaining-tokens", "0"),
        ("x-ratelimit-reset-tokens", "9s"),
    ]);
    assert_eq!(
        hint_from(&h, &f, now).map(|h| h.source),
        Some("retry-after")
    );
    let h = headers(&[("retry-after", "5"), ("retry-after-ms", "4770")]);
    assert_eq!(
        hint_from(&h, &f, now).map(|h| (h.after, h.source)),
        Some((ms(4770).unwrap_or_default(), "retry-after-ms"))
    );
    let h = headers(&[
        ("retry-after", "garbage"),
        ("x-ratelimit-remaining-tokens", "0"),
        ("x-ratelimit-reset-tokens", "9s"),
    ]);
    assert_eq!(hint_from(&h, &f, now).map(|h| h.source), Some("message"));
    let none = ErrorFields::default();
    assert_eq!(
        hint_from(&h, &none, now).map(|h| h.source),
        Some("x-ratelimit-reset-tokens")
    );
    assert_eq!(hint_from(&HeaderMap::new(), &none, now), None);
}

#[test]
fn every_message_phrase_contains_a_gate() {
    // parse_message_hint skips messages with neither word.
    for p in MESSAGE_PHRASES {
        assert!(p.contains("try") || p.contains("wait"), "{p:?}");
    }
}

/// Found by the `hint` fuzz target: an epoch reset past what `Duration` / `SystemTime`
/// hold (`x-ratelimit-reset: 99999999999999999999`, with its `remaining` at 0) panicked in
/// `Duration::from_secs_f64` on the success path (`steering_hint`) and in `retry_hint`.
#[test]
fn huge_epoch_resets_are_no_hint_not_a_panic() {
    let now = UNIX_EPOCH + Duration::from_secs(1_760_000_000);
    for v in [
        "99999999999999999999",
        "9999999999999999999999999999999999999",
        "18446744073709551616000",
        "9300000000000000000",
        // Fits a Duration (1e19 s), not a SystemTime.
        "10000000000000000000000",
        "1e400",
    ] {
        // Absurd (SPEC §11): no hint, the ladder.
        assert_eq!(parse_reset(v, now), None, "{v}");
    }
    let h = headers(&[
        ("x-ratelimit-remaining-tokens", "0"),
        ("x-ratelimit-reset-tokens", "99999999999999999999999"),
    ]);
    assert_eq!(steering(&h, now), Some(Spent { hint: None }));
    let f = ErrorFields::default();
    assert_eq!(hint_from(&h, &f, now), None);
}

/// SPEC §11 "Hints that cannot be right": every hint format, with the upstream's `Date`
/// two hours behind and two hours ahead of the local clock. Each case gives the window
/// length (seconds) or `None`: no hint, so the cooldown uses the `backoff` ladder. Values
/// are written relative to the answer's `Date`, which every reset is read against.
#[test]
fn hint_table_with_a_date_far_from_the_local_clock() {
    // The upstream's clock: Tue, 14 Nov 2023 22:13:20 GMT.
    let date = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let at = |offset: i64| {
        if offset >= 0 {
            date + Duration::from_secs(offset.unsigned_abs())
        } else {
            date - Duration::from_secs(offset.unsigned_abs())
        }
    };
    let epoch_s = |offset: i64| (1_700_000_000 + offset).to_string();
    let epoch_ms = |offset: i64| ((1_700_000_000 + offset) * 1000).to_string();
    let http = |offset: i64| httpdate::fmt_http_date(at(offset));
    let rfc = |offset: i64| humantime::format_rfc3339(at(offset)).to_string();
    // (name, headers besides Date, error body, expected seconds or ladder)
    type Case = (
        &'static str,
        Vec<(&'static str, String)>,
        &'static str,
        Option<f64>,
    );
    let s = |v: &str| v.to_owned();
    let none = "";
    let cases: Vec<Case> = vec![
        (
            "retry-after seconds",
            vec![("retry-after", s("30"))],
            none,
            Some(30.0),
        ),
        (
            "retry-after zero",
            vec![("retry-after", s("0"))],
            none,
            None,
        ),
        (
            "retry-after negative",
            vec![("retry-after", s("-5"))],
            none,
            None,
        ),
        (
            "retry-after garbage",
            vec![("retry-after", s("soon"))],
            none,
            None,
        ),
        (
            "retry-after date ahead",
            vec![("retry-after", http(45))],
            none,
            Some(45.0),
        ),
        (
            "retry-after date at Date",
            vec![("retry-after", http(0))],
            none,
            None,
        ),
        (
            "retry-after date past",
            vec![("retry-after", http(-10))],
            none,
            None,
        ),
        (
            "retry-after date years",
            vec![("retry-after", http(5 * 366 * 86_400))],
            none,
            None,
        ),
        (
            "retry-after huge",
            vec![("retry-after", s("999999999"))],
            none,
            Some(86_400.0),
        ),
        (
            "retry-after-ms",
            vec![("retry-after-ms", s("1500"))],
            none,
            Some(1.5),
        ),
        (
            "retry-after-ms zero",
            vec![("retry-after-ms", s("0"))],
            none,
            None,
        ),
        (
            "retry-after-ms negative",
            vec![("retry-after-ms", s("-1500"))],
            none,
            None,
        ),
        (
            "bad retry-after-ms, good retry-after",
            vec![("retry-after-ms", s("0")), ("retry-after", s("7"))],
            none,
            Some(7.0),
        ),
        (
            "OpenRouter epoch ms ahead",
            vec![
                ("x-ratelimit-remaining", s("0")),
                ("x-ratelimit-reset", epoch_ms(60)),
            ],
            none,
            Some(60.0),
        ),
        (
            "OpenRouter epoch ms before Date",
            vec![
                ("x-ratelimit-remaining", s("0")),
                ("x-ratelimit-reset", epoch_ms(-1)),
            ],
            none,
            None,
        ),
        (
            "epoch seconds",
            vec![
                ("x-ratelimit-remaining", s("0")),
                ("x-ratelimit-reset", epoch_s(90)),
            ],
            none,
            Some(90.0),
        ),
        (
            "epoch seconds past",
            vec![
                ("x-ratelimit-remaining", s("0")),
                ("x-ratelimit-reset", epoch_s(-90)),
            ],
            none,
            None,
        ),
        (
            "epoch microseconds (absurd)",
            vec![
                ("x-ratelimit-remaining", s("0")),
                ("x-ratelimit-reset", format!("{}000", epoch_ms(60))),
            ],
            none,
            None,
        ),
        (
            "RFC 3339 ahead",
            vec![
                ("anthropic-ratelimit-requests-remaining", s("0")),
                ("anthropic-ratelimit-requests-reset", rfc(1)),
            ],
            none,
            Some(1.0),
        ),
        (
            "RFC 3339 with offset",
            vec![
                ("anthropic-ratelimit-tokens-remaining", s("0")),
                (
                    "anthropic-ratelimit-tokens-reset",
                    s("2023-11-14T23:14:00+01:00"),
                ),
            ],
            none,
            Some(40.0),
        ),
        (
            "RFC 3339 before Date",
            vec![
                ("anthropic-ratelimit-requests-remaining", s("0")),
                ("anthropic-ratelimit-requests-reset", rfc(-1)),
            ],
            none,
            None,
        ),
        (
            "RFC 3339 in 2099",
            vec![
                ("anthropic-ratelimit-requests-remaining", s("0")),
                (
                    "anthropic-ratelimit-requests-reset",
                    s("2099-01-01T00:00:00Z"),
                ),
            ],
            none,
            None,
        ),
        (
            "Go duration",
            vec![
                ("x-ratelimit-remaining-requests", s("0")),
                ("x-ratelimit-reset-requests", s("6m0s")),
            ],
            none,
            Some(360.0),
        ),
        (
            "Go duration zero",
            vec![
                ("x-ratelimit-remaining-requests", s("0")),
                ("x-ratelimit-reset-requests", s("0s")),
            ],
            none,
            None,
        ),
        (
            "spent, no reset",
            vec![("x-ratelimit-remaining-tokens", s("0"))],
            none,
            None,
        ),
        (
            "past reset of one spent dimension, good one of another",
            vec![
                ("x-ratelimit-remaining", s("0")),
                ("x-ratelimit-reset", epoch_ms(-5)),
                ("x-ratelimit-remaining-tokens", s("0")),
                ("x-ratelimit-reset-tokens", s("12s")),
            ],
            none,
            Some(12.0),
        ),
        (
            "RetryInfo",
            vec![],
            r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"26s"}]}}"#,
            Some(26.0),
        ),
        (
            "RetryInfo zero",
            vec![],
            r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"0s"}]}}"#,
            None,
        ),
        (
            "message",
            vec![],
            r#"{"error":{"message":"Please try again in 1.574s."}}"#,
            Some(1.574),
        ),
        (
            "message zero",
            vec![],
            r#"{"error":{"message":"Please try again in 0s."}}"#,
            None,
        ),
    ];
    for skew in [-7200i64, 7200] {
        // The local clock, two hours ahead of or behind the upstream's.
        let local = at(skew);
        for (name, pairs, body, want) in &cases {
            let mut h = HeaderMap::new();
            h.insert(
                http::header::DATE,
                HeaderValue::from_str(&http(0)).expect("date"),
            );
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_str(v).expect("value"));
            }
            let f = ErrorFields::from_body(body.as_bytes());
            // Milliseconds are what a window is measured in.
            let secs = |h: RetryHint| (h.after.as_secs_f64() * 1000.0).round() / 1000.0;
            let got = hint_from(&h, &f, local).map(secs);
            assert_eq!(got, *want, "{name}, local clock {skew:+} s from Date");
            if body.is_empty() && !pairs.iter().any(|(k, _)| k.starts_with("retry-after")) {
                // The same headers on a success: spent, cooling for the same length or
                // on the ladder, never usable.
                let spent = steering(&h, local).expect(name);
                assert_eq!(
                    spent.hint.map(secs),
                    *want,
                    "steering: {name}, local clock {skew:+} s from Date"
                );
            }
        }
    }
    // Without a Date header, the local clock is the base: a reset already past by it is the
    // ladder, and the key is still spent.
    let local = at(7200);
    let h = headers(&[("x-ratelimit-remaining", "0")]);
    let mut h2 = h.clone();
    h2.insert(
        "x-ratelimit-reset",
        HeaderValue::from_str(&epoch_ms(60)).expect("value"),
    );
    assert_eq!(steering(&h2, local), Some(Spent { hint: None }));
    assert_eq!(hint_from(&h2, &ErrorFields::default(), local), None);
    h2.insert(
        "x-ratelimit-reset",
        HeaderValue::from_str(&epoch_ms(7230)).expect("value"),
    );
    assert_eq!(steering_hint(&h2, local).map(|h| h.after), secs(30));
}
