//! Host-side administration (workspaces, feature flags, API keys).
//! Deliberately not exposed over the REST API: a leaked API key must not be
//! able to mint keys. Every action that changes something is recorded in
//! the audit trail with the actor `admin-cli` (done or refused; reads are
//! not recorded).

use std::path::Path;

use crate::ids;
use crate::store::{
    AUDIT_ACTOR_ADMIN_CLI, ApiKeyInfo, KNOWN_FEATURES, NewApiKey, NewAuditEntry,
    PublisherKeyRecord, Store, StoreError, Workspace, now_ms,
};

/// Scopes an API key may carry (reference/000).
pub const SCOPE_DEVICE_READ: &str = "device:read";
pub const SCOPE_DEVICE_UPDATE: &str = "device:update";
pub const KNOWN_SCOPES: &[&str] = &[SCOPE_DEVICE_READ, SCOPE_DEVICE_UPDATE];

/// Mints a device-scoped API key (enrollment, rotation, connection reset):
/// returns the plaintext, shown once, and the record to store.
pub fn mint_device_key(
    workspace: &str,
    device_id: &str,
    now: crate::store::UnixMillis,
) -> (String, NewApiKey) {
    let key = ids::new_api_key();
    let record = NewApiKey {
        id: ids::new_internal_id(),
        workspace: workspace.to_string(),
        key_hash: ids::hash_secret(&key),
        scopes: Some(vec![SCOPE_DEVICE_READ.into(), SCOPE_DEVICE_UPDATE.into()]),
        device_id: Some(device_id.to_string()),
        created_at: now,
    };
    (key, record)
}

pub type AdminResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Administration against one data directory.
pub struct Admin {
    store: std::sync::Arc<dyn Store>,
}

fn check_features(features: &[String]) -> AdminResult<()> {
    for f in features {
        if !KNOWN_FEATURES.contains(&f.as_str()) {
            return Err(format!(
                "unknown feature {f:?}; known features: {}",
                KNOWN_FEATURES.join(", ")
            )
            .into());
        }
    }
    Ok(())
}

impl Admin {
    /// The store of `data_dir` (SQLite), or the PostgreSQL database at
    /// `database_url`.
    /// Only `serve` creates a data directory: an administration command on
    /// one that does not exist (a missing or mistyped `--data-dir`) would
    /// otherwise administer a new, empty database nobody serves.
    pub async fn open(data_dir: &Path, database_url: Option<&str>) -> AdminResult<Self> {
        if database_url.is_none() && !data_dir.is_dir() {
            return Err(format!(
                "no data directory {}: give --data-dir (or OUTPOST_DATA_DIR) as `serve` has it, or --database-url; `serve` creates a new one",
                data_dir.display()
            )
            .into());
        }
        Ok(Self {
            store: crate::config::open_store(data_dir, database_url).await?,
        })
    }

    pub async fn create_workspace(&self, name: &str, features: &[String]) -> AdminResult<()> {
        let res = self.create_workspace_unaudited(name, features).await;
        let ws = ids::is_valid_workspace_name(name).then_some(name);
        self.audit("createWorkspace", ws, Some(name), &res).await;
        res
    }

    async fn create_workspace_unaudited(&self, name: &str, features: &[String]) -> AdminResult<()> {
        if !ids::is_valid_workspace_name(name) {
            return Err(format!(
                "invalid workspace name {name:?}: use 1-64 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
            )
            .into());
        }
        check_features(features)?;
        let mut features = features.to_vec();
        features.sort();
        features.dedup();
        self.store
            .create_workspace(&Workspace {
                name: name.to_string(),
                features,
                created_at: now_ms(),
            })
            .await?;
        Ok(())
    }

    pub async fn list_workspaces(&self) -> AdminResult<Vec<Workspace>> {
        Ok(self.store.list_workspaces().await?)
    }

    /// Turns features on and off; returns the resulting list.
    pub async fn set_features(
        &self,
        name: &str,
        enable: &[String],
        disable: &[String],
    ) -> AdminResult<Vec<String>> {
        let res = self.set_features_unaudited(name, enable, disable).await;
        let ws = ids::is_valid_workspace_name(name).then_some(name);
        self.audit("setWorkspaceFeatures", ws, Some(name), &res)
            .await;
        res
    }

    async fn set_features_unaudited(
        &self,
        name: &str,
        enable: &[String],
        disable: &[String],
    ) -> AdminResult<Vec<String>> {
        check_features(enable)?;
        check_features(disable)?;
        let ws = self.workspace(name).await?;
        let mut features: Vec<String> = ws
            .features
            .into_iter()
            .filter(|f| !disable.contains(f))
            .collect();
        features.extend(enable.iter().cloned());
        features.sort();
        features.dedup();
        self.store.set_workspace_features(name, &features).await?;
        Ok(features)
    }

    async fn workspace(&self, name: &str) -> AdminResult<Workspace> {
        self.store.get_workspace(name).await?.ok_or_else(|| {
            format!("workspace {name:?} does not exist; create it with `outpost-control-plane workspace create {name}`")
                .into()
        })
    }

    /// Creates an API key; returns (id, plaintext). The plaintext is shown
    /// once; only its hash is stored.
    pub async fn create_api_key(
        &self,
        workspace: &str,
        scopes: &[String],
    ) -> AdminResult<(String, String)> {
        let res = self.create_api_key_unaudited(workspace, scopes).await;
        let ws = ids::is_valid_workspace_name(workspace).then_some(workspace);
        let target = res.as_ref().ok().map(|(id, _)| id.as_str());
        self.audit("createApiKey", ws, target, &res).await;
        res
    }

