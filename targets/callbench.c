/* callbench: measures the cost of calling one small function, for bench/healing.py (native vs a
 * supervised call on the healer's C path vs its JS path).
 *
 * Usage: callbench PORT      (PORT 0 picks a free port; prints "READY <port>\n")
 *   RUN <n>\n  ->  NS <nanoseconds for n calls of work()>\n
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

volatile unsigned long sink;

__attribute__((noinline)) int work(int x)
{
    sink += (unsigned long)x * 2654435761u;
    return (int)(sink & 0xff);
}

__attribute__((noinline)) long run(long n)
{
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++)
        work((int)i);
    clock_gettime(CLOCK_MONOTONIC, &b);
    return (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec);
}

int main(int argc, char **argv)
{
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {0};
    socklen_t alen = sizeof a;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((unsigned short)(argc > 1 ? atoi(argv[1]) : 0));
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 8) < 0) {
        perror("callbench: bind/listen");
        return 1;
    }
    getsockname(ls, (struct sockaddr *)&a, &alen);
    printf("READY %d\n", ntohs(a.sin_port));
    fflush(stdout);
    for (;;) {
        int fd = accept(ls, NULL, NULL);
        FILE *f = fd < 0 ? NULL : fdopen(fd, "r+");
        char line[128];
        while (f != NULL && fgets(line, sizeof line, f) != NULL) {
            if (strncmp(line, "RUN ", 4) == 0)
                fprintf(f, "NS %ld\n", run(atol(line + 4)));
            else
                fprintf(f, "ERR\n");
            fflush(f);
        }
        if (f != NULL)
            fclose(f);
    }
}
