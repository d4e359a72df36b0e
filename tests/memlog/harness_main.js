// Test-only: the driver half of the stand-in core (appended after the modules under test).
const _stacks = new Map();
const _native = []; // plugins' C hooks, called like txn.c does: hook(frame, threadId)
Sead.txn = {
  current(threadId) {
    const st = _stacks.get(threadId);
    return st && st.length ? st[st.length - 1] : null;
  },
  addNativeHooks(h) {
    const fn = p => (p ? new NativeFunction(p, 'void', ['pointer', 'uint64']) : null);
    _native.push({ begin: fn(h.begin), commit: fn(h.commit) });
  },
};
// The start of txn.c's Frame: id, fn, sp.
function _frame(tx) {
  const f = Memory.alloc(24);
  f.writeU64(tx.id);
  f.add(16).writePointer(tx.entrySp);
  return f;
}
rpc.exports = {
  init(cfg, fnNames, abort) {
    Sead.config = cfg;
    Sead.each('init', cfg);
    let nextId = 1;
    for (const name of fnNames) {
      Interceptor.attach(Process.mainModule.getExportByName(name), {
        onEnter() {
          let st = _stacks.get(this.threadId);
          if (st === undefined) _stacks.set(this.threadId, st = []);
          this.tx = { id: nextId++, threadId: this.threadId, entrySp: this.context.sp,
            parent: st.length ? st[st.length - 1] : null, fn: { name } };
          st.push(this.tx);
          this.frame = _frame(this.tx);
          for (const h of _native) if (h.begin) h.begin(this.frame, this.threadId);
          Sead.each('onTxBegin', this.tx);
        },
        onLeave(retval) {
          if (abort === 'always' || (abort === 'negative' && retval.toInt32() < 0)) {
            Sead.each('onTxAbort', this.tx, { kind: 'ivp', detail: 'Negative' });
          } else {
            for (const h of _native) if (h.commit) h.commit(this.frame, this.threadId);
            Sead.each('onTxCommit', this.tx);
          }
          _stacks.get(this.threadId).pop();
        },
      });
    }
  },
  status() {
    const s = {};
    for (const p of Sead.plugins) if (p.status) Object.assign(s, p.status());
    return s;
  },
};
