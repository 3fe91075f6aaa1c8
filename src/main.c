/* vdiskfs: command line → configuration → images opened → mount → event
 * loops; signals and unmount end it cleanly, with every image flushed. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/log.h"
#include "util/mountinfo.h"
#include "util/size.h"
#include "io/uring.h"
#include "io/fault.h"
#include "io/iolog.h"
#include "fuse/vfs.h"

struct cmdline {
	char *source, *mountpoint;
	char *backing, *format, *vhdx_parent, *cache_size, *cache_budget, *threads, *cache, *uring,
		*poll_us, *inactive_wait, *passthrough;
	char *pid_file, *log, *log_level;
	int log_syslog; /* log=syslog, or the default once daemonised */
	int foreground, debug, help, version, ro, allow_other, direct_io, default_perms,
		force_share, allow_shrink, inactive;
	int nargs;
	int pid_written;
};

enum {
	KEY_HELP,
	KEY_VERSION,
	KEY_FG,
	KEY_DEBUG,
	KEY_RO,
	KEY_RW,
	KEY_ALLOW_OTHER,
	KEY_ALLOW_ROOT,
	KEY_DEFPERM,
	KEY_UNSUPPORTED,
};

/* One option per line, as libfuse lists them. */
/* clang-format off */
#define OPT(t, p) {t, offsetof(struct cmdline, p), 1}
static const struct fuse_opt cmd_opts[] = {
	{"threads=%s", offsetof(struct cmdline, threads), 0},
	{"backing=%s", offsetof(struct cmdline, backing), 0},
	{"format=%s", offsetof(struct cmdline, format), 0},
	{"vhdx_parent=%s", offsetof(struct cmdline, vhdx_parent), 0},
	{"cache_size=%s", offsetof(struct cmdline, cache_size), 0},
	{"cache_budget=%s", offsetof(struct cmdline, cache_budget), 0},
	{"cache=%s", offsetof(struct cmdline, cache), 0},
	{"uring=%s", offsetof(struct cmdline, uring), 0},
	{"passthrough=%s", offsetof(struct cmdline, passthrough), 0},
	{"poll_us=%s", offsetof(struct cmdline, poll_us), 0},
	{"inactive_wait=%s", offsetof(struct cmdline, inactive_wait), 0},
	{"pid_file=%s", offsetof(struct cmdline, pid_file), 0},
	{"log=%s", offsetof(struct cmdline, log), 0},
	{"log_level=%s", offsetof(struct cmdline, log_level), 0},
	{"--pid-file=%s", offsetof(struct cmdline, pid_file), 0},
	{"--pid-file %s", offsetof(struct cmdline, pid_file), 0},
	OPT("direct_io", direct_io),
	OPT("force_share", force_share),
	OPT("allow_shrink", allow_shrink),
	OPT("inactive", inactive),
	FUSE_OPT_KEY("-h", KEY_HELP),
	FUSE_OPT_KEY("--help", KEY_HELP),
	FUSE_OPT_KEY("-V", KEY_VERSION),
	FUSE_OPT_KEY("--version", KEY_VERSION),
	FUSE_OPT_KEY("-f", KEY_FG),
	FUSE_OPT_KEY("-d", KEY_DEBUG),
	FUSE_OPT_KEY("debug", KEY_DEBUG),
	FUSE_OPT_KEY("ro", KEY_RO),
	FUSE_OPT_KEY("rw", KEY_RW),
	FUSE_OPT_KEY("allow_other", KEY_ALLOW_OTHER),
	FUSE_OPT_KEY("allow_root", KEY_ALLOW_ROOT),
	FUSE_OPT_KEY("max_read=", KEY_UNSUPPORTED),
	FUSE_OPT_KEY("default_permissions", KEY_DEFPERM),
	FUSE_OPT_END,
};
/* clang-format on */

