//! End-to-end tests of authentication and authorization: tokens (refresh rotation, logout,
//! expiry, forgery), disabled users, API keys, RBAC with Sensu's default roles, self-service,
//! and HTTPS.

mod common;

use std::time::Duration;

use common::{expect, Client};
use kensa_backend::testing::TestServer;
use serde_json::{json, Value};

async fn tokens(server: &TestServer, user: &str, password: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}/auth", server.url))
        .basic_auth(user, Some(password))
        .send()
        .await
        .unwrap()
}

async fn refresh(server: &TestServer, access: &str, refresh_token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/auth/token", server.url))
        .bearer_auth(access)
        .json(&json!({"refresh_token": refresh_token}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn tokens_rotate_on_refresh_and_die_on_logout() {
    let server = TestServer::start().await.unwrap();
    assert_eq!(
        tokens(&server, "admin", "wrong").await.status().as_u16(),
        401
    );
    assert_eq!(
        tokens(&server, "nobody", "P@ssw0rd!")
            .await
            .status()
            .as_u16(),
        401
    );
    let first: Value = tokens(&server, "admin", "P@ssw0rd!")
        .await
        .json()
        .await
        .unwrap();
    let access = first["access_token"].as_str().unwrap();
    let refresh_token = first["refresh_token"].as_str().unwrap();
    assert!(first["expires_at"].as_i64().unwrap() > 0);

    let second = refresh(&server, access, refresh_token).await;
    assert_eq!(second.status().as_u16(), 200);
    let second: Value = second.json().await.unwrap();
    // The old refresh token is spent.
    assert_eq!(
        refresh(&server, access, refresh_token)
            .await
            .status()
            .as_u16(),
        401
    );

    let access2 = second["access_token"].as_str().unwrap();
    let refresh2 = second["refresh_token"].as_str().unwrap();
    let logout = reqwest::Client::new()
        .post(format!("{}/auth/logout", server.url))
        .bearer_auth(access2)
        .json(&json!({"refresh_token": refresh2}))
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status().as_u16(), 200);
    assert_eq!(
        refresh(&server, access2, refresh2).await.status().as_u16(),
        401
    );

    // /auth/test checks Basic credentials.
    let ok = reqwest::Client::new()
        .get(format!("{}/auth/test", server.url))
        .basic_auth("admin", Some("P@ssw0rd!"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    let bad = reqwest::Client::new()
        .get(format!("{}/auth/test", server.url))
        .basic_auth("admin", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 401);
    server.shutdown().await;
}

#[tokio::test]
async fn expired_forged_and_missing_credentials_are_unauthenticated() {
    let server = TestServer::start_configured(|c| c.access_token_expiry = Duration::from_secs(1))
        .await
        .unwrap();
    let api = Client::login(&server.url, "admin", "P@ssw0rd!").await;
    expect(api.get("namespaces/default/checks").await, 200);

    let mut forged = Client::anonymous(&server.url);
    let token = api.auth.clone().unwrap();
    let (head, signature) = token.rsplit_once('.').unwrap();
    forged.auth = Some(format!(
        "{head}.{}",
        signature.chars().rev().collect::<String>()
    ));
    let answer = expect(forged.get("namespaces/default/checks").await, 401);
    assert_eq!(answer.body["code"], 5);
    expect(
        Client::anonymous(&server.url)
            .get("namespaces/default/checks")
            .await,
        401,
    );
    let mut bad_key = Client::anonymous(&server.url);
    bad_key.auth = Some("Key 00000000-0000-0000-0000-000000000000".into());
    expect(bad_key.get("namespaces/default/checks").await, 401);

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = expect(api.get("namespaces/default/checks").await, 401);
    assert!(expired.text.contains("expired"), "{}", expired.text);
    server.shutdown().await;
}

#[tokio::test]
async fn rbac_view_role_user_disabling_and_self_service() {
    let server = TestServer::start().await.unwrap();
    let admin = Client::login(&server.url, "admin", "P@ssw0rd!").await;
    expect(
        admin.post("namespaces", &json!({"name": "prod"})).await,
        201,
    );
    expect(
        admin
            .post(
                "users",
                &json!({"username": "viewer", "password": "viewer-pass", "groups": ["readers"]}),
            )
            .await,
        201,
    );
    expect(
        admin
            .post("users", &json!({"username": "short", "password": "x"}))
            .await,
        400,
    );
    let binding = json!({"metadata": {"name": "readers"}, "role_ref": {"type": "ClusterRole", "name": "view"}, "subjects": [{"type": "Group", "name": "readers"}]});
    expect(
        admin
            .put("namespaces/default/rolebindings/readers", &binding)
            .await,
        201,
    );
    expect(
        admin
            .put(
                "namespaces/default/checks/cpu",
                &json!({"command": "true", "interval": 10}),
            )
            .await,
        201,
    );

    let user = admin.get("users/viewer").await;
    assert!(
        user.body.get("password_hash").is_none(),
        "hash leaked: {}",
        user.text
    );

    let viewer = Client::login(&server.url, "viewer", "viewer-pass").await;
    expect(viewer.get("namespaces/default/checks/cpu").await, 200);
    expect(viewer.get("namespaces/default/checks").await, 200);
    expect(
        viewer
            .put(
                "namespaces/default/checks/cpu",
                &json!({"command": "false", "interval": 10}),
            )
            .await,
        403,
    );
    expect(viewer.get("namespaces/prod/checks").await, 403);
    expect(viewer.get("checks").await, 403);
    expect(viewer.get("users").await, 403);
    expect(viewer.get("users/admin").await, 403);
    // Self-service: own user, own password.
    expect(viewer.get("users/viewer").await, 200);
    let visible = expect(viewer.get("namespaces").await, 200).body;
    assert_eq!(visible, json!([{"name": "default"}]));
    let change =
        json!({"username": "viewer", "password": "viewer-pass", "new_password": "new-viewer-pass"});
    expect(viewer.put("users/viewer/password", &change).await, 201);
    assert_eq!(
        tokens(&server, "viewer", "viewer-pass")
            .await
            .status()
            .as_u16(),
        401
    );
    let viewer = Client::login(&server.url, "viewer", "new-viewer-pass").await;

    // A bcrypt password_hash, as Sensu clients send it, is accepted.
    let bcrypt_hash = bcrypt::hash("bcrypt-pass", 4).unwrap();
    expect(
        admin
            .put(
                "users/old",
                &json!({"username": "old", "password_hash": bcrypt_hash}),
            )
            .await,
        201,
    );
    Client::login(&server.url, "old", "bcrypt-pass").await;

    // Disabling ends access at once, for tokens and logins; reinstating restores it.
    expect(admin.delete("users/viewer").await, 204);
    expect(viewer.get("namespaces/default/checks").await, 401);
    assert_eq!(
        tokens(&server, "viewer", "new-viewer-pass")
            .await
            .status()
            .as_u16(),
        401
    );
    expect(admin.put("users/viewer/reinstate", &json!({})).await, 201);
    Client::login(&server.url, "viewer", "new-viewer-pass").await;
    server.shutdown().await;
}

#[tokio::test]
async fn api_keys_authenticate_until_revoked() {
    let server = TestServer::start().await.unwrap();
    let admin = Client::login(&server.url, "admin", "P@ssw0rd!").await;
    expect(
        admin.post("apikeys", &json!({"username": "ghost"})).await,
        400,
    );
    let created = expect(
        admin.post("apikeys", &json!({"username": "admin"})).await,
        201,
    );
    let location = created.headers["location"].to_str().unwrap().to_owned();
    let key = location.rsplit('/').next().unwrap().to_owned();
    let mut with_key = Client::anonymous(&server.url);
    with_key.auth = Some(format!("Key {key}"));
    expect(with_key.get("namespaces/default/checks").await, 200);
    let listed = expect(admin.get("apikeys").await, 200).body;
    assert_eq!(listed[0]["username"], "admin");
    expect(admin.delete(&format!("apikeys/{key}")).await, 204);
    expect(with_key.get("namespaces/default/checks").await, 401);
    server.shutdown().await;
}

#[tokio::test]
async fn https_with_the_given_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_file = dir.path().join("cert.pem");
    let key_file = dir.path().join("key.pem");
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
    let server = TestServer::start_configured(|c| {
        c.tls = Some(kensa_backend::config::TlsFiles {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            trusted_ca_file: None,
        })
    })
    .await
    .unwrap();
    assert!(server.url.starts_with("https://"));
    let ca = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let version = client
        .get(format!("{}/version", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(version.status().as_u16(), 200);
    // A client that does not trust the certificate cannot talk to it.
    assert!(reqwest::Client::new()
        .get(format!("{}/version", server.url))
        .send()
        .await
        .is_err());
    server.shutdown().await;
}
