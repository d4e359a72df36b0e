// Test-only stand-in for the agent core (00_core.js/50_txn.js): just enough of `Sead` to drive
// 20_memlog.js directly. A hooked function runs as a transaction; on leave it is committed, or
// rolled back when the test asked for aborts (no fault needed: rollback on a normal return must
// leave memory exactly as it was at entry).
const Sead = {
  config: {},
  plugins: [],
  use(p) { this.plugins.push(p); },
  emit(type, fields) { send({ type: 'event', event: type, fields }); },
};