/* The help text as it prints. */
/* clang-format off */
static void usage(FILE *f)
{
	fprintf(f,
		"usage: vdiskfs [-f] [-d] [-o OPTIONS] SOURCE MOUNTPOINT\n"
		"\n"
		"Show qcow2, vhdx and raw disk images as flat raw files.\n"
		"  SOURCE an image file: MOUNTPOINT is a regular file that becomes its raw view\n"
		"  SOURCE a directory:   MOUNTPOINT is a directory listing every image's view\n"
		"\n"
		"  -f                     stay in the foreground\n"
		"  -d                     debug output (implies -f)\n"
		"  -h, --help             this help\n"
		"  -V, --version          version\n"
		"  --pid-file FILE        write the daemon's pid to FILE once the mount is\n"
		"                         live; removed when it exits, its images released\n"
		"                         (also -o pid_file=FILE)\n"
		"  -o ro                  read-only views\n"
		"  -o force_share         with ro: read images that another process writes\n"
		"                         (like qemu-img -U; what is read may be inconsistent)\n"
		"  -o allow_other         let other users at the views (permissions checked)\n"
		"  -o direct_io           no page cache on the views\n"
		"  -o allow_shrink        let truncate make a view smaller (refused: EPERM)\n"
		"  -o inactive            start inactive: no lock, data waits until activated\n"
		"  -o inactive_wait=SECS  how long data requests wait for activation (default 300)\n"
		"  -o threads=N           event-loop threads (default: one per CPU)\n"
		"  -o cache_size=SIZE     metadata cache per image (e.g. 64M)\n"
		"  -o cache_budget=SIZE   metadata cache of all images together (default 64M)\n"
		"  -o cache=MODE          none (default: image data bypasses the host page\n"
		"                         cache) or writeback (through the page cache)\n"
		"  -o uring=MODE          auto (default: FUSE over io_uring when the kernel\n"
		"                         offers it), on (required) or off\n"
		"  -o passthrough=MODE    off (default), auto (the kernel reads and writes\n"
		"                         raw views' files directly when it can) or on\n"
		"                         (required)\n"
		"  -o poll_us=N           watch for work up to N µs before sleeping (adaptive,\n"
		"                         default 0)\n"
		"  -o backing=POLICY      follow | deny | within-source (default: follow,\n"
		"                         within-source with allow_other)\n"
		"  -o format=FMT          force raw, qcow2 or vhdx (single image)\n"
		"  -o log=WHERE           stderr (default in the foreground), syslog (default\n"
		"                         once detached) or a FILE to append to\n"
		"  -o log_level=LEVEL     error, warning, info (default) or debug\n"
		"  -o vhdx_parent=PATH    parent of a vhdx differencing disk\n"
		"\n"
		"See vdiskfs(1).\n");
}
/* clang-format on */

static int cmd_proc(void *data, const char *arg, int key, struct fuse_args *out)
{
	struct cmdline *c = data;

	switch (key) {
	case FUSE_OPT_KEY_NONOPT:
		c->nargs++;
		if (!c->source)
			c->source = strdup(arg);
		else if (!c->mountpoint)
			c->mountpoint = strdup(arg);
		else {
			fprintf(stderr,
				"vdiskfs: unexpected argument \"%s\" (want SOURCE MOUNTPOINT)\n",
				arg);
			return -1;
		}
		return 0;
	case KEY_HELP:
		c->help = 1;
		return 0;
	case KEY_VERSION:
		c->version = 1;
		return 0;
	case KEY_FG:
		c->foreground = 1;
		return 0;
	case KEY_DEBUG:
		c->debug = c->foreground = 1;
		return 0;
	case KEY_RO:
		c->ro = 1;
		return 1; /* and the kernel mounts read-only too */
	case KEY_RW:
		c->ro = 0;
		return 1;
	case KEY_ALLOW_OTHER:
	case KEY_ALLOW_ROOT: /* others than the owner: the same safe defaults */
		c->allow_other = 1;
		return 1;
	case KEY_UNSUPPORTED:
		fprintf(stderr, "vdiskfs: option %s is not supported\n", arg);
		return -1;
	case KEY_DEFPERM:
		c->default_perms = 1;
		return 1;
	default:
		return 1; /* mount options for libfuse (it refuses unknown ones) */
	}
}

