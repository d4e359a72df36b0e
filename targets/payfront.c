/* payfront: the front-end of the two-tier payment service (ledger is the backend).
 *
 * Usage: payfront PORT LEDGER_HOST:LEDGER_PORT USER:PASSWORD...
 * Prints "READY <port>\n" once listening. One thread per client, one command per line:
 *   LOGIN <user> <password>           -> OK welcome <user>   | ERR denied
 *   BAL                               -> BAL <user> <balance>
 *   XFER <ref> <to> <amount> [memo]   -> RECEIPT <ref> <user> <to> <amount>
 *                                        then DONE <ref> balance <n> <category>
 *                                        or   REFUSED <ref> <reason>
 *                                     -> ERR transfer-failed <ref>   (the transfer handler failed)
 *   PING -> PONG        QUIT -> BYE (and close)        anything else -> ERR unknown-command
 * A session opens its own connection to the ledger on its first transfer; after a failed transfer it
 * closes it (the ledger then aborts whatever that connection prepared) and opens a new one next time.
 *
 * A transfer is PREPARE (the ledger reserves the amount), then COMMIT (the ledger moves it). The
 * handler writes the RECEIPT line to the client before it talks to the ledger (a partial reply).
 *
 * Planted bugs (each in a function called by a supervised one, so the fault aborts the caller's
 * transaction; see docs/scenarios.md for what each one exercises):
 *  1. check_credentials() copies the password into a 24-byte stack buffer with strcpy: a long
 *     password smashes the stack (-fstack-protector-strong ends it in __stack_chk_fail). Fault before
 *     any output.
 *  2. normalize_memo() copies the memo into a 32-byte stack buffer with strcpy, and runs after the
 *     RECEIPT was written and the PREPARE was sent but before the ledger's answer is read: a long memo
 *     faults while both writes are still held by the gateway.
 *  3. memo_category() indexes a table with the number after '#' in the memo, unchecked: "#999999999"
 *     reads far outside it (SIGSEGV). It runs after the PREPARED answer was read (the gateway released
 *     the PREPARE: a gradual commit) and before COMMIT is sent.
 */
#define MAX_LINE 1024
#define TCP_LINE_MAX MAX_LINE /* before the include: the longest line from a client or the ledger */
#include "tcp_server.h"

#include <poll.h>

#define MAX_USERS 64
#define NAME_LEN 32

struct user {
    char name[NAME_LEN];
    char password[64];
};

struct session {
    int client;
    int ledger; /* -1 until the first transfer, and after a failed one */
    char user[NAME_LEN];
    struct tcp_lines ledger_in;
};

static struct user users[MAX_USERS];
static int n_users;
static struct sockaddr_in ledger_addr;

/* Observable state changed inside the supervised functions (rollback is visible in it). */
unsigned long login_attempts;
unsigned long transfers_started;
unsigned long transfers_done;

static const char *const categories[] = {"general", "rent", "food", "travel", "gift"};

/* Reads one line (without "\n") into out; returns 0, or -1 on EOF, error or an over-long line.
 * noinline: handle_transfer calls it as before the shared header, its inlined code unchanged. */
__attribute__((noinline)) static int read_line(int fd, struct tcp_lines *b, char *out, size_t outlen)
{
    char *line;
    if (tcp_read_line(fd, b, &line) < 0)
        return -1;
    snprintf(out, outlen, "%s", line);
    return 0;
}

static const struct user *find_user(const char *name)
{
    for (int i = 0; i < n_users; i++)
        if (strcmp(users[i].name, name) == 0)
            return &users[i];
    return NULL;
}

/* Bug 1: 1 = authenticated, 0 = refused. */
__attribute__((noinline)) int check_credentials(const char *name, const char *password)
{
    char given[24];
    login_attempts++;
    strcpy(given, password); /* the overflow */
    const struct user *u = find_user(name);
    return u != NULL && strcmp(u->password, given) == 0;
}

