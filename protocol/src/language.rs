//! The language table: data, not code branches.
//!
//! Adding a language is one [`Language`] entry here plus its runtime in the
//! standby image. Commands name system runtimes by absolute path (a `PATH`
//! lookup would find shims such as pyenv's outside a sandbox and nothing
//! inside one); [`Language::programs`] lists them so binaries can check they
//! exist at start-up.
//!
//! Command templates may use these placeholders:
//! - `{source}`: the entry point's file name;
//! - `{sources}`: as a whole argument, every job file with the entry
//!   point's extension (e.g. all `.c` files), entry point first;
//! - `{memory_mb}`: the memory limit in MiB, for runtimes that cap their
//!   own heap (see [`MemoryModel::RuntimeHeap`]);
//! - `{bootstrap}`: (pre-start commands only) the runner's bootstrap code
//!   for the language, which waits for the program on a private descriptor;
//! - `{bootstrap_file}`: (pre-start commands only) the path of a file
//!   holding that code, for runtimes that load it from a file (Node's
//!   `-r`, Java's source-file launcher); for Java, as a whole argument, the
//!   runner substitutes the precompiled bootstrap instead when installed
//!   (`-Xbootclasspath/a:<jar>` and its class).

/// How a language's memory limit is enforced by the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryModel {
    /// `RLIMIT_AS` = the memory limit. Right for C, C++, Python, Bash.
    AddressSpace,
    /// The runtime caps its own heap from a `{memory_mb}` flag in the run
    /// command, and reserves far more address space than it uses (JVM, V8),
    /// so `RLIMIT_AS` = the memory limit + `overhead_kb`.
    RuntimeHeap {
        /// Address space the runtime needs beyond its heap, in KiB.
        overhead_kb: u64,
    },
}

/// One supported language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Language {
    /// The key clients send, e.g. `"python"`.
    pub key: &'static str,
    /// Other names accepted for `key` (Piston-style aliases).
    pub aliases: &'static [&'static str],
    /// Display name without version, e.g. `"Python"`.
    pub name: &'static str,
    /// A command printing the runtime's version (first non-empty line of
    /// stdout or stderr is taken).
    pub version_command: &'static [&'static str],
    /// The entry point's default file name.
    pub source_file: &'static str,
    /// The compile command, for compiled languages.
    pub compile: Option<&'static [&'static str]>,
    /// The run command; the job's args are appended.
    pub run: &'static [&'static str],
    /// Judge0 language ids served by this entry; the first is canonical.
    pub judge0_ids: &'static [u32],
    /// How the memory limit is enforced.
    pub memory: MemoryModel,
    /// Strings in stderr (or compile output) that mean the program ran out
    /// of memory, for a `memory_limit_exceeded` verdict on a failed run.
    pub oom_markers: &'static [&'static str],
    /// The command of an interpreter the runner may start before the job
    /// arrives (a pre-started runtime), for languages it supports this for.
    /// The runner substitutes `{bootstrap}` or `{bootstrap_file}`;
    /// `{memory_mb}` takes the memory limit the interpreter is started for
    /// (a job with another limit runs on the cold path). For Java it is the
    /// program's JVM; the runner derives the compiler JVM's command from
    /// `compile` (its `-J` options).
    pub prestart: Option<&'static [&'static str]>,
}