/* -o log= and -o log_level=. */
static int configure_log(struct cmdline *c)
{
	static const char *const levels[] = {"error", "warning", "info", "debug"};
	int ret;

	if (c->log_level) {
		unsigned i;

		for (i = 0; i < G_N_ELEMENTS(levels) && strcmp(c->log_level, levels[i]); i++)
			;
		if (i == G_N_ELEMENTS(levels)) {
			fprintf(stderr,
				"vdiskfs: log_level=%s: want error, warning, info or debug\n",
				c->log_level);
			return -EINVAL;
		}
		vd_log_set_level(c->debug ? VD_LOG_DEBUG : (enum vd_log_level)i);
	}
	c->log_syslog = c->log ? !strcmp(c->log, "syslog") : !c->foreground;
	if (!c->log || !strcmp(c->log, "syslog") || !strcmp(c->log, "stderr"))
		return 0;
	if (!*c->log) {
		fprintf(stderr, "vdiskfs: log=: want stderr, syslog or a file\n");
		return -EINVAL;
	}
	ret = vd_log_to_file(c->log);
	if (ret) {
		fprintf(stderr, "vdiskfs: log=%s: %s\n", c->log, strerror(-ret));
		return ret;
	}
	return 0;
}

/* SOURCE and MOUNTPOINT: both exist, and a file is mounted on a file (its
 * raw view), a directory on a directory. */
static int configure_paths(struct cmdline *c)
{
	struct stat sst, mst;
	char real[PATH_MAX];

	if (!c->source || !c->mountpoint) {
		fprintf(stderr,
			"vdiskfs: missing %s (usage: vdiskfs [-o OPTIONS] SOURCE "
			"MOUNTPOINT)\n",
			c->source ? "MOUNTPOINT" : "SOURCE and MOUNTPOINT");
		return -EINVAL;
	}
	if (!realpath(c->source, real) || stat(real, &sst) < 0) {
		fprintf(stderr, "vdiskfs: source %s: %s\n", c->source, strerror(errno));
		return -ENOENT;
	}
	vfs_cfg.source = strdup(real);
	if (!S_ISREG(sst.st_mode) && !S_ISDIR(sst.st_mode)) {
		fprintf(stderr, "vdiskfs: source %s is neither an image file nor a directory\n",
			c->source);
		return -EINVAL;
	}
	vfs_cfg.single = S_ISREG(sst.st_mode);
	if (!realpath(c->mountpoint, real) || stat(real, &mst) < 0) {
		fprintf(stderr, "vdiskfs: mountpoint %s: %s\n", c->mountpoint, strerror(errno));
		return -ENOENT;
	}
	vfs_cfg.mountpoint = strdup(real);
	if (vfs_cfg.single && !S_ISREG(mst.st_mode)) {
		fprintf(stderr,
			"vdiskfs: mountpoint %s must be a regular file when SOURCE is an "
			"image (it becomes the raw view)\n",
			c->mountpoint);
		return -EINVAL;
	}
	if (!vfs_cfg.single && !S_ISDIR(mst.st_mode)) {
		fprintf(stderr,
			"vdiskfs: mountpoint %s must be a directory when SOURCE is a "
			"directory\n",
			c->mountpoint);
		return -EINVAL;
	}
	return 0;
}

/* -o name=val as a number in [min, max]; val NULL leaves *out as it is. */
static int configure_number(const char *name, const char *val, unsigned long min, unsigned long max,
			    unsigned long *out)
{
	char *end;
	unsigned long n;

	if (!val)
		return 0;
	n = strtoul(val, &end, 10);
	if (*end || !*val || n < min || n > max) {
		fprintf(stderr, "vdiskfs: %s=%s: want %lu to %lu\n", name, val, min, max);
		return -EINVAL;
	}
	*out = n;
	return 0;
}

