//! `keygate config check`: validate the config and print the effective provider table.

use std::process::ExitCode;

use super::Context;
use crate::provider::{AuthStyle, ModelFrom};

/// Validates and prints; exit 64 on a bad config, 1 when the file cannot be read.
pub(super) fn run(cx: &Context) -> ExitCode {
    let config = match cx.load_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    match &config.path {
        Some(p) => println!("config {} is valid", p.display()),
        None => println!("no config file: built-in defaults are valid"),
    }
    println!();
    println!(
        "{:<12} {:<48} {:<16} {:<6} {:<12} CONFIGURED",
        "PROVIDER", "BASE_URL", "AUTH", "MODEL", "ENV_PREFIX"
    );
    for p in config.providers.values() {
        let auth = match &p.auth {
            AuthStyle::XApiKey => "x-api-key".to_owned(),
            AuthStyle::Bearer => "bearer".to_owned(),
            AuthStyle::XGoogApiKey => "x-goog-api-key".to_owned(),
            AuthStyle::ApiKey => "api-key".to_owned(),
            AuthStyle::Header(h) => format!("header {h}"),
            AuthStyle::Query(q) => format!("query {q}"),
        };
        let model = match p.model_from {
            ModelFrom::Body => "body",
            ModelFrom::Path => "path",
        };
        let base = p
            .base_url
            .as_ref()
            .map_or_else(|| "(none: set base_url)".to_owned(), |u| u.to_string());
        println!(
            "{:<12} {:<48} {:<16} {:<6} {:<12} {}",
            p.id,
            base,
            auth,
            model,
            p.env_prefix,
            if p.configured { "yes" } else { "no" }
        );
    }
    ExitCode::SUCCESS
}
