// The Agent: start-up order, reload, fault injection, alerts, and rpc.exports for the host
// (healer/session.py). Hooks are installed last: Interceptor.flush() lets target threads run our
// callbacks before the rest of the agent exists.
'use strict';

class Agent {
  constructor() {
    this.started = false;
    this.signals = { installed: [], refused: [] };
    this.ownSignals = [];
    this.signalFn = null;
    this.counters = null;
  }

  init(config) {
    if (this.started) throw new Error('agent already initialised');
    Sead.config = config;
    Sead.disable(config.disabled || []);
    Sead.txn.init(config);
    Sead.each('init', config);
    Sead.txn.configure(config);
    Sead.detectors.init(config);
    Sead.coverage.init(config);
    this.installSignals();
    this.started = true;
    Sead.emit('agent:ready', { pid: Process.id, coverage: config.coverage });
    const cov = Sead.coverage.status();
    return { pid: Process.id, discovered: cov.discovered, hooked: cov.hooked, unhookable: cov.unhookable,
      plugins: Sead.plugins.map(p => p.name || '?'), disabled: Sead.disabled.map(p => p.name) };
  }

  // New coverage/policy/profile: every part checks before anything changes; a plugin that throws
  // refuses the reload and the previous configuration stays in force.
  reload(config) {
    const next = Object.assign({}, Sead.config, config);
    if (next.coverage) Sead.coverage.check(next.coverage);
    for (const p of Sead.plugins) if (typeof p.onReload === 'function') p.onReload(next);
    if (config.coverage) Sead.coverage.apply(next.coverage);
    Sead.config = next;
    Sead.txn.configure(next);
    Sead.emit('reload', { coverage: next.coverage });
    return this.status();
  }

  inject(spec) {
    Sead.txn.setInject(spec);
    Sead.emit('log', { level: 'info', event: 'inject-armed', function: spec.function || null,
      probability: spec.probability || 0 });
    return { armed: true };
  }

  alert(spec) {
    let supervised;
    if (spec && spec.function) {
      supervised = [Sead.coverage.supervise(spec.function).name];
    } else {
      Sead.coverage.apply(Object.assign({}, Sead.config.coverage, { mode: 'all' }));
      Sead.config.coverage = Object.assign({}, Sead.config.coverage, { mode: 'all' });
      supervised = ['*'];
    }
    Sead.emit('alert', { supervised, source: spec && spec.source ? spec.source : 'external' });
    return { supervised };
  }

  // Before the host unloads us: unhook everything now, so new calls run natively at once. Frida
  // frees the agent only when no thread is inside a hooked call any more (a thread blocked in
  // read() inside a hooked function holds it): the host does not wait for that.
  prepareDetach() {
    Sead.txn.setEnabled(false);
    Sead.each('beforeUnhook'); // memlog: no thread runs Stalker's copies of hooked code any more
    Sead.coverage.unhookAll();
    Sead.stubs.retire(); // calls still open return through exit stubs that no longer need txn.c
    Interceptor.detachAll(); // the plugins' hooks too: a JS onLeave would wait for the unload
    Sead.each('onDetach'); // no hook can run any more: the wire tells the gateway (UNGUARD)
    Sead.detectors.revert();
    this.restoreSignals();
    Sead.flush();
    return true;
  }

  // The handlers live in this script's CModule, which the unload frees: after a detach the target
  // must meet its normal fate for these signals again, not jump into freed memory.
  restoreSignals() {
    for (const num of this.ownSignals.splice(0)) this.signalFn(num, ptr(0)); // SIG_DFL
  }

  status() {
    const s = { pid: Process.id, txn: Sead.txn.status(), detectors: Sead.detectors.status(),
      coverage: Sead.coverage.status(), signals: this.signals };
    for (const p of Sead.plugins) {
      if (typeof p.status !== 'function') continue;
      try {
        Object.assign(s, p.status());
      } catch (e) {
        s[`${p.name || '?'}:error`] = String(e);
      }
    }
    return s;
  }

  // SIGUSR1/SIGUSR2 as in the paper, unless the target handles them itself (Apache uses SIGUSR1
  // for a graceful restart): then they stay the target's and `healer reload` is the way.
  installSignals() {
    this.counters = Memory.alloc(16);
    const cm = new CModule(CSOURCE['signals.c'], { counters: this.counters });
    const signal = new NativeFunction(Module.getGlobalExportByName('signal'), 'pointer', ['int', 'pointer']);
    for (const [num, name, handler] of [[10, 'SIGUSR1', cm.on_usr1], [12, 'SIGUSR2', cm.on_usr2]]) {
      const prev = signal(num, handler);
      if (prev.isNull() || staleHandler(prev)) {
        this.signals.installed.push(name);
        this.ownSignals.push(num);
      } else {
        signal(num, prev);
        this.signals.refused.push(name);
      }
    }
    this.cm = cm;
    this.signalFn = signal;
    let seen = [0, 0];
    setInterval(() => {
      const now = [this.counters.readU64().toNumber(), this.counters.add(8).readU64().toNumber()];
      if (now[0] !== seen[0]) Sead.emit('reload-request', { signal: 'SIGUSR1' });
      if (now[1] !== seen[1]) Sead.emit('debug', { signal: 'SIGUSR2', status: this.status() });
      if (now[0] !== seen[0] || now[1] !== seen[1]) Sead.flush();
      seen = now;
    }, 200);
  }
}

// A handler left by the agent of the process we were forked from: fork keeps the disposition, but
// Frida unloads the parent's script in the child and with it the CModule the handler lives in (a
// SIGUSR1 then killed every forked worker, and the child's own agent refused the signal as the
// target's). A target's own handler is executable code; SIG_IGN (1) is not a pointer to code either,
// but it is the target's choice, so only unmapped or non-executable addresses count as stale.
function staleHandler(handler) {
  if (handler.compare(ptr(4096)) < 0) return false; // SIG_IGN, SIG_DFL
  const range = Process.findRangeByAddress(handler);
  return range === null || range.protection.indexOf('x') < 0;
}

const agent = new Agent();

rpc.exports = {
  init: config => agent.init(config),
  status: () => agent.status(),
  reload: config => agent.reload(config),
  inject: spec => agent.inject(spec),
  alert: spec => agent.alert(spec),
  prepareDetach: () => agent.prepareDetach(),
  functions: () => Sead.coverage.functions(),
};
