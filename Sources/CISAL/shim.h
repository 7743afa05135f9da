// Why a shim: ISA-L's umbrella header lives under isa-l/; we need raid (XOR, P+Q) and crc only.
#include <isa-l/raid.h>
#include <isa-l/crc.h>
#include <isa-l/gf_vect_mul.h>
