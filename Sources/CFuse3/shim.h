// Why a shim: FUSE_USE_VERSION must be set before the header, and fuse_session_loop_mt is a macro.
#define FUSE_USE_VERSION 314
#include <stddef.h>
#include <sys/stat.h>
#include <fuse_lowlevel.h>
#include <fuse_opt.h>

static inline int vsa_fuse_session_loop_mt(struct fuse_session *se, struct fuse_loop_config *cfg) {
    return fuse_session_loop_mt(se, cfg);
}
