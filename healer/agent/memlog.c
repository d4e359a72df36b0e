/*
 * The memory log (STEM section 3.3.1): the old bytes of every store a supervised function makes,
 * recorded by a call the Stalker transform (memlog_transform, below) places before each
 * instruction with a memory destination, undone in reverse order on abort.  Loaded by
 * 20_memlog.js as CSOURCE["memlog.c"].
 *
 * Every followed thread has one MemLog (preallocated storage, the paper's proposed enhancement);
 * the code translated for a thread passes its MemLog and the store's operand as immediates, so
 * the call needs no thread lookup.  There are no C globals: CModule globals were read-only in
 * this setup (see shared/notes/frida-findings.md), all state lives in memory the script
 * allocates.
 *
 * Log layout: entries back to back, each  [u64 addr][u64 len][len bytes, padded to 8][u64 size]
 * where the trailing size (header + padded data + trailer) lets rollback walk backwards.
 */
#include <gum/guminterceptor.h>
#include <gum/gumstalker.h>
#include <string.h>

typedef struct _MemLog MemLog;
typedef struct _StoreDesc StoreDesc;
typedef struct _Marker Marker;
typedef union _StorePacked StorePacked;

#define MAX_MARKERS 64 /* the core's MAX_FRAMES */
#define MAX_THREADS 256
#define STORE_PAGES 2048 /* a thread's cache of the pages record() has read (put_inline_log) */

/* An open transaction's start in the log: rollback undoes back to pos. */
struct _Marker {
  guint64 id;         /* the transaction (Frame.id in txn.c) */
  guint64 pos;        /* log length at its entry */
  guint64 skip_hi;    /* its entry sp + 8: the stack below dies with a virtualized return */
  guint64 overflows;  /* log->overflows at its entry: more later means rollback is incomplete */
};

struct _MemLog {
  guint8 *buf;          /* preallocated storage */
  guint64 cap;          /* its size in bytes */
  guint64 len;          /* bytes in use */
  guint64 on;           /* gate: non-zero while a supervised transaction runs on this thread */
  guint64 skip_lo;      /* stores in [skip_lo, skip_hi) are not logged: the thread's own stack */
  guint64 skip_hi;      /*   below the innermost transaction's entry sp (+8: its return address) */
  guint64 fs_base;      /* for fs:-relative stores (errno and other TLS) */
  guint64 logged;       /* counters, read by stats() */
  guint64 logged_bytes;
  guint64 skipped;
  guint64 overflows;    /* stores that did not fit: this log can no longer roll back completely */
  guint64 unreadable;   /* masked stores whose tail lies on an unmapped page (tail not logged) */
  guint64 restored;
  guint64 key;          /* the thread's control block (%fs:0): memlog_thread() finds the log */
  guint64 refollow;     /* a root heal stopped following: the next transaction follows again */
  guint64 unsupported;  /* stores the log cannot address (gs:, vector-indexed scatter) */
  guint64 blocks;       /* blocks translated for this thread (Stalker's code cache is per thread) */
  guint64 capstone;     /* the thread's Capstone handle for memlog_disassemble_at (0: not yet) */
  guint64 blocks_excluded; /* blocks translated in a read-only routine meant to run natively: 0 */
  guint64 native_calls; /* call sites translated as native calls of a read-only routine */
  guint64 frida_calls;  /* call sites in Frida's code translated as native calls of Frida's */
  guint64 inline_logged; /* of `logged`, the stores logged by the inline path (put_inline_log) */
  guint64 n;            /* open transactions (markers) */
  Marker markers[MAX_MARKERS];
  guint64 store_pages[STORE_PAGES]; /* page + 1 at page % STORE_PAGES: read by record() */
};

enum {
  DESC_REP = 1,       /* rep stos/movs: size is per element, times rcx */
  DESC_FS = 2,        /* fs: segment */
  DESC_ADDR32 = 4,    /* 32-bit address computation */
  DESC_MASKED = 8,    /* AVX-512 masked store: may touch fewer bytes than its width */
};

/* One store instruction's operand; base and index are register numbers (reg_number: 0 none). */
struct _StoreDesc {
  guint32 size;
  guint8 base;
  guint8 index;
  guint8 scale;
  guint8 flags;
};

/* A StoreDesc passed as one immediate. */
union _StorePacked {
  StoreDesc d;
  guint64 u;
};

extern MemLog * logs[MAX_THREADS];  /* every followed thread's log (memlog_thread) */
extern long memlog_process_vm_readv (int pid, const void *local, unsigned long nlocal,
                                     const void *remote, unsigned long nremote,
                                     unsigned long flags);
extern int memlog_getpid (void);

static void
copy_bytes (guint8 *dst, const guint8 *src, guint64 n)
{
  guint64 i = 0;
  for (; i + 8 <= n; i += 8)
    *(guint64 *) (dst + i) = *(const guint64 *) (src + i);
  for (; i < n; i++)
    dst[i] = src[i];
}

/* Reads n bytes at addr without faulting; returns how many could be read. */
static guint64
safe_read (guint8 *dst, guint64 addr, guint64 n)
{
  guint64 iov_local[2] = { (guint64) dst, n };
  guint64 iov_remote[2] = { addr, n };
  long got = memlog_process_vm_readv (memlog_getpid (), iov_local, 1, iov_remote, 1, 0);
  return got > 0 ? (guint64) got : 0;
}

static void
record (MemLog *log, guint64 addr, guint64 n, int masked)
{
  guint64 padded, total;
  guint8 *entry;

  /* The first 64 KiB are never mapped (vm.mmap_min_addr): the store itself will fault there, and
   * it should be the store that faults (the heal reports its address), not this copy. */
  if (n == 0 || addr < 0x10000)
    return;
  if (addr >= log->skip_lo && addr < log->skip_hi)
  {
    /* A store straddling skip_hi (strcpy's overlapping vector tail running from the dying frame
     * into the caller's) keeps its part above it: that part survives the virtualized return. */
    if (addr + n <= log->skip_hi)
    {
      log->skipped++;
      return;
    }
    n -= log->skip_hi - addr;
    addr = log->skip_hi;
  }
  padded = (n + 7) & ~(guint64) 7;
  total = 16 + padded + 8;
  if (log->len + total > log->cap)
  {
    log->overflows++;
    return;
  }
  entry = log->buf + log->len;
  /* a masked store's full width may reach into an unmapped page it does not write: read that
   * page without faulting, unless it is known readable (store_pages) */
  if (masked && ((addr & 4095) + n > 4096)
      && log->store_pages[((addr + n - 1) >> 12) % STORE_PAGES] != ((addr + n - 1) >> 12) + 1)
  {
    guint64 got = safe_read (entry + 16, addr, n);
    if (got < n)
    {
      log->unreadable++;
      n = got;
      if (n == 0)
        return;
      padded = (n + 7) & ~(guint64) 7;
      total = 16 + padded + 8;
    }
  }
  else
  {
    copy_bytes (entry + 16, (const guint8 *) addr, n);
  }
  *(guint64 *) entry = addr;
  *(guint64 *) (entry + 8) = n;
  *(guint64 *) (entry + 16 + padded) = total;
  log->len += total;
  log->logged++;
  log->logged_bytes += n;
  /* readable: the inline path may read these pages itself from now on */
  log->store_pages[(addr >> 12) % STORE_PAGES] = (addr >> 12) + 1;
  log->store_pages[((addr + n - 1) >> 12) % STORE_PAGES] = ((addr + n - 1) >> 12) + 1;
}

