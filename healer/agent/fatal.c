/*
 * Fatal libc paths turned into heals: the replacements of __stack_chk_fail, __chk_fail,
 * __fortify_fail and abort fault on purpose at a marker address (SEAD_FAULT + kind), which the
 * exception handler (60_detectors.js) heals like any fault. On a thread with no open supervised
 * transaction they call the original: unsupervised code keeps its normal fate.
 */
#include <glib.h>

#define SEAD_FAULT 0x5ead0000UL

extern gpointer sead_current_thread (guint64 tid);
extern int gettid (void);
/* The replaced functions themselves: a call of one from its replacement reaches the original
 * (Interceptor.replace routes it there), with the caller's argument. Declared as functions: as
 * function-pointer variables they read the first bytes of the code at that address, and an
 * unsupervised stack smash died of SIGSEGV there instead of glibc's "stack smashing detected"
 * abort (tests/healer/test_figures.py). */
extern void orig_stack_chk (void);
extern void orig_chk (void);
extern void orig_fortify (const char * msg);
extern void orig_abort (void);

/* Faults at the marker of `kind` when the calling thread has an open transaction. */
static void
heal_if_supervised (guint64 kind)
{
  guint64 * t = (guint64 *) sead_current_thread ((guint64) gettid ());
  if (t != NULL && t[2] != 0) /* Thread.n: open transactions */
    *(volatile guint64 *) (SEAD_FAULT + kind) = kind;
}

void stack_chk_fail (void) { heal_if_supervised (1); orig_stack_chk (); }
void chk_fail (void) { heal_if_supervised (2); orig_chk (); }
void fortify_fail (const char * msg) { heal_if_supervised (3); orig_fortify (msg); }
void abort_ (void) { heal_if_supervised (4); orig_abort (); }
