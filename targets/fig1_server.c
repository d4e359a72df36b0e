/* fig1_server: the STEM paper's Figure 1 (bar() stack overflow) and a NULL dereference, as a TCP
 * line server.
 *
 * Usage: fig1_server PORT [threads]   (PORT 0 picks a free port; the real one is printed)
 * Prints "READY <port>\n" once listening; serves clients one at a time (with `threads`: each on
 * its own thread, concurrently), one request per line:
 *   BAR <text>\n  ->  RET <bar(text)> <served>\n   bar() copies text into a 10-byte stack buffer
 *   NUL <key>\n   ->  VAL <value> <served>\n       lookup_len() dereferences NULL for unknown keys
 *   DIV <n>\n     ->  DIV <100/n> <served>\n       divide() faults (SIGFPE) for n = 0
 *   PING\n        ->  PONG <served>\n
 * `served` counts requests answered; bar() increments `bar_calls` before it can fail, so a test
 * can see whether an aborted call's memory change was rolled back.
 *
 * Planted bugs: text longer than 9 bytes overflows bar()'s buffer (with -fstack-protector-strong
 * it ends in __stack_chk_fail, without it the saved return address is smashed); NUL with an
 * unknown key dereferences NULL; DIV 0 divides by zero.
 */
#define TCP_LINE_MAX 4096 /* the planted overflows take long lines */
#include "tcp_server.h"

_Atomic unsigned long served;
unsigned long bar_calls;

struct entry { const char *key; const char *value; };
static const struct entry table[] = { {"alpha", "one"}, {"beta", "twotwo"} };

/* Figure 1. The index shares a struct with the buffer, below it, so that at -O0 (where every
 * local lives on the stack) the overflow cannot overwrite the index and end the loop early. */
__attribute__((noinline)) int bar(char *buf)
{
    struct { int i; char rbuf[10]; } l = {0};
    bar_calls++;
    if (NULL == buf)
        return -1;
    while (l.i < (int)strlen(buf))
        l.rbuf[l.i++] = *buf++;
    l.rbuf[l.i < 10 ? l.i : 9] = 0;
    return (int)strlen(l.rbuf) > 0 ? 0 : 1;
}

__attribute__((noinline)) const struct entry *find(const char *key)
{
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(table[i].key, key) == 0)
            return &table[i];
    return NULL;
}

__attribute__((noinline)) int lookup_len(const char *key)
{
    const struct entry *e = find(key);
    return (int)strlen(e->value); /* NULL dereference for an unknown key */
}

__attribute__((noinline)) int divide(int n)
{
    volatile int hundred = 100;
    return hundred / n;
}

static int reply(int fd, const char *text)
{
    size_t len = strlen(text);
    while (len > 0) {
        ssize_t n = write(fd, text, len);
        if (n <= 0)
            return -1;
        text += n;
        len -= (size_t)n;
    }
    return 0;
}

__attribute__((noinline)) int handle_line(int fd, char *line)
{
    char out[128];
    if (strncmp(line, "BAR ", 4) == 0) {
        int r = bar(line + 4);
        served++;
        snprintf(out, sizeof out, "RET %d %lu\n", r, served);
    } else if (strncmp(line, "NUL ", 4) == 0) {
        int r = lookup_len(line + 4);
        served++;
        snprintf(out, sizeof out, "VAL %d %lu\n", r, served);
    } else if (strncmp(line, "DIV ", 4) == 0) {
        int r = divide(atoi(line + 4));
        served++;
        snprintf(out, sizeof out, "DIV %d %lu\n", r, served);
    } else if (strcmp(line, "PING") == 0) {
        served++;
        snprintf(out, sizeof out, "PONG %lu\n", served);
    } else {
        snprintf(out, sizeof out, "ERR\n");
    }
    return reply(fd, out);
}

static void serve(int fd)
{
    struct tcp_lines lines = {0};
    char *line;
    long len;
    while ((len = tcp_read_line(fd, &lines, &line)) != TCP_LINE_CLOSED) {
        if (len == TCP_LINE_TOO_LONG)
            continue; /* a line longer than the buffer is dropped */
        if (handle_line(fd, line) < 0)
            return;
    }
}

static void *serve_thread(void *arg)
{
    int fd = (int)(long)arg;
    serve(fd);
    close(fd);
    return NULL;
}

int main(int argc, char **argv)
{
    int threads = argc > 2 && strcmp(argv[2], "threads") == 0;
    int ls = tcp_listen(argc > 1 ? argv[1] : "0", INADDR_LOOPBACK, "fig1_server");
    tcp_print_ready(ls);
    for (;;) {
        int fd = accept(ls, NULL, NULL);
        pthread_t t;
        if (fd < 0)
            continue;
        if (threads && pthread_create(&t, NULL, serve_thread, (void *)(long)fd) == 0) {
            pthread_detach(t);
            continue;
        }
        serve(fd);
        close(fd);
    }
}
