//! The HTTP endpoint: `/metrics` (Prometheus), `/healthz`, `/readyz`, and the queries
//! `/state/{flow}/{key}` and `/owners/{flow}/{key}` (see [`queries`]). HTTPS and a bearer token
//! for the queries are optional; every answer is JSON but the metrics.

mod forward;
mod queries;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::HttpConfig;
use crate::engine::{Projector, StoreRegistry};
use crate::group::Directory;
use crate::health::Health;
use crate::secret::Secret;

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    health: Arc<Health>,
    stores: Arc<StoreRegistry>,
    /// Flow name -> the projection that renders its states.
    projections: Arc<HashMap<String, Projector>>,
    /// Who owns which partition, and where the other instances answer.
    directory: Arc<Directory>,
    /// The client that forwards a query to the key's owner.
    forward: Arc<forward::Forwarder>,
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("binding http.listen {listen}: {source}")]
    Bind {
        listen: SocketAddr,
        source: std::io::Error,
    },
    #[error("http.tls: {0}")]
    Tls(String),
    #[error("starting the http thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Serves until the process exits; binds (and loads the TLS files) before returning, so a bad
/// address or certificate fails the start.
pub(crate) fn serve(
    http: &HttpConfig,
    metrics: PrometheusHandle,
    health: Arc<Health>,
    stores: Arc<StoreRegistry>,
    projections: HashMap<String, Projector>,
    directory: Arc<Directory>,
) -> Result<SocketAddr, HttpError> {
    let listen = http.listen;
    let listener = std::net::TcpListener::bind(listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| HttpError::Bind { listen, source })?;
    let bound = listener.local_addr()?;
    let tls = match &http.tls {
        Some(t) => Some(
            axum_server::tls_openssl::OpenSSLConfig::from_pem_file(&t.certificate, &t.private_key)
                .map_err(|e| {
                    HttpError::Tls(format!(
                        "cannot load `{}` / `{}`: {e}",
                        t.certificate.display(),
                        t.private_key.display()
                    ))
                })?,
        ),
        None => None,
    };
    let forward = forward::Forwarder::new(http).map_err(HttpError::Tls)?;
    let state = AppState {
        metrics,
        health,
        stores,
        projections: Arc::new(projections),
        directory,
        forward: Arc::new(forward),
    };
    let queries = Router::new()
        .route("/state/{flow}/{key}", get(queries::state))
        .route("/owners/{flow}/{key}", get(queries::owners))
        .route_layer(middleware::from_fn_with_state(
            http.token.clone(),
            require_token,
        ));
    let app = Router::new()
        .route("/metrics", get(metrics_route))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(queries)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route".into()) })
        .with_state(state);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tally-http")
        .enable_all()
        .build()?;
    let https = tls.is_some();
    std::thread::Builder::new()
        .name("tally-http".into())
        .spawn(move || {
            let served = rt.block_on(async move {
                let service = app.into_make_service();
                match tls {
                    Some(tls) => {
                        let acceptor = axum_server::tls_openssl::OpenSSLAcceptor::new(tls);
                        axum_server::from_tcp(listener)
                            .acceptor(acceptor)
                            .serve(service)
                            .await
                    }
                    None => axum_server::from_tcp(listener).serve(service).await,
                }
            });
            if let Err(e) = served {
                tracing::error!(error = %e, "http server stopped");
            }
        })?;
    tracing::info!(%bound, https, token = http.token.is_some(), "http listening");
    Ok(bound)
}

/// Lets a request through only with `Authorization: Bearer <token>`, when a token is set.
async fn require_token(
    State(token): State<Option<Secret>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = token else {
        return next.run(request).await;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.expose().as_bytes()) => {
            next.run(request).await
        }
        _ => {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "a bearer token is required".into(),
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            r
        }
    }
}

/// Compares without returning early, so timing tells nothing about how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A JSON error answer.
fn error(code: StatusCode, message: String) -> Response {
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn metrics_route(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::redact::redact(&s.metrics.render()).into_owned(),
    )
        .into_response()
}

async fn healthz(State(s): State<AppState>) -> Response {
    status(s.health.report(false))
}

async fn readyz(State(s): State<AppState>) -> Response {
    status(s.health.report(true))
}

fn status(report: crate::health::Report) -> Response {
    let code = if report.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report)).into_response()
}
