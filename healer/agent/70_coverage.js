// Supervision coverage (STEM section 3.2): which functions run as transactions. Function discovery
// (main executable's symbol table, exports and imports), hooking through the stubs of 65_stubs.js, and
// the policies NONE, ALL, RANDOM:PCT, COSAK:DEPTH and LIST. The per-call decision is taken at
// analysis time in txn.c (mode + per-function flag + COSAK depth), so a reload changes it while the
// server runs; RANDOM and LIST hook only the functions they pick, ALL and COSAK hook every function.
'use strict';

Sead.coverage = (() => {
  const MODES = { none: 0, all: 1, random: 2, list: 2, cosak: 3 };
  const NOT_FUNCTIONS = new Set(['_start', '_init', '_fini', 'main', 'frame_dummy', 'register_tm_clones',
    'deregister_tm_clones', '__do_global_dtors_aux', '__libc_csu_init', '__libc_csu_fini',
    '_dl_relocate_static_pie']);
  const MIN_HOOK_SIZE = 5; // a 5-byte jmp must fit: smaller functions cannot be intercepted
  const INPUT_CALLS = ['read', 'recv', 'recvfrom', 'recvmsg', 'readv'];
  const INFO = { index: 0, address: 8, supervise: 16, trampoline: 24, calls: 32, inject: 40 };

  const fns = [];          // discovered functions of the main executable
  const byName = new Map();
  const byAddr = new Map();
  const byInfoKey = new Map();
  const unhookable = [];   // {name, reason}: listed, never silently skipped
  let infos = null;
  let extra = [];          // functions outside the main executable hooked on demand (LIST, inject)
  let spec = { mode: 'none' };

  function register(name, address, size, origin) {
    const key = address.toString();
    if (byAddr.has(key)) {
      byName.set(name, byAddr.get(key));
      return;
    }
    const fn = { name, address, size, origin, info: null, hooked: false, stubs: null, listener: null,
      trampoline: null };
    fns.push(fn);
    byAddr.set(key, fn);
    byName.set(name, fn);
  }

  // A function that calls fork()/vfork() itself is never a transaction: the new process cannot be
  // rolled back, and the memory log would follow its thread with Stalker into fork(), where Frida
  // loses the child: a child forked from translated code in a process that is itself a fork child
  // escapes child gating, and with fork excluded from Stalker it resumes in the parent's code cache,
  // which Frida frees in the child (healer run --follow-children against a prefork server: the
  // first heal in a connection child crashed it). Found by scanning each function's direct calls
  // for the PLT stubs of fork/vfork/_Fork (docs/agent.md, "fork").
  const FORK_CALLS = ['fork', 'vfork', '_Fork'];
  const MAX_SCAN = 64 * 1024; // bytes of one function scanned for calls

  function forkSlots() {
    const slots = new Set();
    for (const i of Process.mainModule.enumerateImports()) {
      if (FORK_CALLS.indexOf(i.name) >= 0 && i.slot) slots.add(i.slot.toString());
    }
    return slots;
  }

  // The GOT slot a PLT stub jumps through (`[endbr64;] [bnd] jmp [rip+d]`), or null.
  function pltSlot(address) {
    let insn;
    try {
      insn = Instruction.parse(address);
    } catch (e) {
      return null; // not code (a call into data is not a PLT stub)
    }
    if (insn.mnemonic === 'endbr64') insn = Instruction.parse(insn.next);
    if (insn.mnemonic !== 'jmp' || insn.operands[0].type !== 'mem' || insn.operands[0].value.base !== 'rip') {
      return null;
    }
    return insn.next.add(insn.operands[0].value.disp).toString();
  }

  function callsFork(fn, slots, stubs) {
    const end = fn.address.add(Math.min(fn.size, MAX_SCAN));
    for (let a = fn.address; a.compare(end) < 0;) {
      let insn;
      try {
        insn = Instruction.parse(a);
      } catch (e) {
        return false; // undecodable bytes (data in .text): stop, the calls seen so far were not fork
      }
      if (insn.mnemonic === 'call' && insn.operands[0].type === 'imm') {
        const target = ptr(insn.operands[0].value).toString();
        if (!stubs.has(target)) stubs.set(target, slots.has(pltSlot(ptr(target))));
        if (stubs.get(target)) return true;
      }
      a = insn.next;
    }
    return false;
  }

  function markForkers() {
    const slots = forkSlots();
    if (slots.size === 0) return;
    const stubs = new Map(); // call target -> is a fork PLT stub
    for (const fn of fns) {
      if (fn.origin === 'symbol' && fn.size > 0 && callsFork(fn, slots, stubs)) {
        fn.forks = true;
        note(fn, 'calls fork(): a new process cannot be rolled back, and Frida loses a child forked under the memory log');
      }
    }
  }

  function discover() {
    const main = Process.mainModule;
    const inMain = a => a.compare(main.base) >= 0 && a.compare(main.base.add(main.size)) < 0;
    for (const s of main.enumerateSymbols()) {
      if (s.type === 'function' && !s.address.isNull() && inMain(s.address) && !NOT_FUNCTIONS.has(s.name)) {
        register(s.name, s.address, s.size || 0, 'symbol');
      }
    }
    for (const e of main.enumerateExports()) {
      if (e.type === 'function' && !NOT_FUNCTIONS.has(e.name)) register(e.name, e.address, 0, 'export');
    }
    // Imports are listed and can be named in a LIST, alerted or injected; ALL and COSAK cover the
    // executable's own functions only (hooking strlen and friends would supervise libc).
    for (const i of main.enumerateImports()) {
      if (i.type === 'function' && i.address && !byAddr.has(i.address.toString())) {
        register(i.name, i.address, 0, 'import');
      }
    }
    infos = Memory.alloc(Sead.txn.FN_INFO_SIZE * (fns.length + 256));
    if (!viaInterceptor) Sead.stubs.init(fns.length + 256);
    fns.forEach((fn, i) => attachInfo(fn, i));
    markForkers();
  }

  function attachInfo(fn, i) {
    fn.info = infos.add(Sead.txn.FN_INFO_SIZE * i);
    fn.info.add(INFO.index).writeU64(i);
    fn.info.add(INFO.address).writeU64(uint64(fn.address.toString()));
    byInfoKey.set(fn.info.toString(), fn);
  }

  // A function by name: the main executable first, then its imports, then any loaded module.
  function resolve(name) {
    if (byName.has(name)) return byName.get(name);
    let address = null;
    const imp = Process.mainModule.enumerateImports().find(i => i.name === name && i.address);
    if (imp !== undefined) address = imp.address;
    if (address === null) address = Module.findGlobalExportByName(name);
    if (address === null) return null;
    if (byAddr.has(address.toString())) return byAddr.get(address.toString());
    if (extra.length >= 256) return null; // FnInfo slots reserved by discover()
    register(name, address, 0, imp !== undefined ? 'import' : 'library');
    const fn = byAddr.get(address.toString());
    extra.push(fn);
    attachInfo(fn, fns.indexOf(fn));
    return fn;
  }

  // Frida's on-leave trampoline of a function hooked with Interceptor.attach.
  // Decoded from the patched prologue: it jumps to the on-enter trampoline `push [rip+d]; jmp
  // thunk`; the on-leave one pushes the same slot.
  function findTrampoline(address) {
    const enter = jumpTarget(address);
    if (enter === null || !isPushRip(enter)) return null;
    const slot = enter.add(6).add(enter.add(2).readS32());
    for (let a = enter.add(6); a.compare(enter.add(96)) < 0; a = a.add(1)) {
      if (isPushRip(a) && a.add(6).add(a.add(2).readS32()).equals(slot)) return a;
    }
    return null;
  }

  function isPushRip(at) { return at.readU8() === 0xff && at.add(1).readU8() === 0x35; }

  // Where the `jmp` at `at` goes (direct or through a rip-relative slot), or null.
  function jumpTarget(at) {
    const j = Instruction.parse(at);
    if (j.mnemonic !== 'jmp') return null;
    const op = j.operands[0];
    return op.type === 'imm' ? ptr(op.value)
      : op.type === 'mem' && op.value.base === 'rip' ? j.next.add(op.value.disp).readPointer() : null;
  }

  // Interceptor's enter and leave thunks, shared by every function hooked with
  // Interceptor.attach (the input calls here, the wire's I/O calls): each trampoline is
  // `push [rip+d]; jmp thunk`. [] while no input call is hooked.
  function thunks() {
    for (const address of inputAddresses) {
      const leave = findTrampoline(address);
      if (leave === null) continue;
      return [jumpTarget(jumpTarget(address).add(6)), jumpTarget(leave.add(6))].filter(t => t !== null);
    }
    return [];
  }

  // How covered functions are hooked (config.hooks, chosen by the host): 'stubs', each function's
  // own entry/exit stubs (65_stubs.js), or 'interceptor', Interceptor.attach with txn.c's C
  // listener, for processes whose forked children are instrumented too (healer --follow-children).
  // Measured with tests/healer/test_lifecycle.py's forking server (a worker forks a child per
  // connection, each gated and instrumented): with the stubs, a child crashed inside Frida's
  // child gating in 1 to 5 runs of 16-20 (with replaceFast hooks, and with only the stubs' memory
  // mapped); with Interceptor.attach and no stubs, 0 of 56.
  let viaInterceptor = false;

  function hook(fn) {
    if (fn.hooked) return true;
    if (fn.forks) return false; // listed as unhookable by markForkers()
    if (fn.size !== 0 && fn.size < MIN_HOOK_SIZE) {
      note(fn, `${fn.size} bytes: too small for a 5-byte jump`);
      return false;
    }
    // A function that is only `jmp elsewhere` (e.g. `ap_strchr_c: jmp strchr@plt`): Frida follows
    // the jump and would hook the target (libc's strchr) for every caller in the process.
    if (fn.origin !== 'import' && Instruction.parse(fn.address).mnemonic === 'jmp') {
      note(fn, 'a jump thunk: hooking it would hook its target for every caller');
      return false;
    }
    if (viaInterceptor) return attach(fn);
    if (fn.stubs === null) {
      fn.stubs = Sead.stubs.make(fn.info);
      fn.trampoline = fn.stubs.leave;
      fn.info.add(INFO.trampoline).writePointer(fn.trampoline);
    }
    try {
      Sead.stubs.hook(fn.address, fn.size, fn.stubs);
    } catch (e) {
      note(fn, e.message);
      return false;
    }
    fn.hooked = true;
    return true;
  }

  // The trampoline (Frida's on-leave one) is learnt after the flush: learnTrampolines().
  function attach(fn) {
    try {
      fn.listener = Interceptor.attach(fn.address, Sead.txn.listener(), fn.info);
    } catch (e) {
      note(fn, e.message);
      return false;
    }
    fn.hooked = true;
    return true;
  }

  function learnTrampolines() {
    Interceptor.flush();
    for (const fn of fns) {
      if (fn.listener === null || fn.trampoline !== null) continue;
      fn.trampoline = findTrampoline(fn.address);
      if (fn.trampoline !== null) fn.info.add(INFO.trampoline).writePointer(fn.trampoline);
    }
  }

  function note(fn, reason) {
    if (!unhookable.some(u => u.name === fn.name)) unhookable.push({ name: fn.name, reason });
  }

  // A thread inside the function keeps returning through its exit stub, which stays.
  function unhook(fn) {
    if (!fn.hooked) return;
    if (fn.listener !== null) {
      fn.listener.detach();
      fn.listener = null;
      fn.trampoline = null;
      fn.info.add(INFO.trampoline).writeU64(0);
    } else {
      Sead.stubs.unhook(fn.address, fn.stubs);
    }
    fn.hooked = false;
  }

  // Parse and check a coverage spec {mode, percent, depth, functions} before anything changes, so
  // a bad reload leaves the old coverage in force.
  function check(next) {
    if (!(next.mode in MODES)) throw new Error(`unknown coverage mode '${next.mode}'`);
    if (next.mode === 'list') {
      const unknown = (next.functions || []).filter(n => resolve(n) === null);
      if (unknown.length) {
        throw new Error(`unknown function(s) in the coverage list: ${unknown.join(', ')}; ` +
          'list names from `nm -D` or the symbol table of the executable');
      }
    }
  }

  function apply(next) {
    check(next);
    Sead.txn.setEnabled(false);
    const chosen = new Set();
    const own = fns.filter(f => f.origin === 'symbol' || f.origin === 'export');
    if (next.mode === 'all' || next.mode === 'cosak') own.forEach(f => chosen.add(f));
    if (next.mode === 'random') {
      const pct = next.percent === undefined ? 50 : next.percent;
      for (const f of own) if (Math.random() * 100 < pct) chosen.add(f);
    }
    if (next.mode === 'list') for (const n of next.functions || []) chosen.add(resolve(n));
    for (const f of fns) if (f.info.add(INFO.inject).readU64().toNumber() !== 0 || f.forced) chosen.add(f);
    for (const f of fns) {
      f.info.add(INFO.supervise).writeU64(f.forced || (next.mode !== 'all' && next.mode !== 'cosak' &&
        chosen.has(f)) ? 1 : 0);
      if (chosen.has(f)) hook(f); else unhook(f);
    }
    learnTrampolines();
    Sead.txn.setMode(MODES[next.mode], next.depth);
    spec = next;
    Sead.txn.setEnabled(true);
  }

  // Supervise `name` from now on whatever the mode (the profile's anomaly detector, `healer alert`).
  function supervise(name) {
    const fn = resolve(name);
    if (fn === null) throw new Error(`no function named '${name}' in the target`);
    fn.forced = true;
    fn.info.add(INFO.supervise).writeU64(1);
    if (hook(fn)) learnTrampolines();
    return fn;
  }

  function ensureHooked(name) {
    const fn = resolve(name);
    if (fn === null) throw new Error(`no function named '${name}' in the target`);
    if (hook(fn)) learnTrampolines();
    return fn;
  }

  const inputListeners = [];
  const inputAddresses = [];

  function installInputHooks() {
    const libc = Process.getModuleByName('libc.so.6');
    for (const name of INPUT_CALLS) {
      const a = libc.findExportByName(name);
      if (a === null) continue;
      inputListeners.push(Interceptor.attach(a, Sead.txn.inputListener()));
      inputAddresses.push(a);
    }
  }

  function unhookAll() {
    for (const f of fns) unhook(f);
    for (const l of inputListeners.splice(0)) l.detach();
    inputAddresses.length = 0;
    Interceptor.flush();
  }

  function init(config) {
    viaInterceptor = config.hooks === 'interceptor';
    discover();
    installInputHooks();
    apply(config.coverage || { mode: 'none' });
  }

  function status() {
    const hooked = fns.filter(f => f.hooked);
    return { mode: spec.mode, depth: spec.depth, percent: spec.percent,
      hooks: viaInterceptor ? 'interceptor' : 'stubs',
      discovered: fns.filter(f => f.origin === 'symbol' || f.origin === 'export').length,
      imports: fns.filter(f => f.origin === 'import').length,
      hooked: hooked.length,
      unhookable: unhookable.slice(),
      calls: hooked.map(f => [f.name, f.info.add(INFO.calls).readU64().toNumber()]).filter(c => c[1] > 0) };
  }

  return { init, apply, check, supervise, ensureHooked, status, resolve, unhookAll, thunks,
    byInfo: p => byInfoKey.get(p.toString()) || { name: String(p), address: p },
    functions: () => fns.map(f => ({ name: f.name, address: f.address.toString(), size: f.size, origin: f.origin,
      hooked: f.hooked })) };
})();
