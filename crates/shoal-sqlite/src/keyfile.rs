//! The device key file: this device's secret signing key, kept beside the workspace file
//! (`<workspace file>.key`), never inside it.
//!
//! Owns: the key file's path, bytes, creation and checks ([`key_path`], `write_new`,
//! `read`).
//!
//! Why a file of its own: whatever sits in the workspace file is one SQL mistake away from
//! an app query, and travels with every copy or backup of the workspace. The workspace
//! records only the public key it expects (`shoal_meta.device_public`), so a missing or
//! wrong key file is an error naming the file.
//!
//! Format: `"SHOALKEY"`, a version byte, the 16-byte workspace id, the 32-byte Ed25519
//! secret key (57 bytes: version 1); version 2 (89 bytes) adds the 32-byte secret of the
//! invite code the device joined an encrypted workspace with: the epoch keys that invite
//! carries are wrapped for it (`shoal_core::encryption`), so it is a key like the others.
//!
//! Invariants: the file is created with `O_EXCL` and mode 0600 under a temporary name,
//! fsynced, then linked to its final name (never replacing a file there) and the directory
//! fsynced, so a crash leaves either no key file or a complete one. On open, a key file
//! readable by group or others is tightened to 0600 (or refused when that fails).
//!
//! Never: replaces an existing key file, or writes the secret key anywhere else.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use shoal_core::{DeviceKey, PublicKey, WorkspaceId};

const MAGIC: &[u8; 8] = b"SHOALKEY";
const VERSION: u8 = 1;
const VERSION_WITH_INVITE: u8 = 2;
const LEN: usize = 8 + 1 + 16 + 32;
const LEN_WITH_INVITE: usize = LEN + 32;

/// What a key file holds: the device key, and the invite secret it joined with, if kept.
pub(crate) struct Secrets {
    pub(crate) device: DeviceKey,
    pub(crate) invite: Option<DeviceKey>,
}

/// Why the device key file could not be written or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The workspace expects a key file and there is none.
    #[error(
        "{}: the device key file is missing (the workspace expects device key {expected}); \
         a workspace file copied or restored without its key file cannot write",
        path.display()
    )]
    Missing {
        /// The key file.
        path: PathBuf,
        /// The public key the workspace expects, in hex.
        expected: String,
    },
    /// The key file is not one this version reads, or belongs to another workspace or
    /// device.
    #[error("{}: not this workspace's device key file: {what}", path.display())]
    Wrong {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A key file already exists where a new one was to be written.
    #[error(
        "{}: a device key file already exists here (move it away if it belongs to no \
         workspace)",
        path.display()
    )]
    Exists {
        /// The key file.
        path: PathBuf,
    },
    /// Reading, writing or securing the file failed.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// The key file of the workspace file `workspace_file`: its path with `.key` appended,
/// beside the real file when the path is a symbolic link (every path that reaches the file
/// finds the same key, as SQLite finds the same WAL).
pub fn key_path(workspace_file: &Path) -> PathBuf {
    // A file not created yet: resolve its directory, so creating and opening through a path
    // with a symlinked directory (macOS's /tmp) agree.
    let real = std::fs::canonicalize(workspace_file)
        .or_else(|_| {
            let dir = workspace_file.parent().filter(|p| !p.as_os_str().is_empty());
            let name = workspace_file.file_name().ok_or(io::ErrorKind::InvalidInput)?;
            std::fs::canonicalize(dir.unwrap_or(Path::new("."))).map(|d| d.join(name))
        })
        .unwrap_or_else(|_| workspace_file.to_owned());
    let mut name = real.into_os_string();
    name.push(".key");
    PathBuf::from(name)
}

fn io_err<'p>(path: &'p Path, what: &'static str) -> impl FnOnce(io::Error) -> KeyFileError + 'p {
    move |source| KeyFileError::Io { path: path.to_owned(), what, source }
}

