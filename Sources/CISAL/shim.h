// Why a shim: ISA-L's umbrella header lives under isa-l/; we need raid (XOR, P+Q), crc, and GF(2^8)
// arithmetic (rebuilding RAID-6 strips through Q).
#include <isa-l/raid.h>
#include <isa-l/crc.h>
#include <isa-l/gf_vect_mul.h>
#include <isa-l/erasure_code.h>
