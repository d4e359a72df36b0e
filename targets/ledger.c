/* ledger: the backend of the two-tier payment service (payfront is the front-end).
 *
 * Usage: ledger PORT NAME=BALANCE...      (PORT 0 picks a free port; the real one is printed)
 * Prints "READY <port>\n" once listening. One thread per connection, one command per line:
 *   BAL <name>                          -> BAL <name> <balance>          | ERR no-such-account
 *   PREPARE <ref> <from> <to> <amount>  -> PREPARED <ref>                | REFUSED <ref> <reason>
 *   COMMIT <ref>                        -> COMMITTED <ref> <from-balance> | ERR unknown-ref <ref>
 *   ABORT <ref>                         -> ABORTED <ref>
 *   DUMP                                -> ACCOUNT <name> <balance>... PENDING <n> APPLIED <n> END
 *
 * Two-phase on purpose: PREPARE only reserves the amount (the money does not move); COMMIT moves it
 * from one account to the other under one lock, so a transfer is applied entirely or not at all.
 * A prepared transfer belongs to the connection that prepared it: when that connection closes (the
 * front-end crashed, or reset its link after a healed fault) its prepared transfers are aborted
 * (presumed abort). Refs are idempotency keys per paying account: a committed ref is remembered and
 * a second PREPARE with it is REFUSED ... duplicate, so a retried transfer is never applied twice.
 * docs/scenarios.md explains why this is what lets a gateway contain a fault inside the front-end.
 */
#define MAX_LINE 1024
#define TCP_LINE_MAX MAX_LINE /* before the include: the longest command line */
#include "tcp_server.h"

#define MAX_ACCOUNTS 64
#define MAX_PENDING 256
#define MAX_APPLIED 8192
#define NAME_LEN 32
#define REF_LEN 32

struct account {
    char name[NAME_LEN];
    long balance;
    long reserved; /* sum of prepared, not yet committed debits */
};

