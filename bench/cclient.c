/* cclient: an independent load generator for line servers, to cross-check
 * `forkserve bench`. N threads each connect, write one line, read the reply
 * (it must be the line upper-cased), end the connection as --close says and start
 * again, for SECS seconds. Prints one JSON object, in the shape of
 * `forkserve bench --json` (connections_per_s, latency_us p50/p99/max, errors.total,
 * generator_cpu_s: this generator's own user+system CPU time over the run).
 *
 * Usage: cclient [-c N] [-d SECS] [-m TEXT] [--close client|half|server] tcp:HOST:PORT | unix:PATH
 *   client  close at once after the reply (nc, curl, most libraries; the default)
 *   half    shutdown(SHUT_WR), then read until the server closes
 *   server  read until the server closes, without half-closing
 * Build: cc -O2 -pthread -o cclient bench/cclient.c */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum close_how { CLOSE_CLIENT, CLOSE_HALF, CLOSE_SERVER };

static struct sockaddr_storage target;
static socklen_t target_len;
static int family;
static char msg[512], want[512];
static size_t msg_len;
static enum close_how how = CLOSE_CLIENT;
static double run_secs = 5.0;

struct tally {
    uint64_t conns, errors;
    uint32_t *lat_us;
    size_t n, cap;
    pthread_t tid;
};

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void record(struct tally *t, double secs)
{
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 65536;
        t->lat_us = realloc(t->lat_us, t->cap * sizeof *t->lat_us);
        if (!t->lat_us) { perror("realloc"); exit(71); }
    }
    t->lat_us[t->n++] = (uint32_t)(secs * 1e6);
}

/* One connection; 0 when the reply was right and the connection ended cleanly. */
static int one(void)
{
    char buf[1024];
    size_t got = 0;
    struct timeval tv = { .tv_sec = 5 };
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&target, target_len) < 0
        || write(fd, msg, msg_len) != (ssize_t)msg_len)
        goto fail;
    while (got < msg_len) {
        ssize_t n = read(fd, buf + got, sizeof buf - got);
        if (n <= 0)
            goto fail;
        got += (size_t)n;
    }
    if (got != msg_len || memcmp(buf, want, msg_len) != 0)
        goto fail;
    if (how == CLOSE_HALF)
        shutdown(fd, SHUT_WR);
    if (how != CLOSE_CLIENT) {
        ssize_t n;
        while ((n = read(fd, buf, sizeof buf)) > 0)
            ;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            goto fail;
    }
    close(fd);
    return 0;
fail:
    close(fd);
    return -1;
}

static void *client(void *arg)
{
    struct tally *t = arg;
    double end = now_s() + run_secs;
    while (now_s() < end) {
        double t0 = now_s();
        if (one() == 0) {
            t->conns++;
            record(t, now_s() - t0);
        } else {
            t->errors++;
        }
    }
    return NULL;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static double cpu_secs(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)(u.ru_utime.tv_sec + u.ru_stime.tv_sec)
        + (double)(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

static int parse_target(const char *s)
{
    if (strncmp(s, "tcp:", 4) == 0) {
        struct sockaddr_in *a = (struct sockaddr_in *)&target;
        char host[64];
        const char *colon = strrchr(s + 4, ':');
        if (!colon || (size_t)(colon - (s + 4)) >= sizeof host)
            return -1;
        memcpy(host, s + 4, (size_t)(colon - (s + 4)));
        host[colon - (s + 4)] = 0;
        a->sin_family = AF_INET;
        a->sin_port = htons((unsigned short)atoi(colon + 1));
        if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
            return -1;
        family = AF_INET;
        target_len = sizeof *a;
        return 0;
    }
    if (strncmp(s, "unix:", 5) == 0) {
        struct sockaddr_un *a = (struct sockaddr_un *)&target;
        a->sun_family = AF_UNIX;
        strncpy(a->sun_path, s + 5, sizeof a->sun_path - 1);
        family = AF_UNIX;
        target_len = sizeof *a;
        return 0;
    }
    return -1;
}

static void usage(void)
{
    fprintf(stderr, "usage: cclient [-c N] [-d SECS] [-m TEXT] [--close client|half|server] "
                    "tcp:HOST:PORT | unix:PATH\n");
    exit(64);
}

int main(int argc, char **argv)
{
    int clients = 8;
    const char *text = "hello", *addr = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc)
            clients = atoi(argv[++i]);
        else if (strcmp(argv[i], "-d") == 0 && i + 1 < argc)
            run_secs = atof(argv[++i]);
        else if (strcmp(argv[i], "-m") == 0 && i + 1 < argc)
            text = argv[++i];
        else if (strcmp(argv[i], "--close") == 0 && i + 1 < argc) {
            const char *h = argv[++i];
            if (strcmp(h, "client") == 0) how = CLOSE_CLIENT;
            else if (strcmp(h, "half") == 0) how = CLOSE_HALF;
            else if (strcmp(h, "server") == 0) how = CLOSE_SERVER;
            else usage();
        } else if (!addr)
            addr = argv[i];
        else
            usage();
    }
    if (!addr || clients < 1 || run_secs <= 0 || parse_target(addr) < 0)
        usage();
    msg_len = (size_t)snprintf(msg, sizeof msg - 1, "%s\n", text);
    for (size_t i = 0; i < msg_len; i++)
        want[i] = (char)toupper((unsigned char)msg[i]);

    struct tally *t = calloc((size_t)clients, sizeof *t);
    double cpu0 = cpu_secs(), t0 = now_s();
    for (int i = 0; i < clients; i++)
        if (pthread_create(&t[i].tid, NULL, client, &t[i]) != 0) { perror("pthread_create"); return 71; }
    uint64_t conns = 0, errors = 0;
    size_t n = 0;
    for (int i = 0; i < clients; i++) {
        pthread_join(t[i].tid, NULL);
        conns += t[i].conns;
        errors += t[i].errors;
        n += t[i].n;
    }
    double wall = now_s() - t0, cpu = cpu_secs() - cpu0;
    uint32_t *all = malloc((n ? n : 1) * sizeof *all);
    size_t k = 0;
    for (int i = 0; i < clients; i++) {
        memcpy(all + k, t[i].lat_us, t[i].n * sizeof *all);
        k += t[i].n;
    }
    qsort(all, n, sizeof *all, cmp_u32);
    uint32_t p50 = n ? all[n / 2] : 0, p99 = n ? all[(n * 99) / 100] : 0, max = n ? all[n - 1] : 0;
    static const char *names[] = { "client", "half", "server" };
    printf("{\"generator\":\"cclient\",\"mode\":\"stream\",\"close\":\"%s\",\"clients\":%d,"
           "\"duration_s\":%.3f,\"connections\":%llu,\"connections_per_s\":%.1f,"
           "\"generator_cpu_s\":%.3f,\"latency_us\":{\"p50\":%u,\"p99\":%u,\"max\":%u},"
           "\"errors\":{\"total\":%llu}}\n",
           names[how], clients, wall, (unsigned long long)conns, (double)conns / wall, cpu,
           p50, p99, max, (unsigned long long)errors);
    return errors ? 1 : 0;
}
