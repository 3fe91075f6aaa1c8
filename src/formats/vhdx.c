/* Placeholder until the vhdx driver lands: probes nothing. */
#include "format.h"

static int vhdx_probe_none(const uint8_t *buf, size_t len, const char *path)
{
	return 0;
}

const struct vd_format vd_format_vhdx = {
	.name = "vhdx",
	.probe = vhdx_probe_none,
};
