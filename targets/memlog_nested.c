/*
 * memlog_nested: a supervised transaction (outer) with a supervised child (inner), both changing
 * globals, the heap and their callers' frames, each faulting on request.  For the memory-log tests
 * of heals followed by more writes (tests/memlog/test_nested_heal_e2e.py).  Driven by stdin lines:
 *
 *   nest I O    run outer(I, O): outer writes, calls inner(I), writes again (also through memcpy
 *               and memset), then faults if O; I=1 makes inner fault after its own writes
 *   call I      run inner(I) alone (a root transaction)
 *   state       print the state line
 *   quit
 *
 * State line: "state parent=HASH inner=HASH heap=HASH frame=HASH ret=R" (FNV-1a of the exact
 * bytes). Every write is an increment or a fresh pattern, so a write that escaped one rollback
 * stays visible in every later state line.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "memlog_probe.h"

#define HEAP_SIZE 4096

struct parent_state {
  long calls;
  long after_child;
  long child_results;
  char note[48];
};

struct inner_state {
  long calls;
  long values[8];
};

struct parent_state g_parent = { 0, 0, 0, "untouched" };
struct inner_state g_inner = { 0, { 1, 2, 3 } };
unsigned char *g_heap;

static void
fault_now (void)
{
  *(volatile int *) (uintptr_t) 0 = 1;
}

/* The child transaction. */
__attribute__((noinline)) int
inner (long *caller_frame, int fault)
{
  g_inner.calls++;
  for (int i = 0; i < 8; i++)
    g_inner.values[i] += i + 1;
  memset (g_heap + 1024, 0x5a, 512);
  caller_frame[1] += 7;                            /* outer's frame (or serve's, as a root) */
  if (fault)
    fault_now ();
  return 1;
}

/* The parent transaction: its writes after the child returned (healed or not) must be logged. */
__attribute__((noinline)) int
outer (long *caller_frame, int inner_fault, int fault)
{
  volatile long frame[4] = { 5, 6, 7, 8 };
  int r;

  g_parent.calls++;
  caller_frame[0] += 1;
  r = inner ((long *) frame, inner_fault);
  g_parent.after_child++;
  g_parent.child_results += r;
  memcpy (g_parent.note, "parent wrote this after its child returned", 43);
  memset (g_heap, 0xee, 1000);
  g_heap[3000] ^= 0xff;
  caller_frame[2] += frame[1];
  if (fault)
    fault_now ();
  return r;
}

__attribute__((noinline)) static void
print_state (const long *frame, size_t n, int ret)
{
  printf ("state parent=%016llx inner=%016llx heap=%016llx frame=%016llx ret=%d\n",
          (unsigned long long) fnv (&g_parent, sizeof g_parent),
          (unsigned long long) fnv (&g_inner, sizeof g_inner),
          (unsigned long long) fnv (g_heap, HEAP_SIZE),
          (unsigned long long) fnv (frame, n * sizeof *frame), ret);
  fflush (stdout);
}

__attribute__((noinline)) static int
serve (void)
{
  volatile long frame[4] = { 11, 22, 33, 44 };
  char line[64];
  int ret = -1;

  while (fgets (line, sizeof line, stdin) != NULL)
  {
    if (strncmp (line, "nest ", 5) == 0)
    {
      int i = 0, o = 0;
      sscanf (line + 5, "%d %d", &i, &o);
      ret = outer ((long *) frame, i, o);
      print_state ((const long *) frame, 4, ret);
    }
    else if (strncmp (line, "call ", 5) == 0)
    {
      ret = inner ((long *) frame, atoi (line + 5));
      print_state ((const long *) frame, 4, ret);
    }
    else if (strncmp (line, "state", 5) == 0)
      print_state ((const long *) frame, 4, ret);
    else if (strncmp (line, "quit", 4) == 0)
      break;
  }
  return 0;
}

int
main (void)
{
  g_heap = malloc (HEAP_SIZE);
  for (int i = 0; i < HEAP_SIZE; i++)
    g_heap[i] = (unsigned char) (i * 13);
  printf ("ready\n");
  fflush (stdout);
  return serve ();
}
