/* upper: copy stdin to stdout, ASCII upper-cased, as it arrives (for tcpserver,
 * unixserver, s6-ipcserver, tcpsvd and socat EXEC: in bench/compare.sh). */
#include <ctype.h>
#include <unistd.h>

int main(void)
{
    char buf[4096];
    ssize_t n;
    while ((n = read(0, buf, sizeof buf)) > 0) {
        for (ssize_t i = 0; i < n; i++)
            buf[i] = (char)toupper((unsigned char)buf[i]);
        for (ssize_t off = 0, w; off < n; off += w)
            if ((w = write(1, buf + off, (size_t)(n - off))) <= 0)
                return 1;
    }
    return 0;
}
