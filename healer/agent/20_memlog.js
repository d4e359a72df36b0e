// The memory log and rollback (Sead.memlog), STEM section 3.3.1, with gradual commits (section 5).
//
// A thread is followed by Stalker once, on its first supervised call, and stays followed: follow/
// unfollow per call re-translates every block (~1.75 ms a call); only a heal at a fault (which
// resumes the thread outside the code cache) makes it follow again, at once, through a resume stub
// (makeResumeStub), so an open parent transaction and every later one stay logged. Logging is gated per thread: the gate is on
// only while a supervised transaction is open, and it is switched from the core's hooks, which run
// in Frida's own (excluded, hence native) code, so Frida's writes are never logged. Every
// instruction with a memory destination gets an inline call of memlog_store (memlog.c) that copies
// the bytes it is about to overwrite into the thread's preallocated log, unless they lie on the
// thread's own stack below the innermost transaction's entry sp (that frame dies with the
// virtualized return). A transaction's marker is the log length at its entry; rollback undoes back
// to it, newest first. Markers and the gate are kept in C (memlog_begin/memlog_commit, native
// hooks of the core): a supervised call enters JavaScript here only to follow a thread the first
// time (memlog_js_enable) and to roll back. docs/memlog-and-wire.md has the details and the limits.

const _memlogModule = (function () {
  const DESC_REP = 1;
  const DESC_FS = 2;
  const DESC_ADDR32 = 4;
  const DESC_MASKED = 8;
  const DESC_SIZE = 24;              // struct _StoreDesc
  const DESC_SLAB = 64 * 1024;
  const MAX_MARKERS = 64;            // memlog.c
  const MAX_THREADS = 256;
  const LOG_STRUCT = 16 * 8 + MAX_MARKERS * 32; // struct _MemLog
  const F = { buf: 0, cap: 8, len: 16, on: 24, skipLo: 32, skipHi: 40, fsBase: 48, logged: 56,
    loggedBytes: 64, skipped: 72, overflows: 80, unreadable: 88, restored: 96, key: 104,
    refollow: 112, n: 120 };

  // Register numbers understood by reg_value() in memlog.c.
  const REGS = {};
  ['rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rbp', 'rsp', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13',
    'r14', 'r15'].forEach((r, i) => { REGS[r] = i + 1; });
  const REGS32 = {};
  ['eax', 'ebx', 'ecx', 'edx', 'esi', 'edi', 'ebp', 'esp', 'r8d', 'r9d', 'r10d', 'r11d', 'r12d',
    'r13d', 'r14d', 'r15d'].forEach((r, i) => { REGS32[r] = i + 1; });

  // Instructions whose first memory operand is read, not written (or not accessed at all).
  // Capstone's access flags cannot be trusted for vector stores (it marks `movups [rdi], xmm0` and
  // AVX-512 `vmovdqu64 [rdi], zmm16` as reads), so operand 0 counts as written unless listed here.
  const NOT_A_STORE = /^(lea|nop|prefetch|clflush|clwb|clde|endbr|bnd|cmp(?!xchg)|test|push|jmp|j[a-z]+$|call|bt$|v?u?comis|v?ptest|fld|fild|fi?u?com|fnstenv|frstor|fxrstor|xrstor|v?ldmxcsr|lgdt|lidt|verr|verw|ptwrite)/;

  let cm = null;
  let config = {};
  let logBytes = 4 * 1024 * 1024;
  const threads = new Map();   // threadId -> {log, buf, descs: Map, transform}
  let slab = null;
  let slabUsed = DESC_SLAB;
  const slabs = [];            // keeps every slab alive (Memory.alloc frees on GC)
  let unsupported = 0;         // stores the log cannot address (gs:, vector-indexed scatter)
  let refollows = 0;
  const fridaCode = [];        // [lo, hi) of Frida's executable mappings
  let resumeStub = null;       // code a healed thread resumes at: re-enters Stalker (makeResumeStub)
  let reenter = null;          // its NativeCallback
  let enableCallback = null;   // memlog_js_enable: memlog_begin on a thread not followed (yet)
  const logs = Memory.alloc(MAX_THREADS * 8); // memlog.c's thread -> MemLog table
  const retPages = Memory.alloc(4096 * 8);    // memlog.c's cache of pages `ret` may return to

  function load() {
    if (cm !== null) return;
    const libc = Process.getModuleByName('libc.so.6');
    enableCallback = new NativeCallback(sp => {
      enableThread(Process.getCurrentThreadId(), sp);
    }, 'void', ['pointer']);
    cm = new CModule(CSOURCE['memlog.c'], {
      memlog_process_vm_readv: libc.getExportByName('process_vm_readv'),
      memlog_getpid: libc.getExportByName('getpid'),
      logs, memlog_ret_pages: retPages, memlog_js_enable: enableCallback,
    });
    const opts = { exceptions: 'propagate' };
    cm._abort = new NativeFunction(cm.memlog_abort, 'int64', ['pointer', 'uint64', 'int', 'pointer'],
      opts);
    cm._gradual = new NativeFunction(cm.memlog_gradual, 'uint64', ['pointer'], opts);
    cm._register = new NativeFunction(cm.memlog_register, 'int', ['pointer'], opts);
    cm._pthreadSelf = new NativeFunction(libc.getExportByName('pthread_self'), 'pointer', []);
    excludeFrida();
    makeResumeStub();
  }

  // Frida's agent is mapped from a memfd and hidden from enumerateModules(); its code must run
  // natively (it is where the hooks' JavaScript and the exception handler execute). Exclusion only
  // applies to calls: right after a follow, the rest of Frida's own callback runs translated until
  // it returns, so the transform also leaves its instructions unlogged (fridaCode).
  function excludeFrida() {
    const maps = File.readAllText('/proc/self/maps').split('\n');
    for (const line of maps) {
      const fields = line.split(/\s+/);
      if (!/frida-agent/.test(line) || fields[1][2] !== 'x') continue;
      const [lo, hi] = line.split(' ')[0].split('-').map(x => ptr('0x' + x));
      Stalker.exclude({ base: lo, size: hi.sub(lo).toUInt32() });
      fridaCode.push([lo, hi]);
    }
  }

  function inFridaCode(address) {
    return fridaCode.some(([lo, hi]) => address.compare(lo) >= 0 && address.compare(hi) < 0);
  }

  function stackLow(sp) {
    for (const line of File.readAllText('/proc/self/maps').split('\n')) {
      const m = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
      if (m === null) continue;
      const lo = ptr('0x' + m[1]);
      const hi = ptr('0x' + m[2]);
      if (sp.compare(lo) >= 0 && sp.compare(hi) < 0) {
        // The main stack grows down into the gap below its current mapping.
        return m[3] === '[stack]' ? lo.sub(64 * 1024 * 1024) : lo;
      }
    }
    return sp.sub(8 * 1024 * 1024);
  }

  function allocDesc() {
    if (slabUsed + DESC_SIZE > DESC_SLAB) {
      slab = Memory.alloc(DESC_SLAB);
      slabs.push(slab);
      slabUsed = 0;
    }
    const d = slab.add(slabUsed);
    slabUsed += DESC_SIZE;
    return d;
  }

  function regNumber(name) {
    if (name === undefined) return [0, false];
    if (REGS[name] !== undefined) return [REGS[name], false];
    if (REGS32[name] !== undefined) return [REGS32[name], true];
    return [-1, false];
  }

  const REG_NAMES = Object.keys(REGS);
  // Saved around the call to memlog_store: what the SysV ABI lets a C function clobber.
  const SAVED = ['rax', 'rcx', 'rdx', 'rsi', 'rdi', 'r8', 'r9', 'r10', 'r11'];
  const RED_ZONE = 128;
  const FRAME = RED_ZONE + 8 * (SAVED.length + 1);   // + flags

  // Load the value register `num` had at the store into `dst`, with SAVED already pushed.
  function loadReg(it, dst, num) {
    if (num === 0) {
      it.putMovRegU64(dst, 0);
      return;
    }
    const reg = REG_NAMES[num - 1];
    if (reg === 'rsp') it.putLeaRegRegOffset(dst, 'rsp', FRAME);
    else if (SAVED.indexOf(reg) >= 0) {
      it.putMovRegRegOffsetPtr(dst, 'rsp', 8 * (SAVED.length - 1 - SAVED.indexOf(reg)));
    } else it.putMovRegReg(dst, reg);
  }

  // A call of the C function `fn` with arguments put in place by `args(it)` (SAVED already
  // pushed), every register and flag preserved, the red zone below rsp left alone and the stack
  // 16-byte aligned for the call.
  function putNativeCall(it, fn, args) {
    it.putLeaRegRegOffset('rsp', 'rsp', -RED_ZONE);
    it.putPushfx();
    for (const r of SAVED) it.putPushReg(r);
    args(it);
    it.putPushReg('rbx');
    it.putMovRegReg('rbx', 'rsp');
    it.putAndRegU32('rsp', 0xfffffff0);
    it.putCallAddress(fn);
    it.putMovRegReg('rsp', 'rbx');
    it.putPopReg('rbx');
    for (let i = SAVED.length - 1; i >= 0; i--) it.putPopReg(SAVED[i]);
    it.putPopfx();
    it.putLeaRegRegOffset('rsp', 'rsp', RED_ZONE);
  }

  // memlog_store(base, index, rcx, desc) before the store.
  function putStoreLog(it, e) {
    putNativeCall(it, cm.memlog_store, w => {
      loadReg(w, 'rdi', e.base);
      loadReg(w, 'rsi', e.index);
      loadReg(w, 'rdx', REGS.rcx);
      w.putMovRegAddress('rcx', e.desc);
    });
  }

  // memlog_check_ret(target) before a `ret`: a smashed return address faults where the exception
  // handler heals it, not inside Stalker (memlog.c).
  function putRetCheck(it) {
    putNativeCall(it, cm.memlog_check_ret, w => w.putMovRegRegOffsetPtr('rdi', 'rsp', FRAME));
  }

  // The store descriptor of one instruction, or null if it writes no memory we log.
  function describe(insn, st) {
    const ops = insn.operands;
    if (ops.length === 0) return null;
    let op = null;
    if (ops[0].type === 'mem' && !NOT_A_STORE.test(insn.mnemonic)) op = ops[0];
    else {
      for (const o of ops) if (o.type === 'mem' && o.access.indexOf('w') >= 0) op = o;
    }
    if (op === null) return null;
    const mem = op.value;
    let flags = 0;
    let disp = int64(mem.disp || 0);
    let [base, b32] = regNumber(mem.base);
    let [index, i32] = regNumber(mem.index);
    if (mem.base === 'rip') {
      disp = int64(insn.address.add(insn.size).add(mem.disp || 0).toString());
      base = 0;
    }
    if (base < 0 || index < 0 || mem.segment === 'gs') {
      unsupported++;
      return null;
    }
    if (b32 || i32) flags |= DESC_ADDR32;
    if (mem.segment === 'fs') flags |= DESC_FS;
    if (/^rep/.test(insn.mnemonic)) flags |= DESC_REP;
    if (/\{k[1-7]\}/.test(insn.opStr) || /maskmov/.test(insn.mnemonic)) flags |= DESC_MASKED;
    const d = allocDesc();
    d.writePointer(st.log);
    d.add(8).writeS64(disp);
    d.add(16).writeU32(op.size || 8);
    d.add(20).writeU8(base);
    d.add(21).writeU8(index);
    d.add(22).writeU8(mem.scale || 1);
    d.add(23).writeU8(flags);
    return { desc: d, base, index };
  }

  function transformFor(st) {
    return function (iterator) {
      let insn;
      while ((insn = iterator.next()) !== null) {
        const key = insn.address.toString();
        let d = st.descs.get(key);
        if (d === undefined) {
          d = inFridaCode(insn.address) ? null : describe(insn, st);
          st.descs.set(key, d);
        }
        if (d !== null) putStoreLog(iterator, d);
        else if (insn.mnemonic === 'ret' && !inFridaCode(insn.address)) putRetCheck(iterator);
        iterator.keep();
      }
    };
  }

  // Takes effect when the current callback returns (Frida follows the calling thread from there).
  // The event sink is a native no-op (no events are asked for): Frida's default JavaScript sink is
  // stopped and drained on the JS thread, which raced with a follow right after an unfollow and
  // crashed that thread.
  function follow(st) {
    Stalker.follow(st.threadId, { transform: st.transform, onEvent: cm.memlog_no_events });
  }

  // A heal resumes the thread at a real address (the on-leave trampoline, or raddress): outside
  // Stalker's code cache, so the thread would run natively and unlogged from there on, including
  // the rest of the open parent transaction. beforeResume() therefore stops following it (in the
  // exception handler) and resumes it at this stub instead, with two words just below the new sp
  // (the dead frame of the healed function): the real resume address and the gate's address. The
  // stub calls reenter(), whose Stalker.follow() takes effect when the callback returns, so the
  // rest of the stub already runs translated: it switches the gate back on (only
  // now, so that Frida's code on the way out of the callback is never logged) and returns to the
  // resume address inside Stalker. It preserves every general register, the flags and the SSE
  // state: with -fipa-ra, gcc keeps values in caller-saved registers across a call to a function
  // it knows does not clobber them, so the resume must look like the healed function's own return.
  const RESUME_SLOTS = 2 * 8;
  const STUB_SAVED = ['rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rbp', 'r8', 'r9', 'r10', 'r11', 'r12',
    'r13', 'r14', 'r15'];
  function makeResumeStub() {
    reenter = new NativeCallback(() => {
      const st = threads.get(Process.getCurrentThreadId());
      if (st === undefined) return;
      follow(st);
      refollows++;
    }, 'void', []);
    resumeStub = Memory.alloc(Process.pageSize);
    Memory.patchCode(resumeStub, 256, code => {
      const w = new X86Writer(code, { pc: resumeStub });
      const slots = 8 * (STUB_SAVED.length + 1);       // the two words, above what is pushed here
      w.putLeaRegRegOffset('rsp', 'rsp', -RESUME_SLOTS);
      w.putPushfx();
      for (const r of STUB_SAVED) w.putPushReg(r);
      w.putMovRegReg('rbx', 'rsp');
      w.putAndRegU32('rsp', 0xfffffff0);
      w.putLeaRegRegOffset('rsp', 'rsp', -512);
      w.putBytes([0x0f, 0xae, 0x04, 0x24]);            // fxsave [rsp]
      w.putMovRegAddress('rax', reenter);
      w.putCallReg('rax');
      w.putBytes([0x0f, 0xae, 0x0c, 0x24]);            // fxrstor [rsp]
      w.putMovRegReg('rsp', 'rbx');
      w.putMovRegRegOffsetPtr('rcx', 'rsp', slots);     // the gate's address
      w.putMovRegU32('eax', 1);
      w.putMovRegPtrReg('rcx', 'rax');                 // gate on: translated now, the gate still off
      for (let i = STUB_SAVED.length - 1; i >= 0; i--) w.putPopReg(STUB_SAVED[i]);
      w.putPopfx();
      w.putLeaRegRegOffset('rsp', 'rsp', RESUME_SLOTS - 8);
      w.putRet();                                      // to the resume address, sp as it was
      w.flush();
    });
  }

  // Follow the calling thread (once) and give it a log. Must run on that thread (fs base).
  function enableThread(threadId, sp) {
    let st = threads.get(threadId);
    if (st !== undefined) {
      if (st.log.add(F.refollow).readU64().toNumber() !== 0) {
        st.log.add(F.refollow).writeU64(0);
        follow(st);
        refollows++;
      }
      return st;
    }
    load();
    const log = Memory.alloc(LOG_STRUCT);
    const buf = Memory.alloc(logBytes);
    log.add(F.buf).writePointer(buf);
    log.add(F.cap).writeU64(logBytes);
    log.add(F.skipLo).writePointer(stackLow(sp || ptr(0)));
    log.add(F.fsBase).writePointer(cm._pthreadSelf());
    st = { threadId, log, buf, descs: new Map(), transform: null };
    st.transform = transformFor(st);
    if (cm._register(log) !== 0) throw new Error(`memlog: more than ${MAX_THREADS} threads`);
    threads.set(threadId, st);
    follow(st);
    return st;
  }

  function openCount(st) { return st.log.add(F.n).readU64().toNumber(); }

  // Undo tx's stores (and those of any open child), newest first. With config.rollback === false
  // (tests that prove the log matters) the entries are dropped without restoring.
  function rollback(tx) {
    const st = threads.get(tx.threadId);
    const flag = Memory.alloc(8);
    const restored = st === undefined ? -1
      : cm._abort(st.log, uint64(tx.id), config.rollback === false ? 0 : 1, flag).toNumber();
    if (restored < 0) return { restored: 0, complete: false, why: 'no marker for this transaction' };
    const complete = flag.readU64().toNumber() !== 0;
    if (!complete) {
      Sead.log('error', 'memlog-overflow', { tx: tx.id,
        why: `the log (${logBytes} bytes a thread) filled up: rollback is incomplete; raise memlog.bytes` });
    }
    return { restored, complete };
  }

  // Gradual commit: tx is about to do I/O that cannot be taken back; everything logged so far on
  // its thread (tx and its ancestors) becomes permanent.
  function gradual(tx) {
    const st = threads.get(tx.threadId);
    return st === undefined ? 0 : cm._gradual(st.log).toNumber();
  }

  // A fault was healed: `context` resumes the thread at its caller. With a parent transaction
  // still open, the thread must be followed again at once (makeResumeStub). With none, nothing
  // needs logging until the next transaction, which follows the thread again (enableThread): the
  // code it runs meanwhile is not translated again for nothing (root heals/s 3.7x the eager way).
  // An abort at the epilogue needs neither: the thread returns through Stalker's code as usual.
  function beforeResume(tx, context) {
    const st = threads.get(tx.threadId);
    if (st === undefined) return;
    Stalker.unfollow(tx.threadId);   // takes effect when the exception handler returns
    if (openCount(st) === 0) {
      st.log.add(F.refollow).writeU64(1);
      return;
    }
    const sp = context.sp;
    sp.sub(8).writePointer(context.pc);
    sp.sub(16).writePointer(st.log.add(F.on));
    st.log.add(F.on).writeU64(0);
    context.pc = resumeStub;
  }

  function stats() {
    const out = { threads: threads.size, refollows, logged: 0, loggedBytes: 0, skipped: 0, overflows: 0,
      unreadable: 0, restored: 0, unsupported, rollback: config.rollback !== false };
    for (const st of threads.values()) {
      for (const k of ['logged', 'loggedBytes', 'skipped', 'overflows', 'unreadable', 'restored']) {
        out[k] += st.log.add(F[k]).readU64().toNumber();
      }
    }
    return out;
  }

  function configure(cfg) {
    config = cfg || {};
    if (config.memlog && config.memlog.bytes) logBytes = config.memlog.bytes;
  }

  function nativeHooks() {
    load();
    return { begin: cm.memlog_begin, commit: cm.memlog_commit };
  }

  return { configure, enableThread, rollback, gradual, beforeResume, stats, nativeHooks };
})();

Sead.memlog = _memlogModule;

Sead.use({
  name: 'memlog',
  init(config) {
    _memlogModule.configure(config);
    Sead.txn.addNativeHooks(_memlogModule.nativeHooks());
  },
  onTxAbort(tx, fault) { fault.memlog = _memlogModule.rollback(tx); },
  beforeResume(tx, context) { _memlogModule.beforeResume(tx, context); },
  status() { return { memlog: _memlogModule.stats() }; },
});
