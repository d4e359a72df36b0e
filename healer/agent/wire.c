/*
 * The commit protocol's hot path, in C (sead-control/1, docs/control-protocol.md): I/O accounting
 * hooks, the per-thread open transactions, the line queue and the control connection to vproxy,
 * written directly from inside the target.  A Unix stream socket: Frida's send() to the host costs
 * ~400 us a message, a socket written from the target ~15 us (shared/notes/frida-findings.md).
 *
 * Why C: every JavaScript entry costs Frida two gettid() syscalls and every memory read from JS
 * another one or two; the JS hooks this replaces rebuilt the transaction chain at each socket I/O
 * (~1100 gettid a request under COSAK in Apache, ~800 us of its CPU).  JavaScript (10_wire.js) now
 * runs only for: pairing (HELLO) and reconnecting, the 50 ms sweep of lines left queued, the memory log's
 * gradual commit, logging, aborts (already in JS) and status.  Rules for that split:
 *   - The queue lock is never held while calling into JavaScript (JS holds its own lock while it
 *     calls in here: the two locks are only ever taken in the order JS -> queue).
 *   - Our own send/recv/close of the control socket pass through the hooks: its fd is marked
 *     ignored (wire_connect), and an ignored fd never takes the lock.
 *
 * Loaded by 10_wire.js as CSOURCE["wire.c"]; libc functions and all mutable memory come in as
 * symbols (CModule globals were read-only in this setup).
 */
#include <gum/guminterceptor.h>

extern int socket (int domain, int type, int protocol);
extern int connect (int fd, const void * addr, unsigned int len);
extern long send (int fd, const void * buf, unsigned long n, int flags);
extern long recv (int fd, void * buf, unsigned long n, int flags);
extern int poll (void * fds, unsigned long nfds, int timeout);
extern int close (int fd);
extern int getpid (void);
extern int clock_gettime (int clock, void * ts);
extern int sched_yield (void);
extern int getsockopt (int fd, int level, int name, void * value, unsigned int * len);
extern int getsockname (int fd, void * addr, unsigned int * len);
extern int getpeername (int fd, void * addr, unsigned int * len);
extern int * __errno_location (void);

#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOCK_CLOEXEC 02000000
#define SOL_SOCKET 1
#define SO_TYPE 3
#define MSG_PEEK 2
#define MSG_DONTWAIT 0x40
#define MSG_NOSIGNAL 0x4000
#define POLLIN 1
#define POLLOUT 4
#define EINTR 4
#define EAGAIN 11

#define MAX_FD 65536       /* higher fds are not accounted (10_wire.js logs the limit) */
#define MAX_THREADS 256
#define MAX_OPEN 64        /* the core's MAX_FRAMES */
#define MAX_OUTS 4         /* sockets a transaction wrote to, remembered for GRADUAL */
#define MAX_ENTRIES 1024   /* queued lines: a full queue is flushed */
#define OUT_CAP 65536      /* send buffer: a flush sends in pieces of at most this */
#define TEXT_CAP 16384     /* ABORT/UNGUARD/RELEASE lines handed in by JavaScript */
#define SEND_TIMEOUT_MS 1000
#define FLUSH_US 2000      /* lines older than this go out with the next one queued */

/* Sock.state */
#define S_UNKNOWN 0
#define S_IGNORED 1 /* not a connected TCP socket (or the control socket): never accounted */
#define S_TCP 2

/* function data of the I/O hooks (10_wire.js): direction, and the flags argument of a peekable read */
#define IO_IN 1
#define IO_OUT 2
#define IO_PEEK_SHIFT 4

typedef struct {
  guint64 state, cid, off[2]; /* off[0]: out, off[1]: in */
  guint64 cgen;               /* the control connection (Wire.cgen) its CONN was sent on */
  guint8 local[28], peer[28]; /* sockaddr_in/in6 for CONN */
  guint8 pad[8];
} Sock; /* 104 bytes */

enum { E_NONE, E_BEGIN, E_IO, E_COMMIT, E_GRADUAL, E_RELEASE, E_CLOSE, E_CONN, E_TEXT };

typedef struct {
  guint64 type, dir, a, b, c, d;
} Entry; /* BEGIN tx parent(0: -); IO tx cid dir start end; COMMIT tx; GRADUAL tx cid;
            RELEASE cid upto; CLOSE cid; CONN fd cid; TEXT offset length */

typedef struct {
  guint64 lock;            /* the owner's thread key, 0 when free */
  gint64 fd;               /* control connection, -1 when there is none */
  guint64 pid, cgen, control;
  guint64 memlog;          /* the memory log's gradual commit of the calling thread, 0: none */
  guint64 first_us, gen, n, text_len, n_tcp, next_cid;
  guint64 fd_end;          /* above the highest fd ever seen as a TCP socket */
  /* counters (10_wire.js stats(): same order) */
  guint64 lines, flushes, bytes, lost_lines, errs, gradual, send_failures, announced, commits,
      aborts, unguards, folded, reentered;
  gint64 lost_why;         /* -errno of a lost connection to log (1: the gateway closed), 0: none */
  guint64 err_pending;     /* ERR answers not logged yet (the last one is in errline) */
  char errline[256];
  Entry q[MAX_ENTRIES];
  char text[TEXT_CAP];
  char out[OUT_CAP];
  char rbuf[4096];
} Wire;