/// Opens a new file for writing, failing if it exists; owner-only on Unix.
pub(crate) fn create_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Writes a new key file for `key` in `workspace` at `path`, durably, never replacing one.
pub(crate) fn write_new(
    path: &Path,
    workspace: &WorkspaceId,
    key: &DeviceKey,
    invite: Option<&DeviceKey>,
) -> Result<(), KeyFileError> {
    if path.exists() {
        return Err(KeyFileError::Exists { path: path.to_owned() });
    }
    let mut bytes = Vec::with_capacity(LEN_WITH_INVITE);
    bytes.extend_from_slice(MAGIC);
    bytes.push(if invite.is_some() { VERSION_WITH_INVITE } else { VERSION });
    bytes.extend_from_slice(workspace.as_bytes());
    bytes.extend_from_slice(&key.to_secret_bytes());
    if let Some(invite) = invite {
        bytes.extend_from_slice(&invite.to_secret_bytes());
    }
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let written = (|| {
        let mut f = create_private(&tmp).map_err(io_err(&tmp, "create the key file"))?;
        f.write_all(&bytes).map_err(io_err(&tmp, "write the key file"))?;
        f.sync_all().map_err(io_err(&tmp, "sync the key file"))?;
        // A hard link publishes the complete file and fails if the name is taken.
        fs::hard_link(&tmp, path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                KeyFileError::Exists { path: path.to_owned() }
            } else {
                KeyFileError::Io { path: path.to_owned(), what: "publish the key file", source: e }
            }
        })
    })();
    let _ = fs::remove_file(&tmp);
    written?;
    sync_dir(path).map_err(io_err(path, "sync the key file's directory"))
}

pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Reads the key file at `path` and checks that it holds the key `expected` of
/// `workspace`.
pub(crate) fn read(
    path: &Path,
    workspace: &WorkspaceId,
    expected: &PublicKey,
) -> Result<Secrets, KeyFileError> {
    let wrong = |what: String| KeyFileError::Wrong { path: path.to_owned(), what };
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(KeyFileError::Missing {
                path: path.to_owned(),
                expected: hex(expected.as_bytes()),
            });
        }
        Err(e) => return Err(io_err(path, "open the key file")(e)),
    };
    secure(path, &file)?;
    let mut bytes = Vec::with_capacity(LEN_WITH_INVITE);
    Read::by_ref(&mut file)
        .take(LEN_WITH_INVITE as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(path, "read the key file"))?;
    if bytes.len() < LEN || &bytes[..8] != MAGIC {
        return Err(wrong(format!("not a Shoal key file ({} bytes)", bytes.len())));
    }
    let expected_len = match bytes[8] {
        VERSION => LEN,
        VERSION_WITH_INVITE => LEN_WITH_INVITE,
        v => {
            return Err(wrong(format!(
                "key file version {v} (this Shoal reads {VERSION} and {VERSION_WITH_INVITE})"
            )));
        }
    };
    if bytes.len() != expected_len {
        return Err(wrong(format!("not a Shoal key file ({} bytes)", bytes.len())));
    }
    if &bytes[9..25] != workspace.as_bytes() {
        return Err(wrong(format!("it is for workspace {}", hex(&bytes[9..25]))));
    }
    let secret = |at: usize| {
        let mut secret = [0u8; 32];
        secret.copy_from_slice(&bytes[at..at + 32]);
        DeviceKey::from_secret_bytes(&secret)
    };
    let key = secret(25);
    let invite = (expected_len == LEN_WITH_INVITE).then(|| secret(LEN));
    if key.public_key() != *expected {
        return Err(wrong(format!(
            "it holds device key {}, the workspace expects {}",
            hex(key.public_key().as_bytes()),
            hex(expected.as_bytes())
        )));
    }
    Ok(Secrets { device: key, invite })
}

/// Makes sure only the owner can read the key file (Unix): a looser mode is tightened.
fn secure(path: &Path, file: &File) -> Result<(), KeyFileError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let mode = file.metadata().map_err(io_err(path, "read the key file's mode"))?.mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                "{}: the device key file was readable by others (mode {:o}); set to 0600",
                path.display(),
                mode & 0o777
            );
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                .map_err(io_err(path, "make the key file owner-only (chmod 600)"))?;
        }
    }
    #[cfg(not(unix))]
    let _ = (path, file);
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
