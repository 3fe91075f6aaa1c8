/* Placeholder until the qcow2 driver lands: probes nothing. */
#include "format.h"

static int qcow2_probe_none(const uint8_t *buf, size_t len, const char *path)
{
	return 0;
}

const struct vd_format vd_format_qcow2 = {
	.name = "qcow2",
	.probe = qcow2_probe_none,
};
