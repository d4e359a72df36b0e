/*
 * The transaction hot path (STEM_Preamble / STEM_Epilogue) in C, because a JS callback costs
 * 1.3-3.3 us a call and this runs on every hooked call. A hooked function's prologue jumps to its
 * own entry stub (70_coverage.js, `Interceptor.replaceFast`), which saves the argument and
 * callee-saved registers and calls sead_enter; sead_enter records the call and returns the
 * function's own exit stub, which the entry stub writes over the return address. The function
 * returns into the exit stub, which calls sead_leave for the real return address. Per function,
 * so that each function's transfers are its own inline-cache sites under Stalker, and no full CPU
 * context (fxsave) and no invocation stack of Frida's is paid (Interceptor.attach's shared thunks
 * cost ~0.45 us a call). JS is entered only when a plugin asked for per-transaction or per-call JS
 * hooks (cfg->js_*), on injected faults, and from the exception handler (which reads the frames).
 *
 * Memory shared with 50_txn.js (offsets are mirrored there): `cfg` (Config), `threads` (Thread
 * slots, THREAD_STRIDE apart, in memory the agent never frees: after a detach, a thread still
 * inside a hooked call returns through the exit stub, which then pops its call record itself),
 * and per function a FnInfo. All come from the agent's allocations because CModule globals are
 * read-only in this set-up.
 */
#include <gum/guminterceptor.h>

#define MAX_THREADS 256
#define MAX_FRAMES 64
#define MAX_CALLS 1024        /* hooked calls open on one thread (recursion deeper runs unhooked) */
#define THREAD_STRIDE 65536   /* a power of two: the stubs' detached path finds a slot by shifts */
#define NEAR_STACK (1 << 20)  /* a call record this far below a new call's sp is stale */

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

/* A hooked call in progress: where its return address lies (the sp at entry) and what it was. */
typedef struct {
  guint64 sp, ret;
  Frame * frame; /* its transaction, or NULL when the call is not supervised */
  guint64 reserved;
} Call; /* 32 bytes: the exit stubs' detached path indexes by shift */

typedef struct {
  guint64 tid;
  gint64 input_depth; /* hooked-call depth of the last input call, -1 before any */
  guint64 n;          /* open transactions (f) */
  guint64 key;        /* thread_key() */
  Frame f[MAX_FRAMES];
  guint64 n_calls;    /* open hooked calls (calls) */
  guint64 reserved[3];
  Call calls[MAX_CALLS];
} Thread; /* offsets in 70_coverage.js (the detached path) and 50_txn.js */

typedef struct {
  guint64 index, address, supervise, trampoline, calls, inject;
} FnInfo; /* trampoline: the function's exit stub */

typedef struct {
  guint64 mode, cosak, next_id, js_tx, inject_threshold, rng;
  guint64 supervised, calls, stale, overflow, js_calls, js_input, enabled, shadow, n_native;
} Config;

/* What an entry or exit stub saved, lowest address first (commonEnter pushes rax first). At entry,
 * ret is the caller's return address and the registers are the arguments; at exit, ret is the
 * slot sead_leave fills with the real return address, rax the return value. */
typedef struct {
  guint8 xmm[256]; /* xmm0-15 */
  guint64 r15, r14, r13, r12, r11, r10, rbp, rbx, r9, r8, rcx, rdx, rsi, rdi, rax;
  guint64 stub;    /* the stub's own return address */
  guint64 r11_;    /* the caller's r11 (r11 above holds the FnInfo) */
  guint64 ret;     /* at the sp the hooked function was entered with */
} Regs;

typedef struct {
  guint64 frame; /* on_enter/on_leave: the recorded call's sp (0: not recorded); input hooks: fd */
} Invocation;

/* C hooks of plugins (Sead.txn.addNativeHooks): called on the hot path without entering JS. */
typedef void (* TxHook) (Frame * f, guint64 tid);
typedef struct {
  TxHook begin, commit;
} NativeHooks;
#define MAX_NATIVE_HOOKS 8

extern Config cfg;
extern guint8 threads[]; /* MAX_THREADS slots, THREAD_STRIDE apart */
extern NativeHooks native_hooks[MAX_NATIVE_HOOKS];
/* JS callbacks (NativeCallback), called only when cfg asks for them. */
extern void js_begin (Frame * f);
extern guint64 js_leave (Frame * f, guint64 retval, guint64 * out);
extern void js_call (FnInfo * fn, guint64 tid, Regs * regs, guint64 sp);
extern void js_return (FnInfo * fn, guint64 tid, guint64 retval);
extern void js_input (guint64 tid, guint64 fd, gint64 n);
extern int gettid (void);

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

#define SLOT(i) ((Thread *) (threads + (guint64) (i) * THREAD_STRIDE))

/* Each thread's slot, found by open addressing on its key and claimed with a CAS (the exit
 * stubs' detached path in 70_coverage.js probes the same way). */
