//! Dispatch of core/v2 requests after routing: the RBAC check, then either the generic
//! handler ([`super::crud`]) or the handler of a kind with rules of its own — namespaces,
//! users, API keys, entities, silences, checks' sub-resources (events are in [`super::events`]).

use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kensa_store::{Key, Precondition};
use kensa_types::Kind;
use serde_json::{json, Value};

use super::crud::{self, ItemFilter};
use super::route::{ApiRequest, Query};
use super::{created, no_content, now_unix, parse_json, read_body, ApiError, ApiResult, AppState};
use crate::auth::password;
use crate::auth::rbac::{self, Request as RbacRequest};

/// Where ad hoc execution requests wait for the scheduler (`POST …/checks/{name}/execute`).
pub const ADHOC_KIND: &str = "kensa.adhoc";

pub async fn dispatch(state: &AppState, request: ApiRequest) -> ApiResult<Response> {
    authorize(state, &request)?;
    match request.route.kind {
        Kind::Namespace => namespaces(state, request).await,
        Kind::User => users(state, request).await,
        Kind::ApiKey => api_keys(state, request).await,
        Kind::Event => super::events::handle(state, request).await,
        Kind::Entity => entities(state, request).await,
        Kind::Silenced => silenced(state, request).await,
        Kind::CheckConfig if !request.route.sub.is_empty() => {
            check_subresources(state, request).await
        }
        _ => crud::handle(state, request).await,
    }
}

fn authorize(state: &AppState, request: &ApiRequest) -> ApiResult<()> {
    let route = &request.route;
    let verb = match request.method {
        Method::GET | Method::HEAD if route.name.is_none() => "list",
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT | Method::PATCH => "update",
        Method::DELETE => "delete",
        _ => return Err(ApiError::method_not_allowed()),
    };
    let caller = &request.caller;
    // Any authenticated user may read namespaces; listings show only the visible ones.
    if route.kind == Kind::Namespace && super::is_read(&request.method) {
        return Ok(());
    }
    let namespace = route.namespace.as_deref();
    let wanted = RbacRequest {
        verb,
        resource: route.kind.resource(),
        namespace,
        name: route.name.as_deref(),
    };
    if state.caller_can(caller, &wanted) {
        return Ok(());
    }
    // Self-service: reading one's own user and changing one's own password.
    let is_self =
        route.kind == Kind::User && route.name.as_deref() == Some(caller.username.as_str());
    let self_service = is_self
        && ((verb == "get" && route.sub.is_empty())
            || (verb == "update" && route.sub == ["password"]));
    if self_service {
        let wanted = RbacRequest {
            verb,
            resource: "localselfuser",
            namespace: None,
            name: route.name.as_deref(),
        };
        if state.caller_can(caller, &wanted) {
            return Ok(());
        }
    }
    state.telemetry.rbac_denials.inc();
    Err(ApiError::forbidden(format!(
        "user {:?} is not allowed to {verb} {}{}",
        caller.username,
        route.kind.resource(),
        namespace
            .map(|ns| format!(" in namespace {ns:?}"))
            .unwrap_or_default()
    )))
}

/// Compiles `labelSelector`/`fieldSelector` parameters into one filter over listed values.
pub fn compile_selectors(kind: Kind, query: &Query) -> ApiResult<Option<ItemFilter>> {
    if query.label_selectors.is_empty() && query.field_selectors.is_empty() {
        return Ok(None);
    }
    let mut selectors = Vec::new();
    for raw in &query.label_selectors {
        let selector = kensa_types::selector::Selector::parse_labels(raw, kind.field_prefix())
            .map_err(|err| {
                ApiError::bad_request(format!("failed to parse labelSelector: {err}"))
            })?;
        selectors.push(selector);
    }
    for raw in &query.field_selectors {
        let selector = kensa_types::selector::parse(raw).map_err(|err| {
            ApiError::bad_request(format!("failed to parse fieldSelector: {err}"))
        })?;
        selectors.push(selector);
    }
    Ok(Some(Box::new(move |value: &Value| {
        let fields = kind.fields(value);
        selectors.iter().all(|selector| selector.matches(&fields))
    })))
}

// ---------------------------------------------------------------------------------------------
// Namespaces

