/*
 * SIGUSR1 (reload policy and coverage) and SIGUSR2 (dump debug state), STEM section 3.4: the handler
 * only counts; 90_main.js polls the counters and does the work outside signal context.
 */
#include <glib.h>

extern volatile guint64 counters[2];

void on_usr1 (int sig) { counters[0]++; }
void on_usr2 (int sig) { counters[1]++; }
