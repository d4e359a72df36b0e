/* kv_server: a line-protocol key-value server for behaviour profiles and Smart Error Virtualization.
 *
 * usage: kv_server PORT      (PORT 0 picks one; prints "READY <port>" on stdout when listening)
 *
 * One connection at a time, one command per line:
 *   SET key value -> STORED | ERROR bad key | ERROR bad value | ERROR full | ERROR syntax
 *   GET key       -> VALUE v | NOT_FOUND | ERROR bad key | ERROR syntax
 *   DEL key       -> DELETED | NOT_FOUND | ERROR bad key | ERROR syntax
 *   COUNT         -> COUNT n
 *   RESET         -> RESET          (empties the table: lets a benchmark start trials afresh)
 *   other         -> ERROR unknown command
 *
 * The helper functions return values that encode success or error differently (1/0, length/-1,
 * index/-1, command code/-1), so that malformed input drives them to their error values: the
 * "failure dynamics" SEV learns. Each is exported (-rdynamic) and noipa: not inlined, and callers
 * make no assumption about which registers it clobbers (gcc -O2 -fipa-ra would, and a replacement
 * written in JavaScript clobbers them all).
 * No function checks a value it gets from another: a wrong virtualized value shows up outside.
 */
#include <ctype.h>

#define TCP_LINE_MAX 4096 /* before the include: the longest command line */
#include "tcp_server.h"

#define NSLOTS 16
#define KEYMAX 15
#define VALMAX 31

enum { CMD_SET = 1, CMD_GET, CMD_DEL, CMD_COUNT, CMD_RESET };

struct slot { char key[KEYMAX + 1]; char val[VALMAX + 1]; int used; };
static struct slot table[NSLOTS];

__attribute__((noipa)) int parse_command(const char *word) {
  if (strcmp(word, "SET") == 0) return CMD_SET;
  if (strcmp(word, "GET") == 0) return CMD_GET;
  if (strcmp(word, "DEL") == 0) return CMD_DEL;
  if (strcmp(word, "COUNT") == 0) return CMD_COUNT;
  if (strcmp(word, "RESET") == 0) return CMD_RESET;
  return -1;
}

__attribute__((noipa)) int count_tokens(char **tok, int max) {
  int n = 0;
  while (n < max && tok[n] != NULL) n++;
  return n;
}

__attribute__((noipa)) int key_valid(const char *key) {
  size_t n = strlen(key);
  if (n == 0 || n > KEYMAX) return 0;
  for (size_t i = 0; i < n; i++)
    if (!isalnum((unsigned char)key[i])) return 0;
  return 1;
}

__attribute__((noipa)) int value_len(const char *v) {
  size_t n = strlen(v);
  if (n == 0 || n > VALMAX) return -1;
  for (size_t i = 0; i < n; i++)
    if (!isprint((unsigned char)v[i])) return -1;
  return (int)n;
}

__attribute__((noipa)) int find_slot(const char *key) {
  for (int i = 0; i < NSLOTS; i++)
    if (table[i].used && strcmp(table[i].key, key) == 0) return i;
  return -1;
}

__attribute__((noipa)) int alloc_slot(void) {
  for (int i = 0; i < NSLOTS; i++)
    if (!table[i].used) return i;
  return -1;
}

__attribute__((noipa)) int store_value(int slot, const char *key, const char *val, int len) {
  memcpy(table[slot].val, val, (size_t)len);
  table[slot].val[len] = '\0';
  snprintf(table[slot].key, sizeof table[slot].key, "%s", key);
  table[slot].used = 1;
  return 0;
}

__attribute__((noipa)) int remove_slot(int slot) {
  table[slot].used = 0;
  return 0;
}

__attribute__((noipa)) int count_used(void) {
  int n = 0;
  for (int i = 0; i < NSLOTS; i++) n += table[i].used != 0;
  return n;
}

__attribute__((noipa)) int send_reply(int fd, const char *msg) {
  char buf[96];
  int n = snprintf(buf, sizeof buf, "%s\n", msg);
  return (int)write(fd, buf, (size_t)n);
}

static int handle_set(int fd, char **tok, int ntok) {
  if (ntok != 3) return send_reply(fd, "ERROR syntax");
  if (!key_valid(tok[1])) return send_reply(fd, "ERROR bad key");
  int len = value_len(tok[2]);
  if (len < 0) return send_reply(fd, "ERROR bad value");
  int slot = find_slot(tok[1]);
  if (slot < 0) slot = alloc_slot();
  if (slot < 0) return send_reply(fd, "ERROR full");
  store_value(slot, tok[1], tok[2], len);
  return send_reply(fd, "STORED");
}

static int handle_get(int fd, char **tok, int ntok) {
  char buf[64];
  if (ntok != 2) return send_reply(fd, "ERROR syntax");
  if (!key_valid(tok[1])) return send_reply(fd, "ERROR bad key");
  int slot = find_slot(tok[1]);
  if (slot < 0) return send_reply(fd, "NOT_FOUND");
  snprintf(buf, sizeof buf, "VALUE %s", table[slot].val);
  return send_reply(fd, buf);
}

static int handle_del(int fd, char **tok, int ntok) {
  if (ntok != 2) return send_reply(fd, "ERROR syntax");
  if (!key_valid(tok[1])) return send_reply(fd, "ERROR bad key");
  int slot = find_slot(tok[1]);
  if (slot < 0) return send_reply(fd, "NOT_FOUND");
  remove_slot(slot);
  return send_reply(fd, "DELETED");
}

__attribute__((noipa)) int handle_line(int fd, char *line) {
  char *tok[5] = {0};
  char *save = NULL;
  char buf[32];
  int i = 0;
  for (char *t = strtok_r(line, " \t\r", &save); t && i < 4; t = strtok_r(NULL, " \t\r", &save))
    tok[i++] = t;
  if (tok[0] == NULL) return send_reply(fd, "ERROR unknown command");
  int ntok = count_tokens(tok, 4);
  switch (parse_command(tok[0])) {
  case CMD_SET: return handle_set(fd, tok, ntok);
  case CMD_GET: return handle_get(fd, tok, ntok);
  case CMD_DEL: return handle_del(fd, tok, ntok);
  case CMD_COUNT:
    snprintf(buf, sizeof buf, "COUNT %d", count_used());
    return send_reply(fd, buf);
  case CMD_RESET:
    memset(table, 0, sizeof table);
    return send_reply(fd, "RESET");
  default: return send_reply(fd, "ERROR unknown command");
  }
}

/* One connection at a time; an over-long line is dropped (its tail then counts as a line). */
static void serve(int fd) {
  struct tcp_lines in = {0};
  char *line;
  long n;
  while ((n = tcp_read_line(fd, &in, &line)) != TCP_LINE_CLOSED)
    if (n >= 0) handle_line(fd, line);
  close(fd);
}

int main(int argc, char **argv) {
  int lfd = tcp_listen(argc > 1 ? argv[1] : "0", INADDR_LOOPBACK, "kv_server");
  tcp_print_ready(lfd);
  tcp_serve_forever(lfd, serve, TCP_SERVE_ONE_AT_A_TIME);
}
