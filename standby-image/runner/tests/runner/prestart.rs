//! Pre-started interpreters (`--prestart`): the same results as the cold
//! path, every limit still binding, nothing of the interpreter left behind.
//! (The whole suite also runs in this mode: `make test-runner-prestart`.)

use std::fs;

use serde_json::json;
use warmpod_protocol::{JobResult, Status};

use crate::helpers::{TestJob, assert_status, job, run_raw};

/// The result with the work directory's name (it holds the runner's pid,
/// different in every run) replaced by a placeholder.
pub(crate) fn normalised(result: &JobResult) -> JobResult {
    let dir = format!("/tmp/warmpod-{}-", result.id);
    let strip = |s: &str| {
        let mut out = String::new();
        let mut rest = s;
        while let Some(at) = rest.find(&dir) {
            out.push_str(&rest[..at]);
            out.push_str("<dir>");
            rest = rest[at + dir.len()..].trim_start_matches(|c: char| c.is_ascii_digit());
        }
        out + rest
    };
    JobResult {
        stdout: strip(&result.stdout),
        stderr: strip(&result.stderr),
        wall_time_ms: 0,
        cpu_time_ms: 0,
        memory_kb: 0,
        ..result.clone()
    }
}

/// Runs `test_job` cold and pre-started; asserts equal results (but for
/// times, peak memory and the runner's pid in paths) and returns the
/// pre-started one.
fn same_both_ways(test_job: &TestJob) -> JobResult {
    same_both_ways_with(test_job, &["--prestart", &test_job.language()])
}

/// [`same_both_ways`] with the pre-started runner started with `args`.
fn same_both_ways_with(test_job: &TestJob, args: &[&str]) -> JobResult {
    let cold = test_job.run_with_args(&[]);
    let warm = test_job.run_with_args(args);
    assert_eq!(normalised(&warm), normalised(&cold), "pre-started vs cold");
    warm
}

#[test]
fn results_are_those_of_the_cold_path() {
    let programs = [
        "import sys\nprint(sys.argv, sys.path[0] == __import__('os').getcwd())\nprint(__name__, __file__, __cached__, __spec__)\nprint(sorted(globals()))",
        "def f():\n    raise ValueError('boom')\nf()",
        "foo(",
        "import sys\nsys.exit('bye')",
        "import sys\nprint('partial')\nsys.exit(3)",
        "try:\n    1 / 0\nexcept Exception as e:\n    raise KeyError('k') from e",
        "import os\nprint(os.environ['HOME'] == os.getcwd(), os.environ['TMPDIR'] == os.getcwd(), sorted(os.environ))",
        "import sys\nprint(repr(sys.stdin.read()), sys.stdin.isatty())",
        "import atexit, threading\natexit.register(print, 'bye')\nthreading.Thread(target=print, args=('thread',)).start()\nraise OSError(2, 'gone')",
        "import os\nprint(sorted(os.listdir('.')), os.getuid() != 0)",
    ];
    for code in programs {
        same_both_ways(&job("python", code).args(&["a", "b c", "ü"]));
    }
}

