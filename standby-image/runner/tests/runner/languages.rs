//! Per language: hello world, stdin and args; a multi-file Python program.

use serde_json::json;
use warmpod_protocol::Status;

use crate::helpers::{assert_status, job};

/// `(language, hello world, a program echoing its first stdin line and
/// its arguments as "<line>|<arg1>,<arg2>")`.
const PROGRAMS: &[(&str, &str, &str)] = &[
    (
        "python",
        "print('Hello, World!')",
        "import sys\nprint(input() + '|' + ','.join(sys.argv[1:]))",
    ),
    (
        "javascript",
        "console.log('Hello, World!')",
        "const line = require('fs').readFileSync(0, 'utf8').split('\\n')[0];\n\
         console.log(line + '|' + process.argv.slice(2).join(','));",
    ),
    (
        "c",
        "#include <stdio.h>\nint main(void) { puts(\"Hello, World!\"); return 0; }",
        "#include <stdio.h>\n#include <string.h>\n\
         int main(int argc, char **argv) {\n\
           char line[256] = {0};\n\
           if (!fgets(line, sizeof line, stdin)) return 2;\n\
           line[strcspn(line, \"\\n\")] = 0;\n\
           printf(\"%s|\", line);\n\
           for (int i = 1; i < argc; i++) printf(\"%s%s\", i > 1 ? \",\" : \"\", argv[i]);\n\
           puts(\"\");\n\
           return 0;\n\
         }",
    ),
    (
        "cpp",
        "#include <iostream>\nint main() { std::cout << \"Hello, World!\" << std::endl; }",
        "#include <iostream>\n#include <string>\n\
         int main(int argc, char **argv) {\n\
           std::string line; std::getline(std::cin, line);\n\
           std::cout << line << '|';\n\
           for (int i = 1; i < argc; i++) std::cout << (i > 1 ? \",\" : \"\") << argv[i];\n\
           std::cout << std::endl;\n\
         }",
    ),
    (
        "java",
        "public class Main { public static void main(String[] a) { System.out.println(\"Hello, World!\"); } }",
        "import java.util.Scanner;\n\
         public class Main { public static void main(String[] a) {\n\
           String line = new Scanner(System.in).nextLine();\n\
           System.out.println(line + \"|\" + String.join(\",\", a));\n\
         } }",
    ),
    (
        "bash",
        "echo 'Hello, World!'",
        "read -r line\nIFS=,; echo \"$line|$*\"",
    ),
];

fn program(language: &str) -> (&'static str, &'static str) {
    let (_, hello, echo) = PROGRAMS
        .iter()
        .find(|(l, _, _)| *l == language)
        .expect("language listed");
    (hello, echo)
}

fn hello(language: &str) {
    let result = job(language, program(language).0).run();
    assert_status(&result, Status::Accepted);
    assert_eq!(result.stdout, "Hello, World!\n", "{language}");
    assert_eq!(result.exit_code, Some(0));
    assert!(result.memory_kb > 0, "{language}: peak memory reported");
}

fn stdin_and_args(language: &str) {
    let result = job(language, program(language).1)
        .stdin("héllo wörld\nsecond line\n")
        .args(&["a b", "-c", "ü"])
        .run();
    assert_status(&result, Status::Accepted);
    assert_eq!(result.stdout, "héllo wörld|a b,-c,ü\n", "{language}");
}

macro_rules! language_tests {
    ($($name:ident: $lang:literal,)*) => {$(
        mod $name {
            #[test]
            fn hello_world() {
                super::hello($lang);
            }

            #[test]
            fn stdin_and_args() {
                super::stdin_and_args($lang);
            }
        }
    )*};
}

language_tests! {
    python: "python",
    javascript: "javascript",
    c: "c",
    cpp: "cpp",
    java: "java",
    bash: "bash",
}

#[test]
fn multi_file_python_imports_its_second_file() {
    let result = job(
        "python",
        "from helper import greet\nprint(greet('warmpod'))",
    )
    .file("helper.py", "def greet(name):\n    return f'hi {name}'\n")
    .run();
    assert_status(&result, Status::Accepted);
    assert_eq!(result.stdout, "hi warmpod\n");
}

#[test]
fn multi_file_c_compiles_every_c_file() {
    let result = job(
        "c",
        "#include <stdio.h>\n#include \"add.h\"\nint main(void) { printf(\"%d\\n\", add(2, 3)); }",
    )
    .file("add.h", "int add(int a, int b);\n")
    .file(
        "add.c",
        "#include \"add.h\"\nint add(int a, int b) { return a + b; }\n",
    )
    .run();
    assert_status(&result, Status::Accepted);
    assert_eq!(result.stdout, "5\n");
}

#[test]
fn java_works_with_tight_process_and_memory_limits() {
    // The JVM's threads count against max_processes; the defaults are 64
    // processes and 256 MiB, this asks for less.
    let result = job("java", program("java").0)
        .limits(json!({ "max_processes": 32, "memory_kb": 131072 }))
        .run();
    assert_status(&result, Status::Accepted);
    assert_eq!(result.stdout, "Hello, World!\n");
}

/// Where `standby-image/build-pch.sh` (run by `make deps` and the standby
/// image) puts the precompiled C++ headers.
const PCH_DIR: &str = "/usr/local/lib/warmpod/pch";

#[test]
fn cpp_on_the_precompiled_bits_stdcpp_header_compiles_and_runs_under_the_compile_limits() {
    // g++ maps the ~100 MB precompiled header: it must fit the compile
    // step's default limits (an unusable .gch would be a compile error).
    let code = "#include <bits/stdc++.h>\nusing namespace std;\n\
                int main() { vector<int> v{3, 1, 2}; sort(v.begin(), v.end());\n\
                for (int x : v) cout << x; cout << endl; }";
    let result = job("cpp", code).run();
    assert_status(&result, Status::Accepted);
    assert_eq!(result.stdout, "123\n");
}

#[test]
fn the_cpp_compile_command_uses_the_precompiled_headers() {
    // The language table's flags and build-pch.sh's must agree, or g++
    // silently parses the headers again. `-H` marks a used .gch with `!`.
    let compile = warmpod_protocol::Language::find("cpp")
        .and_then(|l| l.compile)
        .expect("C++ compiles");
    let dir = tempfile::tempdir().expect("temp dir");
    for header in ["bits/stdc++.h", "iostream"] {
        let source = dir.path().join("main.cpp");
        std::fs::write(&source, format!("#include <{header}>\nint main() {{}}\n"))
            .expect("source written");
        let flags: Vec<&str> = compile[1..]
            .iter()
            .copied()
            .filter(|a| !matches!(*a, "-o" | "main" | "{sources}"))
            .collect();
        let out = std::process::Command::new(compile[0])
            .args(&flags)
            .args(["-H", "-fsyntax-only"])
            .arg(&source)
            .output()
            .expect("g++ runs");
        assert!(out.status.success(), "{out:?}");
        let used = format!("! {PCH_DIR}/{header}.gch");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.lines().any(|l| l == used),
            "{used} not used (run `make deps`, which runs standby-image/build-pch.sh); g++ -H said:\n{}",
            stderr.lines().take(5).collect::<Vec<_>>().join("\n")
        );
    }
}
