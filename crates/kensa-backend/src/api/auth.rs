//! `/auth`, `/auth/test`, `/auth/token`, `/auth/logout`, and the authentication of every
//! core/v2 request (`Authorization: Bearer <jwt>` or `Authorization: Key <api key>`).
//!
//! A login opens a session in the store (`kensa.sessions/<id>`) holding a hash of the refresh
//! token. Refreshing rotates the refresh token; logging out deletes the session, so a refresh
//! token is usable once and never after logout. Access tokens are short-lived JWTs checked
//! without a store read; the user's current record (disabled? groups?) comes from the view.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use kensa_store::{Key, Precondition};
use rand::RngCore;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{now_unix, ApiError, ApiResult, AppState};
use crate::auth::jwt::{self, Claims, TokenError};
use crate::auth::{password, Caller};
use crate::SESSIONS_KIND;

/// Every authenticated user is implicitly in this group (bound to `system:user`).
pub const IMPLICIT_GROUP: &str = "system:users";

/// Identifies the caller of a core/v2 request.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> ApiResult<Caller> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthenticated("bad credentials"));
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthenticated("bad credentials"))?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        let claims = jwt::verify(token.trim(), &state.jwt_secret, now_unix(), false).map_err(
            |err| match err {
                TokenError::Expired => ApiError::unauthenticated("access token has expired"),
                _ => ApiError::unauthenticated("invalid access token"),
            },
        )?;
        let user = enabled_user(state, &claims.sub)?;
        return Ok(caller_for(&claims.sub, &user, false));
    }
    if let Some(key) = value.strip_prefix("Key ") {
        let key = key.trim();
        let api_key = state
            .view
            .get(&Key::new("apikeys", "", key))
            .ok_or_else(|| ApiError::unauthenticated("invalid api key"))?;
        let username = api_key["username"].as_str().unwrap_or_default().to_owned();
        let user = enabled_user(state, &username)?;
        return Ok(caller_for(&username, &user, true));
    }
    Err(ApiError::unauthenticated("bad credentials"))
}

fn enabled_user(state: &AppState, username: &str) -> ApiResult<std::sync::Arc<Value>> {
    let user = state
        .view
        .get(&Key::new("users", "", username))
        .ok_or_else(|| ApiError::unauthenticated("user does not exist"))?;
    if user["disabled"].as_bool().unwrap_or(false) {
        return Err(ApiError::unauthenticated("user is disabled"));
    }
    Ok(user)
}

pub(crate) fn caller_for(username: &str, user: &Value, api_key: bool) -> Caller {
    let mut groups: Vec<String> = user["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g.as_str().map(str::to_owned))
        .collect();
    groups.push(IMPLICIT_GROUP.to_owned());
    Caller {
        username: username.to_owned(),
        groups,
        api_key,
    }
}

/// `Authorization: Basic …` → (username, password).
pub(crate) fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, pass) = decoded.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

fn unauthorized(message: &str) -> Response {
    (StatusCode::UNAUTHORIZED, message.to_owned()).into_response()
}

