// SPDX-License-Identifier: MIT
/*
 * fuzz_tcp - the real tcp:// provider under the engine, the fuzzer as the
 * far end of a loopback connection: its stream in the provider's framing
 * (handshake frames, message frames, bulk headers and pieces), honest or
 * of any length and content, cut anywhere (wire_tcp.c).  The setup byte's
 * 0x40 bit makes the engine the client.
 */
#include "engine_peer.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	return fz_engine_run(size && (data[0] & 0x40) ? FZ_CLIENT : FZ_SERVER, &fz_wire_tcp, data,
			     size);
}