/*
 * [lo, lo + len) may no longer be readable (munmap, mremap, mprotect without PROT_READ, the break
 * moved): every
 * thread's inline path forgets its pages, so a store there goes through record() again and
 * faults in memlog_store, where the exception handler heals it (a fault inside translated code,
 * in the inline path's read, is never healed: the process died).
 */
static void
forget_pages (guint64 lo, guint64 len)
{
  guint64 first = lo >> 12, last = (lo + (len == 0 ? 1 : len) - 1) >> 12, p;
  guint k;

  for (k = 0; k < MAX_THREADS; k++)
  {
    MemLog * log = logs[k];
    if (log == NULL)
      continue;
    if (last - first >= STORE_PAGES)
      memset (log->store_pages, 0, sizeof (log->store_pages));
    else
      for (p = first; p <= last; p++)
        if (log->store_pages[p % STORE_PAGES] == p + 1)
          log->store_pages[p % STORE_PAGES] = 0;
  }
}

/* How a hooked call may make pages unreadable (its function data in 20_memlog.js). */
enum {
  FORGET_RANGE,       /* munmap, mremap (address, length) */
  FORGET_UNLESS_READ, /* mprotect (address, length, prot): unless prot has PROT_READ */
  FORGET_ALL,         /* brk (the break moves: the heap's top pages may go) */
};

/* Interceptor.attach onEnter of those calls: every thread forgets the pages they may take away. */
void
memlog_unmap_enter (GumInvocationContext * ic)
{
  gsize how = GUM_IC_GET_FUNC_DATA (ic, gsize);
  guint64 lo = (guint64) gum_invocation_context_get_nth_argument (ic, 0);
  guint64 len = (guint64) gum_invocation_context_get_nth_argument (ic, 1);
  if (how == FORGET_UNLESS_READ
      && ((gsize) gum_invocation_context_get_nth_argument (ic, 2) & 1 /* PROT_READ */) != 0)
    return;
  if (how == FORGET_ALL)
    forget_pages (0, ~(guint64) 0);
  else
    forget_pages (lo, len);
}

/*
 * Called before every store of a followed thread while its gate is on, from code the transform
 * writes inline (put_gated_call saves the caller-saved registers and flags and passes the
 * operand's register values): a Stalker callout saves the whole CPU context and cost ~8x more a
 * store.  disp is the absolute address for rip-relative operands (base none).
 */
static void
memlog_store (guint64 base, guint64 index, guint64 rcx, MemLog * log, gint64 disp, guint64 packed)
{
  StorePacked p;
  guint64 addr, n;

  p.u = packed;
  addr = (guint64) disp + base + index * p.d.scale;
  if (p.d.flags & DESC_ADDR32)
    addr &= 0xffffffff;
  if (p.d.flags & DESC_FS)
    addr += log->fs_base;
  n = p.d.size;
  if (p.d.flags & DESC_REP)
    n *= rcx;
  record (log, addr, n, (p.d.flags & DESC_MASKED) != 0);
}

/* Undo every entry above pos, newest first; the log shrinks to pos. Bytes on the page at `skip`
 * (non-zero: the page a faulting store would have written) stay as they are: that store wrote
 * nothing, and the page may be read-only.  Returns entries restored. */
guint64
memlog_rollback (MemLog *log, guint64 pos, guint64 skip)
{
  guint64 count = 0;

  while (log->len > pos)
  {
    guint64 total = *(guint64 *) (log->buf + log->len - 8);
    guint8 *entry = log->buf + log->len - total;
    guint64 addr = *(guint64 *) entry;
    guint64 n = *(guint64 *) (entry + 8);

    if (skip != 0 && addr < skip + 4096 && addr + n > skip)
    {
      /* the parts before and after that page (a `rep` store that faulted half way) */
      if (addr < skip)
        copy_bytes ((guint8 *) addr, entry + 16, skip - addr);
      if (addr + n > skip + 4096)
        copy_bytes ((guint8 *) (skip + 4096), entry + 16 + (skip + 4096 - addr),
                    addr + n - (skip + 4096));
    }
    else
      copy_bytes ((guint8 *) addr, entry + 16, n);
    log->len -= total;
    count++;
  }
  log->restored += count;
  return count;
}

/* Stalker.follow's event sink (no events are asked for): a native sink instead of Frida's default
 * JavaScript one, whose queue is drained and stopped on the JS thread. */
void
memlog_no_events (const void * event, void * cpu_context, void * user_data)
{
}

/*
 * Per-transaction work in C (the core's native hooks, Sead.txn.addNativeHooks), so a supervised
 * call never enters JavaScript for the log: only a thread's first transaction (and the first
 * after a root heal) calls memlog_js_enable, which follows the thread with Stalker.  `logs` (from
 * 20_memlog.js) maps a thread's control block (%fs:0, = its fs base) to its MemLog.
 */
extern void memlog_js_enable (guint64 sp);

static guint64
thread_key (void)
{
  guint64 k;
  __asm__ ("movq %%fs:0, %0" : "=r" (k));
  return k;
}

static MemLog *
memlog_thread (void)
{
  guint64 key = thread_key ();
  guint k;
  for (k = 0; k < MAX_THREADS; k++)
  {
    MemLog * log = logs[((key >> 12) + k) % MAX_THREADS];
    if (log == NULL)
      return NULL;
    if (log->key == key)
      return log;
  }
  return NULL;
}

/*
 * Stands in for Frida's gum_x86_reader_disassemble_instruction_at (20_memlog.js replaces it):
 * Stalker calls it each time it links a branch of a thread's translated code to its target, and
 * Frida's opens a Capstone handle for every call (a ~30 KiB table built each time: 20 % of
 * Apache's CPU while its threads translate).  A followed thread keeps one handle in its MemLog;
 * any other thread opens one for the call, as Frida does.  The caller frees the instruction
 * (cs_free (insn, 1)).
 */
