// Repair policy interpreter (Sead.policy). Contract: docs/agent.md; language and compiled form:
// docs/repair-policy.md; compiler: healer/policy/_compile.py (config.policy is its output).
//
// The compiled policy is turned into JavaScript closures once (load/reload), so a repair costs a few
// closure calls and memory accesses, never a round trip to the host. Values are signed 64-bit BigInt.
// A policy owns the decision for the functions it names: an rp whose assertions fail falls back to
// the next rp of the tp, and after the last one to a refusal ({refuse: true}), never to a guess.
(function () {
  const READ = {
    i8: p => BigInt(p.readS8()), u8: p => BigInt(p.readU8()),
    i16: p => BigInt(p.readS16()), u16: p => BigInt(p.readU16()),
    i32: p => BigInt(p.readS32()), u32: p => BigInt(p.readU32()),
    i64: p => BigInt(p.readS64().toString()),
    u64: p => BigInt.asIntN(64, BigInt(p.readU64().toString())),
    ptr: p => BigInt.asIntN(64, BigInt(p.readPointer().toString())),
  };
  const WRITE = {
    i8: (p, v) => p.writeS8(Number(BigInt.asIntN(8, v))),
    u8: (p, v) => p.writeU8(Number(BigInt.asUintN(8, v))),
    i16: (p, v) => p.writeS16(Number(BigInt.asIntN(16, v))),
    u16: (p, v) => p.writeU16(Number(BigInt.asUintN(16, v))),
    i32: (p, v) => p.writeS32(Number(BigInt.asIntN(32, v))),
    u32: (p, v) => p.writeU32(Number(BigInt.asUintN(32, v))),
    i64: (p, v) => p.writeS64(int64(v.toString())),
    u64: (p, v) => p.writeS64(int64(v.toString())),
    ptr: (p, v) => p.writePointer(toPtr(v)),
  };
  const BITS = { i8: 8, u8: 8, i16: 16, u16: 16, i32: 32, u32: 32, i64: 64, u64: 64, ptr: 64 };
  const T = 1n;
  const F = 0n;
  const BINARY = {
    '+': (a, b) => BigInt.asIntN(64, a + b), '-': (a, b) => BigInt.asIntN(64, a - b),
    '*': (a, b) => BigInt.asIntN(64, a * b),
    '/': (a, b) => { if (b === 0n) throw new Error('division by zero'); return BigInt.asIntN(64, a / b); },
    '%': (a, b) => { if (b === 0n) throw new Error('division by zero'); return a % b; },
    '&': (a, b) => a & b, '|': (a, b) => a | b, '^': (a, b) => a ^ b,
    '<<': (a, b) => BigInt.asIntN(64, a << (b & 63n)), '>>': (a, b) => a >> (b & 63n),
    '==': (a, b) => (a === b ? T : F), '!=': (a, b) => (a !== b ? T : F),
    '<': (a, b) => (a < b ? T : F), '<=': (a, b) => (a <= b ? T : F),
    '>': (a, b) => (a > b ? T : F), '>=': (a, b) => (a >= b ? T : F),
  };

  let active = null; // the prepared policy in force (swapped as a whole by reload)
  const attempts = new Map(); // tx -> {entry, next, rp, undo}: the repair options tried so far
  const MAX_ATTEMPTS = 1024; // bound on repairs in flight (a core that never calls afterRepair)
  const stats = { ivpChecks: 0, ivpFailures: 0, repairs: 0, refusals: 0, assertionFailures: 0,
    reloads: 0, reloadsRefused: 0, evalErrors: 0 };

  function toBig(v) {
    if (typeof v === 'bigint') return v;
    if (typeof v === 'number') return BigInt(v);
    return BigInt.asIntN(64, BigInt(v.toString()));
  }

  function toPtr(v) {
    return ptr('0x' + BigInt.asUintN(64, v).toString(16));
  }

  function castTo(type, v) {
    const bits = BigInt(BITS[type]);
    return type[0] === 'i' ? BigInt.asIntN(64, BigInt.asIntN(Number(bits), v))
      : BigInt.asIntN(64, BigInt.asUintN(Number(bits), v));
  }

  function resolveSymbol(name) {
    const main = Process.mainModule;
    const addr = main.findSymbolByName(name) || main.findExportByName(name)
      || Module.findGlobalExportByName(name);
    if (addr === null) throw new Error(`the policy names symbol ${name}, which this process lacks`);
    return toBig(addr);
  }

  function constant(v) {
    const f = () => v;
    f.constant = v; // lets a load from a fixed address build its NativePointer once
    return f;
  }

  // ["op", ...] -> (ctx) => BigInt. `syms` caches resolved addresses for this policy.
  function compileExpr(e, syms) {
    const op = e[0];
    switch (op) {
      case 'k': return constant(BigInt(e[1]));
      case 'rv': return c => c.rvalue();
      case 'ra': return c => c.raddress();
      case 'ss': { const i = e[1]; return c => c.shadowStack(i); }
      case 'arg': { const i = e[1]; return c => c.arg(i); }
      case 'sym': {
        let a = syms.get(e[1]);
        if (a === undefined) { a = resolveSymbol(e[1]); syms.set(e[1], a); }
        return constant(a);
      }
      case 'ld': {
        const read = READ[e[1]];
        if (read === undefined) throw new Error(`unknown type ${e[1]}`);
        const addr = compileExpr(e[2], syms);
        if (addr.constant !== undefined) { const p = toPtr(addr.constant); return () => read(p); }
        return c => read(toPtr(addr(c)));
      }
      case 'cast': { const t = e[1]; const x = compileExpr(e[2], syms); return c => castTo(t, x(c)); }
      case 'neg': { const x = compileExpr(e[1], syms); return c => BigInt.asIntN(64, -x(c)); }
      case '~': { const x = compileExpr(e[1], syms); return c => ~x(c); }
      case '!': { const x = compileExpr(e[1], syms); return c => (x(c) === 0n ? T : F); }
      case '&&': {
        const a = compileExpr(e[1], syms); const b = compileExpr(e[2], syms);
        return c => (a(c) !== 0n && b(c) !== 0n ? T : F);
      }
      case '||': {
        const a = compileExpr(e[1], syms); const b = compileExpr(e[2], syms);
        return c => (a(c) !== 0n || b(c) !== 0n ? T : F);
      }
      default: {
        const f = BINARY[op];
        if (f === undefined) throw new Error(`unknown operator ${JSON.stringify(op)}`);
        const a = compileExpr(e[1], syms); const b = compileExpr(e[2], syms);
        return c => f(a(c), b(c));
      }
    }
  }

  // [lvalue, expr] -> (ctx, out) => void; memory stores record the old bytes in out.undo.
  function compileSet(pair, syms) {
    const lv = pair[0];
    const value = compileExpr(pair[1], syms);
    if (lv[0] === 'rv') return (c, out) => { out.value = value(c); };
    if (lv[0] === 'ra') return (c, out) => { out.raddress = value(c); };
    if (lv[0] !== 'st' || WRITE[lv[1]] === undefined) throw new Error(`cannot assign to ${JSON.stringify(lv)}`);
    const type = lv[1];
    const addr = compileExpr(lv[2], syms);
    const size = BITS[type] / 8;
    const write = WRITE[type];
    const fixed = addr.constant !== undefined ? toPtr(addr.constant) : null;
    return (c, out) => {
      const p = fixed !== null ? fixed : toPtr(addr(c));
      const v = value(c);
      out.undo.push([p, p.readByteArray(size)]);
      write(p, v);
    };
  }

  function prepareEntry(name, e, syms) {
    return {
      name,
      forbidEv: e.forbid_ev === true,
      ivps: e.ivps.map(ivp => ({
        name: ivp.name,
        checks: ivp.checks.map((x, i) => ({ run: compileExpr(x, syms), text: ivp.text[i] })),
      })),
      rps: e.rps.map(rp => ({
        name: rp.name,
        rollback: rp.rollback,
        sets: rp.set.map(pair => compileSet(pair, syms)),
        asserts: rp.assert.map((x, i) => ({ run: compileExpr(x, syms), text: rp.assert_text[i] })),
      })),
    };
  }

  // compiled policy (healer.policy.load) -> prepared policy; throws (naming why) if unusable.
  function load(compiled) {
    if (compiled === null || typeof compiled !== 'object' || compiled.format !== 'sead-policy/1') {
      throw new Error('not a compiled policy (format sead-policy/1): compile it with healer.policy.load');
    }
    const syms = new Map();
    for (const s of compiled.symbols) syms.set(s, resolveSymbol(s));
    const functions = new Map();
    for (const name of Object.keys(compiled.functions)) {
      functions.set(name, prepareEntry(name, compiled.functions[name], syms));
    }
    const fallback = compiled.default ? prepareEntry('*', { ...compiled.default, forbid_ev: false }, syms) : null;
    return { source: compiled.source, sha256: compiled.sha256, functions, fallback };
  }

  function forFunction(name) {
    if (active === null) return null;
    const entry = active.functions.get(name);
    return entry !== undefined ? entry : active.fallback;
  }

  // ctx for a transaction: rvalue/raddress overridable, shadow stack = saved return addresses of
  // the transaction and its ancestors, arguments as saved at entry.
  function makeContext(tx, rvalue) {
    return {
      rvalue: () => toBig(rvalue),
      raddress: () => toBig(currentReturnAddress(tx)),
      shadowStack: i => {
        let t = tx;
        for (let k = 0; k < i && t !== null; k++) t = t.parent;
        if (t === null || t === undefined) throw new Error(`'shadowstack[${i}] is deeper than the transaction stack`);
        return toBig(t.returnAddress);
      },
      arg: i => toBig(tx.args[i]),
    };
  }

  // The return address the function would return to now: the slot at the entry sp, unless it
  // still holds the function's exit stub (which stands for the saved return address).
  function currentReturnAddress(tx) {
    const slot = tx.entrySp.readPointer();
    const trampoline = Sead.txn && Sead.txn.leaveTrampoline ? Sead.txn.leaveTrampoline(tx) : null;
    return trampoline !== null && slot.equals(trampoline) ? tx.returnAddress : slot;
  }

  function holds(check, ctx) {
    try {
      return check.run(ctx) !== 0n;
    } catch (e) {
      stats.evalErrors++;
      return false; // a check that cannot be evaluated does not pass
    }
  }

  // null when every IVP holds, else {ivp, check} naming the first that does not.
  function evaluate(entry, ctx) {
    for (const ivp of entry.ivps) {
      for (const check of ivp.checks) {
        stats.ivpChecks++;
        if (!holds(check, ctx)) {
          stats.ivpFailures++;
          return { ivp: ivp.name, check: check.text };
        }
      }
    }
    return null;
  }

  // Apply rp number `index` of entry: {rp, value (BigInt|null), raddress (BigInt|null), undo}.
  // Inside the rp, 'rvalue and 'raddress read what its earlier actions set (else the ctx's).
  function repair(entry, ctx, index) {
    const rp = entry.rps[index];
    const out = { rp, value: null, raddress: null, undo: [] };
    const inner = Object.assign({}, ctx, {
      rvalue: () => (out.value !== null ? out.value : ctx.rvalue()),
      raddress: () => (out.raddress !== null ? out.raddress : ctx.raddress()),
    });
    try {
      for (const set of rp.sets) set(inner, out);
    } catch (e) {
      undo(out);
      throw e;
    }
    return out;
  }

  function undo(out) {
    for (let i = out.undo.length - 1; i >= 0; i--) out.undo[i][0].writeByteArray(out.undo[i][1]);
    out.undo = [];
  }

  // null when every assertion of the applied rp holds, else the text of the first that does not.
  function check(applied, ctx) {
    for (const a of applied.rp.asserts) if (!holds(a, ctx)) return a.text;
    return null;
  }

  function log(level, event, fields) {
    Sead.emit('log', Object.assign({ level, event }, fields));
  }

  function refuse(tx, why) {
    attempts.delete(tx);
    stats.refusals++;
    log('warning', 'policy-refuse', { function: tx.fn.name, tx: tx.id, why });
    return { refuse: true, why };
  }

  function chooseReturnValue(tx, fault) {
    const entry = forFunction(tx.fn.name);
    if (entry === null) return null;
    let st = attempts.get(tx);
    if (st === undefined) {
      if (attempts.size >= MAX_ATTEMPTS) attempts.clear();
      st = { entry, next: 0, applied: null };
      attempts.set(tx, st);
    }
    const ctx = makeContext(tx, fault && fault.retval !== undefined ? fault.retval : 0);
    while (st.next < entry.rps.length) {
      const index = st.next++;
      try {
        st.applied = repair(entry, ctx, index);
      } catch (e) {
        stats.evalErrors++;
        log('warning', 'policy-rp-failed', { function: tx.fn.name, rp: entry.rps[index].name, error: e.message });
        continue;
      }
      const applied = st.applied;
      const why = `rp ${applied.rp.name} of tp ${entry.name} (${fault && fault.kind ? fault.kind : 'fault'})`;
      if (applied.value === null) {
        if (entry.forbidEv) return refuse(tx, `${why} sets no 'rvalue and ${tx.fn.name} is forbid-ev`);
        attempts.delete(tx); // the value is left to the profile or the heuristic
        return null;
      }
      stats.repairs++;
      const choice = { value: int64(applied.value.toString()), source: 'policy', why };
      if (applied.raddress !== null) choice.raddress = toPtr(applied.raddress);
      return choice;
    }
    if (entry.rps.length === 0 && !entry.forbidEv) { attempts.delete(tx); return null; }
    const tried = entry.rps.map(r => r.name).join(', ');
    if (entry.why) return refuse(tx, `the policy could not be loaded (${entry.why})`);
    return refuse(tx, entry.rps.length === 0 ? `${tx.fn.name} is forbid-ev`
      : `no repair of tp ${entry.name} held (tried ${tried})`);
  }

  function afterRepair(tx, fault, choice) {
    const st = attempts.get(tx);
    if (st === undefined || st.applied === null || choice.source !== 'policy') return null;
    const applied = st.applied;
    const failed = check(applied, makeContext(tx, choice.value));
    if (failed === null) {
      attempts.delete(tx);
      return null;
    }
    undo(applied);
    st.applied = null;
    stats.assertionFailures++;
    const reason = `assertion (${failed}) of rp ${applied.rp.name} failed after the repair`;
    log('warning', 'policy-assertion-failed', { function: tx.fn.name, tx: tx.id, reason });
    return { reason };
  }

  function onTxLeave(tx, retval) {
    const entry = forFunction(tx.fn.name);
    if (entry === null || entry.ivps.length === 0) return null;
    const failed = evaluate(entry, makeContext(tx, retval));
    return failed === null ? null : { reason: `ivp ${failed.ivp} failed: (${failed.check})` };
  }

  // Swap atomically: the new policy is prepared completely before it replaces the old one. The
  // core's reload passes the whole merged config: the same compiled policy again is not a change.
  function install(config, reloading) {
    if (!config || config.policy === undefined) return;
    const same = active !== null && config.policy !== null && typeof config.policy === 'object'
      && config.policy.sha256 === active.sha256 && config.policy.source === active.source;
    if (same) return;
    try {
      const next = config.policy === null ? null : load(config.policy);
      active = next;
      attempts.clear();
      if (reloading) stats.reloads++;
      log('info', 'policy-loaded', { source: next ? next.source : null, sha256: next ? next.sha256 : null });
    } catch (e) {
      if (reloading) {
        stats.reloadsRefused++;
        log('error', 'policy-refused', { why: e.message, kept: active ? active.source : null });
        throw new Error(`policy refused: ${e.message}; the previous policy stays in force`);
      }
      // At start there is no previous policy to keep: fail closed for what it names.
      active = failClosed(config.policy, e.message);
      log('error', 'policy-refused', { why: e.message, kept: null,
        failClosed: Array.from(active.functions.keys()) });
    }
  }

  // A policy that cannot be prepared still says which functions must not get a guessed value:
  // each of them (and, with a default tp, every function) is refused, as if forbid-ev.
  function failClosed(compiled, why) {
    const refuseAll = name => ({ name, forbidEv: true, ivps: [], rps: [], why });
    const functions = new Map();
    const names = compiled && typeof compiled.functions === 'object' && compiled.functions !== null
      ? Object.keys(compiled.functions) : [];
    for (const name of names) functions.set(name, refuseAll(name));
    const fallback = compiled && compiled.default ? refuseAll('*') : null;
    return { source: compiled && compiled.source, sha256: null, functions, fallback };
  }

  Sead.policy = {
    load, forFunction, evaluate, repair, undo, check, makeContext,
    active: () => active,
    // the functions the policy names: the coverage should supervise them
    functions: () => (active ? Array.from(active.functions.keys()) : []),
    stats: () => Object.assign({}, stats),
  };

  // onTxLeave is offered only while the policy has IVPs: the core runs JS at every supervised
  // return when any plugin has that hook (it checks after init and after each reload).
  const plugin = {
    name: 'policy',
    init(config) { install(config, false); offerLeaveHook(); },
    chooseReturnValue,
    afterRepair,
    onReload(config) { install(config, true); offerLeaveHook(); },
    status() {
      return { policy: { source: active ? active.source : null, sha256: active ? active.sha256 : null,
        functions: active ? Array.from(active.functions.keys()) : [], default: !!(active && active.fallback),
        stats: Object.assign({}, stats) } };
    },
  };

  function offerLeaveHook() {
    const entries = active === null ? [] : [...active.functions.values(), active.fallback];
    if (entries.some(e => e !== null && e.ivps.length > 0)) plugin.onTxLeave = onTxLeave;
    else delete plugin.onTxLeave;
  }

  Sead.use(plugin);
})();
