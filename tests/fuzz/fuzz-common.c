/* The LLVMFuzzerInitialize of the parser targets (control, mirror-opts): the
 * daemon's log quiet, so that refused inputs do not flood the output. */
#include "fuzz-common.h"
#include "util/log.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	vd_log_init("fuzz", false, false);
	vd_log_quiet(true);
	return 0;
}
