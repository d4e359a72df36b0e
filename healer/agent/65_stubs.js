// Per-function entry and exit stubs (Sead.stubs): how a covered function is hooked. The function's
// prologue is patched (Interceptor.replaceFast) to jump to its own entry stub:
//
//   entry:  push r11 ; mov r11, FnInfo ; call commonEnter ; pop r11 ; jmp [original]
//   exit:   lea rsp, [rsp-8] ; push r11 ; mov r11, FnInfo ; call commonLeave ; pop r11 ; ret
//
// (original: Frida's relocated prologue. The FnInfo travels in r11, not as the stub's return
// address: on a followed thread that is an address in Stalker's code cache.)
// commonEnter saves every general register and xmm0-15 (txn.c's Regs) and calls sead_enter, which
// records the call and returns the exit stub, written over the return address; the function
// returns into it, commonLeave calls sead_leave and puts the real return address in the slot the
// exit stub's `ret` pops. Every register is given back as it was, not only the callee-saved ones:
// with -fipa-ra, gcc keeps values in caller-saved registers across a call to a function it knows
// does not clobber them (memlog_nested at -O2 wrote through a lost r11). Interceptor.attach's
// shared thunks cost ~0.45 us a call (full CPU context with fxsave, Frida's invocation stack,
// listener dispatch). Under Stalker each function's jumps are its own inline-cache sites
// (the shared thunks' two indirect jumps had more targets than any cache holds), and the stubs run
// uninstrumented like Frida's code, their calls of commonEnter/commonLeave natively (20_memlog.js).
//
// Everything here is in memory the agent never frees (Sead.permanent): a thread blocked inside a
// hooked call at a detach (Apache in read()) returns through the exit stub long after the script
// and its CModules are gone. The `live` word says whether txn.c still exists; when it is 0, the
// exit stub pops the thread's call record in its own code (the slot lookup of txn.c, in assembly)
// and nothing calls txn.c. It is cleared at the detach (prepareDetach), at any unload
// (Script.bindWeak: a healer killed with SIGKILL unloads us without prepareDetach; an
// rpc.exports.dispose did the same but crashed Frida in forked children), and in a forked child
// (an atfork handler: Frida unloads the child's copy of the script).
'use strict';

