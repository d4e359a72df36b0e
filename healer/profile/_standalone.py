"""A minimal host for healer/agent/40_profile.js, for profile mode and for SEV evaluation.

Profile mode records calls; it needs no transactions, memory log or gateway, so `healer profile`
loads the profile plugin inside this small frame instead of the whole agent: a ``Sead`` with
``use``/``emit``, Interceptor hooks that call the plugin's ``onCall``/``onReturn``, and, for the
functions named ``injectable``, a replacement that can fail a call on demand (the SEV paper's
fault-injection control plane): the function body is skipped and the return value comes from the
plugin's ``chooseReturnValue`` (SEV) or from a fixed value (vanilla error virtualization). Skipping
the body at entry needs no rollback: nothing of the failed call ran.

Frame calls follow docs/agent.md, so the same plugin file runs unchanged inside the full agent.
"""

from __future__ import annotations

from importlib import resources

PRELUDE = r"""
const Sead = {
  config: {}, wantCalls: false, plugins: [],
  use(p) { this.plugins.push(p); },
  emit(type, fields) { send(Object.assign({ type: type }, fields)); },
};
"""

EPILOGUE = r"""
(function () {
  const armed = new Map(); // function name -> calls left before the injected failure
  let txid = 0;

  function first(hook, a, b, c) {
    for (const p of Sead.plugins) {
      if (typeof p[hook] === 'function') {
        const r = p[hook](a, b, c);
        if (r !== null && r !== undefined) return r;
      }
    }
    return null;
  }

  function resolve(main, name) {
    if (name.startsWith('0x')) return ptr(name);
    return main.findExportByName(name) || main.findSymbolByName(name);
  }

  function attach(fn) {
    Interceptor.attach(fn.address, {
      onEnter(args) {
        if (Sead.wantCalls) {
          const a = [args[0], args[1], args[2], args[3], args[4], args[5]];
          first('onCall', fn, this.threadId, a);
        }
      },
      onLeave(retval) {
        if (Sead.wantCalls) first('onReturn', fn, this.threadId, retval);
      },
    });
  }

  function replace(fn) {
    const sig = ['int64', 'int64', 'int64', 'int64', 'int64', 'int64'];
    // a fault inside the original must crash the process as it would without us, not become a
    // JavaScript exception in this callback
    const orig = new NativeFunction(fn.address, 'int64', sig, { exceptions: 'propagate' });
    Interceptor.replace(fn.address, new NativeCallback(function (a0, a1, a2, a3, a4, a5) {
      const tid = this.threadId;
      const args = [a0, a1, a2, a3, a4, a5].map((x) => ptr(x.toString()));
      if (Sead.wantCalls) first('onCall', fn, tid, args);
      let ret;
      const left = armed.get(fn.name);
      if (left !== undefined && left <= 1) {
        armed.delete(fn.name);
        const tx = { id: ++txid, parent: null, fn: fn, threadId: tid, depth: 0, args: args };
        const fault = { kind: 'inject', address: fn.address, detail: 'injected failure' };
        const fixed = Sead.config.fixedValue;
        const sev = fixed === undefined || fixed === null;
        let choice = sev ? first('chooseReturnValue', tx, fault) : null;
        if (choice === null) {
          choice = { value: int64(sev ? '-1' : fixed),
            source: 'fixed', why: 'vanilla error virtualization: fixed value' };
        }
        first('afterRepair', tx, fault, choice);
        send({ type: 'inject', function: fn.name, source: choice.source, why: choice.why,
          value: choice.value.toString() });
        ret = choice.value;
      } else {
        if (left !== undefined) armed.set(fn.name, left - 1);
        ret = orig(a0, a1, a2, a3, a4, a5);
      }
      if (Sead.wantCalls) first('onReturn', fn, tid, ptr(ret.toString()));
      return ret;
    }, 'int64', sig));
  }

  rpc.exports = {
    init(config) {
      Sead.config = config;
      for (const p of Sead.plugins) if (typeof p.init === 'function') p.init(config);
      const main = Process.mainModule;
      const skipped = [];
      const injectable = config.injectable || [];
      for (const name of config.functions) {
        const address = resolve(main, name);
        if (address === null) { skipped.push(name + ': not found'); continue; }
        const fn = { name: name, address: address };
        try {
          if (injectable.indexOf(name) >= 0) replace(fn); else attach(fn);
        } catch (e) {
          skipped.push(name + ': ' + e.message);
        }
      }
      return { pid: Process.id, skipped: skipped };
    },
    exports() {
      return Process.mainModule.enumerateExports().filter((e) => e.type === 'function')
        .map((e) => e.name);
    },
    inject(name, nth) {
      if (nth > 0) armed.set(name, nth); else armed.delete(name);
    },
    setFixed(value) {
      Sead.config.fixedValue = value;
    },
    status() {
      const out = {};
      for (const p of Sead.plugins) {
        if (typeof p.status === 'function') Object.assign(out, p.status());
      }
      return out;
    },
  };
})();
"""


def script_source() -> str:
    """The standalone script: the frame around the agent's profile plugin file."""
    plugin = (resources.files("healer") / "agent" / "40_profile.js").read_text()
    return PRELUDE + plugin + EPILOGUE
