/* login_server: the paper's Figure 2 (STEM/SEAD, section 4) as a TCP line server.
 *
 * Usage: login_server PORT        (PORT 0 picks a free port; the real one is printed)
 * Prints "READY <port>\n" once listening, then serves clients one at a time, one request per line:
 *   LOGIN <user> <pass>\n  ->  OK welcome <user>\n   or   DENIED\n
 *   PING\n                 ->  PONG\n
 *   anything else          ->  ERR\n
 *
 * Planted bug: check_credentials() copies the username into a 16-byte stack buffer with strcpy.
 * A long username overflows it: with -fstack-protector-strong the function ends in __stack_chk_fail,
 * without it the saved return address is smashed (the exploit). A self-healer that virtualizes the
 * fault by returning any non-zero value from check_credentials turns the attack into a successful
 * login; the repair policy policies/figure3.pol forces 0 (AUTHENTICATION_FAILURE) instead.
 *
 * check_credentials() also changes globals (login_attempts, failed_logins, last_user) before it can
 * fail, so a test can see whether the memory changes of an aborted call were rolled back.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_LINE 1024

struct ucred {
    char username[MAX_LINE];
    char password[MAX_LINE];
};

struct account {
    const char *name;
    const char *password;
};

static const struct account accounts[] = {
    {"alice", "wonderland"},
    {"bob", "builder"},
};

/* Observable state: every call of check_credentials changes it (rollback tests read it). */
unsigned long login_attempts;
int failed_logins;
char last_user[32];

__attribute__((noinline)) const struct account *lookup(const char *name)
{
    for (size_t i = 0; i < sizeof accounts / sizeof accounts[0]; i++)
        if (strcmp(accounts[i].name, name) == 0)
            return &accounts[i];
    return NULL;
}

__attribute__((noinline)) int checkpassword(const struct account *acct, const struct ucred *credentials)
{
    return acct != NULL && strcmp(acct->password, credentials->password) == 0;
}

/* Figure 2: the vulnerable access-control routine (1 = authenticated, 0 = failure). */
__attribute__((noinline)) int check_credentials(struct ucred *credentials)
{
    char uname[16];
    int ok;

    login_attempts++;
    strcpy(uname, credentials->username); /* the overflow */
    snprintf(last_user, sizeof last_user, "%s", uname);
    ok = checkpassword(lookup(uname), credentials);
    if (!ok)
        failed_logins++;
    return ok;
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

__attribute__((noinline)) int login_continue(int fd, const struct ucred *creds)
{
    char out[MAX_LINE + 32];
    snprintf(out, sizeof out, "OK welcome %s\n", creds->username);
    return reply(fd, out);
}

__attribute__((noinline)) int login_reject(int fd)
{
    return reply(fd, "DENIED\n");
}

/* Figure 2: login() trusts whatever check_credentials returns. */
__attribute__((noinline)) int login(int fd, struct ucred *creds)
{
    int authenticated = check_credentials(creds);
    if (authenticated)
        return login_continue(fd, creds);
    else
        return login_reject(fd);
}

__attribute__((noinline)) int handle_request(int fd, char *line)
{
    static struct ucred creds;

    if (strcmp(line, "PING") == 0)
        return reply(fd, "PONG\n");
    if (strncmp(line, "LOGIN ", 6) == 0) {
        char *user = line + 6;
        char *pass = strchr(user, ' ');
        if (pass != NULL) {
            *pass++ = '\0';
            memset(&creds, 0, sizeof creds);
            snprintf(creds.username, sizeof creds.username, "%s", user);
            snprintf(creds.password, sizeof creds.password, "%s", pass);
            return login(fd, &creds);
        }
    }
    return reply(fd, "ERR\n");
}

static void serve_client(int fd)
{
    char buf[MAX_LINE + 1];
    size_t used = 0;

    for (;;) {
        ssize_t n = read(fd, buf + used, sizeof buf - 1 - used);
        if (n <= 0)
            return;
        used += (size_t)n;
        char *start = buf;
        char *nl;
        while ((nl = memchr(start, '\n', used - (size_t)(start - buf))) != NULL) {
            *nl = '\0';
            if (nl > start && nl[-1] == '\r')
                nl[-1] = '\0';
            if (handle_request(fd, start) < 0)
                return;
            start = nl + 1;
        }
        used -= (size_t)(start - buf);
        memmove(buf, start, used);
        if (used == sizeof buf - 1) /* a line longer than MAX_LINE: refuse it and drop the client */
            return;
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[1])),
                               .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 64) < 0) {
        perror("login_server: bind/listen");
        return 1;
    }
    socklen_t alen = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &alen);
    printf("READY %d\n", ntohs(addr.sin_port));
    fflush(stdout);
    for (;;) {
        int cfd = accept(lfd, NULL, NULL);
        if (cfd < 0)
            continue;
        serve_client(cfd);
        close(cfd);
    }
}
