/*
 * memlog_target: a supervised function that changes a global struct, a heap buffer (directly and
 * through glibc memcpy/memset, whose AVX-512 and `rep stosb` stores must be logged) and its
 * caller's stack frame, then faults on request.  Driven by stdin lines so a test can attach or spawn
 * first:
 *
 *   call F      run update_account(F) (F=1: fault after every change), then print the state line
 *   state       print the state line
 *   bench N K   call bench_stores() N times (K <= 1000 stores each), print "bench ns=NS_PER_CALL"
 *   poke P      poke() a byte of page P (mmap: mmap'd at start; brk: the heap's last page, from
 *               sbrk at start), print "poke ret=R"
 *   drop HOW    make that page take no store (a later poke faults there), print "dropped HOW":
 *               munmap, mprotect (PROT_NONE), readonly (PROT_READ), brk (sbrk gives the brk
 *               page back)
 *   quit
 *
 * State line: "state global=HASH heap=HASH frame=HASH ret=R" (FNV-1a of the exact bytes), so a test
 * can check that each region holds exactly its pre-call bytes after a heal.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "memlog_probe.h"

#define HEAP_SIZE 8192

struct account {
  long balance;
  char owner[40];
  long history[16];
  int flags;
};

struct account g_account = { 100, "alice", { 1, 2, 3 }, 7 };
unsigned char *g_heap;

/* The supervised function: every store below is a change the memory log must undo on abort. */
__attribute__((noinline)) int
update_account (long *caller_frame, int fault)
{
  g_account.balance += 1000;
  memcpy (g_account.owner, "mallory-the-intruder-of-accounts", 33);
  for (int i = 0; i < 16; i++)
    g_account.history[i] = g_account.balance * i;
  g_account.flags |= 0x100;
  memset (g_heap, 0xab, 3000);                     /* large: rep stosb / vector loop */
  memset (g_heap + 3000, 0xcd, 700);               /* AVX-512 stores */
  memcpy (g_heap + 4000, g_heap, 2500);            /* memcpy, large */
  memcpy (g_heap + 6600, &g_account, sizeof g_account);
  memset (g_heap + HEAP_SIZE - 13, 0x11, 13);      /* small tail: masked stores */
  g_heap[7000] ^= 0xff;
  caller_frame[0] = 0xdeadbeef;                    /* the caller's stack frame, above our entry sp */
  caller_frame[3] += 42;
  if (fault)
    *(volatile int *) (uintptr_t) (fault == 1 ? 0 : 8) = 1;
  return 1;
}

long g_bench[1000];

/* `stores` stores to a global: bench/memlog.py's cost per logged store is the slope over two
 * store counts, so the fixed cost of a supervised call does not count. */
__attribute__((noinline)) long
bench_stores (long seed, int stores)
{
  for (int i = 0; i < stores; i++)
    ((volatile long *) g_bench)[i] = seed + i;
  return g_bench[0];
}

unsigned char *g_page; /* a page of its own, mmap'd at start (`poke mmap`) */
unsigned char *g_brk;  /* the heap's last page, from sbrk at start (`poke brk`) */

/* A store through a pointer: logged inline by the memory log once its page is known readable. */
__attribute__((noinline)) int
poke (unsigned char *p)
{
  p[100] += 1;
  return 1;
}

__attribute__((noinline)) static void
bench (long n, int stores)
{
  struct timespec a, b;
  clock_gettime (CLOCK_MONOTONIC, &a);
  for (long i = 0; i < n; i++)
    bench_stores (i, stores);
  clock_gettime (CLOCK_MONOTONIC, &b);
  printf ("bench ns=%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / (double) n);
  fflush (stdout);
}

__attribute__((noinline)) static void
print_state (const long *frame, size_t n, int ret)
{
  printf ("state global=%016llx heap=%016llx frame=%016llx ret=%d\n",
          (unsigned long long) fnv (&g_account, sizeof g_account),
          (unsigned long long) fnv (g_heap, HEAP_SIZE),
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
    if (strncmp (line, "call ", 5) == 0)
    {
      ret = update_account ((long *) frame, atoi (line + 5));
      print_state ((const long *) frame, 6, ret);
    }
    else if (strncmp (line, "state", 5) == 0)
      print_state ((const long *) frame, 6, ret);
    else if (strncmp (line, "bench ", 6) == 0)
    {
      char *end;
      long n = strtol (line + 6, &end, 10);
      bench (n, (int) strtol (end, NULL, 10));
    }
    else if (strncmp (line, "poke ", 5) == 0)
    {
      printf ("poke ret=%d\n", poke (strncmp (line + 5, "brk", 3) == 0 ? g_brk : g_page));
      fflush (stdout);
    }
    else if (strncmp (line, "drop ", 5) == 0)
    {
      const char *how = line + 5;
      if (strncmp (how, "munmap", 6) == 0)
        munmap (g_page, 4096);
      else if (strncmp (how, "mprotect", 8) == 0)
        mprotect (g_page, 4096, PROT_NONE);
      else if (strncmp (how, "readonly", 8) == 0)
        mprotect (g_page, 4096, PROT_READ);
      else if (strncmp (how, "brk", 3) == 0)
        sbrk (-4096);
      printf ("dropped %.*s\n", (int) strcspn (how, "\n"), how);
      fflush (stdout);
    }
    else if (strncmp (line, "quit", 4) == 0)
      break;
  }
  return 0;
}

int
main (void)
{
  static char inbuf[4096];
  setvbuf (stdin, inbuf, _IOFBF, sizeof inbuf); /* no malloc for it after the sbrk below */
  g_heap = malloc (HEAP_SIZE);
  g_page = mmap (NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  /* a page of its own at the break, page-aligned; nothing calls malloc after this (stdout's
   * buffer exists once "ready" is printed), so giving it back shrinks nothing else */
  printf ("ready\n");
  fflush (stdout);
  sbrk (4096 - ((unsigned long) sbrk (0) & 4095));
  g_brk = sbrk (4096);
  for (int i = 0; i < HEAP_SIZE; i++)
    g_heap[i] = (unsigned char) (i * 7);
  return serve ();
}
