/* vdiskfsctl: the operator's client. It reads images offline (info) and
 * speaks to a running vdiskfs only through what any tool sees: the views'
 * user.vdiskfs.* attributes and a directory mount's control file. */
#include <errno.h>
#include <glib.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "image/image.h"
#include "util/json.h"
#include "util/log.h"
#include "util/size.h"

#define XATTR_PREFIX "user.vdiskfs."
#define CONTROL_NAME ".vdiskfs"

enum { EXIT_OK = 0, EXIT_RUNTIME = 1, EXIT_USAGE = 2 };

static bool opt_json, opt_wait, opt_complete, opt_force_share;

/* The help text as it prints. */
/* clang-format off */
static void usage(FILE *f)
{
	fprintf(f,
		"usage: vdiskfsctl COMMAND [ARGS] [OPTIONS]\n"
		"\n"
		"  info IMAGE [--json] [-U]        facts of an image file, offline (like qemu-img info)\n"
		"  status VIEW|MOUNT [--json]      what vdiskfs serves: one view, or a whole mount\n"
		"  jobs VIEW|MOUNT [--json]        the jobs (mirror, stream, commit) that exist there\n"
		"  mirror VIEW TARGET [KEY=VALUE...] [--wait] [--complete]\n"
		"                                  start a live mirror; --wait follows it to ready\n"
		"                                  (or failure), --complete then swaps it in\n"
		"  stream VIEW [base=PATH] [speed=RATE] [--wait]\n"
		"                                  copy the backing chain into the image, then unlink it\n"
		"  commit VIEW [top=PATH] [base=PATH] [speed=RATE] [--wait] [--complete]\n"
		"                                  merge an image of the chain into the one below\n"
		"  snapshot VIEW OVERLAY           move the view onto a new qcow2 overlay (live)\n"
		"  complete VIEW [--wait]          swap a ready mirror or commit in\n"
		"  cancel VIEW                     stop the view's job; the view stays as it was\n"
		"  pause VIEW, resume VIEW         hold or go on with a job's copy (guest writes\n"
		"                                  go on)\n"
		"  set-speed VIEW RATE             change a job's copy limit (bytes/s, K/M/G; 0: none)\n"
		"  activate VIEW, inactivate VIEW  hand a view over between hosts (vdiskfs(1))\n"
		"  wait VIEW [--complete]          follow the view's job to ready (or its end)\n"
		"  bitmap VIEW add|remove|enable|disable|clear NAME [granularity=SIZE]\n"
		"                                  change the image's persistent dirty bitmaps\n"
		"                                  (qcow2; add: granularity K/M/G, default QEMU's)\n"
		"  backup start VIEW target=PATH [KEY=VALUE...] [--wait]\n"
		"                                  a point-in-time backup (sync=full|incremental,\n"
		"                                  bitmap=, base=, format=, speed=; vdiskfs-jobs(7))\n"
		"  backup cancel VIEW, backup end VIEW, backup status VIEW\n"
		"\n"
		"  --json        machine-readable output\n"
		"  --wait        show progress until the job is ready; exit 1 if it fails\n"
		"  --complete    with --wait: complete once ready\n"
		"  -U, --force-share  info: read an image another process writes\n"
		"\n"
		"Exit status: 0 done, 1 refused or failed (the reason on stderr), 2 usage.\n"
		"See vdiskfsctl(1).\n");
}
/* clang-format on */

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
	va_list ap;

	fputs("vdiskfsctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return EXIT_RUNTIME;
}

/* ---- talking to views ---- */