typedef struct {
  guint64 id, sp;
  guint64 gen, begin;      /* flush generation and queue index of its BEGIN (announced only) */
  guint64 nout;            /* > MAX_OUTS: it wrote to more sockets than remembered */
  guint64 outs[MAX_OUTS];
} Rec;

/* A thread's open transactions, outermost first (the core's frames, mirrored by the native
 * begin/commit hooks and the JS abort); the first `ann` of them are announced to the gateway. */
typedef struct {
  guint64 key, n, ann;
  Rec r[MAX_OPEN];
} Stack;

extern Wire wire;
extern Sock socks[MAX_FD];
extern Stack stacks[MAX_THREADS];
/* 10_wire.js */
extern gint64 wire_js_reconnect (void);   /* pair again (fork, lost connection): 1 if connected */
extern void wire_js_note (void);          /* log wire.lost_why / wire.errline */

static guint64
thread_key (void)
{
  guint64 k;
  __asm__ ("movq %%fs:0, %0" : "=r" (k));
  return k;
}

static guint64
cas (guint64 * p, guint64 old, guint64 new_value)
{
  guint64 prev;
  __asm__ __volatile__ ("lock cmpxchgq %2, %1"
      : "=a" (prev), "+m" (*p) : "r" (new_value), "0" (old) : "memory");
  return prev;
}

/* 1 when taken; 0 when this thread already holds it (a signal handler doing socket I/O inside
 * our own hook): the caller then skips its work instead of deadlocking. */
static int
lock (void)
{
  guint64 me = thread_key ();
  for (;;)
  {
    guint64 prev = cas (&wire.lock, 0, me);
    if (prev == 0)
      return 1;
    if (prev == me)
    {
      wire.reentered++;
      return 0;
    }
    sched_yield ();
  }
}

static void
unlock (void)
{
  __asm__ __volatile__ ("" : : : "memory");
  wire.lock = 0;
}

static guint64
now_us (void)
{
  struct { gint64 s, ns; } ts;
  clock_gettime (1 /* CLOCK_MONOTONIC: vDSO, no syscall */, &ts);
  return (guint64) ts.s * 1000000 + (guint64) ts.ns / 1000;
}

/* The calling thread's stack, found by open addressing on its control block (%fs:0, as txn.c). */
static Stack *
stack_of (int create)
{
  guint64 key = thread_key ();
  guint k;
  for (k = 0; k < MAX_THREADS; k++)
  {
    Stack * s = &stacks[((key >> 12) + k) % MAX_THREADS];
    if (s->key == key)
      return s;
    if (s->key == 0)
    {
      if (!create)
        return NULL;
      if (cas (&s->key, 0, key) == 0)
      {
        s->n = 0; /* a slot is never freed: a dead thread's leftovers go with it */
        s->ann = 0;
        return s;
      }
      if (s->key == key)
        return s;
    }
  }
  return NULL;
}

static void
truncate_to (Stack * s, guint64 n)
{
  s->n = n;
  if (s->ann > n)
    s->ann = n;
}

/* --- formatting ------------------------------------------------------------------------------ */

static char *
put_str (char * p, const char * s)
{
  while (*s != 0)
    *p++ = *s++;
  return p;
}

static char *
put_u64 (char * p, guint64 v)
{
  char tmp[24];
  int n = 0;
  do
  {
    tmp[n++] = (char) ('0' + v % 10);
    v /= 10;
  } while (v != 0);
  while (n > 0)
    *p++ = tmp[--n];
  return p;
}

static char *
put_hex (char * p, guint v)
{
  static const char digits[] = "0123456789abcdef";
  char tmp[8];
  int n = 0;
  do
  {
    tmp[n++] = digits[v & 15];
    v >>= 4;
  } while (v != 0);
  while (n > 0)
    *p++ = tmp[--n];
  return p;
}

