//! MCP over stdin/stdout, one JSON-RPC message per line. The SDK's own stdio transport
//! drops a line that is not JSON without a word (and one over its length limit too), so
//! a client that sent it waits forever; JSON-RPC asks for an answer. Lines pass through
//! here first: JSON goes on to the SDK, anything else is answered with a parse error
//! (`-32700`), a line over [`MAX_MESSAGE_BYTES`] with an invalid request (`-32600`), and
//! the session goes on.

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, duplex};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec};

use super::{Heph, McpError};

/// The largest message read from stdin: 16 MiB (twice the default code limit, for
/// the JSON escaping of submitted code).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// A JSON-RPC error answer to a message whose id cannot be known.
fn error_line(code: i32, message: &str) -> String {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": { "code": code, "message": message },
    })
    .to_string()
}

/// A line read from stdin.
enum Line {
    /// Its bytes, without the newline.
    Text(Vec<u8>),
    /// It was longer than [`MAX_MESSAGE_BYTES`] (and was skipped).
    TooLong,
}

/// The next line, reading at most [`MAX_MESSAGE_BYTES`] of it into memory; `None` at
/// the end of input (an unterminated last line is dropped: it cannot be a whole
/// message).
async fn next_line(r: &mut BufReader<tokio::io::Stdin>) -> std::io::Result<Option<Line>> {
    let mut buf = Vec::new();
    let mut too_long = false;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(None);
        }
        let (take, end) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i, Some(i + 1)),
            None => (chunk.len(), None),
        };
        if !too_long {
            if buf.len() + take > MAX_MESSAGE_BYTES {
                too_long = true;
                buf = Vec::new();
            } else {
                buf.extend_from_slice(&chunk[..take]);
            }
        }
        r.consume(end.unwrap_or(take));
        if end.is_some() {
            return Ok(Some(if too_long {
                Line::TooLong
            } else {
                Line::Text(buf)
            }));
        }
    }
}

/// Serve `server` on this process's stdin and stdout until stdin closes or
/// [`Heph::stop_token`] is cancelled; then wait for the write in progress to finish.
pub(super) async fn serve(server: Heph) -> Result<(), McpError> {
    let keeper = server.clone();
    let stop = server.stop_token();
    use rmcp::ServiceExt;
    // stdin → (checked) → the SDK; the SDK → stdout; both merged by one writer.
    let (mut to_sdk, sdk_in) = duplex(1 << 16);
    let (sdk_out, from_sdk) = duplex(1 << 16);
    let (out_tx, mut out_rx) = mpsc::channel::<String>(64);

    let writer = tokio::spawn(async move {
        let mut stdout = FramedWrite::new(tokio::io::stdout(), LinesCodec::new());
        while let Some(line) = out_rx.recv().await {
            if stdout.send(line).await.is_err() {
                break;
            }
        }
    });
    let tx = out_tx.clone();
    let forward = tokio::spawn(async move {
        let mut lines = FramedRead::new(from_sdk, LinesCodec::new());
        while let Some(Ok(line)) = lines.next().await {
            if tx.send(line).await.is_err() {
                break;
            }
        }
    });
    let reader = tokio::spawn(async move {
        let mut stdin = BufReader::new(tokio::io::stdin());
        loop {
            let line = tokio::select! {
                line = next_line(&mut stdin) => line,
                // Stopping: no more requests (dropping `to_sdk` ends the session).
                _ = stop.cancelled() => break,
            };
            let answer = match line {
                Ok(Some(Line::Text(line))) => {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match serde_json::from_slice::<serde::de::IgnoredAny>(&line) {
                        Ok(_) => {
                            let mut bytes = line;
                            bytes.push(b'\n');
                            if to_sdk.write_all(&bytes).await.is_err() {
                                break;
                            }
                            continue;
                        }
                        Err(e) => error_line(-32700, &format!("parse error: not JSON ({e})")),
                    }
                }
                Ok(Some(Line::TooLong)) => error_line(
                    -32600,
                    &format!("invalid request: a message is larger than {MAX_MESSAGE_BYTES} bytes"),
                ),
                Ok(None) | Err(_) => break,
            };
            if out_tx.send(answer).await.is_err() {
                break;
            }
        }
        // Dropping `to_sdk` ends the session: the client closed stdin.
    });

    let result = match server.serve((sdk_in, sdk_out)).await {
        Ok(running) => running
            .waiting()
            .await
            .map(|_| ())
            .map_err(|e| McpError::Session(e.to_string())),
        Err(e) => Err(McpError::Initialize(e.to_string())),
    };
    // The session is over (the client closed stdin, or heph was told to stop): a
    // write still running is cancelled and restores its files before heph exits.
    keeper.finish().await;
    // The SDK's side is closed: let its last answers reach stdout.
    let _ = forward.await;
    reader.abort();
    let _ = writer.await;
    result
}
