//! How a pre-started Python ends (`prestart/python.py`): with `os._exit`
//! after flushing the standard streams when nothing interpreter
//! finalization would still do can be seen, else by finalizing as usual.
//! Either way the job's result is the cold path's.

use serde_json::json;
use warmpod_protocol::Status;

use crate::helpers::{TestJob, assert_status, job};
use crate::prestart::normalised;

/// The stdin every program gets (some read it).
const STDIN: &str = "3\n1\n2\n3\n";

/// Programs ending every way finalization can tell apart, each with the
/// path the pre-started interpreter should take: `Some(true)` the fast exit,
/// `Some(false)` a usual finalization, `None` either (a race).
const PROGRAMS: &[(&str, &str, Option<bool>)] = &[
    ("hello world", "print('Hello, World!')", Some(true)),
    (
        "sys.exit(3)",
        "import sys\nprint('partial')\nsys.exit(3)",
        Some(true),
    ),
    (
        "sys.exit()",
        "import sys\nprint('out', end='')\nsys.exit()",
        Some(true),
    ),
    ("negative code", "raise SystemExit(-1)", Some(true)),
    ("bool code", "import sys\nsys.exit(True)", Some(true)),
    ("code past a C int", "raise SystemExit(2**40)", Some(false)),
    (
        "sys.exit(message)",
        "import sys\nsys.exit('bye')",
        Some(false),
    ),
    ("SystemExit(1, 2)", "raise SystemExit(1, 2)", Some(false)),
    (
        "SystemExit subclass",
        "class E(SystemExit): pass\nraise E(5)",
        Some(false),
    ),
    (
        "exception",
        "def f():\n    raise ValueError('boom')\nf()",
        Some(false),
    ),
    ("syntax error", "foo(", Some(false)),
    (
        "stdin and stderr without newlines",
        "import sys\ndata = sys.stdin.read().split()\nsys.stderr.write('sum ')\nprint(sum(map(int, data)), end='')",
        Some(true),
    ),
    (
        "input()",
        "n = int(input())\nprint(sum(int(input()) for _ in range(n)))",
        Some(true),
    ),
    (
        "large output",
        "for i in range(30000):\n    print(i)",
        Some(true),
    ),
    (
        "builtins shadowed",
        "type = len = print = id = 0\nset = map = filter = all = any = str = int = None\nimport sys\nsys.stdout.write('shadowed\\n')",
        Some(true),
    ),
    (
        "atexit handler",
        "import atexit\natexit.register(print, 'bye')\nprint('hi')",
        Some(false),
    ),
    (
        "atexit unregistered",
        "import atexit\natexit.register(print, 'bye')\natexit.unregister(print)\nprint('hi')",
        None,
    ),
    (
        "non-daemon thread",
        // Prints after main (an event, not a race), then is still alive
        // when the program ends.
        "import threading, time\nev = threading.Event()\ndef f():\n    ev.wait()\n    print('thread done', flush=True)\n    time.sleep(1)\nthreading.Thread(target=f).start()\nprint('main done', flush=True)\nev.set()",
        Some(false),
    ),
    (
        "daemon thread",
        "import threading, time\ndef f():\n    time.sleep(5)\n    print('thread done')\nthreading.Thread(target=f, daemon=True).start()\nprint('main done')",
        Some(false),
    ),
    (
        "joined thread",
        "import threading\nt = threading.Thread(target=print, args=('thread',))\nt.start()\nt.join()\nprint('main')",
        None,
    ),
    (
        "file written without close",
        "f = open('out.txt', 'w')\nf.write('data')\nimport os\nprint(os.path.getsize('out.txt'))",
        Some(false),
    ),
    (
        "file closed",
        "with open('out.txt', 'w') as f:\n    f.write('data')\nprint(open('out.txt').read())",
        Some(true),
    ),
    (
        "second writer on fd 1",
        "out = open(1, 'w', closefd=False)\nout.write('via fd 1\\n')\nprint('print')",
        Some(false),
    ),
    (
        "wrapper on stdout's buffer",
        "import sys, io\nw = io.TextIOWrapper(sys.stdout.buffer)\nw.write('wrapped\\n')\nprint('plain')",
        Some(false),
    ),
    (
        "stdout replaced",
        "import sys, io\nprint('before')\nsys.stdout = io.StringIO()\nprint('hidden')",
        Some(false),
    ),
    (
        "objects that run code when looked at",
        "import weakref\nclass Sneaky:\n    @property\n    def __class__(self):\n        print('__class__ read')\n        return Sneaky\n    def __getattribute__(self, name):\n        print('read', name)\n        return object.__getattribute__(self, name)\ns = Sneaky()\nr = weakref.ref(s)\ndef g():\n    yield 1\nit = g()\nprint('x')",
        Some(true),
    ),
    (
        "StringIO",
        "import io\nbuf = io.StringIO()\nbuf.write('x')\nprint(buf.getvalue())",
        Some(true),
    ),
    (
        "__del__ printing",
        "class A:\n    def __del__(self):\n        print('del')\na = A()\nprint('x')",
        Some(false),
    ),
    (
        "__del__ in a cycle",
        "class A:\n    def __del__(self):\n        print('del')\na = A()\na.me = a\ndel a\nprint('x')",
        Some(false),
    ),
    (
        "__del__ of an untracked object",
        "class A(int):\n    __slots__ = ()\n    def __del__(self):\n        print('del')\na = A(5)\nprint('x')",
        Some(false),
    ),
    (
        "weakref callback",
        "import weakref\nclass A: pass\na = A()\nr = weakref.ref(a, lambda r: print('gone'))\nprint('x')",
        Some(false),
    ),
    (
        "weakref.finalize",
        "import weakref\nclass A: pass\na = A()\nweakref.finalize(a, print, 'finalized')\nprint('x')",
        Some(false),
    ),
    (
        "WeakSet and ABCs",
        "import weakref, abc, collections.abc\nclass A(abc.ABC): pass\ns = weakref.WeakSet()\na = A()\ns.add(a)\nprint(len(s), isinstance([], collections.abc.Sequence), isinstance(1, A))",
        Some(true),
    ),
    (
        "generator suspended in try",
        "def g():\n    try:\n        yield 1\n    finally:\n        print('cleanup')\nit = g()\nnext(it)\nprint('x')",
        Some(false),
    ),
    (
        "generator suspended plainly",
        "def g():\n    yield from map(int, '1 2 3'.split())\nit = g()\nprint(next(it))",
        Some(true),
    ),
    (
        "coroutine never awaited",
        "async def f():\n    pass\nc = f()\nprint('x')",
        Some(false),
    ),
    (
        "stdout closed",
        "import sys\nprint('lost')\nsys.stdout.close()",
        Some(true),
    ),
    (
        "fd 1 closed",
        "import os\nprint('lost')\nos.close(1)",
        Some(false),
    ),
    (
        "broken pipe",
        "import os\nr, w = os.pipe()\nos.dup2(w, 1)\nos.close(r)\nprint('x')",
        Some(false),
    ),
    (
        "broken pipe and sys.exit(4)",
        "import os, sys\nr, w = os.pipe()\nos.dup2(w, 1)\nos.close(r)\nprint('x')\nsys.exit(4)",
        Some(false),
    ),
    (
        "unraisable hook",
        "import os, sys\nsys.unraisablehook = lambda u: print('hook', u.exc_type.__name__, file=sys.stderr)\nprint('x')\nos.close(1)",
        Some(false),
    ),
    (
        "trace function left set",
        "import sys\ndef t(f, e, a):\n    sys.stdout.write(e + ' ' + f.f_code.co_name + '\\n')\n    return t\nsys.settrace(t)\nprint('x')",
        Some(false),
    ),
    (
        "profile function unset",
        "import sys\nsys.setprofile(lambda *a: None)\nsys.setprofile(None)\nprint('x')",
        Some(true),
    ),
    (
        "warnings shown",
        "import warnings\nwarnings.simplefilter('always')\nf = open('main.py')\nprint('x')",
        Some(false),
    ),
    (
        "logging",
        "import logging\nlogging.basicConfig()\nlogging.getLogger().warning('w')",
        Some(false),
    ),
    (
        "gc disabled",
        "import gc\ngc.disable()\nprint('x')",
        Some(true),
    ),
    (
        "gc frozen by the program",
        "import gc\nclass A:\n    def __del__(self):\n        print('del')\na = A()\ngc.freeze()\nprint('x')",
        Some(false),
    ),
    (
        "process left running",
        "import subprocess\np = subprocess.Popen(['/bin/true'])\nprint('x')",
        Some(false),
    ),
    (
        "process waited for",
        "import subprocess\nsubprocess.run(['/bin/echo', 'child'])\nprint('x')",
        Some(true),
    ),
    (
        "fork",
        // The parent prints after the child has ended: one order both ways.
        "import os\npid = os.fork()\nif pid:\n    os.waitpid(pid, 0)\nprint('child' if pid == 0 else 'parent', flush=True)",
        Some(true),
    ),
    (
        "ctypes",
        "import ctypes\nctypes.CDLL(None).printf(b'from C\\n')\nprint('x')",
        Some(false),
    ),
    (
        "PYTHONINSPECT",
        "import os\nos.environ['PYTHONINSPECT'] = '1'\nprint('x')",
        Some(false),
    ),
    (
        "audit hook",
        "import sys\nsys.addaudithook(lambda e, a: e.startswith('cpython') and print(e))\nprint('x')",
        Some(false),
    ),
    (
        "modules loaded",
        "import sys, threading, queue, heapq, collections, itertools, math, re, random, decimal, fractions, datetime, typing, dataclasses, enum, statistics, json\nprint(sorted(sys.modules))",
        Some(true),
    ),
];

