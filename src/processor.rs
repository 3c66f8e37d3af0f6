//! A whole processor in one call: metrics, health, the HTTP endpoints and the engine, running
//! the projections its config's flows name. `tally run` is this and its signal handling.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::config::Config;
use crate::engine::{EngineError, Projectors, StoreRegistry};
use crate::group::{Advertised, Directory};
use crate::health::Health;
use crate::http::HttpError;

/// Why a processor did not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Serves HTTP, then runs the engine in the calling thread until `shutdown` is set; returns
/// the address HTTP was bound to.
pub fn run(
    cfg: Config,
    projections: &dyn Projectors,
    shutdown: Arc<AtomicBool>,
) -> Result<SocketAddr, ProcessorError> {
    let handle = crate::metrics::install();
    let health = Arc::new(Health::new(cfg.health.stall_timeout));
    let stores = Arc::new(StoreRegistry::default());
    let directory = Directory::new(
        Advertised {
            instance: cfg.instance(),
            server: cfg.application_server.clone(),
        },
        cfg.num_standby_replicas as usize,
    );
    let renderers: HashMap<_, _> = cfg
        .flows
        .iter()
        .filter_map(|f| {
            Some((
                f.name.clone(),
                projections.projector(f.projection_name()).ok()?,
            ))
        })
        .collect();
    let bound = crate::http::serve(
        &cfg.http,
        handle,
        Arc::clone(&health),
        Arc::clone(&stores),
        renderers,
        Arc::clone(&directory),
    )?;
    let ran = crate::engine::run(
        cfg,
        projections,
        shutdown,
        health,
        stores,
        Arc::clone(&directory),
    );
    directory.stop();
    ran?;
    Ok(bound)
}
