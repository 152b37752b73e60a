//! The NATS side of cluster tests: deleting a test's JetStream stream when it ends (the
//! backends create it on first use; a stream name per test keeps tests apart).

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A stream name no other test (or run) uses: `prefix`, the process id and the time.
pub fn unique_stream_name(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    )
}

/// Deletes a JetStream stream with the plain NATS protocol (a JetStream API request).
pub async fn delete_stream(url: &str, stream: &str) -> Result<(), String> {
    let address = url.trim_start_matches("nats://").trim_end_matches('/');
    let exchange = async {
        let connection = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        let (read, mut write) = connection.into_split();
        let mut lines = BufReader::new(read);
        let mut line = String::new();
        lines
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?; // INFO
        let request = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB _INBOX.kensa_test_cleanup 1\r\nPUB $JS.API.STREAM.DELETE.{stream} _INBOX.kensa_test_cleanup 0\r\n\r\n"
        );
        write
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        loop {
            line.clear();
            if lines
                .read_line(&mut line)
                .await
                .map_err(|e| e.to_string())?
                == 0
            {
                return Err("connection closed".to_owned());
            }
            if line.starts_with("PING") {
                write
                    .write_all(b"PONG\r\n")
                    .await
                    .map_err(|e| e.to_string())?;
            } else if line.starts_with("MSG ") {
                let mut payload = String::new();
                lines
                    .read_line(&mut payload)
                    .await
                    .map_err(|e| e.to_string())?;
                return if payload.contains("\"success\":true") {
                    Ok(())
                } else {
                    Err(payload.trim().to_owned())
                };
            } else if line.starts_with("-ERR") {
                return Err(line.trim().to_owned());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| Err("no answer within 5 s".to_owned()))
}

/// [`delete_stream`] from a `Drop` (which cannot await): on a thread with a runtime of its own.
pub fn delete_stream_blocking(url: &str, stream: &str) -> Result<(), String> {
    let (url, stream) = (url.to_owned(), stream.to_owned());
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| err.to_string())?
            .block_on(delete_stream(&url, &stream))
    })
    .join()
    .unwrap_or_else(|_| Err("the cleanup thread panicked".to_owned()))
}
