//! The CLI's side of the control socket (blocking: the CLI has no async runtime).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::protocol::{Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("edgevoiced is not running (no control socket at {}); start it with systemctl start edgevoice", path.display())]
    NotRunning { path: PathBuf },
    #[error("permission denied on {}; run as root or add your user to group edgevoice", path.display())]
    PermissionDenied { path: PathBuf },
    #[error("control socket {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("edgevoiced sent a response that is not valid: {0}")]
    BadResponse(String),
    #[error("{0}")]
    Refused(String),
}

/// Sends one request and returns the result, or the daemon's error as [`ClientError::Refused`].
pub fn call(socket: &Path, request: &Request) -> Result<serde_json::Value, ClientError> {
    let io = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning {
                path: socket.to_owned(),
            }
        }
        std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
            path: socket.to_owned(),
        },
        _ => ClientError::Io {
            path: socket.to_owned(),
            source,
        },
    };
    let mut stream = UnixStream::connect(socket).map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    let mut line =
        serde_json::to_vec(request).map_err(|e| ClientError::BadResponse(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    reader.read_line(&mut answer).map_err(io)?;
    let response: Response =
        serde_json::from_str(&answer).map_err(|e| ClientError::BadResponse(e.to_string()))?;
    if response.ok {
        Ok(response.result.unwrap_or(serde_json::Value::Null))
    } else {
        Err(ClientError::Refused(
            response
                .error
                .unwrap_or_else(|| "refused without a reason".into()),
        ))
    }
}