Sead.stubs = (() => {
  const STUB_SIZE = 72;
  const ENTER = 0;            // per-function layout: entry stub, the original's address, exit stub
  const ORIGINAL = 32;
  const LEAVE = 40;
  const PROLOGUE_SIZE = 64;   // a relocated prologue, when it is ours (hook())
  const JMP_SIZE = 5;
  const COMMON = 64;          // after the `live` word
  const COMMON_SIZE = 2048;
  const SAVED = ['rax', 'rdi', 'rsi', 'rdx', 'rcx', 'r8', 'r9', 'rbx', 'rbp', 'r10', 'r11', 'r12', 'r13',
    'r14', 'r15'];
  const XMM_AREA = 16 * 16;   // xmm0-15
  const RET_SLOT = XMM_AREA + 8 * SAVED.length + 16; // Regs.ret: past the stub's return and r11
  const KEY = 24;             // txn.c's Thread.key (the offsets of 50_txn.js's T)

  let region = null;          // live word, common code, then one STUB_SIZE slot a function
  let prologues = null;       // PROLOGUE_SIZE a function: the function's own code, so not in range()
  let capacity = 0;
  let used = 0;
  let common = null;          // {enter, leave, forked}

  // Room for `count` functions' stubs; the common code is written at once.
  function init(count) {
    capacity = count;
    const size = COMMON + COMMON_SIZE + STUB_SIZE * count;
    // Near the executable: Interceptor then patches a function with a 5-byte jump (a far one
    // needs 14 bytes, more than short functions have before a branch: Frida refused them).
    region = Sead.permanent(size, true, Process.mainModule);
    prologues = Sead.permanent(PROLOGUE_SIZE * count, true, Process.mainModule);
    region.writeU64(1);
    const { enter, leave } = Sead.txn.enterLeave();
    common = {};
    const w = new X86Writer(region.add(COMMON), { pc: region.add(COMMON) });
    common.enter = w.pc;
    emitCommon(w, enter, 'enter');
    common.leave = w.pc;
    emitCommon(w, leave, 'leave');
    common.forked = w.pc;
    w.putMovRegAddress('rax', region);
    w.putBytes([0x48, 0xc7, 0x00, 0x00, 0x00, 0x00, 0x00]); // mov qword [rax], 0
    w.putRet();
    w.flush();
    if (w.pc.sub(region.add(COMMON)).toInt32() > COMMON_SIZE) throw new Error('stubs: common code overflow');
    const register = new NativeFunction(Module.getGlobalExportByName('__register_atfork'), 'int',
      ['pointer', 'pointer', 'pointer', 'pointer']);
    register(ptr(0), ptr(0), common.forked, ptr(0));
    Script.bindWeak(region, retire);  // called at the unload too, whatever caused it
  }

  // movdqu [rsp+16i], xmmi (store) or movdqu xmmi, [rsp+16i] (load), disp32 form.
  function movdqu(i, store) {
    const rex = i >= 8 ? [0x44] : [];
    return [0xf3].concat(rex, [0x0f, store ? 0x7f : 0x6f, 0x84 | ((i & 7) << 3), 0x24], le32(16 * i));
  }

  function saveRegisters(w) {
    for (const r of SAVED) w.putPushReg(r);
    w.putLeaRegRegOffset('rsp', 'rsp', -XMM_AREA);
    for (let i = 0; i < 16; i++) w.putBytes(movdqu(i, true));
  }

  function restoreRegisters(w) {
    for (let i = 0; i < 16; i++) w.putBytes(movdqu(i, false));
    w.putLeaRegRegOffset('rsp', 'rsp', XMM_AREA);
    for (let i = SAVED.length - 1; i >= 0; i--) w.putPopReg(SAVED[i]);
    w.putRet();
  }

  // commonEnter: sead_enter(FnInfo, Regs rsp) -> exit stub for the return slot, or 0.
  // commonLeave: sead_leave(...) -> the real return address for it.
  function emitCommon(w, cFunction, kind) {
    const skip = `${kind}_skip`;
    const dead = `${kind}_dead`;
    const put = `${kind}_put`;
    saveRegisters(w);
    w.putMovRegAddress('rax', region);
    w.putBytes([0x48, 0x83, 0x38, 0x00]);                     // cmp qword [rax], 0
    w.putJccNearLabel('je', kind === 'enter' ? skip : dead, 'no-hint');
    w.putMovRegReg('rdi', 'r11');
    w.putMovRegReg('rsi', 'rsp');
    w.putMovRegAddress('rax', cFunction);
    w.putCallReg('rax');
    w.putLabel(put);
    w.putTestRegReg('rax', 'rax');
    if (kind === 'enter') {
      w.putJccNearLabel('je', skip, 'no-hint');
    } else {
      w.putJccShortLabel('jne', `${kind}_ok`, 'no-hint');
      w.putBytes([0x0f, 0x0b]);                                 // ud2: no record of this call
      w.putLabel(`${kind}_ok`);
    }
    w.putMovRegOffsetPtrReg('rsp', RET_SLOT, 'rax');
    w.putLabel(skip);
    restoreRegisters(w);
    if (kind === 'leave') emitDetachedLeave(w, dead, put);
  }

  // The exit path once txn.c is gone: find this thread's slot (txn.c's thread_slot) and pop its
  // record of this call (the one whose sp is our return slot) into rax.
  function emitDetachedLeave(w, label, done) {
    const T = Sead.txn.THREAD;
    const shift = Math.log2(Sead.txn.THREAD_STRIDE);
    const callShift = Math.log2(Sead.txn.CALL_SIZE);
    w.putLabel(label);
    w.putBytes([0x64, 0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0]);   // mov rax, fs:[0]
    w.putMovRegReg('rcx', 'rax');
    w.putShrRegU8('rcx', 12);
    w.putMovRegU64('r10', Sead.txn.MAX_THREADS);
    w.putLabel('probe');
    w.putAndRegU32('rcx', Sead.txn.MAX_THREADS - 1);
    w.putMovRegReg('rdx', 'rcx');
    w.putShlRegU8('rdx', shift);
    w.putMovRegAddress('r8', Sead.txn.threads);
    w.putAddRegReg('rdx', 'r8');
    w.putBytes([0x48, 0x39, 0x42, KEY]);                      // cmp [rdx+KEY], rax
    w.putJccShortLabel('je', 'found', 'no-hint');
    w.putIncReg('rcx');
    w.putDecReg('r10');
    w.putJccShortLabel('jne', 'probe', 'no-hint');
    w.putBytes([0x0f, 0x0b]);                                   // ud2: not a thread we saw
    w.putLabel('found');
    w.putMovRegReg('r9', 'rsp');
    w.putAddRegImm('r9', RET_SLOT);
    w.putMovRegRegOffsetPtr('rcx', 'rdx', T.nCalls);
    w.putLabel('pop');
    w.putTestRegReg('rcx', 'rcx');
    w.putJccShortLabel('je', 'lost', 'no-hint');
    w.putDecReg('rcx');
    w.putMovRegReg('r8', 'rcx');
    w.putShlRegU8('r8', callShift);
    w.putAddRegReg('r8', 'rdx');
    w.putBytes([0x4d, 0x39, 0x88].concat(le32(T.calls)));    // cmp [r8+calls], r9
    w.putJccShortLabel('jne', 'pop', 'no-hint');
    w.putMovRegOffsetPtrReg('rdx', T.nCalls, 'rcx');
    w.putMovRegRegOffsetPtr('rax', 'r8', T.calls + 8);
    w.putJmpNearLabel(done);
    w.putLabel('lost');
    w.putBytes([0x0f, 0x0b]);                                   // ud2: no record of this call
  }

  function le32(n) { return [n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, (n >>> 24) & 0xff]; }

  // The entry and exit stubs of the function whose FnInfo is `info`: {enter, leave, original}.
  function make(info) {
    if (used === capacity) throw new Error(`stubs: room for ${capacity} functions only`);
    const prologue = prologues.add(PROLOGUE_SIZE * used);
    const at = region.add(COMMON + COMMON_SIZE + STUB_SIZE * used++);
    const w = new X86Writer(at, { pc: at });
    w.putPushReg('r11');
    w.putMovRegAddress('r11', info);
    w.putCallAddress(common.enter);
    w.putPopReg('r11');
    const jmp = w.pc;
    w.putBytes([0xff, 0x25].concat(le32(at.add(ORIGINAL).sub(jmp.add(6)).toInt32()))); // jmp [rip+d]
    w.flush();
    if (w.pc.compare(at.add(ORIGINAL)) > 0) throw new Error('stubs: entry stub overflow');
    const leave = at.add(LEAVE);
    const v = new X86Writer(leave, { pc: leave });
    v.putLeaRegRegOffset('rsp', 'rsp', -8);                   // the slot for the return address
    v.putPushReg('r11');
    v.putMovRegAddress('r11', info);
    v.putCallAddress(common.leave);
    v.putPopReg('r11');
    v.putRet();
    v.flush();
    if (v.pc.compare(at.add(STUB_SIZE)) > 0) throw new Error('stubs: exit stub overflow');
    return { enter: at.add(ENTER), leave, original: at.add(ORIGINAL), prologue, saved: null };
  }

  // Hook `address` through stubs `s` (from make()): Interceptor.replaceFast, which refuses a
  // function whose first 5 bytes end inside a call (`sub rsp, 8; call f`, or `push rbp; mov rbp,
  // rsp; call f` at -O2 with frame pointers) that Interceptor.attach took. Then the prologue is
  // relocated here (X86Relocator, as Interceptor does: a relocated call returns into the copy,
  // which jumps back) and the function patched with a 5-byte jump. Throws if neither can. Never
  // over another script's patch (Frida: "already replaced"): its unload would restore bytes under
  // ours and free the code our copy jumps to. The copy is the function's own code: it lies
  // outside range(), so the memory log instruments it.
  function hook(address, size, s) {
    try {
      s.original.writePointer(Interceptor.replaceFast(address, s.enter));
    } catch (e) {
      if (!/unable to intercept/.test(e.message) || !relocate(address, size, s)) throw e;
    }
  }

  // `size`: the function's extent (symbol table), scanned for branches into the patched bytes.
  function relocate(address, size, s) {
    const w = new X86Writer(s.prologue, { pc: s.prologue });
    const r = new X86Relocator(address, w);
    let n = 0;
    while (n < JMP_SIZE) {
      n = r.readOne();
      if (n === 0 || (r.eoi && n < JMP_SIZE)) return false;
    }
    if (!size || branchesInto(address, size, n)) return false;
    r.writeAll();
    w.putJmpAddress(address.add(n));
    w.flush();
    if (w.pc.compare(s.prologue.add(PROLOGUE_SIZE)) > 0) {
      throw new Error('stubs: relocated prologue overflow');
    }
    s.original.writePointer(s.prologue);
    s.saved = address.readByteArray(JMP_SIZE);
    Memory.patchCode(address, JMP_SIZE, code => {
      const p = new X86Writer(code, { pc: address });
      p.putJmpAddress(s.enter);
      p.flush();
    });
    return true;
  }

  // Whether any branch of the function at `address` targets its first n bytes past the first
  // instruction (the patch would cut that instruction); undecodable bytes count as yes.
  function branchesInto(address, size, n) {
    const end = address.add(size);
    for (let a = address; a.compare(end) < 0;) {
      let insn;
      try {
        insn = Instruction.parse(a);
      } catch (e) {
        return true;
      }
      const op = insn.operands[0];
      if (insn.groups.indexOf('jump') >= 0 && op !== undefined && op.type === 'imm') {
        const target = ptr(op.value.toString());
        if (target.compare(address) > 0 && target.compare(address.add(n)) < 0) return true;
      }
      a = insn.next;
    }
    return false;
  }

  // Undo hook(): the function runs natively again; a thread inside it still returns through the
  // exit stub, and one inside the relocated prologue finishes it there (the copy stays).
  function unhook(address, s) {
    if (s.saved === null) {
      Interceptor.revert(address);
      return;
    }
    const bytes = s.saved;
    s.saved = null;
    Memory.patchCode(address, JMP_SIZE, code => code.writeByteArray(bytes));
  }

  // txn.c is about to go: exit stubs pop their records themselves from now on.
  function retire() {
    if (region !== null) region.writeU64(0);
  }

  // Where the stubs are, for the memory log: {base, size}.
  function range() {
    return region === null ? null : { base: region, size: COMMON + COMMON_SIZE + STUB_SIZE * capacity };
  }

  function contains(address) {
    const r = range();
    return r !== null && address.compare(r.base) >= 0 && address.compare(r.base.add(r.size)) < 0;
  }

  return { init, make, hook, unhook, retire, range, contains };
})();