/* A user.vdiskfs.KEY attribute of path, or NULL with errno set. */
static char *view_get(const char *path, const char *key)
{
	char name[128];
	ssize_t n;
	char *buf;

	snprintf(name, sizeof(name), XATTR_PREFIX "%s", key);
	/* A status may grow between asking its size and reading it (a rate
	 * gains a digit): read again with room to spare. */
	for (int tries = 0; tries < 8; tries++) {
		n = getxattr(path, name, NULL, 0);
		if (n < 0)
			return NULL;
		n += 256;
		buf = g_malloc(n + 1);
		n = getxattr(path, name, buf, n);
		if (n >= 0) {
			buf[n] = '\0';
			return buf;
		}
		g_free(buf);
		if (errno != ERANGE)
			return NULL;
	}
	return NULL;
}

/* Set user.vdiskfs.KEY; on refusal say why (errno and last-error). */
static int view_set(const char *path, const char *key, const char *value)
{
	char name[128];
	char *why;
	int err;

	snprintf(name, sizeof(name), XATTR_PREFIX "%s", key);
	if (setxattr(path, name, value, strlen(value), 0) == 0)
		return 0;
	err = errno;
	why = view_get(path, "last-error");
	fail("%s %s: %s%s%s", key, path, strerror(err), why && *why ? ": " : "",
	     why && *why ? why : "");
	g_free(why);
	return -err;
}

static bool is_view(const char *path)
{
	char *f = view_get(path, "format");

	g_free(f);
	return f != NULL;
}

/* value of key in a "k=v k=v" status line (copied), or NULL */
static char *status_field(const char *line, const char *key)
{
	size_t kl = strlen(key);

	for (const char *p = line; p && *p;) {
		if (!strncmp(p, key, kl) && p[kl] == '=') {
			const char *v = p + kl + 1, *e = strchr(v, ' ');

			/* error= runs to the end of the line: it may hold spaces */
			if (!strcmp(key, "error") || !e)
				return g_strdup(v);
			return g_strndup(v, e - v);
		}
		p = strchr(p, ' ');
		if (p)
			p++;
	}
	return NULL;
}

static uint64_t status_u64(const char *line, const char *key)
{
	char *v = status_field(line, key);
	uint64_t n = v ? g_ascii_strtoull(v, NULL, 10) : 0;

	g_free(v);
	return n;
}

/* ---- human sizes and times ---- */

static void human_size(char *buf, size_t len, double b)
{
	static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
	unsigned u = 0;

	while (b >= 1024 && u + 1 < G_N_ELEMENTS(units)) {
		b /= 1024;
		u++;
	}
	snprintf(buf, len, u ? "%.1f %s" : "%.0f %s", b, units[u]);
}

static void human_time(char *buf, size_t len, double s)
{
	unsigned long t = s < 0 || !isfinite(s) ? 0 : (unsigned long)(s + 0.5);

	if (t >= 3600)
		snprintf(buf, len, "%lu:%02lu:%02lu", t / 3600, t / 60 % 60, t % 60);
	else
		snprintf(buf, len, "%lu:%02lu", t / 60, t % 60);
}

/* ---- progress of a job ---- */

struct progress {
	bool tty;
	char last_phase[32];
	int last_tenth;
};

/* Show one status line; on a terminal a bar redrawn in place, otherwise a line
 * per phase change and per tenth of the work. */
