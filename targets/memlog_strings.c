/*
 * memlog_strings: a supervised function that stores between calls of glibc's read-only string
 * routines (strlen, strcmp, strncasecmp, memchr, strchr, strstr, strspn, memcmp), which the memory
 * log runs natively (Stalker.exclude, 20_memlog.js): every store before, between and after them
 * must still be logged, so a rollback restores all of it.  Driven by stdin lines:
 *
 *   call F      run parse_line() on the request line (F=1: strchr faults on a NULL line, inside
 *               glibc, after the first stores), then print the state line
 *   state       print the state line
 *   quit
 *
 * State line: "state global=HASH frame=HASH ret=R" (FNV-1a of the exact bytes).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "memlog_probe.h"

struct parsed {
  long calls;
  long len;
  long method_get;
  long host_case;
  long space_at;
  long slash_at;
  long version_at;
  long token_len;
  long prefix_same;
  char method[16];
};

struct parsed g_parsed = { 1, 2, 3, 4, 5, 6, 7, 8, 9, "none" };
/* Not constants: the compiler must call the routines, through the PLT. */
char g_line[128] = "GET /manual/en/index.html HTTP/1.1 Host: Example.ORG";
char g_get[8] = "GET";
char g_host[16] = "host: example.org";

/* The supervised function: each store is separated from the next by a read-only library call. */
__attribute__((noinline)) int
parse_line (long *caller_frame, const char *line, const char *probe)
{
  const char *p;

  g_parsed.calls += 1;
  g_parsed.len = (long) strlen (line);
  caller_frame[0] = g_parsed.len;
  g_parsed.method_get = strcmp (line, g_get) > 0;
  p = memchr (line, ' ', (size_t) g_parsed.len);
  g_parsed.space_at = p != NULL ? p - line : -1;
  p = strchr (probe, '/');
  g_parsed.slash_at = p != NULL ? p - line : -1;
  p = strstr (line, "HTTP/");
  g_parsed.version_at = p != NULL ? p - line : -1;
  p = strstr (line, "Host: ");
  g_parsed.host_case = p != NULL && strncasecmp (p, g_host, strlen (g_host)) == 0;
  g_parsed.token_len = (long) strspn (line, "ABCDEFGHIJKLMNOPQRSTUVWXYZ");
  g_parsed.prefix_same = memcmp (line, g_get, 3) == 0;
  g_parsed.method[0] = 'X';
  caller_frame[3] += 42;
  return 1;
}

__attribute__((noinline)) static void
print_state (const long *frame, size_t n, int ret)
{
  printf ("state global=%016llx frame=%016llx ret=%d\n",
          (unsigned long long) fnv (&g_parsed, sizeof g_parsed),
          (unsigned long long) fnv (frame, n * sizeof *frame), ret);
  fflush (stdout);
}

__attribute__((noinline)) static int
serve (void)
{
  volatile long frame[6] = { 11, 22, 33, 44, 55, 66 };
  char line[64];
  int ret = -1;

  while (fgets (line, sizeof line, stdin) != NULL)
  {
    if (strncmp (line, "call", 4) == 0)
    {
      ret = parse_line ((long *) frame, g_line, atoi (line + 4) == 1 ? NULL : g_line);
      print_state ((const long *) frame, 6, ret);
    }
    else if (strncmp (line, "state", 5) == 0)
      print_state ((const long *) frame, 6, ret);
    else if (strncmp (line, "quit", 4) == 0)
      break;
  }
  return 0;
}

int
main (void)
{
  printf ("ready\n");
  fflush (stdout);
  return serve ();
}
