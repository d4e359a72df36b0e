// The commit protocol on the wire (Sead.wire) and the I/O accounting behind it.
//
// Every read/write-family call on a TCP socket is counted per fd as stream offsets and, inside a
// transaction, reported as `IO tx cid dir start end` (docs/control-protocol.md). Lines are written
// by the target itself to vproxy's control socket (wire.c): queued, coalesced and written with one
// send() per flush. COMMIT, ABORT, GRADUAL and RELEASE are flushed at once: the gateway is holding
// the client's bytes until they arrive. Nothing is dropped silently: a lagging gateway is waited
// for (bounded), a lost one is logged and the gateway, which treats the agent's open transactions
// as aborted and keeps holding, fails closed; the agent reconnects at the next flush, at most once
// a second. A forked child (a prefork worker) notices the pid change and opens its own connection.
//
// Transactions are announced lazily: BEGIN at a transaction's first socket I/O (with its ancestors
// not announced yet), COMMIT and ABORT only for announced ones. The gateway holds only bytes that
// transactions moved, so the others (nearly every supervised call) need no line, and their commit
// ends in C (wire_commit, a native hook of the core) without entering JavaScript.

const _wireModule = (function () {
  const SEND_TIMEOUT_MS = 1000;
  const HELLO_TIMEOUT_MS = 2000;
  const BUF_SIZE = 64 * 1024;
  const MAX_THREADS = 256;           // wire.c
  const ANNOUNCED_SIZE = 8 * (2 + 64); // struct Announced in wire.c
  const MSG_PEEK = 2;
  const AF_INET = 2;
  const AF_INET6 = 10;

  let cm = null;
  let c = null;                  // NativeFunctions
  let buf = null;                // receive buffer (HELLO answer, ERR lines); sends use their own
  let control = null;            // {path, token, guard}
  let fd = -1;
  let pid = 0;
  let lastAttempt = 0;
  let queue = [];                // pending lines (objects for IO, so ranges can be coalesced)
  let flushTimer = null;
  const socks = new Map();       // fd -> {cid, out, in, local, peer, announced} | null (not TCP)
  // threadId -> announced open transactions, outermost first: [{id, parent, out: Set of cids}];
  // mirrored (ids only) in wire.c's `announced` for the native commit hook.
  const open = new Map();
  let announcedMem = null;       // wire.c's per-thread tables (CModule globals are read-only here)
  let commitCallback = null;
  let nextCid = 1;
  const counters = { lines: 0, flushes: 0, bytes: 0, connects: 0, lostLines: 0, errs: 0,
    gradual: 0, sendFailures: 0, announced: 0, commits: 0, aborts: 0, unguards: 0 };

  function load() {
    if (cm !== null) return;
    const libc = Process.getModuleByName('libc.so.6');
    const sym = n => libc.getExportByName(n);
    announcedMem = Memory.alloc(MAX_THREADS * ANNOUNCED_SIZE);
    commitCallback = new NativeCallback(id => {
      committed(Process.getCurrentThreadId(), id.toNumber());
    }, 'void', ['uint64']);
    cm = new CModule(CSOURCE['wire.c'], {
      socket: sym('socket'), connect: sym('connect'), send: sym('send'), recv: sym('recv'),
      poll: sym('poll'), close: sym('close'), __errno_location: sym('__errno_location'),
      announced: announcedMem, wire_js_commit: commitCallback,
    });
    // 'exclusive': the JS lock stays held during these short calls. Otherwise sendAll released it
    // and two flushes (the 2 ms timer on Frida's JS thread, a COMMIT on the target's) could take
    // their lines in one order and send() them in the other: COMMIT before its BEGIN, refused by
    // the gateway (unknown-tx), the reply held until the hold bound closed the connection.
    const opts = { exceptions: 'propagate', scheduling: 'exclusive' };
    c = {
      connect: new NativeFunction(cm.wire_connect, 'int', ['pointer'], opts),
      sendAll: new NativeFunction(cm.wire_send_all, 'int', ['int', 'pointer', 'int', 'int'], opts),
      recv: new NativeFunction(cm.wire_recv, 'int', ['int', 'pointer', 'int', 'int'], opts),
      close: new NativeFunction(sym('close'), 'int', ['int'], opts),
      announce: new NativeFunction(cm.wire_announce, 'int', ['uint64'], opts),
      forget: new NativeFunction(cm.wire_forget, 'void', ['uint64'], opts),
      getpid: new NativeFunction(sym('getpid'), 'int', [], opts),
      getsockname: new NativeFunction(sym('getsockname'), 'int', ['int', 'pointer', 'pointer'], opts),
      getpeername: new NativeFunction(sym('getpeername'), 'int', ['int', 'pointer', 'pointer'], opts),
      getsockopt: new NativeFunction(sym('getsockopt'), 'int',
        ['int', 'int', 'int', 'pointer', 'pointer'], opts),
    };
    buf = Memory.alloc(BUF_SIZE);
  }

  function log(level, event, fields) {
    Sead.log(level, event, Object.assign({ component: 'wire' }, fields));
  }

  // --- the connection -------------------------------------------------------------------------

  function disconnect(why) {
    if (fd >= 0) {
      socks.delete(fd);
      c.close(fd);
    }
    fd = -1;
    for (const s of socks.values()) if (s !== null) s.announced = false;
    log('error', 'control-lost', { why, pid,
      effect: 'the gateway aborts this process\'s open transactions and keeps holding (fail closed)' });
  }

  function connect() {
    const now = Date.now();
    if (control === null || now - lastAttempt < 1000) return false;
    lastAttempt = now;
    pid = c.getpid();
    const r = c.connect(Memory.allocUtf8String(control.path));
    if (r < 0) {
      log('error', 'control-connect-failed', { path: control.path, errno: -r,
        fix: 'is `vproxy serve --control PATH` running, and may this process\'s user open PATH?' });
      return false;
    }
    fd = r;
    const hello = `HELLO 1 agent ${pid} ${control.token}\n` + (control.guard === false ? '' : 'GUARD\n');
    if (!writeText(hello)) return false;
    const n = c.recv(fd, buf, 4096, HELLO_TIMEOUT_MS);
    const answer = n > 0 ? buf.readUtf8String(n).split('\n')[0] : '';
    if (!answer.startsWith('OK')) {
      log('error', 'control-refused', { answer: answer || '(no answer)', path: control.path });
      c.close(fd);
      fd = -1;
      return false;
    }
    counters.connects++;
    log('info', 'control-connected', { path: control.path, pid });
    return true;
  }

  function writeText(text) {
    let off = 0;
    while (off < text.length) {
      // Cut at a line end so a failure never leaves half a line on the wire.
      let end = Math.min(text.length, off + BUF_SIZE - 1);
      if (end < text.length) end = text.lastIndexOf('\n', end - 1) + 1;
      const chunk = text.substring(off, end);
      // A buffer per chunk, never shared between flushes (a shared one, written while another
      // thread's send was still reading it, corrupted lines and lost an ABORT).
      const r = c.sendAll(fd, Memory.allocUtf8String(chunk), chunk.length, SEND_TIMEOUT_MS);
      if (r !== 0) {
        counters.sendFailures++;
        disconnect(r === -11 ? `the gateway read nothing for ${SEND_TIMEOUT_MS} ms` : `send: errno ${-r}`);
        return false;
      }
      counters.bytes += chunk.length;
      off = end;
    }
    return true;
  }

  // Answers the gateway sent (ERR for refused lines) are read so its writes never block.
  function drain() {
    for (let i = 0; i < 16; i++) {
      const n = c.recv(fd, buf, BUF_SIZE - 1, 0);
      if (n === 0) return;
      if (n < 0) {
        disconnect(n === -1 ? 'the gateway closed the control connection' : `recv: errno ${-n}`);
        return;
      }
      for (const line of buf.readUtf8String(n).split('\n')) {
        if (line.startsWith('ERR')) {
          counters.errs++;
          log('warning', 'control-err', { line });
        }
      }
    }
  }

  function lineOf(e) {
    return typeof e === 'string' ? e : `IO ${e.tx} ${e.cid} ${e.dir} ${e.start} ${e.end}`;
  }

  function flush() {
    if (flushTimer !== null) {
      clearTimeout(flushTimer);
      flushTimer = null;
    }
    if (queue.length === 0 || control === null) return;
    if (fd >= 0 && c.getpid() !== pid) {
      // Forked: the fd is the parent's connection; this child needs its own.
      c.close(fd);
      fd = -1;
      lastAttempt = 0;
      for (const s of socks.values()) if (s !== null) s.announced = false;
    }
    if (fd < 0 && !connect()) {
      counters.lostLines += queue.length;
      queue = [];
      return;
    }
    // CONN lines for sockets first seen while disconnected (or before a fork) go first.
    const pre = [];
    for (const s of socks.values()) {
      if (s !== null && !s.announced) {
        pre.push(`CONN ${s.cid} ${s.local} ${s.peer}`);
        s.announced = true;
      }
    }
    const lines = pre.concat(queue.map(lineOf));
    queue = [];
    counters.lines += lines.length;
    counters.flushes++;
    if (writeText(lines.join('\n') + '\n')) drain();
  }

  function push(e, urgent) {
    queue.push(e);
    if (urgent || queue.length >= 256) flush();
    else if (flushTimer === null) flushTimer = setTimeout(flush, 2);
  }

  // --- sockets --------------------------------------------------------------------------------

  function formatAddr(sa) {
    const family = sa.readU16();
    const port = (sa.add(2).readU8() << 8) | sa.add(3).readU8();
    if (family === AF_INET) {
      const a = sa.add(4);
      return `${a.readU8()}.${a.add(1).readU8()}.${a.add(2).readU8()}.${a.add(3).readU8()}:${port}`;
    }
    if (family !== AF_INET6) return null;
    const words = [];
    for (let i = 0; i < 8; i++) {
      const p = sa.add(8 + 2 * i);
      words.push((p.readU8() << 8) | p.add(1).readU8());
    }
    return `[${compress6(words)}]:${port}`;
  }

  // RFC 5952: the longest run (>= 2) of zero words becomes "::", lower-case hex.
  function compress6(words) {
    let best = -1;
    let bestLen = 1;
    for (let i = 0; i < 8;) {
      if (words[i] !== 0) { i++; continue; }
      let j = i;
      while (j < 8 && words[j] === 0) j++;
      if (j - i > bestLen) { best = i; bestLen = j - i; }
      i = j;
    }
    const hex = words.map(w => w.toString(16));
    if (best < 0) return hex.join(':');
    return hex.slice(0, best).join(':') + '::' + hex.slice(best + bestLen).join(':');
  }

  // The socket's record, created on first sight; null for anything but a connected TCP socket.
  function sockOf(sfd) {
    let s = socks.get(sfd);
    if (s !== undefined) return s;
    s = null;
    if (sfd !== fd) {
      const sa = Memory.alloc(128);
      const len = Memory.alloc(4);
      const type = Memory.alloc(4);
      len.writeU32(4);
      // SOL_SOCKET=1, SO_TYPE=3, SOCK_STREAM=1
      if (c.getsockopt(sfd, 1, 3, type, len) === 0 && type.readU32() === 1) {
        len.writeU32(128);
        const local = c.getsockname(sfd, sa, len) === 0 ? formatAddr(sa) : null;
        len.writeU32(128);
        const peer = c.getpeername(sfd, sa, len) === 0 ? formatAddr(sa) : null;
        if (local !== null && peer !== null) {
          s = { fd: sfd, cid: nextCid++, out: 0, in: 0, local, peer, announced: false };
        }
      }
    }
    socks.set(sfd, s);
    if (s !== null && fd >= 0) {
      queue.push(`CONN ${s.cid} ${s.local} ${s.peer}`);
      s.announced = true;
    }
    return s;
  }

  function cidOf(sfd) {
    const s = sockOf(sfd);
    return s === null ? null : s.cid;
  }

  function currentTx(threadId) {
    const tx = Sead.txn !== undefined ? Sead.txn.current(threadId) : null;
    return tx === undefined ? null : tx;
  }

  // The thread's announced records that are still open, given its innermost open transaction:
  // records whose transactions ended without an epilogue (longjmp) are dropped here and in C.
  function live(threadId, inner) {
    const st = open.get(threadId);
    if (st === undefined || st.length === 0) return [];
    const ids = [];
    for (let tx = inner; tx !== null; tx = tx.parent) ids.unshift(tx.id);
    let i = 0;
    while (i < st.length && i < ids.length && st[i].id === ids[i]) i++;
    if (i < st.length) {
      c.forget(st[i].id);
      st.length = i;
    }
    return st;
  }

  // Announce `inner` and its ancestors that are not announced yet; returns inner's record.
  function announce(threadId, inner) {
    let st = live(threadId, inner);
    const chain = [];
    for (let tx = inner; tx !== null && (st.length === 0 || tx.id !== st[st.length - 1].id);
      tx = tx.parent) chain.unshift(tx);
    if (chain.length === 0) return st[st.length - 1];
    if (st.length === 0) {
      st = [];
      open.set(threadId, st);
      c.forget(0); // a dead thread's leftovers (glibc reuses its control block, wire.c's key)
    }
    for (const tx of chain) {
      const parent = st.length ? st[st.length - 1] : null;
      const rec = { id: tx.id, parent, out: new Set() };
      if (c.announce(tx.id) !== 0) {
        log('error', 'announce-overflow', { tx: tx.id,
          effect: 'its commit is not sent: the gateway holds its output until a bound' });
      }
      st.push(rec);
      queue.push(`BEGIN ${tx.id} ${parent === null ? '-' : parent.id}`);
      counters.announced++;
    }
    return st[st.length - 1];
  }

  // Bytes [start, end) moved on s; inside a transaction they belong to its innermost one.
  function account(threadId, s, dir, n) {
    const start = s[dir];
    const end = start + n;
    s[dir] = end;
    if (control === null) return; // no gateway: offsets only (nothing would ever send the lines)
    const tx = currentTx(threadId);
    if (tx === null) {
      if (dir === 'out') push(`RELEASE ${s.cid} ${end}`, true);
      return;
    }
    const rec = announce(threadId, tx);
    const last = queue[queue.length - 1];
    if (last !== undefined && typeof last !== 'string' && last.tx === tx.id && last.cid === s.cid &&
        last.dir === dir && last.end === start) {
      last.end = end;
    } else {
      push({ tx: tx.id, cid: s.cid, dir, start, end }, false);
    }
    if (dir === 'out') rec.out.add(s.cid);
  }

  // Before a read inside a transaction that wrote on this socket: release that output (GRADUAL)
  // and make the memory changed so far permanent, or the request/response exchange deadlocks.
  function beforeInput(threadId, s) {
    if (control === null) return;
    const inner = currentTx(threadId);
    if (inner === null) return;
    let any = false;
    for (const rec of live(threadId, inner)) {
      if (rec.out.delete(s.cid)) {
        queue.push(`GRADUAL ${rec.id} ${s.cid}`);
        any = true;
      }
    }
    if (!any) return;
    counters.gradual++;
    if (Sead.memlog !== undefined) Sead.memlog.gradual(inner);
    flush();
  }

  // An announced transaction committed (wire_commit popped it in C): a nested one hands its
  // output sockets to its parent (GRADUAL before the parent's reads), a root one's output is
  // releasable at once.
  function committed(threadId, id) {
    const st = open.get(threadId);
    const i = st === undefined ? -1 : st.findIndex(r => r.id === id);
    if (i < 0) return;
    const rec = st[i];
    st.length = i;
    if (rec.parent !== null) for (const cid of rec.out) rec.parent.out.add(cid);
    counters.commits++;
    push(`COMMIT ${id}`, rec.parent === null);
  }

  // tx (and any open child) aborted: only an announced one has anything on the wire.
  function aborted(tx, fault) {
    const st = open.get(tx.threadId);
    const i = st === undefined ? -1 : st.findIndex(r => r.id === tx.id);
    if (i < 0) return;
    st.length = i;
    c.forget(tx.id);
    counters.aborts++;
    push(`ABORT ${tx.id} ${reasonWord(fault)}`, true);
  }

  // --- hooks ----------------------------------------------------------------------------------

  const INPUT = ['read', 'recv', 'recvfrom', 'recvmsg', 'readv'];
  const OUTPUT = ['write', 'send', 'sendto', 'sendmsg', 'writev'];

  function installHooks() {
    const libc = Process.getModuleByName('libc.so.6');
    for (const name of INPUT) {
      const peekable = name === 'recv' || name === 'recvfrom' || name === 'recvmsg';
      Interceptor.attach(libc.getExportByName(name), {
        onEnter(args) {
          this.s = sockOf(args[0].toInt32());
          if (this.s === null) return;
          this.peek = peekable && (args[name === 'recvmsg' ? 2 : 3].toInt32() & MSG_PEEK) !== 0;
          beforeInput(this.threadId, this.s);
        },
        onLeave(ret) {
          if (this.s === null || this.peek) return;
          const n = ret.toInt32();
          if (n > 0) account(this.threadId, this.s, 'in', n);
        },
      });
    }
    for (const name of OUTPUT.concat(['sendfile'])) {
      Interceptor.attach(libc.getExportByName(name), {
        onEnter(args) { this.s = sockOf(args[0].toInt32()); },
        onLeave(ret) {
          const n = ret.toInt32();
          if (this.s !== null && n > 0) account(this.threadId, this.s, 'out', n);
        },
      });
    }
    Interceptor.attach(libc.getExportByName('close'), {
      onEnter(args) {
        const sfd = args[0].toInt32();
        const s = socks.get(sfd);
        if (s === undefined) return;
        socks.delete(sfd);
        if (s !== null && s.announced) push(`CLOSE ${s.cid}`, true);
      },
    });
  }

  // Clean detach (the core's onDetach, before the hooks go): nothing can be rolled back any more,
  // so the announced transactions still open are committed, innermost first, and UNGUARD tells
  // the gateway to stop holding this process's output; flushed at once. A crash sends nothing:
  // the gateway then aborts the open transactions and stays guarded (fail closed).
  function unguard() {
    if (control === null) return;
    for (const st of open.values()) {
      for (let i = st.length - 1; i >= 0; i--) queue.push(`COMMIT ${st[i].id}`);
      st.length = 0;
    }
    counters.unguards++;
    push('UNGUARD', true);
  }

  // --- the protocol's messages ----------------------------------------------------------------

  function reasonWord(fault) {
    const r = String((fault && fault.kind) || 'fault') + (fault && fault.kind === 'ivp' && fault.detail
      ? ':' + fault.detail : '');
    return r.replace(/[^\x21-\x7e]/g, '_').substring(0, 64);
  }

  const api = {
    init(config) {
      load();
      control = config.control && config.control.path ? config.control : null;
      if (control !== null) {
        connect();
        if (fd < 0) lastAttempt = 0;
      }
      installHooks();
    },
    connected() { return fd >= 0; },
    cidOf,
    offsets(sfd) {
      const s = socks.get(sfd);
      return s ? { cid: s.cid, out: s.out, in: s.in } : null;
    },
    nativeHooks() { return { commit: cm.wire_commit }; },
    abort: aborted,
    release(cid, upto) { push(`RELEASE ${cid} ${upto}`, true); },
    close(cid) { push(`CLOSE ${cid}`, true); },
    flush,
    unguard,
    stats() { return Object.assign({ connected: fd >= 0, sockets: socks.size }, counters); },
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
