//! The HTTP endpoint: `/metrics` (Prometheus), `/healthz`, `/readyz`, and `/state/{flow}/{key}`
//! which answers from the local stores of the partitions this instance owns.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tally_topology::{FlowKind, Inventory, Ledger, Projection};

use crate::engine::StoreRegistry;
use crate::health::Health;

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    health: Arc<Health>,
    stores: Arc<StoreRegistry>,
    kinds: Arc<HashMap<String, FlowKind>>,
}

/// Serves until the process exits; binds before returning so a bad address fails the start.
pub fn serve(
    listen: SocketAddr,
    metrics: PrometheusHandle,
    health: Arc<Health>,
    stores: Arc<StoreRegistry>,
    kinds: HashMap<String, FlowKind>,
) -> std::io::Result<SocketAddr> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tally-http")
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind(listen))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_route))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/state/{flow}/{key}", get(state_route))
        .with_state(AppState {
            metrics,
            health,
            stores,
            kinds: Arc::new(kinds),
        });
    std::thread::Builder::new()
        .name("tally-http".into())
        .spawn(move || {
            if let Err(e) = rt.block_on(async { axum::serve(listener, app).await }) {
                tracing::error!(error = %e, "http server stopped");
            }
        })?;
    tracing::info!(%bound, "http listening");
    Ok(bound)
}

async fn metrics_route(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn healthz(State(s): State<AppState>) -> Response {
    status(s.health.healthy(), &s.health)
}

async fn readyz(State(s): State<AppState>) -> Response {
    status(s.health.ready(), &s.health)
}

fn status(ok: bool, health: &Health) -> Response {
    let (assigned, restoring) = health.partitions();
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = format!(
        "{{\"ok\":{ok},\"partitions_assigned\":{assigned},\"partitions_restoring\":{restoring}}}\n"
    );
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn state_route(
    State(s): State<AppState>,
    Path((flow, key)): Path<(String, String)>,
) -> Response {
    let Some(kind) = s.kinds.get(&flow).copied() else {
        return (StatusCode::NOT_FOUND, format!("unknown flow `{flow}`\n")).into_response();
    };
    let found = s
        .stores
        .iter()
        .filter(|e| e.key().0 == flow)
        .find_map(|e| e.value().state(key.as_bytes()).ok().flatten());
    let Some(bytes) = found else {
        return (
            StatusCode::NOT_FOUND,
            format!("key `{key}` is not in a partition owned here\n"),
        )
            .into_response();
    };
    let mut out = Vec::new();
    let rendered = match kind {
        FlowKind::Inventory => render::<Inventory>(&bytes, &mut out),
        FlowKind::Ledger => render::<Ledger>(&bytes, &mut out),
    };
    match rendered {
        Ok(()) => ([(header::CONTENT_TYPE, "application/json")], out).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

fn render<P: Projection>(bytes: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let state = P::decode_state(bytes).map_err(|e| e.to_string())?;
    P::render(&state, out).map_err(|e| e.to_string())
}