static void progress_show(struct progress *p, const char *line)
{
	char *phase = status_field(line, "phase");
	uint64_t copied = status_u64(line, "copied"), total = status_u64(line, "total");
	char *eta_s = status_field(line, "eta");
	/* The daemon's figures: percent of the data to copy (known once it
	 * counted), the rate it measured, and the time left (-1: unknown). */
	double pct = status_u64(line, "percent"), eta = eta_s ? g_ascii_strtod(eta_s, NULL) : -1;
	char done[32], all[32], rate[32], etas[32];
	int tenth = (int)(pct / 10);

	if (!phase)
		phase = g_strdup("none");
	if (status_u64(line, "paused")) {
		char *held = g_strdup_printf("%s,paused", phase);

		g_free(phase);
		phase = held;
	}
	g_free(eta_s);
	human_size(done, sizeof(done), copied);
	human_size(all, sizeof(all), total);
	human_size(rate, sizeof(rate), status_u64(line, "rate"));
	if (eta < 0)
		snprintf(etas, sizeof(etas), "--:--");
	else
		human_time(etas, sizeof(etas), eta);
	if (p->tty) {
		char bar[31];
		int fill = (int)(pct * 30 / 100);

		memset(bar, '#', fill);
		memset(bar + fill, '.', 30 - fill);
		bar[30] = '\0';
		fprintf(stderr, "\r[%s] %5.1f%% %s/%s %s/s ETA %s %-10s", bar, pct, done, all, rate,
			etas, phase);
	} else if (strcmp(phase, p->last_phase) || tenth != p->last_tenth) {
		fprintf(stderr, "%s %.1f%% %s of %s, %s/s, eta %s\n", phase, pct, done, all, rate,
			etas);
	}
	g_strlcpy(p->last_phase, phase, sizeof(p->last_phase));
	p->last_tenth = tenth;
	g_free(phase);
}

static const char *const job_types[] = {"mirror", "stream", "commit", "backup"};

/* The kind of job the view runs now (or "mirror" when none runs). */
static const char *view_job(const char *view)
{
	for (size_t i = 0; i < G_N_ELEMENTS(job_types); i++) {
		char key[32], *line, *phase;
		bool live;

		snprintf(key, sizeof(key), "%s.status", job_types[i]);
		line = view_get(view, key);
		phase = line ? status_field(line, "phase") : NULL;
		live = phase && strcmp(phase, "none") && strcmp(phase, "completed");
		g_free(phase);
		g_free(line);
		if (live)
			return job_types[i];
	}
	return "mirror";
}

/* user.vdiskfs.TYPE.VERB = value. */
static int job_set(const char *view, const char *type, const char *verb, const char *value)
{
	char key[32];

	snprintf(key, sizeof(key), "%s.%s", type, verb);
	return view_set(view, key, value);
}

/* Follow the view's job until it reaches until (or fails, or vanishes; a
 * job that completes on its own counts as there once completed). */
static int job_follow(const char *view, const char *type, const char *until)
{
	struct progress p = {.tty = isatty(STDERR_FILENO), .last_tenth = -1};
	char key[32];
	int ret = EXIT_RUNTIME;

	snprintf(key, sizeof(key), "%s.status", type);
	for (;;) {
		char *line = view_get(view, key), *phase;

		if (!line) {
			if (p.tty)
				fputc('\n', stderr);
			return fail("%s %s: %s", key, view, strerror(errno));
		}
		progress_show(&p, line);
		phase = status_field(line, "phase");
		if (phase && (!strcmp(phase, until) || !strcmp(phase, "completed"))) {
			ret = EXIT_OK;
		} else if (phase && (!strcmp(phase, "failed") || !strcmp(phase, "none") ||
				     !strcmp(phase, "cancelled"))) {
			char *err = status_field(line, "error");

			if (p.tty)
				fputc('\n', stderr);
			fail("the %s of %s %s%s%s", type, view,
			     !strcmp(phase, "failed") ? "failed" : "is gone (cancelled)",
			     err && *err ? ": " : "", err && *err ? err : "");
			g_free(err);
			ret = -1;
		}
		g_free(phase);
		g_free(line);
		if (ret != EXIT_RUNTIME)
			break;
		usleep(200000);
	}
	if (p.tty)
		fputc('\n', stderr);
	return ret < 0 ? EXIT_RUNTIME : ret;
}

/* ---- commands ---- */

/* The driver's facts, one "FORMAT KEY: VALUE" line per JSON member it writes
 * (values as JSON: numbers, true/false, strings, arrays). */
