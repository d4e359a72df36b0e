/*
 * The control connection to vproxy, written directly from inside the target (sead-control/1,
 * docs/control-protocol.md).  A Unix stream socket: Frida's send() to the host costs ~400 us a
 * message, a socket written from the target ~15 us (shared/notes/frida-findings.md).  Loaded by
 * 10_wire.js as CSOURCE["wire.c"]; libc functions come in as symbols (no C globals: CModule
 * globals were read-only in this setup).
 */
#include <glib.h>

extern int socket (int domain, int type, int protocol);
extern int connect (int fd, const void *addr, unsigned int len);
extern long send (int fd, const void *buf, unsigned long n, int flags);
extern long recv (int fd, void *buf, unsigned long n, int flags);
extern int poll (void *fds, unsigned long nfds, int timeout);
extern int close (int fd);
extern int *__errno_location (void);

#define AF_UNIX 1
#define SOCK_STREAM 1
#define SOCK_CLOEXEC 02000000
#define MSG_DONTWAIT 0x40
#define MSG_NOSIGNAL 0x4000
#define POLLIN 1
#define POLLOUT 4
#define EINTR 4
#define EAGAIN 11

struct pollfd_ { int fd; short events; short revents; };

/* Connects to the gateway's control socket; returns the fd or -errno. */
int
wire_connect (const char *path)
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
wire_send_all (int fd, const guint8 *buf, int len, int timeout_ms)
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
wire_recv (int fd, guint8 *buf, int cap, int timeout_ms)
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

/*
 * Lazy announcement (docs/memlog-and-wire.md): a transaction is announced (BEGIN) only at its
 * first socket I/O, together with its not yet announced ancestors, so the announced transactions
 * of a thread are always the outermost ones of its open stack.  Their ids are kept here, per
 * thread, so that the commit of a transaction that was never announced (nearly every supervised
 * call) ends in C, in the core's native commit hook, without entering JavaScript.  Memory comes
 * from 10_wire.js (`announced`); the thread is keyed by its control block (%fs:0), as in txn.c.
 */
#define MAX_THREADS 256
#define MAX_OPEN 64 /* the core's MAX_FRAMES */

typedef struct {
  guint64 key;
  guint64 n;
  guint64 ids[MAX_OPEN]; /* increasing: a child's id is larger than its parent's */
} Announced;

extern Announced announced[MAX_THREADS];
/* 10_wire.js: sends COMMIT for an announced transaction (its id already popped here). */
extern void wire_js_commit (guint64 id);

static guint64
thread_key (void)
{
  guint64 k;
  __asm__ ("movq %%fs:0, %0" : "=r" (k));
  return k;
}

static Announced *
announced_slot (int create)
{
  guint64 key = thread_key ();
  guint i, k;
  for (k = 0; k < MAX_THREADS; k++)
  {
    Announced * a = &announced[((key >> 12) + k) % MAX_THREADS];
    if (a->key == key)
      return a;
    if (a->key == 0)
    {
      if (!create)
        return NULL;
      guint64 prev;
      __asm__ __volatile__ ("lock cmpxchgq %2, %1"
          : "=a" (prev), "+m" (a->key) : "r" (key), "0" ((guint64) 0) : "memory");
      if (prev == 0)
        return a;
    }
  }
  return NULL;
}

/* The calling thread's transaction `id` was announced (BEGIN queued). 0, or -1 if full. */
int
wire_announce (guint64 id)
{
  Announced * a = announced_slot (1);
  if (a == NULL || a->n >= MAX_OPEN)
    return -1;
  a->ids[a->n++] = id;
  return 0;
}

/* Forget `id` and every later announced transaction of the calling thread (aborted together, or
 * gone without an epilogue). */
void
wire_forget (guint64 id)
{
  Announced * a = announced_slot (0);
  while (a != NULL && a->n > 0 && a->ids[a->n - 1] >= id)
    a->n--;
}

/* The core's native commit hook (Sead.txn.addNativeHooks): `frame` starts with the transaction id
 * (Frame in txn.c).  Announced ones are handed to JavaScript; the rest cost one lookup. */
void
wire_commit (const guint64 * frame, guint64 tid)
{
  Announced * a = announced_slot (0);
  guint64 id = frame[0];
  if (a == NULL || a->n == 0)
    return;
  while (a->n > 0 && a->ids[a->n - 1] > id)
    a->n--; /* announced children that never reached their epilogue (longjmp) */
  if (a->n > 0 && a->ids[a->n - 1] == id)
  {
    a->n--;
    wire_js_commit (id);
  }
}
