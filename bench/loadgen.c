/*
 * A closed-loop socketmap load generator, compiled by bench/run.py at run time (gcc -O2).
 *
 * C connections, each sending its next request only after the reply to the previous one, like
 * Postfix processes. One thread and epoll: at 200,000 lookups/s it uses a fraction of its core,
 * so the server under test, not the load, sets the pace (it prints its own CPU share to prove
 * it, and that of every PID it is given, over the measured window).
 *
 *   loadgen ADDRESS CONNECTIONS WARMUP SECONDS REQUESTS [PID...]
 *
 * ADDRESS is host:port or a UNIX socket path; REQUESTS a file of netstrings sent as they are.
 * Each connection starts at its own, evenly spread place in the list and walks it in order,
 * round and round. SECONDS 0 means "once": every request is sent exactly once (the connections
 * share the list out) and the program ends when all are answered, to fill a cache.
 *
 * Prints one line of key=value: replies and seconds of the measured window, latency
 * percentiles in ms, the count of each reply word (OK, NOTFOUND, TEMP, PERM, other), all
 * replies including warm-up, and cpu shares (self, then each PID) over the measured window.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define BUFFER 65536
#define DEADLINE 600.0 /* seconds: a server that stops answering ends the run with an error */

struct request { const char *data; size_t len; };

struct conn {
    int fd;
    size_t next, end;   /* next request to send; end of this connection's share in "once" mode */
    double sent_at;
    size_t used;
    char buf[BUFFER];
};

enum { OK, NOTFOUND, TEMP, PERM, OTHER, WORDS };
static const char *WORD_NAMES[WORDS] = {"OK", "NOTFOUND", "TEMP", "PERM", "other"};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static double process_cpu(const char *pid) {
    char path[64], line[4096];
    snprintf(path, sizeof path, "/proc/%s/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(line, 1, sizeof line - 1, f);
    fclose(f);
    line[n] = 0;
    char *p = strrchr(line, ')'); /* the command name may hold spaces */
    if (!p) return -1;
    unsigned long utime = 0, stime = 0;
    /* after ")": state(3) ... utime is field 14, stime 15 */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2) return -1;
    return (double)(utime + stime) / sysconf(_SC_CLK_TCK);
}

