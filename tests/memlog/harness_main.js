// Test-only: the driver half of the stand-in core (appended after the modules under test).
const _stacks = new Map();
Sead.txn = {
  current(threadId) {
    const st = _stacks.get(threadId);
    return st && st.length ? st[st.length - 1] : null;
  },
};
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
          Sead.each('onTxBegin', this.tx);
        },
        onLeave(retval) {
          _stacks.get(this.threadId).pop();
          if (abort === 'always' || (abort === 'negative' && retval.toInt32() < 0)) {
            Sead.each('onTxAbort', this.tx, { kind: 'ivp', detail: 'Negative' });
          } else {
            Sead.each('onTxCommit', this.tx);
          }
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
