/*
 * pause: the first process of every pod sandbox (image
 * registry.k8s.io/pause in the reactive-loop kind node image). It holds the
 * pod's namespaces open, reaps the zombies that end up with it as PID 1, and
 * exits on SIGINT or SIGTERM. Built static, so the image needs nothing else:
 *   gcc -Os -static -s -o pause pause.c
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
	(void)sig;
	_exit(0);
}

static void reap(int sig) {
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0) {
	}
}

int main(int argc, char **argv) {
	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		puts("pause (reactive-loop)");
		return 0;
	}
	if (getpid() != 1)
		fputs("pause: not PID 1, zombies are not reaped here\n", stderr);
	struct sigaction action;
	memset(&action, 0, sizeof action);
	action.sa_handler = stop;
	sigaction(SIGINT, &action, NULL);
	sigaction(SIGTERM, &action, NULL);
	action.sa_handler = reap;
	action.sa_flags = SA_NOCLDSTOP | SA_RESTART;
	sigaction(SIGCHLD, &action, NULL);
	for (;;)
		pause();
}
