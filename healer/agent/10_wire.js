// The commit protocol on the wire (Sead.wire) and the I/O accounting behind it.
//
// Every read/write-family call on a TCP socket is counted per fd as stream offsets and, inside a
// transaction, reported as `IO tx cid dir start end` (docs/control-protocol.md). The hot path is C
// (wire.c): the I/O hooks, the thread's open transactions (the core's native begin/commit hooks),
// the line queue and the send()s to vproxy's control socket, so that neither a supervised call nor
// a socket I/O enters JavaScript (each JS entry, and each memory read from JS, costs Frida one or
// two gettid() syscalls). This file pairs with the gateway (HELLO) and pairs again after a fork or
// a lost connection, runs a 50 ms sweep of lines left queued, sends ABORT and UNGUARD, logs, and
// reports counters. The memory log's gradual commit is called from C too (useGradual).
//
// COMMIT, ABORT, GRADUAL, RELEASE and CLOSE are flushed at once: the gateway is holding the
// client's bytes until they arrive. Nothing is dropped silently: a lagging gateway is waited for
// (bounded), a lost one is logged and the gateway, which treats the agent's open transactions as
// aborted and keeps holding, fails closed; the agent pairs again at the next flush, at most once a
// second. A forked child (a prefork worker) notices the pid change and opens its own connection.
//
// Transactions are announced lazily: BEGIN at a transaction's first socket I/O (with its ancestors
// not announced yet), COMMIT and ABORT only for announced ones. A nested transaction that commits
// while its BEGIN is still queued is folded into its parent (its IO lines now name the parent, its
// BEGIN is dropped, no COMMIT): the gateway could act on nothing else before the parent ends.

