/*
 * partial_reply_server: a line-protocol TCP server whose supervised handlers write part of a reply
 * and then fault, for the commit-protocol tests (vproxy must never let the partial reply out).
 *
 *   usage: partial_reply_server PORT [fork]  (PORT 0: any; prints "listening PORT")
 *
 * One connection at a time, or with "fork" a child process per connection (like a prefork
 * server, each child needs its own agent and control connection); one request a line:
 *   GET NAME   handle_request: writes "REPLY " then "NAME\n" in two write()s; a NAME containing
 *              "crash" faults between them (after the partial reply was written); one containing
 *              "refuse" returns -1 there instead (a failed check, no fault).
 *   ASK NAME   handle_exchange: writes "QUESTION NAME?\n", reads the client's answer line (a
 *              gradual commit: the question must be released or the exchange deadlocks), then
 *              writes "ANSWERED " and faults if the answer contains "crash" (returns -1 if it
 *              contains "refuse"), else writes the answer line. g_stage is set to 1 before the read
 *              and 2 after it.
 *   WAIT NAME  the same, but waits in poll() for the answer before reading it (as APR does after
 *              a short read): the question must be released before the poll, not at the read.
 *   TALK NAME  handle_dialog: the ASK exchange one call deeper (handle_exchange nested in it, as
 *              Apache's request handling is nested in its connection loop), then "TALKED N\n".
 *   STATE      outside any supervised function: "STATE stage=S served=N\n".
 *   LAST       outside any supervised function: "LAST NS\n", the CLOCK_MONOTONIC time at which
 *              the last successful handle_request had written its reply and was returning
 *              (bench/commit_latency.py: from there to the client's receipt).
 */
#include <poll.h>
#include <stdint.h>
#include <time.h>

#define TCP_LINE_MAX 4096 /* before the include: the longest request line */
#include "tcp_server.h"

int g_stage;
int g_served;
long long g_last_ns;

static void
crash (void)
{
  *(volatile int *) (uintptr_t) 0 = 1;
}

__attribute__((noinline)) int
handle_request (int fd, const char *name)
{
  g_served++;
  write (fd, "REPLY ", 6);
  if (strstr (name, "crash") != NULL)
    crash ();
  if (strstr (name, "refuse") != NULL)
    return -1;
  char line[256];
  int n = snprintf (line, sizeof line, "%s\n", name);
  write (fd, line, n);
  struct timespec now;
  clock_gettime (CLOCK_MONOTONIC, &now);
  g_last_ns = now.tv_sec * 1000000000LL + now.tv_nsec;
  return 0;
}

__attribute__((noinline)) int
handle_exchange (int fd, const char *name, int poll_first)
{
  char line[256];
  char answer[256];
  int n = snprintf (line, sizeof line, "QUESTION %s?\n", name);

  g_stage = 1;
  write (fd, line, n);
  if (poll_first)
  {
    struct pollfd p = { fd, POLLIN, 0 };
    if (poll (&p, 1, 10000) != 1)
      return -2;
  }
  n = 0;
  while (n < (int) sizeof answer - 1)
  {
    if (read (fd, answer + n, 1) != 1)
      return -2;
    if (answer[n++] == '\n')
      break;
  }
  answer[n] = 0;
  g_stage = 2;
  write (fd, "ANSWERED ", 9);
  if (strstr (answer, "crash") != NULL)
    crash ();
  if (strstr (answer, "refuse") != NULL)
    return -1;
  write (fd, answer, n);
  return 0;
}

int g_talks;

__attribute__((noinline)) int
handle_dialog (int fd, const char *name)
{
  char out[32];
  int r = handle_exchange (fd, name, 0);
  if (r == -2)
    return r;
  snprintf (out, sizeof out, "TALKED %d\n", ++g_talks); /* also: no tail call of handle_exchange */
  write (fd, out, strlen (out));
  return r;
}

/* Serves one connection to its end (an over-long line ends it) and closes it. */
static void
serve_connection (int fd)
{
  struct tcp_lines in = { 0 };
  char *line;

  while (tcp_read_line (fd, &in, &line) >= 0)
  {
    char out[128];
    if (strncmp (line, "GET ", 4) == 0)
      handle_request (fd, line + 4);
    else if (strncmp (line, "ASK ", 4) == 0)
      handle_exchange (fd, line + 4, 0);
    else if (strncmp (line, "WAIT ", 5) == 0)
      handle_exchange (fd, line + 5, 1);
    else if (strncmp (line, "TALK ", 5) == 0)
      handle_dialog (fd, line + 5);
    else if (strncmp (line, "STATE", 5) == 0)
    {
      snprintf (out, sizeof out, "STATE stage=%d served=%d\n", g_stage, g_served);
      tcp_write_str (fd, out);
    }
    else if (strncmp (line, "LAST", 4) == 0)
    {
      snprintf (out, sizeof out, "LAST %lld\n", g_last_ns);
      tcp_write_str (fd, out);
    }
    else
      tcp_write_str (fd, "ERROR unknown\n");
  }
  close (fd);
}

int
main (int argc, char **argv)
{
  int lfd = tcp_listen (argc > 1 ? argv[1] : "0", INADDR_LOOPBACK, "partial_reply_server");
  int fork_mode = argc > 2 && strcmp (argv[2], "fork") == 0;

  /* "listening PORT", not READY: tests/wire and bench/commit_latency.py read this line. */
  printf ("listening %d\n", tcp_bound_port (lfd));
  fflush (stdout);
  tcp_serve_forever (lfd, serve_connection, fork_mode ? TCP_SERVE_FORK : TCP_SERVE_ONE_AT_A_TIME);
}
