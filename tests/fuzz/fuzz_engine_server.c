// SPDX-License-Identifier: MIT
/*
 * fuzz_engine_server - the engine as a server, the fuzzer as its client: every
 * message kind, credits, bulk descriptors, batch and one-way paths, holds
 * and close, through the real engine over mem:// (engine_peer.c).
 */
#include "engine_peer.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	return fz_engine_run(FZ_SERVER, &fz_wire_mem, data, size);
}
