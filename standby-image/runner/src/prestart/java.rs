//! Pre-started Java: two JVMs wait for a job, both started with the cold
//! commands' JVM options and running the bootstrap (`WarmpodBoot.java`,
//! class `warmpod.boot.WarmpodBoot`):
//! - the compiler JVM: the `java` of the run command with the compile
//!   command's `-J` options, having compiled a throw-away class; it runs
//!   javac in-process on the job's javac arguments;
//! - the program's JVM: the run command with the bootstrap instead of the
//!   main class; it calls the job's `main` on its "main" thread.
//!
//! The bootstrap comes precompiled ([`JavaBoot::Jar`], built by
//! `standby-image/build-java-boot.sh`) on the JVMs' boot class path, with a
//! class-data sharing archive for the compiler JVM; or, when that jar is
//! missing or was built from another `WarmpodBoot.java` than the runner's,
//! as a source file the JDK's source-file launcher compiles in memory at
//! every start ([`JavaBoot::Source`]: the same results, ~1 s more CPU per
//! JVM).
//!
//! The JVM keeps its start-up directory's path (`user.dir`, the class path
//! "."), so the work directory's pre-start name stays as a symlink to the
//! job's (see `WorkDir::hand_to_job`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use warmpod_protocol::{Language, language};

/// The bootstrap's file name for the source-file launcher (which needs
/// `.java`; the class is `warmpod.boot.WarmpodBoot`).
pub const BOOT_FILE: &str = "WarmpodBoot.java";

/// Where `standby-image/build-java-boot.sh` (run by `make deps` and in the
/// standby image) installs the precompiled bootstrap.
pub const DEFAULT_BOOT_DIR: &str = "/usr/local/lib/warmpod/java";

/// The precompiled bootstrap, in the boot directory.
const BOOT_JAR: &str = "warmpod-boot.jar";
/// The SHA-256 (hex) of the `WarmpodBoot.java` the jar was built from.
const BOOT_HASH: &str = "warmpod-boot.sha256";
/// The compiler JVM's class-data sharing archive.
const COMPILER_ARCHIVE: &str = "javac.jsa";
/// The bootstrap's class, in the jar.
const BOOT_CLASS: &str = "warmpod.boot.WarmpodBoot";

/// How the JVMs load the bootstrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JavaBoot {
    /// The precompiled jar on the boot class path (`-Xbootclasspath/a:`,
    /// so it adds no user class path entry and the system class loader
    /// does not see it).
    Jar {
        /// The jar.
        jar: PathBuf,
        /// The compiler JVM's CDS archive, when installed.
        archive: Option<PathBuf>,
    },
    /// The source-file launcher on the bootstrap file at this path.
    Source(String),
}

impl JavaBoot {
    /// The precompiled bootstrap in `dir`, if its jar was built from `code`
    /// (the hash beside it says) and the program uid can read it.
    pub fn installed(dir: &Path, code: &str) -> Option<Self> {
        let jar = dir.join(BOOT_JAR);
        let built_from = fs::read_to_string(dir.join(BOOT_HASH)).ok()?;
        if built_from.trim() != hex_sha256(code) || !world_readable(&jar) {
            return None;
        }
        let archive = Some(dir.join(COMPILER_ARCHIVE)).filter(|a| world_readable(a));
        Some(Self::Jar { jar, archive })
    }

    /// The words that start the bootstrap, after the JVM options and
    /// before its mode (`compile` or `run`); the compiler JVM's (`compiler`)
    /// also map its CDS archive, never printing about it (an archive that
    /// does not match is ignored).
    pub fn words(&self, compiler: bool) -> Vec<String> {
        match self {
            Self::Jar { jar, archive } => {
                let mut words = vec![format!("-Xbootclasspath/a:{}", jar.display())];
                if let (Some(archive), true) = (archive, compiler) {
                    words.extend([
                        format!("-XX:SharedArchiveFile={}", archive.display()),
                        "-Xlog:cds=off".to_string(),
                        "-Xlog:cds+dynamic=off".to_string(),
                    ]);
                }
                words.push(BOOT_CLASS.to_string());
                words
            }
            Self::Source(file) => vec![file.clone()],
        }
    }
}

fn hex_sha256(code: &str) -> String {
    Sha256::digest(code.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A regular file anyone may read (the JVMs run as the program uid).
fn world_readable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o004 != 0)
}

/// Whether `language` compiles with `javac` and runs on the JVM.
pub fn is_jvm(language: &Language) -> bool {
    language
        .compile
        .is_some_and(|c| c.first().is_some_and(|p| p.ends_with("/javac")))
}