#[test]
fn every_way_of_ending_gives_the_cold_result() {
    for (name, code, _) in PROGRAMS {
        let test_job = job("python", code).stdin(STDIN).args(&["a", "b c"]);
        let cold = test_job.run_with_args(&[]);
        let warm = test_job.run_prestarted();
        assert_eq!(
            normalised(&warm),
            normalised(&cold),
            "{name}: pre-started vs cold"
        );
    }
}

#[test]
fn an_output_flood_gives_the_cold_result() {
    let test_job = job("python", "while True:\n    print('x' * 999)")
        .limits(json!({ "max_output_bytes": 10000 }));
    let cold = test_job.run_with_args(&[]);
    let warm = test_job.run_prestarted();
    assert_status(&warm, Status::OutputLimitExceeded);
    assert_eq!(normalised(&warm), normalised(&cold));
}

/// `code` as a forked child's whole program (it ends as a program does:
/// falls off the end or raises), with the parent saying on its stdout how
/// the child ended: "os._exit" when it still caught SIGINT when it died
/// (Python catches it from start-up on; finalization restores the default
/// first), else "finalized". The parent reads the child's
/// `/proc/<pid>/status` while it is a zombie (`waitid` with `WNOWAIT`).
fn probed(code: &str) -> TestJob {
    let probe = "import os\n\
                 pid = os.fork()\n\
                 if pid == 0:\n\
                 \x20   exec(compile(open('program.py').read(), 'program.py', 'exec'))\n\
                 else:\n\
                 \x20   os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)\n\
                 \x20   with open(f'/proc/{pid}/status') as f:\n\
                 \x20       caught = int(next(l for l in f if l.startswith('SigCgt:')).split()[1], 16)\n\
                 \x20   os.waitpid(pid, 0)\n\
                 \x20   print('\\nos._exit' if caught & 1 << 1 else '\\nfinalized')\n";
    job("python", probe).file("program.py", code).stdin(STDIN)
}

/// How the probed program's process ended: `true` for `os._exit`.
fn fast_exit(result: &warmpod_protocol::JobResult) -> bool {
    match result.stdout.lines().last() {
        Some("os._exit") => true,
        Some("finalized") => false,
        _ => panic!("no verdict: {result:#?}"),
    }
}

#[test]
fn a_hello_world_skips_finalization_and_the_rest_take_the_usual_path() {
    // The probe itself: a cold interpreter always finalizes.
    let cold = probed("print('Hello, World!')").run_with_args(&[]);
    assert!(!fast_exit(&cold), "{cold:#?}");
    for (name, code, fast) in PROGRAMS {
        let Some(fast) = fast else { continue };
        let result = probed(code).run_prestarted();
        assert_eq!(fast_exit(&result), *fast, "{name}: {result:#?}");
    }
}
