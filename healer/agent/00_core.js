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

  // Zeroed memory the agent never frees, for what must outlive its unload: code and records a
  // thread still inside a hooked call returns through after a detach (70_coverage.js). Only the
  // pages a thread touches are backed (MAP_NORESERVE). `exec` makes it writable code; `near`, a
  // module, puts it within a rel32 jump of all of it (tried below the module, then above).
  let mmap = null;
  let munmap = null;
  function permanent(size, exec, near) {
    if (mmap === null) {
      mmap = new NativeFunction(Module.getGlobalExportByName('mmap'), 'pointer',
        ['pointer', 'size_t', 'int', 'int', 'int', 'int64']);
      munmap = new NativeFunction(Module.getGlobalExportByName('munmap'), 'int', ['pointer', 'size_t']);
    }
    const PROT_RW = 3, PROT_EXEC = 4, MAP_PRIVATE_ANON_NORESERVE = 0x02 | 0x20 | 0x4000;
    const MAP_FIXED_NOREPLACE = 0x100000;
    const prot = PROT_RW | (exec ? PROT_EXEC : 0);
    const failed = p => p.equals(ptr(-1));
    if (near === undefined) {
      const p = mmap(ptr(0), size, prot, MAP_PRIVATE_ANON_NORESERVE, -1, 0);
      if (failed(p)) throw new Error(`mmap of ${size} bytes failed: the target is out of memory`);
      return p;
    }
    const step = 16 * 1024 * 1024;
    const lo = near.base.and(ptr(-4096));
    const hi = near.base.add(near.size).add(4095).and(ptr(-4096));
    for (let k = 1; k <= 64; k++) {
      for (const hint of [lo.sub(size + k * step), hi.add(k * step)]) {
        const p = mmap(hint, size, prot, MAP_PRIVATE_ANON_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
        if (!failed(p) && p.equals(hint)) return p;
        if (!failed(p)) munmap(p, size); // a kernel before 4.17 took the flag for a hint
      }
    }
    throw new Error(`no free ${size} bytes within 1 GiB of ${near.name}: its functions cannot be hooked`);
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
    permanent,
    log(level, event, fields) { emit('log', Object.assign({ level, event }, fields)); },
  };
})();
