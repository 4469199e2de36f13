# warmpod pre-started Python: run by `python3 -B -c`; says "ready" on fd 3
# (a socket) once started, then blocks on it for
# "<stdin mode>\0<work dir>\0<script>\0<arg>..." (until EOF), then runs the
# script as `python3 -B <script> <arg>...` would: as __main__, with its
# sys.argv, sys.path[0], __file__ and __loader__, and no bootstrap frames in
# an uncaught exception's traceback. It leaves no name behind in __main__.
def _warmpod_program():
    import os, sys
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
    main = globals()
    del main["_warmpod_program"]
    main["__file__"] = path
    main["__cached__"] = None
    main["__loader__"] = sys.modules["_frozen_importlib_external"].SourceFileLoader("__main__", path)
    with open(path, "rb") as f:
        source = f.read()
    return compile(source, path, "exec", dont_inherit=True)
try:
    exec(_warmpod_program())
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
