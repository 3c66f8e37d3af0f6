//! Queries from any instance: `/state/{flow}/{key}` answers from the local store when the key's
//! partition is active here, else forwards to its owner (one hop), or says 503 + `Retry-After`
//! while the partition moves; `?allow_stale=true` takes a local standby's answer, with its lag.
//! `/owners/{flow}/{key}` names the partition, its active instance and its standbys.

use std::sync::atomic::Ordering;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{error, AppState};
use crate::engine::StoreRole;

/// Set on a forwarded query: the owner answers it from its own stores or not at all.
const FORWARDED_BY: HeaderName = HeaderName::from_static("tally-forwarded-by");
/// The instance whose store answered.
const SERVED_BY: HeaderName = HeaderName::from_static("tally-served-by");
/// The key's input partition.
const PARTITION: HeaderName = HeaderName::from_static("tally-partition");
/// On an answer from a standby: changelog records it is behind (-1: not read yet).
const STANDBY_LAG: HeaderName = HeaderName::from_static("tally-standby-lag");
/// Seconds a client waits before it asks again while a partition moves.
const RETRY_SECONDS: &str = "1";

/// `?allow_stale=true`.
#[derive(Deserialize, Default)]
pub(super) struct Params {
    #[serde(default)]
    allow_stale: bool,
}

/// What the store here can say of a partition.
enum Local {
    Active(tally_state::Store),
    Restoring,
    Standby(tally_state::Store, i64),
    None,
}

fn local(s: &AppState, flow: &str, partition: i32) -> Local {
    let Some(entry) = s.stores.get(&(flow.to_string(), partition)) else {
        return Local::None;
    };
    match &entry.role {
        StoreRole::Task { active } if active.load(Ordering::Acquire) => {
            Local::Active(entry.store.clone())
        }
        StoreRole::Task { .. } => Local::Restoring,
        StoreRole::Standby { lag } => {
            Local::Standby(entry.store.clone(), lag.load(Ordering::Relaxed))
        }
    }
}

fn moving(message: String) -> Response {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, message);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_SECONDS));
    r
}

pub(super) async fn state(
    State(s): State<AppState>,
    Path((flow, key)): Path<(String, String)>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Response {
    let Some(projection) = s.projections.get(&flow) else {
        return error(StatusCode::NOT_FOUND, format!("unknown flow `{flow}`"));
    };
    let Some((topic, partition)) = s.directory.locate(&flow, &key) else {
        return moving(format!("flow `{flow}` is not running here yet"));
    };
    let me = s.directory.me().instance.clone();
    let answer = |store: &tally_state::Store| -> Response {
        let mut r = match store.state(key.as_bytes()) {
            Ok(Some(bytes)) => match projection.render_state(&bytes) {
                Ok(out) => ([(header::CONTENT_TYPE, "application/json")], out).into_response(),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
            },
            Ok(None) => error(
                StatusCode::NOT_FOUND,
                format!("no state for key `{key}` (partition {partition})"),
            ),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        let h = r.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&me) {
            h.insert(SERVED_BY, v);
        }
        h.insert(PARTITION, HeaderValue::from(partition));
        r
    };
    match local(&s, &flow, partition) {
        Local::Active(store) => return answer(&store),
        Local::Restoring => {
            return moving(format!(
                "partition {partition} of `{flow}` is restoring here; ask again shortly"
            ))
        }
        Local::Standby(store, lag) if params.allow_stale => {
            let mut r = answer(&store);
            r.headers_mut().insert(STANDBY_LAG, HeaderValue::from(lag));
            return r;
        }
        Local::Standby(..) | Local::None => {}
    }
    if headers.contains_key(FORWARDED_BY) {
        return moving(format!(
            "partition {partition} of `{flow}` is not active here (it moved); ask again shortly"
        ));
    }
    let owner = s.directory.view().and_then(|v| {
        v.owner(&topic, partition)
            .map(|m| (m.instance.clone(), m.server.clone()))
    });
    let Some((owner, server)) = owner else {
        return moving(format!(
            "partition {partition} of `{flow}` has no owner right now (the group is rebalancing)"
        ));
    };
    if owner == me {
        return moving(format!(
            "partition {partition} of `{flow}` is being assigned here; ask again shortly"
        ));
    }
    let Some(server) = server else {
        return error(
            StatusCode::BAD_GATEWAY,
            format!("key `{key}` is owned by `{owner}`, which advertises no application_server"),
        );
    };
    let mut pass = vec![(
        FORWARDED_BY,
        HeaderValue::from_str(&me).unwrap_or(HeaderValue::from_static("tally")),
    )];
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        pass.push((header::AUTHORIZATION, auth.clone()));
    }
    let path = if params.allow_stale {
        format!("/state/{}/{}?allow_stale=true", encode(&flow), encode(&key))
    } else {
        format!("/state/{}/{}", encode(&flow), encode(&key))
    };
    match s.forward.get(&server, &path, &pass).await {
        Ok(a) => {
            let mut r = (a.status, a.body).into_response();
            for name in [
                header::CONTENT_TYPE,
                header::RETRY_AFTER,
                SERVED_BY,
                PARTITION,
                STANDBY_LAG,
            ] {
                if let Some(v) = a.headers.get(&name) {
                    r.headers_mut().insert(name, v.clone());
                }
            }
            r
        }
        Err(e) => {
            tracing::debug!(%owner, %server, error = %e, "forwarding a query failed");
            moving(format!(
                "the owner of partition {partition} of `{flow}` (`{owner}` at {server}) does not answer ({e}); the partition may be moving"
            ))
        }
    }
}

/// Percent-encodes a path segment (a key may hold any character).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(super) async fn owners(
    State(s): State<AppState>,
    Path((flow, key)): Path<(String, String)>,
) -> Response {
    if !s.projections.contains_key(&flow) {
        return error(StatusCode::NOT_FOUND, format!("unknown flow `{flow}`"));
    }
    let Some((topic, partition)) = s.directory.locate(&flow, &key) else {
        return moving(format!("flow `{flow}` is not running here yet"));
    };
    let Some(view) = s.directory.view() else {
        return moving("the group has not been described yet".into());
    };
    let who = |m: &crate::group::Member| serde_json::json!({ "instance": m.instance, "server": m.server });
    let active = view.owner(&topic, partition);
    let standbys: Vec<_> = view
        .standbys(&topic, partition, s.directory.replicas())
        .into_iter()
        .map(who)
        .collect();
    let body = serde_json::json!({
        "flow": flow,
        "key": key,
        "topic": topic,
        "partition": partition,
        "active": active.map(who),
        "standbys": standbys,
        "group_state": view.state,
        "moving": active.is_none() || !view.stable(),
    });
    (StatusCode::OK, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::encode;

    #[rstest]
    #[case("sku-000042", "sku-000042")]
    #[case("a/b c", "a%2Fb%20c")]
    #[case("é", "%C3%A9")]
    fn a_key_is_encoded_as_one_path_segment(#[case] key: &str, #[case] encoded: &str) {
        assert_eq!(encode(key), encoded);
    }
}