/// Every language warmpod runs.
pub static LANGUAGES: &[Language] = &[
    Language {
        key: "python",
        aliases: &["python3", "py"],
        name: "Python",
        version_command: &["/usr/bin/python3", "--version"],
        source_file: "main.py",
        compile: None,
        run: &["/usr/bin/python3", "-B", "{source}"],
        judge0_ids: &[71],
        memory: MemoryModel::AddressSpace,
        oom_markers: &["MemoryError"],
        prestart: Some(&["/usr/bin/python3", "-B", "-c", "{bootstrap}"]),
    },
    Language {
        key: "javascript",
        aliases: &["js", "node", "nodejs"],
        name: "JavaScript (Node.js)",
        version_command: &["/usr/bin/node", "--version"],
        source_file: "main.js",
        compile: None,
        run: &[
            "/usr/bin/node",
            "--max-old-space-size={memory_mb}",
            "{source}",
        ],
        judge0_ids: &[63],
        memory: MemoryModel::RuntimeHeap {
            overhead_kb: 2 * 1024 * 1024,
        },
        oom_markers: &[
            "JavaScript heap out of memory",
            "RangeError: Array buffer allocation failed",
        ],
        // The bootstrap is a `-r` preload; the main path, resolved before
        // it runs, follows the work directory's rename.
        prestart: Some(&[
            "/usr/bin/node",
            "--max-old-space-size={memory_mb}",
            "-r",
            "{bootstrap_file}",
            "/proc/self/cwd/{source}",
        ]),
    },
    Language {
        key: "c",
        aliases: &["gcc"],
        name: "C (GCC)",
        version_command: &["/usr/bin/gcc", "--version"],
        source_file: "main.c",
        compile: Some(&[
            "/usr/bin/gcc",
            "-O2",
            "-std=gnu17",
            "-pipe",
            "-o",
            "main",
            "{sources}",
            "-lm",
        ]),
        run: &["./main"],
        judge0_ids: &[50, 48, 49],
        memory: MemoryModel::AddressSpace,
        oom_markers: &[],
        prestart: None,
    },
    Language {
        key: "cpp",
        aliases: &["c++", "g++"],
        name: "C++ (GCC)",
        version_command: &["/usr/bin/g++", "--version"],
        source_file: "main.cpp",
        compile: Some(&[
            "/usr/bin/g++",
            "-O2",
            "-std=gnu++17",
            "-pipe",
            // Precompiled <bits/stdc++.h> and <iostream>, used when one is
            // the program's first include (standby-image/build-pch.sh builds
            // them for exactly these -O2 -std=gnu++17; g++ ignores a missing
            // directory and a .gch that does not fit).
            "-I/usr/local/lib/warmpod/pch",
            "-o",
            "main",
            "{sources}",
        ]),
        run: &["./main"],
        judge0_ids: &[54, 52, 53],
        memory: MemoryModel::AddressSpace,
        oom_markers: &["std::bad_alloc"],
        prestart: None,
    },
    Language {
        key: "java",
        aliases: &["jdk"],
        name: "Java (OpenJDK)",
        version_command: &["/usr/bin/javac", "-version"],
        source_file: "Main.java",
        compile: Some(&[
            "/usr/bin/javac",
            "-J-XX:+UseSerialGC",
            "-J-XX:TieredStopAtLevel=1",
            "-J-XX:-UsePerfData",
            "-J-Xmx{memory_mb}m",
            "-encoding",
            "UTF-8",
            "-d",
            ".",
            "{sources}",
        ]),
        run: &[
            "/usr/bin/java",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-XX:-UsePerfData",
            "-Xmx{memory_mb}m",
            "-cp",
            ".",
            "Main",
        ],
        judge0_ids: &[62],
        memory: MemoryModel::RuntimeHeap {
            overhead_kb: 3 * 1024 * 1024,
        },
        // Not "unable to create native thread": that is the process limit.
        oom_markers: &[
            "java.lang.OutOfMemoryError: Java heap space",
            "java.lang.OutOfMemoryError: GC overhead limit exceeded",
            "java.lang.OutOfMemoryError: Metaspace",
            "java.lang.OutOfMemoryError: Requested array size exceeds VM limit",
        ],
        // The run command with the bootstrap (precompiled on the boot class
        // path, or in source-file mode) instead of the main class.
        prestart: Some(&[
            "/usr/bin/java",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-XX:-UsePerfData",
            "-Xmx{memory_mb}m",
            "-cp",
            ".",
            "{bootstrap_file}",
            "run",
        ]),
    },
    Language {
        key: "bash",
        aliases: &["sh"],
        name: "Bash",
        version_command: &["/usr/bin/bash", "--version"],
        source_file: "main.sh",
        compile: None,
        run: &["/usr/bin/bash", "{source}"],
        judge0_ids: &[46],
        memory: MemoryModel::AddressSpace,
        oom_markers: &[],
        prestart: None,
    },
];

