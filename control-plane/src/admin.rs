//! Host-side administration (workspaces, API keys). Deliberately not exposed
//! over the REST API: a leaked API key must not be able to mint keys.

use std::path::Path;

use crate::ids;
use crate::store::{KNOWN_FEATURES, NewApiKey, SqliteStore, Store, Workspace, now_ms};

/// Scopes an API key may carry (reference/000).
pub const SCOPE_DEVICE_READ: &str = "device:read";
pub const SCOPE_DEVICE_UPDATE: &str = "device:update";
pub const KNOWN_SCOPES: &[&str] = &[SCOPE_DEVICE_READ, SCOPE_DEVICE_UPDATE];

pub type AdminResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub async fn create_workspace(data_dir: &Path, name: &str, features: &[String]) -> AdminResult<()> {
    if !ids::is_valid_workspace_name(name) {
        return Err(format!(
            "invalid workspace name {name:?}: use 1-64 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
        )
        .into());
    }
    for f in features {
        if !KNOWN_FEATURES.contains(&f.as_str()) {
            return Err(format!(
                "unknown feature {f:?}; known features: {}",
                KNOWN_FEATURES.join(", ")
            )
            .into());
        }
    }
    let mut features = features.to_vec();
    features.sort();
    features.dedup();
    let store = open(data_dir).await?;
    store
        .create_workspace(&Workspace {
            name: name.to_string(),
            features,
            created_at: now_ms(),
        })
        .await?;
    Ok(())
}

/// Creates an API key and returns its plaintext (shown once, stored hashed).
pub async fn create_api_key(
    data_dir: &Path,
    workspace: &str,
    scopes: &[String],
) -> AdminResult<String> {
    for s in scopes {
        if !KNOWN_SCOPES.contains(&s.as_str()) {
            return Err(format!(
                "unknown scope {s:?}; known scopes: {}",
                KNOWN_SCOPES.join(", ")
            )
            .into());
        }
    }
    let store = open(data_dir).await?;
    if store.get_workspace(workspace).await?.is_none() {
        return Err(format!(
            "workspace {workspace:?} does not exist; create it with `outpost-control-plane workspace create {workspace}`"
        )
        .into());
    }
    let key = ids::new_api_key();
    store
        .create_api_key(&NewApiKey {
            id: ids::new_internal_id(),
            workspace: workspace.to_string(),
            key_hash: ids::hash_secret(&key),
            scopes: if scopes.is_empty() {
                None
            } else {
                let mut s = scopes.to_vec();
                s.sort();
                s.dedup();
                Some(s)
            },
            device_id: None,
            created_at: now_ms(),
        })
        .await?;
    Ok(key)
}

async fn open(data_dir: &Path) -> AdminResult<SqliteStore> {
    crate::pki::create_private_dir(data_dir)?;
    Ok(SqliteStore::open(data_dir).await?)
}