cs_insn *
memlog_disassemble_at (gconstpointer address)
{
  MemLog * log = memlog_thread ();
  csh handle = log != NULL ? (csh) log->capstone : 0;
  cs_insn * insn = NULL;

  if (handle == 0)
  {
    if (cs_open (CS_ARCH_X86, CS_MODE_64, &handle) != CS_ERR_OK)
      return NULL;
    cs_option (handle, CS_OPT_DETAIL, CS_OPT_ON);
  }
  cs_disasm (handle, address, 16, GPOINTER_TO_SIZE (address), 1, &insn);
  if (log != NULL)
    log->capstone = (guint64) handle;
  else
    cs_close (&handle);
  return insn;
}

/* Registers the calling thread's log (20_memlog.js, on the thread, under the JS lock). */
int
memlog_register (MemLog * log)
{
  guint64 key = thread_key ();
  guint k;
  log->key = key;
  for (k = 0; k < MAX_THREADS; k++)
  {
    MemLog ** slot = &logs[((key >> 12) + k) % MAX_THREADS];
    if (*slot == NULL || (*slot)->key == key)
    {
      *slot = log;
      return 0;
    }
  }
  return -1;
}

static void
set_gate (MemLog * log)
{
  if (log->n > 0)
    log->skip_hi = log->markers[log->n - 1].skip_hi;
  log->on = log->n > 0;
}

/* Frame in txn.c starts: id, fn, sp. */
void
memlog_begin (const guint64 * frame, guint64 tid)
{
  MemLog * log = memlog_thread ();
  Marker * m;
  if (log == NULL || log->refollow)
  {
    memlog_js_enable (frame[2]);
    log = memlog_thread ();
    if (log == NULL)
      return;
  }
  if (log->n >= MAX_MARKERS)
    return; /* cannot happen: the core opens at most MAX_FRAMES */
  m = &log->markers[log->n++];
  m->id = frame[0];
  m->pos = log->len;
  m->skip_hi = frame[2] + 8;
  m->overflows = log->overflows;
  set_gate (log);
}

/* Index of transaction id's marker, or -1. */
static gint64
find_marker (MemLog * log, guint64 id)
{
  gint64 i;
  for (i = (gint64) log->n - 1; i >= 0; i--)
    if (log->markers[i].id == id)
      return i;
  return -1;
}

/* Root: the entries are dropped. Nested: they stay, now owned by the parent. */
void
memlog_commit (const guint64 * frame, guint64 tid)
{
  MemLog * log = memlog_thread ();
  gint64 i;
  if (log == NULL || (i = find_marker (log, frame[0])) < 0)
    return;
  log->n = (guint64) i;
  if (log->n == 0)
    log->len = 0;
  set_gate (log);
}

/*
 * Transaction id aborts: its stores and those of any open child are undone newest first (or, with
 * restore == 0, dropped), but for the page at `skip` (memlog_rollback).  Returns the entries
 * restored, -1 without a marker; *complete is 0 when a store did not fit in the log since the
 * transaction began.
 */
gint64
memlog_abort (MemLog * log, guint64 id, int restore, guint64 * complete, guint64 skip)
{
  gint64 i = find_marker (log, id);
  Marker * m;
  gint64 restored = 0;
  if (i < 0)
    return -1;
  m = &log->markers[i];
  *complete = log->overflows == m->overflows;
  if (restore)
    restored = (gint64) memlog_rollback (log, m->pos, skip);
  else
    log->len = m->pos;
  log->n = (guint64) i;
  set_gate (log);
  return restored;
}

/* Gradual commit: everything logged so far on this thread becomes permanent. */
guint64
memlog_gradual (MemLog * log)
{
  guint64 len = log->len, i;
  log->len = 0;
  for (i = 0; i < log->n; i++)
  {
    log->markers[i].pos = 0;
    log->markers[i].overflows = log->overflows;
  }
  return len;
}

/* memlog_gradual for the calling thread (wire.c's GRADUAL, through Sead.wire.useGradual). */
void
memlog_gradual_here (void)
{
  MemLog * log = memlog_thread ();
  if (log != NULL)
    memlog_gradual (log);
}

/*
 * A `ret` of a followed thread to an address that is not mapped (a smashed return address, no
 * stack protector) must fault where the exception handler can heal it. Stalker would instead try
 * to translate the garbage target inside its own code, and the process died of SIGSEGV with the
 * handler never running. The transform calls this before every `ret` with its target: a page seen
 * readable before passes at the cost of one cache probe (memlog_ret_pages: page number + 1 in a
 * slot chosen by a multiplicative hash; with 4096 slots (page number modulo 4096, or hashed), two
 * of the ~100 pages Apache returns to shared a slot, as the birthday bound says, and evicted each
 * other twice a request, each miss two system calls; benign races between threads only cost a re-
 * check). Otherwise the target is read without faulting and, if unreadable, read for real: that
 * fault is an ordinary SIGSEGV in a supervised transaction, healed by rollback and a virtualized
 * return.
 */
#define RET_PAGES 65536
#define RET_HASH 0xffffffff9e3779b1ULL /* an odd imm32 (sign-extended): the slot is bits 16-31 */
extern guint64 memlog_ret_pages[RET_PAGES];

static void
memlog_check_ret (guint64 target)
{
  guint64 page = target >> 12;
  guint64 * slot = &memlog_ret_pages[((page * RET_HASH) >> 16) % RET_PAGES];
  guint8 byte;
  if (*slot == page + 1)
    return;
  if (target < 0x10000 || safe_read (&byte, target, 1) != 1)
    byte = *(volatile guint8 *) target;
  *slot = page + 1;
}

/*
 * The Stalker transform (Stalker.follow's `transform`, user data: the thread's MemLog), in C: a
 * thread's blocks are translated for it alone, so Apache's ~25 worker threads translated each of
 * Apache's ~4,000 blocks ~21 times, and a JavaScript transform cost ~35 us a block there.
 *
 * Before every instruction with a memory destination it writes a gated call of memlog_store with
 * the operand's register values, and before every `ret` one of memlog_check_ret with its target;
 * Frida's own code (memlog_frida_code, [lo, hi) pairs ending with lo == 0) is left alone.
 */
extern guint64 memlog_frida_code[];
extern guint64 memlog_read_only_code[];

enum { REG_RSP = 8 };