impl Language {
    /// Looks a language up by key or alias (case-insensitive).
    pub fn find(name: &str) -> Option<&'static Language> {
        let name = name.trim();
        LANGUAGES.iter().find(|l| {
            l.key.eq_ignore_ascii_case(name)
                || l.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
        })
    }

    /// Looks a language up by any of its Judge0 ids.
    pub fn by_judge0_id(id: u32) -> Option<&'static Language> {
        LANGUAGES.iter().find(|l| l.judge0_ids.contains(&id))
    }

    /// The canonical Judge0 id.
    pub fn judge0_id(&self) -> u32 {
        self.judge0_ids[0]
    }

    /// The absolute paths of every program the table entry runs, to check
    /// at start-up that the runtime is installed.
    pub fn programs(&self) -> Vec<&'static str> {
        let mut out = vec![self.version_command[0], self.run[0]];
        if let Some(compile) = self.compile {
            out.push(compile[0]);
        }
        out.retain(|p| p.starts_with('/'));
        out.sort_unstable();
        out.dedup();
        out
    }

    /// `RLIMIT_AS` in KiB for a memory limit of `memory_kb`.
    pub fn address_space_kb(&self, memory_kb: u64) -> u64 {
        match self.memory {
            MemoryModel::AddressSpace => memory_kb,
            MemoryModel::RuntimeHeap { overhead_kb } => memory_kb.saturating_add(overhead_kb),
        }
    }

    /// Whether `output` shows the program ran out of memory.
    pub fn looks_out_of_memory(&self, output: &str) -> bool {
        self.oom_markers.iter().any(|m| output.contains(m))
    }
}

/// Expands a command template (see the module docs for placeholders).
///
/// `sources` must hold the entry point first.
pub fn expand(template: &[&str], sources: &[&str], memory_kb: u64) -> Vec<String> {
    let source = sources.first().copied().unwrap_or_default();
    let memory_mb = (memory_kb / 1024).max(1).to_string();
    let mut out = Vec::with_capacity(template.len() + sources.len());
    for arg in template {
        if *arg == "{sources}" {
            out.extend(sources.iter().map(|s| s.to_string()));
        } else {
            out.push(
                arg.replace("{source}", source)
                    .replace("{memory_mb}", &memory_mb),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_languages_and_judge0_ids() {
        for (key, id) in [
            ("python", 71),
            ("javascript", 63),
            ("c", 50),
            ("cpp", 54),
            ("java", 62),
            ("bash", 46),
        ] {
            let lang = Language::find(key).unwrap_or_else(|| panic!("{key} missing"));
            assert_eq!(lang.judge0_id(), id, "{key}");
            assert_eq!(Language::by_judge0_id(id).map(|l| l.key), Some(key));
        }
        assert_eq!(Language::find("Java").unwrap().source_file, "Main.java");
        assert_eq!(Language::find("PY").unwrap().key, "python");
        assert!(Language::find("cobol").is_none());
    }

    #[test]
    fn keys_aliases_and_ids_are_unique() {
        let mut names: Vec<_> = LANGUAGES
            .iter()
            .flat_map(|l| std::iter::once(l.key).chain(l.aliases.iter().copied()))
            .collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate key or alias");
        let mut ids: Vec<_> = LANGUAGES
            .iter()
            .flat_map(|l| l.judge0_ids.iter().copied())
            .collect();
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n, "duplicate Judge0 id");
    }

    #[test]
    fn commands_use_absolute_runtime_paths() {
        for lang in LANGUAGES {
            assert!(lang.version_command[0].starts_with('/'), "{}", lang.key);
            if let Some(c) = lang.compile {
                assert!(c[0].starts_with('/'), "{} compiler", lang.key);
            } else {
                assert!(lang.run[0].starts_with('/'), "{} interpreter", lang.key);
            }
        }
    }

    #[test]
    fn templates_expand_placeholders() {
        let java = Language::find("java").unwrap();
        let got = expand(java.compile.unwrap(), &["Main.java", "Util.java"], 262_144);
        assert!(got.contains(&"-J-Xmx256m".to_string()));
        assert_eq!(&got[got.len() - 2..], ["Main.java", "Util.java"]);
        let py = Language::find("python").unwrap();
        assert_eq!(
            expand(py.run, &["main.py"], 1),
            ["/usr/bin/python3", "-B", "main.py"]
        );
    }

    #[test]
    fn java_heap_exhaustion_is_out_of_memory_but_a_thread_limit_is_not() {
        let java = Language::find("java").unwrap();
        assert!(java.looks_out_of_memory(
            "Exception in thread \"main\" java.lang.OutOfMemoryError: Java heap space"
        ));
        assert!(!java.looks_out_of_memory(
            "java.lang.OutOfMemoryError: unable to create native thread: possibly out of memory or process/resource limits reached"
        ));
    }

    #[test]
    fn address_space_follows_the_memory_model() {
        assert_eq!(Language::find("c").unwrap().address_space_kb(1000), 1000);
        assert!(Language::find("java").unwrap().address_space_kb(1000) > 1_000_000);
    }
}
