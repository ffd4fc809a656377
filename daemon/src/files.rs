//! Folders and files the daemon creates, private to its user whatever umask
//! it was started with: modes are given at creation (and set exactly on
//! what was just created), never left to the umask.
//!
//! The modes: the state folder 0700; the SQLite database, its `.lock` and
//! the manual clock's file 0600 (SQLite gives the `-wal` and `-shm` files
//! the database's mode); the admin socket's folder 0750, since operators in
//! the daemon's group reach the socket (0660) through it.

use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// A folder only the daemon's user may enter.
pub const PRIVATE_DIR: u32 = 0o700;
/// A folder the daemon's group may pass through (to the admin socket).
pub const GROUP_DIR: u32 = 0o750;
/// A file only the daemon's user may read or write.
pub const PRIVATE_FILE: u32 = 0o600;

/// Creates `path` and any missing parents with `mode`. A folder that
/// already exists keeps its mode (the operator, or systemd's
/// `StateDirectoryMode=`, chose it); one created here gets exactly `mode`.
pub fn create_dir_all(path: &Path, mode: u32) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)?;
    // The umask may have taken bits away; a folder just made is ours to set.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Opens `path` for writing, creating it with mode 0600 if it is missing
/// (an existing file keeps its mode). Not truncated.
pub fn open_private(path: &Path) -> io::Result<std::fs::File> {
    let existed = path.exists();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(PRIVATE_FILE)
        .open(path)?;
    if !existed {
        file.set_permissions(std::fs::Permissions::from_mode(PRIVATE_FILE))?;
    }
    Ok(file)
}

/// Replaces the content of `path`, creating it with mode 0600 if missing.
pub fn write_private(path: &Path, content: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut file = open_private(path)?;
    file.set_len(0)?;
    file.write_all(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn modes_are_set_at_creation_and_existing_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        create_dir_all(&nested, PRIVATE_DIR).unwrap();
        assert_eq!(mode(&nested), 0o700);
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        std::fs::set_permissions(&nested, std::fs::Permissions::from_mode(0o750)).unwrap();
        create_dir_all(&nested, PRIVATE_DIR).unwrap();
        assert_eq!(mode(&nested), 0o750, "an existing folder keeps its mode");

        let file = nested.join("f");
        write_private(&file, b"first").unwrap();
        assert_eq!(mode(&file), 0o600);
        write_private(&file, b"2").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"2");
    }
}
