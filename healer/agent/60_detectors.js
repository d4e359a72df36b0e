// Detectors that heal instead of killing (STEM section 3.4): the exception handler for SIGSEGV,
// SIGBUS, SIGFPE and SIGILL; __stack_chk_fail, __chk_fail/__fortify_fail and abort replaced by
// stubs (fatal.c) that fault at a marker address; and the shadow stack of saved return addresses
// (txn.c saves each supervised frame's return address; a fault reports whether it was overwritten,
// and frames returned past without their epilogue are counted as `stale`).
'use strict';

Sead.detectors = (() => {
  const MARKER = 0x5ead0000;
  const MARKER_KINDS = { 1: 'stack-chk', 2: 'chk-fail', 3: 'fortify-fail', 4: 'abort' };
  const SIGNALS = { 'access-violation': 'SIGSEGV', 'guard-page': 'SIGSEGV', 'stack-overflow': 'SIGSEGV',
    'illegal-instruction': 'SIGILL', arithmetic: 'SIGFPE', 'misaligned-access': 'SIGBUS',
    abort: 'abort', breakpoint: 'SIGTRAP' };
  const FATAL = [['__stack_chk_fail', 'stack_chk_fail', 'orig_stack_chk'],
    ['__chk_fail', 'chk_fail', 'orig_chk'], ['__fortify_fail', 'fortify_fail', 'orig_fortify'],
    ['abort', 'abort_', 'orig_abort']];
  const stats = { faults: 0, healed: 0, replaced: [] };
  let cm = null;
  const replaced = [];

  function classify(d) {
    const m = d.memory ? d.memory.address : null;
    if (m !== null && m.compare(ptr(MARKER)) >= 0 && m.compare(ptr(MARKER + 0x10)) < 0) {
      const kind = MARKER_KINDS[m.sub(ptr(MARKER)).toInt32()];
      return { kind, address: d.address, detail: `${kind} reached inside a supervised function` };
    }
    const kind = SIGNALS[d.type] || d.type;
    const detail = m !== null ? `${d.type} (${d.memory.operation} at ${m})` : d.type;
    // a store that faulted wrote nothing: the memory log must not write its old bytes back there
    const written = m !== null && d.memory.operation === 'write' ? m : null;
    return { kind, address: d.address, detail, written };
  }

  function onException(d) {
    stats.faults++;
    if (Sead.stubs.contains(d.address)) {
      // An exit stub found no record of its call (the records were corrupted): nothing to resume.
      Sead.emit('fault', { kind: 'hook-records-lost', address: String(d.address), thread: Process.getCurrentThreadId(),
        detail: 'a hooked call returned with no record of where to: not healed' });
      Sead.flush();
      return false;
    }
    const fault = classify(d);
    const healed = Sead.txn.healFault(Process.getCurrentThreadId(), d.context, fault);
    if (healed) stats.healed++;
    return healed;
  }

  function init() {
    const libc = Process.getModuleByName('libc.so.6');
    const symbols = { sead_current_thread: Sead.txn.module().sead_current_thread, gettid: libc.getExportByName('gettid') };
    const targets = [];
    for (const [name, stub, orig] of FATAL) {
      const addr = libc.findExportByName(name);
      symbols[orig] = addr === null ? ptr(0) : addr;
      if (addr !== null) targets.push([name, stub, addr]);
    }
    cm = new CModule(CSOURCE['fatal.c'], symbols);
    Process.setExceptionHandler(onException);
    for (const [name, stub, addr] of targets) {
      Interceptor.replace(addr, cm[stub]);
      replaced.push([name, stub, addr]);
      stats.replaced.push(name);
    }
  }

  function revert() {
    for (const [, , addr] of replaced) Interceptor.revert(addr);
    replaced.length = 0;
    Interceptor.flush();
  }

  return { init, revert, status: () => Object.assign({}, stats) };
})();
