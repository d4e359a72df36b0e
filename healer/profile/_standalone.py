"""A minimal host for healer/agent/40_profile.js, for profile mode and anomaly detection.

Profile mode records calls; it needs no transactions, memory log or gateway, so `healer profile`
loads the profile plugin inside this small frame instead of the whole agent: a ``Sead`` with
``use``/``emit`` and Interceptor hooks that call the plugin's ``onCall``/``onReturn``. Fault
injection and healing need the whole agent (rollback, value choice at the epilogue):
``healer/profile/_agent.py`` drives it for the SEV evaluation.

Frame calls follow docs/agent.md, so the same plugin file runs unchanged inside the full agent.
"""

from __future__ import annotations

import json
from importlib import resources

PRELUDE = r"""
const Sead = {
  config: {}, wantCalls: false, plugins: [],
  use(p) { this.plugins.push(p); },
  emit(type, fields) { send(Object.assign({ type: type }, fields)); },
};
"""

# Recording without JavaScript on the hot path: C listeners append fixed-size records to a ring in
# target memory; a timer drains it to the host as binary. A record is 6 x u64: seq (written last,
# so the drainer never reads a half-written one), function index << 1 | is_return, thread id, then
# three arguments or the return value. A ring overrun is counted and reported, never silent.
RECORDER_C = r"""
#include <gum/guminterceptor.h>

typedef struct { guint64 seq, fn, tid, a0, a1, a2; } Rec;
extern guint64 ring_head;
extern Rec ring[];

static Rec * take (guint64 * seq) {
  *seq = (guint64) g_atomic_pointer_add ((gssize *) &ring_head, 1);
  return &ring[*seq & RING_MASK];
}

void on_enter (GumInvocationContext * ic) {
  guint64 seq;
  Rec * r = take (&seq);
  r->fn = (guint64) GPOINTER_TO_SIZE (gum_invocation_context_get_listener_function_data (ic)) << 1;
  r->tid = gum_invocation_context_get_thread_id (ic);
  r->a0 = (guint64) gum_invocation_context_get_nth_argument (ic, 0);
  r->a1 = (guint64) gum_invocation_context_get_nth_argument (ic, 1);
  r->a2 = (guint64) gum_invocation_context_get_nth_argument (ic, 2);
  r->seq = seq + 1; /* last: x86-64 keeps stores in order, the drainer checks it */
}

void on_leave (GumInvocationContext * ic) {
  guint64 seq;
  Rec * r = take (&seq);
  r->fn = ((guint64) GPOINTER_TO_SIZE (
      gum_invocation_context_get_listener_function_data (ic)) << 1) | 1;
  r->tid = gum_invocation_context_get_thread_id (ic);
  r->a0 = (guint64) gum_invocation_context_get_return_value (ic);
  r->seq = seq + 1; /* last: x86-64 keeps stores in order, the drainer checks it */
}
"""

EPILOGUE = r"""
(function () {
  const RING = 1 << 18; // records (12 MiB)
  const REC = 48; // bytes
  let recorder = null; // {cm, head, ring, tail, lost, names}

  function startRecorder() {
    const head = Memory.alloc(8);
    const ring = Memory.alloc(RING * REC);
    const src = RECORDER_C.replace(/RING_MASK/g, `${RING - 1}ULL`);
    const cm = new CModule(src, { ring_head: head, ring: ring });
    recorder = { cm: cm, head: head, ring: ring, tail: 0, lost: 0, names: [] };
    setInterval(drain, 20);
  }

  // Send the complete records written since the last drain (as one binary message). The range
  // is copied in one piece and checked through a typed view: a per-record NativePointer read
  // cannot keep up with a busy server.
  function drain() {
    const r = recorder;
    const head = r.head.readU64().toNumber();
    if (head - r.tail > RING) {
      r.lost += head - RING - r.tail;
      r.tail = head - RING;
    }
    const count = head - r.tail;
    if (count === 0) return;
    const buf = new Uint8Array(count * REC);
    for (let i = r.tail, at = 0; i < head;) {
      const off = i % RING;
      const n = Math.min(head - i, RING - off);
      buf.set(new Uint8Array(r.ring.add(off * REC).readByteArray(n * REC)), at);
      at += n * REC;
      i += n;
    }
    const view = new DataView(buf.buffer);
    let done = 0; // complete records: seq (low 32 bits) as expected; stop at one still written
    while (done < count && view.getUint32(done * REC, true) === ((r.tail + done + 1) >>> 0)) done++;
    if (done === 0) return;
    send({ type: 'profile:raw', names: r.names, lost: r.lost }, buf.buffer.slice(0, done * REC));
    r.tail += done;
  }

  function record(fn) {
    recorder.names.push(fn.name);
    const cm = recorder.cm;
    Interceptor.attach(fn.address, { onEnter: cm.on_enter, onLeave: cm.on_leave },
      ptr(recorder.names.length - 1));
  }

  function first(hook, a, b, c) {
    for (const p of Sead.plugins) {
      if (typeof p[hook] === 'function') {
        const r = p[hook](a, b, c);
        if (r !== null && r !== undefined) return r;
      }
    }
    return null;
  }

  // 'name' (the executable), '0x...' (an address) or 'lib!name' (a library's export: library
  // calls in the windows, as the STEM paper's profiler saw them). 'lib' is the module's file name
  // or its start up to a dot ('libc' for libc.so.6, 'libapr-1' for libapr-1.so.0.7.2)
  function resolve(main, name) {
    if (name.startsWith('0x')) return ptr(name);
    const bang = name.indexOf('!');
    if (bang > 0) {
      const lib = name.slice(0, bang);
      const mod = Process.enumerateModules()
        .find((m) => m.name === lib || m.name.startsWith(lib + '.'));
      return mod === undefined ? null : mod.findExportByName(name.slice(bang + 1));
    }
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

  rpc.exports = {
    init(config) {
      Sead.config = config;
      for (const p of Sead.plugins) if (typeof p.init === 'function') p.init(config);
      const main = Process.mainModule;
      const skipped = [];
      // record-only sessions take the C path; with a profile loaded the plugin's JS hooks run
      const fast = config.profile.record && config.profile.functions === undefined;
      if (fast) {
        config.profile.record = false; // the plugin records nothing itself
        startRecorder();
      }
      for (const name of config.functions) {
        const address = resolve(main, name);
        if (address === null) { skipped.push(name + ': not found'); continue; }
        const fn = { name: name, address: address };
        try {
          if (fast) record(fn);
          else attach(fn);
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
    status() {
      if (recorder !== null) drain();
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
    return (f"const RECORDER_C = {json.dumps(RECORDER_C)};\n" + PRELUDE + plugin + EPILOGUE)
