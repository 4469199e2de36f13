//! The bootstrap of a runtime that loads it from a file (Node's `-r`,
//! Java's source-file launcher), for pre-start commands with
//! `{bootstrap_file}`.
//!
//! Written to `<work root>/warmpod-boot-<runner pid>/<name>`: beside the
//! work directory, never in it, so the job's directory holds exactly its
//! files; in a directory of its own, because a runtime may take the file's
//! directory for its source root (Java's launcher compiles other `.java`
//! files it finds there) and may need a given name (Java's class name).
//! Readable by the program uid (which must reach the work root anyway);
//! the file is read-only and both are created new (never through a link or
//! over an existing entry). They live as long as the job's processes may
//! load the file again (Node's worker threads run every `-r` module) and
//! are removed on drop, after them.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A bootstrap file in its own directory, both removed when dropped.
#[derive(Debug)]
pub struct BootstrapFile {
    dir: PathBuf,
    path: PathBuf,
}

impl BootstrapFile {
    /// Writes `code` to `<work_root>/warmpod-boot-<pid>/<name>` (directory
    /// mode 0755, file mode 0444).
    ///
    /// # Errors
    /// When the directory exists already or the file cannot be written.
    pub fn write(work_root: &Path, name: &str, code: &str) -> io::Result<Self> {
        let dir = work_root.join(format!("warmpod-boot-{}", std::process::id()));
        DirBuilder::new().mode(0o755).create(&dir)?;
        let written = Self {
            path: dir.join(name),
            dir,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&written.path)?;
        file.write_all(code.as_bytes())?;
        Ok(written)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BootstrapFile {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn written_read_only_beside_the_work_dirs_and_removed_on_drop() {
        let root = tempfile::tempdir().unwrap();
        let file = BootstrapFile::write(root.path(), "boot.js", "code").unwrap();
        let path = file.path().to_path_buf();
        assert_eq!(path.file_name().unwrap(), "boot.js");
        assert_eq!(path.parent().and_then(Path::parent), Some(root.path()));
        assert_eq!(fs::read_to_string(&path).unwrap(), "code");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o444
        );
        assert!(BootstrapFile::write(root.path(), "boot.js", "again").is_err());
        drop(file);
        assert!(fs::read_dir(root.path()).unwrap().next().is_none());
    }
}
