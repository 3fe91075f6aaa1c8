/* Reading /proc/self/mountinfo: "id parent maj:min root mountpoint options
 * [optional fields] - fstype source superoptions", spaces in paths as \040. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/mountinfo.h"

/* Undo mountinfo's octal escapes (\040 for a space) in place. */
static void mountinfo_unescape(char *s)
{
	char *d = s;

	for (; *s; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' &&
		    s[3] >= '0' && s[3] <= '7') {
			*d++ = (char)((s[1] - '0') << 6 | (s[2] - '0') << 3 | (s[3] - '0'));
			s += 3;
		} else {
			*d++ = *s;
		}
	}
	*d = '\0';
}

/* Split one line into m (pointing into line); false if it is not a mount. */
static bool mountinfo_parse(char *line, struct mountinfo_entry *m)
{
	char *save = NULL, *tok, *mnt = NULL;
	bool after_dash = false;
	int field = 0;

	memset(m, 0, sizeof(*m));
	for (tok = strtok_r(line, " \n", &save); tok; tok = strtok_r(NULL, " \n", &save)) {
		if (after_dash) {
			if (!m->fstype)
				m->fstype = tok;
			else if (!m->source)
				m->source = tok;
		} else if (!strcmp(tok, "-") && field >= 6) {
			after_dash = true;
		} else if (field == 2) {
			if (sscanf(tok, "%u:%u", &m->major, &m->minor) != 2)
				return false;
		} else if (field == 4) {
			mnt = tok;
		}
		field++;
	}
	if (!mnt || !m->fstype)
		return false;
	mountinfo_unescape(mnt);
	m->mountpoint = mnt;
	if (m->source)
		mountinfo_unescape((char *)m->source);
	return true;
}

bool mountinfo_each(bool (*fn)(const struct mountinfo_entry *m, void *opaque), void *opaque)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	struct mountinfo_entry m;
	char *line = NULL;
	size_t cap = 0;
	bool stop = false;

	if (!f)
		return false;
	while (!stop && getline(&line, &cap, f) > 0)
		if (mountinfo_parse(line, &m))
			stop = fn(&m, opaque);
	free(line);
	fclose(f);
	return stop;
}