static double self_cpu(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static int connect_to(const char *address) {
    int fd;
    if (address[0] == '/') {
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        strncpy(sun.sun_path, address, sizeof sun.sun_path - 1);
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof sun) < 0) die("connect");
    } else {
        char host[256];
        const char *colon = strrchr(address, ':');
        if (!colon || (size_t)(colon - address) >= sizeof host) { fprintf(stderr, "bad address\n"); exit(2); }
        memcpy(host, address, colon - address);
        host[colon - address] = 0;
        struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai;
        if (getaddrinfo(host, colon + 1, &hints, &ai) != 0) { fprintf(stderr, "bad address\n"); exit(2); }
        fd = socket(ai->ai_family, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) die("connect");
        freeaddrinfo(ai);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static void send_all(int fd, const char *data, size_t len) {
    while (len) {
        ssize_t n = write(fd, data, len);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            die("write");
        }
        data += n;
        len -= (size_t)n;
    }
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: loadgen ADDRESS CONNECTIONS WARMUP SECONDS REQUESTS [PID...]\n");
        return 2;
    }
    const char *address = argv[1];
    int connections = atoi(argv[2]);
    double warmup = atof(argv[3]), seconds = atof(argv[4]);
    int once = seconds == 0;

    FILE *f = fopen(argv[5], "rb");
    if (!f) die("requests");
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *data = malloc(size + 1);
    if (fread(data, 1, size, f) != (size_t)size) die("read requests");
    fclose(f);
    size_t count = 0, capacity = 1024;
    struct request *requests = malloc(capacity * sizeof *requests);
    for (long at = 0; at < size;) {
        char *colon = memchr(data + at, ':', size - at);
        if (!colon) break;
        size_t len = strtoul(data + at, NULL, 10);
        size_t whole = (colon - (data + at)) + 1 + len + 1;
        if (count == capacity) requests = realloc(requests, (capacity *= 2) * sizeof *requests);
        requests[count++] = (struct request){data + at, whole};
        at += whole;
    }
    if (count == 0 || connections < 1) { fprintf(stderr, "no requests or connections\n"); return 2; }

    int ep = epoll_create1(0);
    struct conn *conns = calloc(connections, sizeof *conns);
    size_t latencies_cap = 1 << 20, latencies_n = 0;
    double *latencies = malloc(latencies_cap * sizeof *latencies);
    unsigned long words[WORDS] = {0}, replies = 0;
    int active = 0;

    double started = now();
    for (int i = 0; i < connections; i++) {
        struct conn *c = &conns[i];
        c->next = (size_t)i * count / connections;
        c->end = once ? (size_t)(i + 1) * count / connections : (size_t)-1;
        c->fd = connect_to(address);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
        if (c->next < c->end) {
            c->sent_at = now();
            send_all(c->fd, requests[c->next].data, requests[c->next].len);
            c->next++;
            active++;
        }
    }

    int npids = argc - 6;
    double *cpu_before = calloc(npids + 1, sizeof(double)), *cpu_after = calloc(npids + 1, sizeof(double));
    double measure_from = started + warmup, measure_to = measure_from + seconds, window = 0;
    int measuring = 0, finished = active == 0;
    struct epoll_event events[256];
    while (!finished) {
        int n = epoll_wait(ep, events, 256, 10);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        double t = now();
        if (!once && !measuring && t >= measure_from) {
            measuring = 1;
            measure_from = t;
            cpu_before[0] = self_cpu();
            for (int p = 0; p < npids; p++) cpu_before[p + 1] = process_cpu(argv[6 + p]);
        }
        if (!once && measuring && t >= measure_to) {
            window = t - measure_from;
            cpu_after[0] = self_cpu();
            for (int p = 0; p < npids; p++) cpu_after[p + 1] = process_cpu(argv[6 + p]);
            break;
        }
        if (t - started > DEADLINE) { fprintf(stderr, "no progress: giving up\n"); return 3; }
        for (int e = 0; e < n; e++) {
            struct conn *c = events[e].data.ptr;
            ssize_t got = read(c->fd, c->buf + c->used, BUFFER - c->used);
            if (got <= 0) {
                if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                fprintf(stderr, "server closed a connection\n");
                return 3;
            }
            c->used += (size_t)got;
            for (;;) { /* every complete netstring in the buffer */
                char *colon = memchr(c->buf, ':', c->used);
                if (!colon) break;
                size_t len = strtoul(c->buf, NULL, 10), head = colon - c->buf + 1;
                if (head + len + 1 > c->used) break;
                double done = now();
                const char *reply = c->buf + head;
                int word = OTHER;
                for (int w = 0; w < OTHER; w++) {
                    size_t wl = strlen(WORD_NAMES[w]);
                    if (len > wl && memcmp(reply, WORD_NAMES[w], wl) == 0 && reply[wl] == ' ') { word = w; break; }
                }
                replies++;
                if (once || measuring) {
                    words[word]++;
                    if (latencies_n == latencies_cap)
                        latencies = realloc(latencies, (latencies_cap *= 2) * sizeof *latencies);
                    latencies[latencies_n++] = (done - c->sent_at) * 1000;
                }
                memmove(c->buf, c->buf + head + len + 1, c->used - (head + len + 1));
                c->used -= head + len + 1;
                if (c->next < c->end) {
                    size_t i = c->next % count;
                    c->sent_at = now();
                    send_all(c->fd, requests[i].data, requests[i].len);
                    c->next++;
                } else if (--active == 0) {
                    finished = 1;
                }
            }
        }
    }
    if (once) window = now() - started;
    qsort(latencies, latencies_n, sizeof *latencies, by_value);
#define PCT(p) (latencies_n ? latencies[(size_t)((p) / 100.0 * (latencies_n - 1))] : 0.0)
    printf("replies=%zu seconds=%.4f p50=%.3f p95=%.3f p99=%.3f max=%.3f", latencies_n, window, PCT(50), PCT(95),
           PCT(99), latencies_n ? latencies[latencies_n - 1] : 0.0);
    for (int w = 0; w < WORDS; w++) printf(" %s=%lu", WORD_NAMES[w], words[w]);
    printf(" total=%lu cpu=", replies);
    for (int p = 0; p <= npids; p++) {
        double share = once || cpu_before[p] < 0 || cpu_after[p] < 0 ? -1 : (cpu_after[p] - cpu_before[p]) / window;
        printf("%s%.3f", p ? "," : "", share);
    }
    printf("\n");
    return 0;
}
