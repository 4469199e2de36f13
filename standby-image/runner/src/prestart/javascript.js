// warmpod pre-started Node.js: the runner writes this file outside the job's
// work directory and starts `node --max-old-space-size=<mb> -r <this file>
// /proc/self/cwd/main.js`. Node has resolved its main path already (it is
// realpath-ed when loaded, so it follows the work directory's rename) and
// loads this preload last before the main module. Here it says "ready" on
// fd PROGRAM_FD (a socket, high so that the descriptors Node opens at
// start-up take the numbers of a cold start), blocks on it for
// "<stdin mode>\0<work dir>\0<script>\0<arg>..." (until EOF), then makes the
// process what `node --max-old-space-size=<mb> <script> <arg>...` started in
// the work dir would be at this point, and returns: Node's own run_main path
// then loads the main module, so stack traces and exits are the cold path's.
//
// Worker threads load every `-r` module too: there (and on any later load)
// only the traces of the preload are removed. Besides `net` (below) this
// file uses only modules Node has loaded before any preload (fs, path), and
// allocates no pooled Buffer.
'use strict';
(function warmpodPrestart() {
  const PROGRAM_FD = 1023;
  const fs = require('fs');
  const path = require('path');
  const Module = module.constructor;
  const self = module.filename;

  const isOurs = (arg) => {
    try {
      return fs.realpathSync(path.resolve(arg)) === self;
    } catch {
      return false;
    }
  };
  // The main thread, once: a worker thread has loaded worker_threads before
  // its preloads; the cold main thread never has at this point.
  const armed = process.argv[1] === '/proc/self/cwd/main.js' &&
    !process.moduleLoadList.includes('NativeModule worker_threads');

  // Forget this module: the cache entries of its loading, `-r <file>` in
  // execArgv (so child_process.fork and workers start as cold ones do) and
  // in process._preload_modules.
  delete require.cache[self];
  for (const key of Object.keys(Module._pathCache)) {
    if (Module._pathCache[key] === self) {
      delete Module._pathCache[key];
    }
  }
  const execArgv = process.execArgv;
  for (let i = execArgv.length - 2; i >= 0; i--) {
    if ((execArgv[i] === '-r' || execArgv[i] === '--require') && isOurs(execArgv[i + 1])) {
      execArgv.splice(i, 2);
    }
  }
  const preloads = Object.getOwnPropertyDescriptor(process, '_preload_modules');
  if (preloads && Array.isArray(preloads.value)) {
    preloads.value = preloads.value.filter((p) => !isOurs(p));
    Object.defineProperty(process, '_preload_modules', preloads);
  }
  if (!armed) {
    return;
  }

  // What the program's first write to stdout or stderr (pipes from the
  // runner) loads: the stream and net modules, compiled now rather than on
  // the job's clock (about 7 ms of CPU). No stream is created, so fd 1
  // and 2 stay as they are until the program uses them; the one trace is
  // the order of process.moduleLoadList.
  require('net');
  fs.writeSync(PROGRAM_FD, new Uint8Array([82]));
  const chunks = [];
  let total = 0;
  for (;;) {
    const chunk = new Uint8Array(65536);
    const n = fs.readSync(PROGRAM_FD, chunk, 0, chunk.length, null);
    if (n === 0) {
      break;
    }
    chunks.push(chunk.subarray(0, n));
    total += n;
  }
  fs.closeSync(PROGRAM_FD);
  const header = new Uint8Array(total);
  let at = 0;
  for (const chunk of chunks) {
    header.set(chunk, at);
    at += chunk.length;
  }
  const fields = [];
  let start = 0;
  for (let i = 0; i <= header.length; i++) {
    if (i === header.length || header[i] === 0) {
      fields.push(Buffer.from(header.buffer, start, i - start).toString('utf8'));
      start = i + 1;
    }
  }
  if (fields.length < 3) {
    throw new Error('warmpod: no program received');
  }
  const [stdinMode, workDir, script, ...args] = fields;

  if (stdinMode === 'null') {
    fs.closeSync(0);
    const fd = fs.openSync('/dev/null', 'r');
    if (fd !== 0) {
      throw new Error(`warmpod: /dev/null opened as fd ${fd}, not 0`);
    }
  }
  process.env.HOME = workDir;
  process.env.TMPDIR = workDir;
  // The same directory (the runner renamed it), and a fresh process.cwd().
  process.chdir(workDir);
  // The global module paths come from HOME.
  Module._initPaths();
  process.argv.splice(1, process.argv.length - 1, path.resolve(script), ...args);
})();
