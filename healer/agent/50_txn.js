// Functions as transactions and error virtualization (Sead.txn), STEM sections 3.3.2-3.3.4.
// The per-call bookkeeping runs in txn.c; this file owns the JS side: transaction objects for the
// plugins, commit/abort at the epilogue, and the repair that rewrites a faulting thread's context so
// that the innermost supervised function returns to its caller with a chosen value.
'use strict';

Sead.txn = (() => {
  // Layouts mirrored from txn.c.
  const F = { id: 0, fn: 8, sp: 16, ret: 24, regs: 32, args: 80, start: 128, depth: 136, state: 144,
    inject: 152, size: 160 };
  const T = { tid: 0, inputDepth: 8, n: 16, key: 24, frames: 32, nCalls: 10272, calls: 10304 };
  const CALL_SIZE = 32;       // txn.c's Call
  const THREAD_STRIDE = 65536;
  const C = { mode: 0, cosak: 8, nextId: 16, jsTx: 24, injectThreshold: 32, rng: 40, supervised: 48,
    calls: 56, stale: 64, overflow: 72, jsCalls: 80, jsInput: 88, enabled: 96, shadow: 104,
    nNative: 112, size: 120 };
  const MAX_NATIVE_HOOKS = 8;
  const MAX_THREADS = 256;
  const REGS = ['rbx', 'rbp', 'r12', 'r13', 'r14', 'r15'];
  const ST_HEALED = 1;
  // Frame.inject in txn.c: why the epilogue aborts the transaction.
  const INJ = { nextCall: 1, always: 2, random: 3, refused: 4, shadow: 5 };
  const MAX_CHOICES = 8; // bound on value choices per repair (policy rps, profile, heuristic)

  const cfg = Memory.alloc(C.size);
  const nativeHooks = Memory.alloc(MAX_NATIVE_HOOKS * 16);
  // Thread slots: read by the exit stubs after a detach too (70_coverage.js), so never freed.
  const threads = Sead.permanent(MAX_THREADS * THREAD_STRIDE, false);
  const stacks = new Map(); // threadId -> [tx] while plugins want JS transaction hooks
  const stats = { heals: 0, refusals: 0, injected: 0, leaveAborts: 0, unsupervisedFaults: 0 };
  let cm = null;
  let threadOf = null;
  let currentThread = null;

  function u64(p) { return p.readU64(); }

  // --- transaction objects ---------------------------------------------------------------------

  function txFromFrame(frame, threadId, parent) {
    const fn = Sead.coverage.byInfo(frame.add(F.fn).readPointer());
    const regs = {};
    REGS.forEach((r, i) => { regs[r] = frame.add(F.regs + 8 * i).readPointer(); });
    const args = [];
    for (let i = 0; i < 6; i++) args.push(frame.add(F.args + 8 * i).readPointer());
    return {
      id: u64(frame.add(F.id)).toNumber(), parent, fn, threadId,
      depth: frame.add(F.depth).readU32(), entrySp: frame.add(F.sp).readPointer(),
      returnAddress: frame.add(F.ret).readPointer(), regs, args, startNs: Date.now() * 1e6,
      _frame: frame,
    };
  }

  function framesOf(threadId) {
    const t = threadId === Process.getCurrentThreadId() ? currentThread(threadId) : threadOf(threadId, 0);
    if (t.isNull()) return [];
    const n = t.add(T.n).readU64().toNumber();
    const out = [];
    for (let i = 0; i < n; i++) out.push(t.add(T.frames + i * F.size));
    return out;
  }

  // The open transactions of a thread, outermost first. With JS hooks on, the objects the plugins
  // saw at onTxBegin (they keep state on them); otherwise built from the C frames.
  function chain(threadId) {
    const st = stacks.get(threadId);
    const frames = framesOf(threadId);
    if (st !== undefined && jsTx()) {
      while (st.length > 0 && !frames.some(f => f.equals(st[st.length - 1]._frame))) st.pop();
      return st;
    }
    const out = [];
    for (const f of frames) out.push(txFromFrame(f, threadId, out.length ? out[out.length - 1] : null));
    return out;
  }

  function current(threadId) {
    const c = chain(threadId);
    return c.length ? c[c.length - 1] : null;
  }

  function root(tx) {
    while (tx !== null && tx.parent !== null) tx = tx.parent;
    return tx;
  }

  function leaveTrampoline(tx) {
    return tx.fn.trampoline || null;
  }

  function jsTx() { return cfg.add(C.jsTx).readU64().toNumber() !== 0; }

  function popTo(threadId, tx) {
    const st = stacks.get(threadId);
    if (st === undefined) return;
    const i = st.indexOf(tx);
    if (i >= 0) st.length = i;
  }

  // --- choosing the value (policy -> profile -> heuristic), SEV section 2.2 ---------------------

  function heuristic(tx, fault) {
    return { value: int64(-1), source: 'heuristic',
      why: `no policy or profile value for ${tx.fn.name}: -1, the conventional C error return (${fault.kind})` };
  }

  // apply(choice) sets the value where the caller will see it; afterRepair may reject a choice, and
  // the next one is asked for (a plugin whose choice was rejected is skipped, except the policy,
  // which advances to its next rp by itself). Returns the accepted choice or {refuse, why}.
  function choose(tx, fault, apply) {
    const skip = new Set();
    const rejected = [];
    for (let attempt = 0; attempt < MAX_CHOICES; attempt++) {
      const got = Sead.first('chooseReturnValue', skip, tx, fault);
      const choice = got !== null ? got.result : heuristic(tx, fault);
      if (choice.refuse) return choice;
      apply(choice);
      const bad = Sead.first('afterRepair', null, tx, fault, choice);
      if (bad === null) return choice;
      rejected.push(`${choice.source} ${choice.value}: ${bad.result.reason}`);
      if (got === null) break;
      if (choice.source !== 'policy') skip.add(got.plugin);
    }
    return { refuse: true, why: `every value was rejected (${rejected.join('; ')})` };
  }

  function describe(tx, fault, choice) {
    return { function: tx.fn.name, tx: tx.id, thread: tx.threadId, kind: fault.kind,
      address: fault.address ? fault.address.toString() : null, detail: fault.detail || null,
      value: choice.value.toString(), source: choice.source, why: choice.why,
      shadowStack: fault.shadowStack || null, rollback: fault.memlog || null };
  }

  // --- repair at a fault: called by the exception handler (60_detectors.js) ---------------------

  // Rewrite `context` so the innermost supervised function of this thread returns to its caller
  // with a chosen value; true if the thread may resume. A refused value aborts the enclosing
  // transaction instead; with no enclosing one left the fault is not healed (false).
  function healFault(threadId, context, fault) {
    const txs = chain(threadId);
    let i = txs.length - 1;
    if (i < 0) {
      stats.unsupervisedFaults++;
      Sead.emit('fault', { kind: fault.kind, address: String(fault.address), thread: threadId,
        detail: 'no supervised function on this thread: not healed' });
      Sead.flush();
      return false;
    }
    for (; i >= 0; i--) {
      const tx = txs[i];
      fault.shadowStack = tx.entrySp.readPointer().equals(tx.fn.trampoline || ptr(0)) ||
        tx.entrySp.readPointer().equals(tx.returnAddress) ? 'intact' : 'return address overwritten';
      Sead.each('onTxAbort', tx, fault);
      const choice = choose(tx, fault, c => {
        context.rax = ptr(c.value.toString());
        REGS.forEach(r => { context[r] = tx.regs[r]; });
        context.sp = tx.entrySp.add(8);
        context.pc = c.raddress || tx.fn.trampoline || tx.returnAddress;
      });
      if (choice.refuse) {
        stats.refusals++;
        Sead.emit('refuse', { function: tx.fn.name, tx: tx.id, kind: fault.kind, why: choice.why,
          next: i > 0 ? txs[i - 1].fn.name : null });
        fault = { kind: 'refused', address: fault.address, detail: `${tx.fn.name}: ${choice.why}` };
        continue;
      }
      tx._frame.add(F.state).writeU64(ST_HEALED);
      popTo(threadId, tx);
      Sead.each('beforeResume', tx, context); // memlog: resume inside Stalker (docs/agent.md)
      stats.heals++;
      Sead.emit('heal', describe(tx, fault, choice));
      return true;
    }
    return false;
  }

  // --- epilogue: commit, or abort on an IVP/anomaly verdict or an injected fault ----------------

  function onLeave(frame, retval, out) {
    const threadId = Process.getCurrentThreadId();
    const txs = chain(threadId);
    const tx = txs.find(t => t._frame.equals(frame)) || txFromFrame(frame, threadId, null);
    const why = frame.add(F.inject).readU64().toNumber();
    let fault = null;
    if (why === INJ.shadow) {
      fault = { kind: 'shadow-stack', address: tx.fn.address,
        detail: 'callee-saved registers changed by the function (its saved copies were overwritten)' };
    } else if (why === INJ.refused) {
      fault = { kind: 'refused', address: tx.fn.address, detail: 'a nested repair was refused' };
    } else if (why !== 0) {
      fault = { kind: 'inject', address: tx.fn.address, detail: why === INJ.random ? 'random' : 'on demand' };
    } else {
      const verdict = Sead.first('onTxLeave', null, tx, retval);
      if (verdict !== null) {
        fault = { kind: verdict.result.kind || 'ivp', address: tx.fn.address, detail: verdict.result.reason };
      }
    }
    if (fault === null) {
      Sead.each('onTxCommit', tx);
      popTo(threadId, tx);
      return 0;
    }
    stats.leaveAborts++;
    Sead.each('onTxAbort', tx, fault);
    let value = null;
    const choice = choose(tx, fault, c => { value = c.value; });
    popTo(threadId, tx);
    if (choice.refuse) {
      // The function has already returned; its caller is aborted at its own epilogue.
      stats.refusals++;
      const parent = tx.parent;
      if (parent !== null) parent._frame.add(F.inject).writeU64(INJ.refused);
      Sead.emit('refuse', { function: tx.fn.name, tx: tx.id, kind: fault.kind, why: choice.why,
        next: parent !== null ? parent.fn.name : null });
      return 2;
    }
    out.writeU64(uint64(value.toString()));
    const ev = describe(tx, fault, choice);
    if (fault.kind === 'inject') {
      stats.injected++;
      Sead.emit('inject', { function: ev.function, tx: ev.tx, mode: fault.detail, selected: choice.source,
        why: choice.why, value: ev.value });
    } else {
      stats.heals++;
      Sead.emit('heal', ev);
    }
    return 1;
  }

  function onBegin(frame) {
    const threadId = Process.getCurrentThreadId();
    let st = stacks.get(threadId);
    if (st === undefined) {
      st = [];
      stacks.set(threadId, st);
    }
    chain(threadId); // drop transactions whose frames are gone (unwound past)
    const tx = txFromFrame(frame, threadId, st.length ? st[st.length - 1] : null);
    st.push(tx);
    Sead.each('onTxBegin', tx);
  }

  // --- set-up ----------------------------------------------------------------------------------

  const callbacks = {
    js_begin: new NativeCallback(f => { onBegin(f); }, 'void', ['pointer']),
    js_leave: new NativeCallback((f, r, out) => onLeave(f, r, out), 'uint64', ['pointer', 'pointer', 'pointer']),
    js_call: new NativeCallback((info, tid, regs, sp) => {
      Sead.each('onCall', Sead.coverage.byInfo(info), tid.toNumber(), argsOf(regs), sp);
    }, 'void', ['pointer', 'uint64', 'pointer', 'pointer']),
    js_return: new NativeCallback((info, tid, retval) => {
      Sead.each('onReturn', Sead.coverage.byInfo(info), tid.toNumber(), retval);
    }, 'void', ['pointer', 'uint64', 'pointer']),
    js_input: new NativeCallback((tid, fd, n) => {
      Sead.each('onInput', tid.toNumber(), fd.toNumber(), n.toNumber());
    }, 'void', ['uint64', 'uint64', 'int64']),
  };

  // txn.c's Regs (what an entry stub saved): xmm0-15, r15 r14 r13 r12 r11 r10 rbp rbx r9 r8 rcx
  // rdx rsi rdi rax, the stub's return, the caller's r11, the caller's return.
  const ARG_OFFSETS = [360, 352, 344, 336, 328, 320]; // rdi rsi rdx rcx r8 r9
  function argsOf(regs) {
    return ARG_OFFSETS.map(o => regs.add(o).readPointer());
  }

  function init(config) {
    const symbols = Object.assign({ cfg, threads, native_hooks: nativeHooks,
      gettid: Module.getGlobalExportByName('gettid') }, callbacks);
    cm = new CModule(CSOURCE['txn.c'], symbols);
    threadOf = new NativeFunction(cm.sead_thread, 'pointer', ['uint64', 'int']);
    currentThread = new NativeFunction(cm.sead_current_thread, 'pointer', ['uint64']);
    cfg.add(C.rng).writeU64(uint64('0x9e3779b97f4a7c15'));
    configure(config);
  }

  // Which JS paths the C hot path must take: per-transaction JS hooks of plugins, per-call hooks
  // (Sead.wantCalls), input hooks.
  function configure(config) {
    const want = ['onTxBegin', 'onTxLeave', 'onTxCommit'].some(h => Sead.hasHook(h));
    cfg.add(C.jsTx).writeU64(want ? 1 : 0);
    cfg.add(C.jsCalls).writeU64(Sead.wantCalls ? 1 : 0);
    cfg.add(C.jsInput).writeU64(Sead.hasHook('onInput') ? 1 : 0);
    setInject(config.inject || null);
  }

  function setMode(mode, cosak) {
    cfg.add(C.cosak).writeU64(cosak || 6);
    cfg.add(C.mode).writeU64(mode);
  }

  function setEnabled(on) { cfg.add(C.enabled).writeU64(on ? 1 : 0); }

  // A plugin's C hooks `void hook(Frame *f, guint64 threadId)` (layout of Frame: txn.c), run on
  // the hot path for every supervised call without entering JS: `begin` after the frame is saved,
  // `commit` when the transaction commits. Aborts stay in JS (onTxAbort). Call from `init`.
  function addNativeHooks(h) {
    const n = cfg.add(C.nNative).readU64().toNumber();
    if (n >= MAX_NATIVE_HOOKS) throw new Error(`at most ${MAX_NATIVE_HOOKS} native hook sets`);
    nativeHooks.add(16 * n).writePointer(h.begin || ptr(0));
    nativeHooks.add(16 * n + 8).writePointer(h.commit || ptr(0));
    cfg.add(C.nNative).writeU64(n + 1);
    return n;
  }

  // Fault injection (SEV section 3.3): `function` fails at its next call (or every call with
  // `always`), `probability` makes random supervised calls fail.
  function setInject(spec) {
    const p = spec && spec.probability ? Math.max(0, Math.min(1, spec.probability)) : 0;
    cfg.add(C.injectThreshold).writeU64(Math.floor(p * 0xffffffff));
    if (spec && spec.function) {
      const fn = Sead.coverage.ensureHooked(spec.function);
      fn.info.add(40).writeU64(spec.always ? INJ.always : INJ.nextCall);
    }
  }

  function status() {
    const n = k => cfg.add(C[k]).readU64().toNumber();
    return Object.assign({ supervisedCalls: n('supervised'), stale: n('stale'), frameOverflow: n('overflow'),
      shadowStackViolations: n('shadow'),
      jsTxHooks: n('jsTx') !== 0, jsCallHooks: n('jsCalls') !== 0, injectProbability: n('injectThreshold') / 0xffffffff },
    stats);
  }

  return { init, configure, setMode, setEnabled, setInject, addNativeHooks, current, root,
    leaveTrampoline, healFault,
    status, module: () => cm, threads, THREAD: T, CALL_SIZE, THREAD_STRIDE, MAX_THREADS,
    enterLeave: () => ({ enter: cm.sead_enter, leave: cm.sead_leave }),
    listener: () => ({ onEnter: cm.on_enter, onLeave: cm.on_leave }),
    inputListener: () => ({ onEnter: cm.on_input_enter, onLeave: cm.on_input_leave }), FN_INFO_SIZE: 48 };
})();
