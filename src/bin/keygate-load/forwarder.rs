//! The bare forwarder: the floor for this stack (`keygate-load --bare-forwarder`).
//!
//! hyper 1 server + hyper-util pooled client, nothing else: `/{provider}/{rest}` is sent to
//! `http://UPSTREAM/{rest}` with hop-by-hop headers removed, request and response bodies
//! streamed through untouched. No auth, no body buffering, no classification, no logging.
//! Whatever keygate costs above this is keygate's own cost.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type Upstream = Client<HttpConnector, Incoming>;
type Out = Either<Incoming, Full<Bytes>>;

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

async fn forward(
    client: Upstream,
    upstream: Arc<str>,
    mut req: Request<Incoming>,
) -> Result<Response<Out>, Infallible> {
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    // Drop the `/{provider}` segment, as keygate does.
    let rest = pq[1..].find('/').map_or("/", |i| &pq[1 + i..]);
    let Ok(uri) = Uri::try_from(format!("http://{upstream}{rest}")) else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    *req.uri_mut() = uri;
    for h in HOP_BY_HOP {
        req.headers_mut().remove(h);
    }
    match client.request(req).await {
        Ok(resp) => Ok(resp.map(Either::Left)),
        Err(_) => Ok(status(StatusCode::BAD_GATEWAY)),
    }
}

fn status(s: StatusCode) -> Response<Out> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::new())));
    *r.status_mut() = s;
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, header::HeaderValue::from(0));
    r
}

/// Forwards every connection on `listener` to `upstream` (`host:port`) forever.
pub(crate) async fn run(listener: TcpListener, upstream: String) {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    let client: Upstream = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(http);
    let upstream: Arc<str> = upstream.into();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (client, upstream) = (client.clone(), upstream.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| forward(client.clone(), upstream.clone(), req));
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
