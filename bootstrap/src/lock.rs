//! The data directory's lock: one process per data directory.
//!
//! Two nodes started on the same `--data-dir` would each replay the same WAL, each believe
//! they own its Raft groups, and both acknowledge writes at the same offsets; whichever
//! wrote last would win and the other's acknowledged writes would be lost. The bucket's
//! lease does not catch this when the directory already has state (a restart skips the
//! lease wait). So a node holds an exclusive `flock` on `DATA_DIR/LOCK` for as long as it
//! runs. The kernel drops it when the process exits, however it exits, so a `kill -9`
//! leaves nothing to clean up.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

/// Held for as long as the node runs; dropping it unlocks the directory.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "--data-dir {dir} is in use by another Chronik process{holder}: stop that process, \
         or give this node a data directory of its own"
    )]
    InUse { dir: String, holder: String },
    #[error("lock {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl DataDirLock {
    /// Locks `dir` (which must exist) or says which process holds it.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join("LOCK");
        let io = |source: std::io::Error| LockError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(LockError::InUse {
                    dir: dir.display().to_string(),
                    holder: if pid.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {pid})")
                    },
                });
            }
            // Some network and FUSE filesystems have no flock: run unlocked, as before
            // the lock existed, rather than not at all.
            Err(e @ (Errno::NOLCK | Errno::OPNOTSUPP | Errno::NOSYS)) => {
                tracing::warn!(
                    dir = %dir.display(),
                    err = %e,
                    "this filesystem cannot lock the data directory; make sure no other process uses it"
                );
                return Ok(Self { _file: file });
            }
            Err(e) => return Err(io(e.into())),
        }
        // The holder's pid, for the message above; informational only.
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(io)?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DataDirLock::acquire(dir.path()).expect("first lock");
        let err = DataDirLock::acquire(dir.path()).expect_err("second lock");
        let msg = err.to_string();
        assert!(msg.contains("in use by another Chronik process"), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        DataDirLock::acquire(dir.path()).expect("lock after release");
    }
}