const _wireModule = (function () {
  const SEND_TIMEOUT_MS = 1000;
  const HELLO_TIMEOUT_MS = 2000;
  const SWEEP_MS = 50;
  const BUF_SIZE = 4096;
  // wire.c sizes and layouts
  const MAX_FD = 65536;
  const SOCK_SIZE = 104;
  const STACK_SIZE = 24 + 64 * 72;
  const MAX_THREADS = 256;
  const WIRE_SIZE = 480 + 48 * 1024 + 16384 + 65536 + 4096;
  const W = { fd: 8, control: 32, memlog: 40, nTcp: 80, counters: 104, lostWhy: 208, errPending: 216,
    errline: 224 };
  const COUNTERS = ['lines', 'flushes', 'bytes', 'lostLines', 'errs', 'gradual', 'sendFailures',
    'announced', 'commits', 'aborts', 'unguards', 'folded', 'reentered'];
  const S = { state: 0, cid: 8, out: 16, in: 24 };
  const S_TCP = 2;
  // wire.c's hook function data: direction, and which argument holds the flags of a peekable read
  const IO_IN = 1;
  const IO_OUT = 2;
  const IO_PEEK_SHIFT = 4;
  const INPUT = { read: 0, recv: 3, recvfrom: 3, recvmsg: 2, readv: 0 };
  const OUTPUT = ['write', 'send', 'sendto', 'sendmsg', 'writev', 'sendfile'];

  let cm = null;
  let c = null;                  // NativeFunctions
  let mem = null;                // wire.c's memory: {wire, socks, stacks}
  let buf = null;                // receive buffer for the HELLO answer
  let control = null;            // {path, token, guard}
  let pid = 0;
  let lastAttempt = 0;
  let connects = 0;
  const callbacks = [];          // NativeCallbacks wire.c calls: kept alive here

  function callback(fn, ret, args) {
    const cb = new NativeCallback(fn, ret, args);
    callbacks.push(cb);
    return cb;
  }

  function load() {
    if (cm !== null) return;
    const libc = Process.getModuleByName('libc.so.6');
    const sym = n => libc.getExportByName(n);
    const pages = n => Math.ceil(n / Process.pageSize) * Process.pageSize; // zeroed raw pages
    mem = { wire: Memory.alloc(pages(WIRE_SIZE)), socks: Memory.alloc(pages(MAX_FD * SOCK_SIZE)),
      stacks: Memory.alloc(pages(MAX_THREADS * STACK_SIZE)) };
    const symbols = {
      wire: mem.wire, socks: mem.socks, stacks: mem.stacks,
      wire_js_reconnect: callback(() => (reconnect() ? 1 : 0), 'int64', []),
      wire_js_note: callback(note, 'void', []),
    };
    for (const n of ['socket', 'connect', 'send', 'recv', 'poll', 'close', 'getpid', 'sched_yield',
      'getsockopt', 'getsockname', 'getpeername', '__errno_location', 'clock_gettime']) symbols[n] = sym(n);
    cm = new CModule(CSOURCE['wire.c'], symbols);
    // 'exclusive': the JS lock stays held during these calls, so no other thread's JavaScript runs
    // in between (wire.c never calls JavaScript while it holds its queue lock).
    const opts = { exceptions: 'propagate', scheduling: 'exclusive' };
    c = {
      connect: new NativeFunction(cm.wire_connect, 'int64', ['pointer'], opts),
      sendAll: new NativeFunction(cm.wire_send_all, 'int', ['int', 'pointer', 'int', 'int'], opts),
      recv: new NativeFunction(cm.wire_recv, 'int', ['int', 'pointer', 'int', 'int'], opts),
      close: new NativeFunction(sym('close'), 'int', ['int'], opts),
      publish: new NativeFunction(cm.wire_publish, 'void', ['int64'], opts),
      flush: new NativeFunction(cm.wire_flush, 'void', [], opts),
      timer: new NativeFunction(cm.wire_timer, 'void', [], opts),
      abort: new NativeFunction(cm.wire_abort, 'int', ['uint64', 'pointer'], opts),
      sendLine: new NativeFunction(cm.wire_send_line, 'void', ['pointer'], opts),
      unguard: new NativeFunction(cm.wire_unguard, 'void', [], opts),
      sock: new NativeFunction(cm.wire_sock, 'pointer', ['int64'], opts),
      getpid: new NativeFunction(sym('getpid'), 'int', [], opts),
    };
    buf = Memory.alloc(BUF_SIZE);
    const layout = new NativeFunction(cm.wire_layout, 'uint64', ['int']);
    const want = [WIRE_SIZE, SOCK_SIZE, STACK_SIZE, W.fd, W.counters, W.lostWhy, W.errline];
    const got = want.map((_, i) => layout(i).toNumber());
    if (got.some((v, i) => v !== want[i])) {
      throw new Error(`10_wire.js does not mirror wire.c's layout: ${got} (expected ${want})`);
    }
  }

  function log(level, event, fields) {
    Sead.log(level, event, Object.assign({ component: 'wire' }, fields));
  }

  // --- the connection -------------------------------------------------------------------------

  function connected() { return mem !== null && mem.wire.add(W.fd).readS64().toNumber() >= 0; }

  // wire.c found the connection gone or the gateway refusing lines: say so.
  function note() {
    const why = mem.wire.add(W.lostWhy).readS64().toNumber();
    if (why !== 0) {
      mem.wire.add(W.lostWhy).writeS64(0);
      log('error', 'control-lost', { pid,
        why: why === 1 ? 'the gateway closed the control connection'
          : why === -11 ? `the gateway read nothing for ${SEND_TIMEOUT_MS} ms` : `errno ${-why}`,
        effect: 'the gateway aborts this process\'s open transactions and keeps holding (fail closed)' });
    }
    const errs = mem.wire.add(W.errPending).readU64().toNumber();
    if (errs !== 0) {
      mem.wire.add(W.errPending).writeU64(0);
      log('warning', 'control-err', { line: mem.wire.add(W.errline).readUtf8String(), count: errs });
    }
  }

  // Pairs with the gateway (HELLO, GUARD, OK), then hands the fd to wire.c, which announces the
  // known sockets on it. At most one attempt a second (a forked child tries at once).
  function reconnect() {
    if (control === null) return false;
    const now = c.getpid();
    if (connected() && now === pid) return true; // another thread paired meanwhile
    if (now !== pid) lastAttempt = 0;
    if (Date.now() - lastAttempt < 1000) return false;
    lastAttempt = Date.now();
    pid = now;
    const r = c.connect(Memory.allocUtf8String(control.path)).toNumber();
    if (r < 0) {
      log('error', 'control-connect-failed', { path: control.path, errno: -r,
        fix: 'is `vproxy serve --control PATH` running, and may this process\'s user open PATH?' });
      return false;
    }
    const hello = `HELLO 1 agent ${pid} ${control.token}\n` + (control.guard === false ? '' : 'GUARD\n');
    const bytes = Memory.allocUtf8String(hello);
    const sent = c.sendAll(r, bytes, hello.length, SEND_TIMEOUT_MS);
    const n = sent === 0 ? c.recv(r, buf, BUF_SIZE, HELLO_TIMEOUT_MS) : 0;
    const answer = n > 0 ? buf.readUtf8String(n).split('\n')[0] : '';
    if (!answer.startsWith('OK')) {
      log('error', 'control-refused', { answer: answer || '(no answer)', path: control.path });
      c.close(r);
      return false;
    }
    connects++;
    c.publish(r);
    log('info', 'control-connected', { path: control.path, pid });
    return true;
  }

  // --- hooks ----------------------------------------------------------------------------------

  function installHooks() {
    const libc = Process.getModuleByName('libc.so.6');
    const listener = { onEnter: cm.wire_io_enter, onLeave: cm.wire_io_leave };
    for (const [name, flagsArg] of Object.entries(INPUT)) {
      Interceptor.attach(libc.getExportByName(name), listener, ptr(IO_IN | (flagsArg << IO_PEEK_SHIFT)));
    }
    for (const name of OUTPUT) Interceptor.attach(libc.getExportByName(name), listener, ptr(IO_OUT));
    Interceptor.attach(libc.getExportByName('close'), { onEnter: cm.wire_close_enter });
    // a wait for input is a read about to block (wire_poll_enter); data: 1 for ppoll's timespec
    Interceptor.attach(libc.getExportByName('poll'), { onEnter: cm.wire_poll_enter }, ptr(0));
    Interceptor.attach(libc.getExportByName('ppoll'), { onEnter: cm.wire_poll_enter }, ptr(1));
  }

  // --- the protocol's messages ----------------------------------------------------------------

  function reasonWord(fault) {
    const r = String((fault && fault.kind) || 'fault') + (fault && fault.kind === 'ivp' && fault.detail
      ? ':' + fault.detail : '');
    return r.replace(/[^\x21-\x7e]/g, '_').substring(0, 64);
  }

  // tx (and any open child) aborted, on its own thread: ABORT if it was announced.
  function aborted(tx, fault) {
    c.abort(tx.id, Memory.allocUtf8String(`ABORT ${tx.id} ${reasonWord(fault)}\n`));
  }

  function sockAt(sfd) {
    const s = sfd >= 0 && sfd < MAX_FD ? c.sock(sfd) : ptr(0);
    return s.isNull() ? null : s;
  }

  function stats() {
    const out = { connected: connected(), sockets: mem.wire.add(W.nTcp).readU64().toNumber(), connects };
    COUNTERS.forEach((k, i) => { out[k] = mem.wire.add(W.counters + 8 * i).readU64().toNumber(); });
    return out;
  }

  const api = {
    init(config) {
      load();
      control = config.control && config.control.path ? config.control : null;
      mem.wire.add(W.fd).writeS64(-1);
      if (control !== null) {
        pid = c.getpid();
        mem.wire.add(W.control).writeU64(1);
        reconnect();
        if (!connected()) lastAttempt = 0;
        setInterval(() => c.timer(), SWEEP_MS);
      }
      installHooks();
    },
    connected,
    // The memory log's gradual commit of the calling thread (a C function, void (void)), which
    // wire.c calls before a read that waits on output it released (GRADUAL); set by the memory
    // log's init. Natively: through JavaScript it cost Frida three gettid() a request in Apache.
    useGradual(fn) {
      if (mem !== null) mem.wire.add(W.memlog).writePointer(fn);
    },
    // fd's cid (a CONN line the first time), or null if it is not a connected TCP socket
    cidOf(sfd) {
      const s = sockAt(sfd);
      return s === null ? null : s.add(S.cid).readU64().toNumber();
    },
    offsets(sfd) {
      const s = sfd >= 0 && sfd < MAX_FD ? mem.socks.add(sfd * SOCK_SIZE) : null;
      if (s === null || s.add(S.state).readU64().toNumber() !== S_TCP) return null;
      return { cid: s.add(S.cid).readU64().toNumber(), out: s.add(S.out).readU64().toNumber(),
        in: s.add(S.in).readU64().toNumber() };
    },
    nativeHooks() { return { begin: cm.wire_begin, commit: cm.wire_commit }; },
    abort: aborted,
    release(cid, upto) { c.sendLine(Memory.allocUtf8String(`RELEASE ${cid} ${upto}\n`)); },
    close(cid) { c.sendLine(Memory.allocUtf8String(`CLOSE ${cid}\n`)); },
    flush() { c.flush(); },
    // Clean detach (the core's onDetach, after the hooks are gone): nothing can be rolled back any
    // more, so the announced transactions still open are committed and UNGUARD tells the gateway
    // to stop holding this process's output. A crash sends nothing: the gateway then aborts the
    // open transactions and stays guarded (fail closed).
    unguard() { if (control !== null) c.unguard(); },
    stats,
  };
  return api;
})();

Sead.wire = _wireModule;

Sead.use({
  name: 'wire',
  init(config) {
    _wireModule.init(config);
    Sead.txn.addNativeHooks(_wireModule.nativeHooks());
  },
  onTxAbort(tx, fault) { _wireModule.abort(tx, fault); },
  onDetach() { _wireModule.unguard(); },
  status() { return { wire: _wireModule.stats() }; },
});
