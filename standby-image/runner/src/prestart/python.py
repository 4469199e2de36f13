# warmpod pre-started Python: run by `python3 -B -c`; says "ready" on fd 3
# (a socket) once started, then blocks on it for
# "<stdin mode>\0<work dir>\0<script>\0<arg>..." (until EOF), then runs the
# script as `python3 -B <script> <arg>...` would: as __main__, with its
# sys.argv, sys.path[0], __file__ and __loader__, and no bootstrap frames in
# an uncaught exception's traceback. It leaves no name behind in __main__.
#
# Ending: when the program returns or raises SystemExit with an int (or no)
# code, and nothing interpreter finalization would still do can be seen
# (`_warmpod_finisher` lists what is checked), the process flushes
# sys.stdout and sys.stderr and ends with os._exit: finalization is most of
# a short job's cost. Otherwise (or when a flush fails) it finalizes as
# usual. The check runs from the `finally` below, in this module frame
# (which a trace function set by the program does not trace), and calls the
# finisher only when no trace or profile function is set.
def _warmpod_finisher():
    """Returns `(arm, finish, unfreeze)`: `arm(work_dir, entry, source)`
    notes what the job's sources show, just before the program runs;
    `finish(error)` (error: the exception ending the program, or None)
    flushes the standard streams and ends the process as finalization
    would, or returns when that could be seen, after undoing the freeze
    below; `unfreeze` undoes it (gc.unfreeze, for the path that cannot
    call `finish`).

    Everything it uses is bound here, before the program runs: the
    program's globals (where it may have bound names like `type`) are
    never looked up."""
    import builtins, os, sys, _io, _thread, _warnings, _weakref
    loaded = set(sys.modules)
    import gc, itertools, _operator
    for name in {"gc", "itertools", "_operator"} - loaded:
        del sys.modules[name]  # as at a cold start; a program's import reloads it
    b = builtins
    type_, tuple_, set_, map_, all_, any_, issubclass_, getattr_ = (
        b.type, b.tuple, b.set, b.map, b.all, b.any, b.issubclass, b.getattr)
    SystemExit_, BaseException_, int_, bool_, str_ = (
        b.SystemExit, b.BaseException, b.int, b.bool, b.str)
    module_type, function_type, builtin_type = type_(sys), type_(lambda: 0), type_(len)
    weakref_type, proxy_types = _weakref.ref, (_weakref.ProxyType, _weakref.CallableProxyType)
    mro_of = type.__dict__["__mro__"].__get__
    dict_of = type.__dict__["__dict__"].__get__
    flags_of = type.__dict__["__flags__"].__get__
    compress_, repeat_, is_ = itertools.compress, itertools.repeat, _operator.is_
    callback_of = weakref_type.__dict__["__callback__"].__get__
    exit_now = os._exit
    generator = type_((lambda: (yield))())
    HAVE_GC, HEAPTYPE = 1 << 14, 1 << 9
    # Weakref callbacks that only drop an entry of a weak container.
    quiet_callbacks = {
        ("_weakrefset", "WeakSet.__init__.<locals>._remove"),
        ("weakref", "WeakValueDictionary.__init__.<locals>.remove"),
        ("weakref", "WeakKeyDictionary.__init__.<locals>.remove"),
    }
    file_layers = {_io.TextIOWrapper: "buffer", _io.BufferedReader: "raw", _io.BufferedWriter: "raw", _io.BufferedRandom: "raw"}
    memory_files = (_io.StringIO, _io.BytesIO)
    # (Weakly: finalization frees them as on a cold start.)
    stdout, stderr = weakref_type(sys.stdout), weakref_type(sys.stderr)
    filters = _warnings.filters
    filters_at_start = tuple_(filters)
    dynload = next((p for p in sys.path if p.endswith("/lib-dynload")), None)
    # audit: the job's sources name sys.addaudithook; young: an object
    # made just before the program, which a gc.freeze() of its own moves
    # out of reach of gc.get_objects().
    state = {"audit": True, "young": None}
    startup_modules = set_()

    def arm(work_dir, entry, source):
        # An audit hook would see finalization's last event.
        audit = b"addaudithook" in source
        for name in os.listdir(work_dir):
            if name.endswith(".py") and name != entry and not audit:
                with open(os.path.join(work_dir, name), "rb") as f:
                    audit = b"addaudithook" in f.read()
        state["audit"] = audit
        state["young"] = []

    def has_del(cls):
        return any_("__del__" in dict_of(c) for c in mro_of(cls))

    def quiet_generator(g):
        # Closing it runs none of its code: done, not started, or
        # suspended in code without handlers (try, with) and not
        # delegating to something with a close().
        if g.gi_frame is None or not g.gi_suspended:
            return True
        if g.gi_code.co_exceptiontable:
            return False
        inner = g.gi_yieldfrom
        if inner is None or type_(inner) is generator:
            return True
        cls = type_(inner)
        return not flags_of(cls) & HEAPTYPE and not any_("close" in dict_of(c) for c in mro_of(cls))

    def closed(f):
        # As finalization sees it (`closed`, then close()), for files made
        # of the C layers only (their `closed` runs no Python code).
        top = f
        while type_(f) in file_layers:
            f = getattr_(f, file_layers[type_(f)])
        return type_(f) is _io.FileIO and top.closed

    def of_kind(kind, objects):
        # (isinstance() could run the program's code: it reads __class__.)
        return compress_(objects, map_(is_, repeat_(kind), map_(type_, objects)))

    def program_froze(objects):
        return not any_(map_(is_, repeat_(state["young"]), objects))

    def quiet_objects():
        # What finalization frees and may run code for: the objects made
        # since the freeze, as far as the collector tracks them (classes
        # whose instances it does not track are checked themselves), and
        # all of them (the program did not freeze its own).
        objects = gc.get_objects()
        if program_froze(objects):
            return False
        for kind in set_(map_(type_, objects)).difference(plain_kinds):
            if kind is generator:
                if not all_(map_(quiet_generator, of_kind(kind, objects))):
                    return False
            elif kind in file_layers or kind is _io.FileIO:
                # Finalization closes, so flushes, what is still open.
                if not all_(map_(closed, of_kind(kind, objects))):
                    return False
            elif kind in memory_files:
                pass
            elif issubclass_(kind, weakref_type):
                for ref in of_kind(kind, objects):
                    callback = callback_of(ref)
                    if callback is None:
                        continue
                    if type_(callback) is builtin_type:
                        # abc's cache cleanup.
                        if callback.__name__ == "_destroy" and type_(callback.__self__) is weakref_type:
                            continue
                    elif type_(callback) is function_type:
                        if (callback.__module__, callback.__qualname__) in quiet_callbacks:
                            continue
                    return False
            elif kind in proxy_types:
                return False  # its callback cannot be read
            elif has_del(kind):
                # __del__, or a C finalizer: coroutines (never awaited),
                # async generators, sockets, asyncio, subprocess...
                return False
            if issubclass_(kind, type_):
                for cls in of_kind(kind, objects):
                    if not flags_of(cls) & HAVE_GC and has_del(cls):
                        return False
        return True

    def quiet_modules():
        # C code may leave output in C stdio buffers, which only exit()
        # flushes: ctypes, curses, extensions outside the standard library.
        modules = sys.modules
        for name in set_(modules).difference(startup_modules):
            module = modules.get(name)
            if type_(module) is module_type:
                path = module.__dict__.get("__file__")
                if type_(path) is str_ and path.endswith(".so"):
                    if path.rpartition("/")[0] != dynload or name.startswith(("_ctypes", "_curses", "_test", "_xx", "xx")):
                        return False
        return True

    def settled():
        modules = sys.modules
        out, err = stdout(), stderr()
        if out is None or err is None or not (sys.stdout is out is sys.__stdout__ and sys.stderr is err is sys.__stderr__):
            return False  # the originals may hold output that finalization writes
        if sys.gettrace() is not None or sys.getprofile() is not None or state["audit"]:
            return False  # would see finalization's calls and events
        if b"PYTHONINSPECT" in os.environ._data:
            return False  # the interpreter turns interactive at the end
        if _thread._count():
            return False  # threads run on (non-daemon ones are joined)
        threading = modules.get("threading")
        if threading is not None and (type_(threading) is not module_type or threading.__dict__.get("_threading_atexits")):
            return False
        atexit = modules.get("atexit")
        if atexit is not None and (type_(atexit) is not module_type or atexit._ncallbacks()):
            return False
        if gc.callbacks or gc.garbage or gc.get_debug():
            return False
        warnings = modules.get("warnings")
        current = warnings.__dict__.get("filters") if type_(warnings) is module_type else filters
        if current is not filters or tuple_(filters) != filters_at_start:
            return False  # could show warnings raised in finalization
        return quiet_modules() and quiet_objects()

    def exit_code(error):
        # The status a cold run ends with, if it prints nothing first.
        if error is None:
            return 0
        if type_(error) is SystemExit_:
            code = error.code
            if code is None:
                return 0
            if (type_(code) is int_ or type_(code) is bool_) and -0x80000000 <= code <= 0x7FFFFFFF:
                return code
        return None  # a message or a traceback: printed by the usual path

    def finish(error):
        try:
            code = exit_code(error)
            if code is not None and settled():
                # What finalization writes first, with its checks. If a
                # flush fails, finalization tries again and reports it as
                # on a cold start.
                out, err = stdout(), stderr()
                if not out.closed:
                    out.flush()
                if not err.closed:
                    err.flush()
                exit_now(code)
        except BaseException_:
            pass
        try:
            unfreeze()
        except BaseException_:
            gc.unfreeze()

    def unfreeze():
        # Before a usual finalization, which would not collect what frozen
        # objects hold (the program's globals): unless the program froze
        # too, as then on a cold start everything was frozen.
        if not program_froze(gc.get_objects()):
            gc.unfreeze()

    # Start-up objects: not scanned by the program's collections, nor
    # above. Among them the AST node classes, which compile() makes on its
    # first call: made now, they are not the program's to scan.
    compile("", "", "exec", dont_inherit=True)
    startup_modules.update(sys.modules)
    # Kinds that need no look: C types (their methods cannot change)
    # without a finalizer, weakrefs or instances that are classes.
    plain_kinds = {
        kind for kind in set(map(type, gc.get_objects()))
        if not flags_of(kind) & HEAPTYPE and not has_del(kind)
        and not issubclass(kind, (weakref_type, type)) and kind not in proxy_types
    }
    gc.freeze()
    return arm, finish, gc.unfreeze
