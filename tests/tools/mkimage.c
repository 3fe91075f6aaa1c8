/* mkimage: create an image with vdiskfs's own drivers, for tests that need
 * what no Linux tool makes (vhdx differencing disks, 4K-sector vhdx).
 *   mkimage FORMAT PATH SIZE [cluster=SIZE] [sector=512|4096] [backing=PATH]
 *           [backing_fmt=FMT] [fixed]
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image/format.h"
#include "util/log.h"
#include "util/size.h"

static int usage(void)
{
	fprintf(stderr, "usage: mkimage FORMAT PATH SIZE [cluster=SIZE] [sector=512|4096] "
			"[backing=PATH] [backing_fmt=FMT] [fixed]\n");
	return 2;
}

int main(int argc, char **argv)
{
	struct vd_create_opts o = {0};
	const struct vd_format *f;
	uint64_t v;
	int ret;

	vd_log_init("mkimage", false, false);
	if (argc < 4 || !(f = vd_format_by_name(argv[1])) || !f->create ||
	    parse_size(argv[3], &o.size))
		return usage();
	for (int i = 4; i < argc; i++) {
		if (!strncmp(argv[i], "cluster=", 8) && !parse_size(argv[i] + 8, &v))
			o.cluster_size = v;
		else if (!strncmp(argv[i], "sector=", 7) && !parse_size(argv[i] + 7, &v))
			o.sector_size = v;
		else if (!strncmp(argv[i], "backing=", 8))
			o.backing = argv[i] + 8;
		else if (!strncmp(argv[i], "backing_fmt=", 12))
			o.backing_fmt = argv[i] + 12;
		else if (!strcmp(argv[i], "fixed"))
			o.fixed = true;
		else
			return usage();
	}
	ret = f->create(argv[2], &o);
	if (ret) {
		fprintf(stderr, "mkimage: %s: %s\n", argv[2], strerror(-ret));
		return 1;
	}
	return 0;
}
