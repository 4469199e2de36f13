//! The bootstrap of a runtime that loads it from a file (Node's `-r`),
//! for pre-start commands with `{bootstrap_file}`.
//!
//! Written to `<work root>/warmpod-prestart-<runner pid>.<ext>`: beside
//! the work directory, never in it, so the job's directory holds exactly
//! its files, and readable by the program uid (which must reach the work
//! root anyway). Read-only, created new (never through a link or over an
//! existing file). It lives as long as the job's processes may load it
//! again (Node's worker threads run every `-r` module) and is removed on
//! drop, after them.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A bootstrap file, removed when dropped.
#[derive(Debug)]
pub struct BootstrapFile {
    path: PathBuf,
}

impl BootstrapFile {
    /// Writes `code` to `<work_root>/warmpod-prestart-<pid>.<extension>`,
    /// mode 0444.
    ///
    /// # Errors
    /// When the file exists already or cannot be written.
    pub fn write(work_root: &Path, extension: &str, code: &str) -> io::Result<Self> {
        let name = format!("warmpod-prestart-{}.{extension}", std::process::id());
        let path = work_root.join(name);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        let written = Self { path };
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
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn written_read_only_beside_the_work_dirs_and_removed_on_drop() {
        let root = tempfile::tempdir().unwrap();
        let file = BootstrapFile::write(root.path(), "js", "code").unwrap();
        let path = file.path().to_path_buf();
        assert_eq!(path.parent(), Some(root.path()));
        assert_eq!(fs::read_to_string(&path).unwrap(), "code");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o444
        );
        assert!(BootstrapFile::write(root.path(), "js", "again").is_err());
        drop(file);
        assert!(!path.exists());
    }
}