def _warmpod_program():
    import os, sys, _codecs
    main = globals()
    # Its functions' globals are not the program's: finalization frees
    # those as on a cold start.
    finisher = type(_warmpod_finisher)(_warmpod_finisher.__code__, {"__builtins__": __builtins__})
    del main["_warmpod_finisher"]
    arm, finish, unfreeze = finisher()
    _codecs.register_error("warmpod.finish", finish)
    _codecs.register_error("warmpod.unfreeze", unfreeze)
    os.write(3, b"R")
    chunks = []
    while True:
        chunk = os.read(3, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(3)
    fields = [os.fsdecode(f) for f in b"".join(chunks).split(b"\0")]
    stdin_mode, work_dir, argv = fields[0], fields[1], fields[2:]
    if stdin_mode == "null":
        fd = os.open("/dev/null", os.O_RDONLY)
        os.dup2(fd, 0)
        os.close(fd)
    os.environ["HOME"] = work_dir
    os.environ["TMPDIR"] = work_dir
    path = os.path.join(work_dir, argv[0])
    sys.argv[:] = argv
    sys.path[0] = os.path.dirname(path)
    del main["_warmpod_program"]
    main["__file__"] = path
    main["__cached__"] = None
    main["__loader__"] = sys.modules["_frozen_importlib_external"].SourceFileLoader("__main__", path)
    with open(path, "rb") as f:
        source = f.read()
    arm(work_dir, argv[0], source)
    return compile(source, path, "exec", dont_inherit=True)
try:
    try:
        exec(_warmpod_program())
    finally:
        import sys as _warmpod_sys, _codecs as _warmpod_codecs
        if _warmpod_sys.gettrace() is None and _warmpod_sys.getprofile() is None:
            _warmpod_codecs.lookup_error("warmpod.finish")(_warmpod_sys.exc_info()[1])
        else:
            _warmpod_codecs.lookup_error("warmpod.unfreeze")()
        # Still here: finalize as a cold start does, with nothing of the
        # finisher held.
        _warmpod_codecs.register_error("warmpod.finish", _warmpod_codecs.lookup_error("strict"))
        _warmpod_codecs.register_error("warmpod.unfreeze", _warmpod_codecs.lookup_error("strict"))
        del _warmpod_sys, _warmpod_codecs
except SystemExit:
    raise
except BaseException as _warmpod_error:
    _warmpod_tb = _warmpod_error.__traceback__
    while _warmpod_tb is not None and _warmpod_tb.tb_frame.f_code.co_filename == "<string>":
        _warmpod_tb = _warmpod_tb.tb_next
    _warmpod_error.__traceback__ = _warmpod_tb
    __import__("sys").excepthook(type(_warmpod_error), _warmpod_error, _warmpod_tb)
    del _warmpod_error, _warmpod_tb
    raise SystemExit(1)