static void print_driver_facts(struct vd_image *img)
{
	GString *d = g_string_new(NULL);
	struct json_writer j;
	const char *p, *start;
	bool in_str = false;
	int depth = 0;

	json_init(&j, d);
	img->fmt->info(img, &j);
	g_string_append_c(d, ',');
	for (p = start = d->str; *p; p++) {
		if (in_str) {
			if (*p == '\\' && p[1])
				p++;
			else if (*p == '"')
				in_str = false;
		} else if (*p == '"') {
			in_str = true;
		} else if (*p == '{' || *p == '[') {
			depth++;
		} else if (*p == '}' || *p == ']') {
			depth--;
		} else if (*p == ',' && !depth) {
			const char *colon = strstr(start, "\":");

			if (*start == '"' && colon && colon < p)
				printf("%s %.*s: %.*s\n", img->fmt->name, (int)(colon - start - 1),
				       start + 1, (int)(p - colon - 2), colon + 2);
			start = p + 1;
		}
	}
	g_string_free(d, TRUE);
}

static int cmd_info(const char *path)
{
	struct vd_open_opts o = {
		.read_only = true,
		.backing = VD_BACKING_FOLLOW,
		.force_share = opt_force_share,
	};
	struct json_writer j;
	struct vd_image *img;
	struct stat st;
	GString *s;
	int ret;

	if (stat(path, &st) < 0)
		return fail("%s: %s", path, strerror(errno));
	ret = image_open(path, &o, &img);
	if (ret)
		return fail("%s: cannot open: %s (the reason is above)", path, strerror(-ret));
	s = g_string_new(NULL);
	json_init(&j, s);
	json_begin_object(&j, NULL);
	image_facts_json(img, true, &j);
	json_u64(&j, "file-size", st.st_size);
	json_u64(&j, "disk-size", (uint64_t)st.st_blocks * 512);
	json_end_object(&j);
	if (opt_json) {
		printf("%s\n", s->str);
	} else {
		char a[32], b[32], c[32];

		human_size(a, sizeof(a), img->size);
		human_size(b, sizeof(b), (double)st.st_blocks * 512);
		human_size(c, sizeof(c), image_allocated(img));
		printf("image: %s\nformat: %s\nvirtual size: %s (%" PRIu64 " bytes)\n"
		       "disk size: %s\nguest data: %s\n",
		       img->path, img->fmt->name, a, img->size, b, c);
		if (img->cluster_size)
			printf("cluster size: %" PRIu32 "\n", img->cluster_size);
		for (struct vd_image *bk = img->backing; bk; bk = bk->backing)
			printf("backing file: %s (%s)\n", bk->path, bk->fmt->name);
		if (img->fmt->info)
			print_driver_facts(img);
	}
	g_string_free(s, TRUE);
	image_unref(img);
	return EXIT_OK;
}

/* The control file of a directory mount, read whole. */
static char *control_read(const char *mount)
{
	char *path = g_build_filename(mount, CONTROL_NAME, NULL), *text = NULL;
	GError *e = NULL;

	if (!g_file_get_contents(path, &text, NULL, &e)) {
		fail("%s: %s", path, e->message);
		g_error_free(e);
	}
	g_free(path);
	return text;
}

/* The views of a mount (sorted names), or just the one view. */
static GPtrArray *views_of(const char *target, bool *single)
{
	GPtrArray *v = g_ptr_array_new_with_free_func(g_free);
	GDir *d;
	const char *n;

	*single = is_view(target);
	if (*single) {
		g_ptr_array_add(v, g_strdup(target));
		return v;
	}
	d = g_dir_open(target, 0, NULL);
	if (!d) {
		g_ptr_array_free(v, TRUE);
		return NULL;
	}
	while ((n = g_dir_read_name(d)))
		if (strcmp(n, CONTROL_NAME))
			g_ptr_array_add(v, g_build_filename(target, n, NULL));
	g_dir_close(d);
	return v;
}

static gint by_path(gconstpointer a, gconstpointer b)
{
	return strcmp(*(char *const *)a, *(char *const *)b); /* pointers to the elements */
}