/* `1.2.3.4:80` or `[::1]:80` (RFC 5952: the longest run of >= 2 zero words is `::`). */
static char *
put_addr (char * p, const guint8 * sa)
{
  guint port = ((guint) sa[2] << 8) | sa[3];
  int i;
  if (*(const guint16 *) sa == AF_INET)
  {
    for (i = 0; i < 4; i++)
    {
      if (i > 0)
        *p++ = '.';
      p = put_u64 (p, sa[4 + i]);
    }
  }
  else
  {
    guint w[8];
    int best = -1, best_len = 1, j;
    for (i = 0; i < 8; i++)
      w[i] = ((guint) sa[8 + 2 * i] << 8) | sa[9 + 2 * i];
    for (i = 0; i < 8;)
    {
      if (w[i] != 0)
      {
        i++;
        continue;
      }
      for (j = i; j < 8 && w[j] == 0; j++)
        ;
      if (j - i > best_len)
      {
        best = i;
        best_len = j - i;
      }
      i = j;
    }
    *p++ = '[';
    for (i = 0; i < 8; i++)
    {
      if (i == best)
      {
        p = put_str (p, "::");
        i += best_len - 1;
        continue;
      }
      if (i > 0 && i != best + best_len)
        *p++ = ':';
      p = put_hex (p, w[i]);
    }
    *p++ = ']';
  }
  *p++ = ':';
  return put_u64 (p, port);
}

/* One line for entry e (with `end` for a coalesced IO range); NULL if it says nothing any more. */
static char *
put_entry (char * p, const Entry * e, guint64 end)
{
  Sock * s;
  switch (e->type)
  {
    case E_BEGIN:
      p = put_u64 (put_str (p, "BEGIN "), e->a);
      if (e->b == 0)
        return put_str (p, " -\n");
      return put_str (put_u64 (put_str (p, " "), e->b), "\n");
    case E_IO:
      p = put_u64 (put_str (p, "IO "), e->a);
      p = put_u64 (put_str (p, " "), e->b);
      p = put_str (p, e->dir == 0 ? " out " : " in ");
      p = put_u64 (p, e->c);
      return put_str (put_u64 (put_str (p, " "), end), "\n");
    case E_COMMIT:
      return put_str (put_u64 (put_str (p, "COMMIT "), e->a), "\n");
    case E_GRADUAL:
      p = put_u64 (put_str (p, "GRADUAL "), e->a);
      return put_str (put_u64 (put_str (p, " "), e->b), "\n");
    case E_RELEASE:
      p = put_u64 (put_str (p, "RELEASE "), e->a);
      return put_str (put_u64 (put_str (p, " "), e->b), "\n");
    case E_CLOSE:
      return put_str (put_u64 (put_str (p, "CLOSE "), e->a), "\n");
    case E_CONN:
      /* skipped when already sent on this connection (re-announced after a reconnect) or when
       * the fd is another connection's by now (a CLOSE flushes before its fd can be reused) */
      s = &socks[e->a];
      if (s->cid != e->b || s->cgen == wire.cgen)
        return NULL;
      s->cgen = wire.cgen;
      p = put_u64 (put_str (p, "CONN "), s->cid);
      p = put_addr (put_str (p, " "), s->local);
      p = put_addr (put_str (p, " "), s->peer);
      return put_str (p, "\n");
    case E_TEXT:
    {
      guint64 i;
      for (i = 0; i < e->b; i++)
        *p++ = wire.text[e->a + i];
      return p;
    }
    default:
      return NULL;
  }
}

/* --- the control connection ------------------------------------------------------------------- */

struct pollfd_ { int fd; short events; short revents; };

/* Connects to the gateway's control socket; returns the fd (marked ignored) or -errno. */
gint64
wire_connect (const char * path)
{
  guint8 addr[110];
  int fd, i;

  for (i = 0; i < 110; i++)
    addr[i] = 0;
  *(guint16 *) addr = AF_UNIX;
  for (i = 0; path[i] != 0 && i < 107; i++)
    addr[2 + i] = path[i];
  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -*__errno_location ();
  if (fd < MAX_FD)
    socks[fd].state = S_IGNORED;
  if (connect (fd, addr, 110) != 0)
  {
    int err = *__errno_location ();
    close (fd);
    return -err;
  }
  return fd;
}

/*
 * Writes all len bytes. Never drops a part silently: when the gateway lags (EAGAIN) it waits for
 * the socket to drain, up to timeout_ms in total, and then reports failure. Returns 0 or -errno
 * (-EAGAIN on timeout).
 */
int
wire_send_all (int fd, const guint8 * buf, int len, int timeout_ms)
{
  int done = 0;

  while (done < len)
  {
    long n = send (fd, buf + done, len - done, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0)
    {
      done += n;
      continue;
    }
    int err = n < 0 ? *__errno_location () : EAGAIN;
    if (err == EINTR)
      continue;
    if (err != EAGAIN)
      return -err;
    struct pollfd_ p = { fd, POLLOUT, 0 };
    if (poll (&p, 1, timeout_ms) <= 0)
      return -EAGAIN;
  }
  return 0;
}

/*
 * Reads what the gateway sent (answers, ERR lines). With timeout_ms > 0 waits that long for the
 * first byte. Returns the byte count, 0 when nothing is there, -1 when the gateway closed, or
 * -errno.
 */
