/*
 * A process whose leader has exited while a thread of it lives on: the leader is a zombie
 * (State: Z) and the process goes on. The /proc tests read what the host kernel shows of such
 * a leader (no Umask, no memory lines, FDSize 0, an empty cmdline) to check the view's.
 *
 *   zombieleader   prints its pid once the thread runs, then the leader calls pthread_exit;
 *                  the thread waits until the process is killed
 */
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

static void *waiting(void *unused)
{
	(void)unused;
	for (;;)
		pause();
	return NULL;
}

int main(void)
{
	pthread_t thread;

	if (pthread_create(&thread, NULL, waiting, NULL) != 0) {
		perror("pthread_create");
		return 1;
	}
	printf("%d\n", (int)getpid());
	fflush(stdout);
	pthread_exit(NULL);
}