static int cmd_status(const char *target, bool jobs_only)
{
	GPtrArray *views;
	bool single;
	int shown = 0;

	if (opt_json) {
		char *text = is_view(target) ? view_get(target, "info") : control_read(target);

		if (!text)
			return errno ? fail("%s: not a vdiskfs view or mount: %s", target,
					    strerror(errno))
				     : EXIT_RUNTIME;
		printf("%s\n", text);
		g_free(text);
		return EXIT_OK;
	}
	views = views_of(target, &single);
	if (!views)
		return fail("%s: not a vdiskfs view or mount: %s", target, strerror(errno));
	g_ptr_array_sort(views, by_path);
	for (guint i = 0; i < views->len; i++) {
		const char *v = views->pdata[i];
		char *fmt = view_get(v, "format"), *size = view_get(v, "virtual-size");
		char *alloc = view_get(v, "allocated"), *image = view_get(v, "image");
		const char *type = view_job(v);
		char key[32];
		char *job, *name = single ? g_strdup(v) : g_path_get_basename(v);
		char a[32], b[32];

		snprintf(key, sizeof(key), "%s.status", type);
		job = view_get(v, key);
		if (fmt && (!jobs_only || (job && strncmp(job, "phase=none", 10)))) {
			human_size(a, sizeof(a), size ? g_ascii_strtod(size, NULL) : 0);
			human_size(b, sizeof(b), alloc ? g_ascii_strtod(alloc, NULL) : 0);
			if (!jobs_only)
				printf("%s: %s %s, %s of guest data, image %s\n", name, fmt, a, b,
				       image);
			if (job && strncmp(job, "phase=none", 10)) {
				uint64_t c = status_u64(job, "copied"),
					 t = status_u64(job, "total");
				char *phase = status_field(job, "phase"),
				     *tgt = status_field(job, "target");

				printf("%s%s: %s %s %.1f%% %s %s\n", jobs_only ? "" : "  ", name,
				       type, phase, t ? 100.0 * c / t : 100.0,
				       strcmp(type, "stream") ? "to" : "above",
				       *tgt ? tgt : "(no base)");
				g_free(phase);
				g_free(tgt);
			}
			shown++;
		}
		g_free(fmt);
		g_free(size);
		g_free(alloc);
		g_free(image);
		g_free(job);
		g_free(name);
	}
	g_ptr_array_free(views, TRUE);
	if (!shown && !jobs_only && !single)
		printf("no images\n");
	return EXIT_OK;
}

static int cmd_mirror(const char *view, const char *target, int nopts, char **opts)
{
	GString *v = g_string_new(NULL);
	int ret;

	g_string_append_printf(v, "target=%s", target);
	for (int i = 0; i < nopts; i++)
		g_string_append_printf(v, ",%s", opts[i]);
	ret = view_set(view, "mirror.start", v->str);
	g_string_free(v, TRUE);
	if (ret)
		return EXIT_RUNTIME;
	if (!opt_wait)
		return EXIT_OK;
	ret = job_follow(view, "mirror", "ready");
	if (ret || !opt_complete)
		return ret;
	if (view_set(view, "mirror.complete", "1"))
		return EXIT_RUNTIME;
	fprintf(stderr, "completed: %s now reads and writes %s\n", view, target);
	return EXIT_OK;
}

/* backup start|cancel|status VIEW [KEY=VALUE...]: the options join into
 * the start value; --wait follows the job to completed. */
