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

use warmpod_protocol::{Language, language};

/// The bootstrap's file name (the source-file launcher needs `.java`; the
/// class is `WarmpodBoot`).
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
}
