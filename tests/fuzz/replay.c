// SPDX-License-Identifier: MIT
/*
 * replay.c - run a fuzz target's inputs without libFuzzer.
 *
 * The unit suite links each target with this main instead of libFuzzer's
 * and replays its corpus in the tree (tests/fuzz/<target>/: the seeds and
 * every input that ever found a bug), under the suite's ASan and UBSan, so
 * a bug a fuzzer found once stays found.  Arguments are files or
 * directories (walked recursively, in name order).  Each input gets
 * REPLAY_SECONDS; one that takes longer is a hang, and fails the run
 * naming the file.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define REPLAY_SECONDS 20

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *current;
static unsigned replayed;

static void on_alarm(int sig)
{
	static const char msg[] = "replay: an input hangs: ";

	(void)sig;
	/* async-signal-safe: write(2) only */
	(void)!write(2, msg, sizeof(msg) - 1);
	(void)!write(2, current, strlen(current));
	(void)!write(2, "\n", 1);
	_exit(1);
}

static int replay_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf = NULL;
	long n;

	if (!f || fseek(f, 0, SEEK_END) || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET)) {
		fprintf(stderr, "replay: cannot read %s: %s\n", path, strerror(errno));
		if (f)
			fclose(f);
		return -1;
	}
	/* exactly n bytes, so ASan sees a read past the input */
	buf = malloc(n ? (size_t)n : 1);
	if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
		fprintf(stderr, "replay: cannot read %s\n", path);
		free(buf);
		fclose(f);
		return -1;
	}
	fclose(f);
	current = path;
	alarm(REPLAY_SECONDS);
	LLVMFuzzerTestOneInput(buf, (size_t)n);
	alarm(0);
	free(buf);
	replayed++;
	return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
	return strcmp((*a)->d_name, (*b)->d_name);
}

static int replay_path(const char *path)
{
	struct dirent **ents;
	struct stat st;
	int n, rc = 0;

	if (stat(path, &st)) {
		fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode))
		return S_ISREG(st.st_mode) ? replay_file(path) : 0;
	n = scandir(path, &ents, NULL, by_name);
	if (n < 0)
		return -1;
	for (int i = 0; i < n; i++) {
		char sub[4096];

		if (ents[i]->d_name[0] != '.' && strcmp(ents[i]->d_name, "README") != 0 &&
		    (size_t)snprintf(sub, sizeof(sub), "%s/%s", path, ents[i]->d_name) <
			    sizeof(sub) &&
		    replay_path(sub))
			rc = -1;
		free(ents[i]);
	}
	free(ents);
	return rc;
}

int main(int argc, char **argv)
{
	int rc = 0;

	signal(SIGALRM, on_alarm);
	for (int i = 1; i < argc; i++)
		if (replay_path(argv[i]))
			rc = 1;
	/* each input is a case, counted the way tools/lib/test_summary.py reads */
	printf("%u passed, 0 failed, 0 skipped\n", replayed);
	if (!replayed) {
		fprintf(stderr, "replay: no inputs found\n");
		return 1;
	}
	return rc;
}
