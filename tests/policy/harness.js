// Test harness: 30_policy.js alone, with a stub Sead instead of the agent core (no Interceptor, no
// memlog). The Python side builds transactions through these rpc exports and plays the core's part
// of the hook contract (docs/agent.md): chooseReturnValue, then afterRepair, until a choice holds.
const Sead = {
  plugins: [],
  use(p) { this.plugins.push(p); },
  emit(type, fields) { send(Object.assign({ type }, fields)); },
};
/*POLICY_JS*/
const plugin = Sead.plugins.find(p => p.name === 'policy');

function fakeTx(spec) {
  const frame = Memory.alloc(16);
  const parent = spec.parent ? fakeTx(spec.parent) : null;
  frame.writePointer(ptr(spec.slot !== undefined ? spec.slot : spec.ret));
  return { id: spec.id || 1, parent, fn: { name: spec.fn, address: NULL }, threadId: 1,
    depth: parent ? parent.depth + 1 : 0, entrySp: frame, returnAddress: ptr(spec.ret),
    args: (spec.args || []).map(a => ptr(a)) };
}

function symbolPtr(name) { return Process.mainModule.findSymbolByName(name); }

rpc.exports = {
  init(config) { plugin.init(config); },
  reload(config) {
    try { plugin.onReload(config); return null; } catch (e) { return e.message; }
  },
  status() { return plugin.status(); },
  // as the core does: no onTxLeave hook (a policy without IVPs) means commit
  leave(spec, retval) {
    return plugin.onTxLeave ? plugin.onTxLeave(fakeTx(spec), ptr(retval)) : null;
  },
  hasLeaveHook() { return typeof plugin.onTxLeave === 'function'; },
  // the core's side of a repair: ask for a value, validate it, try the next option, or refuse
  heal(spec, kind) {
    const tx = fakeTx(spec);
    const fault = { kind, address: NULL, detail: '' };
    const reasons = [];
    for (let i = 0; i < 16; i++) {
      const choice = plugin.chooseReturnValue(tx, fault);
      if (choice === null) return { outcome: 'not-policy', reasons };
      if (choice.refuse) return { outcome: 'refused', why: choice.why, reasons };
      const bad = plugin.afterRepair(tx, fault, choice);
      if (bad === null) {
        return { outcome: 'repaired', value: choice.value.toString(), why: choice.why,
          raddress: choice.raddress ? choice.raddress.toString() : null, reasons };
      }
      reasons.push(bad.reason);
    }
    throw new Error('the policy never settled');
  },
  readS32(name) { return symbolPtr(name).readS32(); },
  writeS32(name, v) { symbolPtr(name).writeS32(v); },
  readString(name) { return symbolPtr(name).readUtf8String(); },
  symbol(name) { return symbolPtr(name).toString(); },
  // bench/policy.py: n complete repair decisions (IVPs at leave, rp, assertions) in-process
  time(spec, kind, n) {
    const tx = fakeTx(spec);
    const fault = { kind, address: NULL, detail: '' };
    const start = Date.now();
    for (let i = 0; i < n; i++) {
      if (plugin.onTxLeave) plugin.onTxLeave(tx, ptr(0));
      const choice = plugin.chooseReturnValue(tx, fault);
      if (choice !== null && !choice.refuse) plugin.afterRepair(tx, fault, choice);
    }
    return (Date.now() - start) / n;
  },
  // bench/policy.py: what asking the host for each decision would cost (send, wait for a reply)
  hostRoundTrip(n) {
    const start = Date.now();
    for (let i = 0; i < n; i++) {
      send({ type: 'decide', i });
      recv('decision', () => {}).wait();
    }
    return (Date.now() - start) / n;
  },
};