/// What a Node.js program can see of how it was started, and how it fails.
const JS_PROGRAMS: &[&str] = &[
    "console.log(process.argv, process.argv0, process.execArgv, process.execPath, process.title)\n\
     console.log(__filename, __dirname, process.cwd(), require.main === module, module.id, module.paths)\n\
     console.log(Object.keys(require.cache), process._preload_modules, require('module').globalPaths)\n\
     console.log(process.env, require('os').homedir(), require('os').tmpdir(), process.getuid() !== 0)\n\
     console.log(Buffer.from('x').byteOffset, require('fs').readdirSync('.'))",
    // (Not process.moduleLoadList: a pre-started Node has loaded the stream
    // modules a cold one loads at the program's first write.)
    "function f() {\n  throw new TypeError('boom');\n}\nf();",
    "foo(",
    "console.log('partial');\nprocess.exitCode = 3;",
    "process.stdout.write('no newline');\nprocess.exit(4);",
    "Promise.reject(new Error('unhandled'));",
    "process.on('exit', (c) => console.log('exit', c));\nsetTimeout(() => { throw 'thrown' }, 1);",
    "const fs = require('fs');\nconst st = fs.fstatSync(0);\n\
     console.log(JSON.stringify(fs.readFileSync(0, 'utf8')), st.isFIFO(), st.isCharacterDevice(), process.stdin.isTTY);",
    "let got = '';\nprocess.stdin.on('data', (d) => got += d).on('end', () => console.log(JSON.stringify(got)));",
    "const cp = require('child_process');\n\
     console.log(cp.execFileSync('/usr/bin/node', ['-p', 'process.execArgv.length + process.cwd()'], { encoding: 'utf8' }));\n\
     console.log(cp.spawnSync('/usr/bin/cat', { stdio: ['inherit', 'pipe', 'pipe'], encoding: 'utf8' }).stdout);\n\
     require('fs').writeFileSync('child.js', 'console.log(process.execArgv, process.argv.length); process.exit(5)');\n\
     cp.fork('child.js').on('exit', (code) => console.log('child', code));",
    "const { Worker } = require('worker_threads');\n\
     new Worker(\"const w = require('worker_threads'); console.log(process.execArgv, process.argv, process._preload_modules, Object.keys(require.cache), w.isMainThread, process.env.HOME === process.cwd()); throw new Error('in worker')\", { eval: true })\n\
     .on('error', (e) => console.log('worker error', e.message));",
    "require('fs').writeFileSync('x.mjs', 'export default import.meta.url;');\n\
     import('./x.mjs').then((m) => console.log(m.default));\nimport('./missing.mjs').catch((e) => console.log(e.code));",
    "console.log(new Error('here').stack);",
    // What making process.stdout early would change (not done: its libuv
    // stream opens a reserve descriptor, so the program's own descriptors
    // would get other numbers, as the last program shows).
    "console.log(process.stdout.writableLength, process.stdout.bytesWritten, process.stdout.listenerCount('end'),\n\
     Object.keys(process.stdout), process.stdout.isTTY, process.stdout._type, process.stderr._type, process.stdout.fd);",
    "require('fs').closeSync(1);\nconsole.log('lost');\nconsole.error('after');",
    "const fs = require('fs');\nconst fd = fs.openSync('main.js', 'r');\n\
     console.log(fd, fs.readdirSync('/proc/self/fd').length);",
];

#[test]
fn javascript_results_are_those_of_the_cold_path() {
    for code in JS_PROGRAMS {
        same_both_ways(&job("javascript", code).args(&["a", "b c", "ü"]));
        same_both_ways(&job("javascript", code).stdin("line 1\nline 2"));
    }
}

#[test]
fn javascript_stdin_args_and_a_second_file() {
    let result = same_both_ways(
        &job(
            "javascript",
            "const util = require('./util');\nconst line = require('fs').readFileSync(0, 'utf8').split('\\n')[0];\nconsole.log(util.twice(line), process.argv.slice(2), require.resolve('./util'));",
        )
        .file("util.js", "exports.twice = (s) => s + s;\n")
        .stdin("ab\ncd\n")
        .args(&["x", "y z"]),
    );
    assert_status(&result, Status::Accepted);
    assert!(
        result
            .stdout
            .starts_with("abab [ 'x', 'y z' ] /tmp/warmpod-"),
        "{result:#?}"
    );
}

#[test]
fn javascript_with_another_entry_point_or_memory_limit_runs_cold() {
    // The interpreter was started for main.js and the default heap limit.
    let code = "console.log(__filename.endsWith('/app.js'), process.execArgv)";
    let entry = same_both_ways(&job("javascript", code).entry_name("app.js"));
    assert_eq!(entry.stdout, "true [ '--max-old-space-size=256' ]\n");
    let memory = same_both_ways(&job("javascript", code).limits(json!({ "memory_kb": 65536 })));
    assert_eq!(memory.stdout, "false [ '--max-old-space-size=64' ]\n");
}