/* Bug 2: the memo as it goes on the receipt (spaces become '_'). */
__attribute__((noinline)) void normalize_memo(const char *memo, char *out, size_t outlen)
{
    char clean[32];
    strcpy(clean, memo); /* the overflow */
    for (char *c = clean; *c; c++)
        if (*c == ' ')
            *c = '_';
    snprintf(out, outlen, "%s", clean[0] ? clean : "-");
}

/* Bug 3: "#N" in the memo picks a category; N is not checked against the table. */
__attribute__((noinline)) size_t memo_category(const char *memo, char *out, size_t outlen)
{
    const char *hash = strchr(memo, '#');
    long idx = hash != NULL ? strtol(hash + 1, NULL, 10) : 0;
    const char *name = categories[idx]; /* the out-of-bounds read */
    size_t len = strlen(name);
    snprintf(out, outlen, "%s", name);
    return len;
}

static int ledger_connect(struct session *s)
{
    if (s->ledger >= 0)
        return 0;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&ledger_addr, sizeof ledger_addr) < 0) {
        close(fd);
        return -1;
    }
    s->ledger = fd;
    s->ledger_in = (struct tcp_lines){0};
    return 0;
}

/* Close the ledger link and wait (at most 2 s) for the ledger's own close: by then it has released
 * what this link prepared and never committed (presumed abort), so a client that retries the same
 * ref at once is not refused as busy. Without the wait the retry's PREPARE, on a new connection,
 * could reach the ledger before it saw the old one end (seen 2 runs in 40 on loaded cores). */
static void ledger_reset(struct session *s)
{
    if (s->ledger >= 0) {
        char sink[256];
        struct pollfd p = {.fd = s->ledger, .events = POLLIN};
        shutdown(s->ledger, SHUT_WR);
        while (poll(&p, 1, 2000) > 0 && read(s->ledger, sink, sizeof sink) > 0)
            ;
        close(s->ledger);
    }
    s->ledger = -1;
    s->ledger_in = (struct tcp_lines){0};
}

/* The supervised transfer: 0 = answered the client (DONE or REFUSED), -1 = failed (the caller
 * answers ERR transfer-failed and resets the ledger link). */
__attribute__((noinline)) int handle_transfer(struct session *s, const char *ref, const char *to,
                                              long amount, const char *memo)
{
    char line[MAX_LINE + 64], answer[MAX_LINE], clean[64], category[32], want[64];

    transfers_started++;
    snprintf(line, sizeof line, "RECEIPT %s %s %s %ld\n", ref, s->user, to, amount);
    if (tcp_write_str(s->client, line) < 0 || ledger_connect(s) < 0)
        return -1;
    snprintf(line, sizeof line, "PREPARE %s %s %s %ld\n", ref, s->user, to, amount);
    if (tcp_write_str(s->ledger, line) < 0)
        return -1;
    normalize_memo(memo, clean, sizeof clean); /* bug 2: PREPARE and RECEIPT still held */
    if (read_line(s->ledger, &s->ledger_in, answer, sizeof answer) < 0)
        return -1;
    snprintf(want, sizeof want, "PREPARED %s", ref);
    if (strcmp(answer, want) != 0) {
        const char *why = strrchr(answer, ' ');
        snprintf(line, sizeof line, "REFUSED %s %s\n", ref, why != NULL ? why + 1 : "ledger-error");
        return tcp_write_str(s->client, line) < 0 ? -1 : 0;
    }
    memo_category(clean, category, sizeof category); /* bug 3: the PREPARE already crossed */
    snprintf(line, sizeof line, "COMMIT %s\n", ref);
    if (tcp_write_str(s->ledger, line) < 0 || read_line(s->ledger, &s->ledger_in, answer, sizeof answer) < 0)
        return -1;
    long balance;
    char got[64];
    if (sscanf(answer, "COMMITTED %63s %ld", got, &balance) != 2 || strcmp(got, ref) != 0)
        return -1;
    transfers_done++;
    snprintf(line, sizeof line, "DONE %s balance %ld %s\n", ref, balance, category);
    return tcp_write_str(s->client, line);
}

