/* fork_server: a prefork TCP line server whose workers fork a child per connection, so a healer
 * attached to it meets both kinds of children: workers that exist at attach time and connection
 * handlers forked afterwards.
 *
 * Usage: fork_server PORT [WORKERS]   (PORT 0 picks a free port; WORKERS defaults to 2)
 * Prints "READY <port>\n" once listening. One request per line:
 *   PING\n        ->  PONG\n
 *   BAR <text>\n  ->  RET <bar(text)>\n    the STEM paper's Figure 1 overflow (see fig1_server.c)
 */
#define TCP_LINE_MAX 4096 /* the planted overflows take long lines */
#include "tcp_server.h"
#include <sys/wait.h>

__attribute__((noinline)) int bar(char *buf)
{
    struct { int i; char rbuf[10]; } l = {0};
    if (NULL == buf)
        return -1;
    while (l.i < (int)strlen(buf))
        l.rbuf[l.i++] = *buf++;
    l.rbuf[l.i < 10 ? l.i : 9] = 0;
    return (int)strlen(l.rbuf) > 0 ? 0 : 1;
}

__attribute__((noinline)) int handle_line(int fd, char *line)
{
    char out[64];
    if (strncmp(line, "BAR ", 4) == 0)
        snprintf(out, sizeof out, "RET %d\n", bar(line + 4));
    else if (strcmp(line, "PING") == 0)
        snprintf(out, sizeof out, "PONG\n");
    else
        snprintf(out, sizeof out, "ERR\n");
    return write(fd, out, strlen(out)) > 0 ? 0 : -1;
}

__attribute__((noinline)) void serve(int fd)
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

__attribute__((noinline)) void worker(int ls)
{
    for (;;) {
        int fd = accept(ls, NULL, NULL);
        if (fd < 0)
            continue;
        pid_t pid = fork();
        if (pid == 0) {
            serve(fd);
            _exit(0);
        }
        close(fd);
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ;
    }
}

int main(int argc, char **argv)
{
    int workers = argc > 2 ? atoi(argv[2]) : 2;
    int ls = tcp_listen(argc > 1 ? argv[1] : "0", INADDR_LOOPBACK, "fork_server");
    for (int i = 0; i < workers; i++)
        if (fork() == 0) {
            worker(ls);
            _exit(0);
        }
    tcp_print_ready(ls);
    for (;;) {
        if (wait(NULL) < 0)
            pause();
    }
}