#[test]
fn javascript_start_up_cpu_is_not_charged() {
    // The program prints the CPU its process had used when it began: all
    // start-up, which the job is not charged for. Node's exit then costs
    // 15-20 ms of CPU, which it is (as on the cold path), so the margin is
    // not wide: the least of three runs is compared (noise only adds).
    let code =
        "const u = process.cpuUsage();\nconsole.log(Math.round((u.user + u.system) / 1000));";
    let (mut charged, mut at_start) = (u64::MAX, u64::MAX);
    for _ in 0..3 {
        let result = job("javascript", code).run_prestarted();
        assert_status(&result, Status::Accepted);
        let started: u64 = result.stdout.trim().parse().expect("a number");
        at_start = at_start.min(started);
        charged = charged.min(result.cpu_time_ms);
    }
    assert!(
        charged < at_start,
        "charged {charged} ms, the start-up alone used {at_start} ms"
    );
}

#[test]
fn javascript_limits_bind() {
    let cpu = job("javascript", "for (;;) {}")
        .limits(json!({ "cpu_time_ms": 500, "wall_time_ms": 20000 }))
        .run_prestarted();
    assert_status(&cpu, Status::TimeLimitExceeded);
    assert!(cpu.cpu_time_ms >= 500, "{cpu:#?}");
    let wall = job("javascript", "setTimeout(() => {}, 600000);")
        .limits(json!({ "wall_time_ms": 1000 }))
        .run_prestarted();
    assert_status(&wall, Status::TimeLimitExceeded);
    let flood = job(
        "javascript",
        "const s = 'x'.repeat(999) + '\\n';\nfor (;;) process.stdout.write(s);",
    )
    .limits(json!({ "max_output_bytes": 10000 }))
    .run_prestarted();
    assert_status(&flood, Status::OutputLimitExceeded);
    assert_eq!(flood.stdout.len(), 10000);
}

#[test]
fn javascript_heap_exhaustion_is_a_memory_limit() {
    // The default memory limit: the one the interpreter was started for.
    let result = job(
        "javascript",
        "const a = [];\nfor (;;) a.push(new Array(1e6).fill(1));",
    )
    .limits(json!({ "cpu_time_ms": 20000, "wall_time_ms": 30000 }))
    .run_prestarted();
    assert_status(&result, Status::MemoryLimitExceeded);
    assert!(
        result.stderr.contains("JavaScript heap out of memory"),
        "{result:#?}"
    );
}

#[test]
fn javascript_process_bomb_is_contained_by_the_applied_process_limit() {
    let code = "const cp = require('child_process');\n\
                (function next() {\n\
                  const child = cp.spawn('/usr/bin/sleep', ['600']);\n\
                  child.on('spawn', next).on('error', (e) => console.log(e.code));\n\
                })();";
    let result = job("javascript", code)
        .limits(json!({ "max_processes": 16, "wall_time_ms": 3000 }))
        .run_prestarted();
    assert_status(&result, Status::TimeLimitExceeded);
    assert!(
        result.stdout.contains("EAGAIN"),
        "the bomb reached max_processes: {result:#?}"
    );
}

#[test]
fn javascript_resource_limits_are_those_of_the_cold_path() {
    // Every limit but the CPU one, which is raised by the start-up's CPU.
    let code = "console.log(require('fs').readFileSync('/proc/self/limits', 'utf8').split('\\n').filter((l) => !l.startsWith('Max cpu time')).join('\\n'))";
    let result = same_both_ways(&job("javascript", code).limits(json!({ "max_processes": 7 })));
    assert_status(&result, Status::Accepted);
}