/* How images are opened: every view and every backing file. */
static int configure_open(struct cmdline *c)
{
	struct vd_open_opts *o = &vfs_cfg.open;

	o->read_only = c->ro;
	if (c->force_share && !c->ro) {
		fprintf(stderr, "vdiskfs: force_share needs ro: a writer never shares writing\n");
		return -EINVAL;
	}
	o->force_share = c->force_share;
	o->inactive = c->inactive;
	o->raw_by_default = vfs_cfg.single;
	o->vhdx_parent = c->vhdx_parent;
	o->within = vfs_cfg.single ? g_path_get_dirname(vfs_cfg.source) : vfs_cfg.source;
	if (c->format) {
		if (!vd_format_by_name(c->format)) {
			fprintf(stderr, "vdiskfs: format=%s: want raw, qcow2 or vhdx\n", c->format);
			return -EINVAL;
		}
		o->format = c->format;
	}
	if (!c->backing)
		o->backing = c->allow_other ? VD_BACKING_WITHIN_SOURCE : VD_BACKING_FOLLOW;
	else if (!strcmp(c->backing, "follow"))
		o->backing = VD_BACKING_FOLLOW;
	else if (!strcmp(c->backing, "deny"))
		o->backing = VD_BACKING_DENY;
	else if (!strcmp(c->backing, "within-source"))
		o->backing = VD_BACKING_WITHIN_SOURCE;
	else {
		fprintf(stderr, "vdiskfs: backing=%s: want follow, deny or within-source\n",
			c->backing);
		return -EINVAL;
	}
	if (!c->cache || !strcmp(c->cache, "none")) {
		o->cache_direct = true;
	} else if (strcmp(c->cache, "writeback")) {
		fprintf(stderr, "vdiskfs: cache=%s: want none or writeback\n", c->cache);
		return -EINVAL;
	}
	if (c->cache_size && parse_size(c->cache_size, &o->cache_size)) {
		fprintf(stderr, "vdiskfs: cache_size=%s: not a size (e.g. 64M)\n", c->cache_size);
		return -EINVAL;
	}
	if (c->cache_budget &&
	    (parse_size(c->cache_budget, &o->cache_budget) || !o->cache_budget)) {
		fprintf(stderr, "vdiskfs: cache_budget=%s: not a size (e.g. 256M)\n",
			c->cache_budget);
		return -EINVAL;
	}
	return 0;
}

/* The FUSE front: permissions, event loops, the transport. */
static int configure_front(struct cmdline *c)
{
	unsigned long n = sysconf(_SC_NPROCESSORS_ONLN), poll = 0;

	vfs_cfg.read_only = c->ro;
	vfs_cfg.direct_io = c->direct_io;
	vfs_cfg.allow_shrink = c->allow_shrink;
	vfs_cfg.allow_other = c->allow_other;
	vfs_cfg.owner = getuid();
	if (configure_number("threads", c->threads, 1, 64, &n))
		return -EINVAL;
	vfs_cfg.threads = n;
	if (!c->uring || !strcmp(c->uring, "auto")) {
		vfs_cfg.ring = FURING_AUTO;
	} else if (!strcmp(c->uring, "on")) {
		vfs_cfg.ring = FURING_ON;
	} else if (!strcmp(c->uring, "off")) {
		vfs_cfg.ring = FURING_OFF;
	} else {
		fprintf(stderr, "vdiskfs: uring=%s: want auto, on or off\n", c->uring);
		return -EINVAL;
	}
	if (!c->passthrough || !strcmp(c->passthrough, "off")) {
		vfs_cfg.passthrough = PT_OFF;
	} else if (!strcmp(c->passthrough, "auto")) {
		vfs_cfg.passthrough = PT_AUTO;
	} else if (!strcmp(c->passthrough, "on")) {
		vfs_cfg.passthrough = PT_ON;
	} else {
		fprintf(stderr, "vdiskfs: passthrough=%s: want auto, on or off\n", c->passthrough);
		return -EINVAL;
	}
	if (configure_number("poll_us", c->poll_us, 0, 1000, &poll))
		return -EINVAL;
	vfs_cfg.inactive_wait_s = 300;
	if (configure_number("inactive_wait", c->inactive_wait, 1, 86400, &n))
		return -EINVAL;
	if (c->inactive_wait)
		vfs_cfg.inactive_wait_s = n;
	if (c->poll_us)
		uring_set_poll(poll);
	return 0;
}

