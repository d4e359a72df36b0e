// Test-only stand-in for the agent core (00_core.js, 50_txn.js): just enough of `Sead` to drive
// 10_wire.js and 20_memlog.js directly, without faults. The functions named at init run as
// transactions; on leave each is committed, or aborted (its memory rolled back) when `abort` is
// 'always', or 'negative' and the function returned a negative int.
const Sead = {
  config: {},
  plugins: [],
  use(p) { this.plugins.push(p); },
  each(name, ...args) { for (const p of this.plugins) if (p[name]) p[name](...args); },
  emit(type, fields) { send({ type: 'event', event: type, fields }); },
  log(level, event, fields) { this.emit('log', Object.assign({ level, event }, fields)); },
};