static int cmd_backup(const char *verb, const char *view, int nopts, char **opts)
{
	GString *v;
	bool pull;
	int ret;

	if (!strcmp(verb, "status") && !nopts) {
		char *line = view_get(view, "backup.status");

		if (!line)
			return fail("backup.status %s: %s", view, strerror(errno));
		printf("%s\n", line);
		g_free(line);
		return EXIT_OK;
	}
	if ((!strcmp(verb, "cancel") || !strcmp(verb, "end")) && !nopts)
		return view_set(view, !strcmp(verb, "end") ? "backup.end" : "backup.cancel", "1")
			       ? EXIT_RUNTIME
			       : EXIT_OK;
	if (strcmp(verb, "start") || !nopts) {
		fprintf(stderr, "vdiskfsctl: backup: want start VIEW target=PATH [KEY=VALUE...], "
				"cancel VIEW, end VIEW or status VIEW\n");
		return EXIT_USAGE;
	}
	v = g_string_new(NULL);
	for (int i = 0; i < nopts; i++)
		g_string_append_printf(v, "%s%s", i ? "," : "", opts[i]);
	ret = view_set(view, "backup.start", v->str);
	/* a pull backup (view=) runs until it is ended: nothing to follow */
	pull = strstr(v->str, "view=") != NULL;
	g_string_free(v, TRUE);
	if (ret)
		return EXIT_RUNTIME;
	return opt_wait && !pull ? job_follow(view, "backup", "completed") : EXIT_OK;
}

/* user.vdiskfs.bitmap.VERB with the bitmap's name (add: and options). */
static int cmd_bitmap(const char *view, const char *verb, const char *name, const char *opt)
{
	static const char *const verbs[] = {"add", "remove", "enable", "disable", "clear"};
	bool known = false, add = !strcmp(verb, "add");
	char key[32];
	char *value;
	int ret;

	for (size_t i = 0; i < G_N_ELEMENTS(verbs); i++)
		known |= !strcmp(verb, verbs[i]);
	if (!known || (opt && (!add || strncmp(opt, "granularity=", strlen("granularity="))))) {
		fprintf(stderr, "vdiskfsctl: bitmap: want add|remove|enable|disable|clear NAME "
				"[granularity=SIZE] (the option with add only)\n");
		return EXIT_USAGE;
	}
	if (add && (opt || !strncmp(name, "name=", strlen("name=")))) {
		if (strchr(name, ','))
			return fail("bitmap %s: a name with a comma takes no options", name);
		value = g_strdup_printf("name=%s%s%s", name, opt ? "," : "", opt ? opt : "");
	} else {
		value = g_strdup(name);
	}
	snprintf(key, sizeof(key), "bitmap.%s", verb);
	ret = view_set(view, key, value);
	g_free(value);
	return ret ? EXIT_RUNTIME : EXIT_OK;
}

/* Complete the view's job if it waits in ready (a job that completes on
 * its own is done already). */
static int job_complete_if_ready(const char *view, const char *type)
{
	char key[32], *line, *phase;
	bool ready;

	snprintf(key, sizeof(key), "%s.status", type);
	line = view_get(view, key);
	phase = line ? status_field(line, "phase") : NULL;
	ready = phase && !strcmp(phase, "ready");
	g_free(phase);
	g_free(line);
	return ready && job_set(view, type, "complete", "1") ? EXIT_RUNTIME : EXIT_OK;
}

/* stream or commit: options as KEY=VALUE words; --wait follows it to its
 * end (a commit of the view's image to ready; --complete then pivots). */
static int cmd_chain_job(const char *view, const char *type, int nopts, char **opts)
{
	GString *v = g_string_new(NULL);
	int ret;

	for (int i = 0; i < nopts; i++)
		g_string_append_printf(v, "%s%s", i ? "," : "", opts[i]);
	ret = job_set(view, type, "start", v->len ? v->str : "1");
	g_string_free(v, TRUE);
	if (ret)
		return EXIT_RUNTIME;
	if (!opt_wait)
		return EXIT_OK;
	ret = job_follow(view, type, "ready");
	if (ret || !opt_complete)
		return ret;
	return job_complete_if_ready(view, type);
}