/* Register numbers of StoreDesc (0: none), from Capstone's; 32-bit registers set DESC_ADDR32. */
static gint
reg_number (x86_reg r, guint8 * flags)
{
  switch (r)
  {
    case X86_REG_INVALID: return 0;
    case X86_REG_EAX: *flags |= DESC_ADDR32; return 1;
    case X86_REG_RAX: return 1;
    case X86_REG_EBX: *flags |= DESC_ADDR32; return 2;
    case X86_REG_RBX: return 2;
    case X86_REG_ECX: *flags |= DESC_ADDR32; return 3;
    case X86_REG_RCX: return 3;
    case X86_REG_EDX: *flags |= DESC_ADDR32; return 4;
    case X86_REG_RDX: return 4;
    case X86_REG_ESI: *flags |= DESC_ADDR32; return 5;
    case X86_REG_RSI: return 5;
    case X86_REG_EDI: *flags |= DESC_ADDR32; return 6;
    case X86_REG_RDI: return 6;
    case X86_REG_EBP: *flags |= DESC_ADDR32; return 7;
    case X86_REG_RBP: return 7;
    case X86_REG_ESP: *flags |= DESC_ADDR32; return REG_RSP;
    case X86_REG_RSP: return REG_RSP;
    case X86_REG_R8D: *flags |= DESC_ADDR32; return 9;
    case X86_REG_R8: return 9;
    case X86_REG_R9D: *flags |= DESC_ADDR32; return 10;
    case X86_REG_R9: return 10;
    case X86_REG_R10D: *flags |= DESC_ADDR32; return 11;
    case X86_REG_R10: return 11;
    case X86_REG_R11D: *flags |= DESC_ADDR32; return 12;
    case X86_REG_R11: return 12;
    case X86_REG_R12D: *flags |= DESC_ADDR32; return 13;
    case X86_REG_R12: return 13;
    case X86_REG_R13D: *flags |= DESC_ADDR32; return 14;
    case X86_REG_R13: return 14;
    case X86_REG_R14D: *flags |= DESC_ADDR32; return 15;
    case X86_REG_R14: return 15;
    case X86_REG_R15D: *flags |= DESC_ADDR32; return 16;
    case X86_REG_R15: return 16;
    default: return -1;
  }
}

static const GumX86Reg gum_reg[17] = {
  GUM_X86_NONE, GUM_X86_RAX, GUM_X86_RBX, GUM_X86_RCX, GUM_X86_RDX, GUM_X86_RSI, GUM_X86_RDI,
  GUM_X86_RBP, GUM_X86_RSP, GUM_X86_R8, GUM_X86_R9, GUM_X86_R10, GUM_X86_R11, GUM_X86_R12,
  GUM_X86_R13, GUM_X86_R14, GUM_X86_R15,
};

/*
 * Instructions whose first memory operand is read, not written (or not accessed at all).
 * Capstone's access flags cannot be trusted for vector stores (it marks `movups [rdi], xmm0` and
 * AVX-512 `vmovdqu64 [rdi], zmm16` as reads), so operand 0 counts as written unless listed here.
 */
static gboolean
only_reads (const char * m)
{
  static const char * const prefixes[] = {
    "lea", "nop", "prefetch", "clflush", "clwb", "clde", "endbr", "bnd", "test", "push", "call",
    "comis", "ucomis", "vcomis", "vucomis", "ptest", "vptest", "fld", "fild", "fcom", "ficom",
    "fucom", "fiucom", "fnstenv", "frstor", "fxrstor", "xrstor", "ldmxcsr", "vldmxcsr", "lgdt",
    "lidt", "verr", "verw", "ptwrite", NULL,
  };
  guint i;

  for (i = 0; prefixes[i] != NULL; i++)
    if (strncmp (m, prefixes[i], strlen (prefixes[i])) == 0)
      return TRUE;
  if (strncmp (m, "cmp", 3) == 0)
    return strncmp (m + 3, "xchg", 4) != 0;  /* cmps/cmpps read; cmpxchg writes */
  if (strcmp (m, "bt") == 0)
    return TRUE;                             /* bts/btr/btc write */
  if (m[0] == 'j')
  {
    for (i = 1; m[i] >= 'a' && m[i] <= 'z'; i++)
      ;
    return i > 1 && m[i] == '\0';            /* jmp and every jcc */
  }
  return FALSE;
}

/* An AVX-512 store under an opmask (or maskmov): it may touch fewer bytes than its width. */
static gboolean
masked (const cs_insn * insn)
{
  const char * s = insn->op_str;

  if (strstr (insn->mnemonic, "maskmov") != NULL)
    return TRUE;
  while ((s = strstr (s, "{k")) != NULL)
  {
    if (s[2] >= '1' && s[2] <= '7' && s[3] == '}')
      return TRUE;
    s += 2;
  }
  return FALSE;
}

/* The operand insn stores to, or FALSE if it writes no memory we log. */
static gboolean
describe (const cs_insn * insn, MemLog * log, StoreDesc * d, gint64 * disp)
{
  const cs_x86 * x86 = &insn->detail->x86;
  const cs_x86_op * op = NULL;
  gint base, index;
  guint8 i;

  if (x86->op_count == 0)
    return FALSE;
  if (x86->operands[0].type == X86_OP_MEM && !only_reads (insn->mnemonic))
    op = &x86->operands[0];
  else
    for (i = 0; i < x86->op_count; i++)
      if (x86->operands[i].type == X86_OP_MEM && (x86->operands[i].access & CS_AC_WRITE))
        op = &x86->operands[i];
  if (op == NULL)
    return FALSE;
  d->flags = 0;
  *disp = op->mem.disp;
  if (op->mem.base == X86_REG_RIP)
  {
    *disp += (gint64) (insn->address + insn->size);
    base = 0;
  }
  else
    base = reg_number (op->mem.base, &d->flags);
  index = reg_number (op->mem.index, &d->flags);
  if (base < 0 || index < 0 || op->mem.segment == X86_REG_GS)
  {
    log->unsupported++;
    return FALSE;
  }
  if (op->mem.segment == X86_REG_FS)
    d->flags |= DESC_FS;
  if (strncmp (insn->mnemonic, "rep", 3) == 0)
    d->flags |= DESC_REP;
  if (masked (insn))
    d->flags |= DESC_MASKED;
  d->size = op->size != 0 ? op->size : 8;
  d->base = (guint8) base;
  d->index = (guint8) index;
  d->scale = op->mem.scale != 0 ? (guint8) op->mem.scale : 1;
  return TRUE;
}

/* Saved around the call: what the SysV ABI lets a C function clobber. */
#define N_SAVED 9
static const GumX86Reg saved[N_SAVED] = {
  GUM_X86_RAX, GUM_X86_RCX, GUM_X86_RDX, GUM_X86_RSI, GUM_X86_RDI, GUM_X86_R8, GUM_X86_R9,
  GUM_X86_R10, GUM_X86_R11,
};
#define RED_ZONE 128
#define FRAME (RED_ZONE + 8 * (N_SAVED + 1))  /* + the flags: rsp + FRAME is the store's rsp */

/* What the fast path pushes (after the red zone), and where the store's rsp is then. */
#define N_FAST 3
static const GumX86Reg fast_saved[N_FAST] = { GUM_X86_RAX, GUM_X86_RCX, GUM_X86_RDX };
#define FAST_FRAME (RED_ZONE + 8 * N_FAST)

