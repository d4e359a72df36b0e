/*
 * The transaction hot path (STEM_Preamble / STEM_Epilogue): Interceptor callbacks in C, because a
 * JS callback costs 1.3-3.3 us a call and this runs on every hooked call. JS is entered only when a
 * plugin asked for per-transaction or per-call JS hooks (cfg->js_*), on injected faults, and from the
 * exception handler (which reads the frames below).
 *
 * Memory shared with 50_txn.js (offsets are mirrored there): `cfg` (Config), `threads` (Thread[]),
 * and per function a FnInfo passed as the listener's function data. All come from Memory.alloc
 * because CModule globals are read-only in this set-up.
 */
#include <gum/guminterceptor.h>

#define MAX_THREADS 256
#define MAX_FRAMES 64

#define MODE_NONE 0
#define MODE_ALL 1   /* every hooked function */
#define MODE_SET 2   /* functions whose FnInfo.supervise is set (RANDOM, LIST) */
#define MODE_COSAK 3 /* within cfg->cosak of the last input system call on this thread */

#define ST_OPEN 0
#define ST_HEALED 1

/* Frame.inject: why the epilogue must abort this transaction (0: it may commit). */
#define INJ_NEXT_CALL 1 /* healer inject --function F */
#define INJ_ALWAYS 2    /* healer inject --function F --always */
#define INJ_RANDOM 3    /* healer inject --probability P */
#define INJ_REFUSED 4   /* a nested transaction's repair was refused: abort this one */
#define INJ_SHADOW 5    /* callee-saved registers changed (shadow stack) */

typedef struct {
  guint64 id, fn, sp, ret;
  guint64 regs[6]; /* rbx rbp r12 r13 r14 r15 */
  guint64 args[6];
  guint64 start, depth, state, inject;
} Frame; /* 160 bytes */

typedef struct {
  guint64 tid;
  gint64 input_depth; /* interceptor depth of the last input call, -1 before any */
  guint64 n;
  guint64 key;        /* thread_key() */
  Frame f[MAX_FRAMES];
} Thread;

typedef struct {
  guint64 index, address, supervise, trampoline, calls, inject;
} FnInfo;

typedef struct {
  guint64 mode, cosak, next_id, js_tx, inject_threshold, rng;
  guint64 supervised, calls, stale, overflow, js_calls, js_input, enabled, shadow, n_native;
} Config;

typedef struct {
  guint64 frame; /* Frame* while supervised, else 0 */
  Thread * thread;
} Invocation;

/* C hooks of plugins (Sead.txn.addNativeHooks): called on the hot path without entering JS. */
typedef void (* TxHook) (Frame * f, guint64 tid);
typedef struct {
  TxHook begin, commit;
} NativeHooks;
#define MAX_NATIVE_HOOKS 8

extern Config cfg;
extern Thread threads[MAX_THREADS];
extern NativeHooks native_hooks[MAX_NATIVE_HOOKS];
/* JS callbacks (NativeCallback), called only when cfg asks for them. */
extern void js_begin (Frame * f);
extern guint64 js_leave (Frame * f, guint64 retval, guint64 * out);
extern void js_call (FnInfo * fn, guint64 tid, gpointer args, guint64 sp);
extern void js_return (FnInfo * fn, guint64 tid, guint64 retval);
extern void js_input (guint64 tid, guint64 fd, gint64 n);

/* TinyCC has no __atomic builtins: lock-prefixed instructions instead. */
static guint64
atomic_inc (guint64 * p)
{
  guint64 v = 1;
  __asm__ __volatile__ ("lock xaddq %0, %1" : "+r" (v), "+m" (*p) : : "memory");
  return v + 1;
}

static int
atomic_cas (guint64 * p, guint64 old, guint64 new_value)
{
  guint64 prev;
  __asm__ __volatile__ ("lock cmpxchgq %2, %1"
      : "=a" (prev), "+m" (*p) : "r" (new_value), "0" (old) : "memory");
  return prev == old;
}

/* This thread's control block address (%fs:0 on x86-64 glibc): a per-thread key that costs one
 * load, where asking Gum for the thread id costs ~70 ns a call. */