int
wire_recv (int fd, guint8 * buf, int cap, int timeout_ms)
{
  if (timeout_ms > 0)
  {
    struct pollfd_ p = { fd, POLLIN, 0 };
    if (poll (&p, 1, timeout_ms) <= 0)
      return 0;
  }
  long n = recv (fd, buf, cap, MSG_DONTWAIT);
  if (n > 0)
    return (int) n;
  if (n == 0)
    return -1;
  int err = *__errno_location ();
  return err == EAGAIN ? 0 : -err;
}

/* Lock held: the connection is gone (why: -errno, -EAGAIN for a gateway that read nothing for
 * SEND_TIMEOUT_MS, 1 for a close); JavaScript logs it (wire_js_note) and reconnects later. */
static void
lost (gint64 why)
{
  close ((int) wire.fd);
  wire.fd = -1;
  wire.lost_why = why;
}

/* Lock held: reads the gateway's answers so its writes never block; counts ERR lines. */
static void
drain (void)
{
  int round;
  for (round = 0; round < 16 && wire.fd >= 0; round++)
  {
    int n = wire_recv ((int) wire.fd, (guint8 *) wire.rbuf, sizeof (wire.rbuf) - 1, 0);
    int i, start = 0;
    if (n == 0)
      return;
    if (n < 0)
    {
      lost (n == -1 ? 1 : n);
      return;
    }
    for (i = 0; i <= n; i++)
    {
      if (i < n && wire.rbuf[i] != '\n')
        continue;
      if (i - start >= 3 && wire.rbuf[start] == 'E' && wire.rbuf[start + 1] == 'R' &&
          wire.rbuf[start + 2] == 'R')
      {
        int k, len = i - start < 255 ? i - start : 255;
        for (k = 0; k < len; k++)
          wire.errline[k] = wire.rbuf[start + k];
        wire.errline[len] = 0;
        wire.errs++;
        wire.err_pending++;
      }
      start = i + 1;
    }
  }
}

static int
send_out (guint64 len)
{
  int r = wire_send_all ((int) wire.fd, (const guint8 *) wire.out, (int) len, SEND_TIMEOUT_MS);
  if (r != 0)
  {
    wire.send_failures++;
    lost (r);
    return 0;
  }
  wire.bytes += len;
  return 1;
}

/* Lock held, connected: every queued entry as lines, adjacent IO ranges of one tx, cid and
 * direction as one, in pieces of at most OUT_CAP bytes cut at line ends. */
static void
send_queue (void)
{
  guint64 i, len = 0, lines = 0;
  for (i = 0; i < wire.n && wire.fd >= 0; i++)
  {
    Entry * e = &wire.q[i];
    guint64 end = e->d;
    char * p;
    if (e->type == E_NONE)
      continue;
    if (e->type == E_IO)
    {
      guint64 k;
      for (k = i + 1; k < wire.n; k++)
      {
        Entry * f = &wire.q[k];
        if (f->type == E_NONE)
          continue;
        if (f->type != E_IO || f->a != e->a || f->b != e->b || f->dir != e->dir || f->c != end)
          break;
        end = f->d;
        i = k;
      }
    }
    if (len + 512 + (e->type == E_TEXT ? e->b : 0) > OUT_CAP)
    {
      if (!send_out (len))
        break;
      len = 0;
    }
    p = put_entry (wire.out + len, e, end);
    if (p == NULL)
      continue;
    len = (guint64) (p - wire.out);
    lines++;
  }
  if (len > 0 && wire.fd >= 0)
    send_out (len);
  if (wire.fd >= 0)
  {
    wire.lines += lines;
    wire.flushes++;
    drain ();
  }
  else
  {
    wire.lost_lines += lines;
  }
}

static void
clear_queue (void)
{
  wire.n = 0;
  wire.text_len = 0;
  wire.gen++;
}

/* Lock held: send the queue if connected (0), or say that pairing is needed first (1). */
static int
flush_locked (void)
{
  if (wire.n == 0)
    return 0;
  if (wire.fd >= 0 && (guint64) getpid () != wire.pid)
  {
    /* forked: the fd is the parent's connection; this process needs its own */
    close ((int) wire.fd);
    wire.fd = -1;
  }
  if (wire.fd < 0)
    return 1;
  send_queue ();
  clear_queue ();
  return 0;
}

static void
after_unlock (void)
{
  if (wire.lost_why != 0 || wire.err_pending != 0)
    wire_js_note ();
}

/* Lock not held: send every queued line now (pairing again first if needed; when that fails the
 * lines are counted as lost). */
void
wire_flush (void)
{
  int attempt;
  for (attempt = 0; attempt < 2; attempt++)
  {
    if (!lock ())
      return;
    if (!flush_locked ())
    {
      unlock ();
      after_unlock ();
      return;
    }
    unlock ();
    if (attempt == 0 && wire_js_reconnect () > 0)
      continue;
    break;
  }
  if (!lock ())
    return;
  if (wire.fd < 0)
  {
    guint64 i;
    for (i = 0; i < wire.n; i++)
      if (wire.q[i].type != E_NONE)
        wire.lost_lines++;
    clear_queue ();
  }
  unlock ();
  after_unlock ();
}