/*
 * Load into dst the value register `num` had at the instruction, with the n registers of `pushed`
 * pushed in that order (their values are read from their slots) and the instruction's rsp at
 * rsp + frame.
 */
static void
load_reg (GumX86Writer * cw, GumX86Reg dst, guint8 num, const GumX86Reg * pushed, guint n,
          gssize frame)
{
  guint i;

  if (num == 0)
  {
    gum_x86_writer_put_mov_reg_u64 (cw, dst, 0);
    return;
  }
  if (num == REG_RSP)
  {
    gum_x86_writer_put_lea_reg_reg_offset (cw, dst, GUM_X86_RSP, frame);
    return;
  }
  for (i = 0; i < n; i++)
  {
    if (pushed[i] == gum_reg[num])
    {
      gum_x86_writer_put_mov_reg_reg_offset_ptr (cw, dst, GUM_X86_RSP, 8 * (n - 1 - i));
      return;
    }
  }
  gum_x86_writer_put_mov_reg_reg (cw, dst, gum_reg[num]);
}

/* The fast path's encodings assume this layout (a compile error otherwise): rdx holds &skip_lo. */
#define MEMLOG_OFFSET(field) ((gsize) &((MemLog *) 0)->field)
#define SKIP_REL(field) ((gint) MEMLOG_OFFSET (field) - (gint) MEMLOG_OFFSET (skip_lo))
typedef char memlog_ret_pages_65536[RET_PAGES == 65536 ? 1 : -1];
typedef char memlog_skip_hi_at_8[SKIP_REL (skip_hi) == 8 ? 1 : -1];
typedef char memlog_skipped_at_40[SKIP_REL (skipped) == 40 ? 1 : -1];
typedef char memlog_buf_at_m32[SKIP_REL (buf) == -32 && SKIP_REL (cap) == -24
                               && SKIP_REL (len) == -16 ? 1 : -1];
typedef char memlog_logged_at_24[SKIP_REL (logged) == 24 && SKIP_REL (logged_bytes) == 32
                                 && SKIP_REL (inline_logged) == 136 ? 1 : -1];

/* x86 bytes the writer has no helper for. */
static const guint8 save_flags[] = { 0x9f, 0x0f, 0x90, 0xc0 };     /* lahf; seto al */
static const guint8 restore_flags[] = { 0x04, 0x7f, 0x9e };        /* add al, 0x7f; sahf */

/* A near jump or jcc (second opcode byte `cc`, 0 for jmp) whose rel32 is patched later. */
static gint32 *
put_jump32 (GumX86Writer * cw, guint8 cc)
{
  const guint8 jcc[6] = { 0x0f, cc, 0, 0, 0, 0 };
  const guint8 jmp[5] = { 0xe9, 0, 0, 0, 0 };

  if (cc == 0)
    gum_x86_writer_put_bytes (cw, jmp, sizeof (jmp));
  else
    gum_x86_writer_put_bytes (cw, jcc, sizeof (jcc));
  return (gint32 *) (cw->code - 4);
}

/* Points a jump written by put_jump32 at the current position (NULL: nothing to patch). */
static void
patch_jump32 (GumX86Writer * cw, gint32 * rel)
{
  if (rel != NULL)
    *rel = (gint32) (cw->code - ((guint8 *) rel + 4));
}

/* The registers and flags as they were before the fast path (its pushes undone). */
static void
put_fast_restore (GumX86Writer * cw)
{
  gum_x86_writer_put_pop_reg (cw, GUM_X86_RDX);
  gum_x86_writer_put_pop_reg (cw, GUM_X86_RCX);
  gum_x86_writer_put_bytes (cw, restore_flags, sizeof (restore_flags));
  gum_x86_writer_put_pop_reg (cw, GUM_X86_RAX);
}

/* rcx = the address the store writes (rdx clobbered), with the fast path's pushes done. */
static void
put_store_address (GumX86Writer * cw, const StorePacked * desc, gint64 disp)
{
  guint shift;

  if (desc->d.base == 0)
    gum_x86_writer_put_mov_reg_u64 (cw, GUM_X86_RCX, (guint64) disp);  /* absolute (rip) */
  else
    load_reg (cw, GUM_X86_RCX, desc->d.base, fast_saved, N_FAST, FAST_FRAME);
  if (desc->d.index != 0)
  {
    load_reg (cw, GUM_X86_RDX, desc->d.index, fast_saved, N_FAST, FAST_FRAME);
    for (shift = 0; (1u << shift) < desc->d.scale; shift++)
      ;
    if (shift != 0)
      gum_x86_writer_put_shl_reg_u8 (cw, GUM_X86_RDX, (guint8) shift);
    gum_x86_writer_put_add_reg_reg (cw, GUM_X86_RCX, GUM_X86_RDX);
  }
  if (desc->d.base != 0 && disp != 0)
    gum_x86_writer_put_lea_reg_reg_offset (cw, GUM_X86_RCX, GUM_X86_RCX, (gssize) disp);
}

/* Whether the inline path logs a store of this size (the rest goes to memlog_store). */
static gboolean
inline_size (guint size)
{
  return size == 1 || size == 2 || size == 4 || size == 8 || size == 16 || size == 32;
}

/*
 * Log inline the store of `size` bytes (inline_size) at rcx, with rdx = &log->skip_lo: the entry
 * record() would write ([addr][len][old bytes][size]) without its call.  Only on a page record()
 * has already read (store_pages) and within it: the old bytes are read here, in translated code,
 * where a fault is never healed, so an address that may not be mapped (a corrupt pointer, the
 * fault markers of fatal.c) goes to record(), whose read faults in memlog_store where the
 * exception handler heals it.  Every other case jumps to one of miss[0..2] (patched by the
 * caller) with rbx still pushed: a page not seen, a store crossing its page, a full log (record()
 * counts the overflow).
 */
