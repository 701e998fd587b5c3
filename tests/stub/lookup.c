/* getaddrinfo() as an application calls it; built with musl-gcc to exercise musl's stub resolver.
 * Prints one address per line, or "error: <message>" and exits 2 (EAI_NONAME) or 3 (other). */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

int main(int argc, char **argv) {
    struct addrinfo hints, *res, *ai;
    char text[INET6_ADDRSTRLEN];
    if (argc != 2) {
        fprintf(stderr, "usage: %s NAME\n", argv[0]);
        return 64;
    }
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(argv[1], NULL, &hints, &res);
    if (rc != 0) {
        printf("error: %s\n", gai_strerror(rc));
        return rc == EAI_NONAME ? 2 : 3;
    }
    for (ai = res; ai; ai = ai->ai_next) {
        void *addr = ai->ai_family == AF_INET ? (void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
                                              : (void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
        inet_ntop(ai->ai_family, addr, text, sizeof text);
        printf("%s\n", text);
    }
    freeaddrinfo(res);
    return 0;
}
