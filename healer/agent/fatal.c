/*
 * Fatal libc paths turned into heals: the replacements of __stack_chk_fail, __chk_fail,
 * __fortify_fail and abort fault on purpose at a marker address (SEAD_FAULT + kind), which the
 * exception handler (60_detectors.js) heals like any fault. On a thread with no open supervised
 * transaction they call the original: unsupervised code keeps its normal fate.
 */
#include <glib.h>

#define SEAD_FAULT 0x5ead0000UL

typedef void (* Fatal) (void);

extern gpointer sead_current_thread (guint64 tid);
extern int gettid (void);
extern Fatal orig_stack_chk, orig_chk, orig_fortify, orig_abort;

static int
supervised (void)
{
  guint64 * t = (guint64 *) sead_current_thread ((guint64) gettid ());
  return t != NULL && t[2] != 0; /* Thread.n: open transactions */
}

static void
fail (guint64 kind, Fatal orig)
{
  if (supervised ())
    *(volatile guint64 *) (SEAD_FAULT + kind) = kind;
  orig ();
}

void stack_chk_fail (void) { fail (1, orig_stack_chk); }
void chk_fail (void) { fail (2, orig_chk); }
void fortify_fail (void) { fail (3, orig_fortify); }
void abort_ (void) { fail (4, orig_abort); }
