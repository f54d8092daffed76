//! The web dashboard: static assets embedded in the binary, served at `/`.
//! (Being built; see issue #7.)

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use crate::AppState;

pub fn router() -> Router<Arc<AppState>> {
    Router::new().route("/", get(|| async { "Outpost dashboard: coming soon" }))
}