#[test]
fn stdin_args_and_a_second_file() {
    let result = same_both_ways(
        &job(
            "python",
            "import sys, util\nprint(util.twice(sys.stdin.readline().strip()), sys.argv[1:])",
        )
        .file("util.py", "def twice(s):\n    return s + s\n")
        .stdin("ab\ncd\n")
        .args(&["x", "y z"]),
    );
    assert_status(&result, Status::Accepted);
    assert_eq!(result.stdout, "abab ['x', 'y z']\n");
}

#[test]
fn the_interpreters_start_up_cpu_is_not_charged() {
    // The program prints the CPU time its process had used when the
    // program began: all start-up. The job's CPU time counts from there.
    let code = "import time\nprint(round(time.process_time() * 1000))";
    let result = job("python", code).run_prestarted();
    assert_status(&result, Status::Accepted);
    let at_start: u64 = result.stdout.trim().parse().expect("a number");
    assert!(
        result.cpu_time_ms < at_start,
        "charged {} ms, the start-up alone used {at_start} ms",
        result.cpu_time_ms
    );
}

#[test]
fn cpu_loop_exceeds_the_time_limit() {
    let result = job("python", "while True:\n    pass")
        .limits(json!({ "cpu_time_ms": 500, "wall_time_ms": 20000 }))
        .run_prestarted();
    assert_status(&result, Status::TimeLimitExceeded);
    assert!(result.cpu_time_ms >= 500, "{result:#?}");
}

#[test]
fn fork_bomb_is_contained_by_the_applied_process_limit() {
    let code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError as e:\n        print(e.strerror, flush=True)\n        break\nimport time\ntime.sleep(600)";
    let result = job("python", code)
        .limits(json!({ "max_processes": 16, "wall_time_ms": 3000 }))
        .run_prestarted();
    assert_status(&result, Status::TimeLimitExceeded);
    assert!(
        result.stdout.contains("Resource temporarily unavailable"),
        "the bomb reached max_processes: {result:#?}"
    );
}

#[test]
fn memory_bomb_is_a_memory_limit() {
    let result = job(
        "python",
        "blocks = []\nwhile True:\n    blocks.append(bytearray(1 << 20))",
    )
    .limits(json!({ "memory_kb": 65536, "cpu_time_ms": 20000, "wall_time_ms": 30000 }))
    .run_prestarted();
    assert_status(&result, Status::MemoryLimitExceeded);
}

#[test]
fn output_flood_is_cut() {
    let result = job("python", "while True:\n    print('x' * 999)")
        .limits(json!({ "max_output_bytes": 10000 }))
        .run_prestarted();
    assert_status(&result, Status::OutputLimitExceeded);
    assert_eq!(result.stdout.len(), 10000);
}

#[test]
fn open_files_and_file_size_limits_bind() {
    let code = "import resource\nprint(resource.getrlimit(resource.RLIMIT_NOFILE), resource.getrlimit(resource.RLIMIT_FSIZE), resource.getrlimit(resource.RLIMIT_AS), resource.getrlimit(resource.RLIMIT_NPROC))";
    let test_job = job("python", code).limits(json!({ "memory_kb": 131072, "max_processes": 7 }));
    let result = same_both_ways(&test_job);
    assert_status(&result, Status::Accepted);
}

#[test]
fn a_job_of_another_language_runs_cold_and_the_interpreter_is_gone() {
    for language in ["python", "javascript"] {
        let root = tempfile::tempdir().expect("temp dir");
        let root_arg = root.path().to_str().expect("UTF-8").to_string();
        let test_job = job("bash", "echo hi; ls -a");
        let line = test_job.line();
        let (status, stdout) = run_raw(&["--prestart", language, "--work-root", &root_arg], &line);
        assert!(status.success());
        let result: JobResult = serde_json::from_str(stdout.trim_end()).expect("a result line");
        assert_status(&result, Status::Accepted);
        assert_eq!(result.stdout, "hi\n.\n..\nmain.sh\n");
        let left: Vec<_> = fs::read_dir(root.path())
            .expect("readable")
            .flatten()
            .collect();
        assert!(left.is_empty(), "{language}: left behind: {left:?}");
        crate::helpers::assert_nothing_left(test_job.id);
    }
}