    async fn create_api_key_unaudited(
        &self,
        workspace: &str,
        scopes: &[String],
    ) -> AdminResult<(String, String)> {
        for s in scopes {
            if !KNOWN_SCOPES.contains(&s.as_str()) {
                return Err(format!(
                    "unknown scope {s:?}; known scopes: {}",
                    KNOWN_SCOPES.join(", ")
                )
                .into());
            }
        }
        self.workspace(workspace).await?;
        let key = ids::new_api_key();
        let id = format!("key_{}", ids::new_internal_id());
        self.store
            .create_api_key(&NewApiKey {
                id: id.clone(),
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
        Ok((id, key))
    }

    pub async fn list_api_keys(&self, workspace: &str) -> AdminResult<Vec<ApiKeyInfo>> {
        self.workspace(workspace).await?;
        Ok(self.store.list_api_keys(workspace).await?)
    }

    pub async fn revoke_api_key(&self, id: &str) -> AdminResult<()> {
        let res: AdminResult<()> = match self.store.revoke_api_key(id, now_ms()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("no live API key with id {id:?} (see `api-key list`)").into()),
            Err(e) => Err(e.into()),
        };
        let ws = self.store.api_key_workspace(id).await.ok().flatten();
        self.audit("revokeApiKey", ws.as_deref(), Some(id), &res)
            .await;
        res
    }

    /// Trusts a publisher key in the workspace (docs/artifacts.md); returns
    /// the key in canonical form and whether it is new.
    pub async fn add_publisher_key(
        &self,
        workspace: &str,
        key: &str,
    ) -> AdminResult<(String, bool)> {
        let res = self.add_publisher_key_unaudited(workspace, key).await;
        let ws = ids::is_valid_workspace_name(workspace).then_some(workspace);
        let target = res.as_ref().ok().map(|(k, _)| k.as_str());
        self.audit("addPublisherKey", ws, target, &res).await;
        res
    }

    async fn add_publisher_key_unaudited(
        &self,
        workspace: &str,
        key: &str,
    ) -> AdminResult<(String, bool)> {
        let key = parse_publisher_key(key)?;
        self.workspace(workspace).await?;
        let added = self
            .store
            .add_publisher_key(workspace, &key, now_ms())
            .await?;
        Ok((key, added))
    }

    /// Stops trusting a publisher key; an error when it was not trusted.
    pub async fn remove_publisher_key(&self, workspace: &str, key: &str) -> AdminResult<String> {
        let res = self.remove_publisher_key_unaudited(workspace, key).await;
        let ws = ids::is_valid_workspace_name(workspace).then_some(workspace);
        let target = res.as_ref().ok().map(String::as_str);
        self.audit("removePublisherKey", ws, target, &res).await;
        res
    }

    async fn remove_publisher_key_unaudited(
        &self,
        workspace: &str,
        key: &str,
    ) -> AdminResult<String> {
        let key = parse_publisher_key(key)?;
        self.workspace(workspace).await?;
        if !self.store.remove_publisher_key(workspace, &key).await? {
            return Err(format!(
                "workspace {workspace} does not trust {key} (see `publisher-key list`)"
            )
            .into());
        }
        Ok(key)
    }

    pub async fn list_publisher_keys(
        &self,
        workspace: &str,
    ) -> AdminResult<Vec<PublisherKeyRecord>> {
        self.workspace(workspace).await?;
        Ok(self.store.list_publisher_keys(workspace).await?)
    }

    /// Records an admin action. A failed write is reported on stderr (via
    /// the log) but does not undo or fail the action, which is done.
    async fn audit<T>(
        &self,
        action: &str,
        workspace: Option<&str>,
        target: Option<&str>,
        res: &AdminResult<T>,
    ) {
        let entry = NewAuditEntry {
            timestamp: now_ms(),
            workspace: workspace.map(String::from),
            actor: Some(AUDIT_ACTOR_ADMIN_CLI.to_string()),
            action: action.to_string(),
            target: target.map(|t| t.chars().take(128).collect()),
            status: admin_status(res),
            request_id: None,
            client_addr: None,
        };
        if let Err(e) = self.store.insert_audit(&entry).await {
            tracing::warn!(action, "audit entry not stored: {e}");
        }
    }
}

/// A publisher key as given on the command line, in canonical text.
fn parse_publisher_key(key: &str) -> AdminResult<String> {
    key.parse::<outpost_common::artifact::PublicKey>()
        .map(|k| k.to_string())
        .map_err(|e| {
            format!("{e} (a publisher key reads ed25519:<base64>, as `outpostctl artifact keygen` prints it)").into()
        })
}

/// An admin action's result as an HTTP-like status: 200 done; refused: 409
/// (already exists), 500 (store failure), else 400 (invalid or unknown
/// input).
fn admin_status<T>(res: &AdminResult<T>) -> u16 {
    match res {
        Ok(_) => 200,
        Err(e) => match e.downcast_ref::<StoreError>() {
            Some(StoreError::Conflict(_)) => 409,
            Some(StoreError::NotFound) => 404,
            Some(_) => 500,
            None => 400,
        },
    }
}
