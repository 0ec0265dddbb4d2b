//! `keygate models status --probe`: one minimal real request per credential.
//!
//! Owns the probe request per provider family, sent through the proxy's own upstream
//! client ([`crate::upstream::client`]), header cleaning and credential injection
//! ([`Injection`]), and the classifier ([`classify_response`]) against the provider's
//! configured `base_url`:
//! - Anthropic (`anthropic`, or a custom provider with `x-api-key` auth):
//!   `POST {base}/v1/messages` `{"model","max_tokens":1,"messages":[…"hi"]}`;
//! - Google (`google`, or `x-goog-api-key` auth): `POST {base}/v1beta/models/{model}:generateContent`;
//! - everything else (OpenAI-compatible): `POST {base}/v1/chat/completions` with `max_tokens: 1`.
//!
//! Row `status`: `ok`, `auth` (incl. `auth_permanent`), `rate_limit` (incl. `overloaded`),
//! `billing`, `timeout`, `format` (incl. `model_not_found`), `unknown`, `no_model`. A call
//! that failed carries the classifier's reason as `reasonCode` (`rate_limit`, `overloaded`,
//! …). A row for which no call was made has status `unknown` (nothing was learned from the
//! provider; OpenClaw's semantics) and says why in its `reasonCode`:
//! `excluded_by_auth_order`, `missing_credential` (incl. a provider with no credential at
//! all), `expired`, `invalid_expires`, `unresolved_ref`, `no_base_url`; the one exception is
//! `no_model`, which is its own status (SPEC §1).
//! JSON fields: `provider`, `model`, `credentialId`, `source`, `status`, `reasonCode`,
//! `detail`, `latencyMs`. The detail of a failed call is `HTTP <status>` only: provider
//! error bodies sometimes quote part of the key.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::parse_dur;
use crate::classify::{classify_response, ErrorBody, Reason};
use crate::config::{Config, ProviderConfig};
use crate::credentials::Credential;
use crate::inject::{clean_request_headers, Injection};
use crate::provider::AuthStyle;
use crate::status::{Health, StatusView, EXCLUDED_DETAIL};
use crate::upstream::{client, UpstreamClient};

/// One probe result.
#[derive(Clone, Debug)]
pub(super) struct ProbeRow {
    pub(super) provider: String,
    pub(super) model: Option<String>,
    pub(super) credential_id: Option<String>,
    pub(super) source: Option<&'static str>,
    pub(super) status: &'static str,
    pub(super) reason_code: Option<&'static str>,
    pub(super) detail: Option<String>,
    pub(super) latency_ms: Option<u64>,
}

/// What to do for one row.
enum Plan {
    Done(ProbeRow),
    Call(ProbeRow, Credential, Arc<ProviderConfig>),
}

/// `models status --probe` flags: which credentials to probe, and how.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// Probe only this provider.
    #[arg(long, value_name = "P")]
    pub probe_provider: Option<String>,
    /// Probe only these credential ids (repeat or comma-separate).
    #[arg(long, value_name = "ID", value_delimiter = ',')]
    pub probe_profile: Vec<String>,
    /// Time limit per probe request.
    #[arg(long, value_name = "DUR", default_value = "8s", value_parser = parse_dur)]
    pub probe_timeout: Duration,
    /// Probes in flight at once.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub probe_concurrency: u32,
}