static void
put_inline_log (GumX86Writer * cw, guint size, gint32 ** miss)
{
  static const guint8 cmp_rbx_cap[] = { 0x48, 0x3b, 0x5a, 0xe8 };        /* cmp rbx, [rdx-24] */
  static const guint8 add_rbx_buf[] = { 0x48, 0x03, 0x5a, 0xe0 };        /* add rbx, [rdx-32] */
  static const guint8 inc_logged[] = { 0x48, 0xff, 0x42, 0x18 };         /* inc qword [rdx+24] */
  static const guint8 inc_inline[] = { 0x48, 0xff, 0x82, 0x88, 0, 0, 0 }; /* inc qword [rdx+136] */
  static const guint8 load1[] = { 0x0f, 0xb6, 0x11 };                    /* movzx edx, byte [rcx] */
  static const guint8 load2[] = { 0x0f, 0xb7, 0x11 };                    /* movzx edx, word [rcx] */
  static const guint8 load4[] = { 0x8b, 0x11 };                          /* mov edx, [rcx] */
  static const guint8 page_of_rcx[] = {
    0x48, 0x89, 0xcb,                                                      /* mov rbx, rcx */
    0x48, 0xc1, 0xeb, 0x0c,                                                /* shr rbx, 12 */
    0x48, 0x8d, 0x73, 0x01,                                                /* lea rsi, [rbx+1] */
    0x81, 0xe3, (STORE_PAGES - 1) & 0xff, (STORE_PAGES - 1) >> 8, 0, 0,    /* and ebx, N-1 */
  };
  static const guint8 offset_in_page[] = {
    0x89, 0xcb,                                                            /* mov ebx, ecx */
    0x81, 0xe3, 0xff, 0x0f, 0x00, 0x00,                                    /* and ebx, 4095 */
  };
  const gint entry = 16 + (gint) ((size + 7) & ~7u) + 8;
  guint8 cmp_page[] = { 0x48, 0x3b, 0xb4, 0xda, 0, 0, 0, 0 };  /* cmp rsi, [rdx+rbx*8+d32] */
  guint8 cmp_fits[] = { 0x81, 0xfb, 0, 0, 0, 0 };                        /* cmp ebx, 4096 - size */
  guint8 add_bytes[] = { 0x48, 0x83, 0x42, 0x20, (guint8) size };        /* add [rdx+32], size */
  guint8 put_imm[] = { 0x48, 0xc7, 0x43, 0, 0, 0, 0, 0 };      /* mov qword [rbx+d8], imm32 */
  guint k;

  gum_x86_writer_put_push_reg (cw, GUM_X86_RBX);
  gum_x86_writer_put_push_reg (cw, GUM_X86_RSI);
  gum_x86_writer_put_bytes (cw, page_of_rcx, sizeof (page_of_rcx));
  *(gint32 *) (cmp_page + 4) = SKIP_REL (store_pages);
  gum_x86_writer_put_bytes (cw, cmp_page, sizeof (cmp_page));
  gum_x86_writer_put_pop_reg (cw, GUM_X86_RSI);                         /* flags untouched */
  miss[0] = put_jump32 (cw, 0x85);                                       /* jne: not seen */
  gum_x86_writer_put_bytes (cw, offset_in_page, sizeof (offset_in_page));
  *(guint32 *) (cmp_fits + 2) = 4096 - size;
  gum_x86_writer_put_bytes (cw, cmp_fits, sizeof (cmp_fits));
  miss[1] = put_jump32 (cw, 0x87);                                       /* ja: crosses the page */
  gum_x86_writer_put_mov_reg_reg_offset_ptr (cw, GUM_X86_RBX, GUM_X86_RDX, SKIP_REL (len));
  gum_x86_writer_put_add_reg_imm (cw, GUM_X86_RBX, entry);
  gum_x86_writer_put_bytes (cw, cmp_rbx_cap, sizeof (cmp_rbx_cap));
  miss[2] = put_jump32 (cw, 0x87);                                       /* ja: the log is full */
  gum_x86_writer_put_mov_reg_offset_ptr_reg (cw, GUM_X86_RDX, SKIP_REL (len), GUM_X86_RBX);
  gum_x86_writer_put_bytes (cw, add_rbx_buf, sizeof (add_rbx_buf));      /* rbx: the entry's end */
  gum_x86_writer_put_mov_reg_offset_ptr_reg (cw, GUM_X86_RBX, -entry, GUM_X86_RCX);
  put_imm[3] = (guint8) (8 - entry);
  *(guint32 *) (put_imm + 4) = size;
  gum_x86_writer_put_bytes (cw, put_imm, sizeof (put_imm));
  put_imm[3] = (guint8) -8;
  *(guint32 *) (put_imm + 4) = (guint32) entry;
  gum_x86_writer_put_bytes (cw, put_imm, sizeof (put_imm));
  gum_x86_writer_put_bytes (cw, inc_logged, sizeof (inc_logged));
  gum_x86_writer_put_bytes (cw, add_bytes, sizeof (add_bytes));
  gum_x86_writer_put_bytes (cw, inc_inline, sizeof (inc_inline));
  /* the old bytes, through rdx (done with the log's fields) */
  for (k = 0; k < size; k += 8)
  {
    if (size == 1)
      gum_x86_writer_put_bytes (cw, load1, sizeof (load1));
    else if (size == 2)
      gum_x86_writer_put_bytes (cw, load2, sizeof (load2));
    else if (size == 4)
      gum_x86_writer_put_bytes (cw, load4, sizeof (load4));
    else
      gum_x86_writer_put_mov_reg_reg_offset_ptr (cw, GUM_X86_RDX, GUM_X86_RCX, k);
    gum_x86_writer_put_mov_reg_offset_ptr_reg (cw, GUM_X86_RBX, 16 - entry + (gint) k, GUM_X86_RDX);
  }
  gum_x86_writer_put_pop_reg (cw, GUM_X86_RBX);
}

/* A jmp back to `target`, an earlier position of the same block. */
static void
put_jump_back (GumX86Writer * cw, const guint8 * target)
{
  guint8 jmp[5] = { 0xe9, 0, 0, 0, 0 };

  *(gint32 *) (jmp + 1) = (gint32) (target - (cw->code + 5));
  gum_x86_writer_put_bytes (cw, jmp, sizeof (jmp));
}

/*
 * The inline fast path of a gated call, for the cases that need no call, most of them in Apache
 * under COSAK: a store into the thread's own stack below the transaction (its address inside
 * [skip_lo, skip_hi): counted as skipped), any other store of 1-32 bytes (logged inline,
 * put_inline_log), and a `ret` whose target page memlog_check_ret already found readable
 * (memlog_ret_pages). The flags live in rax meanwhile (lahf and seto, restored by add and sahf:
 * cheaper than pushf and popf), rcx and rdx are scratch (rbx and rsi too while logging). Left to
 * the full call: fs:, 32-bit addressing, rep and masked stores, other sizes, a store that
 * straddles skip_hi (record() splits it), a page record() has not read yet or one crossing its
 * page, a full log. Returns where the fast path jumps to when done (patched by the caller to the
 * end of the whole sequence), or NULL when nothing was written; on a miss it falls through to the
 * full call with every register as it was.
 */