/// Checks Basic credentials against an enabled user.
async fn check_basic(
    state: &AppState,
    headers: &HeaderMap,
) -> Option<(String, std::sync::Arc<Value>)> {
    let (username, pass) = basic_credentials(headers)?;
    let user = state.view.get(&Key::new("users", "", &username))?;
    if user["disabled"].as_bool().unwrap_or(false) {
        return None;
    }
    let hash = user["password_hash"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if !password::verify_blocking(pass, hash).await {
        return None;
    }
    Some((username, user))
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// Issues an access token and a refresh token, storing the session (new or rotated).
async fn issue_tokens(
    state: &AppState,
    username: &str,
    user: &Value,
    session_id: String,
    precondition: Precondition,
) -> ApiResult<Response> {
    let now = now_unix();
    let expires_at = now + state.settings.access_token_expiry.as_secs() as i64;
    let refresh_token = random_token();
    let session = json!({
        "username": username,
        "refresh_token_hash": token_hash(&refresh_token),
        "expires_at": now + state.settings.refresh_token_expiry.as_secs() as i64,
    });
    let key = Key::new(SESSIONS_KIND, "", &session_id);
    match precondition {
        Precondition::None => {
            state.store.create(&key, &session).await?;
        }
        other => {
            state
                .store
                .put(&key, &session, other)
                .await
                .map_err(|err| match err {
                    kensa_store::StoreError::Conflict(_) | kensa_store::StoreError::NotFound(_) => {
                        ApiError::unauthenticated("refresh token has already been used")
                    }
                    other => other.into(),
                })?;
        }
    }
    let caller = caller_for(username, user, false);
    let claims = Claims {
        sub: username.to_owned(),
        exp: expires_at,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        groups: caller.groups,
        api_key: false,
        session_id,
    };
    let access_token = jwt::sign(&claims, &state.jwt_secret);
    state.telemetry.logins.inc();
    Ok(Json(json!({"access_token": access_token, "expires_at": expires_at, "refresh_token": refresh_token}))
        .into_response())
}

/// `GET /auth`: Basic credentials → tokens.
pub async fn login(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some((username, user)) = check_basic(&state, &headers).await else {
        state.telemetry.auth_failures.inc();
        return unauthorized("Unauthorized");
    };
    let session_id = uuid::Uuid::new_v4().to_string();
    issue_tokens(&state, &username, &user, session_id, Precondition::None)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `GET /auth/test`: 200 when the Basic credentials are valid.
pub async fn test_credentials(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match check_basic(&state, &headers).await {
        Some(_) => StatusCode::OK.into_response(),
        None => unauthorized("Request unauthorized"),
    }
}

#[derive(Deserialize)]
struct RefreshBody {
    #[serde(default)]
    refresh_token: String,
}

/// The session named by the (possibly expired) access token, checked against the refresh
/// token from the body. Returns the claims and the session's revision.
async fn session_for(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> ApiResult<(Claims, Option<i64>, String)> {
    let access = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::bad_request("invalid access token"))?;
    let claims = jwt::verify(access.trim(), &state.jwt_secret, now_unix(), true)
        .map_err(|_| ApiError::bad_request("invalid access token"))?;
    let refresh: RefreshBody = serde_json::from_slice(body).unwrap_or(RefreshBody {
        refresh_token: String::new(),
    });
    let stored = state
        .store
        .get(&Key::new(SESSIONS_KIND, "", &claims.session_id))
        .await?;
    let revision = match &stored {
        Some(session)
            if session.value["username"] == claims.sub.as_str()
                && session.value["refresh_token_hash"]
                    == token_hash(&refresh.refresh_token).as_str()
                && session.value["expires_at"].as_i64().unwrap_or(0) > now_unix() =>
        {
            Some(session.revision)
        }
        _ => None,
    };
    Ok((claims, revision, refresh.refresh_token))
}

/// `POST /auth/token`: a valid refresh token → new tokens (the refresh token rotates).
pub async fn refresh(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    let result = async {
        let (claims, revision, _) = session_for(&state, &headers, &body).await?;
        let Some(revision) = revision else {
            return Err(ApiError::unauthenticated("invalid refresh token"));
        };
        let user = enabled_user(&state, &claims.sub)?;
        issue_tokens(
            &state,
            &claims.sub,
            &user,
            claims.session_id.clone(),
            Precondition::Revision(revision),
        )
        .await
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /auth/logout`: ends the session, so its refresh token no longer works.
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    let result = async {
        let (claims, _, _): (Claims, _, _) = session_for(&state, &headers, &body).await?;
        match state
            .store
            .delete(
                &Key::new(SESSIONS_KIND, "", &claims.session_id),
                Precondition::None,
            )
            .await
        {
            Ok(()) | Err(kensa_store::StoreError::NotFound(_)) => {
                Ok(StatusCode::OK.into_response())
            }
            Err(err) => Err(ApiError::from(err)),
        }
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}
