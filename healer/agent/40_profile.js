// Behaviour profile plugin (Sead.profile): recorder, SEV value scheduling, anomaly detector,
// post-evaluation of heals. Contract: docs/agent.md; tables: healer/profile/_tables.py;
// the host-side twin of the window algorithm: healer/profile/_context.py.
//
// config.profile = {
//   record: bool,          emit every call and return as 'profile:calls' batches
//   args: n,               argument registers recorded per call (default 3)
//   retBits: 32|64,        a 32-bit return value is sign-extended (C int functions)
//   window, strategy, strategies, anomaly: {width, action}, functions: {...}   (agent_tables())
//   fixed: '0' | {fn: '0'}, optional: answer this value for every repair instead of SEV (an
//                          object: per function, the functions it does not name keep SEV)
// }
(function () {
  const ARG_REGS = 6;
  const BATCH = 256;
  const POST_CALLS = 8; // calls watched after a heal

  let cfg = null;
  let width = 15;
  let nargs = 3;
  let retBits = 64;
  let tracking = false; // a profile is loaded: keep the call tree
  let anomalyWidth = 0;
  let batch = [];
  const threads = new Map(); // threadId -> call tree path [{name, args, children: [names]}]
  const rr = new Map(); // function -> round-robin state
  const seenAnomalies = new Set();
  const post = new Map(); // threadId -> {fn, value, expect, left, off: []}
  const returned = new Map(); // threadId -> {name, args, depth} of the call that just returned
  const perFunction = {}; // function -> calls seen
  const stats = { calls: 0, heals: 0, taintDepth: 0, taintedReturns: 0, offProfileReturns: 0,
    anomalies: 0, postOk: 0, postOff: 0 };

  function flush() {
    if (batch.length === 0) return;
    Sead.emit('profile:calls', { events: batch });
    batch = [];
  }

  function stackOf(tid) {
    let s = threads.get(tid);
    if (s === undefined) {
      s = [{ name: null, args: [], children: [] }];
      threads.set(tid, s);
    }
    return s;
  }

  // The window of stack[i] (Figure 4), built only when needed (a heal, an anomaly check): walking
  // outwards, each level's earlier children, most recent first (its last child is the frame we
  // came from), then that level's function.
  function windowAt(stack, i, w) {
    const out = [];
    for (let j = i - 1; j >= 0 && out.length < w; j--) {
      const ch = stack[j].children;
      for (let k = ch.length - 2; k >= 0 && out.length < w; k--) out.push(ch[k]);
      if (stack[j].name !== null && out.length < w) out.push(stack[j].name);
    }
    return out;
  }

  // NativePointer (hex) / Int64 / number -> decimal string, sign-extended from `bits`
  function signed(v, bits) {
    const b = BigInt(bits === undefined ? retBits : bits);
    let x = BigInt(v.toString()) & ((1n << b) - 1n);
    if (x >> (b - 1n)) x -= 1n << b;
    return x.toString();
  }

  // A value as the tables hold it: an address (|v| >= 2^32) is 0, the way agent_tables() turns
  // the training process's addresses into NULL (healer/profile/_tables.py)
  const ADDRESS = 1n << 32n;
  function portable(v) {
    const x = BigInt(v);
    return x >= ADDRESS || x <= -ADDRESS ? '0' : v;
  }

  // Hot path: recording sends raw register values (the host sign-extends them); the call tree is
  // kept only when a profile is loaded (value choice, anomaly detection).
  function onCall(fn, tid, args) {
    stats.calls++;
    perFunction[fn.name] = (perFunction[fn.name] || 0) + 1;
    if (cfg.record) {
      const a = [];
      for (let i = 0; i < nargs; i++) a.push(args[i] === undefined ? '0' : args[i].toString());
      batch.push(['c', tid, fn.name, a]);
      if (batch.length >= BATCH) flush();
    }
    // windows are built over the functions the profile recorded, as in training (coverage may
    // hook more)
    if (!tracking || table(fn.name) === null) return;
    const stack = stackOf(tid);
    returned.delete(tid);
    const top = stack[stack.length - 1];
    top.children.push(fn.name);
    if (top.children.length > width + 1) top.children.shift();
    stack.push({ name: fn.name, args: args, children: [] });
    const p = post.get(tid);
    if (p !== undefined && p.first) {
      p.first = false;
      if (p.expect.length > 0 && p.expect.indexOf(fn.name) < 0) {
        p.off.push(`${fn.name} called after ${p.fn} = ${p.value} (expected ${p.expect.join(' or ')})`);
      }
    }
    if (anomalyWidth > 0) checkAnomaly(fn.name, windowAt(stack, stack.length - 1, anomalyWidth));
  }

  function onReturn(fn, tid, retval) {
    if (cfg.record) {
      batch.push(['r', tid, fn.name, retval.toString()]);
      if (batch.length >= BATCH) flush();
    }
    if (!tracking || table(fn.name) === null) return;
    const stack = stackOf(tid);
    for (let i = stack.length - 1; i > 0; i--) {
      if (stack[i].name === fn.name) {
        // the core may choose a value for this call after it returned (an injected fault is
        // decided at the epilogue): keep what its window needs until the thread's next call
        returned.set(tid, { name: fn.name, args: stack[i].args, depth: i });
        stack.length = i;
        break;
      }
    }
    const p = post.get(tid);
    if (stats.taintDepth > 0) {
      stats.taintedReturns++;
      const t = table(fn.name);
      const value = portable(signed(retval));
      if (t !== null && t.values.indexOf(value) < 0) {
        stats.offProfileReturns++;
        if (p !== undefined) p.off.push(`${fn.name} returned ${value}, never seen in training`);
      }
    }
    if (p !== undefined && --p.left <= 0) finishPost(tid, p);
  }

  function table(name) {
    const fns = cfg.functions;
    if (fns === undefined || !Object.prototype.hasOwnProperty.call(fns, name)) return null;
    return fns[name];
  }

  function checkAnomaly(name, win) {
    const an = cfg.anomaly;
    const t = table(name);
    const key = win.join('|');
    // a function the profile did not record (coverage hooks more) is not judged by it
    if (t === null || t.windowSet.has(key)) return;
    const id = name + '<' + key;
    if (seenAnomalies.has(id)) return;
    seenAnomalies.add(id);
    stats.anomalies++;
    let action = 'log';
    if (an.action === 'supervise' && Sead.coverage !== undefined &&
        typeof Sead.coverage.supervise === 'function') {
      try {
        for (const f of [name].concat(win)) Sead.coverage.supervise(f);
        action = 'supervise';
      } catch (e) {
        action = `log (supervise failed: ${e.message})`;
      }
    }
    Sead.emit('anomaly', { function: name, window: win,
      reason: 'window never seen in training',
      action: action });
  }

  // ---- SEV return-value scheduling (SEV paper, section 3.2) ----

  const strategies = {
    first(t) {
      return [t.values[0], 'first value seen in training'];
    },
    'round-robin'(t, name) {
      // FCFS over all values seen so far, newcomers included at once
      const st = rr.get(name) || { i: 0 };
      rr.set(name, st);
      const v = t.values[st.i % t.values.length];
      st.i++;
      return [v, `value ${(st.i - 1) % t.values.length + 1} of ${t.values.length} in turn`];
    },
    'delayed-round-robin'(t, name) {
      // iterate through the current set before newcomers are considered
      let st = rr.get(name);
      if (st === undefined || st.i >= st.set.length) {
        st = { i: 0, set: t.values.slice() };
        rr.set(name, st);
      }
      const v = st.set[st.i++];
      return [v, `value ${st.i} of a round of ${st.set.length}`];
    },
    'argument-closest'(t, name, frame) {
      if (t.args.length === 0 || frame === null) return strategies.first(t);
      let best = null;
      let bestD = Infinity;
      for (const [a, v] of t.args) {
        let d = 0;
        for (let i = 0; i < a.length; i++) {
          const x = Number(a[i]);
          const y = frame.args[i] === undefined ? 0 : Number(signed(frame.args[i], 64));
          if (x !== y) d += 1 + Math.log2(1 + Math.abs(x - y)) / 64;
        }
        if (d < bestD) {
          bestD = d;
          best = [v, a];
        }
      }
      return [best[0], `closest training arguments (${best[1].join(', ')}), distance ${bestD.toFixed(2)}`];
    },
    context(t, name, frame) {
      const win = frame === null ? [] : frame.window();
      for (let s = win.length; s > 0; s--) {
        const key = win.slice(0, s).join('|');
        const vals = t.ctx[key];
        if (vals !== undefined) {
          const total = vals.reduce((acc, vn) => acc + vn[1], 0);
          return [vals[0][0], `P(${vals[0][0]} | window ${win.slice(0, s).join(' < ')}) = ` +
            `${vals[0][1]}/${total}`];
        }
      }
      const [v] = strategies.first(t);
      return [v, 'window never seen in training: first value seen'];
    },
  };

  // {args, window()} of the innermost open call of `name` on thread `tid` (or of the call that
  // has just returned, when nothing ran on the thread since), or null
  function frameOf(tid, name) {
    const stack = stackOf(tid);
    for (let i = stack.length - 1; i > 0; i--) {
      if (stack[i].name === name) {
        return { args: stack[i].args, window: () => windowAt(stack, i, width) };
      }
    }
    const r = returned.get(tid);
    if (r !== undefined && r.name === name && r.depth === stack.length) {
      return { args: r.args, window: () => windowAt(stack, r.depth, width) };
    }
    return null;
  }

  function chooseValue(fn, tx) {
    const t = table(fn.name);
    if (t === null || t.values.length === 0) return null;
    const strategy = (cfg.strategies && cfg.strategies[fn.name]) || cfg.strategy || 'context';
    const [v, evidence] = strategies[strategy](t, fn.name, frameOf(tx.threadId, fn.name));
    return { value: int64(v), source: 'profile', why: `${strategy}: ${evidence}` };
  }

  // ---- post-evaluation and taint depth (SEV paper, section 3.2) ----

  function postEvaluate(tx, choice) {
    stats.heals++;
    stats.taintDepth++;
    const t = table(tx.fn.name);
    const value = portable(signed(choice.value));
    const expect = t === null ? [] : (t.succ[value] || []);
    const prev = post.get(tx.threadId);
    if (prev !== undefined) finishPost(tx.threadId, prev);
    // the core reports the call's own return (onReturn) before it replaces the value: judge the
    // virtualized value here
    const off = [];
    if (t !== null && t.values.indexOf(value) < 0) {
      stats.offProfileReturns++;
      off.push(`${tx.fn.name} returned ${value}, never seen in training`);
    }
    post.set(tx.threadId, { fn: tx.fn.name, value: value, expect: expect, left: POST_CALLS,
      first: true, off: off });
  }

  function finishPost(tid, p) {
    post.delete(tid);
    const ok = p.off.length === 0;
    if (ok) stats.postOk++; else stats.postOff++;
    Sead.emit('profile:post', { function: p.fn, value: p.value, ok: ok, offProfile: p.off,
      taintDepth: stats.taintDepth });
    if (!ok) {
      Sead.emit('log', { level: 'warning', event: 'heal left the process off-profile',
        function: p.fn, value: p.value, evidence: p.off, taintDepth: stats.taintDepth });
    }
  }

  Sead.profile = {
    chooseValue: chooseValue,
    postEvaluate: postEvaluate,
    window: (tid, name) => { const f = frameOf(tid, name); return f === null ? [] : f.window(); },
    flush: flush,
    stats: () => Object.assign({ perFunction: Object.assign({}, perFunction) }, stats),
  };

  // config.profile in force from now on (init, reload); the call trees and the round-robin and
  // post-evaluation state carry over a reload
  function configure(profile) {
    const fixed = profile ? profile.fixed : undefined;
    const given = fixed === undefined || fixed === null ? []
      : typeof fixed === 'object' ? Object.values(fixed) : [fixed];
    for (const v of given) {
      if (!/^-?[0-9]+$/.test(String(v))) {
        throw new Error(`profile setting fixed must be a decimal integer (got '${v}')`);
      }
    }
    cfg = profile || {};
    width = cfg.window || 15;
    nargs = cfg.args === undefined ? 3 : cfg.args;
    retBits = cfg.retBits || 64;
    tracking = cfg.functions !== undefined;
    for (const name in cfg.functions || {}) {
      cfg.functions[name].windowSet = new Set(cfg.functions[name].windows);
    }
    anomalyWidth = tracking && cfg.anomaly !== undefined ? (cfg.anomaly.width || 0) : 0;
    if (cfg.record || tracking) Sead.wantCalls = true;
  }

  // `fixed` (a decimal string) answers that value for every repair: vanilla error virtualization
  // measured through the same agent path as SEV (bench/sev.py compares the two)
  // (an object: the value per function, e.g. by return type; null for a function it does not name)
  function fixedValue(tx) {
    const own = typeof cfg.fixed !== 'object' || Object.prototype.hasOwnProperty.call(cfg.fixed, tx.fn.name);
    const v = !own ? undefined : typeof cfg.fixed === 'object' ? cfg.fixed[tx.fn.name] : cfg.fixed;
    if (v === undefined) return null;
    return { value: int64(v), source: 'fixed',
      why: `fixed: ${v} for ${tx.fn.name} (vanilla error virtualization, profile setting)` };
  }

  Sead.use({
    name: 'profile',
    init(config) {
      configure(config.profile);
      if (cfg.record) setInterval(flush, 100);
    },
    onReload(config) {
      const next = config.profile;
      if (next === undefined || next === cfg) return;
      if (next !== null && next.record && !cfg.record) {
        throw new Error('recording cannot be turned on by a reload; attach with record set');
      }
      configure(next);
    },
    onCall(fn, threadId, args) {
      if (cfg !== null) onCall(fn, threadId, args);
    },
    onReturn(fn, threadId, retval) {
      if (cfg !== null) onReturn(fn, threadId, retval);
    },
    chooseReturnValue(tx) {
      if (cfg === null) return null;
      const fixed = cfg.fixed !== undefined && cfg.fixed !== null ? fixedValue(tx) : null;
      return fixed !== null ? fixed : chooseValue(tx.fn, tx);
    },
    afterRepair(tx, fault, choice) {
      if (cfg !== null) postEvaluate(tx, choice);
      return null;
    },
    status() {
      flush();
      // every event emitted before a status request reaches the host before its answer
      if (typeof Sead.flush === 'function') Sead.flush();
      return { profile: Sead.profile.stats() };
    },
  });
})();
