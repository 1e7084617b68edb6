/* udpsend: the metrics ingest load. SENDERS processes each send `name:value:ts`
 * lines, LINES per datagram, over UDP to 127.0.0.1:PORT for SECS seconds, paced to
 * RATE points/s in all (0: as fast as they can). Names are bench.sN.mK (100 per
 * sender), values vary, timestamps are the start time. Prints the datagrams and
 * points sent, and the seconds it took.
 *
 * Usage: udpsend PORT SENDERS SECS RATE LINES */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAYLOADS 64

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* One sender: returns the datagrams it sent. */
static long sender(int id, int port, double secs, double rate, int lines, long ts)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((unsigned short)port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    static char payload[PAYLOADS][65536];
    static size_t len[PAYLOADS];
    for (int p = 0; p < PAYLOADS; p++) {
        size_t n = 0;
        for (int l = 0; l < lines; l++)
            n += (size_t)snprintf(payload[p] + n, sizeof payload[p] - n, "bench.s%d.m%d:%d.%d:%ld\n",
                                  id, (p * lines + l) % 100, (p * 7919 + l * 31) % 1000, l % 10, ts);
        len[p] = n;
    }
    double start = now(), per_dgram = rate > 0 ? lines / rate : 0;
    long sent = 0;
    while (now() - start < secs) {
        if (per_dgram > 0) {
            /* Send what is due, then sleep a little: paced, not bursty. */
            double due = (now() - start) / per_dgram;
            if (sent >= (long)due) {
                struct timespec nap = { 0, 200000 };
                nanosleep(&nap, NULL);
                continue;
            }
        }
        if (sendto(s, payload[sent % PAYLOADS], len[sent % PAYLOADS], 0, (struct sockaddr *)&a, sizeof a) > 0)
            sent++;
    }
    return sent;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: udpsend PORT SENDERS SECS RATE LINES\n");
        return 64;
    }
    int port = atoi(argv[1]), senders = atoi(argv[2]), lines = atoi(argv[5]);
    double secs = atof(argv[3]), rate = atof(argv[4]);
    if (senders < 1 || lines < 1 || secs <= 0) {
        fprintf(stderr, "udpsend: bad arguments\n");
        return 64;
    }
    long ts = (long)time(NULL);
    int fds[64][2];
    double start = now();
    for (int i = 0; i < senders && i < 64; i++) {
        if (pipe(fds[i]) < 0) { perror("pipe"); return 71; }
        if (fork() == 0) {
            long sent = sender(i, port, secs, rate / senders, lines, ts);
            if (write(fds[i][1], &sent, sizeof sent) != sizeof sent) _exit(1);
            _exit(0);
        }
        close(fds[i][1]);
    }
    long total = 0;
    for (int i = 0; i < senders && i < 64; i++) {
        long sent = 0;
        if (read(fds[i][0], &sent, sizeof sent) == sizeof sent)
            total += sent;
        wait(NULL);
    }
    printf("%ld %ld %.3f\n", total, total * lines, now() - start);
    return 0;
}
