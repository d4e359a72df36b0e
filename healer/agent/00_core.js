// The Sead namespace (docs/agent.md): configuration, batched host events, plugin registry.
// Every other agent file registers with Sead.use() or fills in one of the Sead.* services.
'use strict';

const Sead = (() => {
  const BATCH_MAX = 256; // events per send(): one send() per hot-path event collapses throughput
  const FLUSH_MS = 50;

  let batch = [];
  let timer = null;
  const plugins = [];
  const disabled = [];

  function flush() {
    if (timer !== null) {
      clearTimeout(timer);
      timer = null;
    }
    if (batch.length === 0) return;
    const events = batch;
    batch = [];
    send({ type: 'sead:events', pid: Process.id, events });
  }

  // An event for the host. `heal`, `inject` and `txn:abort` flush at once: an operator watching a
  // heal must not wait for a timer, and faults are rare by construction.
  function emit(type, fields) {
    batch.push(Object.assign({ type, t: Date.now() }, fields));
    if (batch.length >= BATCH_MAX || type === 'heal' || type === 'inject' || type === 'refuse') {
      flush();
    } else if (timer === null) {
      timer = setTimeout(flush, FLUSH_MS);
    }
  }

  function use(plugin) {
    plugins.push(plugin);
  }

  // config.disabled names plugins to leave out (benchmarks of the core alone, tests of one part):
  // they stay registered but none of their hooks is called.
  function disable(names) {
    for (let i = plugins.length - 1; i >= 0; i--) {
      if (names.indexOf(plugins[i].name) >= 0) disabled.push(plugins.splice(i, 1)[0]);
    }
  }

  // Call hook `name` on every plugin that defines it, in registration order; a throwing plugin is
  // logged and skipped so one broken plugin does not take the heal down with it.
  function each(name, ...args) {
    for (const p of plugins) {
      const fn = p[name];
      if (typeof fn !== 'function') continue;
      try {
        fn.apply(p, args);
      } catch (e) {
        emit('log', { level: 'error', event: 'plugin-hook-failed', plugin: p.name || '?', hook: name,
          error: String(e && e.stack ? e.stack : e) });
      }
    }
  }

  // First non-null answer of hook `name`, skipping plugins in `skip`; errors as in each().
  function first(name, skip, ...args) {
    for (const p of plugins) {
      const fn = p[name];
      if (typeof fn !== 'function' || (skip && skip.has(p))) continue;
      try {
        const r = fn.apply(p, args);
        if (r !== null && r !== undefined) return { plugin: p, result: r };
      } catch (e) {
        emit('log', { level: 'error', event: 'plugin-hook-failed', plugin: p.name || '?', hook: name,
          error: String(e && e.stack ? e.stack : e) });
      }
    }
    return null;
  }

  function hasHook(name) {
    return plugins.some(p => typeof p[name] === 'function');
  }

  return {
    config: null,
    wantCalls: false,
    plugins,
    emit,
    flush,
    use,
    disable,
    disabled,
    each,
    first,
    hasHook,
    log(level, event, fields) { emit('log', Object.assign({ level, event }, fields)); },
  };
})();
