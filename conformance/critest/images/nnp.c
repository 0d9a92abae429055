/*
 * Stand-in for registry.k8s.io/e2e-test-images/nonewprivs (no registry here):
 * installed setuid root, started as another user, it prints its effective uid.
 * critest's NoNewPrivs specs read "Effective uid: 0" when the container may
 * gain privileges through setuid, and the caller's uid when no_new_privs is set.
 */
#include <stdio.h>
#include <unistd.h>

int main(void) {
    printf("Effective uid: %d\n", (int)geteuid());
    return 0;
}
