/* tcp_server.h: the TCP plumbing every line-protocol target shares, so a target's .c file holds
 * only its protocol and its planted bugs.
 *
 *   int lfd = tcp_listen(argv[1], INADDR_ANY, "login_server");   exits with a message on failure
 *   tcp_print_ready(lfd);                                        "READY <port>\n", flushed
 *   tcp_serve_forever(lfd, serve_client, TCP_SERVE_THREADS);     serve_client(fd) closes fd
 *
 *   struct tcp_lines in = {0};
 *   char *line;
 *   while (tcp_read_line(fd, &in, &line) >= 0) ...               one line, without "\n" / "\r\n"
 *   tcp_write_str(fd, "PONG\n");                                 all of it, or -1
 *
 * Everything is static inline: targets/__init__.py's build() compiles one .c file with
 * -I targets/ and hashes this header into its cache key. None of these helpers is noinline: the
 * functions with planted bugs (and the ones a test hooks by name) stay in the targets themselves.
 * A target may #define TCP_LINE_MAX (the longest line it accepts, "\n" included) before the include.
 */
#ifndef SEAD_TARGETS_TCP_SERVER_H
#define SEAD_TARGETS_TCP_SERVER_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef TCP_LINE_MAX
#define TCP_LINE_MAX 1024
#endif

/* Listens on `port` ("0" picks a free one) at address `addr` (INADDR_ANY or INADDR_LOOPBACK) and
 * returns the listening socket. A bad port string exits with status 2, a socket that cannot listen
 * (port in use, no permission) with status 1, each after a message on stderr naming `prog`. */
static inline int tcp_listen(const char *port, in_addr_t addr, const char *prog)
{
    char *end;
    errno = 0;
    long num = strtol(port, &end, 10);
    if (port[0] == '\0' || *end != '\0' || errno != 0 || num < 0 || num > 65535) {
        fprintf(stderr, "%s: bad port '%s' (want a number 0-65535; 0 picks a free port)\n", prog, port);
        exit(2);
    }
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)num),
                             .sin_addr.s_addr = htonl(addr)};
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 64) < 0) {
        fprintf(stderr, "%s: cannot listen on port %ld: %s (is it in use? try port 0)\n", prog, num,
                strerror(errno));
        exit(1);
    }
    return lfd;
}

/* The port a listening socket got (the real one when it was asked for port 0). */
static inline int tcp_bound_port(int lfd)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    if (getsockname(lfd, (struct sockaddr *)&sa, &len) < 0)
        return -1;
    return ntohs(sa.sin_port);
}

/* Tells whoever started the target that it listens: "READY <port>\n" on stdout, flushed at once
 * (stdout is a pipe, so it would otherwise sit in the buffer). */
static inline void tcp_print_ready(int lfd)
{
    printf("READY %d\n", tcp_bound_port(lfd));
    fflush(stdout);
}

/* Writes all `len` bytes (write() may take fewer). Returns 0, or -1 if the peer is gone. */
static inline int tcp_write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static inline int tcp_write_str(int fd, const char *text)
{
    return tcp_write_all(fd, text, strlen(text));
}

/* A connection's read buffer: lines arrive split across reads, or several in one read. */
struct tcp_lines {
    size_t used;  /* bytes in data */
    size_t taken; /* bytes of data already returned as lines (dropped at the next call) */
    char data[TCP_LINE_MAX];
};

enum { TCP_LINE_CLOSED = -1, TCP_LINE_TOO_LONG = -2 };

/* Reads the next line. Returns its length and points *line at it (NUL-terminated, without "\n" or
 * "\r\n", writable, valid until the next call); TCP_LINE_CLOSED at EOF or a read error;
 * TCP_LINE_TOO_LONG when TCP_LINE_MAX bytes came without a "\n" (they are dropped: a caller that
 * goes on reading gets the rest of that line as the next one). */
static inline long tcp_read_line(int fd, struct tcp_lines *b, char **line)
{
    b->used -= b->taken;
    memmove(b->data, b->data + b->taken, b->used);
    b->taken = 0;
    for (;;) {
        char *nl = memchr(b->data, '\n', b->used);
        if (nl != NULL) {
            size_t len = (size_t)(nl - b->data);
            b->taken = len + 1;
            *nl = '\0';
            if (len > 0 && b->data[len - 1] == '\r')
                b->data[--len] = '\0';
            *line = b->data;
            return (long)len;
        }
        if (b->used == sizeof b->data) {
            b->used = 0;
            return TCP_LINE_TOO_LONG;
        }
        ssize_t n = read(fd, b->data + b->used, sizeof b->data - b->used);
        if (n <= 0)
            return TCP_LINE_CLOSED;
        b->used += (size_t)n;
    }
}

enum tcp_serve_mode {
    TCP_SERVE_ONE_AT_A_TIME, /* serve each connection to its end before accepting the next */
    TCP_SERVE_THREADS,       /* a detached thread per connection */
    TCP_SERVE_FORK,          /* a child process per connection (like a prefork server) */
};

struct tcp_thread_start {
    void (*serve)(int fd);
    int fd;
};

static inline void *tcp_thread_main(void *arg)
{
    struct tcp_thread_start start = *(struct tcp_thread_start *)arg;
    free(arg);
    start.serve(start.fd);
    return NULL;
}

/* Accepts connections forever and hands each to serve(fd), which owns the socket and closes it.
 * Every connection gets TCP_NODELAY: the targets write replies in pieces, and Nagle plus the
 * client's delayed ACK would add 40 ms to each. A connection that cannot get its thread or process
 * is closed at once. */
static inline void tcp_serve_forever(int lfd, void (*serve)(int fd), enum tcp_serve_mode mode)
{
    int one = 1;
    if (mode == TCP_SERVE_FORK)
        signal(SIGCHLD, SIG_IGN); /* the kernel reaps the children */
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0)
            continue;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (mode == TCP_SERVE_ONE_AT_A_TIME) {
            serve(fd);
        } else if (mode == TCP_SERVE_FORK) {
            pid_t pid = fork();
            if (pid == 0) {
                close(lfd);
                serve(fd);
                _exit(0);
            }
            close(fd);
        } else {
            struct tcp_thread_start *start = malloc(sizeof *start);
            pthread_t th;
            if (start == NULL) {
                close(fd);
                continue;
            }
            *start = (struct tcp_thread_start){.serve = serve, .fd = fd};
            if (pthread_create(&th, NULL, tcp_thread_main, start) != 0) {
                free(start);
                close(fd);
                continue;
            }
            pthread_detach(th);
        }
    }
}

#endif
