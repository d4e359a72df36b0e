/*
 * What the memory-log targets (memlog_target, memlog_nested, memlog_strings) share: the hash their
 * "state" lines print, so a test compares memory before and after a heal without reading it.
 */
#ifndef MEMLOG_PROBE_H
#define MEMLOG_PROBE_H

#include <stddef.h>
#include <stdint.h>

/* FNV-1a over n bytes. */
static uint64_t
fnv (const void *p, size_t n)
{
  const unsigned char *b = p;
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; i++)
    h = (h ^ b[i]) * 1099511628211ULL;
  return h;
}

#endif