/// Probes every credential of the view (filtered by `--probe-provider` / `--probe-profile`).
///
/// Errors: the runtime cannot start.
pub(super) fn run(
    config: &Config,
    view: &StatusView,
    args: &ProbeArgs,
) -> Result<Vec<ProbeRow>, String> {
    let mut plans = Vec::new();
    for p in &view.providers {
        if args
            .probe_provider
            .as_ref()
            .is_some_and(|only| only != &p.provider)
        {
            continue;
        }
        let Some(pc) = config.provider(&p.provider) else {
            continue;
        };
        let pc = Arc::new(pc.clone());
        let model = pc.probe_model.clone();
        let base = |status, reason_code: Option<&'static str>, detail: Option<String>| ProbeRow {
            provider: p.provider.clone(),
            model: model.clone(),
            credential_id: None,
            source: None,
            status,
            reason_code,
            detail,
            latency_ms: None,
        };
        if p.rows.is_empty() && args.probe_profile.is_empty() {
            plans.push(Plan::Done(base(
                "unknown",
                Some("missing_credential"),
                Some(format!(
                    "No credentials found for provider \"{}\"; run `keygate models auth paste-api-key --provider {}`",
                    p.provider, p.provider
                )),
            )));
            continue;
        }
        for r in &p.rows {
            if !args.probe_profile.is_empty() && !args.probe_profile.contains(&r.id) {
                continue;
            }
            let mut row = base("unknown", None, None);
            row.credential_id = Some(r.id.clone());
            row.source = Some(r.source.as_str());
            let no_call = |mut row: ProbeRow, status, code, detail: Option<String>| {
                row.status = status;
                row.reason_code = Some(code);
                row.detail = detail;
                Plan::Done(row)
            };
            let plan = if r.reason_code == Some("excluded_by_auth_order") {
                no_call(
                    row,
                    "unknown",
                    "excluded_by_auth_order",
                    Some(EXCLUDED_DETAIL.into()),
                )
            } else if let Some(
                code
                @ (crate::status::EXCLUDED_BY_PROFILES | "mode_mismatch" | "provider_mismatch"),
            ) = r.reason_code
            {
                no_call(row, "unknown", code, r.detail.clone())
            } else if let Some(
                code @ ("unresolved_ref" | "missing_credential" | "expired" | "invalid_expires"),
            ) = r.reason_code
            {
                no_call(row, "unknown", code, r.detail.clone())
            } else if matches!(r.health, Health::Missing) || r.cred.is_none() {
                no_call(row, "unknown", "missing_credential", r.detail.clone())
            } else if model.is_none() {
                no_call(
                    row,
                    "no_model",
                    "no_model",
                    Some(format!(
                        "No model to probe is configured for {}; set [providers.{}] probe_model",
                        p.provider, p.provider
                    )),
                )
            } else if pc.base_url.is_none() {
                no_call(
                    row,
                    "unknown",
                    "no_base_url",
                    Some(format!("[providers.{}] has no base_url", p.provider)),
                )
            } else {
                match &r.cred {
                    Some(c) => Plan::Call(row, c.clone(), pc.clone()),
                    None => no_call(row, "unknown", "missing_credential", None),
                }
            };
            plans.push(plan);
        }
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the probe runtime: {e}"))?;
    let timeout = args.probe_timeout;
    let limit = args.probe_concurrency as usize;
    let max_error_body = config.server.max_error_body;
    let http = client(&config.server, &config.upstream)?;
    Ok(rt.block_on(async move {
        let sem = Arc::new(Semaphore::new(limit));
        let mut tasks = Vec::with_capacity(plans.len());
        for plan in plans {
            match plan {
                Plan::Done(row) => tasks.push(tokio::spawn(async move { row })),
                Plan::Call(row, cred, pc) => {
                    let http = http.clone();
                    let sem = sem.clone();
                    tasks.push(tokio::spawn(async move {
                        let _permit = sem.acquire_owned().await;
                        call(&http, &pc, &cred, row, timeout, max_error_body).await
                    }));
                }
            }
        }
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            if let Ok(row) = t.await {
                out.push(row);
            }
        }
        out
    }))
}