/* The sweep (10_wire.js, every 50 ms on Frida's thread): lines that no later line pushed out. */
void
wire_timer (void)
{
  if (wire.n > 0)
    wire_flush ();
}

/* Pairing done (10_wire.js sent HELLO and got OK on fd): announce every known socket on the new
 * connection, then let the queue use it. */
void
wire_publish (gint64 fd)
{
  guint64 i, len = 0;
  if (!lock ())
    return;
  wire.fd = fd;
  wire.pid = (guint64) getpid ();
  wire.cgen++;
  for (i = 0; i < wire.fd_end && wire.fd >= 0; i++)
  {
    Entry e = { E_CONN, 0, i, socks[i].cid, 0, 0 };
    char * p;
    if (socks[i].state != S_TCP)
      continue;
    if (len + 512 > OUT_CAP)
    {
      if (!send_out (len))
        break;
      len = 0;
    }
    p = put_entry (wire.out + len, &e, 0);
    if (p != NULL)
    {
      len = (guint64) (p - wire.out);
      wire.lines++;
    }
  }
  if (len > 0 && wire.fd >= 0)
    send_out (len);
  unlock ();
  after_unlock ();
}

/* --- the queue (lock held) ------------------------------------------------------------------- */

/*
 * A free entry.  Lines already queued go out first when the queue is full (unconnected: counted as
 * lost) or when the first of them waited FLUSH_US.  Otherwise lines wait for the next urgent one
 * (a root COMMIT, ABORT, GRADUAL, RELEASE, CLOSE), a later line once they are 2 ms old, or the
 * 50 ms sweep: no timer is armed per batch (that woke Frida's JS thread twice a request), and
 * under GUARD nothing waits on them (every release is urgent).
 */
static Entry *
push (guint64 type)
{
  Entry * e;
  if (wire.n > 0 && (wire.n >= MAX_ENTRIES || now_us () - wire.first_us >= FLUSH_US) &&
      flush_locked () && wire.n >= MAX_ENTRIES)
  {
    wire.lost_lines += wire.n;
    clear_queue ();
  }
  if (wire.n == 0)
    wire.first_us = now_us ();
  e = &wire.q[wire.n++];
  e->type = type;
  e->dir = 0;
  e->a = e->b = e->c = e->d = 0;
  return e;
}

/* Lock held: a line handed in by JavaScript (ABORT with its reason, UNGUARD, RELEASE, CLOSE). */
static void
push_text (const char * text)
{
  guint64 len = 0, i;
  Entry * e;
  while (text[len] != 0 && len < 4096)
    len++;
  if (wire.text_len + len > TEXT_CAP && flush_locked ())
  {
    wire.lost_lines += wire.n;
    clear_queue ();
  }
  if (wire.text_len + len > TEXT_CAP)
    len = 0; /* cannot happen: a line is at most 4096 bytes */
  e = push (E_TEXT);
  e->a = wire.text_len;
  e->b = len;
  for (i = 0; i < len; i++)
    wire.text[wire.text_len + i] = text[i];
  wire.text_len += len;
}

/* BEGIN for the thread's open transactions not announced yet (all its ancestors are, or are in
 * this batch: the announced ones are always the outermost). */
static void
announce (Stack * s)
{
  while (s->ann < s->n)
  {
    Rec * r = &s->r[s->ann];
    Entry * e = push (E_BEGIN);
    e->a = r->id;
    e->b = s->ann > 0 ? s->r[s->ann - 1].id : 0;
    r->gen = wire.gen;
    r->begin = wire.n - 1;
    r->nout = 0;
    s->ann++;
    wire.announced++;
  }
}

static void
note_out (Rec * r, guint64 cid)
{
  guint64 i;
  if (r->nout > MAX_OUTS)
    return;
  for (i = 0; i < r->nout; i++)
    if (r->outs[i] == cid)
      return;
  if (r->nout < MAX_OUTS)
    r->outs[r->nout] = cid;
  r->nout++;
}

/* Forgets cid in r's output sockets; 1 if r wrote there (or may have: too many to remember). */
static int
take_out (Rec * r, guint64 cid)
{
  guint64 i;
  if (r->nout > MAX_OUTS)
    return 1;
  for (i = 0; i < r->nout; i++)
  {
    if (r->outs[i] == cid)
    {
      r->outs[i] = r->outs[--r->nout];
      return 1;
    }
  }
  return 0;
}

/* --- socket I/O hooks ------------------------------------------------------------------------- */

typedef struct {
  gint64 fd;
} IoInvocation;

/* A socket's first sight: a connected TCP socket gets a cid and CONN; anything else is ignored
 * until it is closed. */