static int configure(struct cmdline *c, struct fuse_args *args)
{
	int ret = configure_paths(c);

	if (!ret)
		ret = configure_front(c);
	if (!ret)
		ret = configure_open(c);
	if (ret)
		return ret;
	if (configure_log(c))
		return -EINVAL;
	if (c->pid_file) {
		char *abs =
			g_canonicalize_filename(c->pid_file, NULL); /* daemonising leaves the cwd */

		free(c->pid_file);
		c->pid_file = abs;
	}

	/* How the mount shows in /proc/mounts: SOURCE on MOUNTPOINT type fuse.vdiskfs. */
	char *o = g_strdup_printf("-osubtype=vdiskfs,fsname=%s", vfs_cfg.source);
	fuse_opt_add_arg(args, o);
	g_free(o);
	if (c->allow_other && !c->default_perms)
		fuse_opt_add_arg(args, "-odefault_permissions");
	if (c->debug)
		fuse_opt_add_arg(args, "-odebug");
	return 0;
}

static void *signal_thread(void *arg)
{
	sigset_t *set = arg;
	int sig;

	for (;;) {
		if (sigwait(set, &sig) == 0) {
			vd_info("signal %d: unmounting", sig);
			loop_stop();
		}
	}
	return NULL;
}

static void raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

static void cmdline_free(struct cmdline *c)
{
	free(c->source);
	free(c->mountpoint);
	free(c->backing);
	free(c->format);
	free(c->vhdx_parent);
	free(c->cache_size);
	free(c->cache_budget);
	free(c->threads);
	free(c->cache);
	free(c->uring);
	free(c->passthrough);
	free(c->poll_us);
	free(c->inactive_wait);
	g_free(c->pid_file);
	free(c->log);
	free(c->log_level);
	if (vfs_cfg.single)
		g_free((char *)vfs_cfg.open.within);
	free(vfs_cfg.source);
	free(vfs_cfg.mountpoint);
}

struct served {
	const char *path;
	char *source;
};

static bool served_note(const struct mountinfo_entry *m, void *opaque)
{
	struct served *s = opaque;

	if (strcmp(m->fstype, "fuse.vdiskfs") || strcmp(m->mountpoint, s->path))
		return false;
	s->source = strdup(m->source ? m->source : "?");
	return true;
}

/* Is path already the mountpoint of a vdiskfs? Its source in *source (to be
 * freed). A second mount would stack over the first and hide it. */
static bool mount_is_vdiskfs(const char *path, char **source)
{
	struct served s = {.path = path};
	bool found = mountinfo_each(served_note, &s);

	*source = s.source;
	return found;
}

/* systemd's notification protocol, without libsystemd: one datagram of
 * "KEY=value" lines to the socket named by $NOTIFY_SOCKET (a path, or an
 * abstract name after '@'). Nothing happens when it is not set. */
static void systemd_notify(const char *fmt, ...)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	char msg[512];
	size_t len;
	va_list ap;
	int fd;

	if (!path || (path[0] != '/' && path[0] != '@') || strlen(path) >= sizeof(sa.sun_path))
		return;
	len = strlen(path);
	memcpy(sa.sun_path, path, len);
	if (sa.sun_path[0] == '@')
		sa.sun_path[0] = '\0';
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	if (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa,
		   offsetof(struct sockaddr_un, sun_path) + len) < 0)
		vd_warn("cannot notify systemd at %s: %s", path, strerror(errno));
	close(fd);
}

/* The pid file: written once the mount is live (after daemonising, so it is
 * the daemon's pid), removed as the very last thing, once every image is
 * closed and its locks dropped, so that a script can wait for it to vanish. */
static int pid_file_write(const char *path)
{
	char buf[32];
	int fd, n, ret = 0;

	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0) {
		ret = -errno;
		goto out;
	}
	n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
	if (write(fd, buf, n) != n)
		ret = errno ? -errno : -EIO;
	if (close(fd) < 0 && !ret)
		ret = -errno;