/// Sends the probe and classifies the answer.
async fn call(
    http: &UpstreamClient,
    pc: &ProviderConfig,
    cred: &Credential,
    mut row: ProbeRow,
    timeout: std::time::Duration,
    max_error_body: usize,
) -> ProbeRow {
    let model = row.model.clone().unwrap_or_default();
    let req = match build_request(pc, cred, &model) {
        Ok(r) => r,
        Err(msg) => {
            row.status = "unknown";
            row.reason_code = Some("invalid_credential");
            row.detail = Some(msg);
            return row;
        }
    };
    let started = Instant::now();
    let exchange = async {
        let resp = http.request(req).await?;
        let (parts, mut body) = resp.into_parts();
        let mut kept = ErrorBody::new(max_error_body);
        if !parts.status.is_success() {
            while let Some(frame) = body.frame().await {
                let frame = frame?;
                if let Some(d) = frame.data_ref() {
                    if !kept.feed(d) {
                        break;
                    }
                }
            }
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((parts, kept))
    };
    let result = tokio::time::timeout(timeout, exchange).await;
    row.latency_ms = Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
    match result {
        Err(_) => {
            row.status = "timeout";
            row.reason_code = Some("timeout");
            row.detail = Some(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            ));
        }
        Ok(Err(e)) => {
            row.status = "unknown";
            row.reason_code = Some("transport");
            row.detail = Some(format!("request failed: {e}"));
        }
        Ok(Ok((parts, _))) if parts.status.is_success() => {
            row.status = "ok";
        }
        Ok(Ok((parts, body))) => {
            let v = classify_response(
                &pc.id,
                parts.status,
                &parts.headers,
                body.as_bytes(),
                SystemTime::now(),
            );
            row.status = match v.reason {
                Reason::RateLimit | Reason::Overloaded => "rate_limit",
                Reason::Billing => "billing",
                Reason::Auth | Reason::AuthPermanent => "auth",
                Reason::Timeout => "timeout",
                Reason::Format | Reason::ModelNotFound => "format",
                Reason::Unknown => "unknown",
            };
            row.reason_code = Some(v.reason.as_str());
            row.detail = Some(format!("HTTP {}", parts.status.as_u16()));
        }
    }
    row
}

/// The probe request for the provider's family.
fn build_request(
    pc: &ProviderConfig,
    cred: &Credential,
    model: &str,
) -> Result<Request<Full<Bytes>>, String> {
    let inject = Injection::new(pc, cred).map_err(|e| e.to_string())?;
    let base = pc
        .base_url
        .as_ref()
        .map(|u| u.to_string())
        .unwrap_or_default();
    let base = base.trim_end_matches('/');
    let anthropic = pc.id == "anthropic" || matches!(pc.auth, AuthStyle::XApiKey);
    let google = pc.id == "google" || matches!(pc.auth, AuthStyle::XGoogApiKey);
    let (path, body) = if anthropic {
        (
            "/v1/messages".to_owned(),
            json!({"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}),
        )
    } else if google {
        (
            format!("/v1beta/models/{model}:generateContent"),
            json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                   "generationConfig": {"maxOutputTokens": 1}}),
        )
    } else {
        (
            "/v1/chat/completions".to_owned(),
            json!({"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}),
        )
    };
    let mut uri = format!("{base}{path}");
    if let Some((name, value)) = inject.query() {
        uri.push_str(&format!("?{name}={value}"));
    }
    let mut headers = clean_request_headers(HeaderMap::new(), pc);
    if anthropic && !headers.contains_key("anthropic-version") {
        headers.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    inject.apply(&mut headers);
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(&uri)
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|_| format!("base_url of {} does not form a valid request URI", pc.id))?;
    *req.headers_mut() = headers;
    Ok(req)
}

/// Prints the probe table.
pub(super) fn print(rows: &[ProbeRow]) {
    println!(
        "{:<12} {:<28} {:<32} {:<8} {:<10} {:<24} {:>8}  DETAIL",
        "PROVIDER", "MODEL", "CREDENTIAL", "SOURCE", "STATUS", "REASON", "LATENCY"
    );
    for r in rows {
        println!(
            "{:<12} {:<28} {:<32} {:<8} {:<10} {:<24} {:>8}  {}",
            r.provider,
            r.model.as_deref().unwrap_or("-"),
            r.credential_id.as_deref().unwrap_or("-"),
            r.source.unwrap_or("-"),
            r.status,
            r.reason_code.unwrap_or("-"),
            r.latency_ms
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms}ms")),
            r.detail.as_deref().unwrap_or("")
        );
    }
}

impl ProbeRow {
    /// The JSON form (camelCase).
    pub(super) fn to_json(&self) -> Value {
        json!({
            "provider": self.provider,
            "model": self.model,
            "credentialId": self.credential_id,
            "source": self.source,
            "status": self.status,
            "reasonCode": self.reason_code,
            "detail": self.detail,
            "latencyMs": self.latency_ms,
        })
    }
}
