// Why a shim: libnbd's asynchronous calls take a completion callback struct, and the "no callback" value is a macro
// of a compound literal, which Swift cannot import. vsa polls each command's cookie instead of taking callbacks, so
// these pass the empty one.
#include <stddef.h>
#include <libnbd.h>

static inline int64_t vsa_nbd_aio_pread(struct nbd_handle *h, void *buf, size_t count, uint64_t offset) {
    return nbd_aio_pread(h, buf, count, offset, NBD_NULL_COMPLETION, 0);
}

static inline int64_t vsa_nbd_aio_pwrite(struct nbd_handle *h, const void *buf, size_t count, uint64_t offset, uint32_t flags) {
    return nbd_aio_pwrite(h, buf, count, offset, NBD_NULL_COMPLETION, flags);
}

static inline int64_t vsa_nbd_aio_flush(struct nbd_handle *h) {
    return nbd_aio_flush(h, NBD_NULL_COMPLETION, 0);
}

static inline int64_t vsa_nbd_aio_zero(struct nbd_handle *h, uint64_t count, uint64_t offset) {
    return nbd_aio_zero(h, count, offset, NBD_NULL_COMPLETION, 0);
}

static inline const uint32_t vsa_nbd_flag_fua(void) { return LIBNBD_CMD_FLAG_FUA; }
