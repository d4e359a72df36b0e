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
 *   STATE      outside any supervised function: "STATE stage=S served=N\n".
 *   LAST       outside any supervised function: "LAST NS\n", the CLOCK_MONOTONIC time at which
 *              the last successful handle_request had written its reply and was returning
 *              (bench/commit_latency.py: from there to the client's receipt).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <signal.h>
#include <unistd.h>

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
handle_exchange (int fd, const char *name)
{
  char line[256];
  char answer[256];
  int n = snprintf (line, sizeof line, "QUESTION %s?\n", name);

  g_stage = 1;
  write (fd, line, n);
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

static void
serve_connection (int fd)
{
  char buf[4096];
  int len = 0;

  for (;;)
  {
    char *nl;
    while ((nl = memchr (buf, '\n', len)) == NULL)
    {
      if (len == (int) sizeof buf)
        return;
      int n = read (fd, buf + len, sizeof buf - len);
      if (n <= 0)
        return;
      len += n;
    }
    *nl = 0;
    if (strncmp (buf, "GET ", 4) == 0)
      handle_request (fd, buf + 4);
    else if (strncmp (buf, "ASK ", 4) == 0)
      handle_exchange (fd, buf + 4);
    else if (strncmp (buf, "STATE", 5) == 0)
    {
      char line[128];
      int n = snprintf (line, sizeof line, "STATE stage=%d served=%d\n", g_stage, g_served);
      write (fd, line, n);
    }
    else if (strncmp (buf, "LAST", 4) == 0)
    {
      char line[64];
      int n = snprintf (line, sizeof line, "LAST %lld\n", g_last_ns);
      write (fd, line, n);
    }
    else
      write (fd, "ERROR unknown\n", 14);
    int used = (int) (nl + 1 - buf);
    memmove (buf, buf + used, len - used);
    len -= used;
  }
}

int
main (int argc, char **argv)
{
  int s = socket (AF_INET, SOCK_STREAM, 0);
  int one = 1;
  struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl (INADDR_LOOPBACK),
                           .sin_port = htons (argc > 1 ? atoi (argv[1]) : 0) };
  socklen_t alen = sizeof a;

  signal (SIGCHLD, SIG_IGN);  /* forked children are reaped by the kernel */
  setsockopt (s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind (s, (struct sockaddr *) &a, sizeof a) != 0 || listen (s, 16) != 0)
  {
    perror ("bind/listen");
    return 1;
  }
  getsockname (s, (struct sockaddr *) &a, &alen);
  printf ("listening %d\n", ntohs (a.sin_port));
  fflush (stdout);
  for (;;)
  {
    int c = accept (s, NULL, NULL);
    if (c < 0)
      continue;
    /* Replies are written in pieces: without this, Nagle + the client's delayed ACK add 40 ms. */
    setsockopt (c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (argc > 2 && strcmp (argv[2], "fork") == 0)
    {
      if (fork () == 0)
      {
        close (s);
        serve_connection (c);
        _exit (0);
      }
      close (c);
      continue;
    }
    serve_connection (c);
    close (c);
  }
}