static Thread *
thread_slot (int create)
{
  guint64 key = thread_key ();
  guint i, k;
  for (k = 0; k < MAX_THREADS; k++)
  {
    Thread * t;
    i = (guint) (((key >> 12) + k) & (MAX_THREADS - 1)); /* MAX_THREADS: a power of two */
    t = SLOT (i);
    if (t->key == key)
      return t;
    if (t->key == 0)
    {
      if (!create)
        return NULL;
      if (atomic_cas (&t->key, 0, key))
      {
        t->input_depth = -1;
        t->tid = (guint64) gettid ();
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
  Thread * t = thread_slot (1);
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
    if (SLOT (i)->key != 0 && SLOT (i)->tid == tid)
      return SLOT (i);
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

/* Drop the records of calls returned past without their exit stub (longjmp, or a smashed return
 * address that still pointed into code), i.e. below `sp` on the same stack. An equal sp is a tail
 * call (jmp) reusing the caller's return slot: that call is still open. A record far below (a
 * signal handler on an alternate stack above this one) is left alone. */
static void
drop_stale (Thread * t, guint64 sp)
{
  while (t->n_calls > 0 && t->calls[t->n_calls - 1].sp < sp
      && sp - t->calls[t->n_calls - 1].sp < NEAR_STACK)
    t->n_calls--;
  while (t->n > 0 && t->f[t->n - 1].sp < sp && sp - t->f[t->n - 1].sp < NEAR_STACK)
  {
    t->n--;
    atomic_inc (&cfg.stale);
  }
}

static Frame *
open_frame (FnInfo * fn, Thread * t, Regs * r, guint64 sp, guint depth)
{
  Frame * f = &t->f[t->n];
  f->id = atomic_inc (&cfg.next_id);
  f->fn = (guint64) fn;
  f->sp = sp;
  f->ret = r->ret;
  f->regs[0] = r->rbx;
  f->regs[1] = r->rbp;
  f->regs[2] = r->r12;
  f->regs[3] = r->r13;
  f->regs[4] = r->r14;
  f->regs[5] = r->r15;
  f->args[0] = r->rdi;
  f->args[1] = r->rsi;
  f->args[2] = r->rdx;
  f->args[3] = r->rcx;
  f->args[4] = r->r8;
  f->args[5] = r->r9;
  f->depth = depth;
  f->state = ST_OPEN;
  f->inject = fn->inject;
  if (fn->inject == INJ_NEXT_CALL)
    fn->inject = 0;
  if (!f->inject && cfg.inject_threshold != 0 && (next_random () >> 32) < cfg.inject_threshold)
    f->inject = INJ_RANDOM;
  t->n++;
  atomic_inc (&cfg.supervised);
  fn->calls++;
  return f;
}

/* The plugins' begin hooks, last: the memory log's first follow of a thread starts Stalker in the
 * middle of its hook, and from there the rest of this C code runs translated and logged (a store
 * into the records after it would be rolled back by a heal). */
static void
begin_hooks (Frame * f, Thread * t)
{
  guint64 i;
  for (i = 0; i < cfg.n_native; i++)
    if (native_hooks[i].begin != NULL)
      native_hooks[i].begin (f, t->tid);
  if (cfg.js_tx)
    js_begin (f);
}

/* A call of fn entered with `sp` (where its return address lies) and registers r: recorded, and
 * opened as a transaction if it is supervised. Returns 0 when it was not recorded (it then runs
 * unhooked to its end). */
static int
enter_at (FnInfo * fn, Regs * r, guint64 sp)
{
  Thread * t;
  Call * c;
  guint depth;

  if (!cfg.enabled)
    return 0;
  t = thread_slot (1);
  if (t == NULL)
    return 0;
  drop_stale (t, sp);
  if (t->n_calls >= MAX_CALLS)
  {
    atomic_inc (&cfg.overflow);
    return 0;
  }
  depth = (guint) t->n_calls;
  if (cfg.js_calls)
    js_call (fn, t->tid, r, sp);
  c = &t->calls[t->n_calls];
  c->sp = sp;
  c->ret = r->ret;
  c->frame = NULL;
  if (should_supervise (fn, t, depth) || fn->inject)
  {
    if (t->n < MAX_FRAMES)
      c->frame = open_frame (fn, t, r, sp, depth);
    else
      atomic_inc (&cfg.overflow);
  }
  t->n_calls++;
  if (c->frame != NULL)
    begin_hooks (c->frame, t);
  return 1;
}

/* The entry stub of fn: returns the exit stub to put in place of the return address, or 0. */
guint64
sead_enter (FnInfo * fn, Regs * r)
{
  return enter_at (fn, r, (guint64) &r->ret) ? fn->trampoline : 0;
}

static int
callee_saved_intact (Frame * f, Regs * r)
{
  return r->rbx == f->regs[0] && r->rbp == f->regs[1] && r->r12 == f->regs[2] &&
      r->r13 == f->regs[3] && r->r14 == f->regs[4] && r->r15 == f->regs[5];
}

static void
restore_callee_saved (Frame * f, Regs * r)
{
  r->rbx = f->regs[0];
  r->rbp = f->regs[1];
  r->r12 = f->regs[2];
  r->r13 = f->regs[3];
  r->r14 = f->regs[4];
  r->r15 = f->regs[5];
}

/* The epilogue of a supervised call: shadow-stack check, the plugins' verdict, commit. */
static void
close_frame (Thread * t, Frame * f, Regs * r)
{
  guint64 i, aborted = 0;
  if (f->state == ST_OPEN && !f->inject && !callee_saved_intact (f, r))
  {
    /* Shadow stack: a function must give its caller back rbx, rbp, r12-r15. An overflow that
     * smashed the saved copies is caught here, before the caller runs on corrupted registers. */
    restore_callee_saved (f, r);
    f->inject = INJ_SHADOW;
    atomic_inc (&cfg.shadow);
  }
  if (f->state == ST_OPEN && (cfg.js_tx || f->inject))
  {
    guint64 value = r->rax;
    aborted = js_leave (f, r->rax, &value); /* 0 committed, 1 new value, 2 refused */
    if (aborted == 1)
      r->rax = value;
  }
  if (f->state == ST_OPEN && !aborted)
    for (i = 0; i < cfg.n_native; i++)
      if (native_hooks[i].commit != NULL)
        native_hooks[i].commit (f, t->tid);
  /* pop this frame and anything above it that a heal already resolved */
  if (t->n > 0 && f >= &t->f[0] && f < &t->f[t->n])
    t->n = (guint64) (f - &t->f[0]);
}

/* The call of fn whose return address lay at `sp` returned (or a heal resumed at its exit):
 * returns where to (the recorded return address), 0 if this thread has no record of it. */
static guint64
leave_at (FnInfo * fn, Regs * r, guint64 sp)
{
  Thread * t = thread_slot (0);
  guint64 k;
  Call * c;

  if (t == NULL)
    return 0;
  for (k = t->n_calls; k > 0 && t->calls[k - 1].sp != sp; k--)
    ;
  if (k == 0)
    return 0;
  c = &t->calls[k - 1];
  t->n_calls = k - 1;
  if (cfg.js_calls)
    js_return (fn, t->tid, r->rax);
  if (c->frame != NULL)
    close_frame (t, c->frame, r);
  return c->ret;
}

/* The exit stub of fn: the real return address (0 stops the process: the stub has no other). */
guint64
sead_leave (FnInfo * fn, Regs * r)
{
  return leave_at (fn, r, (guint64) &r->ret);
}

/* Interceptor.attach's listener, the other way to hook (70_coverage.js: in processes whose forked
 * children are instrumented too). The same records and transactions; Frida keeps the return. */
static void
regs_from (Regs * r, GumCpuContext * c)
{
  r->r15 = c->r15;
  r->r14 = c->r14;
  r->r13 = c->r13;
  r->r12 = c->r12;
  r->rbp = c->rbp;
  r->rbx = c->rbx;
  r->r9 = c->r9;
  r->r8 = c->r8;
  r->rcx = c->rcx;
  r->rdx = c->rdx;
  r->rsi = c->rsi;
  r->rdi = c->rdi;
  r->rax = c->rax;
}

void
on_enter (GumInvocationContext * ic)
{
  GumCpuContext * c = ic->cpu_context;
  Regs r;
  regs_from (&r, c);
  r.ret = *(guint64 *) c->rsp;
  GUM_IC_GET_INVOCATION_DATA (ic, Invocation)->frame =
      enter_at (GUM_IC_GET_FUNC_DATA (ic, FnInfo *), &r, c->rsp) ? c->rsp : 0;
}

void
on_leave (GumInvocationContext * ic)
{
  GumCpuContext * c = ic->cpu_context;
  guint64 sp = GUM_IC_GET_INVOCATION_DATA (ic, Invocation)->frame;
  guint64 rax;
  Regs r;
  if (sp == 0)
    return;
  regs_from (&r, c);
  rax = r.rax; /* the return value */
  leave_at (GUM_IC_GET_FUNC_DATA (ic, FnInfo *), &r, sp);
  if (r.rax != rax)
    gum_invocation_context_replace_return_value (ic, (gpointer) r.rax);
  c->rbx = r.rbx; /* restored by the shadow-stack check when they were smashed */
  c->rbp = r.rbp;
  c->r12 = r.r12;
  c->r13 = r.r13;
  c->r14 = r.r14;
  c->r15 = r.r15;
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
  Thread * t = thread_slot (1);
  if (t == NULL)
    return;
  drop_stale (t, ic->cpu_context->rsp);
  t->input_depth = (gint64) t->n_calls;
  if (cfg.js_input)
    js_input (t->tid, GUM_IC_GET_INVOCATION_DATA (ic, Invocation)->frame,
        (gint64) gum_invocation_context_get_return_value (ic));
}
