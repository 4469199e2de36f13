//! Pre-started Java: two JVMs wait for a job, both started with the cold
//! commands' JVM options and running the bootstrap (`WarmpodBoot.java`,
//! compiled in memory by the JDK's source-file launcher at start-up):
//! - the compiler JVM: the `java` of the run command with the compile
//!   command's `-J` options, having compiled a throw-away class; it runs
//!   javac in-process on the job's javac arguments;
//! - the program's JVM: the run command with the bootstrap instead of the
//!   main class; it calls the job's `main` on its "main" thread.
//!
//! The JVM keeps its start-up directory's path (`user.dir`, the class path
//! "."), so the work directory's pre-start name stays as a symlink to the
//! job's (see `WorkDir::hand_to_job`).

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use warmpod_protocol::{Language, language};

/// The bootstrap's file name (the source-file launcher needs `.java`).
pub const BOOT_FILE: &str = "WarmpodBoot.java";

/// Whether `language` compiles with `javac` and runs on the JVM.
pub fn is_jvm(language: &Language) -> bool {
    language
        .compile
        .is_some_and(|c| c.first().is_some_and(|p| p.ends_with("/javac")))
}

/// The compiler JVM's command: the run command's `java` with the compile
/// command's `-J` options (expanded for `memory_kb`), running the
/// bootstrap at `boot` in compile mode.
pub fn compiler_command(language: &Language, memory_kb: u64, boot: &str) -> Option<Vec<String>> {
    if !is_jvm(language) {
        return None;
    }
    let template = language.compile?;
    let mut argv = vec![language.run.first()?.to_string()];
    argv.extend(
        language::expand(template, &[], memory_kb)
            .iter()
            .filter_map(|a| a.strip_prefix("-J"))
            .map(str::to_string),
    );
    argv.extend([boot.to_string(), "compile".to_string()]);
    Some(argv)
}

/// javac's own arguments in a compile command: all but the program and
/// its `-J` (JVM) options.
pub fn compiler_args(argv: &[String]) -> impl Iterator<Item = &str> {
    argv.iter()
        .skip(1)
        .map(String::as_str)
        .filter(|a| !a.starts_with("-J"))
}

/// The bootstrap source in `<root>/warmpod-boot-<runner pid>/`, outside
/// the job's directory, readable by the program uid; removed on drop.
#[derive(Debug)]
pub struct BootFile {
    dir: PathBuf,
    path: PathBuf,
}

impl BootFile {
    /// Writes `code` into a fresh directory under `root`.
    ///
    /// # Errors
    /// When the directory exists already or a write fails.
    pub fn write(root: &Path, code: &str) -> io::Result<Self> {
        let dir = root.join(format!("warmpod-boot-{}", std::process::id()));
        DirBuilder::new().mode(0o755).create(&dir)?;
        let boot = Self {
            path: dir.join(BOOT_FILE),
            dir,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&boot.path)?;
        file.write_all(code.as_bytes())?;
        Ok(boot)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BootFile {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn java() -> &'static Language {
        Language::find("java").unwrap()
    }

    #[test]
    fn the_compiler_jvm_takes_javacs_jvm_options() {
        let argv = compiler_command(java(), 1_048_576, "/b/WarmpodBoot.java").unwrap();
        assert_eq!(argv[0], java().run[0]);
        assert!(argv.contains(&"-Xmx1024m".to_string()), "{argv:?}");
        assert!(argv.iter().all(|a| !a.starts_with("-J")), "{argv:?}");
        assert_eq!(&argv[argv.len() - 2..], ["/b/WarmpodBoot.java", "compile"]);
        assert!(compiler_command(Language::find("c").unwrap(), 1, "b").is_none());
    }

    #[test]
    fn javac_arguments_leave_out_the_program_and_jvm_options() {
        let argv = language::expand(java().compile.unwrap(), &["Main.java", "U.java"], 1 << 20);
        let args: Vec<&str> = compiler_args(&argv).collect();
        assert_eq!(
            args,
            ["-encoding", "UTF-8", "-d", ".", "Main.java", "U.java"]
        );
    }

    #[test]
    fn the_boot_file_is_written_and_removed() {
        let root = tempfile::tempdir().unwrap();
        let boot = BootFile::write(root.path(), "class X {}").unwrap();
        assert_eq!(fs::read_to_string(boot.path()).unwrap(), "class X {}");
        let path = boot.path().to_path_buf();
        drop(boot);
        assert!(!path.exists());
        assert!(fs::read_dir(root.path()).unwrap().next().is_none());
    }
}
