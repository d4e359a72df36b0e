/* maild: a small mail-drop daemon in the legacy style, our own second target for Smart Error
 * Virtualization (not a real MTA; nothing is sent anywhere).
 *
 * usage: maild PORT      (PORT 0 picks one; prints "READY <port>" on stdout when listening)
 *
 * One connection at a time, one SMTP-like session per connection, one reply line per command:
 *   HELO name           -> 250 hello name | 501 bad name
 *   MAIL FROM:<a@b>     -> 250 sender ok | 501 bad address | 503 bad sequence
 *   RCPT TO:<user@b>    -> 250 recipient ok | 550 no such user | 452 too many | 501 | 503
 *   DATA                -> 354 end with '.' | 503 bad sequence
 *     body lines, then "." -> 250 queued as N | 552 too big | 554 no recipients
 *   RSET                -> 250 reset        NOOP -> 250 ok          QUIT -> 221 bye (closes)
 *   STAT user           -> 250 user N messages B bytes | 550 no such user
 *   XRESET              -> 250 store cleared (empties every mailbox: trials start afresh)
 *   other               -> 500 unknown command
 *
 * Unlike kv_server, every helper returns a distinct code on its error paths (a state, a length, a
 * count, a mailbox pointer or NULL, -1/-2 for the errors) and every caller checks it: the design
 * of the daemons error virtualization was made for. Each is exported (-rdynamic) and noipa.
 */
#include <ctype.h>

#define TCP_LINE_MAX 512
#include "tcp_server.h"

#define ADDRMAX 31
#define MAXRCPT 4
#define BODYMAX 256
#define NBOX 4

enum { V_HELO = 1, V_MAIL, V_RCPT, V_DATA, V_RSET, V_NOOP, V_QUIT, V_STAT, V_XRESET };
enum { S_START, S_GREETED, S_MAIL, S_RCPT, S_DATA };

struct mailbox { const char *user; int messages; int bytes; };
static struct mailbox boxes[NBOX] = {{"alice", 0, 0}, {"bob", 0, 0}, {"carol", 0, 0},
                                     {"postmaster", 0, 0}};
static int queue_id;

struct session {
  int fd, state, nrcpt, body_len;
  struct mailbox *rcpt[MAXRCPT];
  char from[ADDRMAX + 1];
};

__attribute__((noipa)) int send_code(int fd, int code, const char *text) {
  char buf[128];
  int n = snprintf(buf, sizeof buf, "%d %s\n", code, text);
  return tcp_write_all(fd, buf, (size_t)n) < 0 ? -1 : n;
}

__attribute__((noipa)) int parse_verb(const char *w) {
  static const char *verbs[] = {"HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "STAT",
                                "XRESET"};
  for (int i = 0; i < 9; i++)
    if (strcasecmp(w, verbs[i]) == 0) return i + 1;
  return -1;
}

/* The state after `verb` in `state`, or -1 when the verb is out of sequence. */
__attribute__((noipa)) int next_state(int state, int verb) {
  switch (verb) {
  case V_HELO: return S_GREETED;
  case V_MAIL: return state == S_GREETED ? S_MAIL : -1;
  case V_RCPT: return state == S_MAIL || state == S_RCPT ? S_RCPT : -1;
  case V_DATA: return state == S_RCPT ? S_DATA : -1;
  case V_RSET: return state == S_START ? S_START : S_GREETED;
  default: return state;
  }
}

__attribute__((noipa)) int valid_name(const char *name) {
  if (name == NULL || name[0] == '\0' || strlen(name) > ADDRMAX) return 0;
  for (const char *p = name; *p; p++)
    if (!isalnum((unsigned char)*p) && *p != '.' && *p != '-') return 0;
  return 1;
}

/* "PREFIX<user@host>" -> copies user@host to out; its length, -1 bad syntax, -2 too long. */
__attribute__((noipa)) int parse_address(const char *arg, const char *prefix, char *out) {
  size_t n = strlen(prefix);
  if (arg == NULL || strncasecmp(arg, prefix, n) != 0 || arg[n] != '<') return -1;
  const char *end = strchr(arg + n + 1, '>');
  if (end == NULL || end[1] != '\0') return -1;
  size_t len = (size_t)(end - (arg + n + 1));
  if (len > ADDRMAX) return -2;
  memcpy(out, arg + n + 1, len);
  out[len] = '\0';
  if (len == 0 || strchr(out, '@') == NULL) return -1;
  return (int)len;
}

/* The mailbox of "user" or "user@host", or NULL. */
__attribute__((noipa)) struct mailbox *find_mailbox(const char *addr) {
  size_t n = strcspn(addr, "@");
  for (int i = 0; i < NBOX; i++)
    if (strlen(boxes[i].user) == n && strncmp(boxes[i].user, addr, n) == 0) return &boxes[i];
  return NULL;
}

/* Recipients so far, or -1 when the list is full. */
__attribute__((noipa)) int add_recipient(struct session *s, struct mailbox *mb) {
  if (s->nrcpt >= MAXRCPT) return -1;
  s->rcpt[s->nrcpt++] = mb;
  return s->nrcpt;
}

/* The body length after adding `line`, or -1 when the message grew too big. */
__attribute__((noipa)) int body_add(struct session *s, const char *line) {
  int len = s->body_len + (int)strlen(line) + 1;
  if (len > BODYMAX) return -1;
  s->body_len = len;
  return len;
}

