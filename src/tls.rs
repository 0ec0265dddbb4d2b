//! TLS on keygate's own listeners (SPEC §12): the certificate, key and client CA that
//! `[server.tls]` names.
//!
//! Owns reading and checking those files (PEM, at most 1 MiB each; the key file owner-only,
//! by the same rule as SecretRef files), building the rustls server config (`ring`, ALPN h2
//! then http/1.1, client certificates required when `client_ca_file` is set), and replacing
//! it when a file changes (polled, like the state files) or on SIGHUP. A new set that does
//! not load keeps the last good one and logs why, never key material. Connections already
//! open keep their session: the config is taken once per handshake.
//!
//! It does not own accepting, the handshake deadline or the protocol choice (see `server`),
//! nor TLS towards providers (see `upstream`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;
use crate::credentials::secret_ref::check_owner_only;

/// Largest certificate, key or CA file read.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// ALPN protocols offered, in preference order (RFC 7301; h2 over TLS needs ALPN).
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The listeners' TLS config, replaced in place when its files change.
pub struct ServerTls {
    files: TlsConfig,
    current: ArcSwap<rustls::ServerConfig>,
    /// The files' signatures when `current` was built (or when a broken version was last
    /// refused, so the warning is logged once per change, not once per poll).
    sigs: Mutex<[Option<FileSig>; 3]>,
}

/// What changes when a file is rewritten or a symlink repointed (Kubernetes secret volumes
/// swap a `..data` link): size, modification time, inode, all of the file the path leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileSig(u64, i128, u64);

// === impl ServerTls ===

impl ServerTls {
    /// Reads and checks the files. Errors name the file and what is wrong with it.
    pub fn load(files: &TlsConfig) -> Result<Self, String> {
        let sigs = sigs_of(files);
        let config = build(files)?;
        Ok(Self {
            files: files.clone(),
            current: ArcSwap::from_pointee(config),
            sigs: Mutex::new(sigs),
        })
    }

    /// The config for the next handshake.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.current.load_full()
    }

    /// The files this serves.
    pub fn files(&self) -> &TlsConfig {
        &self.files
    }

    /// Re-reads the files if one changed (or always, with `force`: SIGHUP). Returns whether
    /// the config was replaced. A new set that does not load keeps the current one and logs
    /// why. Blocking (file reads).
    pub fn reload(&self, force: bool) -> bool {
        let sigs = sigs_of(&self.files);
        {
            let mut last = self.sigs.lock().unwrap_or_else(|e| e.into_inner());
            if !force && *last == sigs {
                return false;
            }
            *last = sigs;
        }
        match build(&self.files) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                tracing::info!(
                    cert_file = %self.files.cert_file.display(),
                    "TLS certificate reloaded: new connections use it"
                );
                true
            }
            Err(why) => {
                tracing::warn!(
                    error = %why,
                    "TLS files changed but do not load: keeping the last good certificate"
                );
                false
            }
        }
    }

    /// Polls the files every `every` until `stop` changes.
    pub async fn watch(
        self: Arc<Self>,
        every: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let this = self.clone();
                    let _ = tokio::task::spawn_blocking(move || this.reload(false)).await;
                }
                _ = stop.changed() => return,
            }
        }
    }
}

fn sigs_of(files: &TlsConfig) -> [Option<FileSig>; 3] {
    [
        file_sig(&files.cert_file),
        file_sig(&files.key_file),
        files.client_ca_file.as_deref().and_then(file_sig),
    ]
}

fn file_sig(path: &Path) -> Option<FileSig> {
    let m = std::fs::metadata(path).ok()?;
    let mtime = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128);
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some(FileSig(m.len(), mtime, ino))
}

/// The rustls server config from the files.
fn build(files: &TlsConfig) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certs(&files.cert_file, "server.tls.cert_file")?;
    let key = read_key(&files.key_file)?;
    // Checks that the key is one ring can use and that it matches the leaf certificate.
    rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(
        |e| {
            format!(
                "server.tls.key_file {} does not go with server.tls.cert_file {}: {}",
                files.key_file.display(),
                files.cert_file.display(),
                pair_error(&e)
            )
        },
    )?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS protocol versions: {e}"))?;
    let builder = match &files.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(ca, "server.tls.client_ca_file")? {
                roots.add(cert).map_err(|e| {
                    format!(
                        "server.tls.client_ca_file {}: not a usable CA certificate: {e}",
                        ca.display()
                    )
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("server.tls.client_ca_file {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "server.tls.cert_file {}: {}",
            files.cert_file.display(),
            pair_error(&e)
        )
    })?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A rustls error about a certificate/key pair, in words that never include key material
/// (rustls errors carry none; this keeps the wording short).
fn pair_error(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InconsistentKeys(_) => {
            "the private key does not match the certificate".to_owned()
        }
        other => other.to_string(),
    }
}

/// Reads a file of at most [`MAX_PEM_BYTES`].
fn read_bounded(path: &Path, key: &str) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("{key} {shown}: cannot read: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{key} {shown}: cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(format!("{key} {shown}: larger than 1 MiB"));
    }
    Ok(bytes)
}

/// Every certificate in a PEM file (at least one).
fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read_bounded(path, key)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key} {}: not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{key} {}: no \"BEGIN CERTIFICATE\" block found (expected a PEM certificate chain)",
            path.display()
        ));
    }
    Ok(certs)
}

/// The private key: the file (or, for a symlink, the file it leads to, as in a Kubernetes
/// secret volume) must be owned by this user and closed to others.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let shown = path.display();
    let real: PathBuf = std::fs::canonicalize(path)
        .map_err(|e| format!("server.tls.key_file {shown}: cannot read: {e}"))?;
    check_owner_only(&real, "TLS key file", false)
        .map_err(|why| format!("server.tls.key_file {shown}: {why}"))?;
    let bytes = read_bounded(&real, "server.tls.key_file")?;
    // The parser's own error is not shown: it could quote part of the file.
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| {
        format!(
            "server.tls.key_file {shown}: no PEM private key found (expected \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\")"
        )
    })
}