static guint64
thread_key (void)
{
  guint64 k;
  __asm__ ("movq %%fs:0, %0" : "=r" (k));
  return k;
}

/* Each thread's slot, found by open addressing on its key and claimed with a CAS. */
static Thread *
thread_slot (GumInvocationContext * ic, int create)
{
  guint64 key = thread_key ();
  guint i, k;
  for (k = 0; k < MAX_THREADS; k++)
  {
    Thread * t;
    i = (guint) (((key >> 12) + k) % MAX_THREADS);
    t = &threads[i];
    if (t->key == key)
      return t;
    if (t->key == 0)
    {
      if (!create)
        return NULL;
      if (atomic_cas (&t->key, 0, key))
      {
        t->input_depth = -1;
        t->tid = ic != NULL ? gum_invocation_context_get_thread_id (ic) : 0;
        return t;
      }
      if (t->key == key)
        return t;
    }
  }
  return NULL;
}

/* The calling thread's slot, its tid refreshed (glibc reuses a dead thread's control block, and
 * with it the key, for a new thread). For JS on the thread itself and the fatal stubs. */
Thread *
sead_current_thread (guint64 tid)
{
  Thread * t = thread_slot (NULL, 1);
  if (t != NULL)
    t->tid = tid;
  return t;
}

/* The slot of thread `tid` seen from another thread (JS status, rare: a scan is fine). */
Thread *
sead_thread (guint64 tid, int create)
{
  guint i;
  for (i = 0; i < MAX_THREADS; i++)
    if (threads[i].key != 0 && threads[i].tid == tid)
      return &threads[i];
  return NULL;
}

static guint64
next_random (void)
{
  /* xorshift: a data race between threads only mixes the state further */
  guint64 x = cfg.rng;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  cfg.rng = x;
  return x;
}

static int
should_supervise (FnInfo * fn, Thread * t, guint depth)
{
  if (fn->supervise)
    return 1; /* RANDOM/LIST picks, and functions forced by an alert or an anomaly */
  switch (cfg.mode)
  {
    case MODE_ALL:
      return 1;
    case MODE_COSAK:
      return t->input_depth >= 0 && (gint64) depth - t->input_depth + 1 <= (gint64) cfg.cosak;
    default:
      return 0;
  }
}

void
on_enter (GumInvocationContext * ic)
{
  FnInfo * fn = GUM_IC_GET_FUNC_DATA (ic, FnInfo *);
  Invocation * inv = GUM_IC_GET_INVOCATION_DATA (ic, Invocation);
  GumCpuContext * c = ic->cpu_context;
  guint depth;
  guint64 tid;
  Thread * t;
  Frame * f;
  int sup;
  guint64 i;

  inv->frame = 0;
  if (!cfg.enabled)
    return;
  t = thread_slot (ic, 1);
  if (t == NULL)
    return;
  tid = t->tid;
  depth = cfg.mode == MODE_COSAK ? gum_invocation_context_get_depth (ic) : 0;
  /* Frames whose entry sp lies below ours were returned past without their epilogue (longjmp,
   * or a smashed return address that still pointed into code): drop and count them. An equal sp
   * is a tail call (jmp) reusing the caller's return slot: that frame is still open. */
  while (t->n > 0 && t->f[t->n - 1].sp < c->rsp)
  {
    t->n--;
    atomic_inc (&cfg.stale);
  }
  if (cfg.js_calls)
    js_call (fn, tid, (gpointer) c, c->rsp);
  sup = should_supervise (fn, t, depth) || fn->inject;
  if (!sup)
    return;
  if (t->n >= MAX_FRAMES)
  {
    atomic_inc (&cfg.overflow);
    return;
  }
  f = &t->f[t->n];
  f->id = atomic_inc (&cfg.next_id);
  f->fn = (guint64) fn;
  f->sp = c->rsp;
  f->ret = *(guint64 *) c->rsp;
  f->regs[0] = c->rbx;
  f->regs[1] = c->rbp;
  f->regs[2] = c->r12;
  f->regs[3] = c->r13;
  f->regs[4] = c->r14;
  f->regs[5] = c->r15;
  f->args[0] = c->rdi;
  f->args[1] = c->rsi;
  f->args[2] = c->rdx;
  f->args[3] = c->rcx;
  f->args[4] = c->r8;
  f->args[5] = c->r9;
  f->depth = depth;
  f->state = ST_OPEN;
  f->inject = fn->inject;
  if (fn->inject == INJ_NEXT_CALL)
    fn->inject = 0;
  if (!f->inject && cfg.inject_threshold != 0 && (next_random () >> 32) < cfg.inject_threshold)
    f->inject = INJ_RANDOM;
  t->n++;
  inv->frame = (guint64) f;
  inv->thread = t;
  atomic_inc (&cfg.supervised);
  fn->calls++;
  for (i = 0; i < cfg.n_native; i++)
    if (native_hooks[i].begin != NULL)
      native_hooks[i].begin (f, tid);
  if (cfg.js_tx)
    js_begin (f);
}