static gint32 *
put_fast_path (GumX86Writer * cw, MemLog * log, const StorePacked * desc, gint64 disp)
{
  static const guint8 cmp_rcx_rdx[] = { 0x48, 0x3b, 0x0a };         /* cmp rcx, [rdx] */
  static const guint8 cmp_rcx_rdx8[] = { 0x48, 0x3b, 0x4a, 0x08 };  /* cmp rcx, [rdx+8] */
  static const guint8 inc_rdx40[] = { 0x48, 0xff, 0x42, 0x28 };     /* inc qword [rdx+40] */
  static const guint8 page_index[] = {                               /* memlog_check_ret's slot */
    0x48, 0xc1, 0xea, 0x0c,                                           /* shr rdx, 12 */
    0x48, 0x69, 0xca, 0xb1, 0x79, 0x37, 0x9e,                         /* imul rcx, rdx, RET_HASH */
    0x48, 0xc1, 0xe9, 0x10,                                           /* shr rcx, 16 */
    0x81, 0xe1, 0xff, 0xff, 0x00, 0x00,                               /* and ecx, RET_PAGES - 1 */
    0x48, 0xc1, 0xe1, 0x03,                                           /* shl rcx, 3 */
    0x48, 0xff, 0xc2,                                                 /* inc rdx */
  };
  static const guint8 cmp_rdx_rbx_rcx[] = { 0x48, 0x3b, 0x14, 0x0b }; /* cmp rdx, [rbx+rcx] */
  gint32 * miss[4] = { NULL, NULL, NULL, NULL };
  gint32 * below = NULL, * above = NULL, * done;
  const guint8 * tail;
  guint i, size = desc != NULL ? desc->d.size : 0;

  if (desc != NULL && (desc->d.flags & (DESC_REP | DESC_FS | DESC_ADDR32 | DESC_MASKED)) != 0)
    return NULL;

  gum_x86_writer_put_push_reg (cw, GUM_X86_RAX);
  gum_x86_writer_put_bytes (cw, save_flags, sizeof (save_flags));
  gum_x86_writer_put_push_reg (cw, GUM_X86_RCX);
  gum_x86_writer_put_push_reg (cw, GUM_X86_RDX);
  if (desc != NULL)
  {
    put_store_address (cw, desc, disp);
    gum_x86_writer_put_mov_reg_address (cw, GUM_X86_RDX, GUM_ADDRESS (&log->skip_lo));
    gum_x86_writer_put_bytes (cw, cmp_rcx_rdx, sizeof (cmp_rcx_rdx));
    below = put_jump32 (cw, 0x82);                                    /* jb: below skip_lo */
    gum_x86_writer_put_lea_reg_reg_offset (cw, GUM_X86_RCX, GUM_X86_RCX, size);
    gum_x86_writer_put_bytes (cw, cmp_rcx_rdx8, sizeof (cmp_rcx_rdx8));
    above = put_jump32 (cw, 0x87);                                    /* ja: ends past skip_hi */
    gum_x86_writer_put_bytes (cw, inc_rdx40, sizeof (inc_rdx40));
  }
  else
  {
    gum_x86_writer_put_mov_reg_reg_offset_ptr (cw, GUM_X86_RDX, GUM_X86_RSP, FAST_FRAME);
    gum_x86_writer_put_bytes (cw, page_index, sizeof (page_index));
    gum_x86_writer_put_push_reg (cw, GUM_X86_RBX);
    gum_x86_writer_put_mov_reg_address (cw, GUM_X86_RBX, GUM_ADDRESS (memlog_ret_pages));
    gum_x86_writer_put_bytes (cw, cmp_rdx_rbx_rcx, sizeof (cmp_rdx_rbx_rcx));
    gum_x86_writer_put_pop_reg (cw, GUM_X86_RBX);                     /* flags untouched */
    miss[0] = put_jump32 (cw, 0x85);                                  /* jne: page not seen */
  }
  tail = cw->code;
  put_fast_restore (cw);
  gum_x86_writer_put_lea_reg_reg_offset (cw, GUM_X86_RSP, GUM_X86_RSP, RED_ZONE);
  done = put_jump32 (cw, 0);
  if (desc != NULL && inline_size (size))
  {
    /* past skip_hi: logged, unless it starts below skip_hi (straddles it) */
    patch_jump32 (cw, above);
    gum_x86_writer_put_lea_reg_reg_offset (cw, GUM_X86_RCX, GUM_X86_RCX, -(gssize) size);
    gum_x86_writer_put_bytes (cw, cmp_rcx_rdx8, sizeof (cmp_rcx_rdx8));
    miss[0] = put_jump32 (cw, 0x82);                                  /* jb: straddles */
    patch_jump32 (cw, below);
    put_inline_log (cw, size, &miss[1]);
    put_jump_back (cw, tail);
    for (i = 1; i < G_N_ELEMENTS (miss); i++)
    {
      patch_jump32 (cw, miss[i]);
      miss[i] = NULL;
    }
    gum_x86_writer_put_pop_reg (cw, GUM_X86_RBX);
  }
  else if (desc != NULL)
  {
    miss[0] = below;
    miss[1] = above;
  }
  for (i = 0; i < G_N_ELEMENTS (miss); i++)
    patch_jump32 (cw, miss[i]);
  put_fast_restore (cw);
  return done;
}

/*
 * The thread's gate (log->on, 0 or 1) is tested first, inline and without touching the flags
 * (rcx = on - 1 with lea, then jrcxz): with it off, nearly always in a server, an instruction
 * pays 9 cheap ones, not a call that saves the flags and 9 registers.  With it on: the red zone
 * below rsp is skipped, flags and `saved` pushed, the stack aligned for the call of memlog_store
 * (desc != NULL) or memlog_check_ret.
 */
