/* A main() for the fuzz targets without libFuzzer: runs each file named on
 * the command line (or every file in a named directory) through the target
 * once. The normal and ASan builds replay the seed corpora and every crash
 * ever found this way, as regression tests. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz-common.h"

static int replay_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	uint8_t *data;
	long len;

	if (!f)
		return -1;
	fseek(f, 0, SEEK_END);
	len = ftell(f);
	rewind(f);
	data = malloc(len ? len : 1);
	if (!data || fread(data, 1, len, f) != (size_t)len) {
		fclose(f);
		free(data);
		return -1;
	}
	fclose(f);
	LLVMFuzzerTestOneInput(data, len);
	free(data);
	printf("ok - %s\n", path);
	return 0;
}

int main(int argc, char **argv)
{
	int n = 0, bad = 0;

	if (LLVMFuzzerInitialize(&argc, &argv))
		return 1;
	for (int i = 1; i < argc; i++) {
		struct stat st;
		struct dirent **ents;
		int m;

		if (stat(argv[i], &st) < 0) {
			fprintf(stderr, "%s: missing\n", argv[i]);
			bad++;
			continue;
		}
		if (!S_ISDIR(st.st_mode)) {
			bad += replay_file(argv[i]) < 0;
			n++;
			continue;
		}
		m = scandir(argv[i], &ents, NULL, alphasort);
		for (int j = 0; j < m; j++) {
			char path[4096];
			if (ents[j]->d_name[0] != '.') {
				snprintf(path, sizeof(path), "%s/%s", argv[i], ents[j]->d_name);
				bad += replay_file(path) < 0;
				n++;
			}
			free(ents[j]);
		}
		free(ents);
	}
	printf("replayed %d inputs, %d unreadable\n", n, bad);
	return bad ? 1 : 0;
}
