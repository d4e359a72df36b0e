// The memory log and rollback (Sead.memlog), STEM section 3.3.1, with gradual commits (section 5).
//
// A thread is followed by Stalker once, on its first supervised call, and stays followed: follow/
// unfollow per call re-translates every block (~1.75 ms a call); only a heal at a fault (which
// resumes the thread outside the code cache) makes it follow again, at once, through a resume stub
// (makeResumeStub), so an open parent transaction and every later one stay logged. Logging is gated
// per thread: the gate is on only while a supervised transaction is open, and it is switched from
// the core's hooks, which run in Frida's own (excluded, hence native) code, so Frida's writes are
// never logged. Every instruction with a memory destination gets inline code (memlog.c) that copies
// the bytes it is about to overwrite into the thread's preallocated log (or calls memlog_store for
// the rare stores it cannot address itself), unless they lie on the thread's own stack below the
// innermost transaction's entry sp (that frame dies with the virtualized return). A transaction's
// marker is the log length at its entry; rollback undoes back to it, newest first. Markers and the
// gate are kept in C (memlog_begin/memlog_commit, native hooks of the core): a supervised call
// enters JavaScript here only to follow a thread the first time (memlog_js_enable) and to roll
// back. docs/memlog-and-wire.md has the details and the limits.

const _memlogModule = (function () {
  // glibc routines that write no memory but their own stack frame and call no application code:
  // a rollback never needs their stores, so they run natively (excludeReadOnly). The string and
  // memory scans, then accessors that only read (ctype tables, errno's address, thread identity
  // and keys: ~290 call sites in Apache and libapr). Never add one that writes memory (memcpy,
  // strcpy, strtol's endptr, a mutex...) or calls back (qsort, bsearch).
  const READ_ONLY = ['strlen', 'strnlen', 'strcmp', 'strncmp', 'strcasecmp', 'strncasecmp',
    'memcmp', 'bcmp', 'memchr', 'memrchr', 'rawmemchr', 'strchr', 'strchrnul', 'strrchr',
    'strstr', 'strspn', 'strcspn', 'strpbrk', '__ctype_b_loc', '__ctype_tolower_loc',
    '__ctype_toupper_loc', 'tolower', 'toupper', '__errno_location', 'pthread_self',
    'pthread_getspecific'];
  const MAX_MARKERS = 64;            // memlog.c
  const MAX_THREADS = 256;
  const STORE_PAGES = 2048;          // memlog.c
  const LOG_STRUCT = 23 * 8 + MAX_MARKERS * 32 + STORE_PAGES * 8; // struct _MemLog
  const F = { buf: 0, cap: 8, len: 16, on: 24, skipLo: 32, skipHi: 40, fsBase: 48, logged: 56,
    loggedBytes: 64, skipped: 72, overflows: 80, unreadable: 88, restored: 96, key: 104,
    refollow: 112, unsupported: 120, blocks: 128, capstone: 136, blocksExcluded: 144, nativeCalls: 152,
    fridaCalls: 160, inlineLogged: 168, n: 176 };
  const MAX_FRIDA_RANGES = 16;

  let cm = null;
  let config = {};
  let logBytes = 4 * 1024 * 1024;
  const threads = new Map();   // threadId -> {threadId, log, buf}
  let refollows = 0;
  // fastFridaMemset, reuseCapstone, widenInlineCache (the entries it set, 0 if none)
  const fridaPatches = { memset: 0, disassembleAt: 0, icEntries: 0 };
  // memlog.c's [lo, hi) pairs of Frida's executable mappings, ending with lo == 0
  const fridaCode = Memory.alloc((2 * MAX_FRIDA_RANGES + 1) * 8);
  // memlog.c's [lo, hi) pairs of the read-only routines run natively (excludeReadOnly)
  const readOnlyCode = Memory.alloc((2 * READ_ONLY.length + 1) * 8);
  const readOnly = [];         // {name, base, size} of each routine excluded
  let resumeStub = null;       // code a healed thread resumes at: re-enters Stalker (makeResumeStub)
  let reenter = null;          // its NativeCallback
  let enableCallback = null;   // memlog_js_enable: memlog_begin on a thread not followed (yet)
  const logs = Memory.alloc(MAX_THREADS * 8); // memlog.c's thread -> MemLog table
  const retPages = Memory.alloc(65536 * 8);   // memlog.c's cache of pages `ret` may return to

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
      memlog_frida_code: fridaCode, memlog_read_only_code: readOnlyCode,
    });
    const opts = { exceptions: 'propagate' };
    cm._abort = new NativeFunction(cm.memlog_abort, 'int64',
      ['pointer', 'uint64', 'int', 'pointer', 'pointer'], opts);
    cm._register = new NativeFunction(cm.memlog_register, 'int', ['pointer'], opts);
    cm._pthreadSelf = new NativeFunction(libc.getExportByName('pthread_self'), 'pointer', []);
    forgetUnmapped(libc);
    excludeFrida();
    if (config.memlog === undefined || config.memlog.excludeReadOnly !== false) excludeReadOnly(libc);
    fastFridaMemset();
    reuseCapstone();
    widenInlineCache();
    makeResumeStub();
  }

  // The inline path reads the old bytes of a store itself only on a page memlog.c's record() has
  // read before (a fault in translated code is never healed); a page that may stop being
  // readable is forgotten first. C listeners: no JavaScript per call.
  function forgetUnmapped(libc) {
    // Not mmap (MAP_FIXED over a readable page): a hook on it broke Frida's child gating, whose
    // fork path maps memory (a forked worker never got its agent, tests/healer/test_fork.py).
    const how = { munmap: 0, mremap: 0, mprotect: 1, brk: 2 }; // memlog.c's FORGET_*
    for (const [name, data] of Object.entries(how)) {
      Interceptor.attach(libc.getExportByName(name), { onEnter: cm.memlog_unmap_enter }, ptr(data));
    }
  }

  // Frida's agent is mapped from a memfd and hidden from enumerateModules(); its code must run
  // natively (it is where the hooks' JavaScript and the exception handler execute). Exclusion only
  // applies to calls: right after a follow, the rest of Frida's own callback runs translated until
  // it returns, so the transform also leaves its instructions unlogged (memlog_frida_code).
  function excludeFrida() {
    const maps = File.readAllText('/proc/self/maps').split('\n');
    let n = 0;
    for (const line of maps) {
      const fields = line.split(/\s+/);
      if (!/frida-agent/.test(line) || fields[1][2] !== 'x') continue;
      if (n === MAX_FRIDA_RANGES) throw new Error('memlog: too many executable Frida mappings');
      const [lo, hi] = line.split(' ')[0].split('-').map(x => ptr('0x' + x));
      Stalker.exclude({ base: lo, size: hi.sub(lo).toUInt32() });
      fridaCode.add(16 * n).writePointer(lo);
      fridaCode.add(16 * n + 8).writePointer(hi);
      n++;
    }
  }

  // Read-only routines run natively: a function that stores only into its own frame (dead when it
  // returns) cannot change what a rollback restores, and following it costs Stalker a block
  // transition per loop exit and a return lookup a call. Their exports are IFUNCs; Frida resolves
  // them to the implementation this CPU runs (__strlen_evex...), the one the GOT of every module
  // points to. Its extent is its FDE in libc's .eh_frame_hdr (glibc's assembly has CFI for every
  // entry); a routine whose FDE is not found as expected stays followed (only speed differs).
  // Stalker.exclude alone covers only a call that targets the routine itself: reached through a
  // PLT stub's jmp, Stalker translated it anyway. memlog.c's transform (read_only_callee) turns
  // such calls into native ones from the ranges in readOnlyCode, and counts blocks translated
  // inside them (blocksExcluded, expected 0; tests/memlog/test_read_only_excluded.py).
  function excludeReadOnly(libc) {
    const hdr = ehFrameHdr(libc);
    let n = 0;
    for (const name of READ_ONLY) {
      const at = libc.findExportByName(name);
      const range = at === null || hdr === null ? null : fdeRange(hdr, at);
      if (range === null || !range.base.equals(at)) continue;
      Stalker.exclude(range);
      readOnlyCode.add(16 * n).writePointer(range.base);
      readOnlyCode.add(16 * n + 8).writePointer(range.base.add(range.size));
      readOnly.push({ name, offset: '0x' + at.sub(libc.base).toString(16), size: range.size });
      n++;
    }
  }

  // The PT_GNU_EH_FRAME segment of a loaded ELF module, or null.
  function ehFrameHdr(m) {
    const phoff = m.base.add(0x20).readU64().toNumber();
    const count = m.base.add(0x38).readU16();
    for (let i = 0; i < count; i++) {
      const ph = m.base.add(phoff + 56 * i);
      if (ph.readU32() === 0x6474e550) return m.base.add(ph.add(16).readU64().toNumber());
    }
    return null;
  }

  // {base, size} of the FDE whose code starts at `at`, from .eh_frame_hdr's sorted table; null
  // unless the encodings are the usual ones (table: datarel sdata4; FDE: pcrel sdata4 start
  // followed by a 4-byte length, checked against the table's start).
  function fdeRange(hdr, at) {
    if (hdr.readU8() !== 1 || hdr.add(1).readU8() !== 0x1b || hdr.add(2).readU8() !== 0x03
        || hdr.add(3).readU8() !== 0x3b) return null;
    const count = hdr.add(8).readU32();
    if (count === 0) return null;
    const table = hdr.add(12);
    const start = i => hdr.add(table.add(8 * i).readS32());
    let lo = 0;
    let hi = count - 1;
    while (lo < hi) {                      // the last entry starting at or below `at`
      const mid = (lo + hi + 1) >> 1;
      if (start(mid).compare(at) <= 0) lo = mid; else hi = mid - 1;
    }
    if (!start(lo).equals(at)) return null;
    const fde = hdr.add(table.add(8 * lo + 4).readS32());
    if (!fde.add(8).add(fde.add(8).readS32()).equals(at)) return null;
    return { base: at, size: fde.add(12).readU32() };
  }

  // Stalker links every branch of a thread's translated code to its target once (backpatching),
  // and each link disassembles the branch with gum_x86_reader_disassemble_instruction_at, which
  // opens a Capstone handle for the call: ~30 KiB calloc'd, zeroed by Frida's own memset one byte
  // an iteration, then filled as a table. With Apache's ~86,000 translations in a crawl
  // (memlog_transform) the memset was 25 % of Apache's CPU and the table 20 %. Both are found in
  // Frida's code by their exact bytes (Frida 17.26); where they are not (another Frida build),
  // nothing is changed and only speed differs. Both are done once, before any thread is
  // followed, when Frida's other threads hardly run.
  //
  // The memset (return dst, fill rdx bytes of dst with sil) is rewritten in place as `rep stosb`,
  // which clobbers no more registers (rax, rcx) and no flags; it stays after a detach.
  const SLOW_MEMSET = '48 89 f8 31 c9 48 39 d1 74 09 40 88 34 08 48 ff c1 eb f2 c3';
  const FAST_MEMSET = [
    0x57,                   // push rdi
    0x48, 0x89, 0xd1,       // mov rcx, rdx
    0x89, 0xf0,             // mov eax, esi
    0xf3, 0xaa,             // rep stosb
    0x5f,                   // pop rdi
    0x48, 0x89, 0xf8,       // mov rax, rdi
    0xc3,                   // ret
  ];
  // gum_x86_reader_disassemble_instruction_at: cs_open(X86, 64), cs_option(DETAIL, ON),
  // cs_disasm(h, address, 16, address, 1, &insn), cs_close. Replaced (Interceptor; reverted at a
  // clean detach, else by the unload) by memlog_disassemble_at, which keeps a followed thread's
  // handle (never closed: one ~30 KiB handle a followed thread).
  const DISASSEMBLE_AT = '55 31 c0 53 48 89 fb 48 83 ec 18 48 89 e5 48 89 44 24 08 e8 ?? ?? ?? ?? ' +
    '48 89 ea be 08 00 00 00 bf 03 00 00 00 e8 ?? ?? ?? ?? 48 8b 3c 24 ba 03 00 00 00 ' +
    'be 02 00 00 00 e8 ?? ?? ?? ?? 48 8b 3c 24 48 89 d9 48 89 de 4c 8d 4c 24 08 ' +
    '41 b8 01 00 00 00 ba 10 00 00 00 e8';

  // The [lo, hi) pairs in fridaCode.
  function fridaRanges() {
    const out = [];
    for (let i = 0; fridaCode.add(16 * i).readU64().toNumber() !== 0; i++) {
      out.push([fridaCode.add(16 * i).readPointer(), fridaCode.add(16 * i + 8).readPointer()]);
    }
    return out;
  }

  function scanFridaCode(pattern) {
    const found = [];
    for (const [lo, hi] of fridaRanges()) {
      for (const m of Memory.scanSync(lo, hi.sub(lo).toUInt32(), pattern)) found.push(m.address);
    }
    return found;
  }

  function fastFridaMemset() {
    for (const at of scanFridaCode(SLOW_MEMSET)) {
      Memory.patchCode(at, FAST_MEMSET.length, code => code.writeByteArray(FAST_MEMSET));
      fridaPatches.memset++;
    }
  }

  let disassembleAt = null;     // Frida's function that reuseCapstone replaced

  // Clean detach (the core's onDetach): Frida's own function back while memlog.c surely exists;
  // the unload would revert it too, but the CModule may be freed first.
  function detach() {
    if (disassembleAt === null) return;
    Interceptor.revert(disassembleAt);
    Interceptor.flush();
    disassembleAt = null;
  }

  // Detach, before any hook is removed: every followed thread leaves Stalker. Its code cache keeps
  // the translation of a hooked function's first block, whose jump into Interceptor's trampoline
  // outlives the unhook and would reach the freed trampoline (a target crash ~1 detach in 60
  // after traffic). An unfollow of another thread takes effect at its next transition into
  // Stalker (at the latest the `ret` after the system call it is blocked in), before it can reach
  // a supervised function again; transactions are already disabled, so nothing is left to log.
  function unfollowAll() {
    for (const st of threads.values()) Stalker.unfollow(st.threadId);
  }

  function reuseCapstone() {
    const found = scanFridaCode(DISASSEMBLE_AT);
    if (found.length !== 1) return;
    Interceptor.replace(found[0], cm.memlog_disassemble_at);
    disassembleAt = found[0];
    fridaPatches.disassembleAt++;
  }

  // Every indirect call, jump and return of translated code looks its target up in an inline
  // cache of the branch site; a miss switches into Stalker's runtime (saves the caller-saved
  // registers, flags, fxsave and the AVX upper halves) to find the block. Frida's default is 2
  // entries a site, fewer than the targets of Apache's returns (apr_palloc's, called from dozens
  // of sites) and hook dispatch (ap_run_*): 32 took 5 % of Apache's CPU under COSAK (most of the
  // switches left were excluded calls: skipHookCode). Gum's `ic-entries`
  // (2..32) is a construct-only property not exposed to JavaScript, so the field is set in the JS
  // runtime's GumStalker before any thread is followed (every site is then emitted with, and
  // backpatched against, the same count). 32 is the property's own maximum: a block's data must
  // fit what Stalker reserves for it (1 KiB: 63 entries at most). The object is found by its trust
  // threshold: set to two marker values in turn, exactly one word of Frida's writable memory
  // follows both. The layout (Frida 17.26: ic_entries at +24, trust_threshold at +192, page_size
  // at +152) is checked (ic 2, the page size) before anything is written; otherwise nothing
  // changes but speed.
  const IC_ENTRIES = 32;
  const IC_AT = 24;
  const TRUST_AT = 192;
  const PAGE_SIZE_AT = 152;

  function widenInlineCache() {
    const stalker = findStalker();
    if (stalker === null || stalker.add(IC_AT).readU32() !== 2
        || stalker.add(PAGE_SIZE_AT).readU64().toNumber() !== Process.pageSize) return;
    stalker.add(IC_AT).writeU32(IC_ENTRIES);
    fridaPatches.icEntries = IC_ENTRIES;
  }

  function findStalker() {
    const old = Stalker.trustThreshold;
    const marks = [0x5ead7a11, 0x5ead7a12];
    Stalker.trustThreshold = marks[0];
    const hits = [];
    // Frida's heap is anonymous and cloaked from Process.enumerateRanges(); its segments were
    // seen from 0.5 to 11 MiB in Apache. Mappings of 64 MiB and more (the server's big
    // allocations) are not scanned, so the time stays bounded (Apache: 56 MB, ~40 ms, at attach).
    for (const line of File.readAllText('/proc/self/maps').split('\n')) {
      const m = /^([0-9a-f]+)-([0-9a-f]+) rw\S+ \S+ \S+ 0\s*$/.exec(line);
      if (m === null) continue;
      const size = parseInt(m[2], 16) - parseInt(m[1], 16);
      if (size >= 64 * 1024 * 1024) continue;
      for (const hit of Memory.scanSync(ptr('0x' + m[1]), size, '11 7a ad 5e')) {
        hits.push(hit.address);
      }
    }
    Stalker.trustThreshold = marks[1];
    const found = hits.filter(at => at.readU32() === marks[1]);
    Stalker.trustThreshold = old;
    return found.length === 1 ? found[0].sub(TRUST_AT) : null;
  }

  // The hooks' own code runs translated on a followed thread but stores only into its own frame
  // below the caller's sp (saved registers, dead when it returns) and into the agent's records:
  // the transform leaves it uninstrumented, like Frida's own code, and its calls of code in these
  // ranges run natively (memlog.c's frida_callee). Two kinds: the per-function entry and exit
  // stubs of the covered functions (Sead.stubs.range(), twice a hooked call), and Interceptor's
  // enter and leave thunks of the input and I/O calls (Sead.coverage.thunks()), whose extent is
  // up to the first `ret` or `jmp` past every forward conditional jump (the enter thunk has two
  // epilogues). A thunk is only taken when it ends so within 512 bytes and calls into Frida's code
  // (another Frida's thunks stay instrumented: code wrongly taken for a thunk would go unlogged).
  // Looked up at each first follow of a thread until found (the hooks exist by then); without the
  // core's coverage (tests/memlog's stand-in core) they stay instrumented.
  const thunks = [];           // {start, size} of each thunk left uninstrumented
  let stubs = null;            // the stubs' {base, size}, once registered

  function skipHookCode() {
    if (Sead.coverage === undefined) return;
    let n = fridaRanges().length;
    if (stubs === null && Sead.stubs.range() !== null && n < MAX_FRIDA_RANGES) {
      stubs = Sead.stubs.range();
      addFridaRange(n++, stubs.base, stubs.base.add(stubs.size));
    }
    if (thunks.length !== 0) return;
    for (const start of Sead.coverage.thunks()) {
      const end = thunkEnd(start);
      if (end === null) continue;
      if (n === MAX_FRIDA_RANGES) return;
      addFridaRange(n++, start, end);
      thunks.push({ start: start.toString(), size: end.sub(start).toUInt32() });
    }
  }

  function addFridaRange(i, start, end) {
    fridaCode.add(16 * i + 8).writePointer(end);  // the end first: the transform may be reading
    fridaCode.add(16 * i).writePointer(start);
  }

  // The end of the thunk at `start`, or null unless it ends within 512 bytes and calls Frida.
  function thunkEnd(start) {
    let end = start;
    let reach = start;         // the furthest forward target of a conditional jump so far
    let callsFrida = false;
    while (end.sub(start).toUInt32() < 512) {
      const insn = Instruction.parse(end);
      end = insn.next;
      const op = insn.operands[0];
      if (insn.mnemonic === 'call' && op.type === 'imm' && inFridaCode(ptr(op.value))) callsFrida = true;
      if (insn.mnemonic.startsWith('j') && insn.mnemonic !== 'jmp' && op.type === 'imm'
          && ptr(op.value).compare(reach) > 0) reach = ptr(op.value);
      if ((insn.mnemonic === 'ret' || insn.mnemonic === 'jmp') && end.compare(reach) > 0) {
        return callsFrida ? end : null;
      }
    }
    return null;
  }

  function inFridaCode(at) {
    return fridaRanges().some(([lo, hi]) => at.compare(lo) >= 0 && at.compare(hi) < 0);
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

  // Takes effect when the current callback returns (Frida follows the calling thread from there).
  // The transform is memlog.c's, with the thread's log as its data. The event sink is a native
  // no-op (no events are asked for): Frida's default JavaScript sink is stopped and drained on the
  // JS thread, which raced with a follow right after an unfollow and crashed that thread.
  function follow(st) {
    Stalker.follow(st.threadId, { transform: cm.memlog_transform, data: st.log,
      onEvent: cm.memlog_no_events });
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
    st = { threadId, log, buf };
    if (cm._register(log) !== 0) throw new Error(`memlog: more than ${MAX_THREADS} threads`);
    threads.set(threadId, st);
    skipHookCode();
    follow(st);
    return st;
  }

  function openCount(st) { return st.log.add(F.n).readU64().toNumber(); }

  // Undo tx's stores (and those of any open child), newest first. With config.rollback === false
  // (tests that prove the log matters) the entries are dropped without restoring.
  // `written`: where the store that faulted would have written (fault.written), or null. Its page
  // is left alone: the store changed nothing there, and a read-only page (a write to a string
  // literal) would fault again, inside the exception handler, if its old bytes were put back.
  function rollback(tx, written) {
    const st = threads.get(tx.threadId);
    const flag = Memory.alloc(8);
    const page = written ? written.and(ptr('0xfffffffffffff000')) : NULL;
    const restored = st === undefined ? -1
      : cm._abort(st.log, uint64(tx.id), config.rollback === false ? 0 : 1, flag, page).toNumber();
    if (restored < 0) return { restored: 0, complete: false, why: 'no marker for this transaction' };
    const complete = flag.readU64().toNumber() !== 0;
    if (!complete) {
      Sead.log('error', 'memlog-overflow', { tx: tx.id,
        why: `the log (${logBytes} bytes a thread) filled up: rollback is incomplete; raise memlog.bytes` });
    }
    return { restored, complete };
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
    const counters = ['logged', 'loggedBytes', 'skipped', 'overflows', 'unreadable', 'restored',
      'unsupported', 'blocks', 'blocksExcluded', 'nativeCalls', 'fridaCalls', 'inlineLogged'];
    const out = { threads: threads.size, refollows, rollback: config.rollback !== false,
      fridaPatches, readOnly, interceptorThunks: thunks, stubs: stubs === null ? null : stubs.size };
    for (const k of counters) out[k] = 0;
    for (const st of threads.values()) {
      for (const k of counters) {
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

  // Gradual commit, from C (the wire's GRADUAL): memlog_gradual_here makes everything logged so
  // far on the calling thread (its transactions and their ancestors) permanent, before I/O that
  // cannot be taken back.
  function nativeGradual() {
    load();
    return cm.memlog_gradual_here;
  }

  return { detach, unfollowAll, configure, enableThread, rollback, beforeResume, stats, nativeHooks,
    nativeGradual };
})();

Sead.memlog = _memlogModule;

Sead.use({
  name: 'memlog',
  init(config) {
    _memlogModule.configure(config);
    Sead.txn.addNativeHooks(_memlogModule.nativeHooks());
    if (Sead.wire !== undefined) Sead.wire.useGradual(_memlogModule.nativeGradual());
  },
  onTxAbort(tx, fault) { fault.memlog = _memlogModule.rollback(tx, fault.written); },
  beforeResume(tx, context) { _memlogModule.beforeResume(tx, context); },
  status() { return { memlog: _memlogModule.stats() }; },
  beforeUnhook() { _memlogModule.unfollowAll(); },
  onDetach() { _memlogModule.detach(); },
});