static void
put_gated_call (GumX86Writer * cw, MemLog * log, const StorePacked * desc, gint64 disp)
{
  static const guint8 jrcxz[2] = { 0xe3, 0 };
  guint8 * skip;
  gint32 * done, * fast;
  guint i;

  gum_x86_writer_put_lea_reg_reg_offset (cw, GUM_X86_RSP, GUM_X86_RSP, -RED_ZONE);
  gum_x86_writer_put_push_reg (cw, GUM_X86_RCX);
  gum_x86_writer_put_mov_reg_address (cw, GUM_X86_RCX, GUM_ADDRESS (&log->on));
  gum_x86_writer_put_mov_reg_reg_ptr (cw, GUM_X86_RCX, GUM_X86_RCX);
  gum_x86_writer_put_lea_reg_reg_offset (cw, GUM_X86_RCX, GUM_X86_RCX, -1);
  skip = cw->code;
  gum_x86_writer_put_bytes (cw, jrcxz, sizeof (jrcxz));  /* to the call: the gate is on */
  gum_x86_writer_put_pop_reg (cw, GUM_X86_RCX);
  gum_x86_writer_put_lea_reg_reg_offset (cw, GUM_X86_RSP, GUM_X86_RSP, RED_ZONE);
  done = put_jump32 (cw, 0);                              /* past the call */
  skip[1] = (guint8) (cw->code - (skip + 2));

  gum_x86_writer_put_pop_reg (cw, GUM_X86_RCX);  /* rsp stays below the red zone */
  fast = put_fast_path (cw, log, desc, disp);
  gum_x86_writer_put_pushfx (cw);
  for (i = 0; i < N_SAVED; i++)
    gum_x86_writer_put_push_reg (cw, saved[i]);
  if (desc != NULL)
  {
    load_reg (cw, GUM_X86_RDI, desc->d.base, saved, N_SAVED, FRAME);
    load_reg (cw, GUM_X86_RSI, desc->d.index, saved, N_SAVED, FRAME);
    load_reg (cw, GUM_X86_RDX, 3, saved, N_SAVED, FRAME);  /* rcx: rep's count */
    gum_x86_writer_put_mov_reg_address (cw, GUM_X86_RCX, GUM_ADDRESS (log));
    gum_x86_writer_put_mov_reg_u64 (cw, GUM_X86_R8, (guint64) disp);
    gum_x86_writer_put_mov_reg_u64 (cw, GUM_X86_R9, desc->u);
  }
  else
  {
    gum_x86_writer_put_mov_reg_reg_offset_ptr (cw, GUM_X86_RDI, GUM_X86_RSP, FRAME);
  }
  gum_x86_writer_put_push_reg (cw, GUM_X86_RBX);
  gum_x86_writer_put_mov_reg_reg (cw, GUM_X86_RBX, GUM_X86_RSP);
  gum_x86_writer_put_and_reg_u32 (cw, GUM_X86_RSP, 0xfffffff0);
  gum_x86_writer_put_call_address (cw, desc != NULL ? GUM_ADDRESS (memlog_store)
                                                    : GUM_ADDRESS (memlog_check_ret));
  gum_x86_writer_put_mov_reg_reg (cw, GUM_X86_RSP, GUM_X86_RBX);
  gum_x86_writer_put_pop_reg (cw, GUM_X86_RBX);
  for (i = N_SAVED; i > 0; i--)
    gum_x86_writer_put_pop_reg (cw, saved[i - 1]);
  gum_x86_writer_put_popfx (cw);
  gum_x86_writer_put_lea_reg_reg_offset (cw, GUM_X86_RSP, GUM_X86_RSP, RED_ZONE);
  patch_jump32 (cw, done);
  if (fast != NULL)
    patch_jump32 (cw, fast);
}

/* Whether address lies in one of ranges' [lo, hi) pairs (ending with lo == 0). */
static gboolean
in_ranges (const guint64 * ranges, guint64 address)
{
  guint i;

  for (i = 0; ranges[i] != 0; i += 2)
    if (address >= ranges[i] && address < ranges[i + 1])
      return TRUE;
  return FALSE;
}

/*
 * The read-only routine (memlog_read_only_code) a `call` reaches through a PLT stub
 * (`[endbr64] [bnd] jmp [rip+slot]`) or directly through a GOT slot (`call [rip+slot]`, -fno-plt),
 * or 0.  Stalker runs an excluded range natively only when a call targets it directly: reached
 * through a stub's jmp it translated the routine anyway (measured: every block of it).  The slot
 * is read when the call is translated; a lazily bound one not resolved yet keeps the call
 * followed.
 */
static guint64
read_only_callee (const cs_insn * insn)
{
  const cs_x86 * x86 = &insn->detail->x86;
  const cs_x86_op * op = &x86->operands[0];
  guint64 slot, target;

  if (insn->id != X86_INS_CALL || x86->op_count != 1)
    return 0;
  if (op->type == X86_OP_IMM)
  {
    const guint8 * stub = (const guint8 *) op->imm;
    if (stub[0] == 0xf3 && stub[1] == 0x0f && stub[2] == 0x1e && stub[3] == 0xfa)
      stub += 4;
    if (stub[0] == 0xf2)
      stub++;
    if (stub[0] != 0xff || stub[1] != 0x25)
      return 0;
    slot = GUM_ADDRESS (stub + 6) + (gint64) *(const gint32 *) (stub + 2);
  }
  else if (op->type == X86_OP_MEM && op->mem.base == X86_REG_RIP
           && op->mem.index == X86_REG_INVALID && op->mem.segment == X86_REG_INVALID)
    slot = insn->address + insn->size + op->mem.disp;
  else
    return 0;
  target = *(const guint64 *) slot;
  return in_ranges (memlog_read_only_code, target) ? target : 0;
}

/*
 * The target of a direct call (`call rel32`, `call [rip+slot]`) from Frida's code into Frida's
 * code, or 0.  Interceptor's thunks call begin/end_invocation so, twice a supervised call; through
 * Stalker's own path for an excluded call the return re-enters Stalker's runtime through its
 * minimal prolog (fxsave and the AVX upper halves) each time: 19 % of Apache's CPU under COSAK.
 */
static guint64
frida_callee (const cs_insn * insn)
{
  const cs_x86 * x86 = &insn->detail->x86;
  const cs_x86_op * op = &x86->operands[0];
  guint64 target;

  if (insn->id != X86_INS_CALL || x86->op_count != 1)
    return 0;
  if (op->type == X86_OP_IMM)
    target = op->imm;
  else if (op->type == X86_OP_MEM && op->mem.base == X86_REG_RIP
           && op->mem.index == X86_REG_INVALID && op->mem.segment == X86_REG_INVALID)
    target = *(const guint64 *) (insn->address + insn->size + op->mem.disp);
  else
    return 0;
  return in_ranges (memlog_frida_code, target) ? target : 0;
}

void
memlog_transform (GumStalkerIterator * iterator, GumStalkerOutput * output, gpointer user_data)
{
  MemLog * log = user_data;
  GumX86Writer * cw = output->writer.x86;
  const cs_insn * insn;
  gboolean first = TRUE;
  guint64 callee;
  StorePacked desc;
  gint64 disp;

  log->blocks++;
  while (gum_stalker_iterator_next (iterator, &insn))
  {
    if (first && in_ranges (memlog_read_only_code, insn->address))
      log->blocks_excluded++;
    first = FALSE;
    if (in_ranges (memlog_frida_code, insn->address))
    {
      /* Frida's own code is not logged; its calls of Frida's code run natively from here. */
      callee = frida_callee (insn);
      if (callee != 0)
      {
        gum_x86_writer_put_call_address (cw, callee);
        log->frida_calls++;
      }
      else
        gum_stalker_iterator_keep (iterator);
      continue;
    }
    callee = read_only_callee (insn);
    if (callee != 0)
    {
      /* Natively, from the code cache: the routine returns here, still followed. */
      gum_x86_writer_put_call_address (cw, callee);
      log->native_calls++;
      continue;
    }
    desc.u = 0;
    if (describe (insn, log, &desc.d, &disp))
      put_gated_call (cw, log, &desc, disp);
    else if (insn->id == X86_INS_RET)
      put_gated_call (cw, log, NULL, 0);
    gum_stalker_iterator_keep (iterator);
  }
}
