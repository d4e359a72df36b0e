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
    log->skipped++;
    return;
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
