/*
 * Stand-in for the web servers critest's specs start (no registry here):
 * registry.k8s.io/e2e-test-images/nginx and httpd (port 80) and cri-tools'
 * hostnet-nginx (port 12003, host network). It does only what the specs look at:
 *   - installed as .../nginx: a process named "nginx" (pidof nginx) whose
 *     /proc/PID/cmdline reads "nginx: master process ..." (the ContainerPID and
 *     PodPID specs), its PID in /var/run/nginx.pid (the HostPID spec);
 *   - a first log line naming the program ("httpd: ...", the container log spec);
 *   - HTTP 200 with a small page for any request on the port (networking,
 *     port mapping and port-forward specs);
 *   - exits on SIGTERM, SIGINT or SIGQUIT (as PID 1 nothing else would).
 * Usage: nginx|httpd [PORT]   (default 80)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define TITLE "nginx: master process nginx -g daemon off;"
#define PID_FILE "/var/run/nginx.pid"

static const char page[] =
    "<!DOCTYPE html>\n<html><head><title>It works</title></head>\n"
    "<body><h1>It works</h1><p>HeteroPod's web server stand-in for critest.</p></body></html>\n";

static void on_stop(int sig) {
    (void)sig;
    _exit(0);
}

static int write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Reads the request head (or what arrives within the timeout) and answers 200. */
static void serve(int conn) {
    char req[8192], head[256];
    size_t got = 0;
    struct timeval tv = {.tv_sec = 5, .tv_usec = 0};
    setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(conn, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    while (got < sizeof req - 1) {
        ssize_t n = read(conn, req + got, sizeof req - 1 - got);
        if (n <= 0)
            break;
        got += (size_t)n;
        req[got] = '\0';
        if (strstr(req, "\r\n\r\n") || strstr(req, "\n\n"))
            break;
    }
    int len = snprintf(head, sizeof head,
                       "HTTP/1.1 200 OK\r\nServer: heteropod-stand-in\r\nContent-Type: text/html\r\n"
                       "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                       sizeof page - 1);
    if (write_all(conn, head, (size_t)len) == 0)
        write_all(conn, page, sizeof page - 1);
}

int main(int argc, char **argv) {
    const char *port = argc > 1 ? argv[1] : "80";
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n < 0) {
        perror("readlink /proc/self/exe");
        return 1;
    }
    self[n] = '\0';
    const char *name = strrchr(self, '/') ? strrchr(self, '/') + 1 : self;
    int nginx = strcmp(name, "nginx") == 0;

    /* As nginx, take its process title: exec ourselves again with it as argv[0]. */
    if (nginx && (argc < 1 || strcmp(argv[0], TITLE) != 0)) {
        char *args[] = {TITLE, (char *)port, NULL};
        execv(self, args);
        perror("execv");
        return 1;
    }

    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_stop);
    signal(SIGINT, on_stop);
    signal(SIGQUIT, on_stop);

    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("socket");
        return 1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY)};
    long p = strtol(port, NULL, 10);
    if (p <= 0 || p > 65535) {
        fprintf(stderr, "bad port %s\n", port);
        return 2;
    }
    addr.sin_port = htons((unsigned short)p);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(fd, 64) < 0) {
        perror("bind/listen");
        return 1;
    }

    if (nginx) {
        FILE *pf = fopen(PID_FILE, "w");
        if (!pf || fprintf(pf, "%d\n", (int)getpid()) < 0 || fclose(pf) != 0) {
            perror(PID_FILE);
            return 1;
        }
    }
    fprintf(stderr, "%s: HeteroPod's stand-in web server listening on port %ld\n", name, p);

    for (;;) {
        int conn = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
        if (conn < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            perror("accept");
            return 1;
        }
        serve(conn);
        close(conn);
    }
}
