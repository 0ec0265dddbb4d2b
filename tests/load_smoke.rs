//! Smoke test of the load harness: `keygate-load --quick` over every scenario, against the
//! real `keygate` binary. Checks that every JSON line carries its fields and that every
//! success rate is 100 %. Performance is never asserted here (see BENCHMARKS.md).
//!
//! The cluster scenarios start a real `redis-server`; without one they fail, saying how to
//! install it.

use std::process::Command;

use serde_json::Value;

/// Runs the harness with `args` (and the real keygate) and returns its JSON lines.
fn run(args: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_keygate-load"))
        .args(args)
        .arg("--keygate-bin")
        .arg(env!("CARGO_BIN_EXE_keygate"))
        .output()
        .expect("harness runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "harness failed: {stderr}\n{stdout}");
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn has(line: &Value, fields: &[&str]) {
    for f in fields {
        assert!(line.get(*f).is_some(), "field {f} missing in {line}");
    }
}

#[test]
fn quick_run_reports_every_scenario_with_full_success() {
    let lines = run(&["--quick", "--scenario", "all"]);

    let find = |scenario: &str, target: &str| -> &Value {
        lines
            .iter()
            .find(|l| l["scenario"] == scenario && l["target"] == target)
            .unwrap_or_else(|| panic!("no line for {scenario}/{target}:\n{lines:?}"))
    };
    for target in ["bare", "keygate"] {
        let l = find("overhead", target);
        has(
            l,
            &[
                "requests",
                "rps",
                "p50_ms",
                "p90_ms",
                "p99_ms",
                "cpu_s_per_1k",
                "peak_rss_kb",
                "paced_rate",
                "paced_p99_ms",
                "paced_cpu_s_per_1k",
                "paced_success_rate",
                "paced_q_success_rate",
            ],
        );
        for f in ["success_rate", "paced_success_rate", "paced_q_success_rate"] {
            assert_eq!(l[f], 1.0, "overhead/{target} {f}: {l}");
        }
        let l = find("streaming", target);
        has(
            l,
            &[
                "requests",
                "rps",
                "p99_ms",
                "ttfe_p50_ms",
                "ttfe_p99_ms",
                "cpu_s_per_1k",
                "peak_rss_kb",
            ],
        );
        assert_eq!(l["success_rate"], 1.0, "streaming/{target}: {l}");
        let l = find("open_streams", target);
        has(
            l,
            &[
                "streams",
                "opened",
                "rss_base_kb",
                "rss_open_kb",
                "rss_per_stream_bytes",
            ],
        );
        assert_eq!(l["success_rate"], 1.0, "open_streams/{target}: {l}");
        let l = find("big_bodies", target);
        has(
            l,
            &[
                "bodies",
                "body_bytes",
                "bytes_in_flight",
                "peak_rss_kb",
                "peak_rss_over_bytes_in_flight",
            ],
        );
        assert_eq!(l["success_rate"], 1.0, "big_bodies/{target}: {l}");
    }
    for scenario in ["overhead", "streaming", "open_streams", "big_bodies"] {
        let l = find(scenario, "keygate/bare");
        assert!(l.as_object().is_some_and(|m| m.len() > 3), "ratio line {l}");
    }
    let l = find("rotation", "keygate");
    has(
        l,
        &[
            "requests",
            "success_rate",
            "attempts_per_request",
            "upstream_attempts_per_request",
            "limited",
            "max_429_per_burst",
        ],
    );
    assert_eq!(l["success_rate"], 1.0, "rotation: {l}");
    let limited = l["limited"].as_object().expect("limited keys");
    assert_eq!(limited.len(), 3, "every limited key got requests: {l}");
    for (k, v) in limited {
        assert!(v["r429"].as_u64().is_some_and(|n| n >= 1), "{k}: {v}");
    }
    assert!(
        l["attempts_per_request"].as_f64().is_some_and(|a| a > 1.0),
        "some requests rotated: {l}"
    );
}

#[test]
fn quick_cluster_run_reports_rotation_propagation_and_cpu_with_full_success() {
    let lines = run(&["--quick", "--scenario", "cluster"]);
    let all = |scenario: &str| -> Vec<&Value> {
        lines.iter().filter(|l| l["scenario"] == scenario).collect()
    };

    let rot = all("cluster_rotation");
    let cases: Vec<(u64, bool)> = rot
        .iter()
        .filter(|l| l["target"] == "keygate")
        .map(|l| (l["replicas"].as_u64().unwrap_or(0), l["cluster"] == true))
        .collect();
    assert_eq!(
        cases,
        [(1, true), (2, true), (4, true), (4, false)],
        "{rot:?}"
    );
    for l in rot.iter().filter(|l| l["target"] == "keygate") {
        has(
            l,
            &[
                "requests",
                "attempts_per_success",
                "max_429_per_key_window",
                "max_excess_429",
                "bound_met",
            ],
        );
        assert_eq!(l["success_rate"], 1.0, "cluster_rotation: {l}");
        let limited = l["limited"].as_object().expect("limited keys");
        assert_eq!(limited.len(), 2, "{l}");
        for (k, v) in limited {
            // Every limited key was tried and answered 429 at least once, in one window.
            assert!(v["r429"].as_u64().is_some_and(|n| n >= 1), "{k}: {l}");
            assert_eq!(v["windows"], 1, "{k}: {l}");
            assert!(
                v["in_flight_at_first_429"].as_u64().is_some_and(|n| n >= 1),
                "{k}: {l}"
            );
        }
    }
    assert!(rot.iter().any(|l| l["target"] == "summary"), "{rot:?}");

    let prop = all("cluster_propagation");
    let [p] = prop[..] else {
        panic!("one propagation line: {prop:?}")
    };
    has(p, &["p50_ms", "p99_ms", "status_poll_p50_ms"]);
    assert!(p["trials"].as_u64().is_some_and(|n| n >= 3), "{p}");
    assert_eq!(p["seen"], p["trials"], "B saw every window: {p}");
    assert_eq!(p["failed"], 0, "{p}");
    assert_eq!(p["b_sent_limited_key_after_seeing"], 0, "{p}");

    let cpu = all("cluster_overhead");
    for target in ["bare", "keygate", "keygate_cluster"] {
        let l = cpu
            .iter()
            .find(|l| l["target"] == target)
            .unwrap_or_else(|| panic!("no cluster_overhead/{target}: {cpu:?}"));
        has(l, &["cpu_s_per_1k", "paced_cpu_s_per_1k", "peak_rss_kb"]);
        for f in ["success_rate", "paced_success_rate", "paced_q_success_rate"] {
            assert_eq!(l[f], 1.0, "cluster_overhead/{target} {f}: {l}");
        }
    }
    let ratio = cpu
        .iter()
        .find(|l| l["target"] == "keygate_cluster/keygate")
        .expect("cluster ratio line");
    has(
        ratio,
        &[
            "cpu_per_request_ratio",
            "cpu_per_request_ratio_saturated",
            "redis_cpu_s_per_1k",
        ],
    );
}

/// `tls` (SPEC §12): TLS on both sides, keygate and nginx; needs `nginx` (the test command
/// installs `nginx-light`) and `openssl`, and fails saying so without them.
#[test]
fn quick_tls_run_reports_both_proxies_with_full_success_and_reused_upstream_connections() {
    let lines = run(&["--quick", "--scenario", "tls"]);
    for mode in ["json", "sse"] {
        for target in ["keygate", "nginx"] {
            let l = lines
                .iter()
                .find(|l| l["scenario"] == "tls" && l["target"] == target && l["mode"] == mode)
                .unwrap_or_else(|| panic!("no tls line for {target}/{mode}: {lines:?}"));
            has(
                l,
                &[
                    "requests",
                    "cpu_s_per_1k",
                    "upstream_new_connections_per_1k",
                    "upstream_tls_resumed",
                ],
            );
            assert_eq!(l["success_rate"], 1.0, "tls {target}/{mode}: {l}");
            assert!(l["requests"].as_u64().is_some_and(|n| n > 0), "{l}");
        }
        let k = lines
            .iter()
            .find(|l| l["target"] == "keygate" && l["mode"] == mode)
            .expect("keygate line");
        // Warmed up, keygate opens no new upstream connection while measured.
        assert_eq!(k["upstream_new_connections"], 0, "{k}");
        let r = lines
            .iter()
            .find(|l| l["target"] == "keygate/nginx" && l["mode"] == mode)
            .expect("ratio line");
        assert!(r["cpu_ratio"].as_f64().is_some(), "{r}");
    }
}
