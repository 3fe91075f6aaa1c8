/* Fuzz target: the mirror's option parser, as setfattr and the control file
 * feed it (a plain path or "target=...,format=...,speed=...", then key=value
 * words). Any input is either accepted or refused with -EINVAL; nothing
 * else may happen. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz-common.h"
#include "mirror/mirror.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mirror_opts o;
	char *s = malloc(size + 1), *save = NULL, *word;
	int ret;

	if (!s)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';
	mirror_opts_init(&o);
	ret = mirror_opts_parse(&o, s);
	if (ret != 0 && ret != -EINVAL)
		abort();
	/* The control file's form: extra key=value words after the target. */
	for (word = strtok_r(s, " \t\n", &save); word; word = strtok_r(NULL, " \t\n", &save)) {
		char *eq = strchr(word, '=');
		if (!eq)
			continue;
		*eq = '\0';
		ret = mirror_opts_set(&o, word, eq + 1);
		if (ret != 0 && ret != -EINVAL)
			abort();
	}
	mirror_opts_free(&o);
	free(s);
	return 0;
}
