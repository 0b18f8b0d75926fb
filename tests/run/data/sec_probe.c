/* A probe for the sandbox tests, compiled static at test time (busybox has no keyctl
 * and no UDP server):
 *   sec_probe add_key     add a key to the process keyring   ("add_key: ok" or the error)
 *   sec_probe keyctl      ask for the session keyring's id   ("keyctl: ok" or the error)
 *   sec_probe udp-echo N  answer every datagram on 0.0.0.0:N with "echo:" + it, forever
 *   sec_probe unshare32   unshare(CLONE_NEWUSER) through the i386 ABI (int 0x80), which
 *                         a filter for x86_64 alone would not see  ("unshare32: ..."; or
 *                         "unshare32: no ia32" where the kernel lacks it)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static int report(const char *what, long rc) {
    if (rc < 0) {
        printf("%s: %s\n", what, strerror(errno));
        return 1;
    }
    printf("%s: ok\n", what);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "add_key") == 0)
        return report("add_key", syscall(SYS_add_key, "user", "lamina-probe", "v", 1,
                                         -2 /* KEY_SPEC_PROCESS_KEYRING */));
    if (argc >= 2 && strcmp(argv[1], "keyctl") == 0)
        return report("keyctl", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */,
                                        -3 /* KEY_SPEC_SESSION_KEYRING */, 1));
    if (argc >= 2 && strcmp(argv[1], "unshare32") == 0) {
#if defined(__x86_64__)
        long pid;   /* i386 getpid is 20: -ENOSYS without IA32 emulation */
        __asm__ volatile("int $0x80" : "=a"(pid) : "a"(20L) : "memory");
        if (pid != (long)getpid()) {
            printf("unshare32: no ia32\n");
            return 0;
        }
        long rc;    /* i386 unshare is 310 */
        __asm__ volatile("int $0x80" : "=a"(rc) : "a"(310L), "b"(0x10000000L) : "memory");
        if (rc < 0) {
            printf("unshare32: %s\n", strerror((int)-rc));
            return 1;
        }
        printf("unshare32: ok\n");
        return 0;
#else
        printf("unshare32: no ia32\n");
        return 0;
#endif
    }
    if (argc >= 3 && strcmp(argv[1], "udp-echo") == 0) {
        int s = socket(AF_INET, SOCK_DGRAM, 0);
        struct sockaddr_in addr = {0};
        addr.sin_family = AF_INET;
        addr.sin_port = htons((unsigned short)atoi(argv[2]));
        if (s < 0 || bind(s, (struct sockaddr *)&addr, sizeof addr) < 0)
            return report("bind", -1);
        char buf[2048];
        memcpy(buf, "echo:", 5);
        for (;;) {
            struct sockaddr_in peer;
            socklen_t len = sizeof peer;
            ssize_t n = recvfrom(s, buf + 5, sizeof buf - 5, 0, (struct sockaddr *)&peer, &len);
            if (n >= 0)
                sendto(s, buf, (size_t)n + 5, 0, (struct sockaddr *)&peer, len);
        }
    }
    fprintf(stderr, "usage: sec_probe add_key|keyctl|udp-echo PORT\n");
    return 2;
}