static int
callee_saved_intact (Frame * f, GumCpuContext * c)
{
  return c->rbx == f->regs[0] && c->rbp == f->regs[1] && c->r12 == f->regs[2] &&
      c->r13 == f->regs[3] && c->r14 == f->regs[4] && c->r15 == f->regs[5];
}

static void
restore_callee_saved (Frame * f, GumCpuContext * c)
{
  c->rbx = f->regs[0];
  c->rbp = f->regs[1];
  c->r12 = f->regs[2];
  c->r13 = f->regs[3];
  c->r14 = f->regs[4];
  c->r15 = f->regs[5];
}

void
on_leave (GumInvocationContext * ic)
{
  FnInfo * fn = GUM_IC_GET_FUNC_DATA (ic, FnInfo *);
  Invocation * inv = GUM_IC_GET_INVOCATION_DATA (ic, Invocation);
  Frame * f = (Frame *) inv->frame;
  guint64 retval = (guint64) gum_invocation_context_get_return_value (ic);
  guint64 tid, i, aborted = 0;
  Thread * t;

  if (cfg.js_calls)
    js_return (fn, gum_invocation_context_get_thread_id (ic), retval);
  if (f == NULL)
    return;
  t = inv->thread;
  tid = t->tid;
  if (f->state == ST_OPEN && !f->inject && !callee_saved_intact (f, ic->cpu_context))
  {
    /* Shadow stack: a function must give its caller back rbx, rbp, r12-r15. An overflow that
     * smashed the saved copies is caught here, before the caller runs on corrupted registers. */
    restore_callee_saved (f, ic->cpu_context);
    f->inject = INJ_SHADOW;
    atomic_inc (&cfg.shadow);
  }
  if (f->state == ST_OPEN && (cfg.js_tx || f->inject))
  {
    guint64 value = retval;
    aborted = js_leave (f, retval, &value); /* 0 committed, 1 new value, 2 refused */
    if (aborted == 1)
      gum_invocation_context_replace_return_value (ic, (gpointer) value);
  }
  if (f->state == ST_OPEN && !aborted)
    for (i = 0; i < cfg.n_native; i++)
      if (native_hooks[i].commit != NULL)
        native_hooks[i].commit (f, tid);
  /* pop this frame and anything above it that a heal already resolved */
  if (t->n > 0 && f >= &t->f[0] && f < &t->f[t->n])
    t->n = (guint64) (f - &t->f[0]);
}

/* Input system calls: COSAK counts supervision depth from here (STEM section 3.2). */
void
on_input_enter (GumInvocationContext * ic)
{
  GUM_IC_GET_INVOCATION_DATA (ic, Invocation)->frame =
      (guint64) gum_invocation_context_get_nth_argument (ic, 0);
}

void
on_input_leave (GumInvocationContext * ic)
{
  Thread * t = thread_slot (ic, 1);
  if (t == NULL)
    return;
  t->input_depth = gum_invocation_context_get_depth (ic);
  if (cfg.js_input)
    js_input (t->tid, GUM_IC_GET_INVOCATION_DATA (ic, Invocation)->frame,
        (gint64) gum_invocation_context_get_return_value (ic));
}
