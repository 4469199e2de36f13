//! The job's private work directory.
//!
//! Created fresh (never reused: creation fails if the path exists), mode
//! 0700, owned by the program's uid; holds the job's files and is the
//! program's cwd, `HOME` and `TMPDIR`. Removed on drop, whatever the program
//! did to its permissions.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use uuid::Uuid;

/// A work directory, removed when dropped.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    /// A symlink from the directory's pre-start name, removed with it (see
    /// [`hand_to_job`](Self::hand_to_job)).
    old_name: Option<PathBuf>,
}

impl WorkDir {
    /// Creates `<root>/warmpod-<id>-<runner pid>`, owned by `owner` when
    /// given, and writes `files` into it.
    ///
    /// # Errors
    /// When the directory exists already or any write fails.
    pub fn create(
        root: &Path,
        id: Uuid,
        owner: Option<(u32, u32)>,
        files: &[(String, String)],
    ) -> io::Result<Self> {
        let path = root.join(job_dir_name(id));
        DirBuilder::new().mode(0o700).create(&path)?;
        let dir = Self {
            path,
            old_name: None,
        };
        dir.write_files(owner, files)?;
        chown(&dir.path, owner)?;
        Ok(dir)
    }

    /// Creates the empty `<root>/warmpod-prestart-<runner pid>` owned by
    /// `owner`, the cwd of a pre-started interpreter until its job arrives
    /// (see [`hand_to_job`](Self::hand_to_job)).
    ///
    /// # Errors
    /// When the directory exists already or cannot be given to `owner`.
    pub fn create_for_prestart(root: &Path, owner: Option<(u32, u32)>) -> io::Result<Self> {
        let path = root.join(format!("warmpod-prestart-{}", std::process::id()));
        DirBuilder::new().mode(0o700).create(&path)?;
        let dir = Self {
            path,
            old_name: None,
        };
        chown(&dir.path, owner)?;
        Ok(dir)
    }

    /// Renames the directory to the name [`create`](Self::create) gives
    /// job `id` (a process whose cwd it is follows it) and writes `files`
    /// into it, so the job sees exactly the paths of the cold path. With
    /// `link_old_name`, the old name becomes a symlink to the new one, for
    /// runtimes that keep their start-up directory's path (the JVM's
    /// `user.dir` and class path); it goes when the directory does.
    ///
    /// # Errors
    /// When the rename, the link or any write fails.
    pub fn hand_to_job(
        &mut self,
        id: Uuid,
        owner: Option<(u32, u32)>,
        files: &[(String, String)],
        link_old_name: bool,
    ) -> io::Result<()> {
        let root = self.path.parent().unwrap_or(Path::new("/"));
        let path = root.join(job_dir_name(id));
        // Fails (rather than replacing) if the target exists and is not empty.
        if fs::symlink_metadata(&path).is_ok() {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        fs::rename(&self.path, &path)?;
        let old = std::mem::replace(&mut self.path, path);
        if link_old_name {
            std::os::unix::fs::symlink(&self.path, &old)?;
            self.old_name = Some(old);
        }
        self.write_files(owner, files)
    }

    fn write_files(&self, owner: Option<(u32, u32)>, files: &[(String, String)]) -> io::Result<()> {
        for (name, content) in files {
            let file_path = self.path.join(name);
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&file_path)?;
            f.write_all(content.as_bytes())?;
            chown(&file_path, owner)?;
        }
        Ok(())
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The work directory name of job `id` in this runner.
fn job_dir_name(id: Uuid) -> String {
    format!("warmpod-{id}-{}", std::process::id())
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
    match owner {
        Some((uid, gid)) => std::os::unix::fs::lchown(path, Some(uid), Some(gid)),
        None => Ok(()),
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Some(link) = &self.old_name {
            let _ = fs::remove_file(link);
        }
        // remove_dir_all never follows symlinks, so a program that swapped
        // its directory for a link cannot make us delete elsewhere.
        if fs::remove_dir_all(&self.path).is_ok() || nix::unistd::geteuid().is_root() {
            return;
        }
        // Not root: the program (our own uid) may have made directories
        // unreadable or unwritable; open them up and try again. (Root needs
        // no permissions, and must not chmod paths a program can swap.)
        open_up(&self.path);
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Gives us rwx on `dir` and every directory below it, skipping symlinks.
fn open_up(dir: &Path) {
    if !fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        return;
    }
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                open_up(&entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_written_and_everything_removed_on_drop() {
        let root = tempfile::tempdir().unwrap();
        let files = vec![("main.py".to_string(), "print(1)".to_string())];
        let dir = WorkDir::create(root.path(), Uuid::new_v4(), None, &files).unwrap();
        let path = dir.path().to_path_buf();
        assert_eq!(
            fs::read_to_string(path.join("main.py")).unwrap(),
            "print(1)"
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let locked = path.join("a/b");
        fs::create_dir_all(&locked).unwrap();
        fs::write(locked.join("f"), "x").unwrap();
        fs::set_permissions(path.join("a"), fs::Permissions::from_mode(0o000)).unwrap();
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn a_prestart_directory_takes_the_job_name_and_files() {
        let root = tempfile::tempdir().unwrap();
        let mut dir = WorkDir::create_for_prestart(root.path(), None).unwrap();
        let old = dir.path().to_path_buf();
        let id = Uuid::new_v4();
        let files = vec![("main.py".to_string(), "x".to_string())];
        dir.hand_to_job(id, None, &files, false).unwrap();
        assert!(!old.exists());
        assert_eq!(dir.path(), root.path().join(job_dir_name(id)));
        assert_eq!(fs::read_to_string(dir.path().join("main.py")).unwrap(), "x");
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn the_old_name_can_stay_as_a_link_until_the_end() {
        let root = tempfile::tempdir().unwrap();
        let mut dir = WorkDir::create_for_prestart(root.path(), None).unwrap();
        let old = dir.path().to_path_buf();
        let files = vec![("Main.java".to_string(), "x".to_string())];
        dir.hand_to_job(Uuid::new_v4(), None, &files, true).unwrap();
        assert_eq!(fs::read_to_string(old.join("Main.java")).unwrap(), "x");
        assert_eq!(fs::read_link(&old).unwrap(), dir.path());
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(!path.exists());
        assert!(fs::symlink_metadata(&old).is_err(), "link left");
    }

    #[test]
    fn an_existing_directory_is_never_reused() {
        let root = tempfile::tempdir().unwrap();
        let id = Uuid::new_v4();
        let _first = WorkDir::create(root.path(), id, None, &[]).unwrap();
        assert!(WorkDir::create(root.path(), id, None, &[]).is_err());
    }
}
