//! `keygate config check`: validate the config and print the effective provider table, then
//! the effective TLS and egress settings (SPEC §12: the proxy's host only, never its
//! credentials).

use std::process::ExitCode;

use super::Context;
use crate::config::{Config, ProxyUrl, Roots};
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
    println!();
    print_network(&config);
    ExitCode::SUCCESS
}

/// `[server.tls]` and `[upstream]` as they will apply. The TLS files are tried too, but a
/// failure only prints (the check may run where the files are not mounted); `serve` refuses
/// to start on it.
fn print_network(config: &Config) {
    match &config.server.tls {
        None => println!(
            "tls              off (plain HTTP{})",
            if config.server.plaintext_ok {
                "; plaintext_ok = true"
            } else {
                ""
            }
        ),
        Some(t) => {
            println!("tls              on (ALPN h2, http/1.1)");
            println!("  cert_file      {}", t.cert_file.display());
            println!("  key_file       {}", t.key_file.display());
            match &t.client_ca_file {
                Some(ca) => println!("  client certs   required, signed by {}", ca.display()),
                None => println!("  client certs   not asked for"),
            }
            match crate::tls::ServerTls::load(t) {
                Ok(_) => println!("  files          load"),
                Err(why) => println!("  files          do not load here: {why}"),
            }
        }
    }
    let u = &config.upstream;
    let roots = match u.roots {
        Roots::Webpki => "webpki (built-in)",
        Roots::Native => "native (system store)",
        Roots::Both => "both (built-in and system store)",
    };
    println!("upstream roots   {roots}");
    for f in &u.ca_files {
        println!("  extra CA file  {}", f.display());
    }
    if let Some(d) = &u.ca_dir {
        println!("  SSL_CERT_DIR   {}", d.display());
    }
    let proxy = |p: &Option<ProxyUrl>| match p {
        Some(p) => format!("{} (from {})", p.host, p.from),
        None => "direct".to_owned(),
    };
    println!("egress https     {}", proxy(&u.https_proxy));
    println!("egress http      {}", proxy(&u.http_proxy));
    if !u.no_proxy.is_empty() {
        println!("no_proxy         {}", u.no_proxy);
    }
}
