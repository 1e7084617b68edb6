/* cforkudp: a minimal fork-per-datagram time server (ForkingUDPServer's model in
 * C): receive a datagram, fork, the child answers "Server time: YYYY-MM-DD
 * HH:MM:SS" on the shared socket; SIGCHLD is ignored. Usage: cforkudp PORT */
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: cforkudp PORT\n");
        return 64;
    }
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[1])) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); return 71; }
    signal(SIGCHLD, SIG_IGN);
    for (;;) {
        char buf[2048];
        struct sockaddr_storage peer;
        socklen_t len = sizeof peer;
        if (recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&peer, &len) < 0)
            continue;
        if (fork() == 0) {
            char out[64];
            time_t now = time(NULL);
            struct tm tm;
            localtime_r(&now, &tm);
            size_t n = strftime(out, sizeof out, "Server time: %Y-%m-%d %H:%M:%S", &tm);
            sendto(s, out, n, 0, (struct sockaddr *)&peer, len);
            _exit(0);
        }
    }
}
