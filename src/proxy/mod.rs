//! The request path: from an authenticated client request to a streamed upstream answer.
//!
//! Owns routing (`/{provider}/{rest}`), path safety, the bounded request body, model and pin
//! handling, the attempt loop over candidate credentials, and the response passthrough.
//! It does not own credential loading (`resolver`), inbound auth (`inbound`) or the
//! reserved admin paths (`admin`).

pub mod body;
pub mod budget;
pub mod error;
pub mod inject;
pub mod redact;
pub mod service;
pub mod upstream;

pub use body::ProxyBody;
pub use error::ProxyError;
pub use service::AppState;
