//! One daemon per state directory: an exclusive `flock` on `edgevoice.lock`, holding the pid of
//! its owner so the refusal can say who holds it. The kernel drops the lock when the process
//! dies, even by kill -9, so a stale file never blocks a restart.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::StoreError;

pub const LOCK_FILE: &str = "edgevoice.lock";

#[derive(Debug)]
pub struct InstanceLock {
    _file: Flock<File>,
    path: PathBuf,
}

impl InstanceLock {
    pub fn acquire(state_dir: &Path) -> Result<Self, StoreError> {
        let path = state_dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| StoreError::NotWritable {
                path: state_dir.to_owned(),
                source,
            })?;
        let mut locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                return Err(StoreError::Locked {
                    path: state_dir.to_owned(),
                    holder: pid.trim().parse().ok(),
                });
            }
            Err((_, errno)) => {
                return Err(StoreError::NotWritable {
                    path: state_dir.to_owned(),
                    source: errno.into(),
                })
            }
        };
        let write_pid = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.seek(SeekFrom::Start(0))?;
            writeln!(f, "{}", std::process::id())?;
            f.sync_all()
        };
        write_pid(&mut locked).map_err(|source| StoreError::NotWritable {
            path: state_dir.to_owned(),
            source,
        })?;
        Ok(Self {
            _file: locked,
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