/* The queue id of the delivered message (every recipient's mailbox counts it). */
__attribute__((noipa)) int deliver(struct session *s) {
  for (int i = 0; i < s->nrcpt; i++) {
    s->rcpt[i]->messages++;
    s->rcpt[i]->bytes += s->body_len;
  }
  return ++queue_id;
}

__attribute__((noipa)) int cmd_helo(struct session *s, const char *arg) {
  char buf[64];
  if (!valid_name(arg)) return send_code(s->fd, 501, "bad name");
  s->state = next_state(s->state, V_HELO);
  s->nrcpt = 0;
  snprintf(buf, sizeof buf, "hello %s", arg);
  return send_code(s->fd, 250, buf);
}

__attribute__((noipa)) int cmd_mail(struct session *s, const char *arg) {
  int st = next_state(s->state, V_MAIL);
  if (st < 0) return send_code(s->fd, 503, "bad sequence");
  if (parse_address(arg, "FROM:", s->from) < 0) return send_code(s->fd, 501, "bad address");
  s->state = st;
  s->nrcpt = 0;
  s->body_len = 0;
  return send_code(s->fd, 250, "sender ok");
}

__attribute__((noipa)) int cmd_rcpt(struct session *s, const char *arg) {
  char addr[ADDRMAX + 1];
  int st = next_state(s->state, V_RCPT);
  if (st < 0) return send_code(s->fd, 503, "bad sequence");
  if (parse_address(arg, "TO:", addr) < 0) return send_code(s->fd, 501, "bad address");
  struct mailbox *mb = find_mailbox(addr);
  if (mb == NULL) return send_code(s->fd, 550, "no such user");
  if (add_recipient(s, mb) < 0) return send_code(s->fd, 452, "too many recipients");
  s->state = st;
  return send_code(s->fd, 250, "recipient ok");
}

__attribute__((noipa)) int cmd_data(struct session *s) {
  int st = next_state(s->state, V_DATA);
  if (st < 0) return send_code(s->fd, 503, "bad sequence");
  s->state = st;
  s->body_len = 0;
  return send_code(s->fd, 354, "end with '.'");
}

/* A line while in DATA: the body, or "." ending it. */
__attribute__((noipa)) int data_line(struct session *s, const char *line) {
  char buf[64];
  if (strcmp(line, ".") != 0) {
    if (s->body_len >= 0 && body_add(s, line) < 0) s->body_len = -1;
    return 0;
  }
  s->state = S_GREETED;
  if (s->body_len < 0) return send_code(s->fd, 552, "too big");
  if (s->nrcpt <= 0) return send_code(s->fd, 554, "no recipients");
  snprintf(buf, sizeof buf, "queued as %d", deliver(s));
  return send_code(s->fd, 250, buf);
}

__attribute__((noipa)) int mailbox_count(const struct mailbox *mb) {
  return mb == NULL ? -1 : mb->messages;
}

__attribute__((noipa)) int cmd_stat(struct session *s, const char *arg) {
  char buf[96];
  struct mailbox *mb = arg == NULL ? NULL : find_mailbox(arg);
  if (mb == NULL) return send_code(s->fd, 550, "no such user");
  snprintf(buf, sizeof buf, "%s %d messages %d bytes", mb->user, mailbox_count(mb), mb->bytes);
  return send_code(s->fd, 250, buf);
}

/* One command line; returns 1 when the session ends. */
__attribute__((noipa)) int handle_line(struct session *s, char *line) {
  if (s->state == S_DATA) return data_line(s, line), 0;
  char *save = NULL;
  char *verb = strtok_r(line, " ", &save);
  char *arg = strtok_r(NULL, "", &save);
  switch (verb == NULL ? -1 : parse_verb(verb)) {
  case V_HELO: cmd_helo(s, arg); return 0;
  case V_MAIL: cmd_mail(s, arg); return 0;
  case V_RCPT: cmd_rcpt(s, arg); return 0;
  case V_DATA: cmd_data(s); return 0;
  case V_RSET: s->state = next_state(s->state, V_RSET); s->nrcpt = 0;
    send_code(s->fd, 250, "reset"); return 0;
  case V_NOOP: send_code(s->fd, 250, "ok"); return 0;
  case V_QUIT: send_code(s->fd, 221, "bye"); return 1;
  case V_STAT: cmd_stat(s, arg); return 0;
  case V_XRESET:
    for (int i = 0; i < NBOX; i++) boxes[i].messages = boxes[i].bytes = 0;
    queue_id = 0;
    send_code(s->fd, 250, "store cleared"); return 0;
  default: send_code(s->fd, 500, "unknown command"); return 0;
  }
}

static void serve(int fd) {
  struct session s = {.fd = fd};
  struct tcp_lines in = {0};
  char *line;
  long n;
  while ((n = tcp_read_line(fd, &in, &line)) != TCP_LINE_CLOSED)
    if (n >= 0 && handle_line(&s, line)) break;
  close(fd);
}

int main(int argc, char **argv) {
  int lfd = tcp_listen(argc > 1 ? argv[1] : "0", INADDR_LOOPBACK, "maild");
  tcp_print_ready(lfd);
  tcp_serve_forever(lfd, serve, TCP_SERVE_ONE_AT_A_TIME);
}
