// Test-only: the driver half of the stand-in core (appended after 20_memlog.js).
rpc.exports = {
  init(cfg, fnName, abortOnLeave) {
    Sead.config = cfg;
    for (const p of Sead.plugins) if (p.init) p.init(cfg);
    const fn = Process.mainModule.getExportByName(fnName);
    let nextId = 1;
    Interceptor.attach(fn, {
      onEnter() {
        this.tx = { id: nextId++, threadId: this.threadId, entrySp: this.context.sp };
        Sead.memlog.mark(this.tx);
      },
      onLeave() {
        if (abortOnLeave) Sead.memlog.rollback(this.tx);
        else Sead.memlog.commit(this.tx);
      },
    });
  },
  stats() { return Sead.memlog.stats(); },
};
