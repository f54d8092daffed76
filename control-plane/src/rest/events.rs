//! `/{workspace}/devices/v2/{deviceId}/events`: what happened to a device.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;

use crate::AppState;
use crate::store::{Direction, Event, EventQuery};

use super::auth::{Caller, Scope, Target, authorized_device};
use super::error::ApiError;
#[allow(unused_imports)]
use super::openapi::*;
use super::pagination::{Page, decode_cursor, page, parse_limit};
use super::params::{Params, format_time, parse_direction};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventView {
    id: i64,
    timestamp: String,
    #[serde(rename = "type")]
    kind: String,
    #[schema(value_type = Object)]
    detail: serde_json::Value,
}

impl From<Event> for EventView {
    fn from(e: Event) -> Self {
        EventView {
            id: e.id,
            timestamp: format_time(e.timestamp),
            kind: e.kind,
            detail: e.detail,
        }
    }
}

#[utoipa::path(
    get,
    path = "/{workspace}/devices/v2/{device_id}/events",
    operation_id = "listEvents",
    tag = "devices",
    params(DevicePath, DirectedPageQuery),
    responses(
        (status = 200, description = "Success", body = Page<EventView>),
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((_, device_id)): Path<(String, String)>,
    params: Params,
) -> Result<Json<Page<EventView>>, ApiError> {
    caller.require(Scope::DeviceRead, Target::Device(&device_id))?;
    let limit = parse_limit(params.get("limit"), 50, 500)?;
    let direction: Direction = parse_direction(params.get("direction"))?;
    let after_id: Option<i64> = decode_cursor(params.get("cursor"))?;
    let device = authorized_device(&state, &caller, Scope::DeviceRead, &device_id).await?;
    let rows = state
        .store
        .list_events(&EventQuery {
            device_id: device.id,
            after_id,
            direction,
            limit: limit + 1,
        })
        .await?;
    Ok(Json(page(rows, limit, |e| e.id, EventView::from)))
}