out:
	if (ret)
		vd_err("cannot write the pid file %s: %s", path, strerror(-ret));
	return ret;
}

static void start_signal_thread(void)
{
	static sigset_t sigs;
	pthread_t sigt;

	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
	pthread_create(&sigt, NULL, signal_thread, &sigs);
	pthread_detach(sigt);
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct cmdline c = {0};
	struct fuse_session *se = NULL;
	bool se_busy = false;
	char *msource;
	int ret, status = 2;

	vd_log_init("vdiskfs", false, false);
	if (fuse_opt_parse(&args, &c, cmd_opts, cmd_proc) < 0)
		goto out;
	if (c.help || c.version) {
		if (c.help)
			usage(stdout);
		else
			printf("vdiskfs %s (libfuse %s)\n", VDISKFS_VERSION, fuse_pkgversion());
		status = 0;
		goto out;
	}
	if (configure(&c, &args) || fault_set_from_env() || iolog_set_from_env())
		goto out;
	vd_log_init("vdiskfs", c.log_syslog && c.foreground, c.debug);
	raise_fd_limit();

	status = 1;
	if (mount_is_vdiskfs(vfs_cfg.mountpoint, &msource)) {
		fprintf(stderr,
			"vdiskfs: %s is already a vdiskfs mount (of %s); unmount it first "
			"(fusermount3 -u %s)\n",
			vfs_cfg.mountpoint, msource ? msource : "?", vfs_cfg.mountpoint);
		free(msource);
		goto out;
	}
	if (furing_precheck(vfs_cfg.ring))
		goto out;
	ret = tree_init();
	if (ret) {
		fprintf(stderr, "vdiskfs: cannot serve %s: %s\n", c.source, strerror(-ret));
		goto out;
	}
	se = fuse_session_new(&args, &vfs_ops, sizeof(vfs_ops), NULL);
	if (!se) {
		fprintf(stderr, "vdiskfs: bad mount options\n");
		status = 2;
		goto out_tree;
	}
	if (fuse_session_mount(se, vfs_cfg.mountpoint)) {
		fprintf(stderr, "vdiskfs: cannot mount on %s\n", vfs_cfg.mountpoint);
		goto out_session;
	}
	if (!c.foreground) {
		vd_log_init("vdiskfs", c.log_syslog, c.debug);
		if (fuse_daemonize(0))
			goto out_unmount;
	}
	if (c.pid_file) {
		if (pid_file_write(c.pid_file))
			goto out_unmount;
		c.pid_written = 1;
	}
	vd_info("serving %s on %s", vfs_cfg.source, vfs_cfg.mountpoint);
	systemd_notify("READY=1\nMAINPID=%d\nSTATUS=serving %s on %s", (int)getpid(),
		       vfs_cfg.source, vfs_cfg.mountpoint);
	start_signal_thread();
	if ((ret = notify_start(se)))
		vd_warn("no notices to the kernel (%s): removed images stay open until it "
			"forgets them",
			strerror(-ret));
	if ((ret = handover_start()))
		vd_warn("no thread to end requests that wait for an inactive view: %s",
			strerror(-ret));
	ret = loop_run(se, vfs_cfg.threads);
	handover_stop();
	if (ret)
		vd_err("event loop failed: %s", strerror(-ret));
	status = ret ? 1 : 0;
	if (!notify_stop())
		se_busy = true;
	vd_info("unmounting %s", vfs_cfg.mountpoint);
	systemd_notify("STOPPING=1\nSTATUS=unmounting %s: flushing and closing the images",
		       vfs_cfg.mountpoint);
	tree_shutdown();
out_unmount:
	fuse_session_unmount(se);
out_session:
	if (!se_busy) /* else a thread is still inside it, until exit */
		fuse_session_destroy(se);
out_tree:
	tree_shutdown();
	uring_thread_exit();
out:
	if (c.pid_written)
		unlink(c.pid_file);
	fuse_opt_free_args(&args);
	cmdline_free(&c);
	return status;
}
