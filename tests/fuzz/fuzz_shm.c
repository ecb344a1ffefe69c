// SPDX-License-Identifier: MIT
/*
 * fuzz_shm - the real shm:// provider under the engine, the fuzzer as the
 * other process's half: the segment as it writes it (indices, descriptors,
 * slot returns, wake words, slot bytes), its doorbell, and its socket
 * messages (handshake and bulk), by hand from shm_layout.h (wire_shm.c).
 * The setup byte's 0x40 bit makes the engine the client; its 0x01 bit
 * (the handshake target's role bit, free here) sets TERN_SHM_NO_PTRACE,
 * so the engine answers the peer's bulk requests with memfd areas.
 */
#include <stdlib.h>

#include "engine_peer.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size && (data[0] & 0x01))
		setenv("TERN_SHM_NO_PTRACE", "1", 1);
	else
		unsetenv("TERN_SHM_NO_PTRACE");
	return fz_engine_run(size && (data[0] & 0x40) ? FZ_CLIENT : FZ_SERVER, &fz_wire_shm, data,
			     size);
}
