/*
 * The memory log (STEM section 3.3.1): the old bytes of every store a supervised function makes,
 * recorded by a call the Stalker transform places before each instruction with a memory
 * destination, undone in reverse order on abort.  Loaded by 20_memlog.js as CSOURCE["memlog.c"].
 *
 * Every followed thread has one MemLog (preallocated storage, the paper's proposed enhancement);
 * every translated store instruction has one StoreDesc that points at its thread's MemLog, so the
 * call needs no thread lookup.  There are no C globals: CModule globals were read-only in this
 * setup (see shared/notes/frida-findings.md), all state lives in memory the script allocates.
 *
 * Log layout: entries back to back, each  [u64 addr][u64 len][len bytes, padded to 8][u64 size]
 * where the trailing size (header + padded data + trailer) lets rollback walk backwards.
 */
#include <glib.h>

typedef struct _MemLog MemLog;
typedef struct _StoreDesc StoreDesc;
typedef struct _Marker Marker;

#define MAX_MARKERS 64 /* the core's MAX_FRAMES */
#define MAX_THREADS 256

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
  guint64 n;            /* open transactions (markers) */
  Marker markers[MAX_MARKERS];
};

enum {
  DESC_REP = 1,       /* rep stos/movs: size is per element, times rcx */
  DESC_FS = 2,        /* fs: segment */
  DESC_ADDR32 = 4,    /* 32-bit address computation */
  DESC_MASKED = 8,    /* AVX-512 masked store: may touch fewer bytes than its width */
};

/* One store instruction; base and index are register numbers of 20_memlog.js (0: none). */
struct _StoreDesc {
  MemLog *log;
  gint64 disp;        /* for rip-relative operands: the absolute address, base = none */
  guint32 size;
  guint8 base;
  guint8 index;
  guint8 scale;
  guint8 flags;
};

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
  if (masked && ((addr & 4095) + n > 4096))
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
}

/*
 * Called before every store of a followed thread, from code the transform writes inline
 * (20_memlog.js saves the caller-saved registers and flags and passes the operand's register
 * values): a Stalker callout saves the whole CPU context and cost ~8x more a store.
 */
void
memlog_store (guint64 base, guint64 index, guint64 rcx, StoreDesc *d)
{
  MemLog *log = d->log;
  guint64 addr, n;

  if (!log->on)
    return;
  addr = (guint64) d->disp + base + index * d->scale;
  if (d->flags & DESC_ADDR32)
    addr &= 0xffffffff;
  if (d->flags & DESC_FS)
    addr += log->fs_base;
  n = d->size;
  if (d->flags & DESC_REP)
    n *= rcx;
  record (log, addr, n, (d->flags & DESC_MASKED) != 0);
}

/* Undo every entry above pos, newest first; the log shrinks to pos. Returns entries restored. */
guint64
memlog_rollback (MemLog *log, guint64 pos)
{
  guint64 count = 0;

  while (log->len > pos)
  {
    guint64 total = *(guint64 *) (log->buf + log->len - 8);
    guint8 *entry = log->buf + log->len - total;
    guint64 addr = *(guint64 *) entry;
    guint64 n = *(guint64 *) (entry + 8);

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
extern MemLog * logs[MAX_THREADS];
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
 * restore == 0, dropped).  Returns the entries restored, -1 without a marker; *complete is 0 when
 * a store did not fit in the log since the transaction began.
 */
gint64
memlog_abort (MemLog * log, guint64 id, int restore, guint64 * complete)
{
  gint64 i = find_marker (log, id);
  Marker * m;
  gint64 restored = 0;
  if (i < 0)
    return -1;
  m = &log->markers[i];
  *complete = log->overflows == m->overflows;
  if (restore)
    restored = (gint64) memlog_rollback (log, m->pos);
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

/*
 * A `ret` of a followed thread to an address that is not mapped (a smashed return address, no
 * stack protector) must fault where the exception handler can heal it.  Stalker would instead
 * try to translate the garbage target inside its own code, and the process died of SIGSEGV with
 * the handler never running.  The transform calls this before every `ret` with its target: a page
 * seen readable before passes at the cost of one cache probe (memlog_ret_pages, direct-mapped,
 * page number + 1; benign races between threads only cost a re-check).  Otherwise the target is
 * read without faulting and, if unreadable, read for real: that fault is an ordinary SIGSEGV in a
 * supervised transaction, healed by rollback and a virtualized return.
 */
#define RET_PAGES 4096
extern guint64 memlog_ret_pages[RET_PAGES];

void
memlog_check_ret (guint64 target)
{
  guint64 page = target >> 12;
  guint64 * slot = &memlog_ret_pages[page % RET_PAGES];
  guint8 byte;
  if (*slot == page + 1)
    return;
  if (target < 0x10000 || safe_read (&byte, target, 1) != 1)
    byte = *(volatile guint8 *) target;
  *slot = page + 1;
}