/// The compiler JVM's command: the run command's `java` with the compile
/// command's `-J` options (expanded for `memory_kb`), running the
/// bootstrap in compile mode.
pub fn compiler_command(
    language: &Language,
    memory_kb: u64,
    boot: &JavaBoot,
) -> Option<Vec<String>> {
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
    argv.extend(boot.words(true));
    argv.push("compile".to_string());
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

#[cfg(test)]
mod tests {
    use super::*;

    const CODE: &str = include_str!("WarmpodBoot.java");

    fn java() -> &'static Language {
        Language::find("java").unwrap()
    }

    fn jar_boot() -> JavaBoot {
        JavaBoot::Jar {
            jar: "/j/warmpod-boot.jar".into(),
            archive: Some("/j/javac.jsa".into()),
        }
    }

    #[test]
    fn the_compiler_jvm_takes_javacs_jvm_options() {
        let boot = JavaBoot::Source("/b/WarmpodBoot.java".into());
        let argv = compiler_command(java(), 1_048_576, &boot).unwrap();
        assert_eq!(argv[0], java().run[0]);
        assert!(argv.contains(&"-Xmx1024m".to_string()), "{argv:?}");
        assert!(argv.iter().all(|a| !a.starts_with("-J")), "{argv:?}");
        assert_eq!(&argv[argv.len() - 2..], ["/b/WarmpodBoot.java", "compile"]);
        assert!(compiler_command(Language::find("c").unwrap(), 1, &boot).is_none());
    }

    #[test]
    fn from_the_jar_the_compiler_jvm_maps_its_archive_quietly_and_the_program_jvm_not() {
        let argv = compiler_command(java(), 1_048_576, &jar_boot()).unwrap();
        let tail = &argv[argv.len() - 6..];
        assert_eq!(
            tail,
            [
                "-Xbootclasspath/a:/j/warmpod-boot.jar",
                "-XX:SharedArchiveFile=/j/javac.jsa",
                "-Xlog:cds=off",
                "-Xlog:cds+dynamic=off",
                "warmpod.boot.WarmpodBoot",
                "compile"
            ]
        );
        assert_eq!(
            jar_boot().words(false),
            [
                "-Xbootclasspath/a:/j/warmpod-boot.jar",
                "warmpod.boot.WarmpodBoot"
            ]
        );
        // The bootstrap's class is the one named here.
        assert!(CODE.contains("package warmpod.boot;\n"));
        assert!(CODE.contains("public class WarmpodBoot {"));
    }

    /// A boot directory holding a jar built (the hash says) from `from`.
    fn boot_dir(from: &str, mode: u32) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(BOOT_JAR), "jar").unwrap();
        fs::set_permissions(dir.path().join(BOOT_JAR), fs::Permissions::from_mode(mode)).unwrap();
        fs::write(
            dir.path().join(BOOT_HASH),
            format!("{}\n", hex_sha256(from)),
        )
        .unwrap();
        dir
    }

    #[test]
    fn the_jar_is_used_only_when_built_from_the_runners_bootstrap() {
        let current = boot_dir(CODE, 0o644);
        let jar = current.path().join(BOOT_JAR);
        assert_eq!(
            JavaBoot::installed(current.path(), CODE),
            Some(JavaBoot::Jar {
                jar: jar.clone(),
                archive: None
            })
        );
        fs::write(current.path().join(COMPILER_ARCHIVE), "jsa").unwrap();
        assert_eq!(
            JavaBoot::installed(current.path(), CODE),
            Some(JavaBoot::Jar {
                jar,
                archive: Some(current.path().join(COMPILER_ARCHIVE))
            })
        );
        let stale = boot_dir("// an older bootstrap\n", 0o644);
        assert_eq!(JavaBoot::installed(stale.path(), CODE), None);
        let unreadable = boot_dir(CODE, 0o600);
        assert_eq!(JavaBoot::installed(unreadable.path(), CODE), None);
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(JavaBoot::installed(empty.path(), CODE), None);
        assert_eq!(
            hex_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn the_installed_jar_is_current_and_its_archive_maps_with_the_compiler_jvms_options() {
        // Needs `make deps` (standby-image/build-java-boot.sh) run with this
        // WarmpodBoot.java; -Xshare:on makes a JVM fail when the archive
        // does not map (a JDK, jar, option or class path mismatch).
        let boot = JavaBoot::installed(Path::new(DEFAULT_BOOT_DIR), CODE).unwrap_or_else(|| {
            panic!("no current {DEFAULT_BOOT_DIR}/{BOOT_JAR}: run `make deps` (standby-image/build-java-boot.sh)")
        });
        assert!(
            matches!(
                &boot,
                JavaBoot::Jar {
                    archive: Some(_),
                    ..
                }
            ),
            "{boot:?}"
        );
        let memory_kb = warmpod_protocol::ResolvedLimits::COMPILE_DEFAULT.memory_kb;
        let mut argv = compiler_command(java(), memory_kb, &boot).unwrap();
        let class_at = argv.len() - 2;
        argv.splice(
            class_at..,
            ["-Xshare:on".to_string(), "-version".to_string()],
        );
        // The class path "." is the (empty) work directory, as in a sandbox.
        let cwd = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .current_dir(cwd.path())
            .env_clear()
            .output()
            .unwrap();
        assert!(out.status.success(), "{argv:?}: {out:?}");
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
}
