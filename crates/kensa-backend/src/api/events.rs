//! `/namespaces/{ns}/events[/{entity}[/{check}]]`: events created through the API, read,
//! listed and deleted (reference §3.5 "Events").
//!
//! A written event goes through event processing (`eventd`) exactly like an agent's result:
//! merged with the stored one (history, occurrences, state) by the key's single writer, so
//! concurrent results never lose history; an unknown entity is created as a proxy entity (an
//! existing entity definition is never changed by an event); then the pipelines run.

use axum::http::Method;
use axum::response::Response;
use kensa_store::Precondition;

use crate::eventd::EventError;
use kensa_types::Kind;
use serde_json::{json, Map, Value};

use super::crud;
use super::route::ApiRequest;
use super::{created, no_content, now_unix, parse_json, read_body, ApiError, ApiResult, AppState};

pub async fn handle(state: &AppState, request: ApiRequest) -> ApiResult<Response> {
    let namespace = request.route.namespace.clone().unwrap_or_default();
    let sub = request.route.sub.clone();
    match (&request.method, request.route.name.clone()) {
        (&Method::GET, None) => {
            // `events/{entity}` lists one entity's events; `events` all of the namespace.
            let prefix = match sub.as_slice() {
                [] => None,
                [entity] => Some(format!("{entity}/")),
                _ => return Err(ApiError::not_found("not found")),
            };
            crud::list(
                state,
                Kind::Event,
                request.route.namespace.clone(),
                prefix,
                &request.query,
                crud::present,
            )
            .await
        }
        (&Method::GET, Some(name)) => Ok(crud::single(
            Kind::Event,
            crud::fetch(state, &crud::key(Kind::Event, &namespace, &name)).await?,
        )),
        (&Method::POST, None) | (&Method::POST | &Method::PUT, Some(_)) if sub.is_empty() => {
            let body = parse_json(&read_body(state, request.body).await?)?;
            crud::require_namespace(state, &namespace)?;
            let url_name = request.route.name.clone();
            store_event(
                state,
                &namespace,
                url_name.as_deref(),
                body,
                &request.caller.username,
            )
            .await?;
            Ok(created())
        }
        (&Method::DELETE, Some(name)) => {
            state
                .store
                .delete(
                    &crud::key(Kind::Event, &namespace, &name),
                    Precondition::None,
                )
                .await?;
            state.eventd.forget(&namespace, &name).await;
            Ok(no_content())
        }
        (&Method::PATCH, Some(_)) => Err(ApiError::method_not_allowed()),
        _ => Err(ApiError::not_found("not found")),
    }
}

/// Fills what the URL and the server decide, creates the proxy entity if needed, and merges
/// the event into the stored one.
pub async fn store_event(
    state: &AppState,
    namespace: &str,
    url_name: Option<&str>,
    mut body: Value,
    caller: &str,
) -> ApiResult<()> {
    let (url_entity, url_check) = match url_name.and_then(|n| n.split_once('/')) {
        Some((entity, check)) => (Some(entity), Some(check)),
        None => (None, None),
    };
    let Some(event) = body.as_object_mut() else {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    };
    if event.get("entity").is_none_or(Value::is_null) {
        if url_entity.is_none() {
            return Err(ApiError::bad_request(
                "resource is invalid: entity: must be set",
            ));
        }
        event.insert("entity".into(), json!({}));
    }
    fill_object_meta(event, "entity", namespace, url_entity, caller)?;
    if event["entity"]["entity_class"]
        .as_str()
        .unwrap_or_default()
        .is_empty()
    {
        event["entity"]["entity_class"] = json!("proxy");
    }
    let has_check = event.get("check").is_some_and(|c| !c.is_null());
    if !has_check && url_check.is_some() {
        event.insert("check".into(), json!({}));
    }
    if event.get("check").is_some_and(|c| !c.is_null()) {
        fill_object_meta(event, "check", namespace, url_check, caller)?;
    }
    let meta = event.entry("metadata").or_insert_with(|| json!({}));
    if let Some(meta) = meta.as_object_mut() {
        crud::agree(meta, "namespace", namespace)?;
        meta.insert("created_by".into(), json!(caller));
    }
    if event.get("timestamp").and_then(Value::as_i64).unwrap_or(0) == 0 {
        event.insert("timestamp".into(), json!(now_unix()));
    }
    if event
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .is_empty()
    {
        event.insert("id".into(), json!(uuid::Uuid::new_v4().to_string()));
    }
    let value = Kind::Event.normalize(body)?;
    // Merging, proxy entity creation, silencing and the pipelines happen in eventd, the one
    // writer of this event's key.
    state
        .eventd
        .submit_and_wait(value)
        .await
        .map_err(|err| match err {
            EventError::Invalid(reason) => {
                ApiError::bad_request(format!("resource is invalid: {reason}"))
            }
            EventError::Unavailable(reason) => ApiError::unavailable(reason),
        })
}

/// Sets `event[field].metadata` name/namespace from the URL (or checks agreement) and
/// `created_by`.
fn fill_object_meta(
    event: &mut Map<String, Value>,
    field: &str,
    namespace: &str,
    url_name: Option<&str>,
    caller: &str,
) -> ApiResult<()> {
    let Some(object) = event.get_mut(field).and_then(Value::as_object_mut) else {
        return Err(ApiError::bad_request(format!(
            "resource is invalid: {field}: must be an object"
        )));
    };
    let meta = object.entry("metadata").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else {
        return Err(ApiError::bad_request(format!(
            "resource is invalid: {field}.metadata: must be an object"
        )));
    };
    crud::agree(meta, "namespace", namespace)?;
    if let Some(url_name) = url_name {
        crud::agree(meta, "name", url_name)?;
    }
    meta.insert("created_by".into(), json!(caller));
    Ok(())
}
