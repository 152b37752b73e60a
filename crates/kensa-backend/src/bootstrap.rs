//! Seeding a new store (`kensa-backend init`, or `start` with the admin variables on an
//! empty store): namespace `default`, the cluster admin, the `agent` user, Sensu's default
//! ClusterRoles and ClusterRoleBindings (reference §3.11, §5.3), and the marker that says so.
//!
//! Everything is written in one atomic `put_all`: a store is either initialized or not.

use kensa_store::{Key, Store, StoreError};
use kensa_types::Kind;
use serde_json::{json, Value};

use crate::auth::password;
use crate::config::AdminCredentials;
use crate::CONFIG_KIND;

/// The default agent credentials (Sensu's): agents authenticate as `agent` / `P@ssw0rd!`.
pub const AGENT_USERNAME: &str = "agent";
pub const AGENT_PASSWORD: &str = "P@ssw0rd!";

const NAMESPACED_CONFIG: &[&str] = &[
    "assets",
    "checks",
    "entities",
    "events",
    "filters",
    "handlers",
    "hooks",
    "mutators",
    "silenced",
    "pipelines",
];

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("store is already initialized")]
    AlreadyInitialized,
    #[error("invalid cluster admin: {0}")]
    InvalidAdmin(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn initialized_key() -> Key {
    Key::new(CONFIG_KIND, "", "initialized")
}

pub async fn is_initialized(store: &dyn Store) -> Result<bool, StoreError> {
    Ok(store.get(&initialized_key()).await?.is_some())
}

fn rule(verbs: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": verbs, "resources": resources, "resource_names": null})
}

fn cluster_role(name: &str, rules: Vec<Value>) -> (Kind, Value) {
    (
        Kind::ClusterRole,
        json!({"metadata": {"name": name}, "rules": rules}),
    )
}

fn cluster_role_binding(name: &str, role: &str, group: &str) -> (Kind, Value) {
    (
        Kind::ClusterRoleBinding,
        json!({
            "metadata": {"name": name},
            "role_ref": {"type": "ClusterRole", "name": role},
            "subjects": [{"type": "Group", "name": group}],
        }),
    )
}

/// The default RBAC objects, as Sensu seeds them.
pub fn default_rbac() -> Vec<(Kind, Value)> {
    let with_rbac: Vec<&str> = NAMESPACED_CONFIG
        .iter()
        .copied()
        .chain(["roles", "rolebindings"])
        .collect();
    let mut viewable: Vec<&str> = NAMESPACED_CONFIG.to_vec();
    viewable.push("namespaces");
    vec![
        cluster_role("cluster-admin", vec![rule(&["*"], &["*"])]),
        cluster_role(
            "admin",
            vec![
                rule(&["*"], &with_rbac),
                rule(&["get", "list"], &["namespaces"]),
            ],
        ),
        cluster_role(
            "edit",
            vec![
                rule(&["*"], NAMESPACED_CONFIG),
                rule(&["get", "list"], &["namespaces"]),
            ],
        ),
        cluster_role("view", vec![rule(&["get", "list"], &viewable)]),
        cluster_role("system:agent", vec![rule(&["*"], &["events"])]),
        cluster_role(
            "system:user",
            vec![rule(&["get", "update"], &["localselfuser"])],
        ),
        cluster_role_binding("cluster-admin", "cluster-admin", "cluster-admins"),
        cluster_role_binding("system:agent", "system:agent", "system:agents"),
        cluster_role_binding("system:user", "system:user", "system:users"),
    ]
}

/// Seeds the store. Fails with `AlreadyInitialized` if it was seeded before (credentials are
/// never changed by a second init).
pub async fn initialize(store: &dyn Store, admin: &AdminCredentials) -> Result<(), InitError> {
    if is_initialized(store).await? {
        return Err(InitError::AlreadyInitialized);
    }
    if admin.password.len() < 8 {
        return Err(InitError::InvalidAdmin(
            "password must be at least 8 characters".into(),
        ));
    }
    let admin_hash = password::hash_blocking(admin.password.clone()).await;
    let agent_hash = password::hash_blocking(AGENT_PASSWORD.to_owned()).await;
    let mut resources = vec![
        (Kind::Namespace, json!({"name": "default"})),
        (
            Kind::User,
            json!({"username": admin.username, "password_hash": admin_hash, "groups": ["cluster-admins"], "disabled": false}),
        ),
        (
            Kind::User,
            json!({"username": AGENT_USERNAME, "password_hash": agent_hash, "groups": ["system:agents"], "disabled": false}),
        ),
    ];
    resources.extend(default_rbac());
    let mut items = Vec::with_capacity(resources.len() + 1);
    for (kind, value) in resources {
        let value = kind
            .normalize(value)
            .map_err(|err| InitError::InvalidAdmin(format!("{kind}: {err}")))?;
        let name = kind.name_of(&value).expect("seed resources are named");
        items.push((Key::new(kind.resource(), "", name), value));
    }
    items.push((
        initialized_key(),
        json!({"initialized_at": crate::api::now_unix()}),
    ));
    store.put_all(&items).await?;
    Ok(())
}

/// The HS256 secret for access tokens: created once, shared by every backend on the store.
pub async fn jwt_secret(store: &dyn Store) -> Result<Vec<u8>, StoreError> {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use rand::RngCore;

    let key = Key::new(CONFIG_KIND, "", "jwt-secret");
    let mut fresh = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut fresh);
    match store
        .create(&key, &json!({"secret": STANDARD.encode(fresh)}))
        .await
    {
        Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
        Err(err) => return Err(err),
    }
    // Read back: another backend may have created it first.
    let stored = store
        .get(&key)
        .await?
        .ok_or_else(|| StoreError::Internal("jwt secret vanished".into()))?;
    STANDARD
        .decode(stored.value["secret"].as_str().unwrap_or_default())
        .map_err(|_| StoreError::Internal("stored jwt secret is not base64".into()))
}