#[test]
fn the_bootstrap_file_is_outside_the_job_dir_and_gone_after_the_job() {
    let root = tempfile::tempdir().expect("temp dir");
    let root_arg = root.path().to_str().expect("UTF-8").to_string();
    let code =
        "const fs = require('fs');\nconsole.log(fs.readdirSync('.'), fs.readdirSync('..').length);";
    let test_job = job("javascript", code);
    let args = ["--prestart", "javascript", "--work-root", &root_arg];
    let (status, stdout) = run_raw(&args, &test_job.line());
    assert!(status.success());
    let result: JobResult = serde_json::from_str(stdout.trim_end()).expect("a result line");
    assert_status(&result, Status::Accepted);
    // The work dir and the bootstrap file beside it.
    assert_eq!(result.stdout, "[ 'main.js' ] 2\n");
    let left: Vec<_> = fs::read_dir(root.path())
        .expect("readable")
        .flatten()
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_malformed_job_gets_an_internal_error_and_the_interpreter_is_gone() {
    let root = tempfile::tempdir().expect("temp dir");
    let root_arg = root.path().to_str().expect("UTF-8").to_string();
    let args = ["--prestart", "python", "--work-root", &root_arg];
    let (status, stdout) = run_raw(
        &args,
        r#"{"id":"5f0c6d1e-6a53-4f43-9a1d-0c8b2a1e9f10","language":42}"#,
    );
    assert!(status.success());
    let result: JobResult = serde_json::from_str(stdout.trim_end()).expect("a result line");
    assert_status(&result, Status::InternalError);
    let left: Vec<_> = fs::read_dir(root.path())
        .expect("readable")
        .flatten()
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_job_with_another_memory_limit_still_runs() {
    // Python's pre-start command does not depend on the memory limit.
    let result = job("python", "print('ok')")
        .limits(json!({ "memory_kb": 100000 }))
        .run_prestarted();
    assert_status(&result, Status::Accepted);
}

#[test]
fn unknown_or_unsupported_prestart_languages_are_config_errors() {
    for language in ["cobol", "c"] {
        let (status, _) = run_raw(&["--prestart", language], "");
        assert_eq!(status.code(), Some(64), "{language}");
    }
}

mod java {
    //! Java on a warm compiler JVM and a warm program JVM.

    use super::*;

    /// What a Java program can see of how it was started, and how it fails.
    const PROGRAMS: &[&str] = &[
        "public class Main { public static void main(String[] a) throws Exception {\n System.out.println(String.join(\"|\", a) + \" \" + a.length);\n System.out.println(System.getProperty(\"user.dir\").equals(new java.io.File(\"\").getAbsolutePath()) + \" \" + new java.io.File(\"x\").getCanonicalPath().startsWith(System.getProperty(\"user.dir\")) + \" \" + java.nio.file.Paths.get(\"\").toAbsolutePath().toString().equals(System.getProperty(\"user.dir\")) + \" \" + new java.io.File(\"Main.java\").getAbsoluteFile().exists() + \" \" + java.nio.file.Files.exists(java.nio.file.Paths.get(\"Main.java\").toAbsolutePath()));\n System.out.println(System.getProperty(\"java.class.path\") + \" \" + (Main.class.getClassLoader() == ClassLoader.getSystemClassLoader()) + \" \" + (Thread.currentThread().getContextClassLoader() == ClassLoader.getSystemClassLoader()) + \" \" + Thread.currentThread().getName());\n java.util.List<String> l = new java.util.ArrayList<>(java.util.Arrays.asList(new java.io.File(\".\").list())); java.util.Collections.sort(l); System.out.println(l);\n} }",
        "public class Main {\n static void f(int n) { if (n == 0) throw new IllegalStateException(\"deep\"); f(n - 1); }\n public static void main(String[] a) {\n  try { f(3); } catch (RuntimeException e) { RuntimeException r = new RuntimeException(\"outer\", e); r.addSuppressed(new Error(\"s\")); throw r; }\n } }",
        "public class Main { public static void main(String[] a) { System.out.println(\"partial\"); System.exit(3); } }",
        "public class Main { public static void main(String[] a) { int[] x = new int[1]; x[2] = 1; } }",
        "public class Main { static int v = Integer.parseInt(\"no\"); public static void main(String[] a) { } }",
        "public class Main { public static void main(String[] a) throws Exception {\n Thread t = new Thread(() -> { try { Thread.sleep(200); } catch (InterruptedException e) { } System.out.println(\"thread done\"); });\n t.start(); throw new Exception(\"main dies first\"); } }",
        "public class Main { public static void main(String[] a) { Runtime.getRuntime().addShutdownHook(new Thread(() -> System.out.println(\"hook\"))); Thread.setDefaultUncaughtExceptionHandler((t, e) -> System.out.println(\"handled \" + e.getMessage())); throw new RuntimeException(\"x\"); } }",
        "public class Main { static int depth = 0; static void r() { depth++; r(); } public static void main(String[] a) { r(); } }",
        "public class Main { void main(String[] a) { } }",
        "class Other { public static void main(String[] a) { } }",
        "public class Main { public static void main(String[] a) throws Exception {\n java.io.BufferedReader in = new java.io.BufferedReader(new java.io.InputStreamReader(System.in));\n System.out.println(in.readLine() + \" \" + System.in.available()); } }",
        "public class Main { void f() { int x = \"s\"; } }",
    ];

    #[test]
    fn results_are_those_of_the_cold_path() {
        // The precompiled bootstrap when installed (`make deps`; see
        // the_installed_bootstrap_jar_is_on_the_jvms_boot_class_path_unless_stale).
        for code in PROGRAMS {
            let result = same_both_ways(&job("java", code).args(&["a", "b c", "ü"]));
            assert_ne!(result.status, Status::InternalError, "{result:#?}");
        }
    }

    #[test]
    fn from_source_results_are_those_of_the_cold_path() {
        // No jar in the boot directory: the JVMs load WarmpodBoot.java with
        // the source-file launcher.
        let empty = tempfile::tempdir().expect("temp dir");
        let dir = empty.path().to_str().expect("UTF-8");
        let args = ["--prestart", "java", "--java-boot-dir", dir];
        for code in PROGRAMS {
            let result = same_both_ways_with(&job("java", code).args(&["a", "b c", "ü"]), &args);
            assert_ne!(result.status, Status::InternalError, "{result:#?}");
        }
        same_both_ways_with(
            &job("java", "public class Main { public static void main(String[] a) { System.out.println(new java.util.Scanner(System.in).nextLine()); } }")
                .stdin("from stdin\n"),
            &args,
        );
    }

    /// Where `standby-image/build-java-boot.sh` (run by `make deps`)
    /// installs the precompiled bootstrap.
    const BOOT_DIR: &str = "/usr/local/lib/warmpod/java";

    #[test]
    fn the_installed_bootstrap_jar_is_on_the_jvms_boot_class_path_unless_stale() {
        let code = "public class Main { public static void main(String[] a) { System.out.println(java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments().stream().filter(o -> o.startsWith(\"-Xbootclasspath/a:\")).findFirst().orElse(\"none\")); } }";
        let appended = |args: &[&str]| {
            let result = job("java", code).run_with_args(args);
            assert_status(&result, Status::Accepted);
            result.stdout.trim_end().to_string()
        };
        assert_eq!(
            appended(&["--prestart", "java"]),
            format!("-Xbootclasspath/a:{BOOT_DIR}/warmpod-boot.jar"),
            "run `make deps` (standby-image/build-java-boot.sh) for this WarmpodBoot.java"
        );
        assert_eq!(appended(&[]), "none", "cold");
        // A copy of the jar (without the archive), then the same said to be
        // built from another WarmpodBoot.java.
        let copy = tempfile::tempdir().expect("temp dir");
        for file in ["warmpod-boot.jar", "warmpod-boot.sha256"] {
            fs::copy(format!("{BOOT_DIR}/{file}"), copy.path().join(file)).expect("copied");
        }
        fs::set_permissions(
            copy.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("dir opened");
        let dir = copy.path().to_str().expect("UTF-8");
        let args = ["--prestart", "java", "--java-boot-dir", dir];
        assert_eq!(
            appended(&args),
            format!("-Xbootclasspath/a:{dir}/warmpod-boot.jar")
        );
        fs::write(
            copy.path().join("warmpod-boot.sha256"),
            format!("{}\n", "0".repeat(64)),
        )
        .expect("hash written");
        assert_eq!(appended(&args), "none", "a stale jar is not used");
    }

    #[test]
    fn stdin_args_and_a_second_class_file() {
        let result = same_both_ways(
            &job(
                "java",
                "import java.util.Scanner;\npublic class Main { public static void main(String[] a) {\n String s = new Scanner(System.in).nextLine(); System.out.println(Util.twice(s) + \" \" + new Helper().name() + \" \" + String.join(\",\", a)); } }\nclass Helper { String name() { return getClass().getName(); } }",
            )
            .file("Util.java", "public class Util { static String twice(String s) { return s + s; } }")
            .stdin("ab\ncd\n")
            .args(&["x", "y z"]),
        );
        assert_status(&result, Status::Accepted);
        assert_eq!(result.stdout, "abab Helper x,y z\n");
    }

    #[test]
    fn a_compile_error_is_reported_as_cold() {
        let result = same_both_ways(&job(
            "java",
            "public class Main { void f() { undefined(); } }",
        ));
        assert_status(&result, Status::CompileError);
        assert!(
            result.compile_output.contains("cannot find symbol"),
            "{result:#?}"
        );
    }

    #[test]
    fn the_jvms_start_up_cpu_is_not_charged() {
        // The program prints the CPU time its JVM had used when main began:
        // all start-up (the warm-up, pre-started). The job's counts from there.
        let code = "public class Main { public static void main(String[] a) {\n System.out.println(((com.sun.management.OperatingSystemMXBean) java.lang.management.ManagementFactory.getOperatingSystemMXBean()).getProcessCpuTime() / 1000000); } }";
        let result = job("java", code).run_prestarted();
        assert_status(&result, Status::Accepted);
        let at_start: u64 = result.stdout.trim().parse().expect("a number");
        assert!(
            result.cpu_time_ms < at_start,
            "charged {} ms, the start-up alone used {at_start} ms",
            result.cpu_time_ms
        );
    }

    #[test]
    fn a_cpu_loop_exceeds_the_time_limit() {
        let result = job("java", "public class Main { public static void main(String[] a) { long i = 0; while (true) i++; } }")
            .limits(json!({ "cpu_time_ms": 1000, "wall_time_ms": 20000 }))
            .run_prestarted();
        assert_status(&result, Status::TimeLimitExceeded);
        // Stopped by the supervisor or by RLIMIT_CPU (SIGXCPU), whichever
        // comes first: not by the wall clock.
        let message = result.message.clone().unwrap_or_default();
        assert!(message.starts_with("CPU time limit"), "{result:#?}");
    }

    #[test]
    fn heap_exhaustion_is_a_memory_limit() {
        // The default memory limit: the one the program's JVM was started for.
        let code = "import java.util.*;\npublic class Main { public static void main(String[] a) {\n List<long[]> l = new ArrayList<>(); while (true) l.add(new long[1 << 20]); } }";
        let result = job("java", code)
            .limits(json!({ "cpu_time_ms": 20000, "wall_time_ms": 30000 }))
            .run_prestarted();
        assert_status(&result, Status::MemoryLimitExceeded);
        assert!(result.stderr.contains("Java heap space"), "{result:#?}");
    }

    #[test]
    fn a_thread_bomb_is_contained_by_the_applied_process_limit() {
        let code = "public class Main { public static void main(String[] a) {\n try { while (true) { Thread t = new Thread(() -> { try { Thread.sleep(600000); } catch (InterruptedException e) { } }); t.setDaemon(true); t.start(); } }\n catch (OutOfMemoryError e) { System.out.println(e.getMessage().contains(\"native thread\")); } } }";
        let result = job("java", code)
            .limits(json!({ "max_processes": 64, "wall_time_ms": 20000 }))
            .run_prestarted();
        assert_status(&result, Status::Accepted);
        // (The JVM also logs the failed thread starts on stdout.)
        assert!(result.stdout.ends_with("true\n"), "{result:#?}");
    }

    #[test]
    fn a_process_bomb_is_contained() {
        let code = "public class Main { public static void main(String[] a) throws Exception {\n try { while (true) new ProcessBuilder(\"/bin/sleep\", \"600\").start(); } catch (Throwable e) { System.out.println(\"stopped\"); } } }";
        let result = job("java", code)
            .limits(json!({ "max_processes": 64, "wall_time_ms": 20000 }))
            .run_prestarted();
        assert_status(&result, Status::Accepted);
        assert!(result.stdout.ends_with("stopped\n"), "{result:#?}");
    }

    #[test]
    fn an_output_flood_is_cut() {
        let code = "public class Main { public static void main(String[] a) { String s = \"x\".repeat(999); while (true) System.out.println(s); } }";
        let result = job("java", code)
            .limits(json!({ "max_output_bytes": 10000 }))
            .run_prestarted();
        assert_status(&result, Status::OutputLimitExceeded);
        assert_eq!(result.stdout.len(), 10000);
    }

    #[test]
    fn a_job_with_another_memory_limit_runs_cold_and_the_jvms_are_gone() {
        // A private work root (open to the program uid, which reads the
        // bootstrap file there): nothing may be left in it.
        let root = tempfile::tempdir().expect("temp dir");
        fs::set_permissions(
            root.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("root opened");
        let root_arg = root.path().to_str().expect("UTF-8").to_string();
        let test_job = job("java", "public class Main { public static void main(String[] a) { System.out.println(Runtime.getRuntime().maxMemory() <= 128L << 20); } }")
            .limits(json!({ "memory_kb": 131072 }));
        let args = ["--prestart", "java", "--work-root", &root_arg];
        let (status, stdout) = run_raw(&args, &test_job.line());
        assert!(status.success());
        let result: JobResult = serde_json::from_str(stdout.trim_end()).expect("a result line");
        assert_status(&result, Status::Accepted);
        assert_eq!(result.stdout, "true\n");
        let left: Vec<_> = fs::read_dir(root.path())
            .expect("readable")
            .flatten()
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        crate::helpers::assert_nothing_left(test_job.id);
    }
}

mod unprivileged {
    use super::*;

    #[test]
    fn hello_world_and_a_contained_fork_bomb() {
        let args = ["--prestart", "python"];
        let result = job("python", "import os\nprint('hi', os.getuid() != 0)")
            .run_unprivileged_with_args(&args);
        assert_status(&result, Status::Accepted);
        assert_eq!(result.stdout, "hi True\n");
        let code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        break\nimport time\ntime.sleep(600)";
        let result = job("python", code)
            .limits(json!({ "max_processes": 16, "wall_time_ms": 3000 }))
            .run_unprivileged_with_args(&args);
        assert_status(&result, Status::TimeLimitExceeded);
    }

    #[test]
    fn java_hello_world() {
        let code = "public class Main { public static void main(String[] a) { System.out.println(\"hi \" + String.join(\",\", a)); } }";
        let result = job("java", code)
            .args(&["x"])
            .run_unprivileged_with_args(&["--prestart", "java"]);
        assert_status(&result, Status::Accepted);
        assert_eq!(result.stdout, "hi x\n");
    }
}
