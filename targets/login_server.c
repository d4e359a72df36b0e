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
#define MAX_LINE 1024
#define TCP_LINE_MAX MAX_LINE /* before the include: the longest request line */
#include "tcp_server.h"

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

__attribute__((noinline)) int login_continue(int fd, const struct ucred *creds)
{
    char out[MAX_LINE + 32];
    snprintf(out, sizeof out, "OK welcome %s\n", creds->username);
    return tcp_write_str(fd, out);
}

__attribute__((noinline)) int login_reject(int fd)
{
    return tcp_write_str(fd, "DENIED\n");
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
        return tcp_write_str(fd, "PONG\n");
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
    return tcp_write_str(fd, "ERR\n");
}

/* One client at a time; a line longer than MAX_LINE drops the client. */
static void serve_client(int fd)
{
    struct tcp_lines in = {0};
    char *line;

    while (tcp_read_line(fd, &in, &line) >= 0 && handle_request(fd, line) >= 0)
        ;
    close(fd);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int lfd = tcp_listen(argv[1], INADDR_ANY, "login_server");
    tcp_print_ready(lfd);
    tcp_serve_forever(lfd, serve_client, TCP_SERVE_ONE_AT_A_TIME);
}