static int handle_balance(struct session *s)
{
    char line[MAX_LINE], answer[MAX_LINE];
    snprintf(line, sizeof line, "BAL %s\n", s->user);
    if (ledger_connect(s) < 0 || tcp_write_str(s->ledger, line) < 0 ||
        read_line(s->ledger, &s->ledger_in, answer, sizeof answer) < 0) {
        ledger_reset(s);
        return tcp_write_str(s->client, "ERR ledger-unavailable\n");
    }
    snprintf(line, sizeof line, "%s\n", answer);
    return tcp_write_str(s->client, line);
}

static int handle_line(struct session *s, char *line)
{
    char out[MAX_LINE + 64];
    if (strcmp(line, "PING") == 0)
        return tcp_write_str(s->client, "PONG\n");
    if (strcmp(line, "QUIT") == 0) {
        tcp_write_str(s->client, "BYE\n");
        return -1;
    }
    if (strncmp(line, "LOGIN ", 6) == 0) {
        char *name = line + 6, *password = strchr(name, ' ');
        if (password != NULL) {
            *password++ = '\0';
            if (strlen(name) < NAME_LEN && check_credentials(name, password)) {
                snprintf(s->user, sizeof s->user, "%s", name);
                snprintf(out, sizeof out, "OK welcome %s\n", name);
                return tcp_write_str(s->client, out);
            }
        }
        s->user[0] = '\0';
        return tcp_write_str(s->client, "ERR denied\n");
    }
    if (strcmp(line, "BAL") == 0 || strncmp(line, "XFER ", 5) == 0) {
        if (s->user[0] == '\0')
            return tcp_write_str(s->client, "ERR login-first\n");
        if (line[0] == 'B')
            return handle_balance(s);
        char ref[32], to[NAME_LEN];
        long amount;
        int memo_at = 0;
        if (sscanf(line + 5, "%31s %31s %ld %n", ref, to, &amount, &memo_at) < 3)
            return tcp_write_str(s->client, "ERR usage: XFER REF TO AMOUNT [MEMO]\n");
        if (handle_transfer(s, ref, to, amount, line + 5 + memo_at) < 0) {
            ledger_reset(s);
            snprintf(out, sizeof out, "ERR transfer-failed %s\n", ref);
            return tcp_write_str(s->client, out);
        }
        return 0;
    }
    return tcp_write_str(s->client, "ERR unknown-command\n");
}

/* One thread per client, with its own session; a line longer than MAX_LINE drops the client. */
static void serve_client(int fd)
{
    struct session *s = calloc(1, sizeof *s);
    struct tcp_lines in = {0};
    char *line;
    if (s != NULL) {
        s->client = fd;
        s->ledger = -1;
        while (tcp_read_line(fd, &in, &line) >= 0 && handle_line(s, line) == 0)
            ;
        ledger_reset(s);
        free(s);
    }
    close(fd);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s PORT LEDGER_HOST:LEDGER_PORT USER:PASSWORD...\n", argv[0]);
        return 2;
    }
    char host[64];
    int lport;
    if (sscanf(argv[2], "%63[^:]:%d", host, &lport) != 2 || inet_pton(AF_INET, host, &ledger_addr.sin_addr) != 1) {
        fprintf(stderr, "payfront: bad ledger address %s (want IPv4:PORT)\n", argv[2]);
        return 2;
    }
    ledger_addr.sin_family = AF_INET;
    ledger_addr.sin_port = htons((unsigned short)lport);
    for (int i = 3; i < argc && n_users < MAX_USERS; i++) {
        char *colon = strchr(argv[i], ':');
        if (colon == NULL || colon == argv[i] || (size_t)(colon - argv[i]) >= NAME_LEN) {
            fprintf(stderr, "payfront: bad user %s (want USER:PASSWORD)\n", argv[i]);
            return 2;
        }
        snprintf(users[n_users].name, NAME_LEN, "%.*s", (int)(colon - argv[i]), argv[i]);
        snprintf(users[n_users++].password, sizeof users[0].password, "%s", colon + 1);
    }
    signal(SIGPIPE, SIG_IGN);
    int lfd = tcp_listen(argv[1], INADDR_ANY, "payfront");
    tcp_print_ready(lfd);
    tcp_serve_forever(lfd, serve_client, TCP_SERVE_THREADS);
}
