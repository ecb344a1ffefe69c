// SPDX-License-Identifier: MIT
/*
 * fuzz_handshake - the connection handshake as rdma_cm carries it: the
 * input's own bytes as the client's private data (the engine's incoming())
 * or as the server's accept or reject private data (the engine's
 * connected()), then a short exchange on whatever was agreed
 * (engine_peer.c, role FZ_HANDSHAKE).
 */
#include "engine_peer.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	return fz_engine_run(FZ_HANDSHAKE, &fz_wire_mem, data, size);
}