static int run(int argc, char **argv)
{
	const char *cmd = argv[0];

	if (!strcmp(cmd, "info") && argc == 2)
		return cmd_info(argv[1]);
	if ((!strcmp(cmd, "status") || !strcmp(cmd, "jobs")) && argc == 2)
		return cmd_status(argv[1], !strcmp(cmd, "jobs"));
	if (!strcmp(cmd, "mirror") && argc >= 3)
		return cmd_mirror(argv[1], argv[2], argc - 3, argv + 3);
	if ((!strcmp(cmd, "stream") || !strcmp(cmd, "commit")) && argc >= 2)
		return cmd_chain_job(argv[1], cmd, argc - 2, argv + 2);
	if (!strcmp(cmd, "snapshot") && argc == 3)
		return view_set(argv[1], "snapshot", argv[2]) ? EXIT_RUNTIME : EXIT_OK;
	if (!strcmp(cmd, "complete") && argc == 2) {
		const char *type = view_job(argv[1]);

		if (opt_wait && job_follow(argv[1], type, "ready"))
			return EXIT_RUNTIME;
		return job_set(argv[1], type, "complete", "1") ? EXIT_RUNTIME : EXIT_OK;
	}
	if ((!strcmp(cmd, "cancel") || !strcmp(cmd, "pause") || !strcmp(cmd, "resume")) &&
	    argc == 2)
		return job_set(argv[1], view_job(argv[1]), cmd, "1") ? EXIT_RUNTIME : EXIT_OK;
	if ((!strcmp(cmd, "activate") || !strcmp(cmd, "inactivate")) && argc == 2)
		return view_set(argv[1], "active", !strcmp(cmd, "activate") ? "1" : "0")
			       ? EXIT_RUNTIME
			       : EXIT_OK;
	if (!strcmp(cmd, "set-speed") && argc == 3)
		return job_set(argv[1], view_job(argv[1]), "speed", argv[2]) ? EXIT_RUNTIME
									     : EXIT_OK;
	if (!strcmp(cmd, "backup") && argc >= 3)
		return cmd_backup(argv[1], argv[2], argc - 3, argv + 3);
	if (!strcmp(cmd, "bitmap") && (argc == 4 || argc == 5))
		return cmd_bitmap(argv[1], argv[2], argv[3], argc == 5 ? argv[4] : NULL);
	if (!strcmp(cmd, "wait") && argc == 2) {
		const char *type = view_job(argv[1]);

		if (job_follow(argv[1], type, "ready"))
			return EXIT_RUNTIME;
		return opt_complete ? job_complete_if_ready(argv[1], type) : EXIT_OK;
	}
	fprintf(stderr, "vdiskfsctl: %s: unknown command or wrong arguments\n", cmd);
	usage(stderr);
	return EXIT_USAGE;
}

int main(int argc, char **argv)
{
	char **args = g_new0(char *, argc + 1);
	int n = 0;

	vd_log_init("vdiskfsctl", false, false);
	vd_log_set_level(VD_LOG_WARN); /* the opens and closes of info are the daemon's story */
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (!strcmp(a, "--json"))
			opt_json = true;
		else if (!strcmp(a, "--wait"))
			opt_wait = true;
		else if (!strcmp(a, "--complete"))
			opt_complete = opt_wait = true;
		else if (!strcmp(a, "-U") || !strcmp(a, "--force-share"))
			opt_force_share = true;
		else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			g_free(args);
			return EXIT_OK;
		} else if (!strcmp(a, "-V") || !strcmp(a, "--version")) {
			printf("vdiskfsctl %s\n", VDISKFS_VERSION);
			g_free(args);
			return EXIT_OK;
		} else if (a[0] == '-' && a[1]) {
			fprintf(stderr, "vdiskfsctl: unknown option %s\n", a);
			usage(stderr);
			g_free(args);
			return EXIT_USAGE;
		} else {
			args[n++] = argv[i];
		}
	}
	if (!n) {
		usage(stderr);
		g_free(args);
		return EXIT_USAGE;
	}
	n = run(n, args);
	g_free(args);
	return n;
}