async fn namespaces(state: &AppState, request: ApiRequest) -> ApiResult<Response> {
    let kind = Kind::Namespace;
    match (&request.method, request.route.name.clone()) {
        (&Method::GET, None) => {
            let view = state.view.clone();
            let caller = request.caller.clone();
            let visible: ItemFilter = Box::new(move |value: &Value| {
                let name = value["name"].as_str().unwrap_or_default();
                rbac::can_see_namespace(view.as_ref(), &caller, name)
            });
            crud::list_filtered(
                state,
                kind,
                Some(String::new()),
                None,
                &request.query,
                crud::present,
                Some(visible),
            )
            .await
        }
        (&Method::GET, Some(name)) => Ok(crud::single(
            kind,
            crud::fetch(state, &crud::key(kind, "", &name)).await?,
        )),
        (&Method::POST, None) => {
            let body = parse_json(&read_body(state, request.body).await?)?;
            let value = kind.normalize(body)?;
            let name = kind.name_of(&value).ok_or_else(|| {
                ApiError::bad_request("resource is invalid: name: must not be empty")
            })?;
            crud::create(state, &crud::key(kind, "", &name), &value).await?;
            Ok(created())
        }
        (&Method::PUT, Some(name)) => {
            let mut body = parse_json(&read_body(state, request.body).await?)?;
            agree_top_level(&mut body, "name", &name)?;
            let value = kind.normalize(body)?;
            crud::write(
                state,
                &crud::key(kind, "", &name),
                &value,
                Precondition::None,
            )
            .await?;
            Ok(created())
        }
        (&Method::PATCH, Some(name)) => {
            let key = crud::key(kind, "", &name);
            crud::patch(state, request, key, |mut value, _| {
                agree_top_level(&mut value, "name", &name)?;
                Ok(kind.normalize(value)?)
            })
            .await
        }
        (&Method::DELETE, Some(name)) => {
            crud::fetch(state, &crud::key(kind, "", &name)).await?;
            let count = state.store.count_in_namespace(&name).await?;
            if count > 0 {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    super::error::Code::InvalidArgument,
                    format!("namespace {name:?} is not empty ({count} resources)"),
                ));
            }
            crud::remove(state, &crud::key(kind, "", &name), Precondition::None).await?;
            Ok(no_content())
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// For kinds named by a top-level field (`name`, `username`): fill it from the URL or refuse
/// a disagreement.
fn agree_top_level(body: &mut Value, field: &str, url_name: &str) -> ApiResult<()> {
    let Some(object) = body.as_object_mut() else {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    };
    crud::agree(object, field, url_name)
}

// ---------------------------------------------------------------------------------------------
// Users

/// Replaces a cleartext `password` by an argon2 `password_hash`, or checks a given hash.
/// With neither, keeps `existing_hash` (a PUT that only changes groups).
async fn settle_password(body: &mut Value, existing_hash: Option<String>) -> ApiResult<()> {
    let Some(object) = body.as_object_mut() else {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    };
    let cleartext = object
        .get("password")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let given_hash = object
        .get("password_hash")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let hash = if !cleartext.is_empty() {
        if cleartext.len() < 8 {
            return Err(ApiError::bad_request(
                "resource is invalid: password: must be at least 8 characters",
            ));
        }
        if !given_hash.is_empty()
            && !password::verify_blocking(cleartext.clone(), given_hash.clone()).await
        {
            return Err(ApiError::bad_request(
                "resource is invalid: password_hash: does not match password",
            ));
        }
        password::hash_blocking(cleartext).await
    } else if !given_hash.is_empty() {
        if !password::is_supported_hash(&given_hash) {
            return Err(ApiError::bad_request(
                "resource is invalid: password_hash: not a bcrypt or argon2 hash",
            ));
        }
        given_hash
    } else if let Some(existing) = existing_hash {
        existing
    } else {
        return Err(ApiError::bad_request(
            "resource is invalid: password: must be set",
        ));
    };
    object.insert("password".to_owned(), Value::String(String::new()));
    object.insert("password_hash".to_owned(), Value::String(hash));
    Ok(())
}

async fn users(state: &AppState, request: ApiRequest) -> ApiResult<Response> {
    let kind = Kind::User;
    // Reads are generic (`present` strips the password fields).
    if request.method == Method::GET && request.route.sub.is_empty() {
        return crud::handle(state, request).await;
    }
    let name = request.route.name.clone();
    let sub: Vec<&str> = request.route.sub.iter().map(String::as_str).collect();
    match (&request.method, name, sub.as_slice()) {
        (&Method::POST, None, []) => {
            let mut body = parse_json(&read_body(state, request.body).await?)?;
            settle_password(&mut body, None).await?;
            let value = kind.normalize(body)?;
            let name = kind.name_of(&value).ok_or_else(|| {
                ApiError::bad_request("resource is invalid: username: must not be empty")
            })?;
            crud::create(state, &crud::key(kind, "", &name), &value).await?;
            Ok(created())
        }
        (&Method::PUT, Some(name), []) => {
            let mut body = parse_json(&read_body(state, request.body).await?)?;
            agree_top_level(&mut body, "username", &name)?;
            let key = crud::key(kind, "", &name);
            let existing = state.store.get(&key).await?;
            let existing_hash = existing
                .as_ref()
                .and_then(|s| s.value["password_hash"].as_str().map(str::to_owned));
            settle_password(&mut body, existing_hash).await?;
            let value = kind.normalize(body)?;
            crud::write(state, &key, &value, Precondition::None).await?;
            Ok(created())
        }
        (&Method::PATCH, Some(name), []) => {
            // Hash first (it is async), then merge: a patch carrying `password` replaces the hash.
            let key = crud::key(kind, "", &name);
            crud::patch(state, request, key, |mut value, _| {
                agree_top_level(&mut value, "username", &name)?;
                let cleartext = value["password"].as_str().unwrap_or_default().to_owned();
                if !cleartext.is_empty() {
                    if cleartext.len() < 8 {
                        return Err(ApiError::bad_request(
                            "resource is invalid: password: must be at least 8 characters",
                        ));
                    }
                    value["password_hash"] = Value::String(password::hash(&cleartext));
                    value["password"] = Value::String(String::new());
                }
                Ok(kind.normalize(value)?)
            })
            .await
        }
        (&Method::DELETE, Some(name), []) => {
            update_user(state, &name, |user| {
                user["disabled"] = Value::Bool(true);
                Ok(())
            })
            .await?;
            Ok(no_content())
        }
        (&Method::PUT, Some(name), ["reinstate"]) => {
            update_user(state, &name, |user| {
                user["disabled"] = Value::Bool(false);
                Ok(())
            })
            .await?;
            Ok(created())
        }
        (&Method::PUT, Some(name), [which @ ("password" | "reset_password")]) => {
            let body = parse_json(&read_body(state, request.body).await?)?;
            let stored = crud::fetch(state, &crud::key(kind, "", &name)).await?;
            if *which == "password" {
                let current = body["password"].as_str().unwrap_or_default().to_owned();
                let stored_hash = stored.value["password_hash"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if !password::verify_blocking(current, stored_hash).await {
                    return Err(ApiError::bad_request("current password is not correct"));
                }
            }
            let new_hash = match (body["password_hash"].as_str(), body["new_password"].as_str()) {
                (Some(hash), _) if password::is_supported_hash(hash) => hash.to_owned(),
                (_, Some(new)) if new.len() >= 8 => password::hash_blocking(new.to_owned()).await,
                _ => {
                    return Err(ApiError::bad_request(
                        "password_hash (bcrypt or argon2) or new_password (at least 8 characters) must be given",
                    ))
                }
            };
            update_user(state, &name, move |user| {
                user["password_hash"] = Value::String(new_hash.clone());
                Ok(())
            })
            .await?;
            Ok(created())
        }
        (&Method::DELETE, Some(name), ["groups"]) => {
            update_user(state, &name, |user| {
                user["groups"] = json!([]);
                Ok(())
            })
            .await?;
            Ok(no_content())
        }
        (method @ (&Method::PUT | &Method::DELETE), Some(name), ["groups", group]) => {
            let adding = method == Method::PUT;
            let group = (*group).to_owned();
            update_user(state, &name, move |user| {
                let mut groups: Vec<Value> = user["groups"].as_array().cloned().unwrap_or_default();
                groups.retain(|g| g.as_str() != Some(group.as_str()));
                if adding {
                    groups.push(Value::String(group.clone()));
                }
                user["groups"] = Value::Array(groups);
                Ok(())
            })
            .await?;
            Ok(if adding { created() } else { no_content() })
        }
        _ => Err(ApiError::not_found("not found")),
    }
}

/// Read-modify-write of one user, retried on concurrent writes.
async fn update_user(
    state: &AppState,
    name: &str,
    change: impl Fn(&mut Value) -> ApiResult<()>,
) -> ApiResult<()> {
    crud::update(state, Kind::User, &crud::key(Kind::User, "", name), change).await
}

// ---------------------------------------------------------------------------------------------
// API keys

async fn api_keys(state: &AppState, request: ApiRequest) -> ApiResult<Response> {
    let kind = Kind::ApiKey;
    match (&request.method, request.route.name.as_deref()) {
        (&Method::POST, None) => {
            let body = parse_json(&read_body(state, request.body).await?)?;
            let username = body["username"].as_str().unwrap_or_default().to_owned();
            if state.view.get(&Key::new("users", "", &username)).is_none() {
                return Err(ApiError::bad_request("user does not exist"));
            }
            let name = uuid::Uuid::new_v4().to_string();
            let value = kind.normalize(json!({
                "metadata": {"name": name, "created_by": request.caller.username},
                "username": username,
                "created_at": now_unix(),
            }))?;
            crud::create(state, &crud::key(kind, "", &name), &value).await?;
            let mut response = created();
            if let Ok(location) = HeaderValue::from_str(&format!("/api/core/v2/apikeys/{name}")) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            Ok(response)
        }
        (&Method::PUT, _) => Err(ApiError::method_not_allowed()),
        _ => crud::handle(state, request).await,
    }
}

// ---------------------------------------------------------------------------------------------
// Entities

/// An entity always subscribes to `entity:<name>`.
pub fn ensure_entity_subscription(entity: &mut Value) {
    let Some(name) = entity["metadata"]["name"].as_str().map(str::to_owned) else {
        return;
    };
    let own = format!("entity:{name}");
    let Some(object) = entity.as_object_mut() else {
        return;
    };
    let subscriptions = object.entry("subscriptions").or_insert_with(|| json!([]));
    if !subscriptions.is_array() {
        *subscriptions = json!([]);
    }
    let list = subscriptions.as_array_mut().expect("made an array above");
    if !list.iter().any(|s| s.as_str() == Some(own.as_str())) {
        list.push(Value::String(own));
    }
}

async fn entities(state: &AppState, request: ApiRequest) -> ApiResult<Response> {
    let kind = Kind::Entity;
    let namespace = request.route.namespace.clone().unwrap_or_default();
    match (&request.method, request.route.name.clone()) {
        (&Method::POST, None) | (&Method::PUT, Some(_)) => {
            let is_put = request.method == Method::PUT;
            let url_name = request.route.name.clone();
            let body = parse_json(&read_body(state, request.body).await?)?;
            crud::require_namespace(state, &namespace)?;
            let mut value = crud::prepare_metadata_body(
                kind,
                body,
                &namespace,
                url_name.as_deref(),
                &request.caller,
            )?;
            // Agent entities always subscribe to `entity:<name>`; other classes keep exactly the
            // subscriptions they were given (clients compare them as sets).
            if value["entity_class"] == "agent" {
                ensure_entity_subscription(&mut value);
            }
            let name = kind.name_of(&value).ok_or_else(|| {
                ApiError::bad_request("resource is invalid: metadata.name: must not be empty")
            })?;
            let key = crud::key(kind, &namespace, &name);
            if let Some(existing) = state.store.get(&key).await? {
                if existing.value["metadata"]["labels"]["sensu.io/managed_by"] == "sensu-agent"
                    && is_put
                {
                    return Err(ApiError::conflict("entity is managed by its agent"));
                }
            }
            if is_put {
                crud::write(state, &key, &value, Precondition::None).await?;
            } else {
                crud::create(state, &key, &value).await?;
            }
            // Sensu answers entity writes with 200 and the entity.
            Ok(axum::Json(crud::present(kind, value)).into_response())
        }
        (&Method::DELETE, Some(name)) => {
            state
                .store
                .delete(&crud::key(kind, &namespace, &name), Precondition::None)
                .await?;
            state
                .store
                .delete_prefix(Kind::Event.resource(), &namespace, &format!("{name}/"))
                .await?;
            state.eventd.forget(&namespace, &format!("{name}/")).await;
            Ok(no_content())
        }
        _ => crud::handle(state, request).await,
    }
}

// ---------------------------------------------------------------------------------------------
// Silences

fn silence_expired(value: &Value, now: i64) -> bool {
    let expire_at = value["expire_at"].as_i64().unwrap_or(0);
    expire_at > 0 && expire_at <= now
}

async fn silenced(state: &AppState, request: ApiRequest) -> ApiResult<Response> {
    let kind = Kind::Silenced;
    let namespace = request.route.namespace.clone().unwrap_or_default();
    let sub: Vec<String> = request.route.sub.clone();
    match (&request.method, request.route.name.clone()) {
        (&Method::GET, None) => {
            let now = now_unix();
            let filter: ItemFilter = match sub.as_slice() {
                [] => Box::new(move |v: &Value| !silence_expired(v, now)),
                [which, wanted] if which == "subscriptions" || which == "checks" => {
                    let field = if which == "subscriptions" {
                        "subscription"
                    } else {
                        "check"
                    };
                    let wanted = wanted.clone();
                    Box::new(move |v: &Value| {
                        !silence_expired(v, now) && v[field].as_str() == Some(wanted.as_str())
                    })
                }
                _ => return Err(ApiError::not_found("not found")),
            };
            crud::list_filtered(
                state,
                kind,
                request.route.namespace.clone(),
                None,
                &request.query,
                crud::present,
                Some(filter),
            )
            .await
        }
        (&Method::GET, Some(name)) => {
            let stored = crud::fetch(state, &crud::key(kind, &namespace, &name)).await?;
            if silence_expired(&stored.value, now_unix()) {
                return Err(ApiError::not_found("not found"));
            }
            Ok(crud::single(kind, stored))
        }
        (&Method::POST, None) | (&Method::PUT, Some(_)) => {
            let is_put = request.method == Method::PUT;
            let body = parse_json(&read_body(state, request.body).await?)?;
            crud::require_namespace(state, &namespace)?;
            let value = prepare_silence(body, &namespace, &request.caller.username)?;
            let name = kind.name_of(&value).ok_or_else(|| {
                ApiError::bad_request("resource is invalid: subscription or check must be set")
            })?;
            if let Some(url_name) = &request.route.name {
                if url_name != &name {
                    return Err(ApiError::bad_request(format!(
                        "the name of the resource ({name}) does not match the name of the URI ({url_name})"
                    )));
                }
            }
            let key = crud::key(kind, &namespace, &name);
            if is_put {
                crud::write(state, &key, &value, Precondition::None).await?;
            } else {
                crud::create(state, &key, &value).await?;
            }
            Ok(created())
        }
        _ => crud::handle(state, request).await,
    }
}

/// Silences: the name is derived (`sub:check`), `begin` defaults to now, `expire_at` follows
/// from `expire`, and the creator is the caller unless given.
fn prepare_silence(mut body: Value, namespace: &str, caller: &str) -> ApiResult<Value> {
    let Some(object) = body.as_object_mut() else {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    };
    let now = now_unix();
    let meta = object.entry("metadata").or_insert_with(|| json!({}));
    if let Some(meta) = meta.as_object_mut() {
        crud::agree(meta, "namespace", namespace)?;
        meta.insert("created_by".to_owned(), Value::String(caller.to_owned()));
        // The name is always derived from subscription and check.
        meta.remove("name");
    }
    let subscription = object
        .get("subscription")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let check = object
        .get("check")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !subscription.is_empty() || !check.is_empty() {
        let name = format!(
            "{}:{}",
            if subscription.is_empty() {
                "*"
            } else {
                subscription
            },
            if check.is_empty() { "*" } else { check }
        );
        object["metadata"]["name"] = Value::String(name);
    }
    let begin = match object.get("begin").and_then(Value::as_i64).unwrap_or(0) {
        0 => now,
        begin => begin,
    };
    object.insert("begin".to_owned(), json!(begin));
    let expire = object.get("expire").and_then(Value::as_i64).unwrap_or(0);
    if object.get("expire_at").and_then(Value::as_i64).unwrap_or(0) == 0 && expire > 0 {
        object.insert("expire_at".to_owned(), json!(begin + expire));
    }
    if object
        .get("creator")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .is_empty()
    {
        object.insert("creator".to_owned(), Value::String(caller.to_owned()));
    }
    Ok(Kind::Silenced.normalize(body)?)
}

// ---------------------------------------------------------------------------------------------
// Checks: execute and hooks

async fn check_subresources(state: &AppState, request: ApiRequest) -> ApiResult<Response> {
    let namespace = request.route.namespace.clone().unwrap_or_default();
    let Some(name) = request.route.name.clone() else {
        return Err(ApiError::not_found("not found"));
    };
    let key = crud::key(Kind::CheckConfig, &namespace, &name);
    let sub: Vec<String> = request.route.sub.clone();
    match (
        &request.method,
        sub.iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice(),
    ) {
        (&Method::POST, ["execute"]) => {
            crud::fetch(state, &key).await?;
            let bytes = read_body(state, request.body).await?;
            let body = if bytes.iter().all(u8::is_ascii_whitespace) {
                json!({})
            } else {
                parse_json(&bytes)?
            };
            let subscriptions = match &body["subscriptions"] {
                Value::Null => Vec::new(),
                Value::Array(items) => items
                    .iter()
                    .map(|s| {
                        s.as_str().map(str::to_owned).ok_or_else(|| {
                            ApiError::bad_request("subscriptions: must be a list of strings")
                        })
                    })
                    .collect::<ApiResult<Vec<_>>>()?,
                _ => {
                    return Err(ApiError::bad_request(
                        "subscriptions: must be a list of strings",
                    ))
                }
            };
            let issued = now_unix();
            let adhoc = json!({
                "check": name,
                "subscriptions": subscriptions,
                "creator": request.caller.username,
                "reason": body["reason"].as_str().unwrap_or_default(),
                "issued": issued,
            });
            let id = uuid::Uuid::new_v4().to_string();
            state
                .store
                .create(&Key::new(ADHOC_KIND, &namespace, &id), &adhoc)
                .await?;
            Ok((StatusCode::ACCEPTED, Json(json!({"issued": issued}))).into_response())
        }
        (&Method::PUT, ["hooks", hook_type]) => {
            let body = parse_json(&read_body(state, request.body).await?)?;
            let wanted: Vec<String> = body[*hook_type]
                .as_array()
                .ok_or_else(|| {
                    ApiError::bad_request(format!("body must be {{\"{hook_type}\": [hook names]}}"))
                })?
                .iter()
                .filter_map(|h| h.as_str().map(str::to_owned))
                .collect();
            let hook_type = (*hook_type).to_owned();
            update_check(state, &key, move |check| {
                let hooks = check_hooks_mut(check);
                let position = hooks
                    .iter()
                    .position(|entry| entry.get(&hook_type).is_some());
                let entry = match position {
                    Some(i) => &mut hooks[i],
                    None => {
                        hooks.push(json!({ hook_type.clone(): [] }));
                        hooks.last_mut().expect("just pushed")
                    }
                };
                let list = entry[&hook_type]
                    .as_array_mut()
                    .ok_or_else(|| ApiError::bad_request("check_hooks entry is not a list"))?;
                for hook in &wanted {
                    if !list.iter().any(|h| h.as_str() == Some(hook.as_str())) {
                        list.push(Value::String(hook.clone()));
                    }
                }
                Ok(())
            })
            .await?;
            Ok(created())
        }
        (&Method::DELETE, ["hooks", hook_type, "hook", hook]) => {
            let (hook_type, hook) = ((*hook_type).to_owned(), (*hook).to_owned());
            update_check(state, &key, move |check| {
                let hooks = check_hooks_mut(check);
                for entry in hooks.iter_mut() {
                    if let Some(list) = entry.get_mut(&hook_type).and_then(Value::as_array_mut) {
                        list.retain(|h| h.as_str() != Some(hook.as_str()));
                    }
                }
                hooks.retain(|entry| {
                    entry
                        .get(&hook_type)
                        .and_then(Value::as_array)
                        .is_none_or(|l| !l.is_empty())
                });
                Ok(())
            })
            .await?;
            Ok(no_content())
        }
        _ => Err(ApiError::not_found("not found")),
    }
}

fn check_hooks_mut(check: &mut Value) -> &mut Vec<Value> {
    if !check["check_hooks"].is_array() {
        check["check_hooks"] = json!([]);
    }
    check["check_hooks"]
        .as_array_mut()
        .expect("made an array above")
}

async fn update_check(
    state: &AppState,
    key: &Key,
    change: impl Fn(&mut Value) -> ApiResult<()>,
) -> ApiResult<()> {
    crud::update(state, Kind::CheckConfig, key, change).await
}
