//! Pre-started interpreters (`--prestart`): the same results as the cold
//! path, every limit still binding, nothing of the interpreter left behind.
//! (The whole suite also runs in this mode: `make test-runner-prestart`.)

use std::fs;

use serde_json::json;
use warmpod_protocol::{JobResult, Status};

use crate::helpers::{TestJob, assert_status, job, run_raw};

/// The result with the work directory's name (it holds the runner's pid,
/// different in every run) replaced by a placeholder.
fn normalised(result: &JobResult) -> JobResult {
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
    let cold = test_job.run_with_args(&[]);
    let warm = test_job.run_prestarted();
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
    let root = tempfile::tempdir().expect("temp dir");
    let root_arg = root.path().to_str().expect("UTF-8").to_string();
    let test_job = job("bash", "echo hi; ls -a");
    let line = test_job.line();
    let (status, stdout) = run_raw(&["--prestart", "python", "--work-root", &root_arg], &line);
    assert!(status.success());
    let result: JobResult = serde_json::from_str(stdout.trim_end()).expect("a result line");
    assert_status(&result, Status::Accepted);
    assert_eq!(result.stdout, "hi\n.\n..\nmain.sh\n");
    let left: Vec<_> = fs::read_dir(root.path())
        .expect("readable")
        .flatten()
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    crate::helpers::assert_nothing_left(test_job.id);
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

    #[test]
    fn results_are_those_of_the_cold_path() {
        let programs = [
            "public class Main { public static void main(String[] a) throws Exception {\n System.out.println(String.join(\"|\", a) + \" \" + a.length);\n System.out.println(System.getProperty(\"user.dir\").equals(new java.io.File(\"\").getAbsolutePath()) + \" \" + new java.io.File(\"x\").getCanonicalPath().startsWith(System.getProperty(\"user.dir\")));\n System.out.println(System.getProperty(\"java.class.path\") + \" \" + (Main.class.getClassLoader() == ClassLoader.getSystemClassLoader()) + \" \" + (Thread.currentThread().getContextClassLoader() == ClassLoader.getSystemClassLoader()) + \" \" + Thread.currentThread().getName());\n java.util.List<String> l = new java.util.ArrayList<>(java.util.Arrays.asList(new java.io.File(\".\").list())); java.util.Collections.sort(l); System.out.println(l);\n} }",
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
        for code in programs {
            let result = same_both_ways(&job("java", code).args(&["a", "b c", "ü"]));
            assert_ne!(result.status, Status::InternalError, "{result:#?}");
        }
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
