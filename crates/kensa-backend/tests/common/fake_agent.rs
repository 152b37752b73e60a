//! A scripted agent for protocol tests: speaks the agent side of `kensa-proto` over a real
//! WebSocket, so tests control exactly which frames the backend sees and when.

use std::time::Duration;

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use kensa_proto::{AgentMessage, BackendMessage};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct FakeAgent {
    pub name: String,
    pub namespace: String,
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// The HTTP status of a refused handshake.
pub async fn handshake_status(
    url: &str,
    name: &str,
    namespace: &str,
    user: &str,
    password: &str,
) -> u16 {
    match FakeAgent::connect_as(url, name, namespace, &["linux"], user, password).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(err) => panic!("unexpected handshake error: {err}"),
    }
}

impl FakeAgent {
    pub async fn connect(url: &str, name: &str, subscriptions: &[&str]) -> FakeAgent {
        FakeAgent::connect_as(url, name, "default", subscriptions, "agent", "P@ssw0rd!")
            .await
            .expect("agent handshake")
    }

    pub async fn connect_as(
        url: &str,
        name: &str,
        namespace: &str,
        subscriptions: &[&str],
        user: &str,
        password: &str,
    ) -> Result<FakeAgent, tokio_tungstenite::tungstenite::Error> {
        let mut request = url.into_client_request()?;
        let headers = request.headers_mut();
        headers.insert(kensa_proto::HEADER_AGENT_NAME, name.parse().unwrap());
        headers.insert(kensa_proto::HEADER_NAMESPACE, namespace.parse().unwrap());
        headers.insert(
            kensa_proto::HEADER_SUBSCRIPTIONS,
            subscriptions.join(",").parse().unwrap(),
        );
        headers.insert(kensa_proto::HEADER_USER, user.parse().unwrap());
        headers.insert(kensa_proto::HEADER_PROTOCOL, "1".parse().unwrap());
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        headers.insert("Authorization", format!("Basic {basic}").parse().unwrap());
        let (socket, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(FakeAgent {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            socket,
        })
    }

    pub fn entity(&self, subscriptions: &[&str]) -> Value {
        json!({
            "metadata": {"name": self.name, "namespace": self.namespace},
            "entity_class": "agent",
            "subscriptions": subscriptions,
            "system": {"hostname": self.name, "os": "linux"},
        })
    }

    /// Sends a keepalive with the given warning and critical timeouts (seconds).
    pub async fn keepalive(&mut self, warning: u32, critical: u32) {
        let event = json!({
            "entity": self.entity(&[]),
            "check": {
                "metadata": {"name": "keepalive", "namespace": self.namespace},
                "interval": 1,
                "timeout": warning,
                "ttl": critical,
            },
            "metadata": {"namespace": self.namespace},
            "id": uuid::Uuid::new_v4().to_string(),
            "timestamp": 1,
        });
        self.send(AgentMessage::Keepalive(Box::new(
            serde_json::from_value(event).unwrap(),
        )))
        .await;
    }

    /// Sends a check result and returns its id.
    pub async fn result(&mut self, check: &str, status: u32, output: &str) -> uuid::Uuid {
        let id = uuid::Uuid::new_v4();
        self.result_with_id(id, check, status, output).await;
        id
    }

    pub async fn result_with_id(&mut self, id: uuid::Uuid, check: &str, status: u32, output: &str) {
        let event = json!({
            "entity": self.entity(&["linux"]),
            "check": {
                "metadata": {"name": check, "namespace": self.namespace},
                "interval": 10,
                "status": status,
                "output": output,
                "executed": 1_700_000_000,
            },
            "metadata": {"namespace": self.namespace},
            "id": id.to_string(),
        });
        self.send(AgentMessage::Event(Box::new(
            serde_json::from_value(event).unwrap(),
        )))
        .await;
    }

    pub async fn send(&mut self, message: AgentMessage) {
        self.send_raw(message.encode()).await;
    }

    pub async fn try_send_raw(
        &mut self,
        bytes: Vec<u8>,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.socket.send(Message::Binary(bytes.into())).await
    }

    pub async fn send_raw(&mut self, bytes: Vec<u8>) {
        self.socket
            .send(Message::Binary(bytes.into()))
            .await
            .expect("send to backend");
    }

    /// The next message from the backend (skipping control frames); `None` when the backend
    /// closed the connection or nothing came within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<BackendMessage> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let message = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()??;
            match message {
                Ok(Message::Binary(bytes)) => {
                    return Some(BackendMessage::decode(&bytes).expect("backend frame decodes"))
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Waits for an ack naming `id`.
    pub async fn acked(&mut self, id: uuid::Uuid) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            match self.next(Duration::from_secs(10)).await {
                Some(BackendMessage::Ack(ack)) if ack.ids.contains(&id) => return true,
                Some(_) => continue,
                None => return false,
            }
        }
        false
    }

    /// Whether the backend closed the connection within `wait`.
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}