struct pending {
    int used;
    int owner; /* fd of the connection that prepared it */
    char ref[REF_LEN];
    int from, to;
    long amount;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct account accounts[MAX_ACCOUNTS];
static int n_accounts;
static struct pending pending[MAX_PENDING];
static char applied[MAX_APPLIED][NAME_LEN + REF_LEN + 2]; /* "from/ref" of committed transfers */
static int n_applied;

static int find_account(const char *name)
{
    for (int i = 0; i < n_accounts; i++)
        if (strcmp(accounts[i].name, name) == 0)
            return i;
    return -1;
}

/* The transfer `ref` prepared by connection `owner` (owner >= 0) or paid by account `from`. */
static struct pending *find_pending(const char *ref, int owner, int from)
{
    for (int i = 0; i < MAX_PENDING; i++)
        if (pending[i].used && strcmp(pending[i].ref, ref) == 0 &&
            (owner >= 0 ? pending[i].owner == owner : pending[i].from == from))
            return &pending[i];
    return NULL;
}

static int was_applied(const char *key)
{
    for (int i = 0; i < n_applied; i++)
        if (strcmp(applied[i], key) == 0)
            return 1;
    return 0;
}

/* Called with the lock held; writes the answer into out. */
static void prepare(int fd, char *args, char *out, size_t outlen)
{
    char ref[REF_LEN], from[NAME_LEN], to[NAME_LEN], key[NAME_LEN + REF_LEN + 2];
    long amount;
    if (sscanf(args, "%31s %31s %31s %ld", ref, from, to, &amount) != 4) {
        snprintf(out, outlen, "ERR malformed PREPARE\n");
        return;
    }
    int f = find_account(from), t = find_account(to);
    snprintf(key, sizeof key, "%s/%s", from, ref);
    const char *why = NULL;
    if (f < 0 || t < 0)
        why = "no-such-account";
    else if (f == t || amount <= 0)
        why = "bad-amount";
    else if (was_applied(key))
        why = "duplicate";
    else if (find_pending(ref, -1, f) != NULL)
        why = "busy";
    else if (accounts[f].balance - accounts[f].reserved < amount)
        why = "insufficient-funds";
    struct pending *p = NULL;
    for (int i = 0; why == NULL && p == NULL && i < MAX_PENDING; i++)
        if (!pending[i].used)
            p = &pending[i];
    if (why == NULL && p == NULL)
        why = "too-many-pending";
    if (why != NULL) {
        snprintf(out, outlen, "REFUSED %s %s\n", ref, why);
        return;
    }
    *p = (struct pending){.used = 1, .owner = fd, .from = f, .to = t, .amount = amount};
    snprintf(p->ref, sizeof p->ref, "%s", ref);
    accounts[f].reserved += amount;
    snprintf(out, outlen, "PREPARED %s\n", ref);
}

static void commit(int fd, const char *ref, char *out, size_t outlen)
{
    struct pending *p = find_pending(ref, fd, -1);
    if (p == NULL || n_applied == MAX_APPLIED) {
        snprintf(out, outlen, "ERR unknown-ref %s\n", ref);
        return;
    }
    accounts[p->from].reserved -= p->amount;
    accounts[p->from].balance -= p->amount;
    accounts[p->to].balance += p->amount;
    snprintf(applied[n_applied++], sizeof applied[0], "%s/%s", accounts[p->from].name, p->ref);
    p->used = 0;
    snprintf(out, outlen, "COMMITTED %s %ld\n", ref, accounts[p->from].balance);
}

static void drop_pending(struct pending *p)
{
    accounts[p->from].reserved -= p->amount;
    p->used = 0;
}

static int dump(int fd)
{
    char out[MAX_ACCOUNTS * (NAME_LEN + 32) + 64];
    size_t used = 0;
    int n_pending = 0;
    for (int i = 0; i < n_accounts; i++)
        used += (size_t)snprintf(out + used, sizeof out - used, "ACCOUNT %s %ld\n", accounts[i].name,
                                 accounts[i].balance);
    for (int i = 0; i < MAX_PENDING; i++)
        n_pending += pending[i].used;
    snprintf(out + used, sizeof out - used, "PENDING %d\nAPPLIED %d\nEND\n", n_pending, n_applied);
    return tcp_write_str(fd, out);
}

static int handle(int fd, char *line)
{
    char out[256];
    int rc;
    pthread_mutex_lock(&lock);
    if (strncmp(line, "BAL ", 4) == 0) {
        int a = find_account(line + 4);
        if (a < 0)
            snprintf(out, sizeof out, "ERR no-such-account\n");
        else
            snprintf(out, sizeof out, "BAL %s %ld\n", accounts[a].name, accounts[a].balance);
    } else if (strncmp(line, "PREPARE ", 8) == 0) {
        prepare(fd, line + 8, out, sizeof out);
    } else if (strncmp(line, "COMMIT ", 7) == 0) {
        commit(fd, line + 7, out, sizeof out);
    } else if (strncmp(line, "ABORT ", 6) == 0) {
        struct pending *p = find_pending(line + 6, fd, -1);
        if (p != NULL)
            drop_pending(p);
        snprintf(out, sizeof out, "ABORTED %.200s\n", line + 6);
    } else if (strcmp(line, "DUMP") == 0) {
        rc = dump(fd);
        pthread_mutex_unlock(&lock);
        return rc;
    } else {
        snprintf(out, sizeof out, "ERR unknown-command\n");
    }
    pthread_mutex_unlock(&lock);
    return tcp_write_str(fd, out);
}

/* One thread per connection; a line longer than MAX_LINE drops the connection. */
static void serve_client(int fd)
{
    struct tcp_lines in = {0};
    char *line;

    while (tcp_read_line(fd, &in, &line) >= 0 && handle(fd, line) >= 0)
        ;
    /* Presumed abort: what this connection prepared and never committed is released. */
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_PENDING; i++)
        if (pending[i].used && pending[i].owner == fd)
            drop_pending(&pending[i]);
    close(fd); /* under the lock: the fd number must not be reused before its prepares are gone */
    pthread_mutex_unlock(&lock);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT NAME=BALANCE...\n", argv[0]);
        return 2;
    }
    for (int i = 2; i < argc && n_accounts < MAX_ACCOUNTS; i++) {
        char *eq = strchr(argv[i], '=');
        if (eq == NULL || eq == argv[i] || (size_t)(eq - argv[i]) >= NAME_LEN) {
            fprintf(stderr, "ledger: bad account %s (want NAME=BALANCE)\n", argv[i]);
            return 2;
        }
        snprintf(accounts[n_accounts].name, NAME_LEN, "%.*s", (int)(eq - argv[i]), argv[i]);
        accounts[n_accounts++].balance = atol(eq + 1);
    }
    signal(SIGPIPE, SIG_IGN);
    int lfd = tcp_listen(argv[1], INADDR_ANY, "ledger");
    tcp_print_ready(lfd);
    tcp_serve_forever(lfd, serve_client, TCP_SERVE_THREADS);
}
