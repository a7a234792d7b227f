/*
 * The Pod sandbox ("pause") process of the dev node's containerd (kumulus.dev/pause).
 *
 * containerd starts it as PID 1 of every Pod's sandbox: it only has to exist, so that the Pod's
 * namespaces outlive its containers. As PID 1 it is also the parent of orphaned processes of a
 * shared PID namespace, so it reaps them. It exits 0 on SIGTERM or SIGINT (the sandbox is being
 * stopped) and otherwise waits forever.
 *
 * The signals are blocked and taken with sigwait(): the kernel does not drop a blocked signal
 * sent to a namespace's PID 1 (it drops unhandled ones), and no handler runs in between.
 * Built with `gcc -static` by devcluster/build-images.sh, so the image needs no libc.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>

int main(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGCHLD);
    int err = sigprocmask(SIG_BLOCK, &set, NULL);
    if (err != 0) {
        perror("pause: sigprocmask");
        return 1;
    }
    for (;;) {
        int sig = 0;
        err = sigwait(&set, &sig);
        if (err != 0) {
            fprintf(stderr, "pause: sigwait: %s\n", strerror(err));
            return 1;
        }
        if (sig != SIGCHLD) {
            return 0;
        }
        /* One SIGCHLD may stand for several children: reap all that have exited. */
        while (waitpid(-1, NULL, WNOHANG) > 0) {
        }
    }
}
