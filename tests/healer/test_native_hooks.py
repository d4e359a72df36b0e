"""A plugin's C hooks (Sead.txn.addNativeHooks) run for every supervised call on the C path: no
JS per transaction, counted in the plugin's own memory."""

from __future__ import annotations

import frida

from healer._agent_source import agent_source

PLUGIN = r"""
Sead.use({
  name: 'ctest',
  init() {
    this.counts = Memory.alloc(16);
    this.cm = new CModule(`
      #include <glib.h>
      extern guint64 counts[2];
      void begin (void * f, guint64 tid) { counts[0]++; }
      void commit (void * f, guint64 tid) { counts[1]++; }
    `, { counts: this.counts });
    Sead.txn.addNativeHooks({ begin: this.cm.begin, commit: this.cm.commit });
  },
  status() {
    return { ctest: [this.counts.readU64().toNumber(), this.counts.add(8).readU64().toNumber()] };
  },
});
"""


def test_native_hooks_count_every_supervised_call(fig1_exes, start_server):
    server = start_server(fig1_exes[("-O2", True)])
    session = frida.attach(server.pid)
    try:
        script = session.create_script(agent_source() + PLUGIN)
        script.load()
        script.exports_sync.init({"coverage": {"mode": "list", "functions": ["bar"]},
                                  "policy": None, "profile": None, "control": None,
                                  "disabled": ["wire", "memlog", "policy", "profile"]})
        client = server.connect()
        for n in range(1, 11):
            assert client.ask("BAR hi") == f"RET 0 {n}"
        assert client.ask("BAR " + "A" * 100) == "RET -1 11"
        status = script.exports_sync.status()
        assert status["txn"]["jsTxHooks"] is False
        assert status["ctest"] == [11, 10]  # the healed call began but never committed
    finally:
        server.close()  # first: Frida frees an agent only when no thread is inside a hook
        session.detach()