static Sock *
sock_of (gint64 fd)
{
  Sock * s;
  int type = 0;
  unsigned int len = 4, llen = 128, plen = 128;
  guint8 local[128], peer[128];
  guint64 i;
  if (fd < 0 || fd >= MAX_FD)
    return NULL;
  s = &socks[fd];
  if (s->state != S_UNKNOWN)
    return s->state == S_TCP ? s : NULL;
  if (getsockopt ((int) fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM ||
      getsockname ((int) fd, local, &llen) != 0 || getpeername ((int) fd, peer, &plen) != 0 ||
      (*(guint16 *) local != AF_INET && *(guint16 *) local != AF_INET6) ||
      *(guint16 *) peer != *(guint16 *) local)
  {
    s->state = S_IGNORED;
    return NULL;
  }
  if (!lock ())
    return NULL;
  if (s->state == S_UNKNOWN) /* another thread may have been first */
  {
    for (i = 0; i < 28; i++)
    {
      s->local[i] = local[i];
      s->peer[i] = peer[i];
    }
    s->off[0] = s->off[1] = 0;
    s->cgen = 0;
    s->cid = ++wire.next_cid;
    s->state = S_TCP;
    wire.n_tcp++;
    if ((guint64) fd >= wire.fd_end)
      wire.fd_end = (guint64) fd + 1;
    if (wire.control)
    {
      Entry * e = push (E_CONN);
      e->a = (guint64) fd;
      e->b = s->cid;
    }
  }
  unlock ();
  return s->state == S_TCP ? s : NULL;
}

/* Lock held: while r's BEGIN is still in the unsent queue, its queued lines are folded into
 * `parent` (its IO lines and the BEGIN of a queued child name the parent, its BEGIN is dropped)
 * and 1 is returned; the gateway then never hears of r. 0 once its BEGIN was sent. */
static int
fold_into (const Rec * r, guint64 parent)
{
  guint64 i;
  if (r->gen != wire.gen || r->begin >= wire.n || wire.q[r->begin].type != E_BEGIN ||
      wire.q[r->begin].a != r->id)
    return 0;
  wire.q[r->begin].type = E_NONE;
  for (i = r->begin + 1; i < wire.n; i++)
  {
    Entry * e = &wire.q[i];
    if (e->type == E_IO && e->a == r->id)
      e->a = parent;
    else if (e->type == E_BEGIN && e->b == r->id)
      e->b = parent;
  }
  wire.folded++;
  return 1;
}

/* Before a read inside a transaction that wrote on this socket: release that output (GRADUAL)
 * and make the memory changed so far permanent, or the request/response exchange deadlocks. */
static void
before_input (Sock * s)
{
  Stack * t;
  guint64 i, wrote = 0; /* bit i: t->r[i] wrote on s (MAX_OPEN is 64) */
  if (!wire.control)
    return;
  t = stack_of (0);
  if (t == NULL || t->ann == 0)
    return;
  if (!lock ())
    return;
  for (i = 0; i < t->ann; i++)
    if (take_out (&t->r[i], s->cid))
      wrote |= 1ULL << i;
  if (wrote != 0)
  {
    /*
     * The innermost announced transactions (never the outermost) that this GRADUAL leaves
     * holding nothing at the gateway (they wrote on no other socket) are folded into their
     * parent while their BEGIN is still queued, and are unannounced again: no BEGIN now, no
     * COMMIT later, announced again if they move bytes again. The same for the gateway: a
     * GRADUAL releases the output of a transaction and of its ancestors on that connection and
     * commits the input of its ancestors and descendants, so the parent's covers the same bytes.
     * Apache under COSAK: each request's two nested transactions were 4 of the 7 lines the
     * gateway parsed at each GRADUAL, while Apache waits for its next request.
     */
    while (t->ann > 1 && t->r[t->ann - 1].nout == 0 &&
        fold_into (&t->r[t->ann - 1], t->r[t->ann - 2].id))
    {
      if (wrote >> (t->ann - 1) & 1)
        wrote |= 1ULL << (t->ann - 2); /* its output on s is the parent's now */
      t->ann--;
    }
    for (i = 0; i < t->ann; i++)
    {
      if (wrote >> i & 1)
      {
        Entry * e = push (E_GRADUAL);
        e->a = t->r[i].id;
        e->b = s->cid;
      }
    }
    wire.gradual++;
  }
  unlock ();
  if (wrote != 0)
  {
    if (wire.memlog)
      ((void (*) (void)) wire.memlog) ();
    wire_flush ();
  }
}

/* Bytes [start, end) moved on s; inside a transaction they belong to its innermost one. */
static void
account (Sock * s, guint64 dir, guint64 n)
{
  Stack * t = stack_of (1);
  guint64 start, end;
  int urgent = 0;
  if (!lock ())
    return;
  start = s->off[dir];
  end = start + n;
  s->off[dir] = end;
  if (!wire.control || t == NULL)
  {
    /* no gateway: offsets only (nothing would ever send the lines); no slot for this thread (more
     * than MAX_THREADS, as in the core): nothing is sent, the gateway holds the bytes (fail closed) */
    unlock ();
    return;
  }
  if (t->n == 0)
  {
    if (dir == 0)
    {
      Entry * e = push (E_RELEASE);
      e->a = s->cid;
      e->b = end;
      urgent = 1;
    }
  }
  else
  {
    Rec * inner = &t->r[t->n - 1];
    Entry * last;
    announce (t);
    last = wire.n > 0 ? &wire.q[wire.n - 1] : NULL;
    if (last != NULL && last->type == E_IO && last->a == inner->id && last->b == s->cid &&
        last->dir == dir && last->d == start)
    {
      last->d = end;
    }
    else
    {
      Entry * e = push (E_IO);
      e->a = inner->id;
      e->b = s->cid;
      e->dir = dir;
      e->c = start;
      e->d = end;
    }
    if (dir == 0)
      note_out (inner, s->cid);
  }
  unlock ();
  if (urgent)
    wire_flush ();
}

void
wire_io_enter (GumInvocationContext * ic)
{
  gsize kind = GUM_IC_GET_FUNC_DATA (ic, gsize);
  IoInvocation * inv = GUM_IC_GET_INVOCATION_DATA (ic, IoInvocation);
  gint64 fd = (gint64) (int) (gsize) gum_invocation_context_get_nth_argument (ic, 0);
  Sock * s;
  guint peek = (guint) (kind >> IO_PEEK_SHIFT);

  inv->fd = -1;
  if (fd >= 0 && fd < MAX_FD && socks[fd].state == S_IGNORED)
    return; /* files, pipes, the control socket: the common case, no lock */
  s = sock_of (fd);
  if (s == NULL)
    return;
  if (peek != 0 && ((int) (gsize) gum_invocation_context_get_nth_argument (ic, peek) & MSG_PEEK))
    return;
  inv->fd = fd;
  if (kind & IO_IN)
    before_input (s);
}

void
wire_io_leave (GumInvocationContext * ic)
{
  gsize kind = GUM_IC_GET_FUNC_DATA (ic, gsize);
  IoInvocation * inv = GUM_IC_GET_INVOCATION_DATA (ic, IoInvocation);
  gint64 n;
  if (inv->fd < 0 || socks[inv->fd].state != S_TCP)
    return;
  n = (gint64) gum_invocation_context_get_return_value (ic);
  if (n > 0)
    account (&socks[inv->fd], (kind & IO_IN) ? 1 : 0, (guint64) n);
}

void
wire_close_enter (GumInvocationContext * ic)
{
  gint64 fd = (gint64) (int) (gsize) gum_invocation_context_get_nth_argument (ic, 0);
  Sock * s;
  int urgent = 0;
  if (fd < 0 || fd >= MAX_FD)
    return;
  s = &socks[fd];
  if (s->state == S_UNKNOWN)
    return;
  if (s->state != S_TCP)
  {
    s->state = S_UNKNOWN;
    return;
  }
  if (!lock ())
    return;
  s->state = S_UNKNOWN;
  wire.n_tcp--;
  if (wire.control)
  {
    push (E_CLOSE)->a = s->cid;
    urgent = 1;
  }
  unlock ();
  if (urgent)
    wire_flush ();
}

/*
 * poll/ppoll that may block, waiting for input on a socket an open transaction wrote to: the same
 * deadlock as a read (the peer waits for the held output before it sends), so the same GRADUAL.
 * APR waits in poll() before its read after a short read (APR_INCOMPLETE_READ): Apache -X with a
 * connection-long transaction (coverage ALL/COSAK) held each keep-alive response's tail until the
 * 5 s keep-alive timeout.  A poll that cannot block (timeout 0) changes nothing.
 */
void
wire_poll_enter (GumInvocationContext * ic)
{
  gsize is_ppoll = GUM_IC_GET_FUNC_DATA (ic, gsize);
  const struct pollfd_ * fds = gum_invocation_context_get_nth_argument (ic, 0);
  guint64 nfds = (guint64) gum_invocation_context_get_nth_argument (ic, 1);
  gpointer timeout = gum_invocation_context_get_nth_argument (ic, 2);
  const Stack * t;
  guint64 i;
  if (!wire.control)
    return;
  t = stack_of (0);
  if (t == NULL || t->ann == 0 || fds == NULL)
    return;
  if (is_ppoll ? (timeout != NULL && ((const gint64 *) timeout)[0] == 0 &&
                  ((const gint64 *) timeout)[1] == 0)
               : (int) (gsize) timeout == 0)
    return;
  for (i = 0; i < nfds; i++)
  {
    Sock * s;
    if (!(fds[i].events & POLLIN) || fds[i].fd < 0 || fds[i].fd >= MAX_FD ||
        socks[fds[i].fd].state == S_IGNORED)
      continue;
    s = sock_of (fds[i].fd);
    if (s != NULL)
      before_input (s);
  }
}

/* --- transactions: the core's native hooks and the JS abort ----------------------------------- */

/* Every supervised call (Sead.txn.addNativeHooks): `frame` starts with id, fn, sp (txn.c). */
void
wire_begin (const guint64 * frame, guint64 tid)
{
  Stack * s = stack_of (1);
  guint64 sp = frame[2];
  Rec * r;
  if (s == NULL)
    return;
  /* records the core drops too: returned past without an epilogue (longjmp) */
  while (s->n > 0 && s->r[s->n - 1].sp < sp)
    truncate_to (s, s->n - 1);
  if (s->n >= MAX_OPEN)
    return;
  r = &s->r[s->n++];
  r->id = frame[0];
  r->sp = sp;
}

/*
 * A transaction committed.  Never announced (nearly every supervised call): nothing to send.
 * Announced and nested: its ranges now belong to its parent; if its BEGIN has not been flushed
 * yet, its lines are folded into the parent (IO rewritten to the parent, BEGIN dropped, no
 * COMMIT), since the gateway could act on nothing else before the parent ends.  Otherwise, and
 * for a root (whose output becomes releasable: flushed at once), COMMIT.
 */
void
wire_commit (const guint64 * frame, guint64 tid)
{
  Stack * s = stack_of (0);
  guint64 id = frame[0];
  Rec * r;
  int urgent = 0;
  if (s == NULL || s->n == 0)
    return;
  while (s->n > 0 && s->r[s->n - 1].id > id)
    truncate_to (s, s->n - 1); /* children that never reached their epilogue (longjmp) */
  if (s->n == 0 || s->r[s->n - 1].id != id)
    return;
  if (s->n > s->ann)
  {
    s->n--;
    return;
  }
  if (!lock ())
    return;
  r = &s->r[s->n - 1];
  truncate_to (s, s->n - 1);
  wire.commits++;
  if (s->n == 0)
  {
    push (E_COMMIT)->a = id;
    urgent = 1;
  }
  else
  {
    Rec * parent = &s->r[s->n - 1];
    guint64 i;
    if (r->nout > MAX_OUTS)
      parent->nout = MAX_OUTS + 1;
    else
      for (i = 0; i < r->nout; i++)
        note_out (parent, r->outs[i]);
    if (!fold_into (r, parent->id))
      push (E_COMMIT)->a = id;
  }
  unlock ();
  if (urgent)
    wire_flush ();
}

/* The calling thread's transaction `id` (and any open child) aborted (onTxAbort, on its thread):
 * queues `line` (ABORT with its reason) if it was announced, and flushes.  1 if it was. */
int
wire_abort (guint64 id, const char * line)
{
  Stack * s = stack_of (0);
  guint64 i;
  int was;
  if (s == NULL)
    return 0;
  for (i = 0; i < s->n && s->r[i].id != id; i++)
    ;
  if (i == s->n)
    return 0;
  was = i < s->ann;
  truncate_to (s, i);
  if (!was || !lock ())
    return 0;
  wire.aborts++;
  push_text (line);
  unlock ();
  wire_flush ();
  return 1;
}

/* A line from JavaScript (RELEASE, CLOSE), sent at once. */
void
wire_send_line (const char * line)
{
  if (!lock ())
    return;
  push_text (line);
  unlock ();
  wire_flush ();
}

/* Clean detach (every hook is already removed): the announced transactions still open are
 * committed, innermost first, then UNGUARD; sent at once. */
void
wire_unguard (void)
{
  guint64 i;
  if (!lock ())
    return;
  for (i = 0; i < MAX_THREADS; i++)
  {
    Stack * s = &stacks[i];
    while (s->key != 0 && s->ann > 0)
    {
      push (E_COMMIT)->a = s->r[s->ann - 1].id;
      truncate_to (s, s->ann - 1);
    }
    if (s->key != 0)
      s->n = 0;
  }
  wire.unguards++;
  push_text ("UNGUARD\n");
  unlock ();
  wire_flush ();
}

/* fd's socket for 10_wire.js (cidOf, offsets): classified now if not seen yet; its Sock or NULL. */
Sock *
wire_sock (gint64 fd)
{
  return sock_of (fd);
}

/* The layout 10_wire.js mirrors (checked once at load): sizes of Wire, Sock, Stack, then the
 * offsets of fd, counters, lost_why. */
guint64
wire_layout (int i)
{
  switch (i)
  {
    case 0: return sizeof (Wire);
    case 1: return sizeof (Sock);
    case 2: return sizeof (Stack);
    case 3: return (guint64) (gsize) &((Wire *) 0)->fd;
    case 4: return (guint64) (gsize) &((Wire *) 0)->lines;
    case 5: return (guint64) (gsize) &((Wire *) 0)->lost_why;
    case 6: return (guint64) (gsize) &((Wire *) 0)->errline;
    default: return 0;
  }
}
