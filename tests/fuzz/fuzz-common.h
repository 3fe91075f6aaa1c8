/* The libFuzzer entry points every target defines (fuzz-replay.c calls them
 * without libFuzzer). fuzz-common.c holds the LLVMFuzzerInitialize of the
 * targets that need no more than a quiet log. */
#ifndef VDISKFS_FUZZ_COMMON_H
#define VDISKFS_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
