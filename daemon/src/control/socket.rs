//! The local control socket: a Unix socket in the runtime dir, mode 0660, group `edgevoice`,
//! so members of that group (and root) can run `edgevoice status` and friends.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use super::protocol::{Request, Response, MAX_REQUEST_BYTES};
use super::{Dispatcher, Principal};

/// Group whose members may use the socket.
pub const CONTROL_GROUP: &str = "edgevoice";
const MAX_CONNECTIONS: usize = 32;
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
#[error("cannot open control socket {}: {source}; check daemon.runtime_dir is writable by the daemon's user", path.display())]
pub struct SocketError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Binds the socket, replacing a stale file left by a killed daemon (the caller holds the
/// instance lock, so no live daemon owns it).
pub fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    let err = |source| SocketError {
        path: path.to_owned(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    if let Ok(Some(group)) = nix::unistd::Group::from_name(CONTROL_GROUP) {
        // Under the unit the daemon runs as group edgevoice already; chown would be refused.
        let already = nix::sys::stat::stat(path).is_ok_and(|st| st.st_gid == group.gid.as_raw());
        if already {
        } else if let Err(e) = nix::unistd::chown(path, None, Some(group.gid)) {
            tracing::warn!(path = %path.display(), "cannot give the control socket to group {CONTROL_GROUP}: {e}");
        }
    }
    Ok(listener)
}

pub async fn serve(listener: UnixListener, dispatcher: Arc<Dispatcher>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("control socket accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!("control socket: {MAX_CONNECTIONS} connections open, refusing another");
            continue;
        };
        let dispatcher = dispatcher.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, dispatcher).await {
                tracing::debug!("control connection ended: {e}");
            }
            drop(permit);
        });
    }
}

async fn connection(stream: UnixStream, dispatcher: Arc<Dispatcher>) -> std::io::Result<()> {
    let who = match stream.peer_cred() {
        Ok(c) => match c.pid() {
            Some(pid) => format!("uid {} pid {pid}", c.uid()),
            None => format!("uid {}", c.uid()),
        },
        Err(_) => "unknown peer".to_owned(),
    };
    let principal = Principal {
        channel: "control-socket".into(),
        who,
    };
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let n = match tokio::time::timeout(
            IDLE_TIMEOUT,
            (&mut reader)
                .take(MAX_REQUEST_BYTES as u64 + 1)
                .read_until(b'\n', &mut line),
        )
        .await
        {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        let response = if line.len() > MAX_REQUEST_BYTES {
            let resp = Response::error(
                None,
                format!("request longer than {MAX_REQUEST_BYTES} bytes"),
            );
            write_response(&mut write, &resp).await?;
            return Ok(());
        } else if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        } else {
            match serde_json::from_slice::<Request>(&line) {
                Ok(req) => {
                    let dispatcher = dispatcher.clone();
                    let principal = principal.clone();
                    // Commands touch the store (fsync) and files: keep them off the runtime's workers.
                    tokio::task::spawn_blocking(move || dispatcher.handle(&principal, req))
                        .await
                        .unwrap_or_else(|e| Response::error(None, format!("command failed: {e}")))
                }
                Err(e) => Response::error(None, format!("malformed request: {e}")),
            }
        };
        write_response(&mut write, &response).await?;
    }
}

async fn write_response(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    resp: &Response,
) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(resp).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await
}
