/* cfork: the floor of forking cost. A minimal fork-per-connection uppercase echo:
 * accept, fork, the child upper-cases what it reads until EOF, the parent closes
 * its copy; SIGCHLD is ignored so the kernel reaps. Usage: cfork tcp PORT | unix PATH */
#include <ctype.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <arpa/inet.h>

static void serve(int c)
{
    char buf[4096];
    ssize_t n;
    while ((n = read(c, buf, sizeof buf)) > 0) {
        for (ssize_t i = 0; i < n; i++)
            buf[i] = (char)toupper((unsigned char)buf[i]);
        if (write(c, buf, (size_t)n) != n)
            break;
    }
}

int main(int argc, char **argv)
{
    int s, one = 1;
    if (argc != 3) {
        fprintf(stderr, "usage: cfork tcp PORT | unix PATH\n");
        return 64;
    }
    if (strcmp(argv[1], "tcp") == 0) {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2])) };
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        s = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); return 71; }
    } else {
        struct sockaddr_un a = { .sun_family = AF_UNIX };
        strncpy(a.sun_path, argv[2], sizeof a.sun_path - 1);
        unlink(argv[2]);
        s = socket(AF_UNIX, SOCK_STREAM, 0);
        if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); return 71; }
    }
    if (listen(s, 1024) < 0) { perror("listen"); return 71; }
    signal(SIGCHLD, SIG_IGN);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0)
            continue;
        pid_t pid = fork();
        if (pid == 0) {
            close(s);
            serve(c);
            _exit(0);
        }
        close(c);
    }
}
